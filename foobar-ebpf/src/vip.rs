//! Step 2: is the packet for a VIP? `prefilter` passes most addresses that
//! are no VIP address with one array read (a bitmap); `address` confirms
//! the destination (address, VLAN) in the VIP-address table: everything
//! else is the node's own traffic and passes untouched. `lookup` finds the
//! service of the (address, port, protocol, VLAN), and its generation; a
//! VIP with port 0 serves every port. A port no VIP serves is dropped
//! unless the address passes closed ports.
use foobar_common::{
    vip_addr_bit, Reason, Service, VipAddrKey, VipKey, ADDR_PASS_CLOSED_PORTS, AF_INET,
};

use crate::{
    maps::{VIPS, VIP_ADDRS4, VIP_ADDR_BITS, VIP_GEN},
    parse::{Packet, L3},
    verdict::Verdict,
};

/// Passes the packet (NotVip) unless its destination's prefilter bit is
/// set: most of the node's own traffic stops here.
#[inline(always)]
pub fn prefilter(ip: &L3) -> Result<(), Verdict> {
    let (word, mask) = vip_addr_bit(ip.dst_be);
    // An inlined array read.
    match VIP_ADDR_BITS.get(word) {
        Some(bits) if *bits & mask != 0 => Ok(()),
        _ => Err(Verdict::pass(Reason::NotVip)),
    }
}

/// The flags of a VIP address (ADDR_*), or NotVip.
#[inline(always)]
pub fn address(ip: &L3) -> Result<u32, Verdict> {
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
pub fn lookup(pkt: &Packet, addr_flags: u32) -> Result<(Service, u32), Verdict> {
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

/// The generation of VIP id `vip_id`, read right after the VIP lookup that
/// found it: userspace bumps it before and again after it changes what
/// that lookup finds, so a flow entry recorded with a generation read here
/// never outlives the change (0, never a VIP's generation, if none).
#[inline(always)]
fn generation(vip_id: u32) -> u32 {
    VIP_GEN.get(vip_id).map_or(0, |g| g.gen)
}
