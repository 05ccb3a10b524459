//! The table of command handlers a builder collects, erased to names and bytes.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use clusterfy_core::codec::{from_payload, to_payload};
use clusterfy_core::error::excerpt;
use clusterfy_core::{Command, Error, ErrorKind, Result, Target, validate_user_command_name};
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::events::WorkerRef;

type ErasedHandler<Ctx> = Arc<dyn Fn(Vec<u8>, Ctx) -> BoxFuture<'static, Result<Vec<u8>>> + Send + Sync>;

/// Handlers by command name, for one side (`Ctx` is that side's context type).
pub(crate) struct CommandRegistry<Ctx> {
    side: Target,
    handlers: HashMap<&'static str, ErasedHandler<Ctx>>,
    /// The first registration error, reported when the builder finishes so calls can chain.
    first_error: Option<Error>,
}

impl<Ctx> std::fmt::Debug for CommandRegistry<Ctx> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.handlers.keys().copied().collect();
        names.sort_unstable();
        f.debug_struct("CommandRegistry")
            .field("side", &self.side)
            .field("commands", &names)
            .finish_non_exhaustive()
    }
}

impl<Ctx: Send + 'static> CommandRegistry<Ctx> {
    pub(crate) fn new(side: Target) -> Self {
        CommandRegistry { side, handlers: HashMap::new(), first_error: None }
    }

    /// Adds the handler of `C`; a bad, reserved, duplicate or wrong-side name is remembered as the
    /// builder's error.
    pub(crate) fn register<C, F, Fut>(&mut self, handler: F)
    where
        C: Command,
        F: Fn(C, Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Reply>> + Send + 'static,
    {
        if let Err(err) = self.check::<C>() {
            self.first_error.get_or_insert(err);
            return;
        }
        let handler = Arc::new(handler);
        let erased: ErasedHandler<Ctx> = Arc::new(move |payload: Vec<u8>, ctx: Ctx| {
            let handler = Arc::clone(&handler);
            async move {
                let command: C = from_payload(&payload).map_err(|e| e.with_context("command", C::NAME))?;
                let reply = handler(command, ctx).await?;
                to_payload(&reply)
            }
            .boxed()
        });
        self.handlers.insert(C::NAME, erased);
    }

    fn check<C: Command>(&self) -> Result<()> {
        validate_user_command_name(C::NAME)?;
        if C::TARGET != self.side {
            let (is, other) = match C::TARGET {
                Target::Primary => ("the primary", "Primary::builder()"),
                Target::Worker => ("workers", "Worker::builder()"),
            };
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("command targets {is}; register its handler on {other}"),
            )
            .with_context("command", C::NAME));
        }
        if self.handlers.contains_key(C::NAME) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                "a handler for this command is already registered",
            )
            .with_context("command", C::NAME));
        }
        Ok(())
    }

    /// The first registration error, if any.
    pub(crate) fn take_error(&mut self) -> Option<Error> {
        self.first_error.take()
    }

    /// Runs the handler of `name`. Unknown names and panicking handlers become error replies.
    pub(crate) async fn run(&self, name: &str, payload: Vec<u8>, ctx: Ctx) -> Result<Vec<u8>> {
        let Some(handler) = self.handlers.get(name) else {
            let mut known: Vec<&str> = self.handlers.keys().copied().collect();
            known.sort_unstable();
            return Err(Error::new(
                ErrorKind::UnknownCommand,
                format!(
                    "no handler is registered for this command here (registered: [{}]); register it on the target's builder",
                    known.join(", ")
                ),
            )
            // The name came from the peer: any length.
            .with_context("command", excerpt(name)));
        };
        match AssertUnwindSafe(handler(payload, ctx)).catch_unwind().await {
            Ok(result) => result.map_err(|e| {
                if e.context_value("command").is_some() { e } else { e.with_context("command", name) }
            }),
            Err(_) => Err(Error::new(ErrorKind::CommandFailed, "the command handler panicked")
                .with_context("command", name)),
        }
    }
}

/// One worker's answer to a broadcast.
#[derive(Debug)]
#[non_exhaustive]
pub struct BroadcastReply<R> {
    /// The worker.
    pub worker: WorkerRef,
    /// Its reply or error.
    pub result: Result<R>,
}

/// Checks, before sending, that `C` runs on the side the caller addresses.
pub(crate) fn expect_target<C: Command>(target: Target) -> Result<()> {
    if C::TARGET == target {
        return Ok(());
    }
    let (declared, asked) = match C::TARGET {
        Target::Primary => ("the primary", "a worker"),
        Target::Worker => ("workers", "the primary"),
    };
    Err(Error::new(ErrorKind::InvalidInput, format!("command targets {declared} but was sent to {asked}"))
        .with_context("command", C::NAME))
}

#[cfg(test)]
// A failed unwrap is the clearest failure report a test can give.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unknown_command_is_named_in_the_error_cut_to_about_a_hundred_bytes() {
        let registry = CommandRegistry::<()>::new(Target::Worker);
        let err = registry.run("no_such_command", Vec::new(), ()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownCommand);
        assert_eq!(err.context_value("command"), Some("no_such_command"));

        // A peer may send a name of any length.
        let huge = "n".repeat(1 << 20);
        let err = registry.run(&huge, Vec::new(), ()).await.unwrap_err();
        let named = err.context_value("command").unwrap();
        assert_eq!(named, format!("{}… (1048576 bytes)", "n".repeat(100)));
        assert!(err.to_string().len() < 400, "{err}");
    }
}
