//! foobar's control plane as a library: the `foobar` binary is a thin CLI
//! over it, and the tests and the lab drive the same code.
pub mod accept;
pub mod api;
pub mod build_info;
pub mod caps;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod decap;
pub mod health;
pub mod logging;
pub mod maglev;
pub mod metrics;
pub mod neigh;
pub mod plan;
pub mod reload;
pub mod ring;
pub mod snat;
pub mod state;
pub mod state_file;
pub mod vrrp;
