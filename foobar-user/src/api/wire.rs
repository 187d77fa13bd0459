//! What travels on the control socket: typed requests and responses, and
//! the protocol version both carry (docs/API.md is the reference). The
//! daemon never re-parses text: an address is an `IpAddr`, a scheduler a
//! `Scheduler`, by the time a request reaches the state owner.
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::config::{Check, Forwarding, HealthSpec, Protocol, Scheduler, MAX_WEIGHT};

/// Version of the request and response lines (`"v"` in each). Bump it when
/// a request or response changes in a way an older peer would misread.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Stats,
    VipAdd {
        name: String,
        address: IpAddr,
        /// 0 serves every port.
        port: u16,
        #[serde(default = "default_protocol")]
        protocol: Protocol,
        #[serde(default = "default_scheduler")]
        scheduler: Scheduler,
        #[serde(default = "default_forwarding")]
        forwarding: Forwarding,
        /// Slots of the Maglev table (a prime); None: the default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maglev_table_size: Option<u32>,
        /// Source affinity: seconds a client stays with its backend.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        persistence_timeout_s: Option<u32>,
        /// Health check of the VIP's backends; None: the default (TCP).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        health: Option<HealthSpec>,
        /// `nat` only: the VIP's SNAT address (an address of the LB's
        /// interface); None: the node's (`[datapath] snat_address`, else
        /// the interface's primary address).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snat_address: Option<Ipv4Addr>,
    },
    VipRemove {
        name: String,
    },
    BackendAdd {
        vip: String,
        address: IpAddr,
        #[serde(default = "default_weight")]
        weight: u32,
        /// `nat` VIPs only: the port the backend serves on; None: the port
        /// the client asked for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    },
    BackendRemove {
        vip: String,
        address: IpAddr,
        /// Remove it even if it is the VIP's last backend taking new flows
        /// (the VIP then drops its new traffic).
        #[serde(default)]
        force: bool,
    },
    BackendDrain {
        vip: String,
        address: IpAddr,
    },
    BackendEnable {
        vip: String,
        address: IpAddr,
    },
    BackendWeight {
        vip: String,
        address: IpAddr,
        weight: u32,
    },
    /// Re-read the daemon's config file and apply what changed (see
    /// `reload`); a config with any problem is refused whole.
    Reload,
    /// Forget the source-affinity choices of one VIP (or of every VIP):
    /// clients' next new connections are scheduled afresh.
    AffinityPurge {
        #[serde(default)]
        vip: Option<String>,
    },
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}
fn default_scheduler() -> Scheduler {
    Scheduler::RoundRobin
}
fn default_forwarding() -> Forwarding {
    Forwarding::Nat
}
fn default_weight() -> u32 {
    1
}

impl Request {
    /// The operation as the CLI names it, for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Reload => "reload",
            Request::Status => "status",
            Request::Stats => "stats",
            Request::VipAdd { .. } => "vip add",
            Request::VipRemove { .. } => "vip remove",
            Request::AffinityPurge { .. } => "vip purge-affinity",
            Request::BackendAdd { .. } => "backend add",
            Request::BackendRemove { .. } => "backend remove",
            Request::BackendDrain { .. } => "backend drain",
            Request::BackendEnable { .. } => "backend enable",
            Request::BackendWeight { .. } => "backend weight",
        }
    }

    /// Whether the request changes anything (status and stats only read).
    pub fn changes(&self) -> bool {
        !matches!(self, Request::Status | Request::Stats)
    }

    /// The request as one line of the protocol (no newline).
    pub fn encode(&self) -> String {
        let mut value = serde_json::to_value(self).expect("a request always serializes");
        if let Some(map) = value.as_object_mut() {
            map.insert("v".into(), PROTOCOL_VERSION.into());
        }
        value.to_string()
    }

    /// Reads one request line: a JSON object with `"v"` (the protocol
    /// version), `"op"` and the operation's fields. An old, newer or
    /// garbled line gets an error that says which.
    pub fn decode(line: &[u8]) -> Result<Request, String> {
        let value: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| format!("malformed request: not JSON ({e}); see docs/API.md"))?;
        let serde_json::Value::Object(mut map) = value else {
            return Err("malformed request: not a JSON object; see docs/API.md".into());
        };
        match map.remove("v") {
            None => {
                return Err(format!(
                    "request without a protocol version (\"v\"): it comes from a client \
                     older than this daemon, which speaks protocol {PROTOCOL_VERSION}; use \
                     the foobar CLI of the daemon's release (see docs/API.md)"
                ))
            }
            Some(v) if v == PROTOCOL_VERSION => {}
            Some(v) => {
                return Err(format!(
                    "request in protocol version {v}, but this daemon speaks protocol \
                     {PROTOCOL_VERSION}; use the foobar CLI of the daemon's release"
                ))
            }
        }
        // serde lets extra fields through on operations without fields.
        let fields = map.len();
        let request: Request = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| format!("malformed request: {e}; see docs/API.md"))?;
        if matches!(request, Request::Status | Request::Stats | Request::Reload) && fields > 1 {
            return Err(format!(
                "malformed request: \"{}\" takes no fields; see docs/API.md",
                request.name()
            ));
        }
        Ok(request)
    }

    /// What the daemon checks before acting, beyond the types: the
    /// config's bounds on weights and health checks, so a request from any
    /// client meets the rules a config file meets.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Request::BackendAdd { weight, .. } | Request::BackendWeight { weight, .. }
                if *weight > MAX_WEIGHT =>
            {
                Err(format!(
                    "weight {weight} is out of range 0..={MAX_WEIGHT} (0 takes no new flows)"
                ))
            }
            Request::BackendAdd { port: Some(0), .. } => {
                Err("backend port 0: give the port the backend serves on (1..=65535)".into())
            }
            Request::VipAdd {
                scheduler,
                forwarding,
                maglev_table_size,
                persistence_timeout_s,
                health,
                snat_address,
                ..
            } => {
                if let Some(a) = snat_address {
                    if *forwarding != Forwarding::Nat {
                        return Err(format!(
                            "SNAT address {a}: only a VIP with forwarding nat translates \
                             sources; add --forwarding nat or leave --snat-address out"
                        ));
                    }
                    crate::config::nat::snat_address(&a.to_string())?;
                }
                if let Some(n) = maglev_table_size {
                    if *scheduler != Scheduler::Maglev {
                        return Err(format!(
                            "maglev table size {n}: only a VIP with scheduler maglev has a table"
                        ));
                    }
                    validate_maglev_table_size(*n)?;
                }
                if *persistence_timeout_s == Some(0) {
                    return Err("persistence timeout 0 s: give at least 1 s".into());
                }
                health.as_ref().map_or(Ok(()), validate_health)
            }
            _ => Ok(()),
        }
    }
}

/// A Maglev table size the datapath can hold: a prime in
/// 2..=RING_CAPACITY (as `maglev_table_size` in a config file).
pub fn validate_maglev_table_size(n: u32) -> Result<(), String> {
    let max = foobar_common::RING_CAPACITY;
    if (2..=max).contains(&n) && crate::maglev::is_prime(n) {
        Ok(())
    } else {
        Err(format!(
            "maglev table size {n} is not a prime in 2..={max} (e.g. 65537, 32771, 16411)"
        ))
    }
}

/// The bounds `[vip.health]` has in a config file (config/validate.rs).
pub fn validate_health(h: &HealthSpec) -> Result<(), String> {
    let range = |name: &str, v: u64, lo: u64, hi: u64| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(format!("health {name} {v} is out of range {lo}..={hi}"))
        }
    };
    range("interval_ms", h.interval_ms, 100, 3_600_000)?;
    range("timeout_ms", h.timeout_ms, 10, 3_600_000)?;
    range("rise", h.rise.into(), 1, 100)?;
    range("fall", h.fall.into(), 1, 100)?;
    if h.port == Some(0) {
        return Err("health port 0 is out of range 1..=65535".into());
    }
    if h.timeout_ms > h.interval_ms {
        return Err(format!(
            "health timeout_ms {} is longer than interval_ms {}",
            h.timeout_ms, h.interval_ms
        ));
    }
    if let Check::Http {
        path,
        host,
        status_min,
        status_max,
    } = &h.check
    {
        crate::config::rules::http_path(path).map_err(|e| format!("health http_path: {e}"))?;
        if let Some(host) = host {
            crate::config::rules::http_host(host).map_err(|e| format!("health http_host: {e}"))?;
        }
        if !(100 <= *status_min && status_min <= status_max && *status_max <= 599) {
            return Err(format!(
                "health http_status [{status_min}, {status_max}] is not [LOW, HIGH] within \
                 100..=599"
            ));
        }
    }
    Ok(())
}

/// Why the daemon did not do what was asked, for the client's exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A well-formed request the daemon refused (no such VIP, a duplicate,
    /// the last backend...). Nothing changed.
    Refused,
    /// The line is not a request of this protocol version.
    BadRequest,
    /// `reload`: the config file has problems; nothing changed.
    ConfigInvalid,
    /// The peer is not root.
    Denied,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The protocol version ([`PROTOCOL_VERSION`]); 0 from a daemon that
    /// predates versions.
    #[serde(default)]
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Self {
        Response {
            v: PROTOCOL_VERSION,
            ok: true,
            error: None,
            kind: None,
            result: Some(result),
        }
    }

    /// A refusal of a well-formed request.
    pub fn error(message: impl Into<String>) -> Self {
        Response::failed(ErrorKind::Refused, message)
    }

    pub fn failed(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response {
            v: PROTOCOL_VERSION,
            ok: false,
            error: Some(message.into()),
            kind: Some(kind),
            result: None,
        }
    }
}

/// Who sent a request: a peer of the socket (its uid, from SO_PEERCRED) or
/// the daemon's own SIGHUP handler. Every control log line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Uid(u32),
    Sighup,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Uid(uid) => write!(f, "{uid}"),
            Caller::Sighup => f.write_str("SIGHUP"),
        }
    }
}

/// A request on its way to the state owner, with who sent it and where to
/// send the answer.
pub type Call = (Request, Caller, oneshot::Sender<Response>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_typed_versioned_wire_form() {
        let r = Request::BackendDrain {
            vip: "web".into(),
            address: "10.0.0.11".parse().unwrap(),
        };
        let text = r.encode();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"v": 1, "op": "backend_drain", "vip": "web", "address": "10.0.0.11"})
        );
        assert_eq!(Request::decode(text.as_bytes()).unwrap(), r);
        let decode = |line: &str| Request::decode(line.as_bytes());
        // Typed: an address that is not one is refused by the decoder, not
        // later by the daemon.
        let bad = decode(r#"{"v":1,"op":"backend_drain","vip":"web","address":"10.0.0.300"}"#);
        assert!(bad.unwrap_err().contains("malformed request"));
        let bad = decode(
            r#"{"v":1,"op":"vip_add","name":"w","address":"10.0.0.1","port":80,"scheduler":"lc"}"#,
        );
        assert!(bad.unwrap_err().contains("unknown variant `lc`"));
        assert!(decode(r#"{"v":1,"op":"backend_drain","vip":"web"}"#).is_err());
        assert!(decode(r#"{"v":1,"op":"explode"}"#).is_err());
        assert!(decode(r#"{"v":1,"op":"status","extra":1}"#).is_err());
        // Old, newer and garbled lines each say what they are.
        let old = decode(r#"{"op":"status"}"#).unwrap_err();
        assert!(old.contains("without a protocol version"), "{old}");
        let newer = decode(r#"{"v":2,"op":"status"}"#).unwrap_err();
        assert!(
            newer.contains("protocol version 2") && newer.contains("protocol 1"),
            "{newer}"
        );
        let garbled = decode("status please").unwrap_err();
        assert!(garbled.contains("not JSON"), "{garbled}");
        assert!(decode("[1,2]").unwrap_err().contains("not a JSON object"));
        // Defaults: no force means false, weight 1, tcp/rr/dsr.
        assert_eq!(
            decode(r#"{"v":1,"op":"backend_remove","vip":"web","address":"10.0.0.11"}"#).unwrap(),
            Request::BackendRemove {
                vip: "web".into(),
                address: "10.0.0.11".parse().unwrap(),
                force: false
            }
        );
        let add = decode(r#"{"v":1,"op":"vip_add","name":"w","address":"10.0.0.1","port":80}"#);
        assert!(matches!(
            add.unwrap(),
            Request::VipAdd {
                protocol: crate::config::Protocol::Tcp,
                scheduler: crate::config::Scheduler::RoundRobin,
                health: None,
                ..
            }
        ));
    }

    #[test]
    fn the_daemon_checks_the_configs_bounds_on_typed_requests() {
        let weight = Request::BackendWeight {
            vip: "web".into(),
            address: "10.0.0.11".parse().unwrap(),
            weight: 300,
        };
        assert!(weight
            .validate()
            .unwrap_err()
            .contains("weight 300 is out of range"));
        let vip = |health| Request::VipAdd {
            name: "w".into(),
            address: "10.0.0.1".parse().unwrap(),
            port: 80,
            protocol: crate::config::Protocol::Tcp,
            scheduler: crate::config::Scheduler::RoundRobin,
            forwarding: crate::config::Forwarding::Dsr,
            maglev_table_size: None,
            persistence_timeout_s: None,
            health,
            snat_address: None,
        };
        let good = crate::config::HealthSpec::default();
        assert!(vip(Some(good.clone())).validate().is_ok());
        let too_fast = crate::config::HealthSpec {
            interval_ms: 5,
            ..good.clone()
        };
        assert!(vip(Some(too_fast))
            .validate()
            .unwrap_err()
            .contains("interval_ms 5"));
        let rise0 = crate::config::HealthSpec { rise: 0, ..good };
        assert!(vip(Some(rise0)).validate().is_err());
    }
}
