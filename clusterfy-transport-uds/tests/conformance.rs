//! The transport conformance suite of `clusterfy-testkit` on the UDS transport, with real worker
//! processes (the test binary started again as each worker).

clusterfy_testkit::transport_conformance!(uds, clusterfy_transport_uds::UdsTransport::new);
