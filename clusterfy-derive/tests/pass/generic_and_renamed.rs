use clusterfy::{Command, Target};
use serde::{Deserialize, Serialize};

/// A generic command (its bounds on the type, serde told to add none), with the crate named
/// explicitly.
#[derive(Serialize, Deserialize, Command)]
#[serde(bound = "")]
#[command(name = "echo.v2", target = primary, reply = Vec<T>, crate = ::clusterfy)]
struct Echo<T: Serialize + serde::de::DeserializeOwned + Send + 'static> {
    items: Vec<T>,
}

fn main() {
    assert_eq!(<Echo<u8> as Command>::NAME, "echo.v2");
    assert_eq!(<Echo<u8> as Command>::TARGET, Target::Primary);
}
