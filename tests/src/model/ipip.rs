//! The `ipip` mode from docs/IPIP.md: the client's packet inside an outer
//! IPv4 header to the backend, or, when that would exceed the MTU, ICMP
//! "fragmentation needed" back to the client (DF) or a drop.
use super::{
    wire::{be16, checksum},
    Backend, Model, Packet, Reason, Verdict, XDP_DROP,
};

const IP_DF: u16 = 0x4000;
const OVERHEAD: usize = 20;
const TTL: u8 = 64;

pub(super) enum Encapsulated {
    Frame(Vec<u8>),
    /// The packet did not fit: the ICMP frame sent back instead.
    FragNeeded(Vec<u8>),
}

impl Model {
    pub(super) fn ipip_forward(
        &self,
        f: &[u8],
        pkt: &Packet,
        backend: &Backend,
    ) -> Result<Encapsulated, Verdict> {
        let l3 = pkt.l3;
        let inner_len = usize::from(be16(f, l3 + 2));
        let frag = be16(f, l3 + 6);
        let outer_len = inner_len + OVERHEAD;
        if outer_len > self.ipip.mtu as usize {
            if frag & IP_DF != 0 {
                return Ok(Encapsulated::FragNeeded(self.frag_needed(f, pkt)));
            }
            return Err((XDP_DROP, Reason::TooBig));
        }
        let mut out = self.rewrite_macs(&f[..l3], &backend.mac);
        let source = self.outer_source(pkt);
        out.extend(header(
            f[l3 + 1],
            outer_len as u16,
            frag & IP_DF,
            4,
            source,
            backend.addr_be.to_ne_bytes(),
        ));
        out.extend_from_slice(&f[l3..]);
        Ok(Encapsulated::Frame(out))
    }

    /// docs/IPIP.md: x = src ^ (sport | dport << 16) over the words as the
    /// CPU loads the packet's bytes, x *= 0x9e3779b1, x ^= x >> 16; the
    /// source is the prefix with x's host bits.
    fn outer_source(&self, pkt: &Packet) -> [u8; 4] {
        let k = &pkt.key;
        let mut x = k.src_be ^ (u32::from(k.sport_be) | (u32::from(k.dport_be) << 16));
        x = x.wrapping_mul(0x9e37_79b1);
        x ^= x >> 16;
        let host = u32::MAX
            .checked_shr(u32::from(self.ipip.prefix_len))
            .unwrap_or(0);
        let net = u32::from(self.ipip.source) & !host;
        // Host bits from x as the CPU holds it: mask in memory order.
        let host_mem = u32::from_ne_bytes(host.to_be_bytes());
        let net_mem = u32::from_ne_bytes(net.to_be_bytes());
        (net_mem | (x & host_mem)).to_ne_bytes()
    }

    /// RFC 792/1191: from the VIP (the frame's destination) to the sender,
    /// quoting the IP header and 8 bytes, next-hop MTU = MTU − 20; the
    /// Ethernet header turned around, a VLAN tag kept.
    fn frag_needed(&self, f: &[u8], pkt: &Packet) -> Vec<u8> {
        let l3 = pkt.l3;
        let quoted = &f[l3..l3 + pkt.ip.ihl + 8];
        let mut out = f[..l3].to_vec();
        out[0..6].copy_from_slice(&f[6..12]);
        out[6..12].copy_from_slice(&self.lb_mac);
        out.extend(header(
            0,
            (20 + 8 + quoted.len()) as u16,
            0,
            1,
            f[l3 + 16..l3 + 20].try_into().expect("4 bytes"),
            f[l3 + 12..l3 + 16].try_into().expect("4 bytes"),
        ));
        let mtu = (self.ipip.mtu as usize - OVERHEAD) as u16;
        let mut icmp = vec![3, 4, 0, 0, 0, 0];
        icmp.extend_from_slice(&mtu.to_be_bytes());
        icmp.extend_from_slice(quoted);
        let c = checksum(&icmp, 2, 0);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        out.extend(icmp);
        out
    }
}

/// An IPv4 header without options: id 0, TTL 64, checksum computed.
fn header(tos: u8, len: u16, frag: u16, proto: u8, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut h = vec![0x45, tos];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[TTL, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = checksum(&h, 10, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}
