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
mod icmp;
mod ipv4;
mod maps;
mod parse;
mod rt;
mod schedule;
mod stats;
mod verdict;
mod vip;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use foobar_common::{Backend, Reason};

use flow::First;
use parse::Packet;
use verdict::Verdict;

#[xdp]
pub fn foobar(ctx: XdpContext) -> u32 {
    match pipeline(&ctx) {
        Ok(action) => action,
        Err(verdict) => {
            stats::count_reason(verdict.reason, frame_len(&ctx));
            verdict.action
        }
    }
}

#[inline(always)]
fn pipeline(ctx: &XdpContext) -> Result<u32, Verdict> {
    let ip = parse::l3(ctx)?;
    vip::prefilter(&ip)?;
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
                    return send(ctx, pkt, &to, &backend, Reason::Forwarded);
                }
                First::Full(found) => entry = Some(found),
            }
        }
    }
    let addr_flags = vip::address(&ip)?;
    let pkt = parsed?;
    let (service, vip_gen) = vip::lookup(&pkt, addr_flags)?;
    let entry = entry.unwrap_or_else(|| flow::lookup(&pkt));
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
    send(ctx, &pkt, &to, &backend, reason)
}

/// Where a packet goes: counted under this VIP and backend, sent in the
/// VIP's forwarding mode.
struct Target {
    vip_id: u32,
    forward_mode: u8,
    backend_id: u32,
}

/// Forwards the packet to its backend and counts it.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    pkt: &Packet,
    to: &Target,
    backend: &Backend,
    reason: Reason,
) -> Result<u32, Verdict> {
    let action = forward::forward(ctx, to.forward_mode, backend, &pkt.flow)?;
    let len = frame_len(ctx);
    stats::count_forward(to.vip_id, to.backend_id, len);
    stats::count_reason(reason, len);
    Ok(action)
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

#[xdp]
pub fn foobar_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
