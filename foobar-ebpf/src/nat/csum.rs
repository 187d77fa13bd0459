//! Incremental Internet checksum update (RFC 1624, eqn. 3:
//! HC' = ~(~HC + ~m + m')). Fields are taken as the packet holds them, read
//! with native byte order: one's complement addition gives the same bytes
//! whatever the order the 16-bit words are read in, as long as it is one
//! order throughout (the kernel's csum helpers rely on the same fact).

/// The sum of `~old + new` over every changed 16-bit word.
pub struct Delta(u32);

impl Delta {
    #[inline(always)]
    pub const fn new() -> Self {
        Delta(0)
    }

    /// A changed 32-bit field (an IPv4 address).
    #[inline(always)]
    pub fn add32(&mut self, old: u32, new: u32) {
        let old = !old;
        self.0 += (old & 0xffff) + (old >> 16) + (new & 0xffff) + (new >> 16);
    }

    /// A changed 16-bit field (a port).
    #[inline(always)]
    pub fn add16(&mut self, old: u16, new: u16) {
        self.0 += u32::from(!old) + u32::from(new);
    }

    /// `check` updated by the changes.
    #[inline(always)]
    pub fn apply(&self, check: u16) -> u16 {
        let mut sum = u32::from(!check) + self.0;
        // Two folds: any u32 folds to at most 0x1fffe, then to at most
        // 0xffff (the ICMP translation adds the most terms: 16).
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        !(sum as u16)
    }

    /// A UDP checksum updated by the changes: 0 (no checksum, allowed over
    /// IPv4) stays 0, and a computed 0 is sent as 0xffff (RFC 768).
    #[inline(always)]
    pub fn apply_udp(&self, check: u16) -> u16 {
        if check == 0 {
            return 0;
        }
        match self.apply(check) {
            0 => 0xffff,
            c => c,
        }
    }
}
