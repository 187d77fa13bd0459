//! The VRRPv3 advertisement for IPv4 (RFC 5798 §5) as bytes: encode,
//! decode, and the receive-side checks that need our instance's view.
//! Plain functions over plain data; it never touches a socket.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IPvX Address(es)                        |
//! ```
use std::net::Ipv4Addr;

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// The IPv4 multicast group adverts are sent to.
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The only TTL a valid advert arrives with (RFC 5798 §5.1.1.3).
pub const TTL: u8 = 255;
/// Version 3 of the protocol, type 1 (ADVERTISEMENT).
pub const VERSION: u8 = 3;
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Fixed part of the message, before the address list.
pub const HEADER_LEN: usize = 8;
/// Max Adver Int is a 12-bit count of centiseconds.
pub const MAX_ADVERT_INTERVAL_CS: u16 = 0x0fff;
/// Priority of the address owner, and of a master giving up.
pub const PRIORITY_OWNER: u8 = 255;
pub const PRIORITY_RESIGN: u8 = 0;

/// One advertisement, as the wire carries it (minus the checksum).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    pub vrid: u8,
    pub priority: u8,
    /// Max Adver Int, in centiseconds (12 bits).
    pub interval_cs: u16,
    pub addrs: Vec<Ipv4Addr>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "VRRP advert interval {interval_cs} cs does not fit the 12-bit field \
         (1..=4095 cs, i.e. 10 ms to 40.95 s): pick a shorter advert interval"
    )]
    Interval { interval_cs: u16 },
    #[error(
        "VRRP instance {vrid} has {count} addresses; an advert carries 1 to 255: \
         split them across instances"
    )]
    AddressCount { vrid: u8, count: usize },
}

/// Why a received message is not a well-formed VRRPv3 advertisement.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("VRRP message of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("VRRP version {0} (only version 3 is spoken here; is the peer keepalived with vrrp_version 2?)")]
    Version(u8),
    #[error("VRRP type {0} (only 1, ADVERTISEMENT, exists)")]
    Type(u8),
    #[error("VRRP message of {len} bytes does not match its count of {count} IPv4 addresses ({expected} bytes)")]
    Length {
        len: usize,
        count: u8,
        expected: usize,
    },
    #[error("VRRP checksum 0x{received:04x} is wrong (0x{computed:04x} over the pseudo-header {src} -> {dst})")]
    Checksum {
        received: u16,
        computed: u16,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    },
}

impl DecodeError {
    /// The counter this error is counted under.
    pub fn reason(&self) -> DropReason {
        match self {
            DecodeError::TooShort { .. } | DecodeError::Length { .. } => DropReason::Length,
            DecodeError::Version(_) => DropReason::Version,
            DecodeError::Type(_) => DropReason::Type,
            DecodeError::Checksum { .. } => DropReason::Checksum,
        }
    }
}

impl Advert {
    /// The message (header, address list, checksum filled in) as sent from
    /// `src` to `dst` (the multicast group, or a unicast peer: the checksum
    /// covers the pseudo-header, so it depends on both).
    pub fn encode(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Vec<u8>, EncodeError> {
        if self.interval_cs == 0 || self.interval_cs > MAX_ADVERT_INTERVAL_CS {
            return Err(EncodeError::Interval {
                interval_cs: self.interval_cs,
            });
        }
        let count = u8::try_from(self.addrs.len())
            .ok()
            .filter(|&c| c > 0)
            .ok_or(EncodeError::AddressCount {
                vrid: self.vrid,
                count: self.addrs.len(),
            })?;
        let mut out = Vec::with_capacity(HEADER_LEN + 4 * self.addrs.len());
        out.push(VERSION << 4 | TYPE_ADVERTISEMENT);
        out.push(self.vrid);
        out.push(self.priority);
        out.push(count);
        // The 4 reserved bits above the interval are sent as zero.
        out.extend_from_slice(&self.interval_cs.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        for addr in &self.addrs {
            out.extend_from_slice(&addr.octets());
        }
        let sum = checksum(src, dst, &out);
        out[6..8].copy_from_slice(&sum.to_be_bytes());
        Ok(out)
    }

    /// Parse the VRRP part of a packet (what follows the IPv4 header) that
    /// came from `src` to `dst`. Checks everything the message alone can
    /// tell: version, type, length against the count, checksum.
    pub fn decode(msg: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<Advert, DecodeError> {
        if msg.len() < HEADER_LEN {
            return Err(DecodeError::TooShort { len: msg.len() });
        }
        let version = msg[0] >> 4;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let kind = msg[0] & 0x0f;
        if kind != TYPE_ADVERTISEMENT {
            return Err(DecodeError::Type(kind));
        }
        let count = msg[3];
        let expected = HEADER_LEN + 4 * usize::from(count);
        if msg.len() != expected {
            return Err(DecodeError::Length {
                len: msg.len(),
                count,
                expected,
            });
        }
        // A correct checksum makes the sum over the whole message, its own
        // checksum field included, come out as zero.
        let verify = checksum(src, dst, msg);
        if verify != 0 {
            let received = u16::from_be_bytes([msg[6], msg[7]]);
            let mut zeroed = msg.to_vec();
            zeroed[6..8].fill(0);
            return Err(DecodeError::Checksum {
                received,
                computed: checksum(src, dst, &zeroed),
                src,
                dst,
            });
        }
        Ok(Advert {
            vrid: msg[1],
            priority: msg[2],
            interval_cs: u16::from_be_bytes([msg[4], msg[5]]) & MAX_ADVERT_INTERVAL_CS,
            addrs: msg[HEADER_LEN..]
                .chunks_exact(4)
                .map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]))
                .collect(),
        })
    }
}

/// The Internet checksum (RFC 1071) of the IPv4 pseudo-header (src, dst,
/// zero, protocol 112, VRRP length) followed by `msg`.
pub fn checksum(src: Ipv4Addr, dst: Ipv4Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).copied().map_or(0, u32::from);
            sum += hi | lo;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    // A message is at most 8 + 4 * 255 bytes, so its length fits 16 bits.
    let len = msg.len() as u16;
    add(&[0, IPPROTO_VRRP]);
    add(&len.to_be_bytes());
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Why a received advert was dropped, one counter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// IPv4 TTL was not 255: the advert crossed a router (or was forged).
    Ttl,
    Version,
    Type,
    /// Shorter than the header, or a length that disagrees with the count.
    Length,
    Checksum,
    /// A VRID this instance does not run (counted, never logged per packet).
    OtherVrid,
    /// We own the addresses (priority 255): RFC 5798 §7.1 has the owner
    /// ignore every advert.
    LocalOwner,
    /// Our own advert, looped back.
    OwnAdvert,
    /// The address list differs from ours: a misconfiguration on one side.
    AddressList,
    /// Unicast mode: the sender is not one of our `unicast_peers`.
    NotAPeer,
    /// A zero interval would have the backup time out at once.
    ZeroInterval,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::Ttl,
        DropReason::Version,
        DropReason::Type,
        DropReason::Length,
        DropReason::Checksum,
        DropReason::OtherVrid,
        DropReason::LocalOwner,
        DropReason::OwnAdvert,
        DropReason::AddressList,
        DropReason::ZeroInterval,
        DropReason::NotAPeer,
    ];

    /// Label for metrics and `foobar status`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Ttl => "ttl",
            DropReason::Version => "version",
            DropReason::Type => "type",
            DropReason::Length => "length",
            DropReason::Checksum => "checksum",
            DropReason::OtherVrid => "other_vrid",
            DropReason::LocalOwner => "local_owner",
            DropReason::OwnAdvert => "own_advert",
            DropReason::AddressList => "address_list",
            DropReason::ZeroInterval => "zero_interval",
            DropReason::NotAPeer => "not_a_peer",
        }
    }
}

/// An advert as it arrived: decoded, with what the IP header said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub src: Ipv4Addr,
    pub ttl: u8,
    pub advert: Advert,
}

/// What the receive checks need to know of our instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance<'a> {
    pub vrid: u8,
    /// Configured priority (255: we own the addresses).
    pub priority: u8,
    /// The address we send from (the interface's primary address).
    pub primary: Ipv4Addr,
    pub addrs: &'a [Ipv4Addr],
    /// Unicast mode (non-empty): adverts are accepted from these senders
    /// only, and their TTL is not checked (peers may be routed), as
    /// keepalived does with `unicast_peer` and `check_unicast_src`.
    pub unicast_peers: &'a [Ipv4Addr],
}

/// The receive-side checks of RFC 5798 §7.1 that need our instance: the
/// TTL, the VRID, ownership, our own loopback, and the address list (which
/// the RFC leaves to log-only; we drop, like keepalived, so a misconfigured
/// pair never elects over different addresses). The order is the order of
/// the counters' precedence: the first failing check is the reason.
pub fn validate(received: &Received, ours: &Instance<'_>) -> Result<(), DropReason> {
    let unicast = !ours.unicast_peers.is_empty();
    if !unicast && received.ttl != TTL {
        return Err(DropReason::Ttl);
    }
    let advert = &received.advert;
    if advert.vrid != ours.vrid {
        return Err(DropReason::OtherVrid);
    }
    if received.src == ours.primary {
        return Err(DropReason::OwnAdvert);
    }
    if unicast && !ours.unicast_peers.contains(&received.src) {
        return Err(DropReason::NotAPeer);
    }
    if ours.priority == PRIORITY_OWNER {
        return Err(DropReason::LocalOwner);
    }
    if advert.interval_cs == 0 {
        return Err(DropReason::ZeroInterval);
    }
    // Order does not matter (keepalived compares the sets too).
    let mut theirs = advert.addrs.clone();
    let mut mine = ours.addrs.to_vec();
    theirs.sort_unstable();
    mine.sort_unstable();
    if theirs != mine {
        return Err(DropReason::AddressList);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);

    /// RFC 1071 done the slow, obvious way, independent of `checksum`:
    /// build the pseudo-header bytes, pad to even, sum 16-bit words in a
    /// u64, fold, complement.
    fn reference_checksum(src: [u8; 4], dst: [u8; 4], msg: &[u8]) -> [u8; 2] {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src);
        bytes.extend_from_slice(&dst);
        bytes.push(0);
        bytes.push(112);
        bytes.push((msg.len() >> 8) as u8);
        bytes.push((msg.len() & 0xff) as u8);
        bytes.extend_from_slice(msg);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut total: u64 = 0;
        for i in (0..bytes.len()).step_by(2) {
            total += (bytes[i] as u64) * 256 + bytes[i + 1] as u64;
        }
        while total >> 16 != 0 {
            total = (total & 0xffff) + (total >> 16);
        }
        let c = !(total as u16);
        [(c >> 8) as u8, (c & 0xff) as u8]
    }

    /// The bytes laid out by hand from RFC 5798 §5.1 for VRID 51,
    /// priority 150, 1 s (100 cs), two addresses, to 224.0.0.18.
    fn hand_built() -> Vec<u8> {
        let mut msg = vec![
            0x31, // version 3, type 1
            51,   // VRID
            150,  // priority
            2,    // count
            0x00, 0x64, // rsvd 0, max adver int 100 cs
            0x00, 0x00, // checksum, filled below
            10, 0, 0, 100, // 10.0.0.100
            10, 0, 0, 101, // 10.0.0.101
        ];
        let sum = reference_checksum([192, 168, 1, 10], [224, 0, 0, 18], &msg);
        msg[6] = sum[0];
        msg[7] = sum[1];
        msg
    }

    fn advert() -> Advert {
        Advert {
            vrid: 51,
            priority: 150,
            interval_cs: 100,
            addrs: vec![Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 101)],
        }
    }

    #[test]
    fn encode_matches_the_rfc_layout_byte_for_byte() {
        assert_eq!(advert().encode(SRC, MULTICAST_V4).unwrap(), hand_built());
    }

    #[test]
    fn decode_reads_the_hand_built_packet() {
        assert_eq!(
            Advert::decode(&hand_built(), SRC, MULTICAST_V4),
            Ok(advert())
        );
    }

    #[test]
    fn checksum_agrees_with_the_reference_on_odd_and_extreme_inputs() {
        // An odd length (never a valid advert, but the sum must pad), all
        // ones (carries on every word), and a long list (many carries).
        let cases: Vec<Vec<u8>> = vec![
            vec![0x31, 1, 2, 3, 4],
            vec![0xff; 8 + 4 * 255],
            (0..=255u8).cycle().take(8 + 4 * 100).collect(),
        ];
        for msg in cases {
            for (src, dst) in [
                ([0, 0, 0, 0], [0, 0, 0, 0]),
                ([255, 255, 255, 255], [224, 0, 0, 18]),
                ([10, 1, 2, 3], [10, 1, 2, 4]),
            ] {
                let ours = checksum(Ipv4Addr::from(src), Ipv4Addr::from(dst), &msg);
                assert_eq!(ours.to_be_bytes(), reference_checksum(src, dst, &msg));
            }
        }
    }

    #[test]
    fn the_checksum_covers_the_pseudo_header() {
        // The same advert to a unicast peer has another checksum, and a
        // receiver that assumes the multicast group rejects it.
        let peer = Ipv4Addr::new(192, 168, 1, 11);
        let unicast = advert().encode(SRC, peer).unwrap();
        assert_ne!(unicast[6..8], hand_built()[6..8]);
        assert_eq!(Advert::decode(&unicast, SRC, peer), Ok(advert()));
        assert!(matches!(
            Advert::decode(&unicast, SRC, MULTICAST_V4),
            Err(DecodeError::Checksum { .. })
        ));
        let other_src = Ipv4Addr::new(192, 168, 1, 12);
        assert!(matches!(
            Advert::decode(&hand_built(), other_src, MULTICAST_V4),
            Err(DecodeError::Checksum { .. })
        ));
    }

    #[test]
    fn decode_errors_name_the_fault() {
        let good = hand_built();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut m = good.clone();
            f(&mut m);
            // Re-checksum so that only the intended fault remains.
            m[6..8].fill(0);
            let sum = reference_checksum([192, 168, 1, 10], [224, 0, 0, 18], &m);
            m[6..8].copy_from_slice(&sum);
            m
        };
        let cases: Vec<(&str, Vec<u8>, DecodeError)> = vec![
            ("empty", vec![], DecodeError::TooShort { len: 0 }),
            (
                "7 bytes",
                good[..7].to_vec(),
                DecodeError::TooShort { len: 7 },
            ),
            ("version 2", with(&|m| m[0] = 0x21), DecodeError::Version(2)),
            ("version 0", with(&|m| m[0] = 0x01), DecodeError::Version(0)),
            ("type 2", with(&|m| m[0] = 0x32), DecodeError::Type(2)),
            (
                "count says 3",
                with(&|m| m[3] = 3),
                DecodeError::Length {
                    len: 16,
                    count: 3,
                    expected: 20,
                },
            ),
            (
                "count says 1",
                with(&|m| m[3] = 1),
                DecodeError::Length {
                    len: 16,
                    count: 1,
                    expected: 12,
                },
            ),
            (
                "trailing bytes",
                with(&|m| m.extend_from_slice(&[0, 0, 0, 0])),
                DecodeError::Length {
                    len: 20,
                    count: 2,
                    expected: 16,
                },
            ),
            (
                "truncated address",
                good[..14].to_vec(),
                DecodeError::Length {
                    len: 14,
                    count: 2,
                    expected: 16,
                },
            ),
        ];
        for (name, msg, want) in cases {
            assert_eq!(Advert::decode(&msg, SRC, MULTICAST_V4), Err(want), "{name}");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_fails_the_checksum() {
        let good = hand_built();
        let computed = u16::from_be_bytes([good[6], good[7]]);
        // Bytes 4..=5 hold the interval, the checksum is 6..=7; flipping a
        // bit in the priority or an address leaves a well-formed message.
        for byte in [1, 2, 4, 5, 8, 15] {
            let mut m = good.clone();
            m[byte] ^= 0x01;
            match Advert::decode(&m, SRC, MULTICAST_V4) {
                Err(DecodeError::Checksum {
                    received,
                    computed: c,
                    ..
                }) => {
                    assert_eq!(received, computed, "byte {byte}");
                    assert_ne!(c, computed, "byte {byte}");
                }
                other => panic!("byte {byte}: {other:?}"),
            }
        }
    }

    #[test]
    fn reserved_bits_are_ignored_on_receive_and_zero_on_send() {
        let mut m = hand_built();
        m[4] |= 0xf0;
        m[6..8].fill(0);
        let sum = reference_checksum([192, 168, 1, 10], [224, 0, 0, 18], &m);
        m[6..8].copy_from_slice(&sum);
        assert_eq!(
            Advert::decode(&m, SRC, MULTICAST_V4).unwrap().interval_cs,
            100
        );
        let max = Advert {
            interval_cs: MAX_ADVERT_INTERVAL_CS,
            ..advert()
        };
        let bytes = max.encode(SRC, MULTICAST_V4).unwrap();
        assert_eq!(bytes[4..6], [0x0f, 0xff]);
    }

    #[test]
    fn encode_refuses_what_the_wire_cannot_carry() {
        for interval_cs in [0, 4096, u16::MAX] {
            assert_eq!(
                Advert {
                    interval_cs,
                    ..advert()
                }
                .encode(SRC, MULTICAST_V4),
                Err(EncodeError::Interval { interval_cs })
            );
        }
        for count in [0, 256] {
            let addrs = vec![Ipv4Addr::new(10, 0, 0, 1); count];
            assert_eq!(
                Advert { addrs, ..advert() }.encode(SRC, MULTICAST_V4),
                Err(EncodeError::AddressCount { vrid: 51, count })
            );
        }
        let addrs = vec![Ipv4Addr::new(10, 0, 0, 1); 255];
        let full = Advert { addrs, ..advert() };
        let bytes = full.encode(SRC, MULTICAST_V4).unwrap();
        assert_eq!(bytes.len(), 8 + 4 * 255);
        assert_eq!(Advert::decode(&bytes, SRC, MULTICAST_V4), Ok(full));
    }

    #[test]
    fn decode_error_reasons_map_to_counters() {
        assert_eq!(
            DecodeError::TooShort { len: 1 }.reason(),
            DropReason::Length
        );
        assert_eq!(DecodeError::Version(2).reason(), DropReason::Version);
        assert_eq!(DecodeError::Type(7).reason(), DropReason::Type);
        assert_eq!(
            DecodeError::Length {
                len: 1,
                count: 1,
                expected: 12
            }
            .reason(),
            DropReason::Length
        );
    }

    #[test]
    fn validate_gives_the_first_failing_check() {
        let vips = [Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 101)];
        let ours = Instance {
            vrid: 51,
            priority: 100,
            primary: Ipv4Addr::new(192, 168, 1, 11),
            addrs: &vips,
            unicast_peers: &[],
        };
        let peers = [SRC, Ipv4Addr::new(192, 168, 1, 12)];
        let unicast = Instance {
            unicast_peers: &peers,
            ..ours.clone()
        };
        let ok = Received {
            src: SRC,
            ttl: 255,
            advert: advert(),
        };
        let cases: Vec<(&str, Received, Instance<'_>, Result<(), DropReason>)> = vec![
            ("valid", ok.clone(), ours.clone(), Ok(())),
            ("unicast from a peer", ok.clone(), unicast.clone(), Ok(())),
            (
                "unicast: a routed peer's TTL is not checked",
                Received {
                    ttl: 62,
                    ..ok.clone()
                },
                unicast.clone(),
                Ok(()),
            ),
            (
                "unicast from a stranger",
                Received {
                    src: Ipv4Addr::new(192, 168, 1, 99),
                    ..ok.clone()
                },
                unicast.clone(),
                Err(DropReason::NotAPeer),
            ),
            (
                "unicast: another VRID is counted as such first",
                Received {
                    src: Ipv4Addr::new(192, 168, 1, 99),
                    advert: Advert {
                        vrid: 52,
                        ..advert()
                    },
                    ..ok.clone()
                },
                unicast.clone(),
                Err(DropReason::OtherVrid),
            ),
            (
                "addresses in another order",
                Received {
                    advert: Advert {
                        addrs: vec![vips[1], vips[0]],
                        ..advert()
                    },
                    ..ok.clone()
                },
                ours.clone(),
                Ok(()),
            ),
            (
                "ttl 254",
                Received {
                    ttl: 254,
                    ..ok.clone()
                },
                ours.clone(),
                Err(DropReason::Ttl),
            ),
            (
                "ttl 1",
                Received {
                    ttl: 1,
                    ..ok.clone()
                },
                ours.clone(),
                Err(DropReason::Ttl),
            ),
            (
                "ttl beats everything",
                Received {
                    ttl: 64,
                    advert: Advert {
                        vrid: 9,
                        ..advert()
                    },
                    ..ok.clone()
                },
                ours.clone(),
                Err(DropReason::Ttl),
            ),
            (
                "other vrid",
                Received {
                    advert: Advert {
                        vrid: 52,
                        ..advert()
                    },
                    ..ok.clone()
                },
                ours.clone(),
                Err(DropReason::OtherVrid),
            ),
            (
                "our own advert",
                Received {
                    src: ours.primary,
                    ..ok.clone()
                },
                ours.clone(),
                Err(DropReason::OwnAdvert),
            ),
            (
                "we own the addresses",
                ok.clone(),
                Instance {
                    priority: 255,
                    ..ours.clone()
                },
                Err(DropReason::LocalOwner),
            ),
            (
                "zero interval",
                Received {
                    advert: Advert {
                        interval_cs: 0,
                        ..advert()
                    },
                    ..ok.clone()
                },
                ours.clone(),
                Err(DropReason::ZeroInterval),
            ),
            (
                "one address missing",
                Received {
                    advert: Advert {
                        addrs: vec![vips[0]],
                        ..advert()
                    },
                    ..ok.clone()
                },
                ours.clone(),
                Err(DropReason::AddressList),
            ),
            (
                "an extra address",
                Received {
                    advert: Advert {
                        addrs: vec![vips[0], vips[1], Ipv4Addr::new(10, 0, 0, 102)],
                        ..advert()
                    },
                    ..ok.clone()
                },
                ours.clone(),
                Err(DropReason::AddressList),
            ),
            (
                "a duplicate instead of the second",
                Received {
                    advert: Advert {
                        addrs: vec![vips[0], vips[0]],
                        ..advert()
                    },
                    ..ok.clone()
                },
                ours.clone(),
                Err(DropReason::AddressList),
            ),
        ];
        for (name, received, instance, want) in cases {
            assert_eq!(validate(&received, &instance), want, "{name}");
        }
    }

    #[test]
    fn drop_reason_labels_are_unique() {
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::ALL.len());
    }
}
