//! Ties non-first IP fragments to the verdict of their first fragment.
//!
//! Only the first fragment carries ports, so only it can be checked against
//! port rules. Its verdict is remembered under (source, destination,
//! protocol, identification) for a short while; a later fragment inherits
//! it, and a later fragment with nothing remembered (it arrived first, or
//! too late, or the table was full) is dropped, never allowed blindly. No
//! I/O and no clock: callers pass `now` in seconds.
//!
//! A datagram whose fragments disagree is a conflict, and every fragment of
//! it is dropped from then on (RFC 5722 for IPv6; Linux does the same for
//! IPv4 since 2018): a first fragment sent again with other upper-layer
//! bytes or another verdict, or a later fragment that overlaps the first
//! (RFC 1858 / RFC 3128 header rewrites). Which copy a receiver keeps
//! depends on its reassembly, so no verdict can be trusted for either.
//!
//! Each sender (an endpoint index, the "owner") has an equal share of the
//! table, so an endpoint that floods first fragments fills its own share
//! and no one else's. Entries leave in the order they came, per owner, once
//! older than the TTL.
//!
//! One table per worker, unshared: receive-side hashing puts every fragment
//! of a datagram on one queue, since only the addresses and protocol are
//! common to all of them.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use rustc_hash::FxBuildHasher;

/// Identifies the fragments of one datagram. For IPv6 the protocol is 0:
/// RFC 8200 identifies a datagram by its addresses and identification, and
/// the Fragment header's Next Header may name an extension header rather
/// than the upper layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub id: u32,
}

impl FragKey {
    /// The datagram a fragment belongs to (`id` from its
    /// [`Fragment`](crate::wire::Fragment)). IPv6 fragments are one datagram
    /// by addresses and id alone: the first one's `proto` is the upper
    /// layer, a later one's whatever followed the Fragment header (RFC 8200
    /// section 4.5).
    #[inline]
    pub fn of(flow: &crate::wire::FlowInfo, id: u32) -> Self {
        FragKey {
            src: flow.src,
            dst: flow.dst,
            proto: if flow.dst.is_ipv4() { flow.proto } else { 0 },
            id,
        }
    }
}

/// What a later fragment gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragVerdict {
    /// The first fragment was allowed.
    Allowed,
    /// The first fragment was denied.
    Denied,
    /// The datagram's fragments disagree: drop.
    Conflict,
    /// No first fragment is remembered: drop.
    Unknown,
}

/// Why a first fragment was refused before its verdict was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// It disagrees with what this datagram's fragments already said.
    Conflict,
    /// Its sender's share of the table is full.
    Full,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    Allowed,
    Denied,
    Conflict,
}

#[derive(Clone, Copy, Debug)]
struct Datagram {
    held: Held,
    /// Bytes of the fragmentable part the first fragment carried.
    first_len: u16,
    /// Digest of the first fragment's upper-layer bytes.
    digest: u64,
    /// When the first fragment was seen.
    at: u64,
}

/// Remembered first-fragment verdicts, bounded per owner and in age.
pub struct Fragments {
    seen: HashMap<FragKey, Datagram, FxBuildHasher>,
    /// Per owner: keys in the order they were remembered, with when. A key
    /// whose entry was replaced is skipped when it comes up.
    order: Box<[VecDeque<(FragKey, u64)>]>,
    /// Per owner: entries in `seen`.
    held: Box<[usize]>,
    /// Entries one owner may hold.
    share: usize,
    /// Seconds a verdict is kept (Linux keeps fragments 30 s by default).
    ttl: u64,
    /// First fragments refused because their owner's share was full.
    pub overflows: u64,
    /// Datagrams found in conflict.
    pub conflicts: u64,
}

impl Fragments {
    /// A table of `capacity` entries split evenly among `owners` senders
    /// (owner indices `0..owners`).
    pub fn new(capacity: usize, owners: usize, ttl: u64) -> Self {
        let owners = owners.max(1);
        Self {
            seen: HashMap::with_capacity_and_hasher(capacity.min(1 << 12), FxBuildHasher),
            order: (0..owners).map(|_| VecDeque::new()).collect(),
            held: vec![0; owners].into_boxed_slice(),
            share: (capacity / owners).max(1),
            ttl,
            overflows: 0,
            conflicts: 0,
        }
    }

    /// Entries one owner may hold.
    pub fn share(&self) -> usize {
        self.share
    }

    /// A first fragment from `owner`: `len` bytes of the fragmentable part,
    /// upper-layer bytes hashing to `digest`. Takes its verdict from
    /// `verdict` (only when it is neither a conflict nor over the share, so
    /// a refused fragment leaves no trace elsewhere) and remembers it.
    pub fn first<T, E>(
        &mut self,
        owner: usize,
        key: FragKey,
        len: u16,
        digest: u64,
        now: u64,
        verdict: impl FnOnce() -> Result<T, E>,
    ) -> Result<Result<T, E>, Refused> {
        let owner = owner.min(self.held.len() - 1);
        self.expire_owner(owner, now);
        if let Some(d) = self.seen.get_mut(&key) {
            if d.held == Held::Conflict {
                return Err(Refused::Conflict);
            }
            if d.first_len != len || d.digest != digest {
                d.held = Held::Conflict;
                self.conflicts += 1;
                return Err(Refused::Conflict);
            }
            // The same first fragment again (a duplicate on the wire): it
            // must get the same verdict, or no one can say which counts.
            let v = verdict();
            if v.is_ok() != (d.held == Held::Allowed) {
                d.held = Held::Conflict;
                self.conflicts += 1;
                return Err(Refused::Conflict);
            }
            return Ok(v);
        }
        if self.held[owner] >= self.share {
            self.overflows += 1;
            return Err(Refused::Full);
        }
        let v = verdict();
        let held = if v.is_ok() {
            Held::Allowed
        } else {
            Held::Denied
        };
        self.seen.insert(
            key,
            Datagram {
                held,
                first_len: len,
                digest,
                at: now,
            },
        );
        self.order[owner].push_back((key, now));
        self.held[owner] += 1;
        Ok(v)
    }

    /// The verdict a later fragment at byte `offset` inherits. One that
    /// overlaps the first fragment puts the whole datagram in conflict.
    pub fn later(&mut self, key: &FragKey, offset: u16, now: u64) -> FragVerdict {
        let ttl = self.ttl;
        let Some(d) = self
            .seen
            .get_mut(key)
            .filter(|d| now.saturating_sub(d.at) <= ttl)
        else {
            return FragVerdict::Unknown;
        };
        if d.held != Held::Conflict && offset < d.first_len {
            d.held = Held::Conflict;
            self.conflicts += 1;
        }
        match d.held {
            Held::Allowed => FragVerdict::Allowed,
            Held::Denied => FragVerdict::Denied,
            Held::Conflict => FragVerdict::Conflict,
        }
    }

    /// Drops `owner`'s verdicts older than the TTL, oldest first.
    fn expire_owner(&mut self, owner: usize, now: u64) -> usize {
        let mut gone = 0;
        while let Some(&(key, at)) = self.order[owner].front() {
            if now.saturating_sub(at) <= self.ttl {
                break;
            }
            self.order[owner].pop_front();
            if self.seen.get(&key).is_some_and(|d| d.at == at) {
                self.seen.remove(&key);
                self.held[owner] -= 1;
                gone += 1;
            }
        }
        gone
    }

    /// Entries `owner` holds.
    pub fn held_by(&self, owner: usize) -> usize {
        self.held.get(owner).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32) -> FragKey {
        FragKey {
            src: "198.18.10.2".parse().unwrap(),
            dst: "2001:db8::1".parse().unwrap(),
            proto: 17,
            id,
        }
    }

    type V = Result<(), ()>;
    const ALLOW: fn() -> V = || Ok(());
    const DENY: fn() -> V = || Err(());

    /// Records a first fragment of 64 bytes with digest 1.
    fn first(
        f: &mut Fragments,
        owner: usize,
        id: u32,
        v: fn() -> V,
        now: u64,
    ) -> Result<V, Refused> {
        f.first(owner, key(id), 64, 1, now, v)
    }

    #[test]
    fn later_fragments_inherit_the_first_verdict() {
        let mut f = Fragments::new(16, 1, 30);
        assert_eq!(first(&mut f, 0, 1, ALLOW, 0), Ok(Ok(())));
        assert_eq!(first(&mut f, 0, 2, DENY, 0), Ok(Err(())));
        assert_eq!(f.later(&key(1), 64, 5), FragVerdict::Allowed);
        assert_eq!(f.later(&key(2), 64, 5), FragVerdict::Denied);
        // Another id, or another protocol, knows nothing.
        assert_eq!(f.later(&key(3), 64, 5), FragVerdict::Unknown);
        let other = FragKey { proto: 6, ..key(1) };
        assert_eq!(f.later(&other, 64, 5), FragVerdict::Unknown);
    }

    #[test]
    fn verdicts_expire_and_a_full_share_refuses_not_allows() {
        let mut f = Fragments::new(2, 1, 30);
        assert!(first(&mut f, 0, 1, ALLOW, 0).is_ok());
        assert_eq!(f.later(&key(1), 64, 30), FragVerdict::Allowed);
        assert_eq!(f.later(&key(1), 64, 31), FragVerdict::Unknown);
        assert!(first(&mut f, 0, 2, ALLOW, 10).is_ok());
        // Full at 20: key 1 (seen at 0) is not older than 30 s yet.
        assert_eq!(first(&mut f, 0, 3, ALLOW, 20), Err(Refused::Full));
        assert_eq!(f.overflows, 1);
        assert_eq!(f.later(&key(3), 64, 20), FragVerdict::Unknown);
        // Once old entries expire there is room again.
        assert!(first(&mut f, 0, 4, ALLOW, 45).is_ok());
        assert_eq!(f.later(&key(4), 64, 45), FragVerdict::Allowed);
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn a_flooding_owner_fills_only_its_own_share() {
        let mut f = Fragments::new(8, 2, 30);
        assert_eq!(f.share(), 4);
        for id in 0..1000 {
            let _ = first(&mut f, 0, id, ALLOW, 0);
        }
        assert_eq!((f.held_by(0), f.overflows), (4, 996));
        // The other owner's datagrams are still remembered and pass.
        let theirs = FragKey {
            src: "198.18.10.3".parse().unwrap(),
            ..key(7)
        };
        assert_eq!(f.first(1, theirs, 64, 1, 1, ALLOW), Ok(Ok(())));
        assert_eq!(f.later(&theirs, 64, 2), FragVerdict::Allowed);
    }

    #[test]
    fn a_first_fragment_sent_again_differently_is_a_conflict() {
        // Other bytes, another length, or another verdict: all conflict,
        // and the datagram stays dropped whatever comes next.
        for (len, digest, v) in [(64, 2, ALLOW), (72, 1, ALLOW), (64, 1, DENY)] {
            let mut f = Fragments::new(16, 1, 30);
            assert!(first(&mut f, 0, 1, ALLOW, 0).is_ok());
            assert_eq!(
                f.first(0, key(1), len, digest, 1, v),
                Err(Refused::Conflict)
            );
            assert_eq!(f.later(&key(1), 64, 2), FragVerdict::Conflict);
            assert_eq!(first(&mut f, 0, 1, ALLOW, 3), Err(Refused::Conflict));
            assert_eq!(f.conflicts, 1);
        }
        // A denied first fragment rewritten as an allowed one.
        let mut f = Fragments::new(16, 1, 30);
        assert!(first(&mut f, 0, 1, DENY, 0).is_ok());
        assert_eq!(f.first(0, key(1), 64, 9, 1, ALLOW), Err(Refused::Conflict));
        // An exact duplicate with the same verdict is not a conflict.
        let mut f = Fragments::new(16, 1, 30);
        assert!(first(&mut f, 0, 1, ALLOW, 0).is_ok());
        assert_eq!(first(&mut f, 0, 1, ALLOW, 1), Ok(Ok(())));
        assert_eq!(f.later(&key(1), 64, 2), FragVerdict::Allowed);
    }

    #[test]
    fn a_later_fragment_overlapping_the_first_is_a_conflict() {
        let mut f = Fragments::new(16, 1, 30);
        assert!(first(&mut f, 0, 1, ALLOW, 0).is_ok());
        // Offset 8 rewrites bytes the first fragment carried (RFC 1858).
        assert_eq!(f.later(&key(1), 8, 1), FragVerdict::Conflict);
        assert_eq!(f.later(&key(1), 64, 1), FragVerdict::Conflict);
        assert_eq!(f.conflicts, 1);
    }
}
