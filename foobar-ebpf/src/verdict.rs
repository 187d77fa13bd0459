//! The early-return value of every pipeline step: an XDP action and the
//! reason it is counted under.
use aya_ebpf::bindings::xdp_action;
use foobar_common::Reason;

pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
}

impl Verdict {
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Verdict {
            action: xdp_action::XDP_PASS,
            reason,
        }
    }

    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Verdict {
            action: xdp_action::XDP_DROP,
            reason,
        }
    }

    /// Sent back out of the interface, but not to a backend (an ICMP error
    /// the datapath wrote): counted under its reason only.
    #[inline(always)]
    pub const fn tx(reason: Reason) -> Self {
        Verdict {
            action: xdp_action::XDP_TX,
            reason,
        }
    }
}
