//! The `dnat` mode's settings (docs/DNAT.md): no keys of its own. A dnat
//! VIP keeps the client's address, so it has no SNAT address or ports;
//! it takes the node's NAT timeouts (`nat_tcp_idle`, `nat_udp_idle`,
//! `nat_linger`) and allows a backend `port`, as `nat` does.
use std::net::Ipv4Addr;

use super::{Forwarding, NatDefaults, NatSettings, Vip};

/// Whether a mode sends to a backend port other than the VIP's.
pub fn translates_port(mode: Forwarding) -> bool {
    matches!(mode, Forwarding::Nat | Forwarding::Dnat)
}

/// Gives every dnat VIP the node's NAT timeouts, with no SNAT address and
/// no port range.
pub(super) fn resolve(vips: &mut [Vip], defaults: &NatDefaults) {
    for vip in vips.iter_mut().filter(|v| v.forwarding == Forwarding::Dnat) {
        vip.nat = Some(settings(&defaults.settings));
    }
}

/// The NAT settings a dnat VIP uses out of `node`'s: its timeouts.
pub fn settings(node: &NatSettings) -> NatSettings {
    NatSettings {
        snat_address: Ipv4Addr::UNSPECIFIED,
        port_min: 0,
        port_max: 0,
        ..*node
    }
}
