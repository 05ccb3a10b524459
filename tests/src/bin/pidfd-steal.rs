//! `pidfd-steal <pid> <fd>`: tries to take descriptor `fd` of process `pid` with `pidfd_getfd`,
//! as a hostile process of the same user would. Exits 0 when it got it, 1 when the kernel refused
//! (`EPERM`), 2 on anything else; prints what happened.

// pidfd_open and pidfd_getfd have no wrapper in nix; two raw system calls, checked below.
#![allow(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(pid), Some(fd)) =
        (args.first().and_then(|a| a.parse::<i32>().ok()), args.get(1).and_then(|a| a.parse::<i32>().ok()))
    else {
        eprintln!("usage: pidfd-steal <pid> <fd>");
        return ExitCode::from(2);
    };
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory is
    // passed.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        println!("pidfd_open failed: {}", std::io::Error::last_os_error());
        return ExitCode::from(2);
    }
    // SAFETY: pidfd_getfd takes two descriptors and flags and returns a new descriptor or -1; no
    // memory is passed.
    let stolen = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd as i32, fd, 0) };
    if stolen >= 0 {
        println!("stolen: descriptor {fd} of pid {pid} is now {stolen} here");
        return ExitCode::SUCCESS;
    }
    let err = std::io::Error::last_os_error();
    println!("refused: {err}");
    if err.raw_os_error() == Some(libc::EPERM) { ExitCode::from(1) } else { ExitCode::from(2) }
}
