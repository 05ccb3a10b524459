use clusterfy::Command;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Command)]
#[command(name = "get_timestamp", target = everyone, reply = u64)]
struct GetTimestamp;

fn main() {}
