//! Step 2: is the packet for a VIP? `address` checks the destination
//! (address, VLAN) against the VIP-address table, behind a bitmap prefilter
//! that passes most other addresses with one array read: everything else is the
//! node's own traffic and passes untouched. `lookup` finds the service of
//! the (address, port, protocol, VLAN); a VIP with port 0 serves every port.
//! A port no VIP serves is dropped unless the address passes closed ports.
use foobar_common::{
    vip_addr_bit, Reason, Service, VipAddrKey, VipKey, ADDR_PASS_CLOSED_PORTS, AF_INET,
};

use crate::{
    maps::{VIPS, VIP_ADDRS4, VIP_ADDR_BITS},
    parse::{Packet, L3},
    verdict::Verdict,
};

/// The flags of a VIP address (ADDR_*), or NotVip.
#[inline(always)]
pub fn address(ip: &L3) -> Result<u32, Verdict> {
    let (word, mask) = vip_addr_bit(ip.dst_be);
    // An inlined array read: most of the node's own traffic stops here.
    match VIP_ADDR_BITS.get(word) {
        Some(bits) if *bits & mask != 0 => {}
        _ => return Err(Verdict::pass(Reason::NotVip)),
    }
    let key = VipAddrKey {
        addr_be: ip.dst_be,
        vlan: ip.vlan,
        _pad: 0,
    };
    // SAFETY: written only by userspace; a racing update gives old or new.
    match unsafe { VIP_ADDRS4.get(&key) } {
        Some(flags) => Ok(*flags),
        None => Err(Verdict::pass(Reason::NotVip)),
    }
}

#[inline(always)]
pub fn lookup(pkt: &Packet, addr_flags: u32) -> Result<Service, Verdict> {
    // For an ICMP error the service is the one of the flow it is about,
    // whose destination is the VIP.
    let mut key = VipKey {
        addr_be: [pkt.flow.dst_be, 0, 0, 0],
        port_be: pkt.flow.dport_be,
        proto: pkt.flow.proto,
        family: AF_INET,
        vlan: pkt.vlan,
        _pad: 0,
    };
    // SAFETY: VIPS is only written by userspace; a racing update at worst
    // gives the old or the new service, both valid.
    if let Some(service) = unsafe { VIPS.get(&key) } {
        return Ok(*service);
    }
    key.port_be = 0;
    // SAFETY: as above.
    if let Some(service) = unsafe { VIPS.get(&key) } {
        return Ok(*service);
    }
    if pkt.icmp_error || addr_flags & ADDR_PASS_CLOSED_PORTS != 0 {
        return Err(Verdict::pass(Reason::NotVip));
    }
    Err(Verdict::drop(Reason::ClosedPort))
}
