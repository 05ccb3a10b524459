//! `clusterfy`: operate a running Clusterfy cluster from the shell, through the control socket
//! its primary opens with `PrimaryBuilder::control(app)`.

mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use clusterfy_cli::json::{as_json, parse_json};
use clusterfy_control::{
    CONTROL_PROTOCOL_VERSION, ControlClient, Error, ErrorKind, LogEntry, Result, RunningApp,
};

/// Operate a running Clusterfy cluster: list its workers, restart or stop one, roll a reload,
/// follow its events, read and write its shared storage.
#[derive(Parser)]
#[command(name = "clusterfy", version)]
struct Cli {
    /// The app (the name the primary gave `PrimaryBuilder::control`); needed only when more
    /// than one runs.
    #[arg(long, global = true, env = "CLUSTERFY_APP")]
    app: Option<String>,
    /// The control socket's path, for a primary that opened it elsewhere (`control_at`).
    #[arg(long, global = true)]
    socket: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// The running primaries found.
    Apps {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// The workers: id, name, group, pid, status, state, restarts, uptime, CPU, memory.
    Ls {
        /// The app (instead of --app).
        #[arg(value_name = "APP")]
        which: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// The workers' table, refreshed live with --watch.
    Stats {
        /// Refresh until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Replace a worker with a new process (the new one first).
    Restart {
        /// The worker's name.
        name: String,
    },
    /// Stop a worker gracefully; it is not revived.
    Stop {
        /// The worker's name.
        name: String,
    },
    /// Roll a reload of every worker (or of one group's), one at a time.
    Reload {
        /// Only this group's members.
        group: Option<String>,
    },
    /// Grow or shrink a worker group (newest members stop first, gracefully).
    Scale {
        /// The group's name.
        group: String,
        /// How many workers it should have (at least 1).
        workers: u32,
    },
    /// Follow the cluster's events.
    Events {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The workers' captured output: the last lines of each, then with -f every new one.
    Logs {
        /// Only this worker's, or this group's, lines.
        which: Option<String>,
        /// Go on printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines of each worker.
        #[arg(long, default_value_t = 20)]
        lines: u32,
    },
    /// Read and write the shared storage, values as JSON.
    Storage {
        #[command(subcommand)]
        command: StorageCommands,
    },
}

#[derive(Subcommand)]
enum StorageCommands {
    /// Print the value or subtree at PATH as JSON (`null` when there is none).
    Get {
        /// Dotted path.
        path: String,
    },
    /// Save JSON at PATH (its parent must exist, unless --parents).
    Set {
        /// Dotted path.
        path: String,
        /// The value, as JSON: '"text"', '42', '{"a": 1}'.
        json: String,
        /// Create the missing parent maps of PATH.
        #[arg(long)]
        parents: bool,
    },
    /// Print every write on the branch of PATH: the path written and the value now at PATH.
    Watch {
        /// Dotted path.
        path: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("clusterfy: {}", err.message());
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Commands::Apps { json } => output::apps(&ControlClient::apps().await?, json),
        Commands::Ls { ref which, json } => {
            let client = client(&cli, which.as_deref()).await?;
            output::workers(&client.workers().await?, json)
        }
        Commands::Stats { watch, interval } => {
            let client = client(&cli, None).await?;
            loop {
                let workers = client.workers().await?;
                if watch {
                    // Clear the screen and go home, as `watch` does.
                    print!("\x1b[2J\x1b[H");
                }
                output::workers(&workers, false)?;
                if !watch {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs_f64(interval.max(0.1))).await;
            }
        }
        Commands::Restart { ref name } => {
            client(&cli, None).await?.restart(name).await?;
            println!("restarted {name}");
            Ok(())
        }
        Commands::Stop { ref name } => {
            client(&cli, None).await?.stop(name).await?;
            println!("stopped {name}");
            Ok(())
        }
        Commands::Reload { group: None } => {
            client(&cli, None).await?.reload().await?;
            println!("reloaded every worker");
            Ok(())
        }
        Commands::Reload { group: Some(ref group) } => {
            client(&cli, None).await?.reload_group(group).await?;
            println!("reloaded group {group}");
            Ok(())
        }
        Commands::Scale { ref group, workers } => {
            client(&cli, None).await?.scale(group, workers).await?;
            println!("scaled group {group} to {workers}");
            Ok(())
        }
        Commands::Events { json } => {
            let mut events = client(&cli, None).await?.events().await?;
            while let Some(event) = events.next_event().await? {
                output::event(&event, json)?;
            }
            Ok(())
        }
        Commands::Logs { ref which, follow, lines } => {
            let mut logs = client(&cli, None).await?.logs(which.as_deref(), lines, follow).await?;
            while let Some(entry) = logs.next_log().await? {
                match entry {
                    LogEntry::Line { worker, text } => println!("[{worker}] {text}"),
                    LogEntry::Skipped(n) => println!("... {n} lines not shown"),
                    other => println!("{other:?}"),
                }
            }
            Ok(())
        }
        Commands::Storage { ref command } => {
            let client = client(&cli, None).await?;
            match command {
                StorageCommands::Get { path } => {
                    output::json(&as_json(client.storage_retrieve(path).await?)?)
                }
                StorageCommands::Set { path, json, parents } => {
                    let value = parse_json(json)?;
                    if *parents {
                        client.storage_save_with_parents(path, value).await
                    } else {
                        client.storage_save(path, value).await
                    }
                }
                StorageCommands::Watch { path } => {
                    let mut changes = client.storage_watch(path).await?;
                    while let Some(changed) = changes.next_change().await? {
                        let now = as_json(client.storage_retrieve(path).await?)?;
                        output::json_line(&serde_json::json!({ "changed": changed, "value": now }))?;
                    }
                    Ok(())
                }
            }
        }
    }
}

/// The client of the app named on the command line, or of the only one running.
/// The client of the primary the options name, once it says it speaks this command's version of
/// the control protocol (the rows of another version would not decode).
async fn client(cli: &Cli, positional: Option<&str>) -> Result<ControlClient> {
    let client = locate(cli, positional).await?;
    let info = client.info().await?;
    if info.protocol_version != CONTROL_PROTOCOL_VERSION {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "app {:?} speaks control protocol {}, this clusterfy command speaks {CONTROL_PROTOCOL_VERSION}: use \
                 the clusterfy command built from the same Clusterfy version as the app",
                info.app, info.protocol_version
            ),
        ));
    }
    Ok(client)
}

async fn locate(cli: &Cli, positional: Option<&str>) -> Result<ControlClient> {
    if let Some(socket) = &cli.socket {
        return Ok(ControlClient::at(socket));
    }
    if let Some(app) = positional.or(cli.app.as_deref()) {
        return ControlClient::for_app(app);
    }
    let apps = ControlClient::apps().await?;
    match apps.as_slice() {
        [only] => Ok(ControlClient::at(&only.socket)),
        [] => Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "no running app found in {}: start a primary with PrimaryBuilder::control(\"<app>\"), or pass \
                 --socket for one that opened its socket elsewhere",
                clusterfy_control::control_dir().display()
            ),
        )),
        several => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{} apps are running ({}); choose one with --app", several.len(), names(several)),
        )),
    }
}

fn names(apps: &[RunningApp]) -> String {
    apps.iter().map(|a| a.info.app.as_str()).collect::<Vec<_>>().join(", ")
}
