//! What Clusterfy's own tests and benchmarks need beside the conformance suites, kept out of the
//! published `clusterfy-testkit`: a `redis-server` of their own on a free loopback port.

pub mod redis_server;
