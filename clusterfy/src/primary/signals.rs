//! SIGINT and SIGTERM to the primary shut the whole cluster down gracefully; SIGHUP reloads it;
//! SIGTTIN and SIGTTOU add and remove one worker of its group (gunicorn's signals).

use std::sync::Weak;

use clusterfy_core::{Error, Result};
use tokio::signal::unix::{SignalKind, signal};

use super::{DEFAULT_SHUTDOWN_TIMEOUT, Primary, PrimaryInner, ReloadOptions};

/// Installs the handlers now (so a signal right after `build` is not missed) and waits for them
/// in a task.
pub(super) fn shut_down_on_signals(primary: Weak<PrimaryInner>) -> Result<()> {
    let install = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| {
            Error::io(format!("installing the {name} handler (turn it off with handle_signals(false))"), e)
        })
    };
    let mut interrupt = install(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = install(SignalKind::terminate(), "SIGTERM")?;
    let mut hangup = install(SignalKind::hangup(), "SIGHUP")?;
    let mut more = install(SignalKind::from_raw(nix::libc::SIGTTIN), "SIGTTIN")?;
    let mut fewer = install(SignalKind::from_raw(nix::libc::SIGTTOU), "SIGTTOU")?;
    let scaling = primary.clone();
    tokio::spawn(async move {
        loop {
            let by: isize = tokio::select! {
                Some(()) = more.recv() => 1,
                Some(()) = fewer.recv() => -1,
                else => return,
            };
            let Some(inner) = scaling.upgrade() else { return };
            scale_the_group_by(Primary { inner }, by).await;
        }
    });
    let reloading = primary.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let Some(inner) = reloading.upgrade() else { return };
            tracing::info!("SIGHUP received: reloading every worker");
            match (Primary { inner }).reload(ReloadOptions::default()).await {
                Ok(replaced) => tracing::info!(workers = replaced.len(), "reload done"),
                Err(err) => tracing::error!(error = %err, "reload stopped"),
            }
        }
    });
    tokio::spawn(async move {
        let code = tokio::select! {
            _ = interrupt.recv() => 128 + 2,
            _ = terminate.recv() => 128 + 15,
        };
        if let Some(inner) = primary.upgrade() {
            tracing::info!("signal received: shutting the cluster down");
            let primary = Primary { inner };
            tokio::select! {
                result = primary.shutdown(DEFAULT_SHUTDOWN_TIMEOUT) => {
                    if let Err(err) = result {
                        tracing::error!(error = %err, "graceful shutdown failed");
                    }
                }
                _ = interrupt.recv() => tracing::warn!("second signal: exiting without waiting for workers"),
                _ = terminate.recv() => tracing::warn!("second signal: exiting without waiting for workers"),
            }
        }
        std::process::exit(code);
    });
    Ok(())
}

/// One member more or fewer in the primary's group, if it has exactly one (a signal cannot say
/// which). Logged, as a signal has no one to answer.
async fn scale_the_group_by(primary: Primary, by: isize) {
    let (groups, members) = {
        let directory = primary.inner.directory();
        let groups: Vec<String> = directory.groups().names().map(str::to_owned).collect();
        let members = groups.first().map_or(0, |g| directory.members(g).len());
        (groups, members)
    };
    let [group] = groups.as_slice() else {
        let signal = if by > 0 { "SIGTTIN" } else { "SIGTTOU" };
        return tracing::warn!(
            groups = ?groups,
            "{signal} scales the primary's one worker group, but it has {}; use Primary::scale or clusterfy scale",
            groups.len()
        );
    };
    let workers = members.saturating_add_signed(by);
    match primary.scale(group, workers).await {
        Ok(_) => tracing::info!(group = %group, workers, "scaled by signal"),
        Err(err) => tracing::warn!(group = %group, error = %err, "scaling by signal failed"),
    }
}
