//! `foobar vip add|remove`.
use std::path::Path;

use clap::Subcommand;

use crate::api::Request;

#[derive(Debug, Subcommand)]
pub enum VipCmd {
    /// Add a VIP (no backends yet: add them with `foobar backend add`).
    Add {
        /// A unique name.
        name: String,
        /// The virtual IPv4 address (the LB node must hold it).
        address: String,
        /// 1..=65535, or 0 for every port.
        port: u16,
        #[arg(long, default_value = "tcp")]
        protocol: String,
        #[arg(long, default_value = "rr")]
        scheduler: String,
        #[arg(long, default_value = "dsr")]
        forwarding: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a VIP; established flows of its backends finish.
    Remove {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Forget the source-affinity choices of a VIP (of every VIP without
    /// NAME): each client's next new connection is scheduled afresh.
    PurgeAffinity {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn vip(socket: &Path, cmd: VipCmd) -> anyhow::Result<()> {
    match cmd {
        VipCmd::Add {
            name,
            address,
            port,
            protocol,
            scheduler,
            forwarding,
            json,
        } => {
            let line = format!("VIP {name} added: {address}:{port}/{protocol}");
            let request = Request::VipAdd {
                name,
                address,
                port,
                protocol: Some(protocol),
                scheduler: Some(scheduler),
                forwarding: Some(forwarding),
            };
            super::change(socket, request, json, line)
        }
        VipCmd::Remove { name, json } => {
            let line = format!("VIP {name} removed");
            super::change(socket, Request::VipRemove { name }, json, line)
        }
        VipCmd::PurgeAffinity { name, json } => {
            let line = format!(
                "source affinity forgotten for {}",
                name.as_deref()
                    .map_or("every VIP".to_owned(), |n| format!("VIP {n}"))
            );
            super::change(socket, Request::AffinityPurge { vip: name }, json, line)
        }
    }
}
