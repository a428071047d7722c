//! The per-prefix-length hash map of the ipcache: masked address → identity.
//!
//! A general-purpose map (hashbrown) keeps its control bytes and its entries
//! in two arrays, so a hit touches two cache lines. At a million entries
//! those are two misses per probe, which is most of a lookup's cost. This
//! map keeps keys and identities together in 64-byte buckets (7 IPv4 or 3
//! IPv6 keys each), so a probe costs one cache line, hit or miss.
//!
//! Collisions go to the next bucket (linear probing over buckets). Each
//! bucket counts how many entries hashed to it or an earlier bucket but live
//! further on (`displaced`); a lookup stops at the first bucket whose count
//! is zero, and a removal decrements the counts along the entry's path, so
//! deletions need neither tombstones nor moving entries.
//!
//! Most probes of a lookup are for a length that does not hold the address,
//! so each map also keeps a one-hash Bloom filter (8 bits per slot, about
//! 1/8 of the buckets' size): an absent key usually costs a hash and one
//! bit from a small, cache-resident array instead of a bucket load.
//!
//! Invariants: the bucket count is zero or a power of two; the load stays
//! below [`MAX_LOAD`], so a free slot always exists and probing ends; every
//! entry at bucket `p` with home bucket `h` adds one to `displaced` of each
//! bucket from `h` up to, not including, `p`; every entry's filter bit is
//! set (bits of removed entries may stay set until the filter is rebuilt).
//! Layout depends only on the sequence of operations (the hash is
//! unseeded), as left-right requires of its two copies. One map holds at
//! most 2^24 - 1 entries (the width of `displaced`), far beyond the
//! prefixes of one length a host carries.

use crate::identity::NumericIdentity;

/// Grow beyond 4/5 of the slots in use; shrink below 1/8.
const MAX_LOAD: (usize, usize) = (4, 5);
const MIN_LOAD: (usize, usize) = (1, 8);

/// Low bits of `Bucket::meta`: which slots are occupied.
const OCCUPIED_BITS: u32 = 8;
const DISPLACED_ONE: u32 = 1 << OCCUPIED_BITS;
/// `displaced` is 24 bits wide and can be at most the number of entries.
const MAX_ENTRIES: usize = (1 << (32 - OCCUPIED_BITS)) - 1;

/// A key: a masked IPv4 or IPv6 address.
pub(super) trait Key: Copy + Eq + Default + std::fmt::Debug {
    fn hash(self) -> u64;
}

/// Multiply and fold the 128-bit product (as foldhash and wyhash do): one
/// multiplication that spreads every input bit over the output. Keys come
/// from the control plane, not from packets, so flooding resistance is not
/// needed.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

const SEED1: u64 = 0x243f_6a88_85a3_08d3;
const SEED2: u64 = 0x1319_8a2e_0370_7344;

impl Key for u32 {
    #[inline]
    fn hash(self) -> u64 {
        fold_mul(u64::from(self) ^ SEED1, SEED2)
    }
}

impl Key for u128 {
    #[inline]
    fn hash(self) -> u64 {
        // One multiply of the two halves. It degenerates only for keys
        // whose low half equals SEED1 (one interface identifier), which
        // then share a bucket: slower, never wrong.
        fold_mul(self as u64 ^ SEED1, (self >> 64) as u64 ^ SEED2)
    }
}

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Bucket<K, const N: usize> {
    keys: [K; N],
    ids: [u32; N],
    /// Occupied-slot mask in the low 8 bits, `displaced` above.
    meta: u32,
}

const _: () = assert!(std::mem::size_of::<Bucket<u32, 7>>() == 64);
const _: () = assert!(std::mem::size_of::<Bucket<u128, 3>>() == 64);

impl<K: Key, const N: usize> Bucket<K, N> {
    const FULL: u32 = (1 << N) - 1;

    fn empty() -> Self {
        Self {
            keys: [K::default(); N],
            ids: [0; N],
            meta: 0,
        }
    }

    /// Occupied slots holding `key`: at most one bit set.
    #[inline]
    fn matches(&self, key: K) -> u32 {
        let mut m = 0;
        for (j, k) in self.keys.iter().enumerate() {
            m |= u32::from(*k == key) << j;
        }
        m & self.meta
    }

    #[inline]
    fn displaced(&self) -> bool {
        self.meta >= DISPLACED_ONE
    }

    fn free(&self) -> u32 {
        !self.meta & Self::FULL
    }
}

/// A map from masked addresses to identities; see the module docs.
#[derive(Clone, Debug)]
pub(super) struct BucketMap<K, const N: usize> {
    buckets: Box<[Bucket<K, N>]>,
    /// One-hash Bloom filter over the keys, [`FILTER_BITS_PER_SLOT`] bits
    /// per slot, indexed by the top bits of the hash (the bucket index uses
    /// the low ones). Removals leave their bit set until the next rebuild.
    filter: Box<[u64]>,
    /// `64 - log2(filter bits)`.
    filter_shift: u32,
    len: usize,
    /// Removals since the filter was last rebuilt.
    stale: usize,
}

/// At the maximum load this is 10 bits per key: about 10% of absent keys
/// pass the filter and cost a bucket load.
const FILTER_BITS_PER_SLOT: usize = 8;

impl<K: Key, const N: usize> Default for BucketMap<K, N> {
    fn default() -> Self {
        Self {
            buckets: Box::default(),
            filter: Box::default(),
            filter_shift: 64,
            len: 0,
            stale: 0,
        }
    }
}

impl<K: Key, const N: usize> BucketMap<K, N> {
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.buckets.len() - 1)
    }

    /// Whether the filter lets `hash` through. Only called when non-empty.
    #[inline]
    fn filter_passes(&self, hash: u64) -> bool {
        let bit = (hash >> self.filter_shift) as usize;
        self.filter[bit / 64] & (1 << (bit % 64)) != 0
    }

    fn filter_set(&mut self, hash: u64) {
        let bit = (hash >> self.filter_shift) as usize;
        self.filter[bit / 64] |= 1 << (bit % 64);
    }

    /// Starts loading the filter word and the home bucket of `key`, so a
    /// [`Self::get`] issued a little later finds them in cache.
    #[inline]
    pub(super) fn prefetch(&self, key: K) {
        if self.buckets.is_empty() {
            return;
        }
        let hash = key.hash();
        let bit = (hash >> self.filter_shift) as usize;
        prefetch(&self.filter[bit / 64]);
        prefetch(&self.buckets[self.home(hash)]);
    }

    #[inline]
    pub(super) fn get(&self, key: K) -> Option<NumericIdentity> {
        if self.buckets.is_empty() {
            return None;
        }
        // Most probes of a lookup miss: the filter, a few percent of the
        // table's size, turns most of them away before a bucket is read.
        let hash = key.hash();
        if !self.filter_passes(hash) {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let mut i = self.home(hash);
        loop {
            let b = &self.buckets[i];
            let m = b.matches(key);
            if m != 0 {
                return Some(NumericIdentity(b.ids[m.trailing_zeros() as usize]));
            }
            if !b.displaced() {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Bucket and slot of `key`.
    fn find(&self, key: K) -> Option<(usize, usize)> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let mut i = self.home(key.hash());
        loop {
            let b = &self.buckets[i];
            let m = b.matches(key);
            if m != 0 {
                return Some((i, m.trailing_zeros() as usize));
            }
            if !b.displaced() {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    pub(super) fn insert(&mut self, key: K, id: NumericIdentity) -> Option<NumericIdentity> {
        if let Some((i, j)) = self.find(key) {
            let old = std::mem::replace(&mut self.buckets[i].ids[j], id.0);
            return Some(NumericIdentity(old));
        }
        assert!(
            self.len < MAX_ENTRIES,
            "more than {MAX_ENTRIES} prefixes of one length"
        );
        if (self.len + 1) * MAX_LOAD.1 > self.buckets.len() * N * MAX_LOAD.0 {
            self.resize((self.buckets.len() * 2).max(1));
        }
        self.place(key, id.0);
        self.filter_set(key.hash());
        self.len += 1;
        None
    }

    pub(super) fn remove(&mut self, key: K) -> Option<NumericIdentity> {
        let (p, j) = self.find(key)?;
        let mask = self.buckets.len() - 1;
        let old = self.buckets[p].ids[j];
        self.buckets[p].meta &= !(1 << j);
        let mut i = self.home(key.hash());
        while i != p {
            self.buckets[i].meta -= DISPLACED_ONE;
            i = (i + 1) & mask;
        }
        self.len -= 1;
        self.stale += 1;
        if self.buckets.len() > 1 && self.len * MIN_LOAD.1 < self.buckets.len() * N * MIN_LOAD.0 {
            self.resize(self.buckets.len() / 2);
        } else if self.stale > self.len / 2 + N {
            // Stale bits only cost extra bucket loads; rebuilding once they
            // could be half the set ones keeps removal O(1) amortised.
            self.rebuild_filter();
        }
        Some(NumericIdentity(old))
    }

    /// Make room for `additional` more entries without growing.
    pub(super) fn reserve(&mut self, additional: usize) {
        let want = self.len + additional;
        let mut buckets = self.buckets.len().max(1);
        while want * MAX_LOAD.1 > buckets * N * MAX_LOAD.0 {
            buckets *= 2;
        }
        if buckets > self.buckets.len() {
            self.resize(buckets);
        }
    }

    /// Every entry, in bucket order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (K, NumericIdentity)> + '_ {
        self.buckets.iter().flat_map(|b| {
            (0..N)
                .filter(move |j| b.meta & (1 << j) != 0)
                .map(move |j| (b.keys[j], NumericIdentity(b.ids[j])))
        })
    }

    /// `key` must be absent and a slot free.
    fn place(&mut self, key: K, id: u32) {
        let mask = self.buckets.len() - 1;
        let mut i = self.home(key.hash());
        loop {
            let b = &mut self.buckets[i];
            let free = b.free();
            if free != 0 {
                let j = free.trailing_zeros() as usize;
                b.keys[j] = key;
                b.ids[j] = id;
                b.meta |= 1 << j;
                return;
            }
            b.meta += DISPLACED_ONE;
            i = (i + 1) & mask;
        }
    }

    fn resize(&mut self, buckets: usize) {
        debug_assert!(buckets.is_power_of_two());
        let old = std::mem::replace(&mut self.buckets, huge_page_slice(buckets, Bucket::empty()));
        for b in old.iter() {
            for j in 0..N {
                if b.meta & (1 << j) != 0 {
                    self.place(b.keys[j], b.ids[j]);
                }
            }
        }
        self.rebuild_filter();
    }

    /// Size the filter to the bucket array and set exactly the live keys.
    fn rebuild_filter(&mut self) {
        let bits = (self.buckets.len() * N * FILTER_BITS_PER_SLOT)
            .next_power_of_two()
            .max(64);
        self.filter_shift = 64 - bits.trailing_zeros();
        if self.filter.len() == bits / 64 {
            self.filter.fill(0);
        } else {
            self.filter = vec![0; bits / 64].into_boxed_slice();
        }
        for i in 0..self.buckets.len() {
            for j in 0..N {
                if self.buckets[i].meta & (1 << j) != 0 {
                    self.filter_set(self.buckets[i].keys[j].hash());
                }
            }
        }
        self.stale = 0;
    }

    /// Check the `displaced` counts against the entries. For tests.
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        if self.buckets.is_empty() {
            assert_eq!(self.len, 0);
            return;
        }
        let mask = self.buckets.len() - 1;
        let mut displaced = vec![0u32; self.buckets.len()];
        let mut count = 0;
        for (p, b) in self.buckets.iter().enumerate() {
            assert_eq!(
                b.meta & ((1 << OCCUPIED_BITS) - 1) & !Bucket::<K, N>::FULL,
                0
            );
            for j in 0..N {
                if b.meta & (1 << j) != 0 {
                    count += 1;
                    assert!(self.filter_passes(b.keys[j].hash()), "filter lost a key");
                    let mut i = self.home(b.keys[j].hash());
                    while i != p {
                        displaced[i] += 1;
                        i = (i + 1) & mask;
                    }
                }
            }
        }
        assert_eq!(count, self.len);
        for (b, want) in self.buckets.iter().zip(displaced) {
            assert_eq!(b.meta >> OCCUPIED_BITS, want);
        }
    }
}

/// A slice of `n` copies of `fill`, asking the kernel to back it with
/// transparent huge pages. At a million entries every lookup lands on a
/// random 4 KiB page, so TLB walks, not the data, bound a batch of
/// prefetched lookups; 2 MiB pages keep the whole table in the TLB. The
/// advice goes in before the first write so the pages are faulted in huge.
fn huge_page_slice<T: Clone>(n: usize, fill: T) -> Box<[T]> {
    const HUGE_PAGE: usize = 2 << 20;
    let mut v: Vec<T> = Vec::with_capacity(n);
    let start = v.as_mut_ptr() as usize;
    let len = n * std::mem::size_of::<T>();
    let first = (start + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
    let last = (start + len) & !(HUGE_PAGE - 1);
    if last > first {
        // SAFETY: [first, last) lies inside the allocation `v` owns and has
        // not initialised yet. MADV_HUGEPAGE only changes how the kernel
        // backs the range, never what it holds; if THP is off the call
        // fails and nothing changes, which is fine.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_HUGEPAGE,
            );
        }
    }
    v.resize(n, fill);
    v.into_boxed_slice()
}

/// A read hint to the CPU: start loading the cache line holding `r`.
#[inline(always)]
pub(super) fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is only a hint; it never faults and reads
        // nothing the program sees. `r` is a live reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((r as *const T).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        #[test]
        fn behaves_like_a_btreemap(ops in prop::collection::vec((any::<bool>(), 0u32..200, any::<u32>()), 0..600)) {
            // Few distinct keys, so inserts replace and removes hit.
            let mut map: BucketMap<u32, 7> = BucketMap::default();
            let mut wide: BucketMap<u128, 3> = BucketMap::default();
            let mut reference = BTreeMap::new();
            for (insert, k, v) in ops {
                let wk = u128::from(k) << 64 | 7;
                if insert {
                    let want = reference.insert(k, v).map(NumericIdentity);
                    prop_assert_eq!(map.insert(k, NumericIdentity(v)), want);
                    prop_assert_eq!(wide.insert(wk, NumericIdentity(v)), want);
                } else {
                    let want = reference.remove(&k).map(NumericIdentity);
                    prop_assert_eq!(map.remove(k), want);
                    prop_assert_eq!(wide.remove(wk), want);
                }
            }
            map.check_invariants();
            wide.check_invariants();
            prop_assert_eq!(map.len(), reference.len());
            for k in 0..200 {
                let want = reference.get(&k).copied().map(NumericIdentity);
                prop_assert_eq!(map.get(k), want);
                prop_assert_eq!(wide.get(u128::from(k) << 64 | 7), want);
            }
            let mut listed: Vec<_> = map.iter().map(|(k, v)| (k, v.0)).collect();
            listed.sort_unstable();
            prop_assert_eq!(listed, reference.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn reserve_avoids_growth() {
        let mut map: BucketMap<u32, 7> = BucketMap::default();
        map.reserve(10_000);
        let buckets = map.buckets.len();
        for k in 0..10_000 {
            map.insert(k, NumericIdentity(k));
        }
        assert_eq!(map.buckets.len(), buckets);
        map.check_invariants();
    }
}
