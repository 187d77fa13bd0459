//! `foobar stats`: the datapath's counters as aligned tables, or the JSON
//! document (docs/JSON.md).
use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use super::output::{Align, Table};
use crate::api::{self, Request};

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print the counters as JSON (schema: docs/JSON.md).
    #[arg(long)]
    pub json: bool,
}

pub fn stats(socket: &Path, args: StatsArgs) -> anyhow::Result<()> {
    let s = api::call(socket, &Request::Stats)?;
    if args.json {
        super::output::print_json(s);
        return Ok(());
    }
    let typed: Stats = serde_json::from_value(s)
        .map_err(|e| anyhow::anyhow!("the daemon's counters are not understood: {e}"))?;
    print!("{}", render(&typed));
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub reasons: BTreeMap<String, Counters>,
    pub events: BTreeMap<String, u64>,
    pub vips: Vec<VipCounters>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct VipCounters {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    pub backends: Vec<BackendCounters>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BackendCounters {
    pub address: String,
    pub packets: u64,
    pub bytes: u64,
}

pub const REASON_COLUMNS: [(&str, Align); 3] = [
    ("REASON", Align::Left),
    ("PACKETS", Align::Right),
    ("BYTES", Align::Right),
];
pub const TRAFFIC_COLUMNS: [(&str, Align); 4] = [
    ("VIP", Align::Left),
    ("BACKEND", Align::Left),
    ("PACKETS", Align::Right),
    ("BYTES", Align::Right),
];

pub fn render(s: &Stats) -> String {
    let mut reasons = Table::new(&REASON_COLUMNS);
    for (name, c) in &s.reasons {
        reasons.row(vec![
            name.clone(),
            c.packets.to_string(),
            c.bytes.to_string(),
        ]);
    }
    let mut out = reasons.render("");
    if !s.events.is_empty() {
        let mut events = Table::new(&[("EVENT", Align::Left), ("PACKETS", Align::Right)]);
        for (name, n) in &s.events {
            events.row(vec![name.clone(), n.to_string()]);
        }
        out.push('\n');
        out.push_str(&events.render(""));
    }
    if !s.vips.is_empty() {
        let mut traffic = Table::new(&TRAFFIC_COLUMNS);
        for v in &s.vips {
            traffic.row(vec![
                v.name.clone(),
                "*".into(),
                v.packets.to_string(),
                v.bytes.to_string(),
            ]);
            for b in &v.backends {
                traffic.row(vec![
                    v.name.clone(),
                    b.address.clone(),
                    b.packets.to_string(),
                    b.bytes.to_string(),
                ]);
            }
        }
        out.push('\n');
        out.push_str(&traffic.render(""));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::assert_aligned;

    #[test]
    fn counters_line_up_in_their_columns() {
        let s: Stats = serde_json::from_value(serde_json::json!({
            "reasons": {
                "forwarded": { "packets": 123456789012u64, "bytes": 9 },
                "pass_not_vip": { "packets": 3, "bytes": 98765432101234u64 }
            },
            "events": { "midflow_miss": 7 },
            "vips": [{ "name": "web", "packets": 10, "bytes": 1000, "backends": [
                { "address": "10.0.0.11", "packets": 4, "bytes": 400 },
                { "address": "192.168.200.201", "packets": 6000000, "bytes": 600 }
            ]}]
        }))
        .unwrap();
        let text = render(&s);
        let blocks: Vec<&str> = text.split("\n\n").collect();
        assert_eq!(blocks.len(), 3, "{text}");
        assert_aligned(blocks[0], &REASON_COLUMNS);
        assert_aligned(blocks[2], &TRAFFIC_COLUMNS);
        assert!(blocks[2].contains("192.168.200.201"), "{text}");
        let forwarded: Vec<&str> = blocks[0]
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(forwarded, ["forwarded", "123456789012", "9"]);
    }
}
