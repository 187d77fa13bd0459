//! Rewrites a TCP/UDP packet's addresses and ports in place, with the IPv4
//! header checksum and the L4 checksum (its pseudo-header covers both
//! addresses) updated incrementally. The only NAT code that writes
//! packet bytes; every offset comes from the parse step and is checked
//! against the frame again by `ptr_at` before a byte is written.
use foobar_common::IPPROTO_TCP;

use aya_ebpf::programs::XdpContext;

use super::csum::Delta;
use crate::{
    parse::{ptr_at, Packet},
    verdict::Verdict,
};

/// The IPv4 header up to the addresses.
#[repr(C)]
struct IpAddrs {
    _before: [u8; 10],
    check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[repr(C)]
struct L4Ports {
    sport: [u8; 2],
    dport: [u8; 2],
}

/// TCP checksum: bytes 16-17 of the header (parse checked the header is at
/// least 20 bytes); UDP: bytes 6-7.
const TCP_CHECK_OFFSET: usize = 16;
const UDP_CHECK_OFFSET: usize = 6;

/// Where the packet goes after translation (network order throughout).
pub struct Tuple {
    pub src_be: u32,
    pub dst_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
}

/// Rewrites the packet's (src, dst, sport, dport), which parse read into
/// `pkt.flow`, to `to`.
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, pkt: &Packet, to: &Tuple) -> Result<(), Verdict> {
    let ip: *mut IpAddrs = ptr_at(ctx, pkt.l3)?;
    let ports: *mut L4Ports = ptr_at(ctx, pkt.l4)?;
    let tcp = pkt.flow.proto == IPPROTO_TCP;
    let check_at = pkt.l4
        + if tcp {
            TCP_CHECK_OFFSET
        } else {
            UDP_CHECK_OFFSET
        };
    let l4_check: *mut [u8; 2] = ptr_at(ctx, check_at)?;
    let from = &pkt.flow;
    let mut addrs = Delta::new();
    addrs.add32(from.src_be, to.src_be);
    addrs.add32(from.dst_be, to.dst_be);
    let mut l4 = Delta::new();
    l4.add32(from.src_be, to.src_be);
    l4.add32(from.dst_be, to.dst_be);
    l4.add16(from.sport_be, to.sport_be);
    l4.add16(from.dport_be, to.dport_be);
    // SAFETY: ptr_at checked each header lies inside the frame.
    unsafe {
        let ip_check = u16::from_ne_bytes((*ip).check);
        (*ip).check = addrs.apply(ip_check).to_ne_bytes();
        (*ip).saddr = to.src_be.to_ne_bytes();
        (*ip).daddr = to.dst_be.to_ne_bytes();
        (*ports).sport = to.sport_be.to_ne_bytes();
        (*ports).dport = to.dport_be.to_ne_bytes();
        let old = u16::from_ne_bytes(*l4_check);
        let new = if tcp {
            l4.apply(old)
        } else {
            l4.apply_udp(old)
        };
        *l4_check = new.to_ne_bytes();
    }
    Ok(())
}
