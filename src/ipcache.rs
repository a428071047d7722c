//! The ipcache: which security identity an IP address belongs to.
//!
//! It owns the prefix → identity table that every packet consults once (for
//! its peer address), and the concurrency scheme that lets many worker
//! threads read it while one control-plane writer changes it.
//!
//! # Lookup rule
//!
//! Entries are IPv4 or IPv6 prefixes with an identity and an [`Origin`].
//! A lookup is a longest-prefix match in two tiers:
//!
//! 1. the longest [`Origin::Labelled`] prefix covering the address wins,
//!    whatever its length;
//! 2. only if no Labelled prefix covers the address, the longest
//!    [`Origin::Cidr`] prefix covering it wins;
//! 3. otherwise the address is unknown: `None`, which callers treat as
//!    [`WORLD`] ([`IpCacheReader::lookup_or_world`]).
//!
//! This is the policy rule "CIDR selectors match only addresses that do not
//! belong to a known endpoint or labelled ipcache entry": a Cidr
//! `10.1.0.0/16` must not capture `10.1.2.3` when a Labelled `10.0.0.0/8`
//! covers it, although the Cidr prefix is longer. IPv4 and IPv6 are
//! separate spaces (an IPv4 /0 never matches an IPv6 address) and
//! IPv4-mapped IPv6 addresses get no special treatment. Prefixes are stored
//! normalised (host bits cleared); inserting an existing prefix replaces its
//! identity and origin.
//!
//! # Concurrency
//!
//! The table is kept twice by [`left_right`]: readers use one copy while the
//! writer replays its operation log onto the other, and
//! [`IpCache::publish`] swaps them. A reader never waits for the writer and
//! never writes a cache line another thread writes: entering a copy bumps a
//! cache-padded epoch counter that belongs to that reader alone (the writer
//! only reads it). [`IpCacheReader::lookup`] pays that enter/exit (two
//! uncontended atomic adds and a fence) per call, so a worker handling a
//! batch of packets should [`IpCacheReader::enter`] once per batch and look
//! up through the [`IpCacheView`]. Holding a view delays the writer's
//! `publish`, so views must not outlive a batch.
//!
//! Changes made through [`IpCache`] are staged: readers see none of them
//! until `publish`. The writer answers questions about the staged state
//! (`len`, `remove`'s result, `entries`) from the published copy plus a map
//! of the changes made since the last publish, so no third copy of the table
//! is kept.
//!
//! # Layout
//!
//! [`Lpm`] keeps one hash map per tier and prefix length, keyed by masked
//! address, and probes only lengths that can match, longest first:
//!
//! * IPv4: a 65,536-entry array indexed by the top 16 bits holds, per tier,
//!   the best match among prefixes of length ≤ 16 and a mask of the longer
//!   lengths present under that /16. The Labelled /32 map (endpoints, most
//!   of a large table) is probed first, in parallel with that array read; a
//!   typical lookup is then one array read plus at most one or two probes.
//! * IPv6: the lengths present per tier, plus a 4,096-cell array indexed by
//!   a hash of the top 32 bits that says which lengths > 32 occur under the
//!   /32s of that cell, so addresses outside the table's /32s skip them.
//! * Each map keeps keys and identities in 64-byte buckets (one cache line
//!   per probe) and a small Bloom filter, so the probes that miss, which are
//!   most of them, usually cost one bit of a cache-resident array.
//!
//! * Bucket arrays are advised onto transparent huge pages, so a large
//!   table's random lookups are not bound by page walks.
//!
//! A miss in the Labelled tier therefore never walks all 33 or 129 lengths,
//! and lookups do not allocate. About 24 bytes per entry per copy at a
//! million entries (two copies are kept).

mod lpm;
mod table;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hashbrown::HashMap;
use ipnet::IpNet;
use left_right::{Absorb, ReadGuard, ReadHandle, WriteHandle};
use rustc_hash::FxBuildHasher;
use serde::Serialize;

pub use self::lpm::Lpm;
use crate::identity::{NumericIdentity, WORLD};

/// Where an entry came from, which decides its tier in a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// An endpoint or another labelled entity: shadows every Cidr entry.
    Labelled,
    /// A CIDR selector's prefix: used only where no Labelled entry matches.
    Cidr,
}

/// One ipcache entry, as listed by [`IpCache::entries`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpCacheEntry {
    #[serde(serialize_with = "serialize_display")]
    pub prefix: IpNet,
    pub identity: NumericIdentity,
    pub origin: Origin,
}

fn serialize_display<S: serde::Serializer>(prefix: &IpNet, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(prefix)
}

/// What readers see: the table, and a value published with it (see
/// [`IpCache::attach`]).
#[derive(Clone)]
struct Published<A> {
    lpm: Lpm,
    attached: A,
}

/// One entry of the left-right operation log. Prefixes are already
/// normalised when logged.
#[derive(Clone, Debug)]
enum Op<A> {
    Insert(IpNet, NumericIdentity, Origin),
    Remove(IpNet),
    Attach(A),
}

impl<A: Clone> Absorb<Op<A>> for Published<A> {
    fn absorb_first(&mut self, op: &mut Op<A>, _other: &Self) {
        match op {
            Op::Insert(prefix, id, origin) => {
                self.lpm.insert(*prefix, *id, *origin);
            }
            Op::Remove(prefix) => {
                self.lpm.remove(*prefix);
            }
            Op::Attach(a) => self.attached = a.clone(),
        }
    }

    fn sync_with(&mut self, first: &Self) {
        self.lpm.clone_from(&first.lpm);
        self.attached = first.attached.clone();
    }
}

type Staged = HashMap<IpNet, Option<(NumericIdentity, Origin)>, FxBuildHasher>;

/// A staged map larger than this is dropped rather than cleared on publish,
/// so one bulk load does not pin its memory for good.
const STAGED_KEEP_CAPACITY: usize = 4096;

/// The single writer of the ipcache. Changes are staged until
/// [`publish`](Self::publish).
///
/// `A` is a value published together with the table (the datapath's
/// compiled verdict tables): a reader's view holds a table and the value
/// that were published together, never one without the other. `()` when
/// there is none.
pub struct IpCache<A: Clone = ()> {
    handle: WriteHandle<Published<A>, Op<A>>,
    /// Changes since the last publish: `None` marks a removal.
    staged: Staged,
    /// Number of entries in the staged state.
    staged_len: usize,
    /// Called after every publish, once readers see the new state.
    on_publish: Option<PublishHook>,
}

/// What [`IpCache::set_on_publish`] runs after each publish: whoever keeps
/// copies of decisions made against the ipcache (the hybrid datapath's
/// verdict cache) drops them there, before the publish returns.
pub type PublishHook = std::sync::Arc<dyn Fn() + Send + Sync>;

impl Default for IpCache {
    fn default() -> Self {
        Self::new()
    }
}

impl IpCache {
    /// An empty ipcache.
    pub fn new() -> Self {
        Self::with_capacity(0, 0)
    }

    /// An empty ipcache sized for a bulk load of about `v4` IPv4 and `v6`
    /// IPv6 host entries, so neither copy rehashes while it is loaded.
    pub fn with_capacity(v4: usize, v6: usize) -> Self {
        Self::with_attached(v4, v6, ())
    }
}

impl<A: Clone> IpCache<A> {
    /// [`IpCache::with_capacity`], with `attached` published from the
    /// start.
    pub fn with_attached(v4: usize, v6: usize, attached: A) -> Self {
        let (handle, _reader) = left_right::new_from_empty(Published {
            lpm: Lpm::with_capacity(v4, v6),
            attached,
        });
        Self {
            handle,
            staged: Staged::with_capacity_and_hasher(v4 + v6, FxBuildHasher),
            staged_len: 0,
            on_publish: None,
        }
    }

    /// Runs `hook` after every later publish (replacing any earlier hook).
    pub fn set_on_publish(&mut self, hook: Option<PublishHook>) {
        self.on_publish = hook;
    }

    /// Stage `prefix` → `identity` (host bits of `prefix` are cleared),
    /// replacing any entry for the same prefix.
    pub fn insert(&mut self, prefix: IpNet, identity: NumericIdentity, origin: Origin) {
        let prefix = prefix.trunc();
        match self.staged_get(prefix) {
            Some(current) if current == (identity, origin) => return,
            Some(_) => {}
            None => self.staged_len += 1,
        }
        self.staged.insert(prefix, Some((identity, origin)));
        self.handle.append(Op::Insert(prefix, identity, origin));
    }

    /// Stage the removal of `prefix` (host bits cleared). Returns whether it
    /// was present in the staged state.
    pub fn remove(&mut self, prefix: IpNet) -> bool {
        let prefix = prefix.trunc();
        if self.staged_get(prefix).is_none() {
            return false;
        }
        self.staged_len -= 1;
        self.staged.insert(prefix, None);
        self.handle.append(Op::Remove(prefix));
        true
    }

    /// Stage `attached` as the value published with the table: readers
    /// see it from the same publish as the table changes staged with it.
    pub fn attach(&mut self, attached: A) {
        self.handle.append(Op::Attach(attached));
    }

    /// Make every staged change visible to readers. Waits for readers still
    /// inside the copy that is about to be rewritten, which is at most one
    /// batch each.
    pub fn publish(&mut self) {
        self.handle.publish();
        if let Some(hook) = &self.on_publish {
            hook();
        }
        if self.staged.capacity() > STAGED_KEEP_CAPACITY {
            self.staged = Staged::default();
        } else {
            self.staged.clear();
        }
    }

    /// A new read handle; clone it (or call this again) once per thread.
    pub fn reader(&self) -> IpCacheReader<A> {
        IpCacheReader {
            handle: ReadHandle::clone(&self.handle),
        }
    }

    /// Number of entries in the staged state.
    pub fn len(&self) -> usize {
        self.staged_len
    }

    /// Whether the staged state has no entries.
    pub fn is_empty(&self) -> bool {
        self.staged_len == 0
    }

    /// The entry for exactly `prefix` in the staged state.
    pub fn get(&self, prefix: IpNet) -> Option<(NumericIdentity, Origin)> {
        self.staged_get(prefix.trunc())
    }

    /// Every entry of the staged state, IPv4 before IPv6, then by address,
    /// then by prefix length.
    pub fn entries(&self) -> Vec<IpCacheEntry> {
        let mut out: Vec<IpCacheEntry> = match self.handle.enter() {
            Some(published) => published.lpm.entries(),
            None => Vec::new(),
        };
        if self.staged.is_empty() {
            return out;
        }
        out.retain(|e| !self.staged.contains_key(&e.prefix));
        out.extend(self.staged.iter().filter_map(|(prefix, v)| {
            v.map(|(identity, origin)| IpCacheEntry {
                prefix: *prefix,
                identity,
                origin,
            })
        }));
        out.sort_unstable_by_key(|e| lpm::sort_key(&e.prefix));
        out
    }

    /// `prefix` must be normalised.
    fn staged_get(&self, prefix: IpNet) -> Option<(NumericIdentity, Origin)> {
        match self.staged.get(&prefix) {
            Some(v) => *v,
            None => self.handle.enter()?.lpm.get(prefix),
        }
    }
}

/// A worker's read handle. Not `Sync`: give each thread its own clone.
pub struct IpCacheReader<A = ()> {
    handle: ReadHandle<Published<A>>,
}

impl<A> Clone for IpCacheReader<A> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
        }
    }
}

impl<A> IpCacheReader<A> {
    /// Identity of `addr` as of the last publish; `None` if no entry covers
    /// it (or the writer is gone).
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<NumericIdentity> {
        self.handle.enter()?.lpm.lookup(addr)
    }

    /// [`Self::lookup`] for an IPv4 address.
    #[inline]
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<NumericIdentity> {
        self.handle.enter()?.lpm.lookup_v4(addr)
    }

    /// [`Self::lookup`] for an IPv6 address.
    #[inline]
    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<NumericIdentity> {
        self.handle.enter()?.lpm.lookup_v6(addr)
    }

    /// [`Self::lookup`], with unclaimed addresses mapped to [`WORLD`].
    #[inline]
    pub fn lookup_or_world(&self, addr: IpAddr) -> NumericIdentity {
        self.lookup(addr).unwrap_or(WORLD)
    }

    /// Pin the published table for a batch of lookups. `None` once the
    /// writer has been dropped. Drop the view at the end of the batch: a
    /// publish waits for it.
    #[inline]
    pub fn enter(&self) -> Option<IpCacheView<'_, A>> {
        self.handle.enter().map(|guard| IpCacheView { guard })
    }
}

/// The published table, pinned for a batch of lookups.
pub struct IpCacheView<'a, A = ()> {
    guard: ReadGuard<'a, Published<A>>,
}

impl<A> IpCacheView<'_, A> {
    /// The value published with this table.
    #[inline]
    pub fn attached(&self) -> &A {
        &self.guard.attached
    }

    /// Entries in the pinned table.
    #[inline]
    pub fn len(&self) -> usize {
        self.guard.lpm.len()
    }

    /// Whether the pinned table is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.guard.lpm.is_empty()
    }

    /// See [`Lpm::prefetch`]: warm a batch, then look it up.
    #[inline]
    pub fn prefetch(&self, addr: IpAddr) {
        self.guard.lpm.prefetch(addr)
    }

    /// See [`IpCacheReader::lookup`].
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<NumericIdentity> {
        self.guard.lpm.lookup(addr)
    }

    /// See [`IpCacheReader::lookup_v4`].
    #[inline]
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<NumericIdentity> {
        self.guard.lpm.lookup_v4(addr)
    }

    /// See [`IpCacheReader::lookup_v6`].
    #[inline]
    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<NumericIdentity> {
        self.guard.lpm.lookup_v6(addr)
    }

    /// See [`IpCacheReader::lookup_or_world`].
    #[inline]
    pub fn lookup_or_world(&self, addr: IpAddr) -> NumericIdentity {
        self.guard.lpm.lookup_or_world(addr)
    }
}

#[cfg(test)]
mod tests;
