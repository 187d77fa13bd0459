//! The `foobar` command line: one file per subcommand. `run` is the daemon;
//! the others but `check` and `completions` talk to it over the control
//! socket.
mod args;
mod backend;
mod backend_check;
mod backend_setup;
mod check;
mod completions;
mod decap;
mod detach;
pub mod exit;
mod man;
pub mod output;
mod reload;
mod run;
mod stats;
mod status;
mod vip;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::api::{self, Request};

#[derive(Debug, Parser)]
#[command(name = "foobar", version = crate::build_info::LONG_VERSION, about = "XDP layer-4 load balancer")]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "FOOBAR_SOCKET", default_value = crate::config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// How `foobar run` writes its log: text or json (one object a line).
    /// Default: the config's `[log] format`, else text.
    #[arg(long, global = true, value_enum, env = "FOOBAR_LOG_FORMAT")]
    pub log_format: Option<crate::logging::LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the load balancer to the NIC (or adopt the one a previous run
    /// left pinned) and serve until SIGINT/SIGTERM; forwarding outlives it.
    Run(run::RunArgs),
    /// Stop forwarding: detach the pinned XDP program and remove its pins
    /// (refused while a daemon runs).
    Detach(detach::DetachArgs),
    /// Validate a config file and print what it would serve (no root needed).
    Check(check::CheckArgs),
    /// Re-read the config file and apply what changed, keeping run-time
    /// changes the edit did not touch (as SIGHUP; see README "Reload").
    Reload(reload::ReloadArgs),
    /// VIPs and backends: weight, admin state, health, traffic rates.
    Status(status::StatusArgs),
    /// The datapath's counters: per verdict reason, VIP and backend.
    Stats(stats::StatsArgs),
    /// Add or remove a VIP at run time.
    #[command(subcommand)]
    Vip(vip::VipCmd),
    /// Add, remove, drain, enable or re-weight a backend at run time.
    #[command(subcommand)]
    Backend(backend::BackendCmd),
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions(completions::CompletionsArgs),
    /// On a backend: write (and with --apply, apply) the sysctls and the
    /// loopback VIP that direct server return needs.
    BackendSetup(backend_setup::BackendSetupArgs),
    /// On the LB: check that backends do not answer ARP for the VIP and do
    /// accept traffic for it (ARP and TCP SYN probes; needs CAP_NET_RAW).
    BackendCheck(backend_check::BackendCheckArgs),
    /// Write the manual pages (foobar.1, foobar-SUBCOMMAND.1) into a
    /// directory.
    Man(man::ManArgs),
    /// On a backend of an `ipip` VIP: attach, detach or count the XDP
    /// program that strips the LB's tunnel header (docs/IPIP.md).
    Decap(decap::DecapArgs),
}

pub fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            // Read once: its [log] settings set up logging first; a config
            // that does not load is reported by `run` itself, logged.
            let loaded = crate::config::load_with_text(&args.config);
            let log = loaded
                .as_ref()
                .map(|(c, _)| c.log.clone())
                .unwrap_or_default();
            crate::logging::init(
                cli.log_format.or(log.format).unwrap_or_default(),
                log.level.as_deref(),
            );
            run::run(args, loaded)
        }
        Command::Detach(args) => detach::detach(&cli.socket, args),
        Command::Check(args) => check::check(args),
        Command::Reload(args) => reload::reload(&cli.socket, args),
        Command::Status(args) => status::status(&cli.socket, args),
        Command::Stats(args) => stats::stats(&cli.socket, args),
        Command::Vip(cmd) => vip::vip(&cli.socket, cmd),
        Command::Backend(cmd) => backend::backend(&cli.socket, cmd),
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => man::man(args),
        Command::BackendSetup(args) => backend_setup::backend_setup(args),
        Command::BackendCheck(args) => backend_check::backend_check(args),
        Command::Decap(args) => decap::decap(args),
    }
}

impl Cli {
    /// Whether the command was asked for JSON output (errors then come as
    /// JSON too; see docs/JSON.md).
    pub fn wants_json(&self) -> bool {
        match &self.command {
            Command::Check(a) => a.json,
            Command::Reload(a) => a.json,
            Command::Status(a) => a.json,
            Command::Stats(a) => a.json,
            Command::Vip(c) => c.json(),
            Command::Backend(c) => c.json(),
            // backend-setup and backend-check print their own JSON report,
            // failures included (one document on stdout).
            Command::Decap(a) => a.json,
            _ => false,
        }
    }
}

/// Default config location (the systemd unit and the docs use it).
pub const DEFAULT_CONFIG: &str = "/etc/foobar/foobar.toml";

/// Sends a change request; prints the result as JSON or as `line`.
fn change(
    socket: &std::path::Path,
    request: Request,
    json: bool,
    line: String,
) -> anyhow::Result<()> {
    let result = api::call(socket, &request)?;
    if json {
        output::print_json(result.clone());
    } else {
        println!("{line}");
    }
    print_warning(&result);
    Ok(())
}

/// A change the daemon applied but could not save says so on stderr.
fn print_warning(result: &serde_json::Value) {
    if let Some(w) = result["warning"].as_str() {
        eprintln!("WARNING: {w}");
    }
}
