//! The `dnat` reply prefilter (DNAT_SRC_BITS): a bitmap of `vip_addr_bit`
//! over the addresses of dnat VIPs' backends, written from a plan. Bits
//! are set before the VIPs that need them take traffic and cleared after
//! they are gone, as the destination prefilter's. Writes no other map.
//!
//! The program looks at the bitmap only when loaded with `dnat_replies`
//! (its DNAT_REPLIES global, so the pass path costs nothing without dnat):
//! a plan with a dnat VIP is refused by a datapath loaded without it.
use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use foobar_common::{vip_addr_bit, FWD_DNAT, VIP_ADDR_BITMAP_WORDS};

use super::{Datapath, DatapathError, Result};
use crate::plan::Plan;

const MAP: &str = "DNAT_SRC_BITS";

pub(super) struct DnatMaps {
    src_bits: Array<MapData, u64>,
    /// What the bitmap holds, word by word (read back at load: pinned maps
    /// adopted keep their bits).
    written: Vec<u64>,
    /// The program was loaded with its dnat reply path on.
    replies: bool,
}

fn map_err(source: aya::maps::MapError) -> DatapathError {
    DatapathError::Map { map: MAP, source }
}

pub(super) fn take(ebpf: &mut Ebpf, replies: bool) -> Result<DnatMaps> {
    let map = ebpf.take_map(MAP).ok_or(DatapathError::Missing {
        what: "map",
        name: MAP,
    })?;
    let src_bits: Array<MapData, u64> = Array::try_from(map).map_err(map_err)?;
    let written = (0..VIP_ADDR_BITMAP_WORDS)
        .map(|i| src_bits.get(&i, 0).map_err(map_err))
        .collect::<Result<_>>()?;
    Ok(DnatMaps {
        src_bits,
        written,
        replies,
    })
}

/// The bitmap of a set of addresses (network order).
fn bits<'a>(addrs: impl IntoIterator<Item = &'a u32>) -> Vec<u64> {
    let mut bits = vec![0; VIP_ADDR_BITMAP_WORDS as usize];
    for &addr_be in addrs {
        let (word, mask) = vip_addr_bit(addr_be);
        bits[word as usize] |= mask;
    }
    bits
}

impl Datapath {
    /// Refuses a plan with a dnat VIP when the program was loaded without
    /// the reply path (`apply` calls it before writing anything).
    pub(super) fn check_dnat(&self, plan: &Plan) -> Result<()> {
        if self.maps.dnat.replies {
            return Ok(());
        }
        match plan
            .vips
            .iter()
            .find(|v| v.service.forward_mode == FWD_DNAT)
        {
            Some(vip) => Err(DatapathError::DnatOff {
                vip: vip.name.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Sets the bits of `plan`'s dnat backends, keeping the ones set
    /// (`apply` calls it before the VIP keys change).
    pub(super) fn add_dnat_sources(&mut self, plan: &Plan) -> Result<()> {
        let mut want = bits(&plan.dnat_sources);
        for (w, old) in want.iter_mut().zip(&self.maps.dnat.written) {
            *w |= old;
        }
        self.write_dnat_sources(&want)
    }

    /// Leaves exactly `plan`'s bits (`apply` calls it after the VIP keys
    /// that needed the others are gone).
    pub(super) fn trim_dnat_sources(&mut self, plan: &Plan) -> Result<()> {
        self.write_dnat_sources(&bits(&plan.dnat_sources))
    }

    fn write_dnat_sources(&mut self, want: &[u64]) -> Result<()> {
        let dnat = &mut self.maps.dnat;
        for (i, &word) in want.iter().enumerate() {
            if dnat.written[i] != word {
                dnat.src_bits.set(i as u32, word, 0).map_err(map_err)?;
                dnat.written[i] = word;
            }
        }
        Ok(())
    }

    /// Whether the program was loaded with its dnat reply path
    /// (`LoadOptions::dnat_replies`): only then may a plan hold dnat VIPs.
    pub fn dnat_replies(&self) -> bool {
        self.maps.dnat.replies
    }

    /// The dnat reply prefilter as the kernel holds it, one word per entry.
    pub fn dnat_source_bits(&self) -> Result<Vec<u64>> {
        (0..VIP_ADDR_BITMAP_WORDS)
            .map(|i| self.maps.dnat.src_bits.get(&i, 0).map_err(map_err))
            .collect()
    }
}
