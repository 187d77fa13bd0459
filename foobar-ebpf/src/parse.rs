//! Step 1: parse, in two halves around the VIP-address check. `l3` reads
//! Ethernet (the frame must be addressed to this interface), one
//! 802.1Q/802.1ad tag and the IPv4 header (an IPv6 packet goes to the
//! `v6` pipeline instead); `l4` reads TCP/UDP into the flow
//! key, or the flow embedded in an ICMP error. Every header read goes through
//! `ptr_at`, and every length the packet claims (IHL, total length, TCP data
//! offset, UDP length, the embedded header's IHL) is checked against the
//! frame before it is used. Nothing here writes.
use core::mem::size_of;

use aya_ebpf::{programs::XdpContext, Global};
use foobar_common::{FlowKey, Reason, AF_INET, IPPROTO_TCP, IPPROTO_UDP};

use crate::{iface, verdict::Verdict};

pub const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// IPv4 flags+offset: MF bit and the 13-bit fragment offset.
const IP_MF_OFFSET_MASK: u16 = 0x3fff;
/// A TCP header without options; `TcpHdr` below holds only its first 14 bytes.
const TCP_MIN_HDR_LEN: usize = 20;
const IPPROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// Type, code, checksum and the 4 bytes before the embedded IP header.
const ICMP_HDR_LEN: usize = 8;

/// The VRIDs whose VRRP virtual MAC 00:00:5e:00:01:VRID is ours too (a
/// `[[vrrp]]` instance with `use_vmac`), one bit per VRID (bit `vrid % 64`
/// of word `vrid / 64`), set at load time: `[[vrrp]]` changes need a
/// restart, which loads the program again.
#[unsafe(no_mangle)]
pub static VMAC_VRIDS: Global<[u64; 4]> = Global::new([0; 4]);

/// The first five bytes of every VRRP (IPv4) virtual MAC (RFC 5798 §7.3).
const VMAC_PREFIX: [u8; 5] = [0x00, 0x00, 0x5e, 0x00, 0x01];

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
    tci: [u8; 2],
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

/// The first bytes of any TCP or UDP header: what an ICMP error quotes.
#[repr(C)]
struct Ports {
    src: [u8; 2],
    dst: [u8; 2],
    _rest: [u8; 4],
}

#[repr(C)]
struct IcmpHdr {
    kind: u8,
    _code: u8,
    _rest: [u8; 6],
}

#[repr(C)]
struct UdpHdr {
    sport: [u8; 2],
    dport: [u8; 2],
    len: [u8; 2],
    _check: [u8; 2],
}

/// An IPv4 packet addressed to this interface, before its L4 header is read.
pub struct L3 {
    /// 802.1Q VLAN id of the frame (0: untagged).
    pub vlan: u16,
    pub src_be: u32,
    pub dst_be: u32,
    proto: u8,
    fragment: bool,
    /// Offset of the IPv4 header.
    l3: usize,
    /// Offset of the L4 header and its length as the IP header claims it.
    l4: usize,
    l4_len: usize,
    /// The whole frame's length, fragments included (see `whole_frame`):
    /// what the counters add, without asking the kernel again.
    pub frame_len: u64,
}

/// What `l3` found: an IPv4 packet (this module's pipeline) or an IPv6
/// packet, whose header `v6::parse` reads.
pub enum Ip {
    V4(L3),
    V6(Link),
}

/// Where an IPv6 header starts, and the frame's VLAN.
pub struct Link {
    pub vlan: u16,
    pub l3: usize,
}

/// What the later steps need to know about a packet.
pub struct Packet {
    /// The flow as the client sends it. For an ICMP error this is the
    /// embedded flow turned around (the error quotes the VIP's reply).
    pub flow: FlowKey,
    pub vlan: u16,
    /// TCP flags (0 for UDP and ICMP errors).
    pub tcp_flags: u8,
    /// An ICMP error about `flow`, not a packet of it.
    pub icmp_error: bool,
    /// Offsets of the IPv4 header and of the L4 header (NAT rewrites them).
    pub l3: usize,
    pub l4: usize,
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

/// Whether `dst` is the virtual MAC of a VRID served here.
#[inline(always)]
fn is_vmac(dst: [u8; 6]) -> bool {
    if dst[..5] != VMAC_PREFIX {
        return false;
    }
    let vrid = dst[5];
    let words = VMAC_VRIDS.load();
    // A match, not `words[vrid >> 6]`: a constant offset into the copy on
    // the stack, which every verifier accepts.
    let word = match vrid >> 6 {
        0 => words[0],
        1 => words[1],
        2 => words[2],
        _ => words[3],
    };
    (word >> (vrid & 63)) & 1 == 1
}

#[inline(always)]
pub fn l3(ctx: &XdpContext) -> Result<Ip, Verdict> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the header lies inside the frame.
    let (dst, mut ethertype) = unsafe { ((*eth).dst, u16::from_be_bytes((*eth).ethertype)) };
    if dst != iface::own_mac(ctx) && !is_vmac(dst) {
        return Err(Verdict::pass(Reason::NotForUs));
    }
    let mut l3 = ETH_HDR_LEN;
    let mut vlan = 0;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag: *const VlanHdr = ptr_at(ctx, l3)?;
        // SAFETY: bounds checked by ptr_at.
        let (tci, inner) = unsafe { ((*tag).tci, (*tag).inner_ethertype) };
        vlan = u16::from_be_bytes(tci) & 0x0fff;
        // A second tag (QinQ) is not served: its inner ethertype is not IP.
        ethertype = u16::from_be_bytes(inner);
        l3 += size_of::<VlanHdr>();
    }
    match ethertype {
        ETH_P_IP => ipv4(ctx, l3, vlan).map(Ip::V4),
        ETH_P_IPV6 => Ok(Ip::V6(Link { vlan, l3 })),
        _ => Err(Verdict::pass(Reason::NotIp)),
    }
}

impl L3 {
    /// The source address read from the packet again, not `src_be`: for a
    /// branch off the pass path, so the compiler need not assemble the
    /// source before the prefilter for it (nat::dnat).
    #[inline(always)]
    pub fn reread_src_be(&self, ctx: &XdpContext) -> Option<u32> {
        let ip: *const Ipv4Hdr = ptr_at(ctx, self.l3).ok()?;
        // SAFETY: bounds checked by ptr_at.
        Some(u32::from_ne_bytes(unsafe { (*ip).saddr }))
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize, vlan: u16) -> Result<L3, Verdict> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by ptr_at; every read below is of `*ip`.
    let (ver_ihl, tot_len, frag, proto, src_be, dst_be) = unsafe {
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
    if ihl < size_of::<Ipv4Hdr>() || tot_len < ihl {
        return Err(Verdict::pass(Reason::Malformed));
    }
    let frame_len = whole_frame(ctx, l3 + tot_len)?;
    Ok(L3 {
        vlan,
        src_be,
        dst_be,
        proto,
        fragment: frag & IP_MF_OFFSET_MASK != 0,
        l3,
        l4: l3 + ihl,
        l4_len: tot_len - ihl,
        frame_len: frame_len as u64,
    })
}

/// The length of a frame whose IP packet ends at `end`, checked to hold
/// it. A packet that ends inside the linear part is a frame without
/// fragments: its length is the linear part's, no helper call needed
/// (5 ns a packet, measured). Beyond it, the kernel says how long the
/// whole frame is (a jumbo frame's payload lies in fragments).
#[inline(always)]
pub fn whole_frame(ctx: &XdpContext, end: usize) -> Result<usize, Verdict> {
    let linear = ctx.data_end() - ctx.data();
    if end <= linear {
        return Ok(linear);
    }
    let whole = crate::frame::len(ctx);
    if end > whole {
        return Err(Verdict::pass(Reason::Malformed));
    }
    Ok(whole)
}

/// The L4 half, for a packet to a VIP address: its flow, or the flow an ICMP
/// error is about. Fragments are dropped: only the first carries ports, and
/// the node's own stack, which holds the VIP, must not answer the rest.
#[inline(always)]
pub fn l4(ctx: &XdpContext, ip: &L3) -> Result<Packet, Verdict> {
    if ip.fragment {
        return Err(Verdict::drop(Reason::Fragment));
    }
    let (sport_be, dport_be, tcp_flags) = match ip.proto {
        IPPROTO_TCP => tcp(ctx, ip.l4, ip.l4_len)?,
        IPPROTO_UDP => udp(ctx, ip.l4, ip.l4_len)?,
        IPPROTO_ICMP => return icmp_error(ctx, ip),
        _ => return Err(Verdict::pass(Reason::OtherL4)),
    };
    Ok(Packet {
        flow: flow_key(ip.src_be, ip.dst_be, sport_be, dport_be, ip.proto),
        vlan: ip.vlan,
        tcp_flags,
        icmp_error: false,
        l3: ip.l3,
        l4: ip.l4,
    })
}

#[inline(always)]
fn flow_key(src_be: u32, dst_be: u32, sport_be: u16, dport_be: u16, proto: u8) -> FlowKey {
    FlowKey {
        src_be,
        dst_be,
        sport_be,
        dport_be,
        proto,
        family: AF_INET,
        _pad: [0; 2],
    }
}

#[inline(always)]
pub fn tcp(ctx: &XdpContext, l4: usize, l4_len: usize) -> Result<(u16, u16, u8), Verdict> {
    let tcp: *const TcpHdr = ptr_at(ctx, l4)?;
    // SAFETY: bounds checked by ptr_at.
    let (sport, dport, doff_res, flags) =
        unsafe { ((*tcp).sport, (*tcp).dport, (*tcp).doff_res, (*tcp).flags) };
    let doff = ((doff_res >> 4) as usize) * 4;
    if doff < TCP_MIN_HDR_LEN || doff > l4_len {
        return Err(Verdict::pass(Reason::Malformed));
    }
    Ok((u16::from_ne_bytes(sport), u16::from_ne_bytes(dport), flags))
}

#[inline(always)]
pub fn udp(ctx: &XdpContext, l4: usize, l4_len: usize) -> Result<(u16, u16, u8), Verdict> {
    let udp: *const UdpHdr = ptr_at(ctx, l4)?;
    // SAFETY: bounds checked by ptr_at.
    let (sport, dport, len) = unsafe { ((*udp).sport, (*udp).dport, (*udp).len) };
    let udp_len = u16::from_be_bytes(len) as usize;
    if udp_len < size_of::<UdpHdr>() || udp_len > l4_len {
        return Err(Verdict::pass(Reason::Malformed));
    }
    Ok((u16::from_ne_bytes(sport), u16::from_ne_bytes(dport), 0))
}

/// An ICMP destination-unreachable or time-exceeded message quotes the IP
/// header and the first 8 bytes of the packet that caused it: a reply of a
/// VIP flow (VIP -> client). Turned around, that is the client's flow, whose
/// backend must get the error (path-MTU discovery of its replies depends on
/// it). Other ICMP (echo, ...) is the node's own business.
#[inline(always)]
fn icmp_error(ctx: &XdpContext, ip: &L3) -> Result<Packet, Verdict> {
    let icmp: *const IcmpHdr = ptr_at(ctx, ip.l4)?;
    // SAFETY: bounds checked by ptr_at.
    let kind = unsafe { (*icmp).kind };
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED {
        return Err(Verdict::pass(Reason::OtherL4));
    }
    let inner_l3 = ip.l4 + ICMP_HDR_LEN;
    let inner: *const Ipv4Hdr = ptr_at(ctx, inner_l3)?;
    // SAFETY: bounds checked by ptr_at.
    let (ver_ihl, proto, src_be, dst_be) = unsafe {
        (
            (*inner).ver_ihl,
            (*inner).proto,
            u32::from_ne_bytes((*inner).saddr),
            u32::from_ne_bytes((*inner).daddr),
        )
    };
    // The mask bounds the offset for the verifier as well as reading IHL.
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() {
        return Err(Verdict::pass(Reason::Malformed));
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Verdict::pass(Reason::Malformed));
    }
    // Verifier: the frame bounds check comes before the length check below,
    // which implies it (the IP total length was checked against the frame):
    // in the other order LLVM drops this check as redundant, and the
    // verifier, which cannot follow that reasoning, rejects the read. Both
    // checks give the same verdict.
    let ports: *const Ports = ptr_at(ctx, inner_l3 + ihl)?;
    let quoted = ICMP_HDR_LEN + ihl + size_of::<Ports>();
    if quoted > ip.l4_len {
        return Err(Verdict::pass(Reason::Malformed));
    }
    // SAFETY: bounds checked by ptr_at.
    let (sport, dport) = unsafe { ((*ports).src, (*ports).dst) };
    Ok(Packet {
        flow: flow_key(
            dst_be,
            src_be,
            u16::from_ne_bytes(dport),
            u16::from_ne_bytes(sport),
            proto,
        ),
        vlan: ip.vlan,
        tcp_flags: 0,
        icmp_error: true,
        l3: ip.l3,
        l4: ip.l4,
    })
}
