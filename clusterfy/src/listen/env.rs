//! Reading `LISTEN_FDS` and `LISTEN_FDNAMES`, once for both sides: the primary taking what
//! systemd passed it, and a worker taking what its primary passed.

use clusterfy_core::{Error, ErrorKind, Result};

use super::ENV_LISTEN_FDS;

/// Most inherited listeners accepted: far more than any service is given.
const MAX_INHERITED: usize = 1024;
/// systemd's name for a socket passed without `FileDescriptorName=`.
const UNNAMED: &str = "unknown";

/// The names of the inherited listeners, in descriptor order (the first is descriptor 3), from
/// the values of `LISTEN_FDS` and `LISTEN_FDNAMES`; none without `LISTEN_FDS`.
pub(crate) fn inherited_names(fds: Option<&str>, names: Option<&str>) -> Result<Vec<String>> {
    let Some(fds) = fds else { return Ok(Vec::new()) };
    let count = fds.parse::<usize>().ok().filter(|n| *n <= MAX_INHERITED).ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            format!("{ENV_LISTEN_FDS}={fds:?} is not a number of descriptors from 0 to {MAX_INHERITED}"),
        )
    })?;
    let mut given = names.map(|n| n.split(':')).into_iter().flatten();
    Ok((0..count).map(|_| given.next().unwrap_or(UNNAMED).to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_count_and_unnamed_ones_are_unknown() {
        assert_eq!(inherited_names(None, Some("http")).expect("none"), Vec::<String>::new());
        assert_eq!(inherited_names(Some("2"), Some("http:admin:extra")).expect("two"), ["http", "admin"]);
        assert_eq!(inherited_names(Some("2"), None).expect("unnamed"), ["unknown", "unknown"]);
        for bad in ["two", "-1", "100000"] {
            assert_eq!(inherited_names(Some(bad), None).expect_err(bad).kind(), ErrorKind::Config);
        }
    }
}
