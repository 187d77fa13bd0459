//! Step 2: find the service of a packet's (address, port, protocol); a VIP
//! with port 0 serves every port. No match means the packet is not ours.
use foobar_common::{Reason, Service, VipKey, AF_INET};

use crate::{
    maps::{VIPS, VIP_ADDRS4},
    parse::Packet,
    verdict::Verdict,
};

#[inline(always)]
pub fn lookup(pkt: &Packet) -> Result<Service, Verdict> {
    let mut key = VipKey {
        addr_be: pkt.flow.dst_be,
        port_be: pkt.flow.dport_be,
        proto: pkt.flow.proto,
        family: pkt.flow.family,
    };
    // VIP traffic, the bulk of an LB node's packets, hits here at once.
    // SAFETY: VIPS is only written by userspace; a racing update at worst
    // gives the old or the new service, both valid.
    if let Some(service) = unsafe { VIPS.get(&key) } {
        return Ok(*service);
    }
    // The prefilter: the node's own traffic is not for a VIP address at
    // all, and a lookup on a 4-byte key says so before the port-0 lookup.
    // SAFETY: written only by userspace; a racing update gives old or new.
    if pkt.flow.family == AF_INET && unsafe { VIP_ADDRS4.get(&pkt.flow.dst_be[0]) }.is_none() {
        return Err(Verdict::pass(Reason::NotVip));
    }
    key.port_be = 0;
    match unsafe { VIPS.get(&key) } {
        Some(service) => Ok(*service),
        None => Err(Verdict::pass(Reason::NotVip)),
    }
}
