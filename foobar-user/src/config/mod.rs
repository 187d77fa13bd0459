//! The configuration file: TOML parsed into raw structs, then validated as a
//! whole by a pure function that returns every problem, each naming its key.
//! Nothing is applied unless the whole file is valid. The reference is
//! `examples/foobar.toml` and README.md; keep them in step with this file.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Most weight one backend may have (HAProxy's limit).
pub const MAX_WEIGHT: u32 = 256;
/// Bounds of the flow table size (entries).
pub const FLOW_TABLE_MIN: u32 = 1024;
pub const FLOW_TABLE_MAX: u32 = 1 << 24;
/// Bounds of `datapath.retire_idle`, in seconds (1 s to a day).
pub const RETIRE_IDLE_MIN_S: u32 = 1;
pub const RETIRE_IDLE_MAX_S: u32 = 86_400;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    datapath: RawDatapath,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    log: RawLog,
    #[serde(default, rename = "vip")]
    vips: Vec<RawVip>,
    #[serde(default)]
    vrrp: Vec<vrrp::RawVrrp>,
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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

/// `[log]`: how `foobar run` logs (read at start; `FOOBAR_LOG` and
/// `--log-format` override).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// A tracing filter: "info", "debug", "foobar=debug,info"...
    pub level: Option<String>,
    /// None: text, or what `--log-format` says.
    pub format: Option<crate::logging::LogFormat>,
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
    backend_interface: Option<String>,
    xdp_mode: Option<String>,
    flow_table_size: Option<i64>,
    flow_table: Option<String>,
    affinity_table_size: Option<i64>,
    hash_seed: Option<i64>,
    wlc_period_ms: Option<i64>,
    retire_idle: Option<String>,
    ipip_source: Option<String>,
    ipip_source6: Option<String>,
    snat_address: Option<String>,
    snat_ports: Option<String>,
    nat_tcp_idle: Option<String>,
    nat_udp_idle: Option<String>,
    nat_linger: Option<String>,
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
    snat_address: Option<String>,
    vlan: Option<i64>,
    closed_ports: Option<String>,
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
    port: Option<i64>,
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
    /// VRRP instances holding the VIPs' addresses (none: this node holds
    /// them however the operator arranged).
    pub vrrp: Vec<VrrpInstance>,
    pub log: LogConfig,
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

/// Where XDP runs on an interface (`datapath.xdp_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver, before an skb exists (the fast path).
    Native,
    /// Generic XDP in the kernel stack: works on every interface, slower.
    Skb,
}

/// Where the datapath keeps its flows (`datapath.flow_table`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlowTableMode {
    /// One table for every CPU: a flow is found whichever CPU its packets
    /// reach. Inserts from several CPUs at once contend for its lock.
    #[default]
    Shared,
    /// One table per CPU, each of `flow_table_size` entries: new flows on
    /// several CPUs scale, but a flow whose packets move to another CPU is
    /// scheduled anew there (rr/wlc may pick another backend: a reset).
    PerCpu,
}

impl FlowTableMode {
    pub fn name(self) -> &'static str {
        match self {
            FlowTableMode::Shared => "shared",
            FlowTableMode::PerCpu => "per-cpu",
        }
    }
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// The LB node's NIC; `foobar run --iface` overrides it.
    pub interface: Option<String>,
    /// Two-arm (docs/TOPOLOGY.md): the backend-side NIC, where frames to
    /// backends reached through it leave (redirected) and their replies
    /// come in; the program is attached there too. None: one-arm.
    pub backend_interface: Option<String>,
    pub xdp_mode: AttachMode,
    /// Entries of the flow table; per CPU with `FlowTableMode::PerCpu`.
    pub flow_table_size: u32,
    pub flow_table: FlowTableMode,
    /// Entries of the source-affinity table; None: the flow table's size if
    /// a VIP uses persistence, else 1 (the least a map can have).
    pub affinity_table_size: Option<u32>,
    /// Seed of the Maglev flow hash: the same on every node of a fleet.
    pub hash_seed: u32,
    /// How often "wlc" VIPs are re-weighted from active connection counts.
    pub wlc_period_ms: u64,
    /// How long a removed backend's flows may stay idle before its entry
    /// (and id) is freed; also how recently a flow must have been seen to
    /// count as an active connection for "wlc".
    pub retire_idle: std::time::Duration,
    /// The outer source of `ipip` packets: an address of this node (/32),
    /// or a prefix routed to it whose host bits the datapath takes from
    /// the flow, so backends' RSS spreads flows. None: no `ipip` VIP.
    pub ipip_source: Option<(Ipv4Addr, u8)>,
    /// The outer source of IPv6 `ipip` packets, as `ipip_source`.
    pub ipip_source6: Option<(std::net::Ipv6Addr, u8)>,
    /// The node-wide NAT keys (`snat_address`, `snat_ports`, timeouts).
    pub nat: NatDefaults,
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
    Nat,
    Ipip,
    /// Destination NAT only (docs/DNAT.md): backends see the client's
    /// address and route their replies through the LB.
    Dnat,
}

impl Forwarding {
    pub fn name(self) -> &'static str {
        match self {
            Forwarding::Dsr => "dsr",
            Forwarding::Nat => "nat",
            Forwarding::Ipip => "ipip",
            Forwarding::Dnat => "dnat",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "dsr" => Ok(Forwarding::Dsr),
            "nat" => Ok(Forwarding::Nat),
            "ipip" => Ok(Forwarding::Ipip),
            "dnat" => Ok(Forwarding::Dnat),
            other => Err(format!(
                "\"{other}\" is not available in this version; use \"dsr\", \"nat\", \"dnat\" \
                 or \"ipip\""
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
    /// IPv4 or IPv6; every backend of the VIP has the same family.
    pub address: IpAddr,
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
    /// With `forwarding = "nat"`: its SNAT address (its own or the node's),
    /// ports and timeouts; with `"dnat"`: the timeouts (no SNAT address).
    pub nat: Option<NatSettings>,
    /// Health check of backends added at run time (`foobar backend add`).
    pub health: HealthSpec,
    /// 802.1Q VLAN the VIP is served on; None: untagged frames.
    pub vlan: Option<u16>,
    /// `closed_ports = "pass"`: TCP/UDP to ports of the VIP's address that no
    /// VIP serves reach the node's own stack instead of being dropped.
    pub pass_closed_ports: bool,
    pub backends: Vec<BackendConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: IpAddr,
    pub weight: u32,
    /// NAT and DNAT only: the backend's port (None: the port the client
    /// asked for).
    pub port: Option<u16>,
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

impl Vip {
    /// Every problem the config's rules find in this VIP when it comes from
    /// elsewhere than a validated file (the state file): the same ranges,
    /// names and addresses, so a value the file refuses is refused there
    /// too. A VIP may have no backend, or only weight-0 ones (run-time
    /// changes can leave it so). Keys start with `key`.
    pub fn problems(&self, key: &str) -> Vec<Problem> {
        validate::validate_saved_vip(key, &RawVip::from(self))
    }
}

impl From<&HealthSpec> for RawHealth {
    fn from(h: &HealthSpec) -> Self {
        let (check, http_path, http_host, http_status) = match &h.check {
            Check::None => ("none", None, None, None),
            Check::Tcp => ("tcp", None, None, None),
            Check::Http {
                path,
                host,
                status_min,
                status_max,
            } => (
                "http",
                Some(path.clone()),
                host.clone(),
                Some(vec![i64::from(*status_min), i64::from(*status_max)]),
            ),
        };
        RawHealth {
            check: Some(check.into()),
            port: h.port.map(i64::from),
            interval_ms: Some(h.interval_ms.min(i64::MAX as u64) as i64),
            timeout_ms: Some(h.timeout_ms.min(i64::MAX as u64) as i64),
            rise: Some(i64::from(h.rise)),
            fall: Some(i64::from(h.fall)),
            http_path,
            http_host,
            http_status,
        }
    }
}

/// A validated VIP back in the file's raw form (what `validate` reads).
impl From<&Vip> for RawVip {
    fn from(v: &Vip) -> Self {
        RawVip {
            name: Some(v.name.clone()),
            address: Some(v.address.to_string()),
            port: Some(i64::from(v.port)),
            protocol: Some(v.protocol.name().into()),
            scheduler: Some(v.scheduler.name().into()),
            maglev_table_size: (v.scheduler == Scheduler::Maglev)
                .then_some(i64::from(v.maglev_table_size)),
            persistence: v.affinity_timeout_s.map(|s| RawPersistence {
                timeout: Some(format!("{s}s")),
            }),
            forwarding: Some(v.forwarding.name().into()),
            // A dnat VIP's settings hold no SNAT address.
            snat_address: v
                .nat
                .filter(|_| v.forwarding == Forwarding::Nat)
                .map(|n| n.snat_address.to_string()),
            vlan: v.vlan.map(i64::from),
            closed_ports: Some(if v.pass_closed_ports { "pass" } else { "drop" }.into()),
            health: RawHealth::from(&v.health),
            backends: v
                .backends
                .iter()
                .map(|b| RawBackend {
                    address: Some(b.address.to_string()),
                    weight: Some(i64::from(b.weight)),
                    port: b.port.map(i64::from),
                    health: RawHealth::from(&b.health),
                })
                .collect(),
        }
    }
}

/// Largest config file foobar reads (a real one is a few KiB).
pub const MAX_FILE_SIZE: u64 = 1 << 20;

/// Reads, parses and validates `path`. `foobar check` and `foobar run` both
/// come through here (run through `load_with_text`), so they accept exactly
/// the same files.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_text(path).map(|(config, _)| config)
}

/// `load`, also returning the text it validated (`foobar run` keys its
/// state file to it).
pub fn load_with_text(path: &Path) -> Result<(Config, String), ConfigError> {
    let error = |problems| ConfigError {
        file: path.to_owned(),
        problems,
    };
    let text = read_bounded(path).map_err(|message| {
        error(vec![Problem {
            key: "(file)".into(),
            message,
        }])
    })?;
    let config = parse(&text).map_err(error)?;
    Ok((config, text))
}

/// Reads a regular file of at most `MAX_FILE_SIZE` bytes. Opened without
/// blocking, so a FIFO is refused instead of waiting for a writer, and a
/// device such as /dev/zero is refused instead of read until memory runs out.
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::{
        io::Read as _,
        os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot open: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(format!(
            "is {what}; give the path of a TOML file (at most {MAX_FILE_SIZE} bytes)"
        ));
    }
    let too_big = || format!("larger than {MAX_FILE_SIZE} bytes; a config file is a few KiB");
    if meta.len() > MAX_FILE_SIZE {
        return Err(too_big());
    }
    // The file may grow after the stat: never read more than the cap + 1.
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Parses and validates a config text; on error, every problem found.
pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|e| vec![toml_problem(text, &e)])?;
    validate::validate(&raw)
}

/// A TOML or type error at its key path (`vip[1].backend[0].weight`), with
/// its line and column; at the line and column alone when no key was read
/// yet (a syntax error).
fn toml_problem(text: &str, err: &serde_path_to_error::Error<toml::de::Error>) -> Problem {
    let inner = err.inner();
    let at = inner.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("line {line}, column {col}")
    });
    let message = plain_serde_message(inner.message().trim()).replace('\n', " ");
    let path = err.path().to_string();
    match (path.as_str(), at) {
        ("." | "", Some(at)) => Problem { key: at, message },
        ("." | "", None) => Problem {
            key: "(syntax)".into(),
            message,
        },
        (_, Some(at)) => Problem {
            key: path,
            message: format!("{message} (at {at})"),
        },
        (_, None) => Problem { key: path, message },
    }
}

/// serde's "invalid type: string \"x\", expected i64" in an operator's
/// words: "expected an integer, found a string \"x\"".
fn plain_serde_message(message: &str) -> String {
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return message.to_owned();
    };
    let Some((found, expected)) = rest.split_once(", expected ") else {
        return message.to_owned();
    };
    let expected = match expected {
        "i64" | "u64" | "i32" | "u32" | "u16" => "an integer",
        "a sequence" => "an array",
        "a boolean" => "true or false",
        e if e.starts_with("struct ") || e == "a map" => "a table",
        e => e,
    };
    let found = found
        .replace("sequence", "an array")
        .replace("map", "a table");
    let found = match found.split_once(' ') {
        Some(("string", v)) => format!("a string {v}"),
        Some(("integer", v)) => format!("an integer {}", v.trim_matches('`')),
        Some(("floating", v)) => format!(
            "a float {}",
            v.trim_start_matches("point ").trim_matches('`')
        ),
        Some(("boolean", v)) => format!("a boolean {}", v.trim_matches('`')),
        _ => found,
    };
    format!("expected {expected}, found {found}")
}

pub mod dnat;
pub mod ipv6;
pub mod nat;
pub mod rules;
mod validate;
mod vrrp;
pub use nat::{NatDefaults, NatSettings};
pub use vrrp::VrrpInstance;

#[cfg(test)]
mod tests;
