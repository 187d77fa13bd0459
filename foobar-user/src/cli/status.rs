//! `foobar status`: VIPs and backends as a table, or JSON for scripts.
use std::path::Path;

use serde_json::Value;

use crate::api::{self, Request};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
}

pub fn status(socket: &Path, args: StatusArgs) -> anyhow::Result<()> {
    let s = api::call(socket, &Request::Status)?;
    if args.json {
        println!("{s}");
    } else {
        print!("{}", render(&s));
    }
    Ok(())
}

fn rate(v: &Value) -> String {
    let x = v.as_f64().unwrap_or(0.0);
    match x {
        x if x >= 1e9 => format!("{:.1}G", x / 1e9),
        x if x >= 1e6 => format!("{:.1}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

fn render(s: &Value) -> String {
    let mut out = format!(
        "interface {}: flow table {} of {} entries\n",
        s["interface"].as_str().unwrap_or("?"),
        s["flow_table"]["entries"],
        s["flow_table"]["capacity"]
    );
    for v in s["vips"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\nVIP {} {}:{}/{} ({}, {})  {} pkt/s  {} B/s\n",
            v["name"].as_str().unwrap_or("?"),
            v["address"].as_str().unwrap_or("?"),
            v["port"],
            v["protocol"].as_str().unwrap_or("?"),
            v["scheduler"].as_str().unwrap_or("?"),
            v["forwarding"].as_str().unwrap_or("?"),
            rate(&v["packets_per_s"]),
            rate(&v["bytes_per_s"]),
        ));
        out.push_str(&format!(
            "  {:<16} {:>6} {:<8} {:<6} {:>7} {:>8} {:>8}  {}\n",
            "BACKEND", "WEIGHT", "ADMIN", "HEALTH", "ACTIVE", "PKT/S", "B/S", "LAST CHECK"
        ));
        for b in v["backends"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {:<16} {:>6} {:<8} {:<6} {:>7} {:>8} {:>8}  {}\n",
                b["address"].as_str().unwrap_or("?"),
                b["weight"],
                b["admin"].as_str().unwrap_or("?"),
                b["health"].as_str().unwrap_or("?"),
                b["active_flows"],
                rate(&b["packets_per_s"]),
                rate(&b["bytes_per_s"]),
                b["last_check"].as_str().unwrap_or(""),
            ));
        }
    }
    let removed = s["removed_backends"].as_array().map(Vec::len).unwrap_or(0);
    if removed > 0 {
        out.push_str(&format!(
            "\n{removed} removed backend(s) still carrying their established flows\n"
        ));
    }
    out.push_str(&crate::vrrp::status::render_text(&s["vrrp"]));
    out
}
