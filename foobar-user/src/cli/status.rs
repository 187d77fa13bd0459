//! `foobar status`: VIPs and backends as aligned tables (like `ipvsadm -Ln
//! --stats` and HAProxy's `show stat`), or the JSON document for scripts
//! (docs/JSON.md). The text is formatted from typed values read back from
//! the daemon's answer.
use std::path::Path;

use serde::Deserialize;

use super::output::{ago, si, Align, Table};
use crate::api::{self, Request};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the status as JSON (schema: docs/JSON.md).
    #[arg(long)]
    pub json: bool,
}

pub fn status(socket: &Path, args: StatusArgs) -> anyhow::Result<()> {
    let s = api::call(socket, &Request::Status)?;
    if args.json {
        super::output::print_json(s);
    } else {
        let typed: Status = serde_json::from_value(s)
            .map_err(|e| anyhow::anyhow!("the daemon's status is not understood: {e}"))?;
        print!("{}", render(&typed));
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    pub interface: String,
    pub flow_table: FlowTable,
    pub vips: Vec<Vip>,
    pub removed_backends: Vec<serde_json::Value>,
    /// The VRRP instances, rendered by `vrrp::status::render_text`.
    pub vrrp: serde_json::Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FlowTable {
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Vip {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub protocol: String,
    pub scheduler: String,
    pub forwarding: String,
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Backend {
    pub address: String,
    pub weight: u32,
    pub admin: String,
    pub health: String,
    pub health_since_s: Option<f64>,
    pub check: Option<Check>,
    pub last_check: String,
    pub active_flows: u64,
    pub new_flows_per_s: f64,
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Check {
    pub result: String,
    pub duration_ms: f64,
    pub age_s: f64,
    pub consecutive_failures: u32,
}

/// The columns of a VIP's backend table.
pub const BACKEND_COLUMNS: [(&str, Align); 13] = [
    ("BACKEND", Align::Left),
    ("WEIGHT", Align::Right),
    ("ADMIN", Align::Left),
    ("HEALTH", Align::Left),
    ("SINCE", Align::Right),
    ("CHECK", Align::Left),
    ("TOOK", Align::Right),
    ("FAILS", Align::Right),
    ("ACTIVE", Align::Right),
    ("NEW/S", Align::Right),
    ("PKT/S", Align::Right),
    ("B/S", Align::Right),
    ("LAST CHECK", Align::Left),
];

pub fn render(s: &Status) -> String {
    let mut out = format!(
        "interface {}: flow table {} of {} entries\n",
        s.interface, s.flow_table.entries, s.flow_table.capacity
    );
    for v in &s.vips {
        out.push_str(&format!(
            "\nVIP {} {}/{} ({}, {})  {} pkt/s  {} B/s\n",
            v.name,
            // An IPv6 address goes in brackets before its port.
            match v.address.parse::<std::net::IpAddr>() {
                Ok(a) => std::net::SocketAddr::new(a, v.port).to_string(),
                Err(_) => format!("{}:{}", v.address, v.port),
            },
            v.protocol,
            v.scheduler,
            v.forwarding,
            si(v.packets_per_s),
            si(v.bytes_per_s),
        ));
        let mut table = Table::new(&BACKEND_COLUMNS);
        for b in &v.backends {
            let (result, took, fails) = match &b.check {
                Some(c) => (
                    c.result.clone(),
                    format!("{:.1}ms", c.duration_ms),
                    c.consecutive_failures.to_string(),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            table.row(vec![
                b.address.clone(),
                b.weight.to_string(),
                b.admin.clone(),
                b.health.clone(),
                b.health_since_s.map_or("-".into(), ago),
                result,
                took,
                fails,
                b.active_flows.to_string(),
                si(b.new_flows_per_s),
                si(b.packets_per_s),
                si(b.bytes_per_s),
                b.last_check.clone(),
            ]);
        }
        out.push_str(&table.render("  "));
    }
    let removed = s.removed_backends.len();
    if removed > 0 {
        out.push_str(&format!(
            "\n{removed} removed backend(s) still carrying their established flows\n"
        ));
    }
    out.push_str(&crate::vrrp::status::render_text(&s.vrrp));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::assert_aligned;

    #[test]
    fn backend_rows_line_up_and_show_the_latest_check() {
        let doc = serde_json::json!({
            "interface": "eth0",
            "flow_table": { "entries": 12, "capacity": 65536 },
            "vips": [{
                "name": "web", "address": "10.0.0.100", "port": 80, "protocol": "tcp",
                "scheduler": "rr", "forwarding": "dsr",
                "packets_per_s": 1500.0, "bytes_per_s": 2.5e6,
                "backends": [
                    { "address": "10.0.0.11", "weight": 1, "admin": "enabled", "health": "up",
                      "health_since_s": 3725.0, "active_flows": 7, "packets_per_s": 1000.0,
                      "bytes_per_s": 1.5e6, "last_check": "connect to 10.0.0.11:80 succeeded",
                      "check": { "result": "passed", "duration_ms": 0.4, "age_s": 0.2,
                                 "consecutive_failures": 0 } },
                    { "address": "192.168.100.200", "weight": 256, "admin": "drained",
                      "health": "down", "health_since_s": 4.0, "active_flows": 1234567,
                      "packets_per_s": 0.0, "bytes_per_s": 0.0,
                      "last_check": "connect to 192.168.100.200:80: Connection refused",
                      "check": { "result": "failed", "duration_ms": 1000.0, "age_s": 1.0,
                                 "consecutive_failures": 12 } },
                    { "address": "10.0.0.13", "weight": 2, "admin": "enabled", "health": "up",
                      "last_check": "not checked yet" }
                ]
            }],
            "removed_backends": []
        });
        let s: Status = serde_json::from_value(doc).unwrap();
        let text = render(&s);
        let table: String = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("BACKEND"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(table.lines().count(), 4, "{text}");
        assert_aligned(&table, &BACKEND_COLUMNS);
        let drained = table.lines().nth(2).unwrap();
        let cells: Vec<&str> = drained.split_whitespace().collect();
        assert_eq!(
            &cells[..11],
            [
                "192.168.100.200",
                "256",
                "drained",
                "down",
                "4s",
                "failed",
                "1000.0ms",
                "12",
                "1234567",
                "0",
                "0"
            ]
        );
        assert!(drained.ends_with("Connection refused"), "{drained}");
        assert!(table.lines().nth(1).unwrap().contains(" 1h02m "), "{table}");
        assert!(text.contains("1.5k pkt/s  2.5M B/s"), "{text}");
    }
}
