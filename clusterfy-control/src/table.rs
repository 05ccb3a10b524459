//! The workers' table, as `Primary::print_statistics` and `clusterfy ls` print it.

use crate::rows::WorkerRow;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

/// The rows as a text table: id, name, pid, status, state, restarts, uptime, cpu, memory.
pub fn workers_table(rows: &[WorkerRow]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    table
        .set_header(["id", "name", "group", "pid", "status", "state", "restarts", "uptime", "cpu", "memory"]);
    for w in rows {
        table.add_row([
            w.id.to_string(),
            w.name.clone(),
            w.group.clone().unwrap_or_else(|| "-".to_owned()),
            w.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            w.status.clone(),
            w.state.clone(),
            w.restarts.to_string(),
            // No process, no uptime: a stopped worker's row says how it ended instead (its status).
            if w.pid.is_some() { format!("{:.1}s", w.uptime.as_secs_f64()) } else { "-".to_owned() },
            w.cpu_percent.map_or_else(|| "-".to_owned(), |c| format!("{c:.0}%")),
            w.memory.map_or_else(|| "-".to_owned(), |m| format!("{:.1} MiB", m as f64 / (1024.0 * 1024.0))),
        ]);
    }
    table.to_string()
}
