//! The configuration file: TOML parsed into raw structs, then validated as a
//! whole by a pure function that returns every problem, each naming its key.
//! Nothing is applied unless the whole file is valid. The reference is
//! `examples/foobar.toml` and README.md; keep them in step with this file.
use std::{
    collections::HashSet,
    fmt,
    net::{Ipv4Addr, SocketAddr},
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
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default, rename = "vip")]
    vips: Vec<RawVip>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    socket: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

/// Health-check keys; at VIP level they are the defaults of its backends,
/// at backend level they override them key by key.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    check: Option<String>,
    port: Option<i64>,
    interval_ms: Option<i64>,
    timeout_ms: Option<i64>,
    rise: Option<i64>,
    fall: Option<i64>,
    http_path: Option<String>,
    http_host: Option<String>,
    http_status: Option<Vec<i64>>,
}

impl RawHealth {
    fn is_empty(&self) -> bool {
        self.check.is_none()
            && self.port.is_none()
            && self.interval_ms.is_none()
            && self.timeout_ms.is_none()
            && self.rise.is_none()
            && self.fall.is_none()
            && self.http_path.is_none()
            && self.http_host.is_none()
            && self.http_status.is_none()
    }

    /// These keys over `defaults`. A backend that names its own check does
    /// not inherit the VIP's HTTP keys unless its check is HTTP too.
    fn or(&self, defaults: &RawHealth) -> RawHealth {
        let defaults = match self.check.as_deref() {
            Some(check) if check != "http" => RawHealth {
                http_path: None,
                http_host: None,
                http_status: None,
                ..defaults.clone()
            },
            _ => defaults.clone(),
        };
        RawHealth {
            check: self.check.clone().or_else(|| defaults.check.clone()),
            port: self.port.or(defaults.port),
            interval_ms: self.interval_ms.or(defaults.interval_ms),
            timeout_ms: self.timeout_ms.or(defaults.timeout_ms),
            rise: self.rise.or(defaults.rise),
            fall: self.fall.or(defaults.fall),
            http_path: self
                .http_path
                .clone()
                .or_else(|| defaults.http_path.clone()),
            http_host: self
                .http_host
                .clone()
                .or_else(|| defaults.http_host.clone()),
            http_status: self
                .http_status
                .clone()
                .or_else(|| defaults.http_status.clone()),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDatapath {
    interface: Option<String>,
    xdp_mode: Option<String>,
    flow_table_size: Option<i64>,
    hash_seed: Option<i64>,
    wlc_period_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Option<String>,
    address: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    scheduler: Option<String>,
    maglev_table_size: Option<i64>,
    persistence: Option<RawPersistence>,
    forwarding: Option<String>,
    #[serde(default)]
    health: RawHealth,
    #[serde(default, rename = "backend")]
    backends: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPersistence {
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<String>,
    weight: Option<i64>,
    #[serde(default)]
    health: RawHealth,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub datapath: DatapathConfig,
    /// The control socket `foobar` CLI commands talk to.
    pub socket: PathBuf,
    /// Where the Prometheus endpoint listens; None when "off".
    pub metrics_listen: Option<SocketAddr>,
    pub vips: Vec<Vip>,
}

pub const DEFAULT_SOCKET: &str = "/run/foobar/foobar.sock";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9183";

/// How a backend's health is checked (HAProxy's semantics: `fall`
/// consecutive failures take an up backend down, `rise` consecutive
/// successes bring a down one up).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthSpec {
    pub check: Check,
    /// Port to check; None = the VIP's port (80 for a port-0 VIP).
    pub port: Option<u16>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Check {
    /// Always up.
    None,
    /// A TCP connect succeeds.
    Tcp,
    /// `GET path` with `Host: host` answers a status in `status_min..=status_max`.
    Http {
        path: String,
        /// None = the backend's address.
        host: Option<String>,
        status_min: u16,
        status_max: u16,
    },
}

impl HealthSpec {
    /// The port checked on a backend of a VIP with `vip_port`.
    pub fn port_for(&self, vip_port: u16) -> u16 {
        self.port
            .unwrap_or(if vip_port == 0 { 80 } else { vip_port })
    }
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            check: Check::Tcp,
            port: None,
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// The LB node's NIC; `foobar run --iface` overrides it.
    pub interface: Option<String>,
    pub xdp_mode: AttachMode,
    pub flow_table_size: u32,
    /// Seed of the Maglev flow hash: the same on every node of a fleet.
    pub hash_seed: u32,
    /// How often "wlc" VIPs are re-weighted from active connection counts.
    pub wlc_period_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Scheduler {
    /// Weighted round-robin over new flows.
    #[serde(rename = "rr")]
    RoundRobin,
    /// Consistent hashing of the 5-tuple over a Maglev table.
    #[serde(rename = "maglev")]
    Maglev,
    /// Weighted least-connections: round-robin over weights divided by
    /// each backend's active connections, re-computed periodically.
    #[serde(rename = "wlc")]
    LeastConn,
}

impl Scheduler {
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::RoundRobin => "rr",
            Scheduler::Maglev => "maglev",
            Scheduler::LeastConn => "wlc",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "rr" => Ok(Scheduler::RoundRobin),
            "maglev" => Ok(Scheduler::Maglev),
            "wlc" => Ok(Scheduler::LeastConn),
            other => Err(format!(
                "\"{other}\" is not a scheduler; use \"rr\", \"maglev\" or \"wlc\""
            )),
        }
    }
}

/// Parses "300s", "5m", "2h" or a bare number of seconds.
pub fn parse_duration_s(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u32 = digits
        .parse()
        .map_err(|_| format!("\"{text}\" is not a duration such as \"300s\", \"5m\" or \"1h\""))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("\"{text}\": the unit must be s, m or h")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("\"{text}\" is too long"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    Dsr,
}

impl Forwarding {
    pub fn name(self) -> &'static str {
        match self {
            Forwarding::Dsr => "dsr",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "dsr" => Ok(Forwarding::Dsr),
            other => Err(format!(
                "\"{other}\" is not available in this version; use \"dsr\""
            )),
        }
    }
}

impl Protocol {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(format!(
                "\"{other}\" is not supported; use \"tcp\" or \"udp\""
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vip {
    pub name: String,
    pub address: Ipv4Addr,
    /// 0 serves every port.
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    /// Slots of the Maglev table (prime), for `scheduler = "maglev"`.
    pub maglev_table_size: u32,
    /// Source affinity: seconds a client stays with its backend after its
    /// latest new connection; None without `persistence`.
    pub affinity_timeout_s: Option<u32>,
    pub forwarding: Forwarding,
    /// Health check of backends added at run time (`foobar backend add`).
    pub health: HealthSpec,
    pub backends: Vec<BackendConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: Ipv4Addr,
    pub weight: u32,
    pub health: HealthSpec,
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

    /// The value, or None with the error recorded at `key`.
    fn field<T>(&mut self, key: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|e| self.add(key, e)).ok()
    }
}

fn validate(raw: &RawConfig) -> Result<Config, Vec<Problem>> {
    let mut p = Problems(Vec::new());
    let datapath = validate_datapath(&raw.datapath, &mut p);
    let socket = PathBuf::from(raw.api.socket.as_deref().unwrap_or(DEFAULT_SOCKET));
    if !socket.is_absolute() {
        p.add(
            "api.socket",
            format!("\"{}\" is not an absolute path", socket.display()),
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
        (Some(datapath), true) => Ok(Config {
            datapath,
            socket,
            metrics_listen,
            vips,
        }),
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
    Some(DatapathConfig {
        interface: raw.interface.clone(),
        xdp_mode: xdp_mode?,
        flow_table_size: flow_table_size?,
        hash_seed: hash_seed?,
        wlc_period_ms: wlc_period_ms?,
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
        Forwarding::parse(raw.forwarding.as_deref().unwrap_or("dsr")),
    );
    let health = validate_health(&format!("{key}.health"), &raw.health, p);
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
        if let (Some(address), Some(weight), Some(health)) = (address, weight, health) {
            backends.push(BackendConfig {
                address,
                weight,
                health,
            });
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
        maglev_table_size: maglev_table_size?,
        affinity_timeout_s: affinity_timeout_s?,
        forwarding: forwarding?,
        health: health?,
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
            if !path.starts_with('/') {
                p.add(
                    format!("{key}.http_path"),
                    format!("\"{path}\" must start with /"),
                );
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
    fn backend_health_keys_override_the_vip_defaults_one_by_one() {
        let c = parse(
            r#"
            [api]
            socket = "/tmp/x.sock"
            [metrics]
            listen = "off"
            [[vip]]
            name = "web"
            address = "192.0.2.10"
            port = 8080
            [vip.health]
            check = "http"
            http_path = "/healthz"
            interval_ms = 500
            fall = 2
            [[vip.backend]]
            address = "10.0.0.11"
            [[vip.backend]]
            address = "10.0.0.12"
            [vip.backend.health]
            check = "tcp"
            port = 9000
        "#,
        )
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.metrics_listen, None);
        let web = &c.vips[0];
        assert_eq!(web.health.interval_ms, 500);
        let first = &web.backends[0].health;
        assert_eq!(
            first.check,
            Check::Http {
                path: "/healthz".into(),
                host: None,
                status_min: 200,
                status_max: 399
            }
        );
        assert_eq!(
            (first.interval_ms, first.timeout_ms, first.rise, first.fall),
            (500, 500, 2, 2),
            "an unset timeout is capped by the interval"
        );
        assert_eq!(first.port_for(web.port), 8080);
        let second = &web.backends[1].health;
        assert_eq!(second.check, Check::Tcp, "the backend's own check wins");
        assert_eq!(second.port_for(web.port), 9000);
        assert_eq!(
            second.interval_ms, 500,
            "other keys still come from the VIP"
        );
    }

    #[test]
    fn health_api_and_metrics_problems_name_their_keys() {
        let mut got = keys(
            r#"
            [api]
            socket = "relative.sock"
            [metrics]
            listen = "everywhere"
            [[vip]]
            name = "web"
            address = "192.0.2.10"
            port = 80
            [vip.health]
            check = "ping"
            rise = 0
            timeout_ms = 5000
            [[vip.backend]]
            address = "10.0.0.11"
            [vip.backend.health]
            check = "tcp"
            http_status = [200, 299]
        "#,
        );
        got.sort();
        got.dedup();
        assert_eq!(
            got,
            vec![
                "api.socket",
                "metrics.listen",
                "vip[0].backend[0].health",
                "vip[0].backend[0].health.rise",
                "vip[0].backend[0].health.timeout_ms",
                "vip[0].health.check",
                "vip[0].health.rise",
                "vip[0].health.timeout_ms",
            ]
        );
    }

    #[test]
    fn scheduler_keys_are_validated() {
        let c = parse(
            r#"
            [datapath]
            hash_seed = 7
            [[vip]]
            name = "a"
            address = "192.0.2.1"
            port = 80
            scheduler = "maglev"
            maglev_table_size = 4099
            persistence = { timeout = "5m" }
            [[vip]]
            name = "b"
            address = "192.0.2.2"
            port = 80
            scheduler = "wlc"
        "#,
        )
        .unwrap();
        assert_eq!(c.datapath.hash_seed, 7);
        assert_eq!(c.vips[0].scheduler, Scheduler::Maglev);
        assert_eq!(c.vips[0].maglev_table_size, 4099);
        assert_eq!(c.vips[0].affinity_timeout_s, Some(300));
        assert_eq!(c.vips[1].scheduler, Scheduler::LeastConn);
        assert_eq!(c.vips[1].affinity_timeout_s, None);

        let mut got = keys(
            r#"
            [datapath]
            wlc_period_ms = 5
            [[vip]]
            name = "a"
            address = "192.0.2.1"
            port = 80
            scheduler = "maglev"
            maglev_table_size = 65536
            persistence = { timeout = "forever" }
            [[vip]]
            name = "b"
            address = "192.0.2.2"
            port = 80
            maglev_table_size = 4099
            persistence = { timeout = "0s" }
        "#,
        );
        got.sort();
        assert_eq!(
            got,
            vec![
                "datapath.wlc_period_ms",
                "vip[0].maglev_table_size",
                "vip[0].persistence.timeout",
                "vip[1].maglev_table_size",
                "vip[1].persistence.timeout",
            ]
        );
        assert_eq!(parse_duration_s("90"), Ok(90));
        assert_eq!(parse_duration_s("2h"), Ok(7200));
        assert!(parse_duration_s("5d").is_err());
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
