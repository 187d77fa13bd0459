//! Test support shared by the integration tests, the demo and the
//! benchmarks: the network-namespace lab, packet fixtures, and the
//! reference model of the datapath with its differential fuzzer.
pub mod failover;
pub mod fixture;
pub mod frames;
pub mod fuzz;
pub mod lab;
pub mod model;
pub mod ops;
pub mod peers;
