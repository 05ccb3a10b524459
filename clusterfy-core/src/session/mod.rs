//! The protocol's decisions as sans-IO state: handshake checks, the table of requests in flight,
//! one connection's handling of what arrives, and routing. No sockets, tasks or clocks here, so
//! they are tested directly.

mod connection;
mod handshake;
mod requests;
mod routing;

pub use connection::{Connection, Incoming, encode_answer, farewell};
pub use handshake::{PrimaryHandshake, check_welcome};
pub use requests::RequestTable;
pub use routing::{Route, RouteEntry, route};
