//! The frames `foobar backend-check` sends and recognises: ARP requests
//! and replies, a TCP SYN and the backend's SYN-ACK or RST. Plain functions
//! over bytes, unit-tested without a network.
use std::net::Ipv4Addr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// "who has `target`? tell `sender_ip`" from `sender_mac`, to `dst_mac`
/// (broadcast to discover, unicast to ask one host).
pub fn arp_request(
    dst_mac: [u8; 6],
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&ARP_REQUEST.to_be_bytes());
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// An ARP reply in `frame`: (sender MAC, sender IP).
pub fn arp_reply(frame: &[u8]) -> Option<([u8; 6], Ipv4Addr)> {
    if frame.len() < 42 || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let arp = &frame[14..];
    if arp[0..2] != 1u16.to_be_bytes()
        || arp[2..4] != ETH_P_IP.to_be_bytes()
        || arp[4..6] != [6, 4]
        || arp[6..8] != ARP_REPLY.to_be_bytes()
    {
        return None;
    }
    let mac: [u8; 6] = arp[8..14].try_into().ok()?;
    let ip = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
    Some((mac, ip))
}

/// The Internet checksum (RFC 1071) of `data`, seeded with `sum`.
fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP SYN from `src:sport` to `dst:dport`, in an Ethernet frame from
/// `src_mac` to `dst_mac`, with correct IP and TCP checksums (a packet
/// socket bypasses every offload).
pub struct Syn {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
}

impl Syn {
    pub fn frame(&self) -> Vec<u8> {
        let mut tcp = Vec::with_capacity(20);
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&0u32.to_be_bytes());
        tcp.extend_from_slice(&[5 << 4, TCP_SYN]);
        tcp.extend_from_slice(&64240u16.to_be_bytes()); // window
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
        let mut pseudo = 0u32;
        for half in [self.src.octets(), self.dst.octets()] {
            pseudo += u32::from(u16::from_be_bytes([half[0], half[1]]));
            pseudo += u32::from(u16::from_be_bytes([half[2], half[3]]));
        }
        pseudo += 6 + tcp.len() as u32;
        let sum = checksum(pseudo, &tcp);
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());

        let total = (20 + tcp.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0]); // id 0, don't fragment
        ip.extend_from_slice(&[64, 6, 0, 0]); // ttl, TCP, checksum
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        let sum = checksum(0, &ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());

        let mut f = Vec::with_capacity(14 + ip.len() + tcp.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&ETH_P_IP.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&tcp);
        f
    }

    /// What `frame` says about this SYN, if it is the answer to it: a TCP
    /// segment from dst:dport to src:sport with SYN+ACK or RST, sent by the
    /// host the SYN went to (a backend without the VIP that forwards the
    /// SYN to whoever does hold it must not pass for one that accepts it).
    pub fn answer(&self, frame: &[u8]) -> Option<Answer> {
        if frame.len() < 14 + 20 + 20
            || frame[6..12] != self.dst_mac
            || frame[12..14] != ETH_P_IP.to_be_bytes()
        {
            return None;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 6 || ip.len() < ihl + 20 {
            return None;
        }
        let (from, to) = (&ip[12..16], &ip[16..20]);
        if from != self.dst.octets() || to != self.src.octets() {
            return None;
        }
        let tcp = &ip[ihl..];
        let (sport, dport) = (
            u16::from_be_bytes([tcp[0], tcp[1]]),
            u16::from_be_bytes([tcp[2], tcp[3]]),
        );
        if sport != self.dport || dport != self.sport {
            return None;
        }
        let flags = tcp[13];
        if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            Some(Answer::SynAck)
        } else if flags & TCP_RST != 0 {
            Some(Answer::Rst)
        } else {
            None
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A service listens on the port.
    SynAck,
    /// The host took the packet as its own, but nothing listens there.
    Rst,
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn arp_request_and_reply_round_trip() {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        let req = arp_request([0xff; 6], A, ip, vip);
        assert_eq!(req.len(), 42);
        assert_eq!(&req[38..42], &vip.octets());
        assert_eq!(arp_reply(&req), None, "a request is not a reply");
        // The same frame turned into the reply B would send.
        let mut reply = req.clone();
        reply[20..22].copy_from_slice(&ARP_REPLY.to_be_bytes());
        reply[22..28].copy_from_slice(&B);
        reply[28..32].copy_from_slice(&vip.octets());
        assert_eq!(arp_reply(&reply), Some((B, vip)));
        assert_eq!(arp_reply(&reply[..41]), None);
    }

    #[test]
    fn syn_checksums_verify_and_answers_match_only_their_flow() {
        let syn = Syn {
            src_mac: A,
            dst_mac: B,
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(192, 0, 2, 10),
            sport: 40000,
            dport: 80,
            seq: 7,
        };
        let f = syn.frame();
        assert_eq!(f.len(), 54);
        // A correct checksum sums (with itself) to zero.
        assert_eq!(checksum(0, &f[14..34]), 0);
        let mut pseudo = 0u32;
        for w in f[26..34].chunks(2) {
            pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        assert_eq!(checksum(pseudo + 6 + 20, &f[34..]), 0);

        // The answer: addresses and ports swapped, flags set.
        let answer = |flags: u8| {
            let mut r = f.clone();
            r[0..6].copy_from_slice(&A);
            r[6..12].copy_from_slice(&B);
            r[26..30].copy_from_slice(&syn.dst.octets());
            r[30..34].copy_from_slice(&syn.src.octets());
            r[34..36].copy_from_slice(&80u16.to_be_bytes());
            r[36..38].copy_from_slice(&40000u16.to_be_bytes());
            r[47] = flags;
            r
        };
        assert_eq!(syn.answer(&answer(0x12)), Some(Answer::SynAck));
        assert_eq!(syn.answer(&answer(0x14)), Some(Answer::Rst));
        assert_eq!(syn.answer(&answer(0x10)), None, "a bare ACK");
        assert_eq!(syn.answer(&f), None, "our own SYN");
        let mut other = answer(0x12);
        other[36..38].copy_from_slice(&40001u16.to_be_bytes());
        assert_eq!(syn.answer(&other), None, "another flow");
        let mut forwarded = answer(0x12);
        forwarded[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 3]);
        assert_eq!(syn.answer(&forwarded), None, "from another host");
    }
}
