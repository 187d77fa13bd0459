//! The IPv4 header as the datapath writes it (the `ipip` outer header, the
//! frag-needed reply's header), the link-layer framing around it, and the
//! Internet checksum (RFC 1071) of a header built in full.
use aya_ebpf::programs::XdpContext;

use crate::{
    parse::{ptr_at, EthHdr, ETH_HDR_LEN},
    verdict::Verdict,
};

pub const IPV4_HDR_LEN: usize = 20;
/// IPv4 flags+offset: Don't Fragment.
pub const IP_DF: u16 = 0x4000;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;
/// TTL of the headers the datapath writes (Linux's default).
pub const TTL: u8 = 64;
const ETH_P_8021Q: [u8; 2] = [0x81, 0x00];
const ETH_P_8021AD: [u8; 2] = [0x88, 0xa8];
const VLAN_HDR_LEN: usize = 4;

// Byte-array fields: alignment 1, valid at any packet offset, wire order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

impl Ipv4Hdr {
    /// A 20-byte header (no options, id 0) with its checksum computed.
    #[inline(always)]
    pub fn new(tos: u8, tot_len: u16, frag_off: u16, proto: u8, saddr: u32, daddr: u32) -> Self {
        let mut h = Ipv4Hdr {
            ver_ihl: 0x45,
            tos,
            tot_len: tot_len.to_be_bytes(),
            id: [0; 2],
            frag_off: frag_off.to_be_bytes(),
            ttl: TTL,
            proto,
            check: [0; 2],
            saddr: saddr.to_ne_bytes(),
            daddr: daddr.to_ne_bytes(),
        };
        let s = u32::from_be_bytes(h.saddr);
        let d = u32::from_be_bytes(h.daddr);
        let sum = (u32::from(h.ver_ihl) << 8 | u32::from(tos))
            + u32::from(tot_len)
            + u32::from(frag_off)
            + (u32::from(TTL) << 8 | u32::from(proto))
            + (s >> 16)
            + (s & 0xffff)
            + (d >> 16)
            + (d & 0xffff);
        h.check = fold(sum).to_be_bytes();
        h
    }
}

/// The one's complement of the one's-complement sum `sum` folded to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    // Two folds always suffice for a sum of fewer than 65536 words.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The frame's link-layer header: where the IPv4 header starts (after one
/// 802.1Q/802.1ad tag, if any; `parse::l3` refused anything else) and the
/// tag itself, which a frame the datapath rewrites keeps.
pub struct Framing {
    pub l3: usize,
    /// The EtherType field (the TPID when tagged) and the 4-byte tag.
    pub ethertype: [u8; 2],
    pub tag: Option<[u8; 4]>,
}

#[inline(always)]
pub fn framing(ctx: &XdpContext) -> Result<Framing, Verdict> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the header lies inside the frame.
    let ethertype = unsafe { (*eth).ethertype };
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag: *const [u8; 4] = ptr_at(ctx, ETH_HDR_LEN)?;
        return Ok(Framing {
            l3: ETH_HDR_LEN + VLAN_HDR_LEN,
            ethertype,
            // SAFETY: bounds checked by ptr_at.
            tag: Some(unsafe { *tag }),
        });
    }
    Ok(Framing {
        l3: ETH_HDR_LEN,
        ethertype,
        tag: None,
    })
}

/// Writes the Ethernet header (and the tag of `framing`) at the front of
/// the frame, as the frame's new link layer.
#[inline(always)]
pub fn write_framing(
    ctx: &XdpContext,
    framing: &Framing,
    dst: [u8; 6],
    src: [u8; 6],
) -> Result<(), Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the header lies inside the frame.
    unsafe {
        (*eth).dst = dst;
        (*eth).src = src;
        (*eth).ethertype = framing.ethertype;
    }
    if let Some(tag) = framing.tag {
        let at: *mut [u8; 4] = ptr_at(ctx, ETH_HDR_LEN)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { *at = tag };
    }
    Ok(())
}
