//! foobar's XDP programs. `foobar` is the load balancer: it reads the pipeline
//! of docs/DATAPATH.md top to bottom, each step a module that returns
//! `Result<_, Verdict>`. `foobar_pass` only returns XDP_PASS (the lab attaches
//! it to the peer of a veth so XDP_TX frames are delivered).
#![no_std]
#![no_main]

mod clock;
mod flow;
mod flow_table;
mod forward;
mod frame;
mod icmp;
mod iface;
mod ipv4;
mod maps;
mod nat;
mod parse;
mod rt;
mod schedule;
mod stats;
mod v6;
mod verdict;
mod vip;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use flow::First;
use foobar_common::{
    Backend, Reason, ADDR_SNAT, ADDR_SNAT_ONLY, FWD_DNAT, FWD_IPIP, FWD_NAT, IPIP_OVERHEAD,
};
use forward::Target;
use parse::{Ip, Packet};
use verdict::Verdict;

#[xdp(frags)]
// Inlined into the entry the macro wraps it in: left to LLVM, a body this
// large becomes a BPF-to-BPF call, which cost every packet 8 ns (pass and
// established alike) when the dnat code tipped it over.
#[inline(always)]
pub fn foobar(ctx: XdpContext) -> u32 {
    // The frame's length once parse has it (0 before): a helper call less.
    let mut len = 0;
    match pipeline(&ctx, &mut len) {
        Ok(action) => action,
        Err(verdict) => {
            // A verdict that sends a frame of its own (frag-needed) counts
            // that frame, not the one that came in.
            let bytes = if len == 0 || verdict.action == xdp_action::XDP_TX {
                frame_len(&ctx)
            } else {
                len
            };
            stats::count_reason(verdict.reason, bytes);
            verdict.action
        }
    }
}

#[inline(always)]
fn pipeline(ctx: &XdpContext, len: &mut u64) -> Result<u32, Verdict> {
    let ip = match parse::l3(ctx)? {
        Ip::V4(ip) => ip,
        Ip::V6(_) => {
            // SAFETY: a tail call either does not return or fails (the
            // array is empty: userspace did not load the IPv6 program).
            unsafe { maps::PIPELINE6.tail_call(ctx, 0) };
            return Err(Verdict::pass(Reason::Ipv6));
        }
    };
    *len = ip.frame_len;
    if vip::prefilter(&ip).is_err() {
        // The pass path. Only with dnat VIPs (a load-time global: the
        // verifier prunes the check without them) one more array read, for
        // dnat replies (whose destination is a client, no VIP).
        if nat::dnat::from_backend(ctx, &ip) {
            return nat::dnat::reply(ctx);
        }
        return Err(Verdict::pass(Reason::NotVip));
    }
    // The L4 header is read before the VIP address is confirmed, for the
    // flow-first path; its verdict (malformed, fragment, other L4) counts
    // only after the address check, as for any packet to a VIP address.
    let parsed = parse::l4(ctx, &ip);
    let mut entry = None;
    if let Ok(pkt) = &parsed {
        // A SYN (and an ICMP error) takes the full path: a SYN is nearly
        // always a new flow, whose flow-table miss is cheaper after the VIP
        // lookups (see flow::opens).
        if !pkt.icmp_error && !flow::opens(pkt) {
            match flow::first(pkt) {
                First::Hit {
                    vip_id,
                    forward_mode,
                    backend_id,
                    backend,
                } => {
                    let to = Target {
                        vip_id,
                        forward_mode,
                        backend_id,
                    };
                    return send(ctx, pkt, &to, &backend, Reason::Forwarded, ip.frame_len);
                }
                First::Full(found) => entry = Some(found),
            }
        }
    }
    // No VIP address: the node's own traffic, or a dnat reply.
    let addr_flags = match vip::address(&ip) {
        Ok(flags) => flags,
        Err(_) if nat::dnat::from_backend(ctx, &ip) => return nat::dnat::reply(ctx),
        Err(not_vip) => return Err(not_vip),
    };
    // An SNAT address: a backend's reply to a NAT flow is translated back;
    // anything else to an address that is no VIP is the node's own.
    if addr_flags & ADDR_SNAT != 0 {
        if let Ok(pkt) = &parsed {
            if let Some(action) = nat::reply(ctx, pkt, ip.frame_len)? {
                return Ok(action);
            }
        }
        if addr_flags & ADDR_SNAT_ONLY != 0 {
            return Err(Verdict::pass(Reason::NotVip));
        }
    }
    let pkt = parsed?;
    let (service, vip_gen) = vip::lookup(&pkt, addr_flags)?;
    // The embedded header of an ICMP error about a dnat flow is not
    // translated (docs/DNAT.md).
    if service.forward_mode == FWD_DNAT && pkt.icmp_error {
        return Err(Verdict::drop(Reason::NatIcmp));
    }
    // An ICMP error about a NAT flow's reply goes to its backend, its
    // quoted header translated; without live state it is dropped
    // (docs/NAT.md, "ICMP").
    if service.forward_mode == FWD_NAT && pkt.icmp_error {
        let Some((backend_id, action)) = nat::icmp::to_backend(ctx, &pkt)? else {
            return Err(Verdict::drop(Reason::NatIcmp));
        };
        stats::count_forward(service.vip_id, backend_id, ip.frame_len);
        stats::count_reason(Reason::ForwardedIcmp, ip.frame_len);
        return Ok(action);
    }
    let entry = entry.unwrap_or_else(|| flow::lookup(&pkt));
    // A flow to an SNAT address never takes the flow-first path (its entry
    // records generation 0, which never matches): its 5-tuple may be a NAT
    // reply's, and the reply check above must see it first. A backend's
    // stray to a port-0 VIP on its own SNAT address otherwise leaves a
    // flow entry that later steals the replies of the flow given that port.
    let vip_gen = if addr_flags & ADDR_SNAT != 0 {
        0
    } else {
        vip_gen
    };
    let (backend_id, backend) = flow::backend_for(&pkt, &service, vip_gen, entry)?;
    let reason = if pkt.icmp_error {
        Reason::ForwardedIcmp
    } else {
        Reason::Forwarded
    };
    let to = Target {
        vip_id: service.vip_id,
        forward_mode: service.forward_mode,
        backend_id,
    };
    send(ctx, &pkt, &to, &backend, reason, ip.frame_len)
}

/// Forwards the packet (a frame of `len` bytes) to its backend and counts
/// it as sent.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    pkt: &Packet,
    to: &Target,
    backend: &Backend,
    reason: Reason,
    len: u64,
) -> Result<u32, Verdict> {
    let action = forward::forward(ctx, pkt, to, backend)?;
    // Only `ipip` changes the length of a frame it forwards.
    let len = if to.forward_mode == FWD_IPIP {
        len + u64::from(IPIP_OVERHEAD)
    } else {
        len
    };
    stats::count_forward(to.vip_id, to.backend_id, len);
    stats::count_reason(reason, len);
    Ok(action)
}

/// The bytes a counter adds when parse did not say: the whole frame,
/// fragments included.
#[inline(always)]
pub(crate) fn frame_len(ctx: &XdpContext) -> u64 {
    frame::len(ctx) as u64
}

/// The IPv6 pipeline (v6/), tail-called by `foobar` for IPv6 frames. It
/// is frags-aware like `foobar`: the kernel refuses a tail call between a
/// frags-aware program and one that is not.
#[xdp(frags)]
pub fn foobar_ipv6(ctx: XdpContext) -> u32 {
    // The frame's length once parse has it (0 before), as in `foobar`.
    let mut len = 0;
    let result = match parse::l3(&ctx) {
        Ok(Ip::V6(link)) => v6::pipeline(&ctx, &link, &mut len),
        // Never: `foobar` calls this program for IPv6 frames only.
        Ok(Ip::V4(_)) => Err(Verdict::pass(Reason::Ipv6)),
        Err(verdict) => Err(verdict),
    };
    match result {
        Ok(action) => action,
        Err(verdict) => {
            let bytes = if len == 0 || verdict.action == xdp_action::XDP_TX {
                frame_len(&ctx)
            } else {
                len
            };
            stats::count_reason(verdict.reason, bytes);
            verdict.action
        }
    }
}

#[xdp(frags)]
pub fn foobar_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
