//! The NAT keys: `[datapath] snat_address`, `snat_ports`, `nat_tcp_idle`,
//! `nat_udp_idle`, `nat_linger` (node-wide), and per VIP `snat_address`
//! and per backend `port`. A VIP with `forwarding = "nat"` gets its
//! settings resolved here; docs/NAT.md says what each one does.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{parse_duration_s, validate::Problems, Forwarding, RawDatapath, Vip};

/// SNAT port range of `snat_ports` when the key is absent: below Linux's
/// default ephemeral range (`net.ipv4.ip_local_port_range`, 32768-60999),
/// so that with the default SNAT address, the interface's primary one, the
/// node's own connections to a backend (health checks) never take the
/// 5-tuple of a NAT flow.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (1024, 32767);
/// Lowest port `snat_ports` may use: ports below are the node's services'.
pub const SNAT_PORT_MIN: u16 = 1024;

/// What the datapath needs to NAT one VIP's flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatSettings {
    /// Source address of translated packets: an address of the interface.
    pub snat_address: Ipv4Addr,
    pub port_min: u16,
    pub port_max: u16,
    pub tcp_idle_s: u32,
    pub udp_idle_s: u32,
    /// Life of a closed TCP flow's state (RST, or FIN both ways).
    pub linger_s: u32,
}

impl Default for NatSettings {
    fn default() -> Self {
        NatSettings {
            snat_address: Ipv4Addr::UNSPECIFIED,
            port_min: DEFAULT_SNAT_PORTS.0,
            port_max: DEFAULT_SNAT_PORTS.1,
            tcp_idle_s: 300,
            udp_idle_s: 30,
            linger_s: 2,
        }
    }
}

/// The node-wide NAT keys of `[datapath]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatDefaults {
    /// `snat_address`: for NAT VIPs without one of their own.
    pub snat_address: Option<Ipv4Addr>,
    /// Ports and timeouts (the address field is unused here).
    pub settings: NatSettings,
}

/// Parses "20000-59999".
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!(
            "\"{text}\" is not a port range such as \"20000-59999\" \
             (from {SNAT_PORT_MIN} up, low-high)"
        )
    };
    let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo < SNAT_PORT_MIN || hi < lo {
        return Err(bad());
    }
    Ok((lo, hi))
}

pub(super) fn validate_defaults(raw: &RawDatapath, p: &mut Problems) -> Option<NatDefaults> {
    let d = NatSettings::default();
    let snat_address = match raw.snat_address.as_deref() {
        None => Some(None),
        Some(text) => p
            .field("datapath.snat_address", snat_address(text))
            .map(Some),
    };
    let ports = match raw.snat_ports.as_deref() {
        None => Some(DEFAULT_SNAT_PORTS),
        Some(text) => p.field("datapath.snat_ports", parse_port_range(text)),
    };
    let mut seconds = |key: &str, text: Option<&str>, default: u32, max: u32| match text {
        None => Some(default),
        Some(t) => match parse_duration_s(t) {
            Ok(s) if (1..=max).contains(&s) => Some(s),
            Ok(s) => {
                p.add(
                    format!("datapath.{key}"),
                    format!("{s}s is out of range 1s..={max}s"),
                );
                None
            }
            Err(e) => {
                p.add(format!("datapath.{key}"), e);
                None
            }
        },
    };
    let tcp = seconds(
        "nat_tcp_idle",
        raw.nat_tcp_idle.as_deref(),
        d.tcp_idle_s,
        86_400,
    );
    let udp = seconds(
        "nat_udp_idle",
        raw.nat_udp_idle.as_deref(),
        d.udp_idle_s,
        86_400,
    );
    let linger = seconds("nat_linger", raw.nat_linger.as_deref(), d.linger_s, 600);
    let (port_min, port_max) = ports?;
    Some(NatDefaults {
        snat_address: snat_address?,
        settings: NatSettings {
            snat_address: Ipv4Addr::UNSPECIFIED,
            port_min,
            port_max,
            tcp_idle_s: tcp?,
            udp_idle_s: udp?,
            linger_s: linger?,
        },
    })
}

/// An SNAT address: a unicast IPv4 address.
pub fn snat_address(text: &str) -> Result<Ipv4Addr, String> {
    let a: Ipv4Addr = text
        .parse()
        .map_err(|_| format!("\"{text}\" is not an IPv4 address"))?;
    if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
        return Err(format!(
            "{a} cannot be a source address; give an address of the LB's interface"
        ));
    }
    Ok(a)
}

/// Gives every NAT VIP of the file its settings: its own `snat_address`
/// (already in `vip.nat`) or the node's, with the node's ports and
/// timeouts. Without either the address stays unspecified: `foobar run`
/// (and `reload`) give it the interface's primary IPv4 address
/// (`snat::fill_default`), which only the running node knows.
pub(super) fn resolve(vips: &mut [Vip], defaults: &NatDefaults) {
    for vip in vips.iter_mut() {
        if vip.forwarding != Forwarding::Nat {
            continue;
        }
        let own = vip.nat.map(|n| n.snat_address);
        let address = own
            .filter(|a| !a.is_unspecified())
            .or(defaults.snat_address)
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        vip.nat = Some(NatSettings {
            snat_address: address,
            ..defaults.settings
        });
    }
}
