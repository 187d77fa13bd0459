//! Next-hop MACs of backends, from the kernel's neighbour table (netlink).
//! A backend the table does not know yet is nudged with one empty UDP
//! datagram to its discard port, which makes the kernel resolve it (ARP).
//! `resolve` waits for a set of addresses once, at start; `watch` follows
//! the table for as long as the daemon runs and reports changes. Neither
//! touches the daemon's state: they report, the owner decides.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use futures::TryStreamExt as _;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use tokio::sync::{mpsc, watch as tokio_watch};

#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("netlink: {0}")]
    Netlink(String),
}

/// Why a backend has no MAC, for `foobar status` and the logs.
pub fn no_mac_reason(address: Ipv4Addr, iface: &str) -> String {
    format!(
        "no MAC: ARP for {address} on {iface} got no answer (retrying; the backend is down, \
         or not on {iface}'s L2 segment, which dsr needs; see `ip neigh show dev {iface}`)"
    )
}

/// Resolves the addresses in `addrs` on the interface with index
/// `ifindex`, waiting up to `timeout`; returns those it found (the caller
/// decides what a missing one means).
pub async fn resolve(
    ifindex: u32,
    addrs: &[Ipv4Addr],
    timeout: Duration,
) -> Result<HashMap<Ipv4Addr, [u8; 6]>, NeighError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| NeighError::Netlink(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let deadline = Instant::now() + timeout;
    let mut nudged = false;
    let result = loop {
        let known: HashMap<Ipv4Addr, [u8; 6]> = match dump(&handle, ifindex).await {
            Ok(table) => table
                .into_iter()
                .filter_map(|(a, n)| match n {
                    Neighbour::Known(mac) => Some((a, mac)),
                    Neighbour::Failed => None,
                })
                .collect(),
            Err(e) => break Err(e),
        };
        let missing: Vec<Ipv4Addr> = addrs
            .iter()
            .filter(|a| !known.contains_key(a))
            .copied()
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break Ok(addrs
                .iter()
                .filter_map(|a| Some((*a, *known.get(a)?)))
                .collect());
        }
        if !nudged {
            nudge(&missing);
            nudged = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    conn.abort();
    result
}

/// How often `watch` reads the neighbour table (one netlink dump: cheap).
pub const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// What the kernel says of one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Neighbour {
    /// A MAC the kernel currently trusts.
    Known([u8; 6]),
    /// Resolution failed: nothing answered ARP.
    Failed,
}

/// Follows the kernel's neighbour table on `ifindex` for the addresses in
/// `wanted`: every `period` (and at once when `wanted` changes) reads the
/// table, nudges the addresses it has no usable entry for, and sends what
/// it knows of the wanted addresses whenever that changes. After a nudge it
/// looks again sooner (50 ms, doubling up to `period`), so a new backend
/// that answers ARP takes traffic within milliseconds. An address the
/// table has no entry for is left out (its last MAC stands: the kernel
/// forgets idle entries). Ends when the receiver goes away.
pub async fn watch(
    ifindex: u32,
    mut wanted: tokio_watch::Receiver<Vec<Ipv4Addr>>,
    tx: mpsc::Sender<HashMap<Ipv4Addr, Neighbour>>,
    period: Duration,
) {
    let (conn, handle, _) = match rtnetlink::new_connection() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%e, "cannot open a netlink socket: backend MACs are not followed");
            return;
        }
    };
    let conn = tokio::spawn(conn);
    const FIRST_RETRY: Duration = Duration::from_millis(50);
    const RESEND: Duration = Duration::from_secs(30);
    let mut last_sent = Instant::now();
    let mut last: Option<HashMap<Ipv4Addr, Neighbour>> = None;
    let mut failing = false;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = wanted.changed() => {
                if changed.is_err() {
                    break;
                }
                wait = Duration::ZERO;
            }
        }
        let addrs = wanted.borrow_and_update().clone();
        let table = match dump(&handle, ifindex).await {
            Ok(t) => {
                failing = false;
                t
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(%e, "reading the neighbour table failed; retrying");
                }
                failing = true;
                wait = period;
                continue;
            }
        };
        let report: HashMap<Ipv4Addr, Neighbour> = addrs
            .iter()
            .filter_map(|a| Some((*a, *table.get(a)?)))
            .collect();
        let unresolved: Vec<Ipv4Addr> = addrs
            .iter()
            .filter(|a| !matches!(report.get(a), Some(Neighbour::Known(_))))
            .copied()
            .collect();
        nudge(&unresolved);
        wait = if unresolved.is_empty() {
            period
        } else {
            (wait * 2).clamp(FIRST_RETRY, period)
        };
        // Sent when it changes, and every RESEND anyway: a report the owner
        // could not apply (a map write failed) is tried again.
        if last.as_ref() != Some(&report) || last_sent.elapsed() >= RESEND {
            if tx.send(report.clone()).await.is_err() {
                break;
            }
            last = Some(report);
            last_sent = Instant::now();
        }
    }
    conn.abort();
}

async fn dump(
    handle: &rtnetlink::Handle,
    ifindex: u32,
) -> Result<HashMap<Ipv4Addr, Neighbour>, NeighError> {
    let mut entries = handle.neighbours().get().execute();
    let mut known = HashMap::new();
    while let Some(msg) = entries
        .try_next()
        .await
        .map_err(|e| NeighError::Netlink(e.to_string()))?
    {
        if let Some((addr, n)) = entry(&msg, ifindex) {
            known.insert(addr, n);
        }
    }
    Ok(known)
}

/// An IPv4 entry on `ifindex` whose MAC the kernel currently trusts, or
/// that failed to resolve; None for anything else (other interfaces,
/// resolution under way).
fn entry(msg: &NeighbourMessage, ifindex: u32) -> Option<(Ipv4Addr, Neighbour)> {
    if msg.header.ifindex != ifindex {
        return None;
    }
    let failed = msg.header.state == NeighbourState::Failed;
    if !failed
        && !matches!(
            msg.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        )
    {
        return None;
    }
    let mut addr = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => addr = Some(*a),
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(&bytes[..]).ok()
            }
            _ => {}
        }
    }
    if failed {
        return Some((addr?, Neighbour::Failed));
    }
    Some((addr?, Neighbour::Known(mac?)))
}

/// One empty datagram to each address's discard port (9): the kernel must
/// resolve the next hop to send it. Failures are ignored; the deadline and
/// the error that follows it tell the operator what is missing.
fn nudge(addrs: &[Ipv4Addr]) {
    if let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
        for a in addrs {
            let _ = sock.send_to(&[], (*a, 9));
        }
    }
}
