//! The `foobar` command line: one file per subcommand.
mod check;
mod run;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "foobar", version, about = "XDP layer-4 load balancer")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the load balancer to the NIC and forward until SIGINT/SIGTERM.
    Run(run::RunArgs),
    /// Validate a config file and print what it would serve (no root needed).
    Check(check::CheckArgs),
}

pub fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Check(args) => check::check(args),
    }
}

/// Default config location (the systemd unit and the docs use it).
pub const DEFAULT_CONFIG: &str = "/etc/foobar/foobar.toml";
