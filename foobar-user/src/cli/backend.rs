//! `foobar backend add|remove|drain|enable|weight`.
use std::{net::IpAddr, path::Path};

use clap::{Args, Subcommand};

use super::args;
use crate::api::{self, Request};

/// Which backend: a VIP's name and the backend's address.
#[derive(Debug, Args)]
pub struct Target {
    /// The VIP's name. Example: web
    pub vip: String,
    /// The backend's address, of the VIP's family. Example: 10.0.0.11
    #[arg(value_parser = args::ip)]
    pub address: IpAddr,
    /// Print the daemon's answer as JSON (docs/JSON.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BackendCmd {
    /// Add a backend to a VIP (its MAC is resolved first).
    /// Example: foobar backend add web 10.0.0.11 --weight 2
    Add {
        #[command(flatten)]
        target: Target,
        /// 0..=256; 0 takes no new flows.
        #[arg(long, default_value = "1", value_parser = args::weight)]
        weight: u32,
        /// A nat VIP's backend only: the port it serves on (default: the
        /// port the client asked for). Example: --port 8080
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
    },
    /// Remove a backend: no new flows; established flows finish on it.
    /// Refused for the VIP's last backend that takes new flows, unless
    /// --force.
    Remove {
        #[command(flatten)]
        target: Target,
        /// Remove it even if it is the VIP's last backend taking new flows:
        /// the VIP then drops its new traffic.
        #[arg(long)]
        force: bool,
    },
    /// No new flows to the backend; established flows continue.
    /// Example: foobar backend drain web 10.0.0.11
    Drain {
        #[command(flatten)]
        target: Target,
    },
    /// Let a drained backend take new flows again.
    Enable {
        #[command(flatten)]
        target: Target,
    },
    /// Change a backend's weight. Example: foobar backend weight web 10.0.0.11 0
    Weight {
        #[command(flatten)]
        target: Target,
        /// 0..=256; 0 takes no new flows.
        #[arg(value_parser = args::weight)]
        weight: u32,
    },
}

impl BackendCmd {
    fn target(&self) -> &Target {
        match self {
            BackendCmd::Add { target, .. }
            | BackendCmd::Remove { target, .. }
            | BackendCmd::Drain { target }
            | BackendCmd::Enable { target }
            | BackendCmd::Weight { target, .. } => target,
        }
    }

    pub fn json(&self) -> bool {
        self.target().json
    }
}

pub fn backend(socket: &Path, cmd: BackendCmd) -> anyhow::Result<()> {
    let json = cmd.json();
    let Target { vip, address, .. } = cmd.target();
    let (vip, address) = (vip.clone(), *address);
    let (request, line) = match cmd {
        BackendCmd::Add { weight, port, .. } => (
            Request::BackendAdd {
                vip: vip.clone(),
                address,
                weight,
                port,
            },
            match port {
                Some(p) => format!(
                    "backend {} added to VIP {vip} (weight {weight})",
                    std::net::SocketAddr::new(address, p)
                ),
                None => format!("backend {address} added to VIP {vip} (weight {weight})"),
            },
        ),
        BackendCmd::Remove { force, .. } => {
            let request = Request::BackendRemove {
                vip: vip.clone(),
                address,
                force,
            };
            let result = api::call(socket, &request)?;
            if json {
                super::output::print_json(result.clone());
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
        BackendCmd::Drain { .. } => (
            Request::BackendDrain {
                vip: vip.clone(),
                address,
            },
            format!("backend {address} of VIP {vip} drained: no new flows"),
        ),
        BackendCmd::Enable { .. } => (
            Request::BackendEnable {
                vip: vip.clone(),
                address,
            },
            format!("backend {address} of VIP {vip} enabled"),
        ),
        BackendCmd::Weight { weight, .. } => (
            Request::BackendWeight {
                vip: vip.clone(),
                address,
                weight,
            },
            format!("backend {address} of VIP {vip}: weight {weight}"),
        ),
    };
    super::change(socket, request, json, line)
}
