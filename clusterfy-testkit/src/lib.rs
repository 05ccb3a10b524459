//! Conformance suites for Clusterfy transports and storage backends.
