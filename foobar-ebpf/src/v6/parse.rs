//! The IPv6 parse, in the same two halves as the IPv4 one. `header` reads
//! the destination address for the prefilter (a frame too short for an
//! IPv6 header is no VIP's: `pass_ipv6`); `l4` checks the header, walks at
//! most MAX_EXT_HEADERS extension headers (hop-by-hop, routing without
//! segments left, destination options), and reads TCP/UDP into the flow
//! key, or the flow embedded in an ICMPv6 error. Its verdict counts only
//! once the address is known to be a VIP's. Nothing here writes.
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use foobar_common::{FlowKey6, Reason, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    parse::{self, ptr_at, Link},
    verdict::Verdict,
};

pub const IPV6_HDR_LEN: usize = 40;
pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before the L4 header; a packet with more is
/// left to the kernel (`pass_ipv6`).
pub const MAX_EXT_HEADERS: usize = 4;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
/// Type, code, checksum and the 4 bytes before the embedded IPv6 header.
const ICMPV6_HDR_LEN: usize = 8;

/// The fixed IPv6 header; byte-array fields (alignment 1, wire order).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub ver_tc_fl: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}
const _: () = assert!(size_of::<Ipv6Hdr>() == IPV6_HDR_LEN);

/// The first bytes of a hop-by-hop, routing or destination-options header.
#[repr(C)]
struct ExtHdr {
    next: u8,
    /// Length in 8-byte units, not counting the first 8 bytes.
    len: u8,
    /// Routing header: routing type and segments left.
    _routing_type: u8,
    segments_left: u8,
}

#[repr(C)]
struct Ports {
    src: [u8; 2],
    dst: [u8; 2],
    _rest: [u8; 4],
}

/// An IPv6 address as the packet holds it, as four words in packet order.
#[inline(always)]
pub fn words(a: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// An IPv6 packet addressed to this interface, before anything but its
/// destination is read.
pub struct Hdr6 {
    pub vlan: u16,
    pub l3: usize,
    pub dst_be: [u32; 4],
}

/// What the later steps need to know about an IPv6 packet (`Packet` for
/// IPv6).
pub struct Packet6 {
    /// The flow as the client sends it; for an ICMPv6 error, the embedded
    /// flow turned around.
    pub flow: FlowKey6,
    pub vlan: u16,
    /// TCP flags (0 for UDP and ICMPv6 errors).
    pub tcp_flags: u8,
    /// An ICMPv6 error about `flow`, not a packet of it.
    pub icmp_error: bool,
}

#[inline(always)]
pub fn header(ctx: &XdpContext, link: &Link) -> Result<Hdr6, Verdict> {
    let Ok(ip) = ptr_at::<Ipv6Hdr>(ctx, link.l3) else {
        return Err(Verdict::pass(Reason::Ipv6));
    };
    // SAFETY: bounds checked by ptr_at.
    let daddr = unsafe { (*ip).daddr };
    Ok(Hdr6 {
        vlan: link.vlan,
        l3: link.l3,
        dst_be: words(daddr),
    })
}

/// The L4 half, for a packet to an IPv6 VIP address: its flow, or the flow
/// an ICMPv6 error is about. `len` gets the whole frame's length, fragments
/// included (`parse::L3::frame_len` for IPv6), once the payload length is
/// checked against it: what the counters add.
#[inline(always)]
pub fn l4(ctx: &XdpContext, hdr: &Hdr6, len: &mut u64) -> Result<Packet6, Verdict> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, hdr.l3)?;
    // SAFETY: bounds checked by ptr_at.
    let (ver, plen, mut next, saddr) = unsafe {
        (
            (*ip).ver_tc_fl[0] >> 4,
            u16::from_be_bytes((*ip).payload_len) as usize,
            (*ip).next_hdr,
            (*ip).saddr,
        )
    };
    if ver != 6 {
        return Err(Verdict::pass(Reason::Malformed));
    }
    // Payload length 0 is a jumbogram (RFC 2675) or an empty packet.
    if plen == 0 {
        return Err(Verdict::pass(Reason::Ipv6));
    }
    let end = hdr.l3 + IPV6_HDR_LEN + plen;
    // The whole frame, fragments of a jumbo frame included (parse::ipv4
    // does the same); headers are read from the linear part only.
    *len = parse::whole_frame(ctx, end)? as u64;
    let mut l4 = hdr.l3 + IPV6_HDR_LEN;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext: *const ExtHdr = ptr_at(ctx, l4)?;
                // SAFETY: bounds checked by ptr_at.
                let (nh, len, left) = unsafe { ((*ext).next, (*ext).len, (*ext).segments_left) };
                // A routing header with segments left: the VIP is not the
                // packet's final destination.
                if next == IPPROTO_ROUTING && left != 0 {
                    return Err(Verdict::pass(Reason::Ipv6));
                }
                next = nh;
                l4 += (len as usize + 1) * 8;
            }
            // Any fragment, the first included (it may lack the L4 header):
            // dropped as IPv4 fragments are.
            IPPROTO_FRAGMENT => return Err(Verdict::drop(Reason::Fragment)),
            _ => break,
        }
    }
    if l4 > end {
        return Err(Verdict::pass(Reason::Malformed));
    }
    let l4_len = end - l4;
    let (sport_be, dport_be, tcp_flags) = match next {
        IPPROTO_TCP => parse::tcp(ctx, l4, l4_len)?,
        IPPROTO_UDP => parse::udp(ctx, l4, l4_len)?,
        IPPROTO_ICMPV6 => return icmp_error(ctx, hdr, l4, l4_len),
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
            return Err(Verdict::pass(Reason::Ipv6))
        }
        IPPROTO_FRAGMENT => return Err(Verdict::drop(Reason::Fragment)),
        _ => return Err(Verdict::pass(Reason::OtherL4)),
    };
    Ok(Packet6 {
        flow: flow_key(words(saddr), hdr.dst_be, sport_be, dport_be, next),
        vlan: hdr.vlan,
        tcp_flags,
        icmp_error: false,
    })
}

#[inline(always)]
fn flow_key(
    src_be: [u32; 4],
    dst_be: [u32; 4],
    sport_be: u16,
    dport_be: u16,
    proto: u8,
) -> FlowKey6 {
    FlowKey6 {
        src_be,
        dst_be,
        sport_be,
        dport_be,
        proto,
        family: AF_INET6,
        _pad: [0; 2],
    }
}

/// An ICMPv6 destination-unreachable, packet-too-big or time-exceeded
/// message quotes the packet that caused it: a reply of a VIP flow. Turned
/// around, that is the client's flow, whose backend must get the error.
/// Everything else (echo, neighbour discovery: router/neighbour
/// solicitations and advertisements, redirects) is the node's own
/// business and passes.
#[inline(always)]
fn icmp_error(ctx: &XdpContext, hdr: &Hdr6, l4: usize, l4_len: usize) -> Result<Packet6, Verdict> {
    // The whole 8-byte header, not its first byte: a 1-byte bounds check
    // compiles to a `>=` against data_end, which this verifier cannot use.
    let icmp: *const [u8; ICMPV6_HDR_LEN] = ptr_at(ctx, l4)?;
    // SAFETY: bounds checked by ptr_at.
    let kind = unsafe { (*icmp)[0] };
    if kind != ICMPV6_DEST_UNREACH && kind != ICMPV6_PACKET_TOO_BIG && kind != ICMPV6_TIME_EXCEEDED
    {
        return Err(Verdict::pass(Reason::OtherL4));
    }
    let inner_l3 = l4 + ICMPV6_HDR_LEN;
    let inner: *const Ipv6Hdr = ptr_at(ctx, inner_l3)?;
    // SAFETY: bounds checked by ptr_at.
    let (ver, proto, src, dst) = unsafe {
        (
            (*inner).ver_tc_fl[0] >> 4,
            (*inner).next_hdr,
            (*inner).saddr,
            (*inner).daddr,
        )
    };
    // The quoted packet's extension headers are not walked: an error about
    // one with extension headers is not matched to a flow.
    if ver != 6 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return Err(Verdict::pass(Reason::Malformed));
    }
    // Frame bounds first, then the length the packet claims (see
    // parse::icmp_error for why this order).
    let ports: *const Ports = ptr_at(ctx, inner_l3 + IPV6_HDR_LEN)?;
    if ICMPV6_HDR_LEN + IPV6_HDR_LEN + size_of::<Ports>() > l4_len {
        return Err(Verdict::pass(Reason::Malformed));
    }
    // SAFETY: bounds checked by ptr_at.
    let (sport, dport) = unsafe { ((*ports).src, (*ports).dst) };
    Ok(Packet6 {
        flow: flow_key(
            words(dst),
            words(src),
            u16::from_ne_bytes(dport),
            u16::from_ne_bytes(sport),
            proto,
        ),
        vlan: hdr.vlan,
        tcp_flags: 0,
        icmp_error: true,
    })
}
