//! What a local process could connect to: the listening Unix sockets a process holds (Linux).

use std::collections::BTreeSet;

/// The inodes of the listening Unix sockets that this process holds, read from `/proc`.
///
/// Empty where `/proc` is missing (not Linux): callers that need the answer check the platform.
pub fn listening_unix_sockets_of_this_process() -> BTreeSet<u64> {
    let mine: BTreeSet<u64> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    // Columns: Num RefCount Protocol Flags Type St Inode [Path]; flag 0x10000 is "listening".
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            let inode: u64 = fields.get(6)?.parse().ok()?;
            (flags & 0x1_0000 != 0 && mine.contains(&inode)).then_some(inode)
        })
        .collect()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_bound_listener_is_seen_and_a_connected_pair_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let before = listening_unix_sockets_of_this_process();
        let _pair = std::os::unix::net::UnixStream::pair().expect("socketpair");
        assert_eq!(listening_unix_sockets_of_this_process(), before, "a socket pair listens nowhere");
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("l.sock")).expect("bind");
        let with_listener = listening_unix_sockets_of_this_process();
        assert_eq!(with_listener.difference(&before).count(), 1, "the listener is seen");
        drop(listener);
        assert_eq!(listening_unix_sockets_of_this_process(), before);
    }
}
