//! Validation of the parsed file: a pure function over the raw structs that
//! records every problem at its key, never stopping at the first.
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use foobar_common::{FLOW_TABLE_DEFAULT, MAX_BACKENDS, MAX_VIPS, RING_CAPACITY};

use super::AttachMode;
use super::{rules, *};
use crate::ring;

pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// The value, or None with the error recorded at `key`.
    pub(super) fn field<T>(&mut self, key: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|e| self.add(key, e)).ok()
    }
}

pub(super) fn validate(raw: &RawConfig) -> Result<Config, Vec<Problem>> {
    let mut p = Problems(Vec::new());
    let datapath = validate_datapath(&raw.datapath, &mut p);
    let socket = PathBuf::from(raw.api.socket.as_deref().unwrap_or(DEFAULT_SOCKET));
    if !socket.is_absolute() {
        p.add(
            "api.socket",
            format!("{:?} is not an absolute path", socket.display().to_string()),
        );
    } else if socket.to_string_lossy().chars().any(char::is_control) {
        p.add(
            "api.socket",
            format!(
                "{:?} contains a control character",
                socket.display().to_string()
            ),
        );
    }
    let metrics_listen = match raw.metrics.listen.as_deref() {
        Some("off") => None,
        other => match other
            .unwrap_or(DEFAULT_METRICS_LISTEN)
            .parse::<SocketAddr>()
        {
            Ok(a) => Some(a),
            Err(_) => {
                p.add(
                    "metrics.listen",
                    format!(
                        "\"{}\" is not ADDRESS:PORT or \"off\"",
                        other.unwrap_or_default()
                    ),
                );
                None
            }
        },
    };

    if raw.vips.len() > MAX_VIPS as usize {
        p.add(
            "vip",
            format!(
                "{} VIPs; the datapath holds at most {MAX_VIPS}",
                raw.vips.len()
            ),
        );
    }
    let backend_total: usize = raw.vips.iter().map(|v| v.backends.len()).sum();
    if backend_total > MAX_BACKENDS as usize {
        p.add(
            "vip[*].backend",
            format!("{backend_total} backends in all; the datapath holds at most {MAX_BACKENDS}"),
        );
    }

    let mut names = HashSet::new();
    let mut services = HashSet::new();
    // (address, VLAN) -> (closed_ports = "pass", the first VIP's key).
    let mut addresses = std::collections::HashMap::new();
    // Backend address -> (VLAN, name) of the first VIP it backs.
    let mut segments = std::collections::HashMap::new();
    let mut vips = Vec::new();
    for (i, raw_vip) in raw.vips.iter().enumerate() {
        let key = format!("vip[{i}]");
        if let Some(vip) = validate_vip(&key, raw_vip, Origin::File, &mut p) {
            if !names.insert(vip.name.clone()) {
                p.add(
                    format!("{key}.name"),
                    format!(
                        "\"{}\" is used by an earlier VIP; names must be unique",
                        vip.name
                    ),
                );
            }
            if !services.insert((vip.address, vip.port, vip.protocol, vip.vlan)) {
                p.add(
                    &key,
                    format!(
                        "{}/{}{} is already served by an earlier VIP",
                        SocketAddr::new(vip.address, vip.port),
                        vip.protocol.name(),
                        vip.vlan
                            .map(|v| format!(" on VLAN {v}"))
                            .unwrap_or_default()
                    ),
                );
            }
            let (pass, first) = addresses
                .entry((vip.address, vip.vlan))
                .or_insert((vip.pass_closed_ports, key.clone()));
            if *pass != vip.pass_closed_ports {
                p.add(
                    format!("{key}.closed_ports"),
                    format!(
                        "{first} has the same address with the other closed_ports setting; \
                         closed ports are a property of the address: give every VIP on {} \
                         the same value",
                        vip.address
                    ),
                );
            }
            for (j, b) in vip.backends.iter().enumerate() {
                let (vlan, first) = segments
                    .entry(b.address)
                    .or_insert((vip.vlan, vip.name.clone()));
                if let Err(e) = rules::backend_vlan(b.address, vip.vlan, first, *vlan) {
                    p.add(format!("{key}.backend[{j}].address"), e);
                }
            }
            vips.push(vip);
        }
    }
    if let Some(d) = &datapath {
        // Two-arm redirects IPv4 only: the IPv6 pipeline sends every frame
        // back out of the interface it came in on (docs/TOPOLOGY.md).
        if d.backend_interface.is_some() {
            for (i, vip) in raw.vips.iter().enumerate() {
                let v6 = vip
                    .address
                    .as_deref()
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .is_some_and(|a| a.is_ipv6());
                if v6 {
                    p.add(
                        format!("vip[{i}].address"),
                        "an IPv6 VIP on a two-arm node (datapath.backend_interface): two-arm \
                         is IPv4-only so far; serve IPv6 VIPs from a one-arm node",
                    );
                }
            }
        }
        for (i, vip) in raw.vips.iter().enumerate() {
            if vip.forwarding.as_deref() != Some("ipip") {
                continue;
            }
            let v6 = vip
                .address
                .as_deref()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .is_some_and(|a| a.is_ipv6());
            if v6 && d.ipip_source6.is_none() {
                p.add(
                    format!("vip[{i}].forwarding"),
                    "\"ipip\" for an IPv6 VIP needs datapath.ipip_source6, the outer IPv6 \
                     source address (or a /96../128 prefix routed to this node) the \
                     backends' `foobar decap --allow-from` accepts",
                );
            } else if !v6 && d.ipip_source.is_none() {
                p.add(
                    format!("vip[{i}].forwarding"),
                    "\"ipip\" needs datapath.ipip_source, the outer source address \
                     (or a /16../32 prefix routed to this node) the backends' \
                     `foobar decap --allow-from` accepts",
                );
            }
        }
    }
    if let Some(d) = &datapath {
        super::nat::resolve(&mut vips, &d.nat);
        super::dnat::resolve(&mut vips, &d.nat);
    }
    let (vrrp, vrrp_problems) = super::vrrp::validate(&raw.vrrp, &vips);
    for (key, message) in vrrp_problems {
        p.add(key, message);
    }
    let log = validate_log(&raw.log, &mut p);
    match (datapath, p.0.is_empty()) {
        (Some(datapath), true) => Ok(Config {
            datapath,
            socket,
            metrics_listen,
            vips,
            vrrp,
            log,
        }),
        _ => Err(p.0),
    }
}

fn validate_log(raw: &RawLog, p: &mut Problems) -> LogConfig {
    if let Some(level) = &raw.level {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
            p.add(
                "log.level",
                format!("{level:?} is not a log level or filter ({e}); use e.g. \"info\", \"debug\" or \"foobar=debug,info\""),
            );
        }
    }
    let format = match raw.format.as_deref() {
        None => None,
        Some("text") => Some(crate::logging::LogFormat::Text),
        Some("json") => Some(crate::logging::LogFormat::Json),
        Some(other) => {
            p.add(
                "log.format",
                format!("\"{other}\" is not a log format; use \"text\" or \"json\""),
            );
            None
        }
    };
    LogConfig {
        level: raw.level.clone(),
        format,
    }
}

fn validate_datapath(raw: &RawDatapath, p: &mut Problems) -> Option<DatapathConfig> {
    let xdp_mode = match raw.xdp_mode.as_deref() {
        None | Some("native") => Some(AttachMode::Native),
        Some("skb") => Some(AttachMode::Skb),
        Some(other) => {
            p.add(
                "datapath.xdp_mode",
                format!("\"{other}\" is not a mode; use \"native\" or \"skb\""),
            );
            None
        }
    };
    let flow_table_size = match raw.flow_table_size {
        None => Some(FLOW_TABLE_DEFAULT),
        Some(n) if (i64::from(FLOW_TABLE_MIN)..=i64::from(FLOW_TABLE_MAX)).contains(&n) => {
            Some(n as u32)
        }
        Some(n) => {
            p.add(
                "datapath.flow_table_size",
                format!("{n} is out of range {FLOW_TABLE_MIN}..={FLOW_TABLE_MAX}"),
            );
            None
        }
    };
    let flow_table = match raw.flow_table.as_deref() {
        None | Some("shared") => Some(FlowTableMode::Shared),
        Some("per-cpu") => Some(FlowTableMode::PerCpu),
        Some(other) => {
            p.add(
                "datapath.flow_table",
                format!("\"{other}\" is not a flow table; use \"shared\" or \"per-cpu\""),
            );
            None
        }
    };
    if let Some(iface) = &raw.interface {
        p.field("datapath.interface", rules::interface(iface));
    }
    if let Some(arm) = &raw.backend_interface {
        p.field("datapath.backend_interface", rules::interface(arm));
        if raw.interface.as_deref() == Some(arm.as_str()) {
            p.add(
                "datapath.backend_interface",
                format!(
                    "\"{arm}\" is datapath.interface too; a two-arm node needs two \
                     interfaces (leave backend_interface out for one-arm)"
                ),
            );
        }
    }
    let affinity_table_size = match raw.affinity_table_size {
        None => Some(None),
        Some(n) if (1..=i64::from(FLOW_TABLE_MAX)).contains(&n) => Some(Some(n as u32)),
        Some(n) => {
            p.add(
                "datapath.affinity_table_size",
                format!("{n} is out of range 1..={FLOW_TABLE_MAX}"),
            );
            None
        }
    };
    let hash_seed = match raw.hash_seed {
        None => Some(0),
        Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => Some(n as u32),
        Some(n) => {
            p.add(
                "datapath.hash_seed",
                format!("{n} is out of range 0..={}", u32::MAX),
            );
            None
        }
    };
    let wlc_period_ms = match raw.wlc_period_ms {
        None => Some(500),
        Some(n) if (100..=60_000).contains(&n) => Some(n as u64),
        Some(n) => {
            p.add(
                "datapath.wlc_period_ms",
                format!("{n} is out of range 100..=60000"),
            );
            None
        }
    };
    let retire_idle = match parse_duration_s(raw.retire_idle.as_deref().unwrap_or("60s")) {
        Ok(s) if (RETIRE_IDLE_MIN_S..=RETIRE_IDLE_MAX_S).contains(&s) => {
            Some(Duration::from_secs(u64::from(s)))
        }
        Ok(s) => {
            p.add(
                "datapath.retire_idle",
                format!(
                    "{s}s is out of range {RETIRE_IDLE_MIN_S}s..={RETIRE_IDLE_MAX_S}s \
                     (shorter resets idle connections to removed backends sooner)"
                ),
            );
            None
        }
        Err(e) => {
            p.add("datapath.retire_idle", e);
            None
        }
    };
    let ipip_source = match raw.ipip_source.as_deref() {
        None => Some(None),
        Some(text) => p.field("datapath.ipip_source", ipip_source(text).map(Some)),
    };
    let ipip_source6 = match raw.ipip_source6.as_deref() {
        None => Some(None),
        Some(text) => p.field(
            "datapath.ipip_source6",
            super::ipv6::ipip_source6(text).map(Some),
        ),
    };
    let nat = super::nat::validate_defaults(raw, p);
    Some(DatapathConfig {
        nat: nat?,
        interface: raw.interface.clone(),
        backend_interface: raw.backend_interface.clone(),
        xdp_mode: xdp_mode?,
        flow_table_size: flow_table_size?,
        flow_table: flow_table?,
        affinity_table_size: affinity_table_size?,
        hash_seed: hash_seed?,
        wlc_period_ms: wlc_period_ms?,
        retire_idle: retire_idle?,
        ipip_source: ipip_source?,
        ipip_source6: ipip_source6?,
    })
}

/// Most host bits of `datapath.ipip_source`: a /16 spreads flows over
/// 65 536 outer sources, far more than any NIC has queues.
pub const IPIP_SOURCE_MIN_PREFIX: u8 = 16;

/// `datapath.ipip_source`: "A.B.C.D" (one address, /32) or "A.B.C.D/LEN"
/// with LEN in 16..=32 and no host bits set.
pub fn ipip_source(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = match text.split_once('/') {
        None => (text, "32"),
        Some(parts) => parts,
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("\"{text}\" is not an IPv4 address or ADDRESS/PREFIX"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| (IPIP_SOURCE_MIN_PREFIX..=32).contains(l))
        .ok_or_else(|| {
            format!(
                "\"{text}\": the prefix length must be {IPIP_SOURCE_MIN_PREFIX}..=32 \
                 (a /24 gives 256 outer sources, plenty for RSS)"
            )
        })?;
    let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
    if u32::from(addr) & host != 0 {
        return Err(format!(
            "\"{text}\" has host bits set; write the prefix as {}/{len}",
            Ipv4Addr::from(u32::from(addr) & !host)
        ));
    }
    if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
        return Err(format!(
            "\"{text}\" cannot be a source; use an address (or prefix) of this node"
        ));
    }
    Ok((addr, len))
}

/// Where a VIP comes from: the file must give every VIP a backend that
/// takes traffic; a VIP saved at run time may have none (`foobar vip add`
/// makes an empty VIP; `backend weight 0` and removals may follow).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    File,
    Runtime,
}

/// Problems of one VIP saved at run time (the state file), by the rules
/// the file follows (keys are `key`'s, e.g. `vips[0].health.interval_ms`).
pub(super) fn validate_saved_vip(key: &str, raw: &RawVip) -> Vec<Problem> {
    let mut p = Problems(Vec::new());
    validate_vip(key, raw, Origin::Runtime, &mut p);
    p.0
}

fn validate_vip(key: &str, raw: &RawVip, origin: Origin, p: &mut Problems) -> Option<Vip> {
    let name = match raw.name.as_deref() {
        None | Some("") => {
            p.add(format!("{key}.name"), "missing; every VIP needs a name");
            None
        }
        Some(n) => p
            .field(&format!("{key}.name"), rules::name(n))
            .map(|()| n.to_owned()),
    };
    let address = ip(&format!("{key}.address"), raw.address.as_deref(), p)
        .and_then(|a| p.field(&format!("{key}.address"), rules::vip_address(a).map(|()| a)));
    let port = match raw.port {
        None => {
            p.add(
                format!("{key}.port"),
                "missing; give a port, or 0 to serve every port",
            );
            None
        }
        Some(n) if (0..=65535).contains(&n) => Some(n as u16),
        Some(n) => {
            p.add(
                format!("{key}.port"),
                format!("{n} is not a port (0..=65535)"),
            );
            None
        }
    };
    let protocol = p.field(
        &format!("{key}.protocol"),
        Protocol::parse(raw.protocol.as_deref().unwrap_or("tcp")),
    );
    let scheduler = p.field(
        &format!("{key}.scheduler"),
        Scheduler::parse(raw.scheduler.as_deref().unwrap_or("rr")),
    );
    let forwarding = p.field(
        &format!("{key}.forwarding"),
        // nat is the default: backends need nothing (docs/NAT.md).
        Forwarding::parse(raw.forwarding.as_deref().unwrap_or("nat")),
    );
    // IPv6 has no nat datapath yet: an IPv6 VIP names its mode (docs/IPV6.md).
    if address.is_some_and(|a| a.is_ipv6()) {
        match (raw.forwarding.as_deref(), forwarding) {
            (None, _) => p.add(
                format!("{key}.forwarding"),
                "missing for an IPv6 VIP: nat, the default, is IPv4-only; write \
                 forwarding = \"dsr\" or forwarding = \"ipip\" (docs/IPV6.md)",
            ),
            (Some(_), Some(Forwarding::Nat | Forwarding::Dnat)) => p.add(
                format!("{key}.forwarding"),
                "\"nat\" and \"dnat\" are IPv4-only; an IPv6 VIP forwards with \"dsr\" \
                 or \"ipip\" (docs/IPV6.md)",
            ),
            _ => {}
        }
    }
    // The VIP's own SNAT address; `nat::resolve` adds the node's defaults.
    let own_snat = match raw.snat_address.as_deref() {
        None => Some(None),
        Some(_) if forwarding.is_some_and(|f| f != Forwarding::Nat) => {
            p.add(
                format!("{key}.snat_address"),
                "only a nat VIP has an SNAT address; set forwarding = \"nat\" or remove it",
            );
            None
        }
        Some(text) => p
            .field(
                &format!("{key}.snat_address"),
                super::nat::snat_address(text),
            )
            .map(Some),
    };
    let nat = own_snat.map(|own| {
        (forwarding == Some(Forwarding::Nat)).then(|| NatSettings {
            snat_address: own.unwrap_or(Ipv4Addr::UNSPECIFIED),
            ..NatSettings::default()
        })
    });
    let health = validate_health(&format!("{key}.health"), &raw.health, p);
    let vlan = match raw.vlan {
        None => Some(None),
        Some(n) if (1..=4094).contains(&n) => Some(Some(n as u16)),
        Some(n) => {
            p.add(
                format!("{key}.vlan"),
                format!("{n} is not a VLAN id (1..=4094; leave it out for untagged frames)"),
            );
            None
        }
    };
    let pass_closed_ports = match raw.closed_ports.as_deref() {
        None | Some("drop") => Some(false),
        Some("pass") => Some(true),
        Some(other) => {
            p.add(
                format!("{key}.closed_ports"),
                format!("{other:?} is not a choice; use \"drop\" (the default) or \"pass\""),
            );
            None
        }
    };
    let maglev_table_size = match raw.maglev_table_size {
        None => Some(crate::maglev::DEFAULT_TABLE_SIZE),
        Some(n) if scheduler != Some(Scheduler::Maglev) => {
            p.add(
                format!("{key}.maglev_table_size"),
                format!("{n}: only a VIP with scheduler = \"maglev\" has a table"),
            );
            None
        }
        Some(n)
            if (2..=i64::from(RING_CAPACITY)).contains(&n) && crate::maglev::is_prime(n as u32) =>
        {
            Some(n as u32)
        }
        Some(n) => {
            p.add(
                format!("{key}.maglev_table_size"),
                format!("{n} is not a prime in 2..={RING_CAPACITY} (e.g. 65537, 32771, 16411)"),
            );
            None
        }
    };
    let affinity_timeout_s = match &raw.persistence {
        None => Some(None),
        Some(RawPersistence { timeout }) => {
            match parse_duration_s(timeout.as_deref().unwrap_or("300s")) {
                Ok(0) => {
                    p.add(
                        format!("{key}.persistence.timeout"),
                        "must be longer than 0s",
                    );
                    None
                }
                Ok(s) => Some(Some(s)),
                Err(e) => {
                    p.add(format!("{key}.persistence.timeout"), e);
                    None
                }
            }
        }
    };

    if raw.backends.is_empty() && origin == Origin::File {
        p.add(
            format!("{key}.backend"),
            "none; a VIP without backends drops all its traffic: \
             add at least one [[vip.backend]] (more can be added at run time)",
        );
    }
    let raw_vip_address = address;
    let mut backends = Vec::new();
    let mut seen = HashSet::new();
    for (j, raw_backend) in raw.backends.iter().enumerate() {
        let bkey = format!("{key}.backend[{j}]");
        let address = ip(
            &format!("{bkey}.address"),
            raw_backend.address.as_deref(),
            p,
        );
        let address = match (address, raw_vip_address) {
            (Some(a), Some(vip)) => p.field(
                &format!("{bkey}.address"),
                rules::backend_address(a, vip).map(|()| a),
            ),
            (a, _) => a,
        };
        if let Some(a) = address {
            if !seen.insert(a) {
                p.add(
                    format!("{bkey}.address"),
                    format!("{a} is listed twice in this VIP"),
                );
            }
        }
        let weight = match raw_backend.weight {
            None => Some(1),
            Some(w) if (0..=i64::from(MAX_WEIGHT)).contains(&w) => Some(w as u32),
            Some(w) => {
                p.add(
                    format!("{bkey}.weight"),
                    format!("{w} is out of range 0..={MAX_WEIGHT}"),
                );
                None
            }
        };
        // A backend without health keys of its own takes the VIP's check as
        // validated above (its problems are reported there, once).
        let health = if raw_backend.health.is_empty() {
            health.clone()
        } else {
            validate_health(
                &format!("{bkey}.health"),
                &raw_backend.health.or(&raw.health),
                p,
            )
        };
        let port = match raw_backend.port {
            None => Some(None),
            Some(_) if forwarding.is_some_and(|f| !super::dnat::translates_port(f)) => {
                p.add(
                    format!("{bkey}.port"),
                    "a dsr or ipip backend answers on the VIP's port; a backend port \
                     needs forwarding = \"nat\" or \"dnat\"",
                );
                None
            }
            Some(n) if (1..=65535).contains(&n) => Some(Some(n as u16)),
            Some(n) => {
                p.add(
                    format!("{bkey}.port"),
                    format!("{n} is not a port (1..=65535)"),
                );
                None
            }
        };
        if let (Some(address), Some(weight), Some(health), Some(port)) =
            (address, weight, health, port)
        {
            backends.push(BackendConfig {
                address,
                weight,
                port,
                health,
            });
        }
    }
    if origin == Origin::File
        && !backends.is_empty()
        && backends.len() == raw.backends.len()
        && backends.iter().all(|b| b.weight == 0)
    {
        p.add(
            format!("{key}.backend"),
            "every backend has weight 0, so the VIP would drop all new flows: \
             give at least one a weight of 1 or more (drain backends at run time instead)",
        );
    }
    let slots = ring::round_robin_len(backends.iter().map(|b| b.weight));
    if slots > u64::from(RING_CAPACITY) {
        p.add(
            format!("{key}.backend"),
            format!(
                "the weights need {slots} ring slots, more than {RING_CAPACITY}; \
                 lower them (only their ratios matter)"
            ),
        );
    }
    if let (Some(Scheduler::Maglev), Some(size)) = (scheduler, maglev_table_size) {
        if backends.len() == raw.backends.len() {
            p.field(
                &format!("{key}.maglev_table_size"),
                rules::maglev_table(size, backends.iter().map(|b| b.weight)),
            );
        }
    }
    Some(Vip {
        name: name?,
        address: address?,
        port: port?,
        protocol: protocol?,
        scheduler: scheduler?,
        maglev_table_size: maglev_table_size?,
        affinity_timeout_s: affinity_timeout_s?,
        forwarding: forwarding?,
        nat: nat?,
        health: health?,
        vlan: vlan?,
        pass_closed_ports: pass_closed_ports?,
        backends,
    })
}

/// Validates merged health keys; `key` is where they were written.
fn validate_health(key: &str, raw: &RawHealth, p: &mut Problems) -> Option<HealthSpec> {
    let d = HealthSpec::default();
    let before = p.0.len();
    let mut int = |name: &str, v: Option<i64>, lo: i64, hi: i64, default: u64| match v {
        None => default,
        Some(n) if (lo..=hi).contains(&n) => n as u64,
        Some(n) => {
            p.add(
                format!("{key}.{name}"),
                format!("{n} is out of range {lo}..={hi}"),
            );
            default
        }
    };
    let interval_ms = int(
        "interval_ms",
        raw.interval_ms,
        100,
        3_600_000,
        d.interval_ms,
    );
    // Unset, the timeout is the default one, but never longer than the
    // interval (HAProxy's `timeout check` defaults to `inter`).
    let timeout_ms = int(
        "timeout_ms",
        raw.timeout_ms,
        10,
        3_600_000,
        d.timeout_ms.min(interval_ms),
    );
    let rise = int("rise", raw.rise, 1, 100, u64::from(d.rise)) as u32;
    let fall = int("fall", raw.fall, 1, 100, u64::from(d.fall)) as u32;
    let port = raw.port.map(|n| int("port", Some(n), 1, 65535, 80) as u16);
    if timeout_ms > interval_ms {
        p.add(
            format!("{key}.timeout_ms"),
            format!("{timeout_ms} is longer than interval_ms {interval_ms}"),
        );
    }
    let check = match raw.check.as_deref() {
        None | Some("tcp") => Check::Tcp,
        Some("none") => Check::None,
        Some("http") => {
            let path = raw.http_path.clone().unwrap_or_else(|| "/".into());
            p.field(&format!("{key}.http_path"), rules::http_path(&path));
            if let Some(host) = &raw.http_host {
                p.field(&format!("{key}.http_host"), rules::http_host(host));
            }
            let (status_min, status_max) = match raw.http_status.as_deref() {
                None => (200, 399),
                Some([lo, hi]) if 100 <= *lo && lo <= hi && *hi <= 599 => (*lo as u16, *hi as u16),
                Some(other) => {
                    p.add(
                        format!("{key}.http_status"),
                        format!("{other:?} is not [LOW, HIGH] within 100..=599"),
                    );
                    (200, 399)
                }
            };
            Check::Http {
                path,
                host: raw.http_host.clone(),
                status_min,
                status_max,
            }
        }
        Some(other) => {
            p.add(
                format!("{key}.check"),
                format!("\"{other}\" is not a check; use \"tcp\", \"http\" or \"none\""),
            );
            Check::Tcp
        }
    };
    if !matches!(check, Check::Http { .. })
        && (raw.http_path.is_some() || raw.http_host.is_some() || raw.http_status.is_some())
    {
        p.add(
            key,
            "http_path, http_host and http_status need check = \"http\"",
        );
    }
    (p.0.len() == before).then_some(HealthSpec {
        check,
        port,
        interval_ms,
        timeout_ms,
        rise,
        fall,
    })
}

fn ip(key: &str, value: Option<&str>, p: &mut Problems) -> Option<IpAddr> {
    match value {
        None => {
            p.add(
                key,
                "missing; give an IPv4 or IPv6 address such as \"192.0.2.10\" or \"2001:db8::10\"",
            );
            None
        }
        Some(text) => match text.parse::<IpAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                p.add(
                    key,
                    format!("\"{text}\" is not an IPv4 or IPv6 address (no brackets, no port)"),
                );
                None
            }
        },
    }
}
