//! `foobar check`: validate a config and summarise it, without root.
//! It reads and validates through `config::load`, the entry point `foobar
//! run` uses too, so both accept exactly the same files; `run` then also
//! needs what only the host can tell (root, the interface, backend MACs).
use std::path::PathBuf;

use crate::config;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Config file to validate.
    #[arg(long, short, default_value = super::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Print the validated config as JSON (docs/JSON.md).
    #[arg(long)]
    pub json: bool,
}

pub fn check(args: CheckArgs) -> anyhow::Result<()> {
    let config = config::load(&args.config)?;
    if args.json {
        let vips: Vec<_> = config
            .vips
            .iter()
            .map(|v| {
                serde_json::json!({
                    "name": v.name,
                    "address": v.address,
                    "port": v.port,
                    "protocol": v.protocol.name(),
                    "backends": v.backends.iter().map(|b| serde_json::json!({
                        "address": b.address, "weight": b.weight,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        super::output::print_json(serde_json::json!({ "valid": true, "vips": vips }));
    } else {
        println!("{}: valid", args.config.display());
        for v in &config.vips {
            println!(
                "  vip {} {}/{}: {} backend(s)",
                v.name,
                std::net::SocketAddr::new(v.address, v.port),
                v.protocol.name(),
                v.backends.len()
            );
        }
    }
    Ok(())
}
