//! `foobar vip add|remove|purge-affinity`.
use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use clap::Subcommand;

use super::args::{self, HealthArgs};
use crate::{
    api::Request,
    config::{Forwarding, Protocol, Scheduler},
};

#[derive(Debug, Subcommand)]
pub enum VipCmd {
    /// Add a VIP (no backends yet: add them with `foobar backend add`).
    /// Example: foobar vip add web 10.0.0.100 80 --scheduler maglev --check http
    Add {
        /// A unique name (letters, digits, - and _). Example: web
        name: String,
        /// The virtual IPv4 or IPv6 address (the LB node must hold it).
        /// An IPv6 VIP needs --forwarding dsr or ipip. Example: 10.0.0.100
        #[arg(value_parser = args::ip)]
        address: IpAddr,
        /// 1..=65535, or 0 for every port. Example: 443
        port: u16,
        /// tcp or udp.
        #[arg(long, default_value = "tcp", value_parser = args::protocol)]
        protocol: Protocol,
        /// rr (weighted round-robin), maglev (consistent hashing) or wlc
        /// (weighted least-connections).
        #[arg(long, default_value = "rr", value_parser = args::scheduler)]
        scheduler: Scheduler,
        /// How packets reach the backends: nat (full NAT: backends
        /// unmodified, replies back through the LB), dsr (L2 direct server
        /// return), ipip (IPv4-in-IPv4 tunnel; needs a daemon started
        /// with datapath.ipip_source) or dnat (destination NAT keeping the
        /// client's address; needs a daemon started with a dnat VIP).
        #[arg(long, default_value = "nat", value_parser = args::forwarding)]
        forwarding: Forwarding,
        /// With --forwarding nat: the source address of translated packets,
        /// an address of the LB's interface (default: the node's
        /// [datapath] snat_address, else the interface's primary address).
        /// Example: --snat-address 10.0.0.5
        #[arg(long, value_parser = args::ipv4)]
        snat_address: Option<Ipv4Addr>,
        /// Slots of the Maglev table, a prime (default 65537); with
        /// --scheduler maglev. Example: --maglev-table-size 251
        #[arg(long, value_parser = args::maglev_table_size)]
        maglev_table_size: Option<u32>,
        /// Source affinity: a client's new connections go to its previous
        /// backend for this long after its latest one ("300s", "5m", "1h").
        /// Needs a daemon started with a source-affinity table.
        #[arg(long, value_name = "DURATION", value_parser = args::duration_s)]
        persistence: Option<u32>,
        #[command(flatten)]
        health: HealthArgs,
        /// Print the daemon's answer as JSON (docs/JSON.md).
        #[arg(long)]
        json: bool,
    },
    /// Remove a VIP; established flows of its backends finish.
    Remove {
        /// The VIP's name. Example: web
        name: String,
        /// Print the daemon's answer as JSON (docs/JSON.md).
        #[arg(long)]
        json: bool,
    },
    /// Forget the source-affinity choices of a VIP (of every VIP without
    /// NAME): each client's next new connection is scheduled afresh.
    PurgeAffinity {
        /// The VIP's name (none: every VIP). Example: web
        name: Option<String>,
        /// Print the daemon's answer as JSON (docs/JSON.md).
        #[arg(long)]
        json: bool,
    },
}

impl VipCmd {
    pub fn json(&self) -> bool {
        match self {
            VipCmd::Add { json, .. }
            | VipCmd::Remove { json, .. }
            | VipCmd::PurgeAffinity { json, .. } => *json,
        }
    }
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
            maglev_table_size,
            persistence,
            health,
            snat_address,
            json,
        } => {
            let health = health.spec().map_err(super::exit::UsageError)?;
            let line = format!(
                "VIP {name} added: {}/{}",
                std::net::SocketAddr::new(address, port),
                protocol.name()
            );
            let request = Request::VipAdd {
                name,
                address,
                port,
                protocol,
                scheduler,
                forwarding,
                maglev_table_size,
                persistence_timeout_s: persistence,
                health,
                snat_address,
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
