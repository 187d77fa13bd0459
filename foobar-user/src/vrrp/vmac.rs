//! keepalived's `use_vmac`: an instance holds its addresses under the
//! VRRP virtual MAC 00:00:5e:00:01:VRID, so the clients' ARP entries stay
//! the same across a failover (the new master answers for the same MAC).
//!
//! - The addresses live on a macvlan (mode private) on the interface,
//!   named `vrrp.VRID`, whose MAC is the virtual MAC: the kernel answers
//!   ARP for them from it, and the macvlan puts the virtual MAC in the
//!   NIC's unicast filter while it is up. It is up only while master; a
//!   backup sets it down (the MAC leaves the filter, nothing answers).
//! - The interface gets `arp_ignore = 1` (answer ARP only for its own
//!   addresses: the VIPs are the macvlan's, answered from the virtual MAC)
//!   and `arp_announce = 2` (its ARP requests never carry a VIP as the
//!   sender, which would move the clients' entries to the physical MAC);
//!   both are put back when the instance stops.
//! - Adverts leave as whole Ethernet frames from the virtual MAC on a
//!   packet socket of the interface (so the switch learns it on the
//!   master's port from the first advert), gratuitous ARPs likewise.
//!
//! The XDP program accepts frames to the virtual MAC of each `use_vmac`
//! VRID as its own (the `VMAC_VRIDS` global, set at load): it runs on the
//! interface before the macvlan's receive handler.
use std::{
    io,
    mem::size_of,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, OwnedFd},
};

use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::link::{InfoKind, LinkAttribute, LinkInfo, MacVlanMode},
    LinkMacVlan, LinkUnspec,
};
use tracing::{info, warn};

use super::{
    codec::{IPPROTO_VRRP, MULTICAST_V4, TTL},
    net::{socket, Addresses, Interface, NetError},
};

/// The VRRP (IPv4) virtual MAC of `vrid` (RFC 5798 §7.3).
pub fn mac(vrid: u8) -> [u8; 6] {
    [0x00, 0x00, 0x5e, 0x00, 0x01, vrid]
}

/// The macvlan's name, as keepalived names its own.
pub fn macvlan_name(vrid: u8) -> String {
    format!("vrrp.{vrid}")
}

/// The Ethernet MAC of an IPv4 multicast group (RFC 1112 §6.4).
pub fn multicast_mac(group: Ipv4Addr) -> [u8; 6] {
    let o = group.octets();
    [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
}

/// RFC 1071 over an IPv4 header.
fn ip_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|p| u32::from(p[0]) << 8 | u32::from(p[1]))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An advert as a whole frame: Ethernet from `src_mac` to the group's MAC
/// (adverts under a virtual MAC are multicast only), an IPv4 header as the
/// kernel writes it for the raw socket (TTL 255, protocol 112, DF unset),
/// with keepalived's TOS 0xc0, then `advert` (already encoded, checksum
/// over `src` and 224.0.0.18).
pub fn advert_frame(src_mac: [u8; 6], src: Ipv4Addr, advert: &[u8]) -> Vec<u8> {
    let dst = MULTICAST_V4;
    let total = 20 + advert.len();
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&multicast_mac(dst));
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[1] = 0xc0;
    // At most 20 + 8 + 4 * 255 bytes.
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = TTL;
    ip[9] = IPPROTO_VRRP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(advert);
    f
}

/// A send-only packet socket on the interface, for adverts from the
/// virtual MAC.
pub struct FrameSocket {
    fd: OwnedFd,
    iface: String,
    index: u32,
}

impl FrameSocket {
    pub fn open(iface: &Interface) -> Result<FrameSocket, NetError> {
        // Protocol 0: this socket only sends, it never receives.
        let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0).map_err(|source| NetError::Io {
            iface: iface.name.clone(),
            what: "opening a packet socket for adverts from the virtual MAC",
            source,
        })?;
        Ok(FrameSocket {
            fd,
            iface: iface.name.clone(),
            index: iface.index,
        })
    }

    /// Send a whole Ethernet frame as it is.
    pub fn send(&self, frame: &[u8]) -> Result<(), NetError> {
        // SAFETY: an all-zero sockaddr_ll is valid; the fields follow.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        to.sll_ifindex = self.index as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and `to` outlive the call; lengths are theirs.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(NetError::Io {
                iface: self.iface.clone(),
                what: "sending an advert from the virtual MAC",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// A `net.ipv4.conf.IFACE.KEY` value this instance changed, to put back.
struct Sysctl {
    path: String,
    before: String,
}

fn sysctl_path(family: &str, iface: &str, key: &str) -> String {
    format!("/proc/sys/net/{family}/conf/{iface}/{key}")
}

/// Set `path` to `value`; the old value if it differed.
fn set_sysctl(path: &str, value: &str) -> io::Result<Option<Sysctl>> {
    let before = std::fs::read_to_string(path)?.trim().to_owned();
    if before == value {
        return Ok(None);
    }
    std::fs::write(path, value)?;
    Ok(Some(Sysctl {
        path: path.to_owned(),
        before,
    }))
}

/// The instance's macvlan: created (or taken over from an earlier run)
/// down, up while master.
pub struct Macvlan {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    /// Netlink on the macvlan: its addresses.
    pub addresses: Addresses,
    restore: Vec<Sysctl>,
}

impl Macvlan {
    /// Create `vrrp.VRID` on `parent` with the virtual MAC, down, and set
    /// the sysctls above. One left by an earlier run (kill -9) with the
    /// same parent and MAC is taken over and set down; any other interface
    /// of that name is refused.
    pub async fn create(
        parent_nl: &Addresses,
        parent: &Interface,
        vrid: u8,
    ) -> Result<Macvlan, NetError> {
        let name = macvlan_name(vrid);
        let mac = mac(vrid);
        let netlink = |what: &'static str| {
            let iface = parent.name.clone();
            move |e: rtnetlink::Error| NetError::Netlink {
                iface,
                what,
                message: e.to_string(),
            }
        };
        let handle = &parent_nl.handle;
        let existing = handle
            .link()
            .get()
            .match_name(name.clone())
            .execute()
            .try_next()
            .await
            .ok()
            .flatten();
        let index = match existing {
            Some(link) => {
                let attrs = &link.attributes;
                let kind_ok = attrs.iter().any(|a| {
                    matches!(a, LinkAttribute::LinkInfo(infos)
                        if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::MacVlan))))
                });
                let parent_ok = attrs
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::Link(i) if *i == parent.index));
                let mac_ok = attrs
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::Address(m) if m.as_slice() == mac));
                if !(kind_ok && parent_ok && mac_ok) {
                    return Err(NetError::VmacTaken {
                        iface: parent.name.clone(),
                        name,
                    });
                }
                info!(vrid, macvlan = %name, "taking over the macvlan an earlier run left");
                link.header.index
            }
            None => {
                handle
                    .link()
                    .add(
                        LinkMacVlan::new(&name, parent.index, MacVlanMode::Private)
                            .address(mac.to_vec())
                            .down()
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(netlink("creating the macvlan for the virtual MAC (is the macvlan module available?)"))?;
                let mut links = handle.link().get().match_name(name.clone()).execute();
                match links.try_next().await {
                    Ok(Some(link)) => link.header.index,
                    _ => return Err(NetError::NoInterface { iface: name }),
                }
            }
        };
        let addresses = Addresses::new(&name)?;
        let mut vlan = Macvlan {
            name,
            index,
            mac,
            addresses,
            restore: Vec::new(),
        };
        vlan.set_down(parent_nl).await?;
        // No IPv6 on the macvlan: no link-local address, no neighbour
        // discovery from the virtual MAC (absent without IPv6: fine).
        let _ = set_sysctl(&sysctl_path("ipv6", &vlan.name, "disable_ipv6"), "1");
        // Packets to the VIPs arrive on the macvlan while the route back
        // to the client is on the parent: no strict reverse-path check
        // there (the effective value is the larger of this and `all`).
        let sysctls = [
            (vlan.name.clone(), "rp_filter", "0"),
            (parent.name.clone(), "arp_ignore", "1"),
            (parent.name.clone(), "arp_announce", "2"),
        ];
        for (iface, key, value) in sysctls {
            let path = sysctl_path("ipv4", &iface, key);
            match set_sysctl(&path, value) {
                Ok(Some(changed)) if iface == parent.name => vlan.restore.push(changed),
                Ok(_) => {}
                Err(source) => {
                    return Err(NetError::Io {
                        iface,
                        what: "setting a sysctl for the virtual MAC",
                        source,
                    })
                }
            }
        }
        Ok(vlan)
    }

    async fn set(&self, nl: &Addresses, up: bool) -> Result<(), NetError> {
        let msg = LinkUnspec::new_with_index(self.index);
        let msg = if up { msg.up() } else { msg.down() };
        nl.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|e| NetError::Netlink {
                iface: self.name.clone(),
                what: if up {
                    "setting the macvlan up"
                } else {
                    "setting the macvlan down"
                },
                message: e.to_string(),
            })
    }

    /// Master: up (the virtual MAC joins the NIC's filter), then the VIPs.
    pub async fn hold(&self, nl: &Addresses, vips: &[Ipv4Addr]) -> Result<(), NetError> {
        self.set(nl, true).await?;
        self.addresses.add(self.index, vips).await
    }

    /// Backup: the VIPs removed and down (nothing answers for the virtual
    /// MAC here; the switch learns it on the new master's port).
    pub async fn release(&self, nl: &Addresses, vips: &[Ipv4Addr]) -> Result<(), NetError> {
        let removed = self.addresses.remove(self.index, vips).await;
        self.set_down(nl).await?;
        removed
    }

    async fn set_down(&self, nl: &Addresses) -> Result<(), NetError> {
        self.set(nl, false).await
    }

    /// Shutdown: the macvlan deleted (its addresses with it), the
    /// parent's sysctls put back.
    pub async fn delete(&self, nl: &Addresses) {
        if let Err(e) = nl.handle.link().del(self.index).execute().await {
            warn!(macvlan = %self.name, %e, "deleting the macvlan failed; remove it with `ip link del`");
        }
        for s in self.restore.iter().rev() {
            if let Err(e) = std::fs::write(&s.path, &s.before) {
                warn!(path = %s.path, %e, "putting a sysctl back failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vrrp::codec::{self, Advert};

    #[test]
    fn the_virtual_mac_carries_the_vrid() {
        assert_eq!(mac(51), [0, 0, 0x5e, 0, 1, 51]);
        assert_eq!(mac(255), [0, 0, 0x5e, 0, 1, 0xff]);
        assert_eq!(macvlan_name(51), "vrrp.51");
        assert!(macvlan_name(255).len() <= 15, "IFNAMSIZ");
        assert_eq!(multicast_mac(MULTICAST_V4), [1, 0, 0x5e, 0, 0, 18]);
        assert_eq!(
            multicast_mac(Ipv4Addr::new(239, 200, 1, 2)),
            [1, 0, 0x5e, 0x48, 1, 2]
        );
    }

    #[test]
    fn an_advert_frame_comes_from_the_virtual_mac_and_decodes() {
        let src = Ipv4Addr::new(10, 201, 0, 2);
        let advert = Advert {
            vrid: 51,
            priority: 200,
            interval_cs: 100,
            addrs: vec![Ipv4Addr::new(10, 201, 0, 100)],
        };
        let bytes = advert.encode(src, MULTICAST_V4).unwrap();
        let f = advert_frame(mac(51), src, &bytes);
        assert_eq!(f.len(), 14 + 20 + bytes.len());
        assert_eq!(&f[0..6], &[1, 0, 0x5e, 0, 0, 18], "to the group's MAC");
        assert_eq!(&f[6..12], &mac(51), "from the virtual MAC");
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        // The IPv4 header as a receiver reads it, checksum included.
        let ip = &f[14..34];
        assert_eq!(ip_checksum(ip), 0, "a valid header sums to zero");
        let parsed = super::super::net::parse_ipv4(&f[14..]).unwrap();
        assert_eq!(
            (parsed.src, parsed.dst, parsed.ttl),
            (src, MULTICAST_V4, 255)
        );
        let back = Advert::decode(parsed.payload, parsed.src, parsed.dst).unwrap();
        assert_eq!(back, advert);
        assert_eq!(
            codec::checksum(src, MULTICAST_V4, parsed.payload),
            0,
            "the VRRP checksum holds"
        );
    }

    #[test]
    fn the_ip_checksum_matches_a_known_header() {
        // RFC 1071's usual example header (checksum field zeroed): 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ip_checksum(&h), 0xb861);
    }

    #[test]
    fn a_gratuitous_arp_from_the_virtual_mac_names_it_as_sender() {
        let vip = Ipv4Addr::new(10, 201, 0, 100);
        let f = super::super::net::gratuitous_arp(mac(51), vip);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac(51), "Ethernet source");
        assert_eq!(&f[22..28], &mac(51), "sender hardware address");
        assert_eq!(&f[28..32], &vip.octets());
        assert_eq!(&f[38..42], &vip.octets());
    }
}
