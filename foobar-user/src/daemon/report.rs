//! What `foobar status`, `foobar stats` and the metrics show.
use std::collections::HashMap;

use serde_json::json;

use super::{events::mac_text, Owner};
use crate::{health, metrics, state::Admin};

impl Owner {
    pub(super) fn status(&self) -> serde_json::Value {
        let rate =
            |m: &HashMap<u32, (f64, f64)>, id: u32| m.get(&id).copied().unwrap_or((0.0, 0.0));
        let stats = self.read_stats().ok();
        let vips: Vec<_> = self
            .state
            .vips()
            .iter()
            .map(|v| {
                let (pps, bps) = rate(&self.rates.vips, v.id);
                let backends: Vec<_> = v
                    .backends
                    .iter()
                    .map(|b| {
                        let (bpps, bbps) = rate(&self.rates.backends, b.id);
                        let c = stats.as_ref().map(|s| s.backend(b.id)).unwrap_or_default();
                        let record = self.health_board.get(b.id);
                        let now = std::time::Instant::now();
                        let latest = record.as_ref().and_then(|r| r.last.clone());
                        json!({
                            "address": b.spec.address,
                            "port": b.spec.port,
                            "id": b.id,
                            "active_flows": self.state.active(b.id),
                            "weight": b.spec.weight,
                            "admin": b.spec.admin.name(),
                            "health": if b.up && b.mac.is_some() { "up" } else { "down" },
                            "health_since_s": record.as_ref().map(|r| now.duration_since(r.since).as_secs_f64()),
                            // The latest check, not only the one that
                            // changed the health; a missing MAC says why.
                            "last_check": match (b.mac, &latest) {
                                (None, _) => self.no_mac_reason(v.spec.vlan, &v.spec.name, b.spec.address),
                                (Some(_), Some(l)) => l.text.clone(),
                                (Some(_), None) => b.last_check.clone(),
                            },
                            "check": match (&record, &latest) {
                                (Some(r), Some(l)) => json!({
                                    "result": l.result.name(),
                                    "duration_ms": l.duration.as_secs_f64() * 1e3,
                                    "age_s": now.duration_since(l.at).as_secs_f64(),
                                    "consecutive_failures": r.consecutive_failures,
                                    "passed": r.results[health::CheckResult::Passed as usize],
                                    "failed": r.results[health::CheckResult::Failed as usize],
                                    "not_run": r.results[health::CheckResult::NotRun as usize],
                                    "transitions": r.transitions,
                                }),
                                _ => serde_json::Value::Null,
                            },
                            "mac": mac_text(b.mac),
                            "packets": c.packets,
                            "bytes": c.bytes,
                            "packets_per_s": bpps,
                            "bytes_per_s": bbps,
                            "new_flows": stats.as_ref().map(|s| s.new_flows(b.id)).unwrap_or_default(),
                            "new_flows_per_s": self.rates.new_flows.get(&b.id).copied().unwrap_or(0.0),
                        })
                    })
                    .collect();
                json!({
                    "name": v.spec.name,
                    "address": v.spec.address,
                    "port": v.spec.port,
                    "protocol": v.spec.protocol.name(),
                    "scheduler": v.spec.scheduler.name(),
                    "forwarding": v.spec.forwarding.name(),
                    "snat_address": v.spec.nat.map(|n| n.snat_address),
                    "vlan": v.spec.vlan,
                    "packets_per_s": pps,
                    "bytes_per_s": bps,
                    "backends": backends,
                })
            })
            .collect();
        let removed: Vec<_> = self
            .state
            .retired()
            .iter()
            .map(|r| json!({ "vip": r.vip, "address": r.address, "id": r.id }))
            .collect();
        json!({
            "interface": self.iface,
            "flow_table": {
                "entries": self.flow_entries,
                "capacity": self.datapath.flow_table_size(),
                "mode": self.datapath.flow_table_mode().name(),
                "walk_ms": self.last_walk.as_secs_f64() * 1e3,
            },
            "health_checks_not_run": health::checks_not_run(),
            "state_file": {
                "path": self.state_file,
                "saved": self.unsaved.is_none(),
                "problem": self.unsaved,
            },
            "vips": vips,
            "removed_backends": removed,
            "vrrp": self
                .vrrp
                .as_ref()
                .map(|r| r.statuses().iter().map(|s| s.to_json()).collect::<Vec<_>>())
                .unwrap_or_default(),
        })
    }

    pub(super) fn stats_json(&self) -> Result<serde_json::Value, String> {
        let stats = self.read_stats()?;
        let reasons: serde_json::Map<String, serde_json::Value> = stats
            .reasons
            .iter()
            .map(|(name, c)| {
                (
                    (*name).to_owned(),
                    json!({ "packets": c.packets, "bytes": c.bytes }),
                )
            })
            .collect();
        let vips: Vec<_> = self
            .state
            .vips()
            .iter()
            .map(|v| {
                let c = stats.vip(v.id);
                let backends: Vec<_> = v
                    .backends
                    .iter()
                    .map(|b| {
                        let c = stats.backend(b.id);
                        json!({ "address": b.spec.address, "packets": c.packets, "bytes": c.bytes })
                    })
                    .collect();
                json!({ "name": v.spec.name, "packets": c.packets, "bytes": c.bytes, "backends": backends })
            })
            .collect();
        let events: serde_json::Map<String, serde_json::Value> = stats
            .events
            .iter()
            .map(|(name, n)| ((*name).to_owned(), json!(n)))
            .collect();
        Ok(json!({ "reasons": reasons, "events": events, "vips": vips }))
    }

    pub(super) fn metrics_snapshot(&self) -> metrics::Snapshot {
        let stats = self.read_stats().unwrap_or_default();
        let mut s = metrics::Snapshot {
            reasons: stats
                .reasons
                .iter()
                .map(|(name, c)| (*name, c.packets, c.bytes))
                .collect(),
            events: stats.events.clone(),
            flow_entries: self.flow_entries as u64,
            health_checks_not_run: health::checks_not_run(),
            flow_capacity: u64::from(self.datapath.flow_table_size()),
            vrrp: self.vrrp.as_ref().map(|r| r.statuses()).unwrap_or_default(),
            nat: self.nat_gc.totals,
            ..Default::default()
        };
        for v in self.state.vips() {
            let c = stats.vip(v.id);
            s.vips.push((v.spec.name.clone(), c.packets, c.bytes));
            for b in &v.backends {
                let c = stats.backend(b.id);
                s.backends.push(metrics::BackendSample {
                    vip: v.spec.name.clone(),
                    backend: b.spec.address.to_string(),
                    packets: c.packets,
                    bytes: c.bytes,
                    up: b.up && b.mac.is_some(),
                    enabled: b.spec.admin == Admin::Enabled,
                    weight: b.spec.weight,
                    active_flows: u64::from(self.state.active(b.id)),
                    new_flows: stats.new_flows(b.id),
                    checks: self.health_board.get(b.id),
                });
            }
        }
        s
    }
}
