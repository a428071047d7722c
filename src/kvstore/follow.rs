//! Following a prefix of the store the way Cilium does (`pkg/kvstore`):
//! list it, watch from the next revision, and when the watch is lost
//! (compacted away, cancelled, broken) list again and turn the keys that
//! vanished meanwhile into deletes. What the caller gets is the stream of
//! changes that takes its copy from what it knew to what the store holds,
//! whichever way the store was read.

use std::collections::BTreeMap;
use std::time::Duration;

use super::etcd::{Change, Etcd, KvError, Listing, Watch, Watched};

/// A prefix as this host last saw it.
pub struct Follower {
    prefix: String,
    keys: BTreeMap<String, Vec<u8>>,
    /// The revision `keys` are at (0: never listed).
    revision: i64,
    watch: Option<Watch>,
    /// List instead of watching on the next sync (a new connection).
    relist_next: bool,
    /// Times the prefix was listed again after a lost watch or a lost
    /// connection (counted when the listing came).
    pub relists: u64,
}

impl Follower {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            keys: BTreeMap::new(),
            revision: 0,
            watch: None,
            relist_next: false,
            relists: 0,
        }
    }

    /// The revision the copy is at (0: never listed).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The connection the watch ran on is gone: list again on the next
    /// sync. Not a watch from the revision the copy is at: if the store
    /// was compacted at exactly the next revision meanwhile, etcd accepts
    /// that watch but a delete made at that revision is gone from its
    /// history, and would be missed.
    pub fn reconnected(&mut self) {
        self.watch = None;
        self.relist_next = true;
    }

    /// The keys as last seen.
    pub fn keys(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.keys
    }

    /// Brings the copy up to date, waiting up to `wait` for a change when
    /// there is none yet: the changes since the last call (empty when
    /// nothing changed). A watch is made from the revision last seen when
    /// none runs; if that revision was compacted away, the prefix is
    /// listed again. On error the copy stays as it was (the caller keeps
    /// enforcing it and calls again).
    pub fn sync(&mut self, etcd: &mut Etcd, wait: Duration) -> Result<Vec<Change>, KvError> {
        if self.revision == 0 || self.watch.is_none() && self.relist_next {
            let listing = etcd.list(&self.prefix)?;
            if self.revision != 0 {
                self.relists += 1;
            }
            self.relist_next = false;
            return Ok(self.relist(listing));
        }
        let mut w = match self.watch.take() {
            Some(w) => w,
            None => etcd.watch(&self.prefix, self.revision + 1)?,
        };
        match etcd.next(&mut w, wait) {
            Watched::Changes(changes, revision) => {
                self.watch = Some(w);
                self.revision = self.revision.max(revision);
                Ok(changes.into_iter().filter(|c| self.apply(c)).collect())
            }
            Watched::Quiet => {
                self.watch = Some(w);
                Ok(Vec::new())
            }
            Watched::Lost(_) => {
                let listing = etcd.list(&self.prefix)?;
                self.relists += 1;
                Ok(self.relist(listing))
            }
        }
    }

    /// Replaces the copy with `listing`; the changes between them.
    fn relist(&mut self, listing: Listing) -> Vec<Change> {
        let fresh: BTreeMap<String, Vec<u8>> = listing.pairs.into_iter().collect();
        let mut changes: Vec<Change> = self
            .keys
            .keys()
            .filter(|k| !fresh.contains_key(*k))
            .map(|k| Change::Delete(k.clone()))
            .collect();
        changes.extend(
            fresh
                .iter()
                .filter(|(k, v)| self.keys.get(*k) != Some(*v))
                .map(|(k, v)| Change::Put(k.clone(), v.clone())),
        );
        self.keys = fresh;
        self.revision = listing.revision;
        self.watch = None;
        changes
    }

    /// Applies one watched change; whether it changed the copy.
    fn apply(&mut self, c: &Change) -> bool {
        match c {
            Change::Put(k, v) => self.keys.insert(k.clone(), v.clone()).as_ref() != Some(v),
            Change::Delete(k) => self.keys.remove(k).is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(pairs: &[(&str, &str)], revision: i64) -> Listing {
        Listing {
            pairs: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            revision,
        }
    }

    #[test]
    fn a_relist_turns_vanished_keys_into_deletes_and_keeps_what_did_not_change_quiet() {
        let mut f = Follower::new("p/");
        let first = f.relist(listing(&[("p/a", "1"), ("p/b", "2")], 5));
        assert_eq!(first.len(), 2);
        let again = f.relist(listing(&[("p/a", "1"), ("p/c", "3"), ("p/b", "9")], 9));
        assert_eq!(
            again,
            vec![
                Change::Put("p/b".into(), b"9".to_vec()),
                Change::Put("p/c".into(), b"3".to_vec())
            ]
        );
        let gone = f.relist(listing(&[("p/c", "3")], 12));
        assert_eq!(
            gone,
            vec![Change::Delete("p/a".into()), Change::Delete("p/b".into())]
        );
        assert_eq!(f.revision, 12);
    }

    #[test]
    fn watched_changes_that_change_nothing_are_not_passed_on() {
        let mut f = Follower::new("p/");
        f.relist(listing(&[("p/a", "1")], 5));
        assert!(!f.apply(&Change::Put("p/a".into(), b"1".to_vec())));
        assert!(f.apply(&Change::Put("p/a".into(), b"2".to_vec())));
        assert!(!f.apply(&Change::Delete("p/zz".into())));
        assert!(f.apply(&Change::Delete("p/a".into())));
    }
}
