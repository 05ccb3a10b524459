use clusterfy::Command;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Command)]
#[command(name = "get_timestamp", target = worker)]
struct GetTimestamp;

fn main() {}
