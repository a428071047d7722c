//! Ties non-first IP fragments to the verdict of their first fragment.
//!
//! Only the first fragment carries ports, so only it can be checked against
//! port rules. Its verdict is remembered under (source, destination,
//! protocol, identification) for a short while; a later fragment inherits
//! it, and a later fragment with nothing remembered (it arrived first, or
//! too late, or the table was full) is dropped, never allowed blindly. No
//! I/O and no clock: callers pass `now` in seconds.
//!
//! One table per worker, unshared: receive-side hashing puts every fragment
//! of a datagram on one queue, since only the addresses and protocol are
//! common to all of them.

use std::collections::HashMap;
use std::net::IpAddr;

use rustc_hash::FxBuildHasher;

/// Identifies the fragments of one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub id: u32,
}

/// What a later fragment gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragVerdict {
    /// The first fragment was allowed.
    Allowed,
    /// The first fragment was denied.
    Denied,
    /// No first fragment is remembered: drop.
    Unknown,
}

/// Remembered first-fragment verdicts, bounded in size and age.
pub struct Fragments {
    seen: HashMap<FragKey, (bool, u64), FxBuildHasher>,
    capacity: usize,
    /// Seconds a verdict is kept (Linux keeps fragments 30 s by default).
    ttl: u64,
    /// First fragments not remembered because the table was full.
    pub overflows: u64,
}

impl Fragments {
    pub fn new(capacity: usize, ttl: u64) -> Self {
        Self {
            seen: HashMap::with_capacity_and_hasher(capacity.min(1 << 16), FxBuildHasher),
            capacity: capacity.max(1),
            ttl,
            overflows: 0,
        }
    }

    /// Records the verdict of a first fragment. When the table is full and
    /// nothing in it has expired, the verdict is not kept (its later
    /// fragments will be dropped) and the overflow is counted.
    pub fn first(&mut self, key: FragKey, allowed: bool, now: u64) {
        if self.seen.len() >= self.capacity && !self.seen.contains_key(&key) {
            self.expire(now);
            if self.seen.len() >= self.capacity {
                self.overflows += 1;
                return;
            }
        }
        self.seen.insert(key, (allowed, now));
    }

    /// The verdict a later fragment inherits.
    pub fn later(&self, key: &FragKey, now: u64) -> FragVerdict {
        match self.seen.get(key) {
            Some((allowed, at)) if now.saturating_sub(*at) <= self.ttl => {
                if *allowed {
                    FragVerdict::Allowed
                } else {
                    FragVerdict::Denied
                }
            }
            _ => FragVerdict::Unknown,
        }
    }

    /// Drops verdicts older than the TTL; returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let before = self.seen.len();
        let ttl = self.ttl;
        self.seen
            .retain(|_, (_, at)| now.saturating_sub(*at) <= ttl);
        before - self.seen.len()
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

    #[test]
    fn later_fragments_inherit_the_first_verdict() {
        let mut f = Fragments::new(16, 30);
        f.first(key(1), true, 0);
        f.first(key(2), false, 0);
        assert_eq!(f.later(&key(1), 5), FragVerdict::Allowed);
        assert_eq!(f.later(&key(2), 5), FragVerdict::Denied);
        // Another id, or another protocol, knows nothing.
        assert_eq!(f.later(&key(3), 5), FragVerdict::Unknown);
        let other = FragKey { proto: 6, ..key(1) };
        assert_eq!(f.later(&other, 5), FragVerdict::Unknown);
    }

    #[test]
    fn verdicts_expire_and_a_full_table_refuses_not_allows() {
        let mut f = Fragments::new(2, 30);
        f.first(key(1), true, 0);
        assert_eq!(f.later(&key(1), 30), FragVerdict::Allowed);
        assert_eq!(f.later(&key(1), 31), FragVerdict::Unknown);
        f.first(key(2), true, 10);
        f.first(key(3), true, 20); // full, nothing expired yet at 20
        assert_eq!(f.overflows, 1);
        assert_eq!(f.later(&key(3), 20), FragVerdict::Unknown);
        // Once old entries expire there is room again.
        f.first(key(4), true, 45);
        assert_eq!(f.later(&key(4), 45), FragVerdict::Allowed);
        assert_eq!(f.len(), 1);
    }
}
