//! Step 2 for IPv6: the prefilter bitmap (VIP_ADDR_BITS6), the VIP-address
//! table (VIP_ADDRS6) and the VIP lookup, as `vip` does for IPv4. A packet
//! to no IPv6 VIP address passes as `pass_ipv6`.
use foobar_common::{
    vip_addr_bit6, Reason, Service, VipAddrKey6, VipKey, ADDR_PASS_CLOSED_PORTS, AF_INET6,
};

use crate::{
    maps::{VIPS, VIP_ADDRS6, VIP_ADDR_BITS6, VIP_GEN},
    verdict::Verdict,
};

use super::parse::{Hdr6, Packet6};

#[inline(always)]
pub fn prefilter(hdr: &Hdr6) -> Result<(), Verdict> {
    let (word, mask) = vip_addr_bit6(&hdr.dst_be);
    match VIP_ADDR_BITS6.get(word) {
        Some(bits) if *bits & mask != 0 => Ok(()),
        _ => Err(Verdict::pass(Reason::Ipv6)),
    }
}

/// The flags of an IPv6 VIP address (ADDR_*), or `pass_ipv6`.
#[inline(always)]
pub fn address(hdr: &Hdr6) -> Result<u32, Verdict> {
    let key = VipAddrKey6 {
        addr_be: hdr.dst_be,
        vlan: hdr.vlan,
        _pad: 0,
    };
    // SAFETY: written only by userspace; a racing update gives old or new.
    match unsafe { VIP_ADDRS6.get(&key) } {
        Some(flags) => Ok(*flags),
        None => Err(Verdict::pass(Reason::Ipv6)),
    }
}

#[inline(always)]
pub fn lookup(pkt: &Packet6, addr_flags: u32) -> Result<(Service, u32), Verdict> {
    let mut key = VipKey {
        addr_be: pkt.flow.dst_be,
        port_be: pkt.flow.dport_be,
        proto: pkt.flow.proto,
        family: AF_INET6,
        vlan: pkt.vlan,
        _pad: 0,
    };
    // SAFETY: VIPS is only written by userspace (see vip::lookup).
    if let Some(service) = unsafe { VIPS.get(&key) } {
        return Ok((*service, generation(service.vip_id)));
    }
    key.port_be = 0;
    // SAFETY: as above.
    if let Some(service) = unsafe { VIPS.get(&key) } {
        return Ok((*service, generation(service.vip_id)));
    }
    if pkt.icmp_error || addr_flags & ADDR_PASS_CLOSED_PORTS != 0 {
        return Err(Verdict::pass(Reason::NotVip));
    }
    Err(Verdict::drop(Reason::ClosedPort))
}

/// As vip::generation.
#[inline(always)]
fn generation(vip_id: u32) -> u32 {
    VIP_GEN.get(vip_id).map_or(0, |g| g.gen)
}
