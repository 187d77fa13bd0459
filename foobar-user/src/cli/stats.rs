//! `foobar stats`: the datapath's counters.
use std::path::Path;

use crate::api::{self, Request};

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    #[arg(long)]
    pub json: bool,
}

pub fn stats(socket: &Path, args: StatsArgs) -> anyhow::Result<()> {
    let s = api::call(socket, &Request::Stats)?;
    if args.json {
        println!("{s}");
        return Ok(());
    }
    println!("{:<22} {:>14} {:>16}", "REASON", "PACKETS", "BYTES");
    if let Some(reasons) = s["reasons"].as_object() {
        for (name, c) in reasons {
            println!("{name:<22} {:>14} {:>16}", c["packets"], c["bytes"]);
        }
    }
    if let Some(events) = s["events"].as_object() {
        println!("\n{:<22} {:>14}", "EVENT", "PACKETS");
        for (name, n) in events {
            println!("{name:<22} {n:>14}");
        }
    }
    for v in s["vips"].as_array().into_iter().flatten() {
        println!(
            "\nVIP {:<18} {:>14} {:>16}",
            v["name"].as_str().unwrap_or("?"),
            v["packets"],
            v["bytes"]
        );
        for b in v["backends"].as_array().into_iter().flatten() {
            println!(
                "  {:<20} {:>14} {:>16}",
                b["address"].as_str().unwrap_or("?"),
                b["packets"],
                b["bytes"]
            );
        }
    }
    Ok(())
}
