//! SIGINT and SIGTERM to the primary shut the whole cluster down gracefully; SIGHUP reloads it.

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
