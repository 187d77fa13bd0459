//! `foobar decap`: on a backend of an `ipip` VIP, attach (or detach, or
//! read the counters of) the small XDP program that strips the LB's outer
//! IP header. It needs no daemon and no config: the program stays attached
//! through its pinned link after the command exits. See docs/IPIP.md.
use std::{net::IpAddr, path::PathBuf};

use anyhow::{bail, Context as _};

use crate::{
    config::AttachMode,
    decap::{self, Counter, Filter, DEFAULT_PIN_ROOT},
};

#[derive(Debug, clap::Args)]
pub struct DecapArgs {
    /// The backend's interface the LB's encapsulated packets arrive on.
    #[arg(long)]
    pub iface: String,
    /// Outer sources to accept: the LB nodes' addresses (IPv4 and/or IPv6),
    /// or prefixes (ADDR/LEN) such as an LB's `datapath.ipip_source`.
    /// Encapsulated packets from any other source pass untouched. Required
    /// to attach: an empty set would decapsulate nothing.
    #[arg(long, value_delimiter = ',')]
    pub allow_from: Vec<decap::Prefix>,
    /// Outer destination addresses to accept; default: every address this
    /// host has when the program is attached, loopback excepted.
    #[arg(long, value_delimiter = ',')]
    pub local: Vec<IpAddr>,
    /// Where XDP runs: native (driver) or skb (generic).
    #[arg(long, value_parser = ["native", "skb"], default_value = "native")]
    pub xdp_mode: String,
    /// Detach the program from the interface and remove its pins.
    #[arg(long, conflicts_with_all = ["allow_from", "local", "stats"])]
    pub detach: bool,
    /// Print the program's counters.
    #[arg(long, conflicts_with_all = ["allow_from", "local"])]
    pub stats: bool,
    /// With --stats: JSON instead of text.
    #[arg(long, requires = "stats")]
    pub json: bool,
    /// bpffs directory the program is pinned under, one subdirectory per
    /// interface (bpffs is mounted at /sys/fs/bpf first if absent).
    #[arg(long, env = "FOOBAR_DECAP_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
}

pub fn decap(args: DecapArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("foobar decap needs root (to load XDP programs and pin them): run it with sudo");
    }
    let iface = &args.iface;
    if args.stats {
        let counters = decap::pinned_counters(&args.pin_root, iface)?;
        if args.json {
            println!("{}", counters.to_json());
        } else {
            for c in Counter::ALL {
                println!("{:<20} {}", c.name(), counters.get(c));
            }
        }
        return Ok(());
    }
    if args.detach {
        decap::detach(&args.pin_root, iface)?;
        println!("decap program detached from {iface}");
        return Ok(());
    }
    if args.allow_from.is_empty() {
        return Err(decap::DecapError::NoSource.into());
    }
    let local = if args.local.is_empty() {
        decap::local_addresses().context("listing this host's addresses (getifaddrs)")?
    } else {
        args.local.clone()
    };
    if local.is_empty() {
        bail!("this host has no address but loopback ones: give the outer destinations with --local ADDR[,ADDR]");
    }
    let mode = match args.xdp_mode.as_str() {
        "skb" => AttachMode::Skb,
        _ => AttachMode::Native,
    };
    let filter = Filter {
        allow_from: args.allow_from.clone(),
        local,
    };
    decap::attach(&args.pin_root, iface, mode, &filter)?;
    fn list<T: ToString>(set: &[T]) -> String {
        set.iter().map(T::to_string).collect::<Vec<_>>().join(",")
    }
    println!(
        "decap program attached to {iface} ({} mode), pinned in {}: decapsulating \
         from {} to {}",
        mode.name(),
        decap::pin_dir(&args.pin_root, iface).display(),
        list(&filter.allow_from),
        list(&filter.local),
    );
    warn_about_sysctls(iface);
    Ok(())
}

/// The inner packet's source is the client, arriving on `iface`: strict
/// reverse-path filtering drops it unless the route back to the client is
/// through `iface` too. The kernel uses the larger of `all` and the
/// interface's value.
fn warn_about_sysctls(iface: &str) {
    let read = |key: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{key}/rp_filter"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    };
    let effective = read("all").max(read(iface));
    if effective == Some(1) {
        eprintln!(
            "WARNING: strict reverse-path filtering (rp_filter=1) on {iface}: decapsulated \
             packets are dropped unless the route to each client leaves through {iface}. \
             Set net.ipv4.conf.{iface}.rp_filter=2 and net.ipv4.conf.all.rp_filter=2 \
             (see docs/IPIP.md)"
        );
    }
}
