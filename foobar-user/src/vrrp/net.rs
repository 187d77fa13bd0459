//! VRRP's effects on the host: the raw IPv4 socket for protocol 112 (join
//! 224.0.0.18 on the interface, send with TTL 255 from its primary
//! address, receive with the IP header so the TTL can be checked), the
//! VIPs on the interface (rtnetlink), and gratuitous ARP (a packet
//! socket). It decides nothing: `machine` decides, `task` drives.
use std::{
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use futures::TryStreamExt as _;
use rtnetlink::packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::LinkAttribute,
};
use tokio::io::unix::AsyncFd;

use super::codec::{IPPROTO_VRRP, MULTICAST_V4, TTL};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("VRRP on {iface}: {what}: {source}")]
    Io {
        iface: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("VRRP on {iface}: netlink: {what}: {message}")]
    Netlink {
        iface: String,
        what: &'static str,
        message: String,
    },
    #[error("VRRP on {iface}: no such interface (see `ip link`)")]
    NoInterface { iface: String },
    #[error(
        "VRRP on {iface}: the interface has no IPv4 address of its own to send adverts from \
         (give it one: adverts carry the sender's primary address)"
    )]
    NoPrimaryAddress { iface: String },
    #[error(
        "VRRP on {iface}: unicast_source {source_addr} is not an address of this interface \
         (see `ip -4 addr show dev {iface}`)"
    )]
    SourceNotHere {
        iface: String,
        source_addr: Ipv4Addr,
    },
    #[error(
        "VRRP on {iface}: {name} exists and is not this instance's macvlan (a macvlan on \
         {iface} with the virtual MAC): remove it (`ip link del {name}`) or drop use_vmac"
    )]
    VmacTaken { iface: String, name: String },
    #[error(transparent)]
    Config(#[from] super::machine::ConfigError),
    #[error(transparent)]
    Encode(#[from] super::codec::EncodeError),
}

/// What the IPv4 header of a received packet said, and its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Packet<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub payload: &'a [u8],
}

/// Why a received IPv4 packet could not be read (counted as "length").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ipv4Error {
    #[error("IPv4 packet of {len} bytes is shorter than its header")]
    Short { len: usize },
    #[error("IPv4 header length {ihl_bytes} is invalid for a packet of {len} bytes")]
    HeaderLength { ihl_bytes: usize, len: usize },
    #[error("IPv4 total length {total} disagrees with the {len} bytes received")]
    TotalLength { total: usize, len: usize },
    #[error("not IPv4 protocol 112 (version {version}, protocol {protocol})")]
    NotVrrp { version: u8, protocol: u8 },
}

/// Split what a raw socket returns (the IPv4 header, options included,
/// then the payload), trusting no length it claims.
pub fn parse_ipv4(packet: &[u8]) -> Result<Ipv4Packet<'_>, Ipv4Error> {
    if packet.len() < 20 {
        return Err(Ipv4Error::Short { len: packet.len() });
    }
    let version = packet[0] >> 4;
    let protocol = packet[9];
    if version != 4 || protocol != IPPROTO_VRRP {
        return Err(Ipv4Error::NotVrrp { version, protocol });
    }
    let ihl_bytes = usize::from(packet[0] & 0x0f) * 4;
    if ihl_bytes < 20 || ihl_bytes > packet.len() {
        return Err(Ipv4Error::HeaderLength {
            ihl_bytes,
            len: packet.len(),
        });
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total != packet.len() {
        return Err(Ipv4Error::TotalLength {
            total,
            len: packet.len(),
        });
    }
    Ok(Ipv4Packet {
        src: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        dst: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
        ttl: packet[8],
        payload: &packet[ihl_bytes..],
    })
}

/// A gratuitous ARP for `vip` from `mac`: a broadcast ARP request whose
/// sender and target address are both the VIP (RFC 5227's announcement,
/// which is what keepalived and the kernel's arping send), so every
/// neighbour updates its entry for the VIP.
pub fn gratuitous_arp(mac: [u8; 6], vip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&vip.octets());
    // Target hardware address stays zero (ignored in a request).
    f[38..42].copy_from_slice(&vip.octets());
    f
}

/// The interface as VRRP needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    /// The first IPv4 address that is not one of the VIPs.
    pub primary: Ipv4Addr,
}

/// Netlink for one interface: look it up, add and remove the VIPs.
pub struct Addresses {
    pub(super) handle: rtnetlink::Handle,
    conn: tokio::task::JoinHandle<()>,
    iface: String,
}

impl Drop for Addresses {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Addresses {
    pub fn new(iface: &str) -> Result<Addresses, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetError::Io {
            iface: iface.to_owned(),
            what: "opening a netlink socket",
            source: e,
        })?;
        Ok(Addresses {
            handle,
            conn: tokio::spawn(conn),
            iface: iface.to_owned(),
        })
    }

    fn netlink(&self, what: &'static str) -> impl Fn(rtnetlink::Error) -> NetError + '_ {
        move |e| NetError::Netlink {
            iface: self.iface.clone(),
            what,
            message: e.to_string(),
        }
    }

    /// Index, MAC and primary address of the interface (VIPs skipped, so a
    /// daemon restarted while master still sends from the right address),
    /// or `source` as the primary address if given (and on the interface).
    pub async fn interface(
        &self,
        vips: &[Ipv4Addr],
        source: Option<Ipv4Addr>,
    ) -> Result<Interface, NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(self.iface.clone())
            .execute();
        let link = match links.try_next().await {
            Ok(Some(link)) => link,
            Ok(None) | Err(_) => {
                return Err(NetError::NoInterface {
                    iface: self.iface.clone(),
                })
            }
        };
        let index = link.header.index;
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
                _ => None,
            })
            .unwrap_or_default();
        let mut own = self
            .ipv4_addresses(index)
            .await?
            .into_iter()
            .map(|(addr, _)| addr);
        let primary = match source {
            Some(source) => own.find(|a| *a == source).ok_or(NetError::SourceNotHere {
                iface: self.iface.clone(),
                source_addr: source,
            })?,
            None => own
                .find(|a| !vips.contains(a))
                .ok_or_else(|| NetError::NoPrimaryAddress {
                    iface: self.iface.clone(),
                })?,
        };
        Ok(Interface {
            name: self.iface.clone(),
            index,
            mac,
            primary,
        })
    }

    async fn ipv4_addresses(
        &self,
        index: u32,
    ) -> Result<Vec<(Ipv4Addr, AddressMessage)>, NetError> {
        let mut found = Vec::new();
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(self.netlink("listing addresses"))?
        {
            let addr = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(a)) => Some(*a),
                _ => None,
            });
            if let Some(addr) = addr {
                found.push((addr, msg));
            }
        }
        Ok(found)
    }

    /// Add each VIP as a /32 (already there: fine).
    pub async fn add(&self, index: u32, vips: &[Ipv4Addr]) -> Result<(), NetError> {
        let present: Vec<Ipv4Addr> = self
            .ipv4_addresses(index)
            .await?
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        for vip in vips.iter().filter(|v| !present.contains(v)) {
            self.handle
                .address()
                .add(index, IpAddr::V4(*vip), 32)
                .execute()
                .await
                .map_err(self.netlink("adding a VIP"))?;
        }
        Ok(())
    }

    /// Remove each VIP that is on the interface (absent: fine).
    pub async fn remove(&self, index: u32, vips: &[Ipv4Addr]) -> Result<(), NetError> {
        for (addr, msg) in self.ipv4_addresses(index).await? {
            if vips.contains(&addr) {
                self.handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(self.netlink("removing a VIP"))?;
            }
        }
        Ok(())
    }
}

pub(super) fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live T and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(super) fn socket(domain: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            domain,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The raw socket adverts go out and come in on, bound to one interface.
pub struct AdvertSocket {
    fd: AsyncFd<OwnedFd>,
    iface: String,
}

impl AdvertSocket {
    /// Open it on `iface`, sending from `primary`: joined to 224.0.0.18,
    /// or, with `unicast`, bound to `primary` (the source of unicast sends,
    /// and the only destination it then receives).
    pub fn open(iface: &Interface, unicast: bool) -> Result<AdvertSocket, NetError> {
        let err = |what| {
            let name = iface.name.clone();
            move |source| NetError::Io {
                iface: name,
                what,
                source,
            }
        };
        let fd = socket(libc::AF_INET, libc::SOCK_RAW, i32::from(IPPROTO_VRRP)).map_err(err(
            "opening a raw socket for protocol 112 (needs CAP_NET_RAW)",
        ))?;
        let name = iface.name.as_bytes();
        // SAFETY: the name is passed with its length, no NUL needed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                name.as_ptr().cast(),
                name.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(err("binding the socket to the interface")(
                io::Error::last_os_error(),
            ));
        }
        let ttl: libc::c_int = TTL.into();
        setsockopt(&fd, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, &ttl)
            .map_err(err("setting the multicast TTL to 255"))?;
        setsockopt(&fd, libc::IPPROTO_IP, libc::IP_TTL, &ttl)
            .map_err(err("setting the TTL to 255"))?;
        if unicast {
            let at = sockaddr_in(iface.primary);
            // SAFETY: `at` outlives the call; the length is its size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&at as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(err("binding the socket to the unicast source address")(
                    io::Error::last_os_error(),
                ));
            }
            return AdvertSocket::register(fd, iface);
        }
        let no: libc::c_int = 0;
        setsockopt(&fd, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, &no)
            .map_err(err("turning multicast loopback off"))?;
        let mreq = |group: Ipv4Addr| libc::ip_mreqn {
            imr_multiaddr: libc::in_addr {
                s_addr: u32::from(group).to_be(),
            },
            imr_address: libc::in_addr {
                s_addr: u32::from(iface.primary).to_be(),
            },
            imr_ifindex: iface.index as i32,
        };
        // The source of multicast sends is the IP_MULTICAST_IF address.
        setsockopt(
            &fd,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            &mreq(Ipv4Addr::UNSPECIFIED),
        )
        .map_err(err("choosing the interface and source address"))?;
        setsockopt(
            &fd,
            libc::IPPROTO_IP,
            libc::IP_ADD_MEMBERSHIP,
            &mreq(MULTICAST_V4),
        )
        .map_err(err("joining 224.0.0.18"))?;
        AdvertSocket::register(fd, iface)
    }

    fn register(fd: OwnedFd, iface: &Interface) -> Result<AdvertSocket, NetError> {
        // SAFETY: the OwnedFd moves into the AsyncFd, which closes it only
        // when dropped; nothing else holds or replaces the descriptor.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| NetError::Io {
            iface: iface.name.clone(),
            what: "registering the socket",
            source: e.into_parts().1,
        })?;
        Ok(AdvertSocket {
            fd,
            iface: iface.name.clone(),
        })
    }

    pub fn send(&self, msg: &[u8], dst: Ipv4Addr) -> Result<(), NetError> {
        let to = sockaddr_in(dst);
        // SAFETY: msg and `to` outlive the call; lengths are theirs.
        let rc = unsafe {
            libc::sendto(
                self.fd.get_ref().as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(NetError::Io {
                iface: self.iface.clone(),
                what: "sending an advert",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Wait for the next packet; `buf` gets it whole (IPv4 header first).
    pub async fn recv(&self, buf: &mut [u8]) -> Result<usize, NetError> {
        loop {
            let mut guard = self.fd.readable().await.map_err(|source| NetError::Io {
                iface: self.iface.clone(),
                what: "waiting for adverts",
                source,
            })?;
            let got = guard.try_io(|fd| {
                // SAFETY: buf is writable for its length.
                let n = unsafe {
                    libc::recv(
                        fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match got {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(source)) => {
                    return Err(NetError::Io {
                        iface: self.iface.clone(),
                        what: "receiving adverts",
                        source,
                    })
                }
                Err(_would_block) => continue,
            }
        }
    }
}

/// Send `count` gratuitous ARPs for each VIP out of `iface`, from `mac`
/// (the interface's, or the instance's virtual MAC).
pub fn announce(
    iface: &Interface,
    mac: [u8; 6],
    vips: &[Ipv4Addr],
    count: u32,
) -> Result<(), NetError> {
    let err = |what| {
        let name = iface.name.clone();
        move |source| NetError::Io {
            iface: name,
            what,
            source,
        }
    };
    // Protocol 0: this socket only sends, it never receives.
    let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
        .map_err(err("opening a packet socket for gratuitous ARP"))?;
    // SAFETY: an all-zero sockaddr_ll is valid; the fields follow.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    to.sll_ifindex = iface.index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for _ in 0..count {
        for vip in vips {
            let frame = gratuitous_arp(mac, *vip);
            // SAFETY: frame and `to` outlive the call; lengths are theirs.
            let rc = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(err("sending a gratuitous ARP")(io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header laid out by hand (checksum left zero: the kernel has
    /// checked it before a raw socket sees the packet).
    fn packet(ihl_words: u8, ttl: u8, protocol: u8, payload: &[u8], options: &[u8]) -> Vec<u8> {
        let total = 20 + options.len() + payload.len();
        let mut p = vec![
            0x40 | ihl_words,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            ttl,
            protocol,
            0,
            0,
            192,
            168,
            1,
            10,
            224,
            0,
            0,
            18,
        ];
        p.extend_from_slice(options);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn parse_ipv4_finds_the_payload_after_options() {
        let payload = [0x31, 51, 100, 1, 0, 100, 0xab, 0xcd, 10, 0, 0, 100];
        let p = packet(5, 255, 112, &payload, &[]);
        let parsed = parse_ipv4(&p).unwrap();
        assert_eq!(parsed.ttl, 255);
        assert_eq!(parsed.src, Ipv4Addr::new(192, 168, 1, 10));
        assert_eq!(parsed.dst, Ipv4Addr::new(224, 0, 0, 18));
        assert_eq!(parsed.payload, payload);
        // Router alert option (4 bytes): the payload starts at ihl * 4.
        let p = packet(6, 254, 112, &payload, &[0x94, 0x04, 0, 0]);
        let parsed = parse_ipv4(&p).unwrap();
        assert_eq!(parsed.ttl, 254);
        assert_eq!(parsed.payload, payload);
    }

    #[test]
    fn parse_ipv4_trusts_no_length() {
        let payload = [0u8; 12];
        let good = packet(5, 255, 112, &payload, &[]);
        assert_eq!(parse_ipv4(&good[..19]), Err(Ipv4Error::Short { len: 19 }));
        assert_eq!(
            parse_ipv4(&packet(4, 255, 112, &payload, &[])),
            Err(Ipv4Error::HeaderLength {
                ihl_bytes: 16,
                len: 32
            })
        );
        let mut long_ihl = packet(15, 255, 112, &[], &[]);
        long_ihl.truncate(20);
        long_ihl[3] = 20;
        assert_eq!(
            parse_ipv4(&long_ihl),
            Err(Ipv4Error::HeaderLength {
                ihl_bytes: 60,
                len: 20
            })
        );
        assert_eq!(
            parse_ipv4(&good[..31]),
            Err(Ipv4Error::TotalLength { total: 32, len: 31 })
        );
        assert_eq!(
            parse_ipv4(&packet(5, 255, 6, &payload, &[])),
            Err(Ipv4Error::NotVrrp {
                version: 4,
                protocol: 6
            })
        );
        let mut v6 = good.clone();
        v6[0] = 0x65;
        assert_eq!(
            parse_ipv4(&v6),
            Err(Ipv4Error::NotVrrp {
                version: 6,
                protocol: 112
            })
        );
    }

    #[test]
    fn gratuitous_arp_is_a_broadcast_request_for_the_vip() {
        let mac = [0x02, 0, 0, 0, 0, 0x01];
        let frame = gratuitous_arp(mac, Ipv4Addr::new(10, 0, 0, 100));
        #[rustfmt::skip]
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // to everyone
            0x02, 0, 0, 0, 0, 0x01,             // from us
            0x08, 0x06,                         // ARP
            0x00, 0x01, 0x08, 0x00, 6, 4,       // Ethernet/IPv4
            0x00, 0x01,                         // request
            0x02, 0, 0, 0, 0, 0x01, 10, 0, 0, 100, // sender: us, the VIP
            0, 0, 0, 0, 0, 0, 10, 0, 0, 100,       // target: the VIP
        ];
        assert_eq!(frame, want);
    }
}
