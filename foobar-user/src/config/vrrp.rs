//! The `[[vrrp]]` tables: VRRPv3 instances that decide which LB node holds
//! the VIPs' addresses. Validated here into the task's `Spec`s (minus the
//! interface default, which `foobar run --iface` may still change).
use std::{collections::HashSet, net::Ipv4Addr, time::Duration};

use serde::Deserialize;

use super::Vip;
use crate::vrrp::{garp, track::Weights};

/// Most a track weight may take off (a priority stays at least 1).
pub const TRACK_WEIGHT_MAX: i64 = 254;
/// Bounds of the gratuitous ARP keys.
pub const GARP_DELAY_MAX_MS: i64 = 1_000_000;
pub const GARP_REFRESH_MIN_MS: i64 = 100;
pub const GARP_REFRESH_MAX_MS: i64 = 86_400_000;
pub const GARP_REPEAT_MAX: i64 = 100;

/// Advert interval bounds: the 12-bit centisecond field.
pub const ADVERT_INTERVAL_MIN_MS: i64 = 10;
pub const ADVERT_INTERVAL_MAX_MS: i64 = 40_950;
pub const ADVERT_INTERVAL_DEFAULT_MS: u64 = 1000;
pub const PRIORITY_DEFAULT: u8 = 100;
/// Longest preempt delay accepted (keepalived's limit is 1000 s).
pub const PREEMPT_DELAY_MAX_MS: i64 = 1_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVrrp {
    vrid: Option<i64>,
    interface: Option<String>,
    priority: Option<i64>,
    advert_interval_ms: Option<i64>,
    preempt: Option<bool>,
    preempt_delay_ms: Option<i64>,
    vips: Option<Vec<String>>,
    track_no_backend: Option<i64>,
    track_detached: Option<i64>,
    unicast_peers: Option<Vec<String>>,
    unicast_source: Option<String>,
    garp_master_delay_ms: Option<i64>,
    garp_master_repeat: Option<i64>,
    garp_master_refresh_ms: Option<i64>,
    garp_master_refresh_repeat: Option<i64>,
    use_vmac: Option<bool>,
}

/// One validated instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VrrpInstance {
    pub vrid: u8,
    /// None: the datapath's interface.
    pub interface: Option<String>,
    pub priority: u8,
    pub advert_interval_cs: u16,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// The names given, as written.
    pub vip_names: Vec<String>,
    /// Their distinct addresses, in order of first mention.
    pub addresses: Vec<Ipv4Addr>,
    /// What tracking takes off the priority (0: not tracked).
    pub track: Weights,
    /// Unicast mode when non-empty.
    pub unicast_peers: Vec<Ipv4Addr>,
    pub unicast_source: Option<Ipv4Addr>,
    pub garp: garp::Config,
    /// Hold the addresses under the virtual MAC 00:00:5e:00:01:VRID (a
    /// macvlan), keepalived's `use_vmac`.
    pub use_vmac: bool,
}

/// Every problem as (key, message); the instances that passed.
pub(super) fn validate(
    raw: &[RawVrrp],
    vips: &[Vip],
) -> (Vec<VrrpInstance>, Vec<(String, String)>) {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let mut vrids = HashSet::new();
    let mut claimed: std::collections::HashMap<Ipv4Addr, String> = Default::default();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("vrrp[{i}]");
        let mut add = |k: &str, m: String| problems.push((format!("{key}.{k}"), m));
        let vrid = match r.vrid {
            None => {
                add(
                    "vrid",
                    "missing: the virtual router id, 1..=255, the same on every node of the pair"
                        .into(),
                );
                None
            }
            Some(v @ 1..=255) => Some(v as u8),
            Some(v) => {
                add("vrid", format!("{v} is outside 1..=255"));
                None
            }
        };
        let priority = match r.priority {
            None => Some(PRIORITY_DEFAULT),
            Some(v @ 1..=255) => Some(v as u8),
            Some(v) => {
                add(
                    "priority",
                    format!(
                        "{v} is outside 1..=255 (255: this node owns the addresses; 0 is reserved)"
                    ),
                );
                None
            }
        };
        let interval = match r.advert_interval_ms {
            None => Some((ADVERT_INTERVAL_DEFAULT_MS / 10) as u16),
            Some(ms @ ADVERT_INTERVAL_MIN_MS..=ADVERT_INTERVAL_MAX_MS) if ms % 10 == 0 => {
                Some((ms / 10) as u16)
            }
            Some(ms) => {
                add(
                    "advert_interval_ms",
                    format!(
                        "{ms} is not a multiple of 10 in {ADVERT_INTERVAL_MIN_MS}..={ADVERT_INTERVAL_MAX_MS} \
                         (VRRPv3 carries centiseconds in 12 bits)"
                    ),
                );
                None
            }
        };
        let delay = match r.preempt_delay_ms {
            None => Some(Duration::ZERO),
            Some(ms @ 0..=PREEMPT_DELAY_MAX_MS) => Some(Duration::from_millis(ms as u64)),
            Some(ms) => {
                add(
                    "preempt_delay_ms",
                    format!("{ms} is outside 0..={PREEMPT_DELAY_MAX_MS}"),
                );
                None
            }
        };
        if r.preempt == Some(false) && r.preempt_delay_ms.is_some_and(|d| d > 0) {
            add(
                "preempt_delay_ms",
                "has no effect with preempt = false: remove one of them".into(),
            );
        }
        let interface = match r.interface.as_deref() {
            Some("") => {
                add(
                    "interface",
                    "is empty; leave it out to use the datapath's interface".into(),
                );
                None
            }
            other => other.map(str::to_owned),
        };
        let names = r.vips.clone().unwrap_or_default();
        if names.is_empty() {
            add(
                "vips",
                "missing or empty: name the [[vip]] entries whose addresses this instance holds"
                    .into(),
            );
        }
        let mut addresses = Vec::new();
        for (j, name) in names.iter().enumerate() {
            match vips.iter().find(|v| &v.name == name) {
                None => add(
                    &format!("vips[{j}]"),
                    format!("no [[vip]] is named \"{name}\""),
                ),
                Some(v) if v.address.is_ipv6() => add(
                    &format!("vips[{j}]"),
                    format!(
                        "VIP \"{name}\" is IPv6 ({}): VRRP here is IPv4 only (RFC 5798 IPv4 \
                         instances); hold an IPv6 VIP's address by other means (BGP, or \
                         `ip -6 addr add` on the active node) and leave it out of vips",
                        v.address
                    ),
                ),
                Some(v)
                    if addresses
                        .iter()
                        .any(|a| std::net::IpAddr::V4(*a) == v.address) => {}
                Some(v) => {
                    let std::net::IpAddr::V4(address) = v.address else {
                        continue;
                    };
                    if let Some(first) = claimed.get(&address) {
                        add(
                            &format!("vips[{j}]"),
                            format!(
                                "{} ({name}) is already held by {first}: an address belongs to one instance",
                                v.address
                            ),
                        );
                    } else {
                        claimed.insert(address, key.clone());
                    }
                    addresses.push(address);
                }
            }
        }
        if addresses.len() > 255 {
            add(
                "vips",
                format!(
                    "{} addresses; an advert carries at most 255",
                    addresses.len()
                ),
            );
        }
        if let Some(vrid) = vrid {
            // Instances on different interfaces could share a VRID, but
            // the interface may only be known at run time: keep them apart.
            if !vrids.insert(vrid) {
                add("vrid", format!("{vrid} is used by an earlier instance"));
            }
        }
        let mut weight = |k: &str, v: Option<i64>| match v {
            None => 0,
            Some(w) if (-TRACK_WEIGHT_MAX..=0).contains(&w) => w.unsigned_abs() as u8,
            Some(w) => {
                add(
                    k,
                    format!(
                        "{w} is outside -{TRACK_WEIGHT_MAX}..=0: a track weight is what the \
                         priority loses while the condition holds"
                    ),
                );
                0
            }
        };
        let track = Weights {
            no_backend: weight("track_no_backend", r.track_no_backend),
            detached: weight("track_detached", r.track_detached),
        };
        if priority == Some(255) && track != Weights::default() {
            add(
                "priority",
                "255 makes this node the address owner, whose priority RFC 5798 fixes at 255: \
                 tracking cannot lower it. Use 254 or less with track_* weights, or drop them"
                    .into(),
            );
        }
        let (unicast_peers, unicast_source) = unicast(r, &addresses, &mut add);
        let garp = gratuitous_arp(r, &mut add);
        let use_vmac = r.use_vmac.unwrap_or(false);
        if use_vmac && r.unicast_peers.is_some() {
            add(
                "use_vmac",
                "is not supported with unicast_peers (unicast adverts go through the kernel's \
                 routing, from the interface's own MAC): use multicast or drop use_vmac"
                    .into(),
            );
        }
        if let (Some(vrid), Some(priority), Some(interval), Some(delay)) =
            (vrid, priority, interval, delay)
        {
            out.push(VrrpInstance {
                vrid,
                interface,
                priority,
                advert_interval_cs: interval,
                preempt: r.preempt.unwrap_or(true),
                preempt_delay: delay,
                vip_names: names,
                addresses,
                track,
                unicast_peers,
                unicast_source,
                garp,
                use_vmac,
            });
        }
    }
    (out, problems)
}

/// `unicast_peers` and `unicast_source`: addresses a host can have, not
/// the instance's own VIPs, each peer once; a source only with peers.
fn unicast(
    r: &RawVrrp,
    vips: &[Ipv4Addr],
    add: &mut impl FnMut(&str, String),
) -> (Vec<Ipv4Addr>, Option<Ipv4Addr>) {
    let host = |text: &str| -> Result<Ipv4Addr, String> {
        let a: Ipv4Addr = text
            .parse()
            .map_err(|_| format!("\"{text}\" is not an IPv4 address"))?;
        if a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback() {
            return Err(format!("{a} is not a host's unicast address"));
        }
        if vips.contains(&a) {
            return Err(format!(
                "{a} is one of this instance's VIPs: name the nodes' own addresses"
            ));
        }
        Ok(a)
    };
    let mut peers = Vec::new();
    if let Some(list) = &r.unicast_peers {
        if list.is_empty() {
            add(
                "unicast_peers",
                "is empty: list the other nodes' addresses, or leave it out for multicast".into(),
            );
        }
        for (j, text) in list.iter().enumerate() {
            match host(text) {
                Ok(a) if peers.contains(&a) => add(
                    &format!("unicast_peers[{j}]"),
                    format!("{a} is listed twice"),
                ),
                Ok(a) => peers.push(a),
                Err(e) => add(&format!("unicast_peers[{j}]"), e),
            }
        }
    }
    let source = match r.unicast_source.as_deref().map(host) {
        None => None,
        Some(Err(e)) => {
            add("unicast_source", e);
            None
        }
        Some(Ok(_)) if r.unicast_peers.is_none() => {
            add(
                "unicast_source",
                "only applies with unicast_peers (multicast adverts go from the \
                 interface's first address)"
                    .into(),
            );
            None
        }
        Some(Ok(a)) if peers.contains(&a) => {
            add(
                "unicast_source",
                format!("{a} is also listed in unicast_peers: this node cannot be its own peer"),
            );
            None
        }
        Some(Ok(a)) => Some(a),
    };
    (peers, source)
}

/// The `garp_master_*` keys (keepalived's, in milliseconds).
fn gratuitous_arp(r: &RawVrrp, add: &mut impl FnMut(&str, String)) -> garp::Config {
    let d = garp::Config::default();
    let mut repeat = |key: &str, v: Option<i64>, default: u32| match v {
        None => default,
        Some(n) if (1..=GARP_REPEAT_MAX).contains(&n) => n as u32,
        Some(n) => {
            add(key, format!("{n} is outside 1..={GARP_REPEAT_MAX}"));
            default
        }
    };
    let master_repeat = repeat("garp_master_repeat", r.garp_master_repeat, d.master_repeat);
    let master_refresh_repeat = repeat(
        "garp_master_refresh_repeat",
        r.garp_master_refresh_repeat,
        d.master_refresh_repeat,
    );
    let master_delay = match r.garp_master_delay_ms {
        None => d.master_delay,
        Some(ms @ 0..=GARP_DELAY_MAX_MS) => Duration::from_millis(ms as u64),
        Some(ms) => {
            add(
                "garp_master_delay_ms",
                format!("{ms} is outside 0..={GARP_DELAY_MAX_MS} (0: no second burst)"),
            );
            d.master_delay
        }
    };
    let master_refresh = match r.garp_master_refresh_ms {
        None | Some(0) => Duration::ZERO,
        Some(ms) if (GARP_REFRESH_MIN_MS..=GARP_REFRESH_MAX_MS).contains(&ms) => {
            Duration::from_millis(ms as u64)
        }
        Some(ms) => {
            add(
                "garp_master_refresh_ms",
                format!(
                    "{ms} is neither 0 (no refresh) nor in {GARP_REFRESH_MIN_MS}..={GARP_REFRESH_MAX_MS}"
                ),
            );
            Duration::ZERO
        }
    };
    if r.garp_master_refresh_repeat.is_some() && r.garp_master_refresh_ms.unwrap_or(0) == 0 {
        add(
            "garp_master_refresh_repeat",
            "has no effect without garp_master_refresh_ms: remove it or set a refresh period"
                .into(),
        );
    }
    garp::Config {
        master_repeat,
        master_delay,
        master_refresh,
        master_refresh_repeat,
    }
}

impl VrrpInstance {
    /// The task's spec, on `default_iface` unless the instance names one.
    pub fn spec(&self, default_iface: &str) -> crate::vrrp::task::Spec {
        crate::vrrp::task::Spec {
            iface: self
                .interface
                .clone()
                .unwrap_or_else(|| default_iface.to_owned()),
            vrid: self.vrid,
            priority: self.priority,
            advert_interval_cs: self.advert_interval_cs,
            preempt: self.preempt,
            preempt_delay: self.preempt_delay,
            vips: self.addresses.clone(),
            vip_names: self.vip_names.clone(),
            track: self.track,
            unicast_peers: self.unicast_peers.clone(),
            unicast_source: self.unicast_source,
            garp: self.garp,
            use_vmac: self.use_vmac,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use crate::config::parse;

    const BASE: &str = "
[datapath]
interface = \"eth0\"

[[vip]]
name = \"web\"
address = \"192.0.2.10\"
port = 80
[[vip.backend]]
address = \"10.0.0.11\"
";

    fn problems(text: &str) -> Vec<(String, String)> {
        match parse(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.into_iter().map(|p| (p.key, p.message)).collect(),
        }
    }

    #[test]
    fn the_example_vrrp_block_is_valid_once_uncommented() {
        let example = include_str!("../../../examples/foobar.toml");
        let at = example
            .find("# [[vrrp]]")
            .expect("the example has a [[vrrp]] block");
        let (head, block) = example.split_at(at);
        // One level: the block as an operator uncomments it. Two levels:
        // the optional keys too ("# # key = ..."), prose left alone.
        let uncomment = |optional: bool| -> String {
            block
                .lines()
                .map(|l| {
                    let l = l.strip_prefix("# ").unwrap_or(l);
                    match l.strip_prefix("# ") {
                        Some(key)
                            if optional
                                && key.split_once(" = ").is_some_and(|(k, _)| {
                                    k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                                }) =>
                        {
                            key
                        }
                        _ => l,
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let v = |text: String| {
            parse(&format!("{head}{text}\n"))
                .unwrap_or_else(|p| panic!("{p:?}\n{text}"))
                .vrrp[0]
                .clone()
        };
        let plain = v(uncomment(false));
        assert_eq!((plain.vrid, plain.priority), (51, 150));
        assert_eq!((plain.track.no_backend, plain.track.detached), (100, 150));
        assert!(plain.unicast_peers.is_empty());
        assert_eq!(plain.garp, crate::vrrp::garp::Config::default());
        let all = v(uncomment(true));
        assert_eq!(all.interface.as_deref(), Some("eth0"));
        assert_eq!(
            all.unicast_peers,
            vec!["10.0.0.3".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(all.unicast_source, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(all.garp.master_refresh, std::time::Duration::from_secs(60));
    }

    #[test]
    fn track_weights_are_what_the_priority_loses() {
        let c = parse(&format!(
            "{BASE}[[vrrp]]\nvrid = 1\npriority = 150\nvips = [\"web\"]\n\
             track_no_backend = -50\ntrack_detached = -100\n"
        ))
        .expect("valid");
        let spec = c.vrrp[0].spec("eth0");
        assert_eq!(spec.track.no_backend, 50);
        assert_eq!(spec.track.detached, 100);
        assert_eq!(spec.vip_names, vec!["web".to_owned()]);
        // Absent: not tracked.
        let c = parse(&format!("{BASE}[[vrrp]]\nvrid = 1\nvips = [\"web\"]\n")).unwrap();
        assert_eq!(c.vrrp[0].track, Default::default());
    }

    #[test]
    fn unicast_peers_and_source_resolve_to_addresses() {
        let c = parse(&format!(
            "{BASE}[[vrrp]]\nvrid = 1\nvips = [\"web\"]\n\
             unicast_peers = [\"10.1.0.2\", \"10.2.0.2\"]\nunicast_source = \"10.1.0.1\"\n"
        ))
        .expect("valid");
        let spec = c.vrrp[0].spec("eth0");
        assert_eq!(
            spec.destinations(),
            vec![
                "10.1.0.2".parse::<std::net::Ipv4Addr>().unwrap(),
                "10.2.0.2".parse().unwrap()
            ]
        );
        assert_eq!(spec.unicast_source, Some("10.1.0.1".parse().unwrap()));
        // Without peers: multicast.
        let c = parse(&format!("{BASE}[[vrrp]]\nvrid = 1\nvips = [\"web\"]\n")).unwrap();
        assert_eq!(
            c.vrrp[0].spec("eth0").destinations(),
            vec![crate::vrrp::codec::MULTICAST_V4]
        );
    }

    #[test]
    fn unicast_problems_name_their_keys() {
        let p = problems(&format!(
            "{BASE}[[vrrp]]\nvrid = 1\nvips = [\"web\"]\n\
             unicast_peers = [\"10.1.0.2\", \"nope\", \"224.0.0.18\", \"192.0.2.10\", \"10.1.0.2\"]\n\
             unicast_source = \"10.1.0.2\"\n\
             [[vrrp]]\nvrid = 2\nvips = []\nunicast_peers = []\nunicast_source = \"10.1.0.1\"\n"
        ));
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "vrrp[0].unicast_peers[1]",
                "vrrp[0].unicast_peers[2]",
                "vrrp[0].unicast_peers[3]",
                "vrrp[0].unicast_peers[4]",
                "vrrp[0].unicast_source",
                "vrrp[1].vips",
                "vrrp[1].unicast_peers",
            ],
            "{p:#?}"
        );
        assert!(p[2].1.contains("VIPs"), "{p:?}");
        // A source alone is refused: it would do nothing.
        let p = problems(&format!(
            "{BASE}[[vrrp]]\nvrid = 1\nvips = [\"web\"]\nunicast_source = \"10.1.0.1\"\n"
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].1.contains("only applies with unicast_peers"), "{p:?}");
    }

    #[test]
    fn gratuitous_arp_keys_default_to_keepalived_and_are_bounded() {
        let c = parse(&format!("{BASE}[[vrrp]]\nvrid = 1\nvips = [\"web\"]\n")).unwrap();
        let g = c.vrrp[0].spec("eth0").garp;
        assert_eq!(g, crate::vrrp::garp::Config::default());
        assert_eq!(
            (g.master_repeat, g.master_delay.as_secs(), g.master_refresh),
            (5, 5, std::time::Duration::ZERO)
        );
        let c = parse(&format!(
            "{BASE}[[vrrp]]\nvrid = 1\nvips = [\"web\"]\ngarp_master_delay_ms = 0\n\
             garp_master_repeat = 2\ngarp_master_refresh_ms = 60000\ngarp_master_refresh_repeat = 3\n"
        ))
        .unwrap();
        let g = c.vrrp[0].garp;
        assert_eq!(g.master_delay, std::time::Duration::ZERO);
        assert_eq!(g.master_repeat, 2);
        assert_eq!(g.master_refresh, std::time::Duration::from_secs(60));
        assert_eq!(g.master_refresh_repeat, 3);
        let p = problems(&format!(
            "{BASE}[[vrrp]]\nvrid = 1\nvips = [\"web\"]\ngarp_master_delay_ms = -1\n\
             garp_master_repeat = 0\ngarp_master_refresh_ms = 50\n\
             [[vrrp]]\nvrid = 2\nvips = [\"web\"]\ngarp_master_refresh_repeat = 2\n"
        ));
        let mut keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "vrrp[0].garp_master_delay_ms",
                "vrrp[0].garp_master_refresh_ms",
                "vrrp[0].garp_master_repeat",
                "vrrp[1].garp_master_refresh_repeat",
                // web's address is held by vrrp[0] already.
                "vrrp[1].vips[0]",
            ],
            "{p:#?}"
        );
    }

    #[test]
    fn use_vmac_is_off_by_default_and_refused_with_unicast_peers() {
        let c = parse(&format!("{BASE}[[vrrp]]\nvrid = 1\nvips = [\"web\"]\n")).unwrap();
        assert!(!c.vrrp[0].spec("eth0").use_vmac);
        let c = parse(&format!(
            "{BASE}[[vrrp]]\nvrid = 7\nvips = [\"web\"]\nuse_vmac = true\n"
        ))
        .unwrap();
        assert!(c.vrrp[0].use_vmac);
        assert!(c.vrrp[0].spec("eth0").use_vmac);
        let p = problems(&format!(
            "{BASE}[[vrrp]]\nvrid = 1\nvips = [\"web\"]\nuse_vmac = true\n\
             unicast_peers = [\"10.1.0.2\"]\n"
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "vrrp[0].use_vmac");
        assert!(p[0].1.contains("unicast_peers"), "{p:?}");
    }

    #[test]
    fn track_weights_out_of_range_or_on_an_owner_are_refused() {
        let p = problems(&format!(
            "{BASE}[[vrrp]]\nvrid = 1\nvips = [\"web\"]\n\
             track_no_backend = 10\ntrack_detached = -255\n"
        ));
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            vec!["vrrp[0].track_no_backend", "vrrp[0].track_detached"]
        );
        let p = problems(&format!(
            "{BASE}[[vrrp]]\nvrid = 1\npriority = 255\nvips = [\"web\"]\ntrack_no_backend = -50\n"
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "vrrp[0].priority");
        assert!(p[0].1.contains("address owner"), "{p:?}");
        // 255 without tracking is fine.
        assert!(problems(&format!(
            "{BASE}[[vrrp]]\nvrid = 1\npriority = 255\nvips = [\"web\"]\n"
        ))
        .is_empty());
    }
}
