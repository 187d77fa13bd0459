//! ICMP errors (destination unreachable, time exceeded) about NAT flows,
//! translated the way IPVS and Linux NAT translate them (docs/NAT.md,
//! "ICMP"), so path-MTU discovery and unreachables work through the LB:
//!
//! - `to_client`: an error to the SNAT address about a packet the LB sent
//!   to a backend (quoting S:sp -> B:bp) goes to the client, quoting the
//!   client's packet (C:cp -> VIP:vp), from the VIP;
//! - `to_backend`: an error to a VIP about a reply the LB sent to a client
//!   (quoting VIP:vp -> C:cp) goes to the backend, quoting the backend's
//!   reply (B:bp -> S:sp), from the SNAT address.
//!
//! Every checksum is updated incrementally (RFC 1624): the outer IPv4
//! header's, the quoted IPv4 header's, the quoted TCP/UDP checksum when
//! the error quotes it (UDP's lies in the 8 bytes every error quotes;
//! TCP's at byte 16, present only when the error quotes at least 18 bytes
//! of the segment) and the ICMP checksum, which covers all of these. Only
//! addresses, ports and checksums change: the quoted sequence number,
//! lengths, TTL and everything else stay as the router quoted them.
//! Neither direction touches the NAT state: an error is not a packet of
//! the flow (it neither keeps it alive nor closes it).
use aya_ebpf::programs::XdpContext;
use foobar_common::IPPROTO_TCP;

use super::{csum::Delta, rewrite::Tuple, state};
use crate::{
    clock, iface,
    maps::{BACKENDS, NAT_FLOWS, NAT_REVERSE},
    parse::{ptr_at, EthHdr, Packet},
    verdict::Verdict,
};

/// Type, code, checksum and the 4 bytes before the quoted IP header.
const ICMP_HDR_LEN: usize = 8;
/// Where the quoted segment's checksum lies (as in rewrite.rs).
const TCP_CHECK_OFFSET: usize = 16;
const UDP_CHECK_OFFSET: usize = 6;

/// An IPv4 header up to its addresses (outer or quoted).
#[repr(C)]
struct IpHdr {
    ver_ihl: u8,
    _tos: u8,
    tot_len: [u8; 2],
    _id_frag_ttl_proto: [u8; 6],
    check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[repr(C)]
struct L4Ports {
    sport: [u8; 2],
    dport: [u8; 2],
}

/// An error to an SNAT address whose quoted packet (S:sp -> B:bp; parse
/// turned it around into `pkt.flow`, the reverse key B:bp -> S:sp) belongs
/// to a live NAT state: translated to the client, from the VIP, to the MAC
/// the client's packets come from, out of the interface they came in on
/// (iface.rs); returns the XDP action. None when no live state matches
/// (the caller keeps its behaviour for other packets to the address; a
/// stale reverse entry is left to the replies and the collector).
#[inline(always)]
pub fn to_client(ctx: &XdpContext, pkt: &Packet) -> Result<Option<u32>, Verdict> {
    // SAFETY: a hash value, copied out at once.
    let Some(rev) = (unsafe { NAT_REVERSE.get(&pkt.flow) }).copied() else {
        return Ok(None);
    };
    let Some(state) = state::reverse_live(&rev, clock::now_ns()) else {
        return Ok(None);
    };
    // SAFETY: an LRU value, copied out at once (see nat::state).
    let (client_mac, client_ifindex) = unsafe { ((*state).client_mac, (*state).client_ifindex) };
    let out = iface::out(ctx, client_ifindex)?;
    let client = &rev.flow;
    // The quoted packet becomes the client's as it sent it.
    let inner = Tuple {
        src_be: client.src_be,
        dst_be: client.dst_be,
        sport_be: client.sport_be,
        dport_be: client.dport_be,
    };
    rewrite(ctx, pkt, client.dst_be, client.src_be, &inner)?;
    set_macs(ctx, client_mac, &out)?;
    Ok(Some(out.action))
}

/// An error to a NAT VIP whose quoted packet (VIP:vp -> C:cp; `pkt.flow`
/// is the client flow C:cp -> VIP:vp) belongs to a live NAT state whose
/// backend still holds its id: translated to that backend, from the SNAT
/// address, out of the backend's interface (iface.rs). Returns the
/// backend's id (for its counters) and the XDP action; None when no such
/// state exists (the caller drops it as `drop_nat_icmp`).
#[inline(always)]
pub fn to_backend(ctx: &XdpContext, pkt: &Packet) -> Result<Option<(u32, u32)>, Verdict> {
    let Some(state) = NAT_FLOWS.get_ptr_mut(&pkt.flow) else {
        return Ok(None);
    };
    if state::state_ended(state, clock::now_ns()) {
        return Ok(None);
    }
    // SAFETY: as in nat::state: copied out at once.
    let (backend_id, gen, backend_be, backend_port_be, snat_be, snat_port_be) = unsafe {
        (
            (*state).backend_id,
            (*state).backend_gen,
            (*state).backend_addr_be,
            (*state).backend_port_be,
            (*state).snat_addr_be,
            (*state).snat_port_be,
        )
    };
    // The backend must still hold its id: a freed or reused id's MAC is
    // another host's.
    let Some(backend) = BACKENDS.get(backend_id) else {
        return Ok(None);
    };
    if backend.gen != gen || backend.addr_be[0] != backend_be {
        return Ok(None);
    }
    let mac = backend.mac;
    let out = iface::out(ctx, backend.egress_ifindex)?;
    // The quoted packet becomes the backend's reply as it sent it.
    let inner = Tuple {
        src_be: backend_be,
        dst_be: snat_be,
        sport_be: backend_port_be,
        dport_be: snat_port_be,
    };
    rewrite(ctx, pkt, snat_be, backend_be, &inner)?;
    set_macs(ctx, mac, &out)?;
    Ok(Some((backend_id, out.action)))
}

#[inline(always)]
fn set_macs(ctx: &XdpContext, to: [u8; 6], out: &iface::Out) -> Result<(), Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the Ethernet header is inside the frame.
    unsafe {
        (*eth).dst = to;
        (*eth).src = out.src;
    }
    Ok(())
}

/// Rewrites the error's outer addresses to (`src_be`, `dst_be`) and its
/// quoted packet's addresses and ports to `inner`, with every checksum.
/// Every header is bounds-checked before the first write.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    pkt: &Packet,
    src_be: u32,
    dst_be: u32,
    inner: &Tuple,
) -> Result<(), Verdict> {
    let outer: *mut IpHdr = ptr_at(ctx, pkt.l3)?;
    let icmp_check: *mut [u8; 2] = ptr_at(ctx, pkt.l4 + 2)?;
    let inner_l3 = pkt.l4 + ICMP_HDR_LEN;
    let quoted: *mut IpHdr = ptr_at(ctx, inner_l3)?;
    // SAFETY: bounds checked by ptr_at.
    let (tot_len, ver_ihl) = unsafe {
        (
            u16::from_be_bytes((*outer).tot_len) as usize,
            (*quoted).ver_ihl,
        )
    };
    // The mask bounds the offset for the verifier as well as reading the
    // 4-bit IHL (parse checked it is at least 5).
    let inner_l4 = inner_l3 + ((ver_ihl & 0x0f) as usize) * 4;
    let ports: *mut L4Ports = ptr_at(ctx, inner_l4)?;
    let tcp = pkt.flow.proto == IPPROTO_TCP;
    let check_at = inner_l4
        + if tcp {
            TCP_CHECK_OFFSET
        } else {
            UDP_CHECK_OFFSET
        };
    // What the error quotes now: turned around, `pkt.flow` is its packet.
    let from = Tuple {
        src_be: pkt.flow.dst_be,
        dst_be: pkt.flow.src_be,
        sport_be: pkt.flow.dport_be,
        dport_be: pkt.flow.sport_be,
    };
    let mut addrs = Delta::new();
    addrs.add32(from.src_be, inner.src_be);
    addrs.add32(from.dst_be, inner.dst_be);
    // The ICMP checksum covers every quoted byte that changes, the quoted
    // checksums included.
    let mut icmp = Delta::new();
    icmp.add32(from.src_be, inner.src_be);
    icmp.add32(from.dst_be, inner.dst_be);
    icmp.add16(from.sport_be, inner.sport_be);
    icmp.add16(from.dport_be, inner.dport_be);
    // The quoted L4 checksum counts only if the error quotes it: within
    // the outer packet (parse checked its length against the frame), never
    // in the Ethernet padding after it. Its pointer is taken and used in
    // this block alone (verifier: a pointer kept in an Option across the
    // other writes reached them as a plain number). It is the first write,
    // after every other header was bounds-checked above.
    if check_at + 2 <= pkt.l3 + tot_len {
        let at: *mut [u8; 2] = ptr_at(ctx, check_at)?;
        let mut l4 = Delta::new();
        l4.add32(from.src_be, inner.src_be);
        l4.add32(from.dst_be, inner.dst_be);
        l4.add16(from.sport_be, inner.sport_be);
        l4.add16(from.dport_be, inner.dport_be);
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            let old = u16::from_ne_bytes(*at);
            let new = if tcp {
                l4.apply(old)
            } else {
                l4.apply_udp(old)
            };
            icmp.add16(old, new);
            *at = new.to_ne_bytes();
        }
    }
    // SAFETY: ptr_at checked every header lies inside the frame.
    unsafe {
        let mut outer_delta = Delta::new();
        outer_delta.add32(u32::from_ne_bytes((*outer).saddr), src_be);
        outer_delta.add32(u32::from_ne_bytes((*outer).daddr), dst_be);
        let check = u16::from_ne_bytes((*outer).check);
        (*outer).check = outer_delta.apply(check).to_ne_bytes();
        (*outer).saddr = src_be.to_ne_bytes();
        (*outer).daddr = dst_be.to_ne_bytes();

        let old_ip_check = u16::from_ne_bytes((*quoted).check);
        let new_ip_check = addrs.apply(old_ip_check);
        icmp.add16(old_ip_check, new_ip_check);
        (*quoted).check = new_ip_check.to_ne_bytes();
        (*quoted).saddr = inner.src_be.to_ne_bytes();
        (*quoted).daddr = inner.dst_be.to_ne_bytes();
        (*ports).sport = inner.sport_be.to_ne_bytes();
        (*ports).dport = inner.dport_be.to_ne_bytes();
        let old = u16::from_ne_bytes(*icmp_check);
        *icmp_check = icmp.apply(old).to_ne_bytes();
    }
    Ok(())
}
