//! Next-hop MACs of backends, from the kernel's neighbour table (netlink).
//! A backend the table does not know yet is nudged with one empty UDP
//! datagram to its discard port, which makes the kernel resolve it (ARP).
//! A backend of a VIP on VLAN N is looked up on the datapath interface's
//! 802.1Q subinterface for N (found by a link dump: kind "vlan", parent
//! and id, never by name). On a two-arm node (docs/TOPOLOGY.md) an
//! untagged backend is looked for on the backend-side interface too: the
//! nudge goes where the kernel routes it, so the interface its entry is on
//! is the one the backend is reached through, reported as its egress.
//! `resolve` waits for a set of addresses once, at
//! start; `watch` follows the table for as long as the daemon runs and
//! reports changes. Neither touches the daemon's state: they report, the
//! owner decides.
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket},
    time::{Duration, Instant},
};

use futures::TryStreamExt as _;
use rtnetlink::packet_route::{
    link::{InfoData, InfoKind, InfoVlan, LinkAttribute, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
};
use tokio::sync::{mpsc, watch as tokio_watch};

#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("netlink: {0}")]
    Netlink(String),
}

/// Why a backend has no MAC, for `foobar status` and the logs.
pub fn no_mac_reason(address: IpAddr, iface: &str) -> String {
    format!(
        "no MAC: {} for {address} on {iface} got no answer (retrying; the backend is down, \
         or not on {iface}'s L2 segment, which dsr needs; see `ip neigh show dev {iface}`)",
        if address.is_ipv4() {
            "ARP"
        } else {
            "neighbour discovery"
        }
    )
}

/// Why a backend of a VIP on a VLAN has no MAC when the datapath
/// interface has no subinterface for that VLAN.
pub fn no_vlan_interface_reason(vip: &str, vlan: u16, iface: &str) -> String {
    format!(
        "VIP {vip} is on VLAN {vlan} but {iface} has no VLAN {vlan} interface: \
         ip link add link {iface} name {iface}.{vlan} type vlan id {vlan} \
         (then give it an address on the VLAN's subnet and set it up)"
    )
}

/// A backend address and the 802.1Q VLAN it is reached on (None: the
/// datapath interface itself, untagged).
pub type Wanted = (Option<u16>, IpAddr);

/// The 802.1Q subinterfaces of the datapath interface, by VLAN id.
pub type VlanInterfaces = BTreeMap<u16, VlanInterface>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VlanInterface {
    pub ifindex: u32,
    pub name: String,
}

/// What the watcher knows of the wanted addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// By address; an address the table has no entry for is left out.
    pub neighbours: HashMap<IpAddr, Neighbour>,
    /// The datapath interface's VLAN subinterfaces (they may come and go).
    pub vlan_interfaces: VlanInterfaces,
    /// Two-arm: the interface index each known address is reached through
    /// (empty on a one-arm node).
    pub egress: HashMap<IpAddr, u32>,
}

/// What `resolve` found: MACs, each address's egress interface (two-arm
/// only) and the VLAN subinterfaces.
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    pub macs: HashMap<IpAddr, [u8; 6]>,
    pub egress: HashMap<IpAddr, u32>,
    pub vlan_interfaces: VlanInterfaces,
}

/// Resolves the addresses in `wanted` (each on the datapath interface
/// `ifindex` or its subinterface for the address's VLAN, or on the
/// backend-side interface `arm`), waiting up to `timeout`; returns the
/// MACs it found (the caller decides what a missing one means), their
/// egress interfaces and the VLAN subinterfaces it saw.
pub async fn resolve(
    ifindex: u32,
    arm: Option<u32>,
    wanted: &[Wanted],
    timeout: Duration,
) -> Result<Resolved, NeighError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| NeighError::Netlink(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let deadline = Instant::now() + timeout;
    let mut nudged = false;
    let result = loop {
        let report = match read(&handle, ifindex, arm, wanted).await {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        let known: HashMap<IpAddr, [u8; 6]> = report
            .neighbours
            .iter()
            .filter_map(|(a, n)| match n {
                Neighbour::Known(mac) => Some((*a, *mac)),
                _ => None,
            })
            .collect();
        // An address on a VLAN without an interface cannot resolve: no
        // point waiting for it.
        let missing: Vec<IpAddr> = wanted
            .iter()
            .map(|(_, a)| *a)
            .filter(|a| {
                !known.contains_key(a)
                    && report.neighbours.get(a) != Some(&Neighbour::NoVlanInterface)
            })
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break Ok(Resolved {
                macs: known,
                egress: report.egress,
                vlan_interfaces: report.vlan_interfaces,
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

/// How often `watch` reads the neighbour table (one netlink dump: cheap).
pub const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// What the kernel says of one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Neighbour {
    /// A MAC the kernel currently trusts.
    Known([u8; 6]),
    /// Resolution failed: nothing answered ARP.
    Failed,
    /// The address's VLAN has no subinterface on the datapath interface:
    /// there is nowhere to ask.
    NoVlanInterface,
}

/// Follows the kernel's neighbour table for the addresses in `wanted` (on
/// `ifindex`, or on its subinterface for an address's VLAN): every
/// `period` (and at once when `wanted` changes) reads the table and the
/// VLAN subinterfaces, nudges the addresses it has no usable entry for,
/// and sends what it knows whenever that changes (so a VLAN interface
/// created while the daemon runs brings its backends up). After a nudge it
/// looks again sooner (50 ms, doubling up to `period`), so a new backend
/// that answers ARP takes traffic within milliseconds. An address the
/// table has no entry for is left out (its last MAC stands: the kernel
/// forgets idle entries). Ends when the receiver goes away.
pub async fn watch(
    ifindex: u32,
    arm: Option<u32>,
    mut wanted: tokio_watch::Receiver<Vec<Wanted>>,
    tx: mpsc::Sender<Report>,
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
    let mut last: Option<Report> = None;
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
        let report = match read(&handle, ifindex, arm, &addrs).await {
            Ok(r) => {
                failing = false;
                r
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
        let unresolved: Vec<IpAddr> = addrs
            .iter()
            .map(|(_, a)| *a)
            .filter(|a| {
                !matches!(
                    report.neighbours.get(a),
                    Some(Neighbour::Known(_) | Neighbour::NoVlanInterface)
                )
            })
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

/// One look at the links and the neighbour table: what the kernel says of
/// each wanted address on the interface of its VLAN.
async fn read(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    arm: Option<u32>,
    wanted: &[Wanted],
) -> Result<Report, NeighError> {
    let vlan_interfaces = if wanted.iter().any(|(vlan, _)| vlan.is_some()) {
        vlan_interfaces(handle, ifindex).await?
    } else {
        VlanInterfaces::new()
    };
    let table = dump(handle).await?;
    let mut neighbours = HashMap::new();
    let mut egress = HashMap::new();
    for (vlan, address) in wanted {
        let on = match (vlan, arm) {
            (None, Some(arm)) => {
                if let Some((on, n)) = on_either(&table, [ifindex, arm], *address) {
                    neighbours.insert(*address, n);
                    egress.insert(*address, on);
                }
                continue;
            }
            (None, None) => ifindex,
            (Some(v), _) => match vlan_interfaces.get(v) {
                Some(i) => i.ifindex,
                None => {
                    neighbours.insert(*address, Neighbour::NoVlanInterface);
                    continue;
                }
            },
        };
        if let Some(n) = table.get(&(on, *address)) {
            neighbours.insert(*address, *n);
        }
    }
    Ok(Report {
        neighbours,
        vlan_interfaces,
        egress,
    })
}

/// Two-arm: the entry for `address` on the first of `ifaces` that knows
/// its MAC, else the first entry at all (a failed one), with the
/// interface it is on.
fn on_either(
    table: &HashMap<(u32, IpAddr), Neighbour>,
    ifaces: [u32; 2],
    address: IpAddr,
) -> Option<(u32, Neighbour)> {
    let found = ifaces
        .iter()
        .filter_map(|&i| table.get(&(i, address)).map(|n| (i, *n)));
    let mut first = None;
    for (i, n) in found {
        if matches!(n, Neighbour::Known(_)) {
            return Some((i, n));
        }
        first.get_or_insert((i, n));
    }
    first
}

/// The neighbour table, by (interface index, address).
async fn dump(handle: &rtnetlink::Handle) -> Result<HashMap<(u32, IpAddr), Neighbour>, NeighError> {
    let mut entries = handle.neighbours().get().execute();
    let mut known = HashMap::new();
    while let Some(msg) = entries
        .try_next()
        .await
        .map_err(|e| NeighError::Netlink(e.to_string()))?
    {
        if let Some((addr, n)) = entry(&msg) {
            known.insert((msg.header.ifindex, addr), n);
        }
    }
    Ok(known)
}

/// The VLAN subinterfaces whose parent is `parent` (link kind "vlan",
/// IFLA_LINK = parent), by VLAN id. The datapath reads one tag, 802.1Q or
/// 802.1ad, so a link of either protocol serves its VLAN id.
async fn vlan_interfaces(
    handle: &rtnetlink::Handle,
    parent: u32,
) -> Result<VlanInterfaces, NeighError> {
    let mut links = handle.link().get().execute();
    let mut found = VlanInterfaces::new();
    while let Some(msg) = links
        .try_next()
        .await
        .map_err(|e| NeighError::Netlink(e.to_string()))?
    {
        if let Some((vlan, iface)) = vlan_link(&msg, parent) {
            found.insert(vlan, iface);
        }
    }
    Ok(found)
}

/// The VLAN id and name of `msg` if it is an 802.1Q link on `parent`.
fn vlan_link(msg: &LinkMessage, parent: u32) -> Option<(u16, VlanInterface)> {
    let mut on_parent = false;
    let mut name = None;
    let mut vlan = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Link(index) => on_parent = *index == parent,
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                let kind = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vlan)));
                for info in infos {
                    if let (true, LinkInfo::Data(InfoData::Vlan(data))) = (kind, info) {
                        vlan = data.iter().find_map(|d| match d {
                            InfoVlan::Id(id) => Some(*id),
                            _ => None,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    if !on_parent {
        return None;
    }
    Some((
        vlan?,
        VlanInterface {
            ifindex: msg.header.index,
            name: name?,
        },
    ))
}

/// An IPv4 entry whose MAC the kernel currently trusts, or that failed to
/// resolve; None for anything else (resolution under way).
fn entry(msg: &NeighbourMessage) -> Option<(IpAddr, Neighbour)> {
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
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                addr = Some(IpAddr::V4(*a))
            }
            // IPv6 neighbours (neighbour discovery) are in the same table.
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                addr = Some(IpAddr::V6(*a))
            }
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
/// resolve the next hop to send it (ARP for IPv4, a neighbour solicitation
/// for IPv6). Failures are ignored; the deadline and
/// the error that follows it tell the operator what is missing.
fn nudge(addrs: &[IpAddr]) {
    let v4 = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok();
    let v6 = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).ok();
    for a in addrs {
        let sock = if a.is_ipv4() { &v4 } else { &v6 };
        if let Some(sock) = sock {
            let _ = sock.send_to(&[], (*a, 9));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(
        index: u32,
        name: &str,
        parent: u32,
        kind: InfoKind,
        data: Option<InfoData>,
    ) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let mut info = vec![LinkInfo::Kind(kind)];
        info.extend(data.map(LinkInfo::Data));
        msg.attributes = vec![
            LinkAttribute::IfName(name.into()),
            LinkAttribute::Link(parent),
            LinkAttribute::LinkInfo(info),
        ];
        msg
    }

    #[test]
    fn two_arm_egress_is_the_interface_that_knows_the_mac() {
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 11));
        let mac = [2, 0, 0, 0, 0, 11];
        let mut table = HashMap::new();
        // Resolved on the backend side (3) only.
        table.insert((3, a), Neighbour::Known(mac));
        assert_eq!(
            on_either(&table, [2, 3], a),
            Some((3, Neighbour::Known(mac)))
        );
        // A failed entry on the client side (2) does not hide it.
        table.insert((2, a), Neighbour::Failed);
        assert_eq!(
            on_either(&table, [2, 3], a),
            Some((3, Neighbour::Known(mac)))
        );
        // Failed everywhere: the first interface's entry; unknown: none.
        table.insert((3, a), Neighbour::Failed);
        assert_eq!(on_either(&table, [2, 3], a), Some((2, Neighbour::Failed)));
        assert_eq!(
            on_either(&table, [2, 3], Ipv4Addr::new(10, 0, 2, 12).into()),
            None
        );
    }

    #[test]
    fn a_vlan_interface_is_found_by_kind_parent_and_id_not_by_name() {
        let vlan = |id| Some(InfoData::Vlan(vec![InfoVlan::Id(id)]));
        // eth0 is ifindex 2.
        let found = vlan_link(&link(7, "web-vlan", 2, InfoKind::Vlan, vlan(100)), 2);
        assert_eq!(
            found,
            Some((
                100,
                VlanInterface {
                    ifindex: 7,
                    name: "web-vlan".into()
                }
            ))
        );
        // The same id on another parent; a macvlan on eth0 named like a
        // VLAN interface; a VLAN link without its id.
        assert_eq!(
            vlan_link(&link(8, "eth1.100", 3, InfoKind::Vlan, vlan(100)), 2),
            None
        );
        assert_eq!(
            vlan_link(&link(9, "eth0.200", 2, InfoKind::MacVlan, None), 2),
            None
        );
        assert_eq!(
            vlan_link(&link(10, "eth0.300", 2, InfoKind::Vlan, None), 2),
            None
        );
        // eth0 itself has no IFLA_LINK.
        let mut eth0 = LinkMessage::default();
        eth0.header.index = 2;
        eth0.attributes = vec![LinkAttribute::IfName("eth0".into())];
        assert_eq!(vlan_link(&eth0, 2), None);
    }

    #[test]
    fn the_missing_interface_reason_says_how_to_create_it() {
        assert!(no_vlan_interface_reason("web100", 100, "eth0").starts_with(
            "VIP web100 is on VLAN 100 but eth0 has no VLAN 100 interface: \
             ip link add link eth0 name eth0.100 type vlan id 100"
        ));
    }
}
