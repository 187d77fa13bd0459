//! foobar's XDP programs. `foobar` is the load balancer: it reads the pipeline
//! of docs/DATAPATH.md top to bottom, each step a module that returns
//! `Result<_, Verdict>`. `foobar_pass` only returns XDP_PASS (the lab attaches
//! it to the peer of a veth so XDP_TX frames are delivered).
#![no_std]
#![no_main]

mod clock;
mod flow;
mod forward;
mod maps;
mod parse;
mod rt;
mod schedule;
mod stats;
mod verdict;
mod vip;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use foobar_common::Reason;

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
    let addr_flags = vip::address(&ip)?;
    let pkt = parse::l4(ctx, &ip)?;
    let service = vip::lookup(&pkt, addr_flags)?;
    let (backend_id, backend) = flow::backend_for(&pkt, &service)?;
    let action = forward::forward(ctx, &backend)?;
    let len = frame_len(ctx);
    stats::count_forward(service.vip_id, backend_id, len);
    let reason = if pkt.icmp_error {
        Reason::ForwardedIcmp
    } else {
        Reason::Forwarded
    };
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
