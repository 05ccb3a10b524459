//! The protocol's decisions as sans-IO state: handshake checks, the table of requests in flight,
//! one connection's handling of what arrives, and routing. No sockets, tasks or clocks here, so
//! they are tested directly.

mod handshake;
mod link_state;
mod requests;
mod routing;

pub use handshake::{PrimaryHandshake, check_welcome};
pub use link_state::{Incoming, LinkState, encode_answer, farewell};
pub use requests::RequestTable;
pub use routing::{Route, RouteEntry, route};
