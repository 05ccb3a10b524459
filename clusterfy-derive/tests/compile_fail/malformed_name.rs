use clusterfy::Command;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Command)]
#[command(name = "get timestamp", target = worker, reply = u64)]
struct GetTimestamp;

fn main() {
    let _ = <GetTimestamp as Command>::NAME;
}
