//! The IPv6 pipeline (docs/IPV6.md): the steps of the IPv4 one, on IPv6
//! headers, the IPv6 VIP-address table and prefilter and the IPv6 flow
//! table, with the same VIP map, VIP generations, backends, rings and
//! schedulers. `dsr` and `ipip` (IPv6-in-IPv6) forward; `nat` is not
//! served for IPv6 (the config refuses it).
mod flow;
mod icmp;
mod ipip;
pub mod parse;
mod vip;

use aya_ebpf::programs::XdpContext;
use foobar_common::{Backend, Reason, FWD_DSR, FWD_IPIP, IPIP6_OVERHEAD};

use crate::{
    flow::First,
    forward::{dsr, Target},
    parse::Link,
    stats,
    verdict::Verdict,
};
use parse::Packet6;

/// The IPv6 pipeline runs in a program of its own (`foobar_ipv6`), which
/// the load balancer tail-calls for IPv6 frames: inlined or called, its
/// stack would add to the IPv4 pipeline's, past the 512-byte limit; a tail
/// call replaces the frame, and the IPv4 path stays as it was.
#[inline(always)]
pub fn pipeline(ctx: &XdpContext, link: &Link, len: &mut u64) -> Result<u32, Verdict> {
    let hdr = parse::header(ctx, link)?;
    vip::prefilter(&hdr)?;
    let parsed = parse::l4(ctx, &hdr, len);
    let mut entry = None;
    if let Ok(pkt) = &parsed {
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
                    return send(ctx, pkt, &to, &backend, Reason::Forwarded, *len);
                }
                First::Full(found) => entry = Some(found),
            }
        }
    }
    let addr_flags = vip::address(&hdr)?;
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
    send(ctx, &pkt, &to, &backend, reason, *len)
}

#[inline(always)]
fn send(
    ctx: &XdpContext,
    pkt: &Packet6,
    to: &Target,
    backend: &Backend,
    reason: Reason,
    len: u64,
) -> Result<u32, Verdict> {
    let action = match to.forward_mode {
        FWD_DSR => dsr::forward(ctx, backend)?,
        FWD_IPIP => ipip::forward(ctx, backend, &pkt.flow, pkt.icmp_error)?,
        // `nat` has no IPv6 datapath; the config refuses such a VIP.
        _ => return Err(Verdict::pass(Reason::Ipv6)),
    };
    // Only `ipip` changes the length of a frame it forwards.
    let len = if to.forward_mode == FWD_IPIP {
        len + u64::from(IPIP6_OVERHEAD)
    } else {
        len
    };
    stats::count_forward(to.vip_id, to.backend_id, len);
    stats::count_reason(reason, len);
    Ok(action)
}
