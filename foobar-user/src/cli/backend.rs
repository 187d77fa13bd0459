//! `foobar backend add|remove|drain|enable|weight`.
use std::path::Path;

use clap::Subcommand;

use crate::api::{self, Request};

#[derive(Debug, Subcommand)]
pub enum BackendCmd {
    /// Add a backend to a VIP (its MAC is resolved first).
    Add {
        vip: String,
        address: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[arg(long)]
        json: bool,
    },
    /// Remove a backend: no new flows; established flows finish on it.
    /// Refused for the VIP's last backend that takes new flows, unless
    /// --force.
    Remove {
        vip: String,
        address: String,
        /// Remove it even if it is the VIP's last backend taking new flows:
        /// the VIP then drops its new traffic.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// No new flows to the backend; established flows continue.
    Drain {
        vip: String,
        address: String,
        #[arg(long)]
        json: bool,
    },
    /// Let a drained backend take new flows again.
    Enable {
        vip: String,
        address: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a backend's weight (0..=256; 0 takes no new flows).
    Weight {
        vip: String,
        address: String,
        weight: u32,
        #[arg(long)]
        json: bool,
    },
}

pub fn backend(socket: &Path, cmd: BackendCmd) -> anyhow::Result<()> {
    let (request, json, line) = match cmd {
        BackendCmd::Add {
            vip,
            address,
            weight,
            json,
        } => (
            Request::BackendAdd {
                vip: vip.clone(),
                address: address.clone(),
                weight: Some(weight),
            },
            json,
            format!("backend {address} added to VIP {vip} (weight {weight})"),
        ),
        BackendCmd::Remove {
            vip,
            address,
            force,
            json,
        } => {
            let request = Request::BackendRemove {
                vip: vip.clone(),
                address: address.clone(),
                force,
            };
            let result = api::call(socket, &request)?;
            if json {
                println!("{result}");
            } else {
                println!("backend {address} removed from VIP {vip}; its established flows finish");
            }
            if result["vip_drops_new_flows"] == true {
                eprintln!(
                    "warning: VIP {vip} has no backend left that takes new flows: it drops \
                     its new traffic until one is added or enabled"
                );
            }
            return Ok(());
        }
        BackendCmd::Drain { vip, address, json } => (
            Request::BackendDrain {
                vip: vip.clone(),
                address: address.clone(),
            },
            json,
            format!("backend {address} of VIP {vip} drained: no new flows"),
        ),
        BackendCmd::Enable { vip, address, json } => (
            Request::BackendEnable {
                vip: vip.clone(),
                address: address.clone(),
            },
            json,
            format!("backend {address} of VIP {vip} enabled"),
        ),
        BackendCmd::Weight {
            vip,
            address,
            weight,
            json,
        } => (
            Request::BackendWeight {
                vip: vip.clone(),
                address: address.clone(),
                weight,
            },
            json,
            format!("backend {address} of VIP {vip}: weight {weight}"),
        ),
    };
    super::change(socket, request, json, line)
}
