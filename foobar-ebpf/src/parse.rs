//! Step 1: parse Ethernet (+ one 802.1Q/802.1ad tag), IPv4 and TCP/UDP into
//! the flow key. Every header read goes through `ptr_at`, and every length
//! the packet claims (IHL, total length, TCP data offset, UDP length) is
//! checked against the frame before it is used. Nothing here writes.
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use foobar_common::{FlowKey, Reason, AF_INET, IPPROTO_TCP, IPPROTO_UDP};

use crate::verdict::Verdict;

pub const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// IPv4 flags+offset: MF bit and the 13-bit fragment offset.
const IP_MF_OFFSET_MASK: u16 = 0x3fff;
/// A TCP header without options; `TcpHdr` below holds only its first 14 bytes.
const TCP_MIN_HDR_LEN: usize = 20;

// Header layouts with byte-array fields: alignment 1, so a pointer at any
// packet offset is valid to read, and multi-byte fields stay in wire order.
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: [u8; 2],
}

#[repr(C)]
struct VlanHdr {
    _tci: [u8; 2],
    inner_ethertype: [u8; 2],
}

#[repr(C)]
struct Ipv4Hdr {
    ver_ihl: u8,
    _tos: u8,
    tot_len: [u8; 2],
    _id: [u8; 2],
    frag_off: [u8; 2],
    _ttl: u8,
    proto: u8,
    _check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

/// The part of a TCP header foobar reads.
#[repr(C)]
struct TcpHdr {
    sport: [u8; 2],
    dport: [u8; 2],
    _seq: [u8; 4],
    _ack: [u8; 4],
    doff_res: u8,
    flags: u8,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
struct UdpHdr {
    sport: [u8; 2],
    dport: [u8; 2],
    len: [u8; 2],
    _check: [u8; 2],
}

/// What the later steps need to know about a packet.
pub struct Packet {
    pub flow: FlowKey,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

/// The one bounds-checked accessor: a pointer to a `T` at `offset`, or
/// `Malformed` if the frame is too short to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Verdict> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Verdict::pass(Reason::Malformed));
    }
    Ok((start + offset) as *mut T)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Verdict> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the header lies inside the frame.
    let mut ethertype = u16::from_be_bytes(unsafe { (*eth).ethertype });
    let mut l3 = ETH_HDR_LEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let vlan: *const VlanHdr = ptr_at(ctx, l3)?;
        // SAFETY: bounds checked by ptr_at.
        ethertype = u16::from_be_bytes(unsafe { (*vlan).inner_ethertype });
        l3 += size_of::<VlanHdr>();
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, l3),
        ETH_P_IPV6 => Err(Verdict::pass(Reason::Ipv6)),
        _ => Err(Verdict::pass(Reason::NotIp)),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Result<Packet, Verdict> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by ptr_at; every read below is of `*ip`.
    let (ver_ihl, tot_len, frag, proto, saddr, daddr) = unsafe {
        (
            (*ip).ver_ihl,
            u16::from_be_bytes((*ip).tot_len) as usize,
            u16::from_be_bytes((*ip).frag_off),
            (*ip).proto,
            u32::from_ne_bytes((*ip).saddr),
            u32::from_ne_bytes((*ip).daddr),
        )
    };
    if ver_ihl >> 4 != 4 {
        return Err(Verdict::pass(Reason::Malformed));
    }
    // The mask bounds the L4 offset to l3 + 60 for the verifier as well as
    // reading the 4-bit IHL field.
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    let frame_len = ctx.data_end() - ctx.data();
    if ihl < size_of::<Ipv4Hdr>() || tot_len < ihl || l3 + tot_len > frame_len {
        return Err(Verdict::pass(Reason::Malformed));
    }
    if frag & IP_MF_OFFSET_MASK != 0 {
        return Err(Verdict::pass(Reason::Fragment));
    }
    let l4 = l3 + ihl;
    let l4_len = tot_len - ihl;
    let (sport_be, dport_be, tcp_flags) = match proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(ctx, l4)?;
            // SAFETY: bounds checked by ptr_at.
            let (sport, dport, doff_res, flags) =
                unsafe { ((*tcp).sport, (*tcp).dport, (*tcp).doff_res, (*tcp).flags) };
            let doff = ((doff_res >> 4) as usize) * 4;
            if doff < TCP_MIN_HDR_LEN || doff > l4_len {
                return Err(Verdict::pass(Reason::Malformed));
            }
            (u16::from_ne_bytes(sport), u16::from_ne_bytes(dport), flags)
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, l4)?;
            // SAFETY: bounds checked by ptr_at.
            let (sport, dport, len) = unsafe { ((*udp).sport, (*udp).dport, (*udp).len) };
            let udp_len = u16::from_be_bytes(len) as usize;
            if udp_len < size_of::<UdpHdr>() || udp_len > l4_len {
                return Err(Verdict::pass(Reason::Malformed));
            }
            (u16::from_ne_bytes(sport), u16::from_ne_bytes(dport), 0)
        }
        _ => return Err(Verdict::pass(Reason::OtherL4)),
    };
    Ok(Packet {
        flow: FlowKey {
            src_be: [saddr, 0, 0, 0],
            dst_be: [daddr, 0, 0, 0],
            sport_be,
            dport_be,
            proto,
            family: AF_INET,
            _pad: [0; 2],
        },
        tcp_flags,
    })
}
