//! The interfaces the program serves and how a frame leaves them. One-arm
//! (docs/TOPOLOGY.md): one interface, every frame goes back out where it
//! came in (XDP_TX), from LB_MAC. Two-arm: the program is attached to the
//! client-side interface (LB_MAC) and to the backend-side one (ARM_IFINDEX,
//! ARM_MAC) too; a frame whose next hop is on the other interface is
//! redirected there through the EGRESS devmap, from that interface's MAC.
//!
//! ARM_IFINDEX is 0 on a one-arm node. It is a read-only global, so the
//! verifier knows its value and drops the two-arm branches: the one-arm
//! program runs the same instructions as before two-arm existed.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext, Global};
use foobar_common::Reason;

use crate::{maps::EGRESS, verdict::Verdict};

/// The MAC address of the (client-side) interface the program is attached
/// to, set at load time: only frames addressed to it (or, two-arm, to
/// ARM_MAC) are ours, and it is the source of every frame sent from it.
#[unsafe(no_mangle)]
pub static LB_MAC: Global<[u8; 6]> = Global::new([0; 6]);

/// Two-arm: the backend-side interface's index (0: one-arm) and MAC.
#[unsafe(no_mangle)]
static ARM_IFINDEX: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static ARM_MAC: Global<[u8; 6]> = Global::new([0; 6]);

/// Whether the node is two-arm (a constant to the verifier).
#[inline(always)]
pub fn two_arm() -> bool {
    ARM_IFINDEX.load() != 0
}

/// The interface index the frame came in on.
#[inline(always)]
pub fn ingress(ctx: &XdpContext) -> u32 {
    // The kernel's xdp_md field is a u32; aya widens it.
    ctx.ingress_ifindex() as u32
}

/// The MAC of interface `ifindex`: ARM_MAC for the backend-side one,
/// LB_MAC for any other (the program serves no third interface).
#[inline(always)]
fn mac_of(ifindex: u32) -> [u8; 6] {
    let arm = ARM_IFINDEX.load();
    if arm != 0 && ifindex == arm {
        ARM_MAC.load()
    } else {
        LB_MAC.load()
    }
}

/// The MAC of the interface the frame came in on: frames addressed to it
/// are ours.
#[inline(always)]
pub fn own_mac(ctx: &XdpContext) -> [u8; 6] {
    if !two_arm() {
        return LB_MAC.load();
    }
    mac_of(ingress(ctx))
}

/// How a frame leaves: from `src` (the egress interface's MAC), with
/// `action` (XDP_TX or XDP_REDIRECT).
pub struct Out {
    pub src: [u8; 6],
    pub action: u32,
}

/// Where a frame for a next hop reached through `egress` (an interface
/// index; 0: the one it came in on) leaves. A redirect is armed here (the
/// kernel sends the frame after the program returns, so the caller still
/// writes it); an egress the devmap lacks is a control-plane bug, dropped
/// and counted as `drop_bad_backend`.
#[inline(always)]
pub fn out(ctx: &XdpContext, egress: u32) -> Result<Out, Verdict> {
    if !two_arm() {
        return Ok(Out {
            src: LB_MAC.load(),
            action: xdp_action::XDP_TX,
        });
    }
    let ingress = ingress(ctx);
    if egress == 0 || egress == ingress {
        return Ok(Out {
            src: mac_of(ingress),
            action: xdp_action::XDP_TX,
        });
    }
    // Flags 0: a missing entry returns XDP_ABORTED, never a stray redirect.
    match EGRESS.redirect(egress, 0) {
        Ok(action) => Ok(Out {
            src: mac_of(egress),
            action,
        }),
        Err(_) => Err(Verdict::drop(Reason::BadBackend)),
    }
}
