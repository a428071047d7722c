//! The single-threaded longest-prefix-match table behind the ipcache.
//!
//! [`Lpm`] owns every prefix → identity entry and the indexes that make a
//! lookup cheap. It knows nothing about threads: [`super::IpCache`] keeps two
//! of them and replays the same operations on both.
//!
//! Layout (per family, per tier; tier 0 is [`Origin::Labelled`], tier 1 is
//! [`Origin::Cidr`]):
//!
//! * one hash map per prefix length, keyed by the masked network address
//!   ([`super::table`]: one cache line per probe);
//! * IPv4: a 65,536-slot array indexed by the top 16 bits of the address.
//!   A slot holds, per tier, the best match among prefixes of length ≤ 16
//!   covering that /16, and a 16-bit mask of the lengths 17..=32 that occur
//!   under it. A lookup reads one slot and probes only the longer lengths
//!   that exist below that /16, longest first.
//! * IPv6: the list of lengths present, probed longest first, and a
//!   4,096-cell array indexed by a hash of the top 32 bits that holds, per
//!   tier, a mask of the lengths > 32 present under the /32s of that cell,
//!   so addresses outside the /32s the table covers skip those lengths.
//!
//! Invariants, kept by every mutation and relied on by the lookups:
//!
//! * keys are normalised (host bits clear), and a prefix lives in at most one
//!   tier;
//! * `slot.long_mask[t]` bit `l - 17` is set iff `long_counts` has a non-zero
//!   count for `(t, slot, l)`, iff some length-`l` prefix of tier `t` lies
//!   under that /16;
//! * `slot.short_len[t]` is 0 if no prefix of length ≤ 16 in tier `t` covers
//!   the slot, otherwise `1 + length` of the longest one, and
//!   `slot.short_id[t]` is its identity;
//! * IPv6 `lens[t]` lists exactly the lengths `l` with `maps[t][l]`
//!   non-empty, in decreasing order; `cells[c][t]` bit `l - 1` (l > 32) is
//!   set iff `cell_counts` has a non-zero count for `(t, c, l)`, iff some
//!   length-`l` prefix of tier `t` hashes to cell `c`.
//!
//! All state is derived deterministically from the sequence of operations
//! (the hasher is unseeded), so two tables fed the same operations are equal,
//! as left-right requires.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hashbrown::HashMap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rustc_hash::FxBuildHasher;

use super::table::BucketMap;
use super::{IpCacheEntry, Origin};
use crate::identity::{NumericIdentity, WORLD};

/// Prefix maps keyed by masked address, sized so a bucket is a cache line.
type Map4 = BucketMap<u32, 7>;
type Map6 = BucketMap<u128, 3>;

const TIERS: usize = 2;
const V4_SLOTS: usize = 1 << 16;
/// Lengths resolved through the slot array rather than a per-slot probe.
const V4_SHORT_MAX: u8 = 16;

/// Lookup order of the tiers: Labelled entries shadow Cidr entries.
const TIER_ORIGINS: [Origin; TIERS] = [Origin::Labelled, Origin::Cidr];
const LABELLED: usize = 0;

fn tier(origin: Origin) -> usize {
    match origin {
        Origin::Labelled => LABELLED,
        Origin::Cidr => 1,
    }
}

fn mask4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// First-level IPv4 entry for one /16. 16 bytes and aligned so it never
/// straddles a cache line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(16))]
struct Slot {
    short_id: [NumericIdentity; TIERS],
    long_mask: [u16; TIERS],
    /// 0: no short prefix covers this slot; otherwise 1 + its length.
    short_len: [u8; TIERS],
}

const EMPTY_SLOT: Slot = Slot {
    short_id: [NumericIdentity(0); TIERS],
    long_mask: [0; TIERS],
    short_len: [0; TIERS],
};

#[derive(Clone, Debug)]
struct V4Table {
    /// `maps[tier][len]`.
    maps: [[Map4; 33]; TIERS],
    slots: Box<[Slot; V4_SLOTS]>,
    /// Number of prefixes per `(tier, /16, length > 16)`, so a removal knows
    /// when to clear a `long_mask` bit. Writer-side bookkeeping only.
    long_counts: HashMap<u32, u32, FxBuildHasher>,
}

#[derive(Clone, Debug)]
struct V6Table {
    /// `maps[tier][len]`.
    maps: [[Map6; 129]; TIERS],
    /// Per tier, the lengths whose map is non-empty, longest first.
    lens: [Lengths; TIERS],
    /// Per cell (a hash of the address's top 32 bits) and tier, bit
    /// `len - 1` is set iff some prefix of that length > 32 lies under a /32
    /// hashing to the cell. Traffic to the rest of the internet lands in
    /// cells with no bits, and skips every length > 32 without hashing.
    cells: Box<[[u128; TIERS]; V6_CELLS]>,
    /// Prefixes per `(tier, cell, length > 32)`, so a removal knows when to
    /// clear a cell bit. Writer-side bookkeeping only.
    cell_counts: HashMap<u32, u32, FxBuildHasher>,
}

const V6_CELL_BITS: u32 = 12;
const V6_CELLS: usize = 1 << V6_CELL_BITS;
/// Lengths up to this are not tracked per cell: they cover whole /32s.
const V6_CELL_MIN: u8 = 33;

/// Cell of an IPv6 address or prefix: Fibonacci hash of its top 32 bits.
fn v6_cell(a: u128) -> usize {
    (((a >> 96) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - V6_CELL_BITS)) as usize
}

/// A list of prefix lengths, kept inline so a lookup does not chase a
/// pointer to find it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lengths {
    n: u8,
    lens: [u8; 129],
}

impl Lengths {
    fn as_slice(&self) -> &[u8] {
        &self.lens[..self.n as usize]
    }
}

/// `LEN_BIT6[len]`: the bit standing for length `len` in a cell.
const LEN_BIT6: [u128; 129] = {
    let mut b = [0u128; 129];
    let mut len = 1;
    while len <= 128 {
        b[len] = 1 << (len - 1);
        len += 1;
    }
    b
};

/// `MASK6[len]`: the netmask of an IPv6 prefix of length `len`.
const MASK6: [u128; 129] = {
    let mut m = [0u128; 129];
    let mut len = 1;
    while len <= 128 {
        m[len] = u128::MAX << (128 - len);
        len += 1;
    }
    m
};

/// A longest-prefix-match table from IPv4/IPv6 prefixes to identities with
/// the two-tier (Labelled over Cidr) rule; see the [module docs](super).
#[derive(Clone, Debug)]
pub struct Lpm {
    v4: V4Table,
    v6: V6Table,
    len: usize,
}

impl Default for Lpm {
    fn default() -> Self {
        Self::new()
    }
}

impl V4Table {
    fn new() -> Self {
        let slots: Box<[Slot]> = vec![EMPTY_SLOT; V4_SLOTS].into_boxed_slice();
        Self {
            maps: std::array::from_fn(|_| std::array::from_fn(|_| BucketMap::default())),
            slots: slots.try_into().expect("slot array has V4_SLOTS entries"),
            long_counts: HashMap::default(),
        }
    }

    /// Warms what a lookup of `addr` reads first: the Labelled /32 bucket
    /// and the /16 slot.
    #[inline]
    fn prefetch(&self, addr: Ipv4Addr) {
        let a = u32::from(addr);
        self.maps[LABELLED][32].prefetch(a);
        super::table::prefetch(&self.slots[(a >> 16) as usize]);
    }

    #[inline]
    fn lookup(&self, addr: Ipv4Addr) -> Option<NumericIdentity> {
        let a = u32::from(addr);
        // Host routes are most of a large table and /32 is the longest
        // Labelled length: probe it before reading the slot, so the two
        // loads overlap and a hit needs no slot at all. (The slot's
        // Labelled /32 bit is kept, but the walk below skips it.)
        if let Some(id) = self.maps[LABELLED][32].get(a) {
            return Some(id);
        }
        let slot = &self.slots[(a >> 16) as usize];
        for t in 0..TIERS {
            let mut lens = slot.long_mask[t];
            if t == LABELLED {
                lens &= !(1 << (32 - 17));
            }
            while lens != 0 {
                let bit = 15 - lens.leading_zeros();
                let len = 17 + bit;
                if let Some(id) = self.maps[t][len as usize].get(a & (u32::MAX << (32 - len))) {
                    return Some(id);
                }
                lens ^= 1 << bit;
            }
            if slot.short_len[t] != 0 {
                return Some(slot.short_id[t]);
            }
        }
        None
    }

    fn slot_range(key: u32, len: u8) -> std::ops::Range<usize> {
        let first = (key >> 16) as usize;
        first..first + (1 << (V4_SHORT_MAX - len))
    }

    fn count_key(t: usize, key: u32, len: u8) -> u32 {
        (t as u32) << 24 | (key >> 16) << 8 | u32::from(len)
    }

    fn insert(
        &mut self,
        t: usize,
        key: u32,
        len: u8,
        id: NumericIdentity,
    ) -> Option<NumericIdentity> {
        let old = self.maps[t][len as usize].insert(key, id);
        if len <= V4_SHORT_MAX {
            // One prefix of each length covers a slot, so an equal length is
            // this very prefix being replaced.
            for slot in &mut self.slots[Self::slot_range(key, len)] {
                if slot.short_len[t] <= len + 1 {
                    slot.short_len[t] = len + 1;
                    slot.short_id[t] = id;
                }
            }
        } else if old.is_none() {
            *self
                .long_counts
                .entry(Self::count_key(t, key, len))
                .or_insert(0) += 1;
            self.slots[(key >> 16) as usize].long_mask[t] |= 1 << (len - 17);
        }
        old
    }

    fn remove(&mut self, t: usize, key: u32, len: u8) -> Option<NumericIdentity> {
        let old = self.maps[t][len as usize].remove(key)?;
        if len <= V4_SHORT_MAX {
            // The slots this prefix was best for fall back to the longest
            // shorter prefix covering it. Being shorter, that prefix covers
            // the whole range, so one search serves every slot.
            let (fallback_len, fallback_id) = (0..len)
                .rev()
                .find_map(|l| {
                    self.maps[t][l as usize]
                        .get(key & mask4(l))
                        .map(|id| (l + 1, id))
                })
                .unwrap_or((0, NumericIdentity(0)));
            for slot in &mut self.slots[Self::slot_range(key, len)] {
                if slot.short_len[t] == len + 1 {
                    slot.short_len[t] = fallback_len;
                    slot.short_id[t] = fallback_id;
                }
            }
        } else {
            let ck = Self::count_key(t, key, len);
            let count = self
                .long_counts
                .get_mut(&ck)
                .expect("every long prefix is counted");
            *count -= 1;
            if *count == 0 {
                self.long_counts.remove(&ck);
                self.slots[(key >> 16) as usize].long_mask[t] &= !(1 << (len - 17));
            }
        }
        Some(old)
    }
}

impl V6Table {
    fn new() -> Self {
        Self {
            maps: std::array::from_fn(|_| std::array::from_fn(|_| BucketMap::default())),
            lens: [Lengths {
                n: 0,
                lens: [0; 129],
            }; TIERS],
            cells: vec![[0; TIERS]; V6_CELLS]
                .into_boxed_slice()
                .try_into()
                .expect("cell array has V6_CELLS entries"),
            cell_counts: HashMap::default(),
        }
    }

    /// Warms what a lookup of `addr` reads first: its cell and the bucket
    /// of the longest Labelled length present (usually /128).
    #[inline]
    fn prefetch(&self, addr: Ipv6Addr) {
        let a = u128::from(addr);
        super::table::prefetch(&self.cells[v6_cell(a)]);
        if let Some(&len) = self.lens[LABELLED].as_slice().first() {
            let len = len as usize;
            self.maps[LABELLED][len].prefetch(a & MASK6[len]);
        }
    }

    #[inline]
    fn lookup(&self, addr: Ipv6Addr) -> Option<NumericIdentity> {
        let a = u128::from(addr);
        let cell = &self.cells[v6_cell(a)];
        for ((maps, lens), deep) in self.maps.iter().zip(&self.lens).zip(cell) {
            for &len in lens.as_slice() {
                let len = len as usize;
                if len >= V6_CELL_MIN as usize && deep & LEN_BIT6[len] == 0 {
                    continue;
                }
                if let Some(id) = maps[len].get(a & MASK6[len]) {
                    return Some(id);
                }
            }
        }
        None
    }

    fn count_key(t: usize, cell: usize, len: u8) -> u32 {
        (t as u32) << 24 | (cell as u32) << 8 | u32::from(len)
    }

    /// Rebuild `lens[t]` after a map became empty or non-empty.
    fn index_lengths(&mut self, t: usize) {
        let mut lens = Lengths {
            n: 0,
            lens: [0; 129],
        };
        for len in (0..=128u8).rev() {
            if !self.maps[t][len as usize].is_empty() {
                lens.lens[lens.n as usize] = len;
                lens.n += 1;
            }
        }
        self.lens[t] = lens;
    }

    fn insert(
        &mut self,
        t: usize,
        key: u128,
        len: u8,
        id: NumericIdentity,
    ) -> Option<NumericIdentity> {
        let map = &mut self.maps[t][len as usize];
        let was_empty = map.is_empty();
        let old = map.insert(key, id);
        if was_empty {
            self.index_lengths(t);
        }
        if old.is_none() && len >= V6_CELL_MIN {
            let cell = v6_cell(key);
            *self
                .cell_counts
                .entry(Self::count_key(t, cell, len))
                .or_insert(0) += 1;
            self.cells[cell][t] |= LEN_BIT6[len as usize];
        }
        old
    }

    fn remove(&mut self, t: usize, key: u128, len: u8) -> Option<NumericIdentity> {
        let map = &mut self.maps[t][len as usize];
        let old = map.remove(key)?;
        if map.is_empty() {
            self.index_lengths(t);
        }
        if len >= V6_CELL_MIN {
            let cell = v6_cell(key);
            let ck = Self::count_key(t, cell, len);
            let count = self
                .cell_counts
                .get_mut(&ck)
                .expect("every long prefix is counted");
            *count -= 1;
            if *count == 0 {
                self.cell_counts.remove(&ck);
                self.cells[cell][t] &= !LEN_BIT6[len as usize];
            }
        }
        Some(old)
    }
}

impl Lpm {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            v4: V4Table::new(),
            v6: V6Table::new(),
            len: 0,
        }
    }

    /// An empty table with room for `v4` IPv4 /32 and `v6` IPv6 /128
    /// Labelled entries (endpoint addresses, which dominate a large table)
    /// before any map has to grow.
    pub fn with_capacity(v4: usize, v6: usize) -> Self {
        let mut lpm = Self::new();
        lpm.v4.maps[tier(Origin::Labelled)][32].reserve(v4);
        lpm.v6.maps[tier(Origin::Labelled)][128].reserve(v6);
        lpm
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Insert or replace `prefix` (host bits are cleared first). Returns the
    /// previous identity and origin of that exact prefix.
    pub fn insert(
        &mut self,
        prefix: IpNet,
        identity: NumericIdentity,
        origin: Origin,
    ) -> Option<(NumericIdentity, Origin)> {
        let t = tier(origin);
        // A prefix lives in one tier only: moving it between tiers removes
        // it from the other one first.
        let moved = self
            .remove_from_tier(prefix, 1 - t)
            .map(|id| (id, TIER_ORIGINS[1 - t]));
        let old = match prefix.trunc() {
            IpNet::V4(p) => self
                .v4
                .insert(t, u32::from(p.network()), p.prefix_len(), identity),
            IpNet::V6(p) => self
                .v6
                .insert(t, u128::from(p.network()), p.prefix_len(), identity),
        }
        .map(|id| (id, origin));
        let old = old.or(moved);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Remove `prefix` (host bits are cleared first). Returns what it mapped
    /// to, or `None` if it was absent.
    pub fn remove(&mut self, prefix: IpNet) -> Option<(NumericIdentity, Origin)> {
        let old = (0..TIERS).find_map(|t| {
            self.remove_from_tier(prefix, t)
                .map(|id| (id, TIER_ORIGINS[t]))
        });
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    fn remove_from_tier(&mut self, prefix: IpNet, t: usize) -> Option<NumericIdentity> {
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.remove(t, u32::from(p.network()), p.prefix_len()),
            IpNet::V6(p) => self.v6.remove(t, u128::from(p.network()), p.prefix_len()),
        }
    }

    /// The entry for exactly `prefix` (host bits are cleared first), not a
    /// longest-prefix match.
    pub fn get(&self, prefix: IpNet) -> Option<(NumericIdentity, Origin)> {
        let prefix = prefix.trunc();
        (0..TIERS).find_map(|t| {
            match prefix {
                IpNet::V4(p) => {
                    self.v4.maps[t][p.prefix_len() as usize].get(u32::from(p.network()))
                }
                IpNet::V6(p) => {
                    self.v6.maps[t][p.prefix_len() as usize].get(u128::from(p.network()))
                }
            }
            .map(|id| (id, TIER_ORIGINS[t]))
        })
    }

    /// Identity of `addr` under the two-tier rule, `None` if nothing covers it.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<NumericIdentity> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(a),
            IpAddr::V6(a) => self.v6.lookup(a),
        }
    }

    /// [`Self::lookup`] for an IPv4 address.
    #[inline]
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<NumericIdentity> {
        self.v4.lookup(addr)
    }

    /// [`Self::lookup`] for an IPv6 address.
    #[inline]
    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<NumericIdentity> {
        self.v6.lookup(addr)
    }

    /// Starts loading the memory a lookup of `addr` reads first. Issue it
    /// for a batch of addresses before looking them up, so their cache
    /// misses overlap instead of queueing one after another.
    #[inline]
    pub fn prefetch(&self, addr: IpAddr) {
        match addr {
            IpAddr::V4(a) => self.v4.prefetch(a),
            IpAddr::V6(a) => self.v6.prefetch(a),
        }
    }

    /// [`Self::lookup`], with addresses nothing claims mapped to [`WORLD`].
    #[inline]
    pub fn lookup_or_world(&self, addr: IpAddr) -> NumericIdentity {
        self.lookup(addr).unwrap_or(WORLD)
    }

    /// Every entry, IPv4 before IPv6, then by network address, then by
    /// prefix length.
    pub fn entries(&self) -> Vec<IpCacheEntry> {
        let mut out = Vec::with_capacity(self.len);
        for (t, origin) in TIER_ORIGINS.into_iter().enumerate() {
            for (len, map) in self.v4.maps[t].iter().enumerate() {
                out.extend(map.iter().map(|(key, id)| IpCacheEntry {
                    prefix: IpNet::V4(
                        Ipv4Net::new(Ipv4Addr::from(key), len as u8).expect("length ≤ 32"),
                    ),
                    identity: id,
                    origin,
                }));
            }
            for (len, map) in self.v6.maps[t].iter().enumerate() {
                out.extend(map.iter().map(|(key, id)| IpCacheEntry {
                    prefix: IpNet::V6(
                        Ipv6Net::new(Ipv6Addr::from(key), len as u8).expect("length ≤ 128"),
                    ),
                    identity: id,
                    origin,
                }));
            }
        }
        out.sort_unstable_by_key(|e| sort_key(&e.prefix));
        out
    }

    /// Check every derived index against the maps. For tests.
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        let mut count = 0;
        let mut slots = vec![EMPTY_SLOT; V4_SLOTS];
        for t in 0..TIERS {
            for (len, map) in self.v4.maps[t].iter().enumerate() {
                count += map.len();
                map.check_invariants();
                for (key, id) in map.iter() {
                    let len = len as u8;
                    assert_eq!(key & !mask4(len), 0, "unnormalised key");
                    if len <= V4_SHORT_MAX {
                        for s in &mut slots[V4Table::slot_range(key, len)] {
                            if s.short_len[t] <= len {
                                s.short_len[t] = len + 1;
                                s.short_id[t] = id;
                            }
                        }
                    } else {
                        slots[(key >> 16) as usize].long_mask[t] |= 1 << (len - 17);
                    }
                }
            }
        }
        // Unused `short_id`s are kept at 0, so whole slots compare equal.
        if slots[..] != self.v4.slots[..] {
            let i = (0..V4_SLOTS)
                .find(|&i| slots[i] != self.v4.slots[i])
                .expect("slices differ");
            panic!("slot {i}: want {:?}, have {:?}", slots[i], self.v4.slots[i]);
        }
        let mut cells = vec![[0u128; TIERS]; V6_CELLS];
        #[allow(clippy::needless_range_loop)] // `t` indexes three arrays
        for t in 0..TIERS {
            let mut present = vec![];
            for (len, map) in self.v6.maps[t].iter().enumerate().rev() {
                count += map.len();
                map.check_invariants();
                for (key, _) in map.iter() {
                    assert_eq!(key & !MASK6[len], 0, "unnormalised key");
                    if len >= V6_CELL_MIN as usize {
                        cells[v6_cell(key)][t] |= LEN_BIT6[len];
                    }
                }
                if !map.is_empty() {
                    present.push(len as u8);
                }
            }
            assert_eq!(present, self.v6.lens[t].as_slice());
        }
        assert!(cells[..] == self.v6.cells[..], "IPv6 cell masks");
        let counted: u32 = self.v6.cell_counts.values().sum();
        let long: usize = (0..TIERS)
            .map(|t| {
                self.v6.maps[t][V6_CELL_MIN as usize..]
                    .iter()
                    .map(|m| m.len())
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(counted as usize, long);
        assert_eq!(count, self.len);
        let counted: u32 = self.v4.long_counts.values().sum();
        let long: usize = (0..TIERS)
            .map(|t| self.v4.maps[t][17..].iter().map(|m| m.len()).sum::<usize>())
            .sum();
        assert_eq!(counted as usize, long);
    }
}

/// Order of [`Lpm::entries`]: IPv4 first, then address, then length.
pub(super) fn sort_key(prefix: &IpNet) -> (bool, u128, u8) {
    match prefix {
        IpNet::V4(p) => (false, u128::from(u32::from(p.network())), p.prefix_len()),
        IpNet::V6(p) => (true, u128::from(p.network()), p.prefix_len()),
    }
}
