//! User-defined commands: typed requests with a stable wire name.

use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, ErrorKind, Result};

/// The heartbeat, primary -> worker: a [`crate::protocol::CommandRequest`] with this name and an
/// empty payload, answered with an empty [`crate::protocol::Reply::Command`] by the worker's
/// connection reader itself (not a handler task), so a worker whose runtime is blocked does not
/// answer. A worker built before it answers `UnknownCommand`, which counts as alive too.
pub const PING_COMMAND: &str = "cy_ping";

/// Prefix reserved for Clusterfy's built-in commands.
pub const RESERVED_PREFIX: &str = "cy_";

/// Longest accepted command name, in bytes.
pub const MAX_COMMAND_NAME_LEN: usize = 128;

/// Where a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub enum Target {
    /// The primary runs it (sent by a worker).
    Primary,
    /// A worker runs it (sent by the primary or by another worker through the primary).
    Worker,
}

/// A typed request that one process of the cluster sends and another runs.
///
/// The type is the request's arguments; [`Command::Reply`] is what the handler returns.
/// Both sides must agree on `NAME` and on the serde shape of both types: the wire form is
/// postcard, which is not self-describing, so change a command's fields only together with
/// its name.
///
/// # Contract
///
/// - `NAME` is stable, unique in the program, at most [`MAX_COMMAND_NAME_LEN`] bytes of ASCII
///   letters, digits, `_`, `-`, `.` or `:`, and does not start with [`RESERVED_PREFIX`]; the builders
///   reject other names when the handler is registered (checked by [`validate_user_command_name`]).
/// - `TARGET` says which side registers the handler; registering it on the other side is refused.
///
/// Programs on the `clusterfy` crate write it as `#[derive(Command)]` with
/// `#[command(name = "get_timestamp", target = worker, reply = u64)]`, which also checks the
/// name while compiling. By hand:
///
/// ```
/// use clusterfy_core::{Command, Target};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct GetTimestamp;
///
/// impl Command for GetTimestamp {
///     const NAME: &'static str = "get_timestamp";
///     const TARGET: Target = Target::Worker;
///     type Reply = u64;
/// }
/// # clusterfy_core::validate_user_command_name(GetTimestamp::NAME).unwrap();
/// ```
pub trait Command: Serialize + DeserializeOwned + Send + 'static {
    /// The wire name.
    const NAME: &'static str;
    /// Which side runs it.
    const TARGET: Target;
    /// What the handler answers.
    type Reply: Serialize + DeserializeOwned + Send + 'static;
}

/// What is wrong with a command name, if anything: the one statement of the naming rule, as a
/// `const fn` so `#[derive(Command)]` can check a name while the program compiles.
///
/// `reserved_ok` admits the [`RESERVED_PREFIX`] (Clusterfy's built-ins); user commands pass
/// `false`.
pub const fn command_name_problem(name: &str, reserved_ok: bool) -> Option<&'static str> {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Some("a command name must not be empty");
    }
    if bytes.len() > MAX_COMMAND_NAME_LEN {
        return Some("a command name must be at most 128 bytes");
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')) {
            return Some("a command name may only contain ASCII letters, digits, '_', '-', '.' and ':'");
        }
        i += 1;
    }
    if !reserved_ok && is_reserved(bytes) {
        return Some(
            "names starting with \"cy_\" are reserved for Clusterfy's built-in commands; rename the command",
        );
    }
    None
}

const fn is_reserved(name: &[u8]) -> bool {
    let prefix = RESERVED_PREFIX.as_bytes();
    if name.len() < prefix.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if name[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Checks the syntax of a command name, reserved names included (for built-ins).
pub fn validate_command_name(name: &str) -> Result<()> {
    check(name, true)
}

/// Checks a user command name: valid syntax and not in the reserved `cy_` namespace.
pub fn validate_user_command_name(name: &str) -> Result<()> {
    check(name, false)
}

fn check(name: &str, reserved_ok: bool) -> Result<()> {
    let Some(why) = command_name_problem(name, reserved_ok) else {
        return Ok(());
    };
    if command_name_problem(name, true).is_none() {
        // Well formed, only reserved: the name is taken, not malformed.
        return Err(Error::new(ErrorKind::AlreadyExists, why).with_context("command", name));
    }
    Err(Error::new(ErrorKind::InvalidInput, why)
        .with_context("command", format!("{:?}", crate::error::excerpt(name))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_malformed_names_are_refused() {
        assert!(validate_user_command_name("get_timestamp").is_ok());
        assert_eq!(validate_user_command_name("cy_shutdown").unwrap_err().kind(), ErrorKind::AlreadyExists);
        assert!(validate_command_name("cy_shutdown").is_ok());
        for bad in ["", "has space", "ümlaut", &"x".repeat(129)] {
            assert_eq!(validate_user_command_name(bad).unwrap_err().kind(), ErrorKind::InvalidInput);
        }
        let huge = validate_command_name(&"x".repeat(10_000)).unwrap_err();
        assert!(huge.to_string().len() < 400, "a huge name is quoted in part: {huge}");
    }
}
