//! Next-hop MACs of backends, from the kernel's neighbour table (netlink).
//! A backend the table does not know yet is nudged with one empty UDP
//! datagram to its discard port, which makes the kernel resolve it (ARP);
//! then the table is read again, until a deadline.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use futures::TryStreamExt as _;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};

#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error(
        "no MAC address for {} on {iface} after {}s: the backend is down, or not on \
         {iface}'s L2 segment (dsr needs that); check `ip neigh show dev {iface}`",
        missing.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
        timeout.as_secs()
    )]
    Unresolved {
        iface: String,
        missing: Vec<Ipv4Addr>,
        timeout: Duration,
    },
}

/// Resolves every address in `addrs` on interface `iface` (index `ifindex`).
pub async fn resolve(
    iface: &str,
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
        let known = dump(&handle, ifindex).await?;
        let missing: Vec<Ipv4Addr> = addrs
            .iter()
            .filter(|a| !known.contains_key(a))
            .copied()
            .collect();
        if missing.is_empty() {
            break Ok(addrs.iter().map(|a| (*a, known[a])).collect());
        }
        if Instant::now() >= deadline {
            break Err(NeighError::Unresolved {
                iface: iface.to_owned(),
                missing,
                timeout,
            });
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

async fn dump(
    handle: &rtnetlink::Handle,
    ifindex: u32,
) -> Result<HashMap<Ipv4Addr, [u8; 6]>, NeighError> {
    let mut entries = handle.neighbours().get().execute();
    let mut known = HashMap::new();
    while let Some(msg) = entries
        .try_next()
        .await
        .map_err(|e| NeighError::Netlink(e.to_string()))?
    {
        if let Some((addr, mac)) = usable_entry(&msg, ifindex) {
            known.insert(addr, mac);
        }
    }
    Ok(known)
}

/// An IPv4 entry on `ifindex` whose MAC the kernel currently trusts.
fn usable_entry(msg: &NeighbourMessage, ifindex: u32) -> Option<(Ipv4Addr, [u8; 6])> {
    if msg.header.ifindex != ifindex {
        return None;
    }
    if !matches!(
        msg.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    ) {
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
    Some((addr?, mac?))
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
