//! The configuration file: TOML parsed into raw structs, then validated as a
//! whole by a pure function that returns every problem, each naming its key.
//! Nothing is applied unless the whole file is valid. The reference is
//! `examples/foobar.toml` and README.md; keep them in step with this file.
use std::{
    collections::HashSet,
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use foobar_common::{FLOW_TABLE_DEFAULT, MAX_BACKENDS, MAX_VIPS, RING_CAPACITY};
use serde::Deserialize;

use crate::{datapath::AttachMode, ring};

/// Most weight one backend may have (HAProxy's limit).
pub const MAX_WEIGHT: u32 = 256;
/// Bounds of the flow table size (entries).
pub const FLOW_TABLE_MIN: u32 = 1024;
pub const FLOW_TABLE_MAX: u32 = 1 << 24;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    datapath: RawDatapath,
    #[serde(default, rename = "vip")]
    vips: Vec<RawVip>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDatapath {
    interface: Option<String>,
    xdp_mode: Option<String>,
    flow_table_size: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Option<String>,
    address: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    scheduler: Option<String>,
    forwarding: Option<String>,
    #[serde(default, rename = "backend")]
    backends: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<String>,
    weight: Option<i64>,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub datapath: DatapathConfig,
    pub vips: Vec<Vip>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// The LB node's NIC; `foobar run --iface` overrides it.
    pub interface: Option<String>,
    pub xdp_mode: AttachMode,
    pub flow_table_size: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => foobar_common::IPPROTO_TCP,
            Protocol::Udp => foobar_common::IPPROTO_UDP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    RoundRobin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    Dsr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vip {
    pub name: String,
    pub address: Ipv4Addr,
    /// 0 serves every port.
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub forwarding: Forwarding,
    pub backends: Vec<BackendConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: Ipv4Addr,
    pub weight: u32,
}

/// One thing wrong with a config, at one key (`vip[1].backend[0].address`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Everything wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}; nothing was applied",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: {}: {}", self.file.display(), p.key, p.message)?;
        }
        Ok(())
    }
}

/// Reads, parses and validates `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        problems: vec![Problem {
            key: "(file)".into(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse(&text).map_err(|problems| ConfigError {
        file: path.to_owned(),
        problems,
    })
}

/// Parses and validates a config text; on error, every problem found.
pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| vec![toml_problem(text, &e)])?;
    validate(&raw)
}

fn toml_problem(text: &str, err: &toml::de::Error) -> Problem {
    let key = match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}")
        }
        None => "(syntax)".into(),
    };
    Problem {
        key,
        message: err.message().trim().replace('\n', " "),
    }
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }
}

fn validate(raw: &RawConfig) -> Result<Config, Vec<Problem>> {
    let mut p = Problems(Vec::new());
    let datapath = validate_datapath(&raw.datapath, &mut p);

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
    let mut vips = Vec::new();
    for (i, raw_vip) in raw.vips.iter().enumerate() {
        let key = format!("vip[{i}]");
        if let Some(vip) = validate_vip(&key, raw_vip, &mut p) {
            if !names.insert(vip.name.clone()) {
                p.add(
                    format!("{key}.name"),
                    format!(
                        "\"{}\" is used by an earlier VIP; names must be unique",
                        vip.name
                    ),
                );
            }
            if !services.insert((vip.address, vip.port, vip.protocol)) {
                p.add(
                    &key,
                    format!(
                        "{}:{}/{} is already served by an earlier VIP",
                        vip.address,
                        vip.port,
                        vip.protocol.name()
                    ),
                );
            }
            vips.push(vip);
        }
    }
    match (datapath, p.0.is_empty()) {
        (Some(datapath), true) => Ok(Config { datapath, vips }),
        _ => Err(p.0),
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
    if let Some(iface) = &raw.interface {
        if iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ']) {
            p.add(
                "datapath.interface",
                format!("\"{iface}\" is not a valid interface name"),
            );
        }
    }
    Some(DatapathConfig {
        interface: raw.interface.clone(),
        xdp_mode: xdp_mode?,
        flow_table_size: flow_table_size?,
    })
}

fn validate_vip(key: &str, raw: &RawVip, p: &mut Problems) -> Option<Vip> {
    let name = match raw.name.as_deref() {
        None | Some("") => {
            p.add(format!("{key}.name"), "missing; every VIP needs a name");
            None
        }
        Some(n) => Some(n.to_owned()),
    };
    let address = ipv4(&format!("{key}.address"), raw.address.as_deref(), p);
    if let Some(a) = address {
        if a.is_unspecified() || a.is_multicast() || a.is_broadcast() {
            p.add(
                format!("{key}.address"),
                format!("{a} cannot be a VIP (unspecified, multicast or broadcast)"),
            );
        }
    }
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
    let protocol = match raw.protocol.as_deref() {
        None | Some("tcp") => Some(Protocol::Tcp),
        Some("udp") => Some(Protocol::Udp),
        Some(other) => {
            p.add(
                format!("{key}.protocol"),
                format!("\"{other}\" is not supported; use \"tcp\" or \"udp\""),
            );
            None
        }
    };
    let scheduler = match raw.scheduler.as_deref() {
        None | Some("rr") => Some(Scheduler::RoundRobin),
        Some(other) => {
            p.add(
                format!("{key}.scheduler"),
                format!("\"{other}\" is not available in this version; use \"rr\""),
            );
            None
        }
    };
    let forwarding = match raw.forwarding.as_deref() {
        None | Some("dsr") => Some(Forwarding::Dsr),
        Some(other) => {
            p.add(
                format!("{key}.forwarding"),
                format!("\"{other}\" is not available in this version; use \"dsr\""),
            );
            None
        }
    };

    let mut backends = Vec::new();
    let mut seen = HashSet::new();
    for (j, raw_backend) in raw.backends.iter().enumerate() {
        let bkey = format!("{key}.backend[{j}]");
        let address = ipv4(
            &format!("{bkey}.address"),
            raw_backend.address.as_deref(),
            p,
        );
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
        if let (Some(address), Some(weight)) = (address, weight) {
            backends.push(BackendConfig { address, weight });
        }
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
    Some(Vip {
        name: name?,
        address: address?,
        port: port?,
        protocol: protocol?,
        scheduler: scheduler?,
        forwarding: forwarding?,
        backends,
    })
}

fn ipv4(key: &str, value: Option<&str>, p: &mut Problems) -> Option<Ipv4Addr> {
    match value {
        None => {
            p.add(key, "missing; give an IPv4 address such as \"192.0.2.10\"");
            None
        }
        Some(text) => match text.parse::<Ipv4Addr>() {
            Ok(a) => Some(a),
            Err(_) if text.parse::<std::net::Ipv6Addr>().is_ok() => {
                p.add(key, format!("\"{text}\": IPv6 is not supported yet"));
                None
            }
            Err(_) => {
                p.add(key, format!("\"{text}\" is not an IPv4 address"));
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [datapath]
        interface = "eth0"
        xdp_mode = "skb"
        flow_table_size = 4096

        [[vip]]
        name = "web"
        address = "192.0.2.10"
        port = 80

        [[vip.backend]]
        address = "10.0.0.11"

        [[vip.backend]]
        address = "10.0.0.12"
        weight = 3

        [[vip]]
        name = "dns"
        address = "192.0.2.10"
        port = 0
        protocol = "udp"
    "#;

    fn problems(text: &str) -> Vec<Problem> {
        parse(text).expect_err("config should be rejected")
    }

    fn keys(text: &str) -> Vec<String> {
        problems(text).into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.datapath.interface.as_deref(), Some("eth0"));
        assert_eq!(c.datapath.xdp_mode, AttachMode::Skb);
        assert_eq!(c.datapath.flow_table_size, 4096);
        assert_eq!(c.vips.len(), 2);
        let web = &c.vips[0];
        assert_eq!(web.address, Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(web.protocol, Protocol::Tcp);
        assert_eq!(web.scheduler, Scheduler::RoundRobin);
        assert_eq!(web.forwarding, Forwarding::Dsr);
        assert_eq!(web.backends[0].weight, 1);
        assert_eq!(web.backends[1].weight, 3);
        assert_eq!(c.vips[1].port, 0);
        assert_eq!(c.vips[1].protocol, Protocol::Udp);
    }

    #[test]
    fn the_documented_example_is_valid() {
        let c = parse(include_str!("../../examples/foobar.toml")).unwrap();
        assert_eq!(c.datapath.interface.as_deref(), Some("eth0"));
        assert_eq!(c.vips.len(), 1);
        assert_eq!(c.vips[0].backends.len(), 2);
    }

    #[test]
    fn empty_config_is_valid_and_defaults_to_native() {
        let c = parse("").unwrap();
        assert_eq!(c.datapath.xdp_mode, AttachMode::Native);
        assert_eq!(c.datapath.flow_table_size, FLOW_TABLE_DEFAULT);
        assert!(c.vips.is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            [datapath]
            xdp_mode = "fast"
            flow_table_size = 10

            [[vip]]
            address = "192.0.2.300"
            port = 70000
            protocol = "sctp"
            scheduler = "random"
            forwarding = "tunnel"

            [[vip.backend]]
            address = "10.0.0.1"
            weight = 999

            [[vip.backend]]
            address = "10.0.0.1"
        "#;
        let mut got = keys(text);
        got.sort();
        let mut want = vec![
            "datapath.flow_table_size",
            "datapath.xdp_mode",
            "vip[0].address",
            "vip[0].backend[0].weight",
            "vip[0].backend[1].address",
            "vip[0].forwarding",
            "vip[0].name",
            "vip[0].port",
            "vip[0].protocol",
            "vip[0].scheduler",
        ];
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn duplicate_names_and_services_are_rejected() {
        let text = r#"
            [[vip]]
            name = "a"
            address = "192.0.2.1"
            port = 80
            [[vip]]
            name = "a"
            address = "192.0.2.1"
            port = 80
            [[vip]]
            name = "b"
            address = "192.0.2.1"
            port = 80
            protocol = "udp"
        "#;
        let p = problems(text);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].key, "vip[1].name");
        assert_eq!(p[1].key, "vip[1]");
        assert!(
            p[1].message.contains("192.0.2.1:80/tcp"),
            "{}",
            p[1].message
        );
    }

    #[test]
    fn unknown_keys_and_syntax_errors_name_the_line() {
        let p = problems("[datapath]\ninterface = \"eth0\"\nspeed = 10\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "line 3, column 1");
        assert!(
            p[0].message.contains("unknown field `speed`"),
            "{}",
            p[0].message
        );

        let p = problems("[[vip]\n");
        assert!(p[0].key.starts_with("line 1"), "{:?}", p[0]);
    }

    #[test]
    fn ipv6_and_special_addresses_get_specific_messages() {
        let text = r#"
            [[vip]]
            name = "v6"
            address = "2001:db8::1"
            port = 80
            [[vip]]
            name = "mc"
            address = "224.0.0.18"
            port = 80
        "#;
        let p = problems(text);
        assert!(p[0].message.contains("IPv6 is not supported yet"), "{p:?}");
        assert!(p[1].message.contains("multicast"), "{p:?}");
    }

    #[test]
    fn rings_larger_than_the_datapath_are_rejected() {
        // 256 backends of co-prime weights 256 and 255 need > 65537 slots.
        let mut text =
            String::from("[[vip]]\nname = \"big\"\naddress = \"192.0.2.1\"\nport = 80\n");
        for i in 0..300u32 {
            let w = if i % 2 == 0 { 256 } else { 255 };
            text.push_str(&format!(
                "[[vip.backend]]\naddress = \"10.{}.{}.1\"\nweight = {w}\n",
                i / 256,
                i % 256
            ));
        }
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "vip[0].backend");
    }

    #[test]
    fn error_display_names_file_key_and_problem() {
        let err = ConfigError {
            file: "/etc/foobar/foobar.toml".into(),
            problems: problems("[[vip]]\nname = \"x\"\naddress = \"nope\"\nport = 1\n"),
        };
        let text = err.to_string();
        assert!(text.contains("1 problem; nothing was applied"), "{text}");
        assert!(
            text.contains(
                "/etc/foobar/foobar.toml: vip[0].address: \"nope\" is not an IPv4 address"
            ),
            "{text}"
        );
    }
}
