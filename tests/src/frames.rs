//! Packet fixtures built and checked with etherparse, an independent parser:
//! the expected output of the datapath is built here from a description,
//! never by calling foobar's code.
use etherparse::{
    icmpv4::DestUnreachableHeader, Icmpv4Type, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header,
    PacketBuilder, SlicedPacket, TransportSlice, VlanId,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    Icmp,
}

/// A frame described field by field; `build` writes it with correct lengths
/// and checksums.
#[derive(Clone, Debug)]
pub struct Spec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub l4: L4,
    pub sport: u16,
    pub dport: u16,
    pub ip_options: Vec<u8>,
    pub more_fragments: bool,
    /// TCP: an established flow's segment (ACK) instead of a SYN.
    pub ack: bool,
    pub payload: Vec<u8>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            src_mac: [0x02, 0, 0, 0, 0, 0x10],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlan: None,
            src: [198, 51, 100, 7],
            dst: [192, 0, 2, 10],
            l4: L4::Tcp,
            sport: 40000,
            dport: 80,
            ip_options: Vec::new(),
            more_fragments: false,
            ack: false,
            payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        }
    }
}

impl Spec {
    pub fn build(&self) -> Vec<u8> {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, self.src, self.dst)
            .expect("a payload length of 0 is valid");
        ip.options = self.ip_options[..]
            .try_into()
            .expect("IP options are a multiple of 4 bytes, at most 40");
        ip.more_fragments = self.more_fragments;
        let headers = IpHeaders::Ipv4(ip, Ipv4Extensions::default());
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let mut out = Vec::new();
        let ip_step = match self.vlan {
            Some(id) => eth
                .single_vlan(VlanId::try_new(id).expect("VLAN id < 4096"))
                .ip(headers),
            None => eth.ip(headers),
        };
        let written = match self.l4 {
            L4::Tcp if self.ack => ip_step
                .tcp(self.sport, self.dport, 1000, 64240)
                .ack(1)
                .write(&mut out, &self.payload),
            L4::Tcp => ip_step
                .tcp(self.sport, self.dport, 1000, 64240)
                .syn()
                .write(&mut out, &self.payload),
            L4::Udp => ip_step
                .udp(self.sport, self.dport)
                .write(&mut out, &self.payload),
            L4::Icmp => ip_step
                .icmpv4_echo_request(7, 1)
                .write(&mut out, &self.payload),
        };
        written.expect("etherparse writes the frame");
        out
    }
}

/// The ICMP "fragmentation needed" error a router at `router` sends to the
/// VIP when a backend's DSR reply of the flow `flow` (as the client sent
/// it) is too big for its next hop: it quotes the reply's IP header and
/// first 8 bytes. Addressed to the LB as the client's frames are.
pub fn frag_needed(flow: &Spec, router: [u8; 4], mtu: u16) -> Vec<u8> {
    let reply = Spec {
        src: flow.dst,
        dst: flow.src,
        sport: flow.dport,
        dport: flow.sport,
        vlan: None,
        payload: vec![0x55; 1400],
        ..flow.clone()
    }
    .build();
    // Ethernet header, then the reply's IP header and 8 bytes of its L4.
    let ihl = usize::from(reply[14] & 0x0f) * 4;
    let quoted = &reply[14..14 + ihl + 8];
    let ip = Ipv4Header::new(0, 64, IpNumber::ICMP, router, flow.dst)
        .expect("a payload length of 0 is valid");
    let eth = PacketBuilder::ethernet2(flow.src_mac, flow.dst_mac);
    let step = match flow.vlan {
        Some(id) => eth
            .single_vlan(VlanId::try_new(id).expect("VLAN id < 4096"))
            .ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default())),
        None => eth.ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default())),
    };
    let mut out = Vec::new();
    step.icmpv4(Icmpv4Type::DestinationUnreachable(
        DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
    ))
    .write(&mut out, quoted)
    .expect("etherparse writes the frame");
    out
}

/// An ICMP error of type `kind` from `src` to `dst` (Ethernet `src_mac` to
/// `dst_mac`, untagged) quoting `quoted`: an IP packet (its header and as
/// many bytes after it as the sender quotes). etherparse writes the outer
/// IPv4 and ICMP checksums.
pub fn icmp_error(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    kind: Icmpv4Type,
    quoted: &[u8],
) -> Vec<u8> {
    let ip =
        Ipv4Header::new(0, 64, IpNumber::ICMP, src, dst).expect("a payload length of 0 is valid");
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default()))
        .icmpv4(kind)
        .write(&mut out, quoted)
        .expect("etherparse writes the frame");
    out
}

/// The IP packet of an untagged Ethernet frame, its first `ihl + n` bytes
/// (`n` bytes after its IP header; None: all of it): what an ICMP error
/// about it quotes.
pub fn quote(frame: &[u8], n: Option<usize>) -> Vec<u8> {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    match n {
        Some(n) => ip[..ihl + n].to_vec(),
        None => ip.to_vec(),
    }
}

/// An ARP request (not IP).
pub fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x10, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x10, 198, 51, 100, 7]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 0, 2, 10]);
    f.resize(60, 0);
    f
}

/// An IPv6 TCP frame.
pub fn ipv6_tcp() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x10], [0x02, 0, 0, 0, 0, 0x02])
        .ipv6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10],
            64,
        )
        .tcp(40000, 80, 1, 1000)
        .write(&mut out, b"x")
        .expect("etherparse writes the frame");
    out
}

/// Checks, with etherparse, that a frame's IPv4 header checksum and TCP/UDP
/// checksum are correct. Returns a description of the first error.
pub fn check_checksums(frame: &[u8]) -> Result<(), String> {
    let sliced = SlicedPacket::from_ethernet(frame).map_err(|e| format!("parse: {e}"))?;
    let Some(etherparse::NetSlice::Ipv4(ipv4)) = &sliced.net else {
        return Err("not IPv4".into());
    };
    let header = ipv4.header().to_header();
    if header.header_checksum != header.calc_header_checksum() {
        return Err(format!(
            "IPv4 header checksum {:#06x}, should be {:#06x}",
            header.header_checksum,
            header.calc_header_checksum()
        ));
    }
    match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let h = tcp.to_header();
            let want = h
                .calc_checksum_ipv4(&header, tcp.payload())
                .map_err(|e| e.to_string())?;
            if h.checksum != want {
                return Err(format!(
                    "TCP checksum {:#06x}, should be {want:#06x}",
                    h.checksum
                ));
            }
        }
        Some(TransportSlice::Udp(udp)) => {
            let h = udp.to_header();
            let want = h
                .calc_checksum_ipv4(&header, udp.payload())
                .map_err(|e| e.to_string())?;
            if h.checksum != want {
                return Err(format!(
                    "UDP checksum {:#06x}, should be {want:#06x}",
                    h.checksum
                ));
            }
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            let want = icmp.header().icmp_type.calc_checksum(icmp.payload());
            if icmp.checksum() != want {
                return Err(format!(
                    "ICMP checksum {:#06x}, should be {want:#06x}",
                    icmp.checksum()
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Destination MAC of a frame.
pub fn dst_mac(frame: &[u8]) -> [u8; 6] {
    frame[..6]
        .try_into()
        .expect("a frame has 6 bytes of destination MAC")
}
