//! Byte access and the Internet checksum, computed from scratch over the
//! bytes a checksum covers (RFC 1071), never updated incrementally: the
//! model's check on the datapath's RFC 1624 updates.

pub fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// Two bytes as they lie in memory (the `_be` fields keep wire order).
pub fn ne16(f: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([f[at], f[at + 1]])
}

pub fn ne32(f: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

/// The one's complement sum of `data` as 16-bit big-endian words (an odd
/// last byte padded with zero), folded to 16 bits.
pub fn sum(data: &[u8]) -> u16 {
    let mut s: u64 = data
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// One's complement addition of 16-bit values.
pub fn add(values: &[u16]) -> u16 {
    let mut s: u32 = values.iter().map(|&v| u32::from(v)).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The checksum field of `data` whose own field (at `field`, relative to
/// `data`) reads as zero, plus the pseudo-header sum `pseudo`.
pub fn checksum(data: &[u8], field: usize, pseudo: u16) -> u16 {
    let mut d = data.to_vec();
    d[field] = 0;
    d[field + 1] = 0;
    !add(&[sum(&d), pseudo])
}

/// The checksum a translated header must carry. A correct input checksum
/// gives the correct output one (`fresh`, from scratch); a wrong one stays
/// wrong by as much as it was (a translation must not repair a corrupted
/// packet, nor break a good one): the field keeps the sender's error
/// `claimed − correct` on top of the fresh sum.
pub fn carried(claimed: u16, correct_in: u16, fresh: u16) -> u16 {
    if claimed == correct_in {
        return fresh;
    }
    // field = ~S: the error in sum terms is ~claimed − ~correct_in.
    !add(&[!fresh, !claimed, correct_in])
}
