//! How the command prints: tables for people, JSON for programs.

use std::io::Write;

use clusterfy_control::{Error, EventRow, Result, RunningApp, WorkerRow};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

pub(crate) fn apps(apps: &[RunningApp], as_json: bool) -> Result<()> {
    if as_json {
        let list: Vec<_> = apps
            .iter()
            .map(|a| {
                serde_json::json!({
                    "app": a.info.app,
                    "pid": a.info.pid,
                    "workers": a.info.workers,
                    "socket": a.socket.display().to_string(),
                })
            })
            .collect();
        return json(&serde_json::Value::Array(list));
    }
    if apps.is_empty() {
        println!("no running app found in {}", clusterfy_control::control_dir().display());
        return Ok(());
    }
    let mut table = table(["app", "pid", "workers", "socket"]);
    for a in apps {
        table.add_row([
            a.info.app.clone(),
            a.info.pid.to_string(),
            a.info.workers.to_string(),
            a.socket.display().to_string(),
        ]);
    }
    println!("{table}");
    Ok(())
}

pub(crate) fn workers(rows: &[WorkerRow], as_json: bool) -> Result<()> {
    if as_json {
        return json(&to_json(rows)?);
    }
    println!("{}", clusterfy_control::workers_table(rows));
    Ok(())
}

pub(crate) fn event(event: &EventRow, as_json: bool) -> Result<()> {
    if as_json {
        return json_line(&to_json(event)?);
    }
    println!("{}", event.text);
    flush()
}

/// Pretty JSON.
pub(crate) fn json(value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::new(clusterfy_control::ErrorKind::Serialization, e.to_string()))?;
    println!("{text}");
    flush()
}

/// One JSON object on one line, flushed at once (for streams read by other programs).
pub(crate) fn json_line(value: &serde_json::Value) -> Result<()> {
    println!("{value}");
    flush()
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value)
        .map_err(|e| Error::new(clusterfy_control::ErrorKind::Serialization, e.to_string()))
}

fn flush() -> Result<()> {
    std::io::stdout().flush().map_err(|e| Error::io("writing to stdout", e))
}

fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(header);
    table
}
