//! The ring writer: the double-buffer protocol that replaces a VIP's ring
//! of backend slots without a packet ever reading a half-written one.
//! Writes RINGS and RING_STATE only.
use aya::{
    maps::{Array, MapData},
    programs::Xdp,
};
use foobar_common::{ring_state, MAX_VIPS, RING_CAPACITY, RING_HALF_BIT, RING_STRIDE};

use super::{DatapathError, Result, LB_PROGRAM};

#[derive(Clone, Default)]
struct RingHalves {
    live: usize,
    /// What each half holds, as this writer wrote it (None: unknown).
    halves: [Option<Vec<u32>>; 2],
}

/// Writes VIP rings with the double-buffer protocol: fill the half the
/// datapath is not reading, then switch half and length with one 32-bit
/// store, so no packet sees a half-written ring. Only slots that differ
/// from what that half already holds are written (consecutive Maglev
/// tables differ in few slots). It holds its own handles on the two maps:
/// the datapath owns one; `Datapath::ring_writer` opens another for a
/// test or benchmark thread (whose writes the datapath's does not know).
pub struct RingWriter {
    rings: Array<MapData, u32>,
    state: Array<MapData, u32>,
    written: std::collections::HashMap<u32, RingHalves>,
}

impl RingWriter {
    /// Opens RINGS and RING_STATE of a loaded load-balancer program by id.
    pub(super) fn open(prog: &Xdp) -> Result<Self> {
        let ids = prog
            .info()
            .and_then(|i| i.map_ids())
            .map_err(|source| DatapathError::Program {
                program: LB_PROGRAM,
                source,
            })?
            .unwrap_or_default();
        let (mut rings, mut state) = (None, None);
        for id in ids {
            let data = MapData::from_id(id).map_err(|source| DatapathError::Map {
                map: "(by id)",
                source,
            })?;
            let name = data
                .info()
                .map_err(|source| DatapathError::Map {
                    map: "(by id)",
                    source,
                })?
                .name_as_str()
                .map(str::to_owned);
            match name.as_deref() {
                Some("RINGS") => rings = Some(data),
                Some("RING_STATE") => state = Some(data),
                _ => {}
            }
        }
        let missing = |name| DatapathError::Missing { what: "map", name };
        let array = |data: Option<MapData>, name: &'static str| {
            Array::try_from(aya::maps::Map::Array(data.ok_or(missing(name))?))
                .map_err(|source| DatapathError::Map { map: name, source })
        };
        Ok(RingWriter {
            rings: array(rings, "RINGS")?,
            state: array(state, "RING_STATE")?,
            written: Default::default(),
        })
    }

    /// The ring this writer last made live for `vip_id`.
    /// Forgets what the halves hold: the next `set` of each VIP writes
    /// every slot (after the maps were changed behind this writer's back).
    pub(super) fn forget(&mut self) {
        self.written.clear();
    }

    pub(super) fn live(&self, vip_id: u32) -> Option<&Vec<u32>> {
        let h = self.written.get(&vip_id)?;
        h.halves[h.live].as_ref()
    }

    /// The ring the datapath reads for `vip_id` now (a slot per entry).
    pub(super) fn read_live(&self, vip_id: u32) -> Result<Vec<u32>> {
        let map_err = |map| move |source| DatapathError::Map { map, source };
        let word = self.state.get(&vip_id, 0).map_err(map_err("RING_STATE"))?;
        let half = u32::from(word & RING_HALF_BIT != 0);
        let len = (word & foobar_common::RING_LEN_MASK).min(RING_CAPACITY);
        let base = vip_id * RING_STRIDE + half * RING_CAPACITY;
        (0..len)
            .map(|pos| self.rings.get(&(base + pos), 0).map_err(map_err("RINGS")))
            .collect()
    }

    pub fn set(&mut self, vip_id: u32, ring: &[u32]) -> Result<()> {
        if ring.len() > RING_CAPACITY as usize {
            return Err(DatapathError::TooMany {
                what: "ring slots",
                got: ring.len(),
                limit: RING_CAPACITY,
            });
        }
        if vip_id >= MAX_VIPS {
            return Err(DatapathError::TooMany {
                what: "VIP id",
                got: vip_id as usize,
                limit: MAX_VIPS - 1,
            });
        }
        let live_word = self
            .state
            .get(&vip_id, 0)
            .map_err(|source| DatapathError::Map {
                map: "RING_STATE",
                source,
            })?;
        let next = usize::from(live_word & RING_HALF_BIT == 0);
        let mut halves = self.written.remove(&vip_id).unwrap_or_default();
        let known = halves.halves[next].take();
        let base = vip_id * RING_STRIDE + next as u32 * RING_CAPACITY;
        for (pos, backend_id) in ring.iter().enumerate() {
            if known.as_ref().and_then(|k| k.get(pos)) == Some(backend_id) {
                continue;
            }
            self.rings
                .set(base + pos as u32, backend_id, 0)
                .map_err(|source| DatapathError::Map {
                    map: "RINGS",
                    source,
                })?;
        }
        self.state
            .set(vip_id, ring_state(next as u32, ring.len() as u32), 0)
            .map_err(|source| DatapathError::Map {
                map: "RING_STATE",
                source,
            })?;
        halves.halves[next] = Some(ring.to_vec());
        halves.live = next;
        self.written.insert(vip_id, halves);
        Ok(())
    }
}
