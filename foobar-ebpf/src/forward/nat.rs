//! Full NAT, the forward half (docs/NAT.md): the client's packet gets the
//! backend's address and port as destination (DNAT) and the VIP's SNAT
//! address and a port of its range as source (SNAT); Ethernet from the
//! LB's MAC to the backend's; sent out of the backend's interface
//! (iface.rs: XDP_TX one-arm, a redirect two-arm). The flow's NAT state
//! (NAT_FLOWS) keeps its SNAT port and the client's MAC and interface for
//! the replies (nat::reply); a flow without live state for its backend gets a
//! new port (nat::state::allocate) or is dropped when none is free.
//!
//! `dnat` (docs/DNAT.md) is the same machinery with the client's own
//! address and port in the SNAT fields: a one-port "range", so the
//! allocation records the reverse entry (backend:bport -> client:cport)
//! or, when a live flow of another VIP holds that very 5-tuple, drops the
//! packet as `drop_nat_ports_exhausted`. The rewrite then changes only the
//! destination.
use aya_ebpf::programs::XdpContext;
use foobar_common::{Backend, NatFlow, Reason, IPPROTO_TCP, NAT_CLOSED, NAT_FIN_CLIENT};

use crate::{
    clock,
    flow::opens,
    iface,
    maps::{NAT_BACKEND_PORTS, NAT_FLOWS, NAT_REVERSE, NAT_VIPS},
    nat::{
        rewrite::{rewrite, Tuple},
        state,
    },
    parse::{ptr_at, EthHdr, Packet},
    verdict::Verdict,
};

#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    vip_id: u32,
    backend_id: u32,
    backend: &Backend,
    dnat: bool,
) -> Result<u32, Verdict> {
    // A NAT VIP without settings, or a backend id without a port slot, is
    // a control-plane bug: counted as such.
    let mut cfg = *NAT_VIPS
        .get(vip_id)
        .ok_or(Verdict::drop(Reason::BadBackend))?;
    // A dnat VIP's settings have no SNAT address; its timeouts say they
    // were written (userspace checks they are at least 1 s).
    let configured = if dnat {
        cfg.tcp_idle_s != 0
    } else {
        cfg.snat_addr_be != 0
    };
    if !configured {
        return Err(Verdict::drop(Reason::BadBackend));
    }
    if dnat {
        // The client's own address and port stand for the SNAT ones.
        let port = u16::from_be(pkt.flow.sport_be);
        cfg.snat_addr_be = pkt.flow.src_be;
        cfg.port_min = port;
        cfg.port_max = port;
    }
    let port_be = *NAT_BACKEND_PORTS
        .get(backend_id)
        .ok_or(Verdict::drop(Reason::BadBackend))?;
    let backend_port_be = if port_be == 0 {
        pkt.flow.dport_be
    } else {
        port_be
    };
    let backend_be = backend.addr_be[0];
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the Ethernet header is inside the frame.
    let client_mac = unsafe { (*eth).src };
    // Two-arm: where the client's packets come in, replies go out. One-arm
    // reads nothing (the verifier drops the branch).
    let client_ifindex = if iface::two_arm() {
        iface::ingress(ctx)
    } else {
        0
    };
    let now = clock::now_ns();
    let snat_port_be = match current(
        pkt,
        backend_id,
        backend,
        backend_port_be,
        cfg.snat_addr_be,
        now,
    ) {
        Some(state) => {
            // SAFETY: an LRU value (see nat::state); plain reads and stores.
            let (port, mac, ifindex) = unsafe {
                (
                    (*state).snat_port_be,
                    (*state).client_mac,
                    (*state).client_ifindex,
                )
            };
            if mac != client_mac || ifindex != client_ifindex {
                // SAFETY: as above.
                unsafe {
                    (*state).client_mac = client_mac;
                    (*state).client_ifindex = client_ifindex;
                }
            }
            state::touch(state, pkt.tcp_flags, NAT_FIN_CLIENT, now);
            port
        }
        None => {
            let nonce = state::nonce();
            let port = state::allocate(&pkt.flow, &cfg, backend_be, backend_port_be, nonce, now)?;
            let tcp = pkt.flow.proto == IPPROTO_TCP;
            let mut new = NatFlow {
                backend_id,
                backend_gen: backend.gen,
                nonce,
                snat_addr_be: cfg.snat_addr_be,
                backend_addr_be: backend_be,
                backend_port_be,
                snat_port_be: port,
                client_mac,
                // Below MAX_VIPS: the VIPS map holds no other id.
                vip_id: vip_id as u16,
                flags: 0,
                _pad: 0,
                idle_s: if tcp { cfg.tcp_idle_s } else { cfg.udp_idle_s },
                linger_s: cfg.linger_s,
                client_ifindex,
                last_seen_ns: now,
                closed_ns: 0,
            };
            state::touch(&mut new, pkt.tcp_flags, NAT_FIN_CLIENT, now);
            if NAT_FLOWS.insert(&pkt.flow, &new, 0).is_err() {
                // No room for the state (memory pressure): the port goes back.
                let mut key = pkt.flow;
                key.src_be = backend_be;
                key.dst_be = cfg.snat_addr_be;
                key.sport_be = backend_port_be;
                key.dport_be = port;
                let _ = NAT_REVERSE.remove(&key);
                return Err(Verdict::drop(Reason::NatPortsExhausted));
            }
            port
        }
    };
    let to = Tuple {
        src_be: cfg.snat_addr_be,
        dst_be: backend_be,
        sport_be: snat_port_be,
        dport_be: backend_port_be,
    };
    let out = iface::out(ctx, backend.egress_ifindex)?;
    rewrite(ctx, pkt, &to)?;
    // SAFETY: as above; the rewrite moved no header.
    unsafe {
        (*eth).src = out.src;
        (*eth).dst = backend.mac;
    }
    Ok(out.action)
}

/// The flow's NAT state, if it is live and still for this backend, address
/// and port (a rescheduled flow, or a changed SNAT address or backend
/// port, gets new state), and the packet is not a SYN reopening a closed
/// flow's 5-tuple.
#[inline(always)]
fn current(
    pkt: &Packet,
    backend_id: u32,
    backend: &Backend,
    backend_port_be: u16,
    snat_be: u32,
    now: u64,
) -> Option<*mut NatFlow> {
    let state = NAT_FLOWS.get_ptr_mut(&pkt.flow)?;
    // SAFETY: as in nat::state: copied out at once.
    let (id, gen, addr, port, snat, flags) = unsafe {
        (
            (*state).backend_id,
            (*state).backend_gen,
            (*state).backend_addr_be,
            (*state).backend_port_be,
            (*state).snat_addr_be,
            (*state).flags,
        )
    };
    if id != backend_id
        || gen != backend.gen
        || addr != backend.addr_be[0]
        || port != backend_port_be
        || snat != snat_be
        || (opens(pkt) && flags & NAT_CLOSED != 0)
        || state::state_ended(state, now)
    {
        return None;
    }
    Some(state)
}
