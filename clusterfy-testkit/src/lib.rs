#![doc = include_str!("../README.md")]

pub mod storage;
pub mod transport;
mod watchdog;

/// Expands to the `main` of a test target (declared with `harness = false`) that runs the
/// transport conformance suite on a transport: one named test `<name>::<case>` per case.
///
/// `$name` prefixes the test names; `$factory` is a `Fn() -> impl Transport` called for every
/// case and in every peer process. Add `, peers = in_process` for transports whose worker side
/// must run in the same process ([`transport::PeerMode::InProcess`]).
///
/// ```no_run
/// # use clusterfy_testkit::transport::DuplexReference as MyTransport;
/// clusterfy_testkit::transport_conformance!(my_transport, || MyTransport::new());
/// ```
#[macro_export]
macro_rules! transport_conformance {
    ($name:ident, $factory:expr, peers = in_process $(,)?) => {
        fn main() -> ::std::process::ExitCode {
            $crate::transport::run_suite(
                ::core::stringify!($name),
                $crate::transport::PeerMode::InProcess,
                $factory,
            )
        }
    };
    ($name:ident, $factory:expr $(,)?) => {
        fn main() -> ::std::process::ExitCode {
            $crate::transport::run_suite(
                ::core::stringify!($name),
                $crate::transport::PeerMode::Process,
                $factory,
            )
        }
    };
}
