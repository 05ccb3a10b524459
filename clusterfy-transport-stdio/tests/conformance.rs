//! The transport conformance suite of `clusterfy-testkit` on the stdio transport, with real
//! worker processes (the test binary started again as each worker, talking over its own stdin and
//! stdout).

clusterfy_testkit::transport_conformance!(stdio, clusterfy_transport_stdio::StdioTransport::new);
