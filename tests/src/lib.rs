//! Test support shared by the integration tests, the demo and (later) the
//! benchmarks: the network-namespace lab and packet fixtures.
pub mod frames;
pub mod lab;
pub mod peers;
