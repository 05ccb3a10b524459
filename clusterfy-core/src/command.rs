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

/// Checks the syntax of a command name, reserved names included (for built-ins).
pub fn validate_command_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Error::new(ErrorKind::InvalidInput, why.to_owned())
            .with_context("command", format!("{:?}", crate::error::excerpt(name)))
    };
    if name.is_empty() {
        return Err(bad("a command name must not be empty"));
    }
    if name.len() > MAX_COMMAND_NAME_LEN {
        return Err(bad("a command name must be at most 128 bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')) {
        return Err(bad("a command name may only contain ASCII letters, digits, '_', '-', '.' and ':'"));
    }
    Ok(())
}

/// Checks a user command name: valid syntax and not in the reserved `cy_` namespace.
pub fn validate_user_command_name(name: &str) -> Result<()> {
    validate_command_name(name)?;
    if name.starts_with(RESERVED_PREFIX) {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "names starting with \"cy_\" are reserved for Clusterfy's built-in commands; rename the command",
        )
        .with_context("command", name));
    }
    Ok(())
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
