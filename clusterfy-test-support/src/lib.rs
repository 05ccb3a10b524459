//! What Clusterfy's own tests and benchmarks need beside the conformance suites, kept out of the
//! published `clusterfy-testkit`: a `redis-server` of their own on a free loopback port, and a
//! bounded HTTP load generator for cluster mode.

pub mod http_load;
pub mod redis_server;
