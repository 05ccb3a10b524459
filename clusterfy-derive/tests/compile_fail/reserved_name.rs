use clusterfy::Command;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Command)]
#[command(name = "cy_shutdown", target = worker, reply = ())]
struct Shutdown;

fn main() {
    let _ = <Shutdown as Command>::NAME;
}
