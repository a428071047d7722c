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
//! never across a batch, and nothing allocates once a shard has grown. The capacity is split evenly among the shards.
//! When a shard is full, an insert first drops expired entries it samples,
//! then evicts the least recently seen of a small sample, and counts it.
//! [`Conntrack::gc`] removes every expired entry.
//!
//! The workers consult it through [`crate::filter`]; flows opened towards an
//! endpoint are entered from the TC program's reports.
//!
//! A [`Journal`], when given, hears of every flow that appears, changes
//! state or goes, while the shard's lock is held, so it always mirrors the
//! table: the datapath keeps one in a pinned BPF map, and a successor
//! process [`restore`](Conntrack::restore)s from it so established flows
//! survive a crash.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rustc_hash::FxBuildHasher;

use crate::policy::model::proto;
use crate::wire::tcp_flags;

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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            capacity: 512 * 1024,
            shards: 64,
            timeouts: Timeouts::default(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The opener is the key's first side.
    opened_by_first: bool,
    state: State,
    last_seen: u64,
}

/// Counters, merged over shards on read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub created: u64,
    pub evicted: u64,
    pub expired: u64,
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

/// Entries sampled when a full shard needs room.
const EVICTION_SAMPLE: usize = 8;

type Shard = HashMap<Tuple, Entry, FxBuildHasher>;

/// The connection table shared by all workers.
pub struct Conntrack {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    timeouts: Timeouts,
    created: AtomicU64,
    evicted: AtomicU64,
    expired: AtomicU64,
    journal: Option<std::sync::Arc<dyn Journal>>,
}

impl Conntrack {
    pub fn new(config: Config) -> Self {
        let n = config.shards.max(1).next_power_of_two();
        let per_shard = config.capacity.div_ceil(n).max(1);
        Self {
            shards: (0..n)
                .map(|_| Mutex::new(HashMap::with_hasher(FxBuildHasher)))
                .collect(),
            per_shard,
            timeouts: config.timeouts,
            created: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            journal: None,
        }
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

    /// Puts back a flow a journal kept (canonical `key`), as last seen at
    /// `now`; not journalled again. Returns `false` when its shard is full.
    pub fn restore(&self, key: &Tuple, opened_by_first: bool, state: State, now: u64) -> bool {
        if key.key().0 != *key {
            return false;
        }
        let mut shard = self.shard(key).lock().expect("conntrack shard poisoned");
        if !shard.contains_key(key) && shard.len() >= self.per_shard {
            return false;
        }
        shard.insert(
            *key,
            Entry {
                opened_by_first,
                state,
                last_seen: now,
            },
        );
        true
    }

    fn shard(&self, key: &Tuple) -> &Mutex<Shard> {
        use std::hash::BuildHasher;
        let h = FxBuildHasher.hash_one(key);
        // The high bits: FxHash's low bits are weak for small integers.
        &self.shards[(h >> 32) as usize & (self.shards.len() - 1)]
    }

    fn timeout(&self, proto_: u8, state: State) -> u64 {
        if proto_ != proto::TCP {
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
        if now.saturating_sub(e.last_seen) > self.timeout(key.proto, e.state) {
            shard.remove(&key);
            self.journal_forget(&key);
            self.expired.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let dir = if from_first == e.opened_by_first {
            Dir::Forward
        } else {
            Dir::Reply
        };
        let state = advance(e.state, key.proto, dir, tcp_flags_);
        e.last_seen = now;
        if state != e.state {
            e.state = state;
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
        let shard = self.shard(&key).lock().expect("conntrack shard poisoned");
        let e = shard.get(&key)?;
        if self.expired_at(&key, e, now) {
            return None;
        }
        Some(if from_first == e.opened_by_first {
            Dir::Forward
        } else {
            Dir::Reply
        })
    }

    /// Records a new flow opened by `t`'s source. Returns `true` when room
    /// had to be made by evicting a live entry.
    pub fn create(&self, t: &Tuple, tcp_flags_: u8, now: u64) -> bool {
        let (key, from_first) = t.key();
        let state = if key.proto == proto::TCP && tcp_flags_ & tcp_flags::SYN != 0 {
            State::SynSent
        } else {
            State::Established
        };
        let mut shard = self.shard(&key).lock().expect("conntrack shard poisoned");
        let mut evicted = false;
        if !shard.contains_key(&key) && shard.len() >= self.per_shard {
            evicted = self.make_room(&mut shard, now);
        }
        let e = Entry {
            opened_by_first: from_first,
            state,
            last_seen: now,
        };
        shard.insert(key, e);
        self.journal_record(&key, &e);
        self.created.fetch_add(1, Ordering::Relaxed);
        evicted
    }

    /// Frees one slot of a full shard: an expired entry from a sample if
    /// there is one, else the least recently seen of the sample.
    fn make_room(&self, shard: &mut Shard, now: u64) -> bool {
        let mut oldest: Option<(Tuple, u64)> = None;
        let mut expired = None;
        for (k, e) in shard.iter().take(EVICTION_SAMPLE) {
            if self.expired_at(k, e, now) {
                expired = Some(*k);
                break;
            }
            if oldest.is_none_or(|(_, seen)| e.last_seen < seen) {
                oldest = Some((*k, e.last_seen));
            }
        }
        if let Some(k) = expired {
            shard.remove(&k);
            self.journal_forget(&k);
            self.expired.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if let Some((k, _)) = oldest {
            shard.remove(&k);
            self.journal_forget(&k);
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
                let keep = !self.expired_at(k, e, now);
                if !keep {
                    self.journal_forget(k);
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
        }
    }
}

/// The TCP state after a packet; other protocols stay established.
fn advance(state: State, proto_: u8, dir: Dir, flags: u8) -> State {
    if proto_ != proto::TCP {
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
mod tests {
    use super::*;
    use crate::wire::tcp_flags::{ACK, FIN, RST, SYN};

    fn tuple(src: &str, sport: u16, dst: &str, dport: u16, proto_: u8) -> Tuple {
        Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            proto: proto_,
        }
    }

    fn small(capacity: usize) -> Conntrack {
        Conntrack::new(Config {
            capacity,
            shards: 1,
            timeouts: Timeouts::default(),
        })
    }

    #[test]
    fn replies_are_recognised_in_both_orders() {
        let ct = small(16);
        // Opener on either side of the canonical order.
        for (a, b) in [
            ("198.18.10.2", "198.18.10.3"),
            ("198.18.10.9", "198.18.10.3"),
        ] {
            let t = tuple(a, 40000, b, 8080, proto::TCP);
            assert_eq!(ct.lookup(&t, SYN, 0), None);
            ct.create(&t, SYN, 0);
            assert_eq!(ct.lookup(&t, SYN, 1), Some((Dir::Forward, State::SynSent)));
            assert_eq!(
                ct.lookup(&t.reversed(), SYN | ACK, 1),
                Some((Dir::Reply, State::Established))
            );
            assert_eq!(
                ct.lookup(&t, ACK, 2),
                Some((Dir::Forward, State::Established))
            );
        }
        // IPv6 and UDP alike.
        let u = tuple("2001:db8:10::2", 5353, "2001:db8:10::3", 53, proto::UDP);
        ct.create(&u, 0, 0);
        assert_eq!(
            ct.lookup(&u.reversed(), 0, 0),
            Some((Dir::Reply, State::Established))
        );
        // A different port is a different flow.
        assert_eq!(
            ct.lookup(
                &tuple("2001:db8:10::2", 5354, "2001:db8:10::3", 53, proto::UDP),
                0,
                0
            ),
            None
        );
        assert_eq!(ct.counters().created, 3);
    }

    #[test]
    fn timeouts_follow_the_tcp_state() {
        let ct = small(16);
        let t = tuple("198.18.10.2", 40000, "198.18.10.3", 80, proto::TCP);
        ct.create(&t, SYN, 100);
        // An unanswered SYN expires after the SYN timeout.
        assert_eq!(ct.lookup(&t, SYN, 161), None);
        assert_eq!(ct.counters().expired, 1);
        ct.create(&t, SYN, 200);
        ct.lookup(&t.reversed(), SYN | ACK, 201);
        // Established lives long...
        assert!(ct.lookup(&t, ACK, 201 + 20_000).is_some());
        // ...until a FIN or RST shortens it.
        assert_eq!(
            ct.lookup(&t, FIN | ACK, 30_000),
            Some((Dir::Forward, State::Closing))
        );
        assert!(ct.lookup(&t.reversed(), ACK, 30_010).is_some());
        assert_eq!(ct.lookup(&t, ACK, 30_021), None);
        let u = tuple("198.18.10.2", 1, "198.18.10.3", 2, proto::UDP);
        ct.create(&u, RST, 0);
        assert_eq!(
            ct.lookup(&u, 0, 60),
            Some((Dir::Forward, State::Established))
        );
        assert_eq!(ct.lookup(&u, 0, 121), None);
    }

    #[test]
    fn capacity_is_bounded_and_eviction_counted() {
        let ct = small(4);
        for p in 0..4 {
            assert!(!ct.create(
                &tuple("198.18.0.1", p, "198.18.0.2", 80, proto::UDP),
                0,
                p as u64
            ));
        }
        assert_eq!(ct.len(), 4);
        // Full: the least recently seen (port 0) goes.
        assert!(ct.create(&tuple("198.18.0.1", 9, "198.18.0.2", 80, proto::UDP), 0, 10));
        assert_eq!(ct.len(), 4);
        assert_eq!(ct.counters().evicted, 1);
        assert_eq!(
            ct.lookup(&tuple("198.18.0.1", 0, "198.18.0.2", 80, proto::UDP), 0, 10),
            None
        );
        // Expired entries make room without counting as evictions.
        assert!(!ct.create(
            &tuple("198.18.0.1", 10, "198.18.0.2", 80, proto::UDP),
            0,
            1_000
        ));
        assert_eq!(ct.counters().evicted, 1);
    }

    #[test]
    fn gc_removes_only_expired_entries() {
        let ct = Conntrack::new(Config::default());
        for p in 0..100u16 {
            ct.create(
                &tuple("198.18.0.1", p, "198.18.0.2", 80, proto::UDP),
                0,
                u64::from(p),
            );
        }
        assert_eq!(ct.gc(60), 0);
        // Entries last seen at 0..=69 have been idle for more than 60 s.
        assert_eq!(ct.gc(130), 70);
        assert_eq!(ct.len(), 30);
        assert_eq!(ct.counters().expired, 70);
    }

    #[test]
    fn shared_between_threads() {
        let ct = std::sync::Arc::new(Conntrack::new(Config::default()));
        let handles: Vec<_> = (0..2u16)
            .map(|w| {
                let ct = ct.clone();
                std::thread::spawn(move || {
                    for p in 0..1000u16 {
                        let t = tuple("198.18.0.1", p, "198.18.0.2", 1000 + w, proto::TCP);
                        ct.create(&t, SYN, 0);
                        assert!(ct.lookup(&t.reversed(), SYN | ACK, 0).is_some());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(ct.len(), 2000);
    }

    /// A journal that keeps what it hears in memory.
    #[derive(Default, Clone)]
    struct Mirror(std::sync::Arc<Mutex<HashMap<Tuple, (bool, State)>>>);

    impl Journal for Mirror {
        fn record(&self, key: &Tuple, opened_by_first: bool, state: State) {
            self.0
                .lock()
                .unwrap()
                .insert(*key, (opened_by_first, state));
        }
        fn forget(&self, key: &Tuple) {
            self.0.lock().unwrap().remove(key);
        }
    }

    #[test]
    fn the_journal_mirrors_the_table_and_restores_it() {
        let mirror = Mirror::default();
        let ct = Conntrack::new(Config {
            capacity: 4,
            shards: 1,
            timeouts: Timeouts::default(),
        })
        .with_journal(std::sync::Arc::new(mirror.clone()));
        for p in 0..4u16 {
            ct.create(
                &tuple("198.18.0.1", p, "198.18.0.2", 53, proto::UDP),
                0,
                u64::from(p),
            );
        }
        // Full: the new TCP flow evicts the oldest UDP one.
        let tcp = tuple("198.18.10.9", 40000, "198.18.10.3", 8080, proto::TCP);
        ct.create(&tcp, SYN, 10);
        assert_eq!(ct.counters().evicted, 1);
        ct.lookup(&tcp.reversed(), SYN | ACK, 11);
        // The UDP flows expire; the journal holds what the table holds.
        assert_eq!(ct.gc(70), 3);
        let (key, first) = tcp.key();
        assert_eq!(
            mirror
                .0
                .lock()
                .unwrap()
                .clone()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![(key, (first, State::Established))]
        );

        // A fresh table restored from the journal answers replies as the
        // old one did, in both orders of the canonical key.
        let ct2 = small(16);
        let again = Mirror::default();
        ct2.restore(&key, first, State::Established, 0);
        let ct2 = ct2.with_journal(std::sync::Arc::new(again.clone()));
        assert_eq!(
            ct2.lookup(&tcp.reversed(), ACK, 1),
            Some((Dir::Reply, State::Established))
        );
        assert_eq!(
            ct2.lookup(&tcp, ACK, 1),
            Some((Dir::Forward, State::Established))
        );
        // Restoring is not journalled again; a non-canonical key is refused.
        assert!(again.0.lock().unwrap().is_empty());
        assert!(!ct2.restore(&key.reversed(), first, State::Established, 0));
    }
}
