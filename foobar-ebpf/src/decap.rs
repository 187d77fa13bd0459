//! The backend's decapsulation program (`foobar decap --iface IF`), an
//! object of its own: strips the outer IP header the load balancer's `ipip`
//! mode adds (IPv4 or IPv6 outer, IPv4 or IPv6 inner), moves the Ethernet
//! header forward and returns XDP_PASS, so the stack sees the inner packet
//! as if it had arrived plain. It decapsulates only packets from an allowed
//! outer source to a configured local outer destination; everything else
//! passes untouched. It never drops and never changes the inner packet.
//! It is frags-aware (`xdp.frags`, multi-buffer), so a backend interface
//! with a jumbo MTU takes it: lengths are the whole frame's
//! (bpf_xdp_get_buff_len), headers are read from the linear part only (a
//! frame whose headers are not there passes, counted MALFORMED).
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_get_buff_len},
    macros::{map, xdp},
    maps::{lpm_trie::Key, HashMap, LpmTrie, PerCpuArray},
    programs::XdpContext,
};

const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
/// IPv4 flags+offset: MF bit and the 13-bit fragment offset.
const IP_MF_OFFSET_MASK: u16 = 0x3fff;
/// Outer protocol / next header of a tunnelled IPv4 / IPv6 packet.
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
/// IPv6 extension headers (RFC 8200 4.1, RFC 5533, RFC 7401): an outer
/// header followed by one is passed, not walked.
const IPV6_EXT_HOP_BY_HOP: u8 = 0;
const IPV6_EXT_ROUTING: u8 = 43;
const IPV6_EXT_FRAGMENT: u8 = 44;
const IPV6_EXT_AUTH: u8 = 51;
const IPV6_EXT_DEST_OPTS: u8 = 60;
const IPV6_EXT_MOBILITY: u8 = 135;
const IPV6_EXT_HIP: u8 = 139;
const IPV6_EXT_SHIM6: u8 = 140;

// Counter indices of DECAP_STATS; foobar-user/src/decap.rs names them in
// the same order (`COUNTERS`).
/// Decapsulated: the inner packet went to the stack.
const DECAPSULATED: u32 = 0;
/// Encapsulated, but the outer source is not an allowed LB address.
const REFUSED_SOURCE: u32 = 1;
/// Encapsulated from an allowed source, to an outer destination not in the
/// configured local set.
const REFUSED_DESTINATION: u32 = 2;
/// Not an IP-in-IP packet (ordinary traffic, untouched).
const PASSED: u32 = 3;
/// IPv4 options or IPv6 extension headers on the outer header: passed.
const OPTIONS: u32 = 4;
/// The outer packet is a fragment: passed (see fragment_passes).
const FRAGMENT: u32 = 5;
/// Too short, a length beyond the frame, or the inner version not the
/// one the outer protocol says: passed untouched.
const MALFORMED: u32 = 6;
/// How many counters there are.
const COUNTERS: u32 = 7;

/// Allowed outer sources (the LB nodes' addresses, or the prefixes their
/// `datapath.ipip_source` takes flow-spread sources from), network byte
/// order, longest-prefix match; the value is unused. Empty: nothing is
/// decapsulated.
#[map]
static DECAP_ALLOW4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(256, 0);
#[map]
static DECAP_ALLOW6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(256, 0);
/// Outer destinations accepted as local (this host's addresses when the
/// program was attached, or the set the operator gave).
#[map]
static DECAP_LOCAL4: HashMap<[u8; 4], u8> = HashMap::with_max_entries(256, 0);
#[map]
static DECAP_LOCAL6: HashMap<[u8; 16], u8> = HashMap::with_max_entries(256, 0);
/// Packets per reason (the indices above), per CPU.
#[map]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

// Header layouts with byte-array fields: alignment 1, so a pointer at any
// packet offset is valid to read, and multi-byte fields stay in wire order.
#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    ethertype: [u8; 2],
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

#[repr(C)]
struct Ipv6Hdr {
    ver_tc_flow: [u8; 4],
    payload_len: [u8; 2],
    next_hdr: u8,
    _hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// The first byte of the inner header: its version nibble.
#[repr(C)]
struct VersionByte {
    ver: u8,
}

/// What to do with a frame: decapsulate `outer_len` bytes of outer header
/// and give the frame `ethertype`, or pass it untouched for a reason.
enum Decision {
    Decap { outer_len: usize, ethertype: u16 },
    Pass(u32),
}

#[xdp(frags)]
pub fn foobar_decap(ctx: XdpContext) -> u32 {
    let counter = match decide(&ctx) {
        Decision::Pass(reason) => reason,
        Decision::Decap {
            outer_len,
            ethertype,
        } => match strip(&ctx, outer_len, ethertype) {
            Ok(()) => DECAPSULATED,
            // adjust_head refused (it cannot, for a frame decide() checked
            // holds the outer header): the frame is untouched.
            Err(()) => MALFORMED,
        },
    };
    count(counter);
    xdp_action::XDP_PASS
}

/// The one bounds-checked accessor: a pointer to a `T` at `offset`, or
/// None if the frame is too short to hold it.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
fn decide(ctx: &XdpContext) -> Decision {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Decision::Pass(MALFORMED);
    };
    // SAFETY: ptr_at checked that the header lies inside the frame.
    match u16::from_be_bytes(unsafe { (*eth).ethertype }) {
        ETH_P_IP => decide_v4(ctx),
        ETH_P_IPV6 => decide_v6(ctx),
        // 802.1Q-tagged, ARP, ...: not ours. A VLAN interface's own
        // program sees its frames untagged.
        _ => Decision::Pass(PASSED),
    }
}

#[inline(always)]
fn decide_v4(ctx: &XdpContext) -> Decision {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN) else {
        return Decision::Pass(MALFORMED);
    };
    // SAFETY: ptr_at checked that the header lies inside the frame.
    let ip = unsafe { &*ip };
    if ip.ver_ihl >> 4 != 4 || ip.ver_ihl & 0x0f < 5 {
        return Decision::Pass(MALFORMED);
    }
    // Ordinary traffic leaves first, for the least cost.
    let ethertype = match ip.proto {
        IPPROTO_IPIP => ETH_P_IP,
        IPPROTO_IPV6 => ETH_P_IPV6,
        _ => return Decision::Pass(PASSED),
    };
    if DECAP_ALLOW4.get(Key::new(32, ip.saddr)).is_none() {
        return Decision::Pass(REFUSED_SOURCE);
    }
    // SAFETY: a map lookup by value; the reference is not kept.
    if unsafe { DECAP_LOCAL4.get(&ip.daddr) }.is_none() {
        return Decision::Pass(REFUSED_DESTINATION);
    }
    if ip.ver_ihl & 0x0f != 5 {
        return Decision::Pass(OPTIONS);
    }
    if fragment_passes(u16::from_be_bytes(ip.frag_off)) {
        return Decision::Pass(FRAGMENT);
    }
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    inner_checked(ctx, IPV4_HDR_LEN, tot_len, ethertype)
}

/// An outer IPv4 fragment (MF set or an offset) is passed: its inner
/// packet is incomplete (the first fragment's inner length claims more
/// than it holds; later ones carry no inner header at all), and only the
/// kernel's reassembly could make it whole — which a host without the ipip
/// module then discards. The LB never fragments (DF, and frag-needed to the
/// client), so a fragment here is not the LB's.
#[inline(always)]
fn fragment_passes(frag_off: u16) -> bool {
    frag_off & IP_MF_OFFSET_MASK != 0
}

#[inline(always)]
fn decide_v6(ctx: &XdpContext) -> Decision {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, ETH_HDR_LEN) else {
        return Decision::Pass(MALFORMED);
    };
    // SAFETY: ptr_at checked that the header lies inside the frame.
    let ip = unsafe { &*ip };
    if ip.ver_tc_flow[0] >> 4 != 6 {
        return Decision::Pass(MALFORMED);
    }
    let (ethertype, verdict_if_ours) = match ip.next_hdr {
        IPPROTO_IPIP => (ETH_P_IP, None),
        IPPROTO_IPV6 => (ETH_P_IPV6, None),
        IPV6_EXT_FRAGMENT => (0, Some(FRAGMENT)),
        IPV6_EXT_HOP_BY_HOP | IPV6_EXT_ROUTING | IPV6_EXT_AUTH | IPV6_EXT_DEST_OPTS
        | IPV6_EXT_MOBILITY | IPV6_EXT_HIP | IPV6_EXT_SHIM6 => (0, Some(OPTIONS)),
        _ => return Decision::Pass(PASSED),
    };
    if DECAP_ALLOW6.get(Key::new(128, ip.saddr)).is_none() {
        return Decision::Pass(REFUSED_SOURCE);
    }
    // SAFETY: a map lookup by value; the reference is not kept.
    if unsafe { DECAP_LOCAL6.get(&ip.daddr) }.is_none() {
        return Decision::Pass(REFUSED_DESTINATION);
    }
    // Extension headers (and the fragment header) from an allowed LB are
    // not walked: the LB adds none, so such a packet is passed, counted.
    if let Some(reason) = verdict_if_ours {
        return Decision::Pass(reason);
    }
    let tot_len = IPV6_HDR_LEN + u16::from_be_bytes(ip.payload_len) as usize;
    inner_checked(ctx, IPV6_HDR_LEN, tot_len, ethertype)
}

/// Checks the lengths the outer header claims and the inner header's
/// version before anything is written: the outer packet (`tot_len` bytes
/// from the IP header) lies inside the frame, and holds at least the inner
/// header `ethertype` says.
#[inline(always)]
fn inner_checked(ctx: &XdpContext, outer_len: usize, tot_len: usize, ethertype: u16) -> Decision {
    let (inner_min, inner_ver) = if ethertype == ETH_P_IP {
        (IPV4_HDR_LEN, 4)
    } else {
        (IPV6_HDR_LEN, 6)
    };
    // The whole frame: a jumbo frame's payload may lie in fragments.
    // SAFETY: the helper only reads the xdp_buff the context points to.
    let frame_len = (unsafe { bpf_xdp_get_buff_len(ctx.ctx) }) as usize;
    if tot_len < outer_len + inner_min || ETH_HDR_LEN + tot_len > frame_len {
        return Decision::Pass(MALFORMED);
    }
    let Some(inner) = ptr_at::<VersionByte>(ctx, ETH_HDR_LEN + outer_len) else {
        return Decision::Pass(MALFORMED);
    };
    // SAFETY: ptr_at checked that the byte lies inside the frame.
    if unsafe { (*inner).ver } >> 4 != inner_ver {
        return Decision::Pass(MALFORMED);
    }
    Decision::Decap {
        outer_len,
        ethertype,
    }
}

/// Removes the outer header: the Ethernet addresses are read first, the
/// frame's head moves forward by `outer_len`, and a new Ethernet header
/// (same addresses, the inner packet's EtherType) is written in front of
/// the inner packet.
#[inline(always)]
fn strip(ctx: &XdpContext, outer_len: usize, ethertype: u16) -> Result<(), ()> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(())?;
    // SAFETY: ptr_at checked that the header lies inside the frame.
    let (dst, src) = unsafe { ((*eth).dst, (*eth).src) };
    // outer_len is one of two constants here (20 or 40): the helper gets a
    // known delta on every path.
    let delta = if outer_len == IPV4_HDR_LEN {
        IPV4_HDR_LEN as i32
    } else {
        IPV6_HDR_LEN as i32
    };
    // SAFETY: the helper moves the frame's start within its own buffer;
    // every pointer into the frame is re-derived (and re-checked) after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(());
    }
    // The verifier forgets every packet bound after adjust_head: check again.
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(())?;
    // SAFETY: ptr_at checked that the header lies inside the frame.
    unsafe {
        (*eth).dst = dst;
        (*eth).src = src;
        (*eth).ethertype = ethertype.to_be_bytes();
    }
    Ok(())
}

#[inline(always)]
fn count(counter: u32) {
    if let Some(n) = DECAP_STATS.get_ptr_mut(counter) {
        // SAFETY: a per-CPU slot: no other CPU writes it.
        unsafe { *n += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
