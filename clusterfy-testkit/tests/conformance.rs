//! The transport suite run on its own reference, the in-process duplex transport: a failure here
//! is a bug in the suite, not in a transport.

clusterfy_testkit::transport_conformance!(
    duplex,
    clusterfy_testkit::transport::DuplexReference::new,
    peers = in_process
);
