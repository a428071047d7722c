//! Connection tracking: which flows exist, who opened them, and how far a
//! TCP connection has got, so replies pass without policy and idle flows
//! expire. No I/O and no clock of its own: callers pass `now` in seconds,
//! so tests are deterministic.
//!
//! Both directions of a flow share one entry. A [`Tuple`] is stored in a
//! canonical order (lower address and port first), with a flag saying which
//! side opened the flow; a lookup returns whether the packet goes the way
//! the flow was opened ([`Dir::Forward`]) or back ([`Dir::Reply`]).
//!
//! The table is split into shards, each behind its own mutex, so workers on
//! different flows rarely meet; a lock is held for one lookup or insert,
//! never across a batch, and nothing allocates once a shard has grown.
//!
//! Every entry is charged to an owner (the local endpoint that opened the
//! flow, or that an inbound flow goes to), and with `owners` set each owner
//! may hold an equal share of the capacity. An owner at its share first
//! gives up one of its own unassured entries (no reply seen yet), oldest
//! first, as Linux's early drop does; when it has none, the new flow is
//! refused. So a SYN flood from one endpoint costs that endpoint its new
//! flows and never another endpoint its established ones. A full shard
//! (hashing is uneven) frees an expired entry from a sample, else the
//! sample's oldest unassured one, else its least recently seen, and counts
//! it. [`Conntrack::gc`] removes every expired entry.
//!
//! The workers consult it through [`crate::filter`]; flows opened towards an
//! endpoint are entered from the TC program's reports.
//!
//! A [`Journal`], when given, hears of every flow that appears, changes
//! state or goes, while the shard's lock is held, so it always mirrors the
//! table: the datapath keeps one in a pinned BPF map, and a successor
//! process [`restore`](Conntrack::restore)s from it so established flows
//! survive a crash.
//!
//! A [`Projection`], when given, is a copy of some flows kept elsewhere
//! (the hybrid datapath's verdict cache in BPF), which serves their packets
//! without this table seeing them. The table stays the truth: a flow is
//! projected only through [`Conntrack::project`], under its shard's lock
//! and while it is not closing, and withdrawn under the same lock the
//! moment it starts closing or goes. Its idle timer reads the projection's
//! last-seen time before the flow may expire.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use rustc_hash::FxBuildHasher;

use crate::wire::{tcp_flags, FlowInfo, L4Proto};

/// A flow's five-tuple as a packet carries it (source first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    /// The tuple of a parsed frame. ICMP echo is keyed by its identifier on
    /// both sides so request and reply meet; other ICMP has no ports.
    #[inline]
    pub fn of(flow: &FlowInfo) -> Self {
        let (sport, dport) = match flow.l4_proto() {
            L4Proto::ICMP | L4Proto::ICMPV6 => (flow.sport, flow.sport),
            _ => (flow.sport, flow.dport),
        };
        Tuple {
            src: flow.src,
            dst: flow.dst,
            sport,
            dport,
            proto: flow.proto,
        }
    }

    /// The same flow seen from the other side.
    pub fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// Canonical key and whether `self` runs from the key's first side.
    pub fn key(&self) -> (Tuple, bool) {
        if (self.src, self.sport) <= (self.dst, self.dport) {
            (*self, true)
        } else {
            (self.reversed(), false)
        }
    }
}

/// Which way a packet goes relative to the flow's opener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Forward,
    Reply,
}

/// How far a tracked flow has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// TCP: opened, no reply yet.
    SynSent,
    /// TCP after a reply; any other protocol once seen.
    Established,
    /// TCP: a FIN or RST was seen.
    Closing,
}

/// Idle timeouts in seconds (Cilium's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn: u64,
    pub tcp_established: u64,
    pub tcp_closing: u64,
    pub other: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: 60,
            tcp_established: 21_600,
            tcp_closing: 10,
            other: 60,
        }
    }
}

/// Size and timeouts of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Entries the whole table may hold (Cilium's default: 512k).
    pub capacity: usize,
    /// Number of shards (rounded up to a power of two).
    pub shards: usize,
    pub timeouts: Timeouts,
    /// Owners (endpoints) the capacity is shared among, each holding at
    /// most `capacity / owners` entries; 0 for one pool with no shares.
    pub owners: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            capacity: 512 * 1024,
            shards: 64,
            timeouts: Timeouts::default(),
            owners: 0,
        }
    }
}

/// An owner outside `0..owners`: its entries are not counted against a
/// share.
pub const NO_OWNER: u16 = u16::MAX;

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The opener is the key's first side.
    opened_by_first: bool,
    /// A reply has been seen (Linux's IPS_ASSURED, near enough).
    assured: bool,
    state: State,
    owner: u16,
    /// Handed to the projection, which may be serving its packets.
    projected: bool,
    last_seen: u64,
}

/// Counters, merged over shards on read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub created: u64,
    pub evicted: u64,
    pub expired: u64,
    /// Unassured entries an owner at its share gave up for a new flow.
    pub early_dropped: u64,
    /// New flows refused: their owner's share held only assured entries.
    pub refused: u64,
}

/// What [`Conntrack::create`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// The flow is tracked.
    Tracked,
    /// The flow is tracked; a live entry of a full shard was evicted.
    Evicted,
    /// Not tracked: the owner's share is full of assured flows.
    Refused,
}

/// Hears of every change to the table, under the lock of the shard it
/// concerns (so two changes to one flow arrive in order). Keys are
/// canonical ([`Tuple`] in the table's order); `opened_by_first` says the
/// key's first side opened the flow. It must not fail or block: an
/// implementation counts what it could not record.
pub trait Journal: Send + Sync {
    fn record(&self, key: &Tuple, opened_by_first: bool, state: State);
    fn forget(&self, key: &Tuple);
}

/// A copy of flows kept outside the table (see the module doc). Called
/// under the lock of the flow's shard; must not block.
pub trait Projection: Send + Sync {
    /// The flow of canonical `key` must no longer be served.
    fn withdraw(&self, key: &Tuple);
    /// When the projection last served a packet of the flow of canonical
    /// `key`, in the table's seconds; `None` if it never did or cannot say.
    fn last_seen(&self, key: &Tuple) -> Option<u64>;
}

/// Entries sampled when a full shard needs room.
const EVICTION_SAMPLE: usize = 8;
/// Candidates an owner at its share looks at for one to give up.
const EARLY_DROP_TRIES: usize = 32;

type Shard = HashMap<Tuple, Entry, FxBuildHasher>;

/// One owner's share: entries held, and its unassured entries in the order
/// they were made (candidates for early drop; ones since assured or gone
/// are skipped when they come up).
struct Share {
    held: AtomicUsize,
    unassured: Mutex<VecDeque<Tuple>>,
}

/// The connection table shared by all workers.
pub struct Conntrack {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    shares: Box<[Share]>,
    /// Entries one owner may hold (`usize::MAX` without shares).
    share: usize,
    timeouts: Timeouts,
    created: AtomicU64,
    evicted: AtomicU64,
    expired: AtomicU64,
    early_dropped: AtomicU64,
    refused: AtomicU64,
    journal: Option<std::sync::Arc<dyn Journal>>,
    projection: Option<std::sync::Arc<dyn Projection>>,
}

impl Conntrack {
    pub fn new(config: Config) -> Self {
        let n = config.shards.max(1).next_power_of_two();
        let mut per_shard = config.capacity.div_ceil(n).max(1);
        let share = match config.owners {
            0 => usize::MAX,
            owners => (config.capacity / owners).max(1),
        };
        if config.owners > 0 {
            // The shares bound the total; shards get room for hashing's
            // unevenness, so one owner's flows rarely push out another's.
            per_shard *= 2;
        }
        Self {
            shards: (0..n)
                .map(|_| Mutex::new(HashMap::with_hasher(FxBuildHasher)))
                .collect(),
            per_shard,
            shares: (0..config.owners)
                .map(|_| Share {
                    held: AtomicUsize::new(0),
                    unassured: Mutex::new(VecDeque::new()),
                })
                .collect(),
            share,
            timeouts: config.timeouts,
            created: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            early_dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            journal: None,
            projection: None,
        }
    }

    /// Entries one owner may hold, if the table has shares.
    pub fn share(&self) -> Option<usize> {
        (self.share != usize::MAX).then_some(self.share)
    }

    /// Entries `owner` holds (0 for an owner without a share).
    pub fn held_by(&self, owner: u16) -> usize {
        self.shares
            .get(usize::from(owner))
            .map_or(0, |s| s.held.load(Ordering::Relaxed))
    }

    fn charge(&self, owner: u16) {
        if let Some(s) = self.shares.get(usize::from(owner)) {
            s.held.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets a removed entry: its owner's count, the journal's copy and
    /// the projection's.
    fn removed(&self, key: &Tuple, e: &Entry) {
        if let Some(s) = self.shares.get(usize::from(e.owner)) {
            s.held.fetch_sub(1, Ordering::Relaxed);
        }
        self.journal_forget(key);
        self.withdraw(key, e);
    }

    fn withdraw(&self, key: &Tuple, e: &Entry) {
        if let (true, Some(p)) = (e.projected, &self.projection) {
            p.withdraw(key);
        }
    }

    /// Gives later flows to `projection` through [`Conntrack::project`].
    pub fn with_projection(mut self, projection: std::sync::Arc<dyn Projection>) -> Self {
        self.projection = Some(projection);
        self
    }

    /// Whether the entry of `key` is still alive at `now`: seen within its
    /// timeout here, or (when projected) by the projection, whose time is
    /// then taken as the entry's own.
    fn alive(&self, key: &Tuple, e: &mut Entry, now: u64) -> bool {
        if !self.expired_at(key, e, now) {
            return true;
        }
        if let (true, Some(p)) = (e.projected, &self.projection) {
            if let Some(seen) = p.last_seen(key) {
                if seen > e.last_seen {
                    e.last_seen = seen.min(now);
                    return !self.expired_at(key, e, now);
                }
            }
        }
        false
    }

    /// Hands the flow of `t` to the projection: runs `publish` under the
    /// flow's shard lock if the flow is tracked, alive and not closing, and
    /// marks it projected when `publish` says it did. Returns whether it did.
    /// Withdrawals take the same lock, so a flow that starts closing or goes
    /// is never published after it was withdrawn.
    pub fn project(&self, t: &Tuple, now: u64, publish: impl FnOnce() -> bool) -> bool {
        let (key, _) = t.key();
        let mut shard = self.shard(&key).lock().expect("conntrack shard poisoned");
        let Some(e) = shard.get_mut(&key) else {
            return false;
        };
        if e.state == State::Closing || self.expired_at(&key, e, now) || !publish() {
            return false;
        }
        e.projected = true;
        true
    }

    /// Mirrors every later change into `journal`.
    pub fn with_journal(mut self, journal: std::sync::Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    fn journal_record(&self, key: &Tuple, e: &Entry) {
        if let Some(j) = &self.journal {
            j.record(key, e.opened_by_first, e.state);
        }
    }

    fn journal_forget(&self, key: &Tuple) {
        if let Some(j) = &self.journal {
            j.forget(key);
        }
    }

    /// Puts back a flow a journal kept (canonical `key`), charged to
    /// `owner`, as last seen at `now`; not journalled again. A flow that
    /// lived through a restart counts as assured unless it is a TCP flow
    /// still waiting for its SYN's answer. Returns `false` when its shard or
    /// its owner's share is full.
    pub fn restore(
        &self,
        key: &Tuple,
        opened_by_first: bool,
        state: State,
        owner: u16,
        now: u64,
    ) -> bool {
        if key.key().0 != *key {
            return false;
        }
        let mut shard = self.shard(key).lock().expect("conntrack shard poisoned");
        if shard.contains_key(key) {
            return true;
        }
        if shard.len() >= self.per_shard || self.held_by(owner) >= self.share {
            return false;
        }
        shard.insert(
            *key,
            Entry {
                opened_by_first,
                assured: state != State::SynSent,
                state,
                owner,
                projected: false,
                last_seen: now,
            },
        );
        self.charge(owner);
        true
    }

    fn shard(&self, key: &Tuple) -> &Mutex<Shard> {
        use std::hash::BuildHasher;
        let h = FxBuildHasher.hash_one(key);
        // The high bits: FxHash's low bits are weak for small integers.
        &self.shards[(h >> 32) as usize & (self.shards.len() - 1)]
    }

    fn timeout(&self, proto_: u8, state: State) -> u64 {
        if proto_ != L4Proto::TCP.0 {
            return self.timeouts.other;
        }
        match state {
            State::SynSent => self.timeouts.tcp_syn,
            State::Established => self.timeouts.tcp_established,
            State::Closing => self.timeouts.tcp_closing,
        }
    }

    fn expired_at(&self, key: &Tuple, e: &Entry, now: u64) -> bool {
        now.saturating_sub(e.last_seen) > self.timeout(key.proto, e.state)
    }

    /// Looks a packet's flow up. On a hit the entry is refreshed and its TCP
    /// state advanced by `tcp_flags` (0 for other protocols); an expired
    /// entry is removed and reported as a miss.
    pub fn lookup(&self, t: &Tuple, tcp_flags_: u8, now: u64) -> Option<(Dir, State)> {
        let (key, from_first) = t.key();
        let mut shard = self.shard(&key).lock().expect("conntrack shard poisoned");
        let e = shard.get_mut(&key)?;
        if !self.alive(&key, e, now) {
            let e = *e;
            shard.remove(&key);
            self.removed(&key, &e);
            self.expired.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let dir = if from_first == e.opened_by_first {
            Dir::Forward
        } else {
            Dir::Reply
        };
        let state = advance(e.state, key.proto, dir, tcp_flags_);
        // Assured once answered; for TCP only by an answer that establishes
        // it, not by a RST (a SYN flood's victims answer with RSTs).
        if dir == Dir::Reply && (key.proto != L4Proto::TCP.0 || state == State::Established) {
            e.assured = true;
        }
        e.last_seen = now;
        if state != e.state {
            e.state = state;
            if state == State::Closing && e.projected {
                // FIN and RST always come here: from now on every packet of
                // the flow does too.
                e.projected = false;
                if let Some(p) = &self.projection {
                    p.withdraw(&key);
                }
            }
            let e = *e;
            self.journal_record(&key, &e);
        }
        Some((dir, state))
    }

    /// Which way `t` runs in its tracked flow, without refreshing or
    /// advancing the entry (for ICMP errors and inbound reports, which must
    /// not keep a flow alive or move its TCP state).
    pub fn peek(&self, t: &Tuple, now: u64) -> Option<Dir> {
        let (key, from_first) = t.key();
        let mut shard = self.shard(&key).lock().expect("conntrack shard poisoned");
        let e = shard.get_mut(&key)?;
        if !self.alive(&key, e, now) {
            return None;
        }
        Some(if from_first == e.opened_by_first {
            Dir::Forward
        } else {
            Dir::Reply
        })
    }

    /// Records a new flow opened by `t`'s source, charged to `owner` (an
    /// owner at its share gives up an unassured entry first, or the flow
    /// is refused).
    pub fn create(&self, owner: u16, t: &Tuple, tcp_flags_: u8, now: u64) -> Created {
        let (key, from_first) = t.key();
        let state = if key.proto == L4Proto::TCP.0 && tcp_flags_ & tcp_flags::SYN != 0 {
            State::SynSent
        } else {
            State::Established
        };
        // Before the new key's shard is locked: the entry given up may live
        // in any shard, and two shard locks are never held at once.
        if self.held_by(owner) >= self.share && !self.early_drop(owner, now) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Created::Refused;
        }
        let mut created = Created::Tracked;
        {
            let mut shard = self.shard(&key).lock().expect("conntrack shard poisoned");
            let e = Entry {
                opened_by_first: from_first,
                assured: false,
                state,
                owner,
                projected: false,
                last_seen: now,
            };
            match shard.insert(key, e) {
                Some(old) => self.removed(&key, &old),
                None if shard.len() > self.per_shard && self.make_room(&mut shard, &key, now) => {
                    created = Created::Evicted;
                }
                None => {}
            }
            self.charge(owner);
            self.journal_record(&key, &e);
        }
        self.created.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = self.shares.get(usize::from(owner)) {
            let mut q = s.unassured.lock().expect("conntrack share poisoned");
            if q.len() >= self.share {
                q.pop_front();
            }
            q.push_back(key);
        }
        created
    }

    /// Removes one of `owner`'s unassured (or expired) entries, oldest
    /// first; `false` when none was found among the next candidates.
    fn early_drop(&self, owner: u16, now: u64) -> bool {
        let Some(s) = self.shares.get(usize::from(owner)) else {
            return false;
        };
        let mut q = s.unassured.lock().expect("conntrack share poisoned");
        for _ in 0..EARLY_DROP_TRIES {
            let Some(key) = q.pop_front() else {
                return false;
            };
            let mut shard = self.shard(&key).lock().expect("conntrack shard poisoned");
            let Some(e) = shard.get(&key).copied() else {
                continue;
            };
            if e.owner != owner {
                continue;
            }
            let expired = self.expired_at(&key, &e, now);
            if e.assured && !expired {
                continue;
            }
            shard.remove(&key);
            self.removed(&key, &e);
            if expired {
                self.expired.fetch_add(1, Ordering::Relaxed);
            } else {
                self.early_dropped.fetch_add(1, Ordering::Relaxed);
            }
            return true;
        }
        false
    }

    /// Frees one slot of an overfull shard, never `keep` (the entry just
    /// made): an expired entry from a sample if there is one, else the
    /// sample's least recently seen unassured entry, else its least
    /// recently seen. Returns whether a live entry was evicted.
    fn make_room(&self, shard: &mut Shard, keep: &Tuple, now: u64) -> bool {
        // (key, assured, last seen) of the best victim so far.
        let mut victim: Option<(Tuple, bool, u64)> = None;
        let mut expired = None;
        for (k, e) in shard
            .iter()
            .filter(|(k, _)| *k != keep)
            .take(EVICTION_SAMPLE)
        {
            if self.expired_at(k, e, now) {
                expired = Some(*k);
                break;
            }
            if victim.is_none_or(|(_, assured, seen)| (e.assured, e.last_seen) < (assured, seen)) {
                victim = Some((*k, e.assured, e.last_seen));
            }
        }
        if let Some(k) = expired {
            let e = shard.remove(&k).expect("sampled key present");
            self.removed(&k, &e);
            self.expired.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if let Some((k, _, _)) = victim {
            let e = shard.remove(&k).expect("sampled key present");
            self.removed(&k, &e);
            self.evicted.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Removes every expired entry; returns how many.
    pub fn gc(&self, now: u64) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().expect("conntrack shard poisoned");
            let before = shard.len();
            shard.retain(|k, e| {
                let keep = self.alive(k, e, now);
                if !keep {
                    self.removed(k, e);
                }
                keep
            });
            removed += before - shard.len();
        }
        self.expired.fetch_add(removed as u64, Ordering::Relaxed);
        removed
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("conntrack shard poisoned").len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn counters(&self) -> Counters {
        Counters {
            created: self.created.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            early_dropped: self.early_dropped.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// The TCP state after a packet; other protocols stay established.
fn advance(state: State, proto_: u8, dir: Dir, flags: u8) -> State {
    if proto_ != L4Proto::TCP.0 {
        return State::Established;
    }
    if flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
        return State::Closing;
    }
    match (state, dir) {
        (State::SynSent, Dir::Reply) => State::Established,
        (s, _) => s,
    }
}

#[cfg(test)]
mod tests;
