//! `foobar run`: validate the config, resolve backend MACs, load and attach
//! the datapath, program it, forward until SIGINT/SIGTERM, then detach and
//! print the final counters. Every refusal happens before anything is
//! attached.
use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use tracing::info;

use crate::{
    config::{self, Config},
    datapath::{AttachMode, Datapath, LoadOptions, Stats},
    neigh,
    plan::{self, Plan},
};

/// How long to wait for the backends' MACs at start.
const NEIGH_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Config file (TOML; see examples/foobar.toml).
    #[arg(long, short, default_value = super::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Interface to attach to; overrides `datapath.interface`.
    #[arg(long)]
    pub iface: Option<String>,
    /// Where XDP runs: native (driver) or skb (generic); overrides
    /// `datapath.xdp_mode`.
    #[arg(long, value_parser = ["native", "skb"])]
    pub xdp_mode: Option<String>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging();
    let config = config::load(&args.config)?;
    let iface = args
        .iface
        .clone()
        .or_else(|| config.datapath.interface.clone())
        .context("no interface: give --iface IF or set datapath.interface in the config")?;
    let mode = match args.xdp_mode.as_deref() {
        Some("skb") => AttachMode::Skb,
        Some(_) => AttachMode::Native,
        None => config.datapath.xdp_mode,
    };
    if !nix::unistd::geteuid().is_root() {
        bail!("foobar run needs root (to load XDP programs and write BPF maps): run it with sudo");
    }
    let ifindex = nix::net::if_::if_nametoindex(iface.as_str())
        .map_err(|_| anyhow::anyhow!("interface {iface} does not exist (see `ip link`)"))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, iface, ifindex, mode))
}

async fn serve(
    config: Config,
    iface: String,
    ifindex: u32,
    mode: AttachMode,
) -> anyhow::Result<()> {
    let mut addrs: Vec<_> = config
        .vips
        .iter()
        .flat_map(|v| v.backends.iter().map(|b| b.address))
        .collect();
    addrs.sort();
    addrs.dedup();
    let macs = neigh::resolve(&iface, ifindex, &addrs, NEIGH_TIMEOUT).await?;
    let plan = plan::build(&config, &macs)?;

    let mut datapath = Datapath::load(&LoadOptions {
        flow_table_size: config.datapath.flow_table_size,
    })
    .context("loading the XDP programs")?;
    datapath.apply(&plan).context("programming the BPF maps")?;
    datapath.attach(&iface, mode)?;
    info!(iface = %iface, mode = mode.name(), vips = plan.vips.len(), "attached; forwarding");
    for (vip, planned) in config.vips.iter().zip(&plan.vips) {
        info!(
            vip = %vip.name,
            address = %vip.address,
            port = vip.port,
            protocol = vip.protocol.name(),
            backends = planned.backend_ids.len(),
            ring = planned.ring.len(),
            "serving"
        );
    }

    let signal = wait_for_shutdown().await?;
    info!(signal, "shutting down");
    datapath.detach().context("detaching the XDP program")?;
    info!(iface = %iface, "detached");
    let stats = datapath.stats(plan.vips.len(), plan.backends.len())?;
    print!("{}", render_stats(&config, &plan, &stats));
    Ok(())
}

async fn wait_for_shutdown() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FOOBAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The counters as a plain table (the line formats are parsed by the demo
/// and the tests: `reason NAME PACKETS BYTES`, `vip NAME ...`,
/// `backend VIP ADDRESS ...`).
pub fn render_stats(config: &Config, plan: &Plan, stats: &Stats) -> String {
    let mut out = String::from("final counters (packets bytes):\n");
    for (name, c) in &stats.reasons {
        out.push_str(&format!("reason {name} {} {}\n", c.packets, c.bytes));
    }
    for (vip, planned) in config.vips.iter().zip(&plan.vips) {
        let c = &stats.vips[planned.service.vip_id as usize];
        out.push_str(&format!("vip {} {} {}\n", vip.name, c.packets, c.bytes));
        for (b, id) in vip.backends.iter().zip(&planned.backend_ids) {
            let c = &stats.backends[*id as usize];
            out.push_str(&format!(
                "backend {} {} {} {}\n",
                vip.name, b.address, c.packets, c.bytes
            ));
        }
    }
    out
}
