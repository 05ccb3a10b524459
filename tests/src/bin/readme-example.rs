//! The README's usage example, verbatim below this comment: `tests/tests/readme.rs` checks that
//! the two stay the same and that the program prints every line the example promises.

use std::time::Duration;

use clusterfy::primary::WorkerOptions;
use clusterfy::{Command, Primary, Role, Worker, role, value};
use serde::{Deserialize, Serialize};

/// A command: typed arguments, a stable wire name, a reply type and where it runs (the derive
/// checks the name while compiling; `clusterfy-derive`'s docs list its keys).
#[derive(Serialize, Deserialize, Command)]
#[command(name = "get_timestamp", target = worker, reply = u64)]
struct GetTimestamp;

#[tokio::main]
async fn main() -> clusterfy::Result<()> {
    match role() {
        Role::Primary => {
            let primary = Primary::builder()
                .initial_storage(value!({"test": {"some": 1}})) // initStorage
                .build()
                .await?;
            primary.fork("SomeName1", WorkerOptions::default()).await?; // fork
            primary.fork("EmailServer", WorkerOptions::revive()).await?; // revived after crashes
            primary.ready().await?; // initAsPrimary: all workers connected

            let stamp = primary.run("SomeName1", GetTimestamp).await?; // runIPCCommand
            println!("SomeName1 says {stamp}");
            for reply in primary.broadcast(GetTimestamp).await? {
                println!("{} says {:?}", reply.worker.name, reply.result);
            }
            primary.print_statistics(); // outputStatisticsTable
            primary.shutdown(Duration::from_secs(2)).await?;
        }
        Role::Worker => {
            let worker = Worker::builder() // initAsWorker
                .command(|_: GetTimestamp, _ctx| async { Ok(42) }) // registerIPCCommand
                .on_shutdown(|reason| async move { eprintln!("bye ({reason:?})") }) // registerShutdownMethod
                .connect()
                .await?;
            worker.save("test.some", &2).await?; // saveToStorage
            let some: Option<i64> = worker.retrieve("test.some").await?; // retrieveFromStorage
            println!("{} read {some:?}", worker.name());
            // Serve until the primary asks this worker to stop and its hooks ran, then return:
            // the process ends with every destructor run.
            worker.shutdown_requested().await;
        }
    }
    Ok(())
}
