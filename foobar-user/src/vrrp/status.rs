//! One VRRP instance's status as the daemon reports it: the `vrrp` list
//! of `foobar status --json`, its text rendering for `foobar status`, and
//! the `foobar_vrrp_*` metric families. Read-only: it never changes what
//! an instance does.
use std::{collections::BTreeMap, net::Ipv4Addr};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde_json::Value;

use super::{
    codec::DropReason,
    machine::{State, Transition},
    task::Spec,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub vrid: u8,
    pub iface: String,
    pub state: State,
    /// Effective priority (configured, less what tracking takes off).
    pub priority: u8,
    pub configured_priority: u8,
    /// Why `priority` is below `configured_priority`, one per condition.
    pub tracking: Vec<String>,
    pub master: Option<Ipv4Addr>,
    pub primary: Option<Ipv4Addr>,
    /// Unicast mode when non-empty.
    pub unicast_peers: Vec<Ipv4Addr>,
    /// `use_vmac`: the virtual MAC and its macvlan.
    pub vmac: Option<([u8; 6], String)>,
    /// The last transition; `at` counts from the instance's start.
    pub last_transition: Option<Transition>,
    /// When it happened, by the wall clock.
    pub last_transition_time: Option<std::time::SystemTime>,
    pub transitions: u64,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub drops: BTreeMap<DropReason, u64>,
}

impl Status {
    /// For `foobar status --json`.
    pub fn to_json(&self) -> serde_json::Value {
        let drops: serde_json::Map<String, serde_json::Value> = self
            .drops
            .iter()
            .map(|(r, n)| (r.as_str().to_owned(), (*n).into()))
            .collect();
        serde_json::json!({
            "vrid": self.vrid,
            "interface": self.iface,
            "state": self.state.as_str(),
            "priority": self.priority,
            "configured_priority": self.configured_priority,
            "tracking": self.tracking,
            "master": self.master,
            "primary_address": self.primary,
            "unicast_peers": self.unicast_peers,
            "virtual_mac": self.vmac.as_ref().map(|(mac, name)| serde_json::json!({
                "mac": mac.map(|b| format!("{b:02x}")).join(":"),
                "macvlan": name,
            })),
            "last_transition": self.last_transition.map(|t| serde_json::json!({
                "from": t.from.as_str(),
                "to": t.to.as_str(),
                "cause": t.cause.to_string(),
                "unix_time_s": self.last_transition_time
                    .and_then(|w| w.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                "seconds_ago": self.last_transition_time
                    .and_then(|w| w.elapsed().ok())
                    .map(|d| d.as_secs()),
            })),
            "transitions": self.transitions,
            "adverts_sent": self.adverts_sent,
            "adverts_received": self.adverts_received,
            "adverts_dropped": drops,
        })
    }

    pub fn new(spec: &Spec) -> Status {
        Status {
            vrid: spec.vrid,
            iface: spec.iface.clone(),
            state: State::Initialize,
            priority: spec.priority,
            configured_priority: spec.priority,
            tracking: Vec::new(),
            master: None,
            primary: None,
            unicast_peers: spec.unicast_peers.clone(),
            vmac: spec.use_vmac.then(|| {
                (
                    super::vmac::mac(spec.vrid),
                    super::vmac::macvlan_name(spec.vrid),
                )
            }),
            last_transition: None,
            last_transition_time: None,
            transitions: 0,
            adverts_sent: 0,
            adverts_received: 0,
            drops: BTreeMap::new(),
        }
    }
}

/// The `vrrp` list of `foobar status --json` as text (empty without
/// instances).
pub fn render_text(list: &Value) -> String {
    let Some(list) = list.as_array().filter(|l| !l.is_empty()) else {
        return String::new();
    };
    let mut out = format!(
        "\n{:<5} {:<10} {:<10} {:>4} {:>4}  {:<24} {:>9}  {}\n",
        "VRID", "INTERFACE", "STATE", "PRIO", "CONF", "MASTER", "SINCE", "LAST TRANSITION"
    );
    for v in list {
        let master = match (v["master"].as_str(), v["primary_address"].as_str()) {
            (Some(m), Some(p)) if m == p => format!("this node ({m})"),
            (Some(m), _) => m.to_owned(),
            (None, _) => "unknown".to_owned(),
        };
        let t = &v["last_transition"];
        let (since, transition) = if t.is_null() {
            ("-".to_owned(), "none".to_owned())
        } else {
            (
                t["seconds_ago"]
                    .as_u64()
                    .map(ago)
                    .unwrap_or_else(|| "?".into()),
                format!(
                    "{} -> {}: {}",
                    t["from"].as_str().unwrap_or("?"),
                    t["to"].as_str().unwrap_or("?"),
                    t["cause"].as_str().unwrap_or("?")
                ),
            )
        };
        out.push_str(&format!(
            "{:<5} {:<10} {:<10} {:>4} {:>4}  {:<24} {:>9}  {}\n",
            // Values as strings: serde_json's Display ignores widths.
            v["vrid"].to_string(),
            v["interface"].as_str().unwrap_or("?"),
            v["state"].as_str().unwrap_or("?"),
            v["priority"].to_string(),
            v["configured_priority"].to_string(),
            master,
            since,
            transition,
        ));
        if let (Some(mac), Some(name)) = (
            v["virtual_mac"]["mac"].as_str(),
            v["virtual_mac"]["macvlan"].as_str(),
        ) {
            out.push_str(&format!("      virtual MAC: {mac} on {name}\n"));
        }
        for why in v["tracking"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "      tracking: {}\n",
                why.as_str().unwrap_or("?")
            ));
        }
        let dropped: u64 = v["adverts_dropped"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        out.push_str(&format!(
            "      adverts: {} sent, {} received, {dropped} dropped{}\n",
            v["adverts_sent"],
            v["adverts_received"],
            match v["adverts_dropped"].as_object() {
                Some(m) if !m.is_empty() => format!(
                    " ({})",
                    m.iter()
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ => String::new(),
            }
        ));
    }
    out
}

/// Seconds as the two largest units: `45s`, `3m07s`, `2h05m`, `3d04h`.
fn ago(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    vrid: u8,
    interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    vrid: u8,
    interface: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    vrid: u8,
    interface: String,
    reason: String,
}

/// The `foobar_vrrp_*` families (registered even without instances, so
/// dashboards see them exist).
pub fn register_metrics(registry: &mut Registry, statuses: &[Status]) {
    let state = Family::<StateLabels, Gauge>::default();
    let priority = Family::<InstanceLabels, Gauge>::default();
    let configured = Family::<InstanceLabels, Gauge>::default();
    let transitions = Family::<InstanceLabels, Counter>::default();
    let sent = Family::<InstanceLabels, Counter>::default();
    let received = Family::<InstanceLabels, Counter>::default();
    let dropped = Family::<DropLabels, Counter>::default();
    registry.register(
        "vrrp_state",
        "1 for the VRRP instance's current state (initialize, backup, master), 0 for the others",
        state.clone(),
    );
    registry.register(
        "vrrp_priority",
        "Priority the instance advertises: configured, less what tracking takes off",
        priority.clone(),
    );
    registry.register(
        "vrrp_configured_priority",
        "Priority the instance is configured with",
        configured.clone(),
    );
    registry.register(
        "vrrp_transitions",
        "State transitions of the instance since the daemon started",
        transitions.clone(),
    );
    registry.register(
        "vrrp_adverts_sent",
        "VRRP adverts the instance sent",
        sent.clone(),
    );
    registry.register(
        "vrrp_adverts_received",
        "Valid VRRP adverts for the instance's VRID it received",
        received.clone(),
    );
    registry.register(
        "vrrp_adverts_dropped",
        "Received VRRP packets the instance dropped, by reason (ttl, checksum, version, \
         type, length, address_list, other_vrid, ...)",
        dropped.clone(),
    );
    for s in statuses {
        let l = InstanceLabels {
            vrid: s.vrid,
            interface: s.iface.clone(),
        };
        for st in [State::Initialize, State::Backup, State::Master] {
            state
                .get_or_create(&StateLabels {
                    vrid: s.vrid,
                    interface: s.iface.clone(),
                    state: st.as_str().to_owned(),
                })
                .set(i64::from(s.state == st));
        }
        priority.get_or_create(&l).set(i64::from(s.priority));
        configured
            .get_or_create(&l)
            .set(i64::from(s.configured_priority));
        transitions.get_or_create(&l).inc_by(s.transitions);
        sent.get_or_create(&l).inc_by(s.adverts_sent);
        received.get_or_create(&l).inc_by(s.adverts_received);
        for reason in DropReason::ALL {
            dropped
                .get_or_create(&DropLabels {
                    vrid: s.vrid,
                    interface: s.iface.clone(),
                    reason: reason.as_str().to_owned(),
                })
                .inc_by(s.drops.get(&reason).copied().unwrap_or(0));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vrrp::{machine::Cause, track::Weights};

    pub(crate) fn status() -> Status {
        let spec = Spec {
            iface: "eth0".into(),
            vrid: 51,
            priority: 200,
            advert_interval_cs: 100,
            preempt: true,
            preempt_delay: std::time::Duration::ZERO,
            vips: vec![Ipv4Addr::new(10, 0, 0, 100)],
            vip_names: vec!["web".into()],
            track: Weights {
                detached: 0,
                no_backend: 100,
            },
            unicast_peers: vec![],
            unicast_source: None,
            garp: Default::default(),
            use_vmac: false,
        };
        let mut s = Status::new(&spec);
        s.state = State::Backup;
        s.priority = 100;
        s.tracking = vec!["no healthy backend for web (-100)".into()];
        s.primary = Some(Ipv4Addr::new(10, 0, 0, 2));
        s.master = Some(Ipv4Addr::new(10, 0, 0, 3));
        s.last_transition = Some(Transition {
            at: std::time::Duration::from_secs(9),
            from: State::Master,
            to: State::Backup,
            cause: Cause::HigherPriority {
                master: Ipv4Addr::new(10, 0, 0, 3),
                priority: 150,
            },
        });
        s.last_transition_time =
            Some(std::time::SystemTime::now() - std::time::Duration::from_secs(125));
        s.transitions = 3;
        s.adverts_sent = 7;
        s.adverts_received = 11;
        s.drops.insert(DropReason::Ttl, 2);
        s
    }

    #[test]
    fn the_text_shows_state_priorities_master_and_the_last_transition() {
        let mut json = status().to_json();
        let text = render_text(&serde_json::json!([json.clone()]));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("VRID"), "{text}");
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            &row[..6],
            ["51", "eth0", "backup", "100", "200", "10.0.0.3"],
            "{text}"
        );
        // 125 s ago, give or take the test's own run time.
        assert!(row[6].starts_with("2m0"), "{text}");
        assert!(
            lines[2].ends_with("master -> backup: advert from 10.0.0.3 with priority 150 wins"),
            "{text}"
        );
        assert_eq!(
            lines[3].trim(),
            "tracking: no healthy backend for web (-100)"
        );
        assert_eq!(
            lines[4].trim(),
            "adverts: 7 sent, 11 received, 2 dropped (ttl 2)"
        );
        // As master: "this node".
        json["master"] = json["primary_address"].clone();
        let text = render_text(&serde_json::json!([json]));
        assert!(text.contains("this node (10.0.0.2)"), "{text}");
        assert!(!text.contains("virtual MAC"), "{text}");
        assert_eq!(render_text(&serde_json::json!([])), "");
        // use_vmac: the MAC and its macvlan, in the JSON and under the row.
        let mut s = status();
        s.vmac = Some((crate::vrrp::vmac::mac(51), "vrrp.51".into()));
        let json = s.to_json();
        assert_eq!(json["virtual_mac"]["mac"], "00:00:5e:00:01:33");
        let text = render_text(&serde_json::json!([json]));
        assert_eq!(
            text.lines().nth(3).map(str::trim),
            Some("virtual MAC: 00:00:5e:00:01:33 on vrrp.51"),
            "{text}"
        );
    }

    #[test]
    fn the_families_carry_state_priority_and_counters() {
        let mut registry = Registry::with_prefix("foobar");
        register_metrics(&mut registry, &[status()]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for want in [
            "foobar_vrrp_state{vrid=\"51\",interface=\"eth0\",state=\"backup\"} 1",
            "foobar_vrrp_state{vrid=\"51\",interface=\"eth0\",state=\"master\"} 0",
            "foobar_vrrp_priority{vrid=\"51\",interface=\"eth0\"} 100",
            "foobar_vrrp_configured_priority{vrid=\"51\",interface=\"eth0\"} 200",
            "foobar_vrrp_transitions_total{vrid=\"51\",interface=\"eth0\"} 3",
            "foobar_vrrp_adverts_sent_total{vrid=\"51\",interface=\"eth0\"} 7",
            "foobar_vrrp_adverts_received_total{vrid=\"51\",interface=\"eth0\"} 11",
            "foobar_vrrp_adverts_dropped_total{vrid=\"51\",interface=\"eth0\",reason=\"ttl\"} 2",
            "foobar_vrrp_adverts_dropped_total{vrid=\"51\",interface=\"eth0\",reason=\"checksum\"} 0",
        ] {
            assert!(text.contains(want), "missing {want}:\n{text}");
        }
        for family in [
            "vrrp_state",
            "vrrp_priority",
            "vrrp_transitions",
            "vrrp_adverts_dropped",
        ] {
            assert!(
                text.contains(&format!("# HELP foobar_{family} ")),
                "{family} has HELP:\n{text}"
            );
        }
    }
}
