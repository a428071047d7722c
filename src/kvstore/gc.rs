//! Collecting the master keys of identities no node uses any more, the way
//! Cilium's allocator garbage collector does it (`RunGC` in
//! `pkg/kvstore/allocator`).
//!
//! A master key `.../id/<id>` has no lease, so it outlives the nodes that
//! used its label set; their per-node keys `.../value/<labels>/<node>` go
//! with their leases. A master key is *unused* when no per-node key lies
//! under `.../value/<its label string>/` and none names its id. One round
//! of [`Gc::round`]:
//!
//! 1. lists the master keys, then the per-node keys;
//! 2. marks each unused master key with the revision it was last written
//!    at;
//! 3. for each one that the previous round marked at that same revision
//!    (unused for a whole round, and nobody wrote it since), takes the
//!    allocation lock of its label set (the one [`super::identities`]
//!    takes), lists its per-node keys again, and deletes it only if there
//!    are none and it is still at that revision; the lock goes whatever
//!    happened.
//!
//! Never deleted: a master key that does not read (an id that is not a
//! number, a value that is not a label string written as Cilium writes
//! it), one outside the cluster-local range [`FIRST`]..=[`LAST`] (not this
//! allocator's), and one in use at any of the checks. Collecting twice is
//! harmless, so every node may run rounds; Cilium leaves it to the
//! operator.
//!
//! The decision is made off the store (`plan`, no I/O): entries in, what
//! to mark and what to try to delete out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::etcd::{Entry, Etcd, KvError};
use super::identities::{FIRST, LAST, LOCK_TTL};
use super::layout::{self, IDENTITIES};
use crate::identity::NumericIdentity;
use crate::labels::LabelSet;

/// How often to run a round. A master key goes one to two rounds after its
/// last per-node key (5 to 10 minutes): a stale id costs only one number
/// of the 65 280, and a round lists every identity key. Cilium's operator
/// runs every 15 minutes (`--identity-gc-interval`), for clusters far
/// larger than xpf's. A round apart is still far longer than an allocation
/// takes between reading a label set's keys and writing its own
/// (milliseconds; the allocation lock lives 25 s at most).
pub const GC_EVERY: Duration = Duration::from_secs(5 * 60);

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcRound {
    /// Identities whose master key this round deleted.
    pub deleted: Vec<u32>,
    /// Master keys found unused and marked this round, not yet deleted.
    pub stale: usize,
    /// Master keys that did not read (key to why), left alone.
    pub unreadable: BTreeMap<String, String>,
}

/// The collector: what the last round found unused.
#[derive(Debug, Default)]
pub struct Gc {
    /// Id to the label string and mod revision its master key had when
    /// the last round found it unused.
    stale: BTreeMap<u32, (String, i64)>,
}

/// A master key that reads as a label set's.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Master {
    id: u32,
    labels: LabelSet,
    text: String,
    mod_revision: i64,
}

/// What a round decides from the keys it read.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Unused now and marked at the same revision by the last round.
    delete: Vec<Master>,
    /// Unused now, to be marked for the next round.
    stale: BTreeMap<u32, (String, i64)>,
    unreadable: BTreeMap<String, String>,
}

impl Gc {
    pub fn new() -> Self {
        Self::default()
    }

    /// One round (see the module doc). On error the marks stay those of
    /// the last round that finished, so a failing store never shortens
    /// the wait before a delete; deletes already made stay made.
    pub fn round(&mut self, etcd: &mut Etcd) -> Result<GcRound, KvError> {
        let masters = etcd.list_entries(&format!("{IDENTITIES}id/"))?;
        let per_node = etcd.list_entries(&format!("{IDENTITIES}value/"))?;
        let plan = plan(&masters, &per_node, &self.stale);
        let mut deleted = Vec::new();
        for m in &plan.delete {
            if delete_locked(etcd, m)? {
                deleted.push(m.id);
            }
        }
        let round = GcRound {
            deleted,
            stale: plan.stale.len(),
            unreadable: plan.unreadable,
        };
        self.stale = plan.stale;
        Ok(round)
    }
}

/// Decides a round from the master keys and per-node keys it listed and
/// the marks of the last round. No I/O.
fn plan(masters: &[Entry], per_node: &[Entry], marked: &BTreeMap<u32, (String, i64)>) -> Plan {
    let nodes: BTreeSet<&str> = per_node.iter().map(|e| e.key.as_str()).collect();
    let used_ids: BTreeSet<u32> = per_node
        .iter()
        .filter_map(|e| std::str::from_utf8(&e.value).ok()?.trim().parse().ok())
        .collect();
    let mut out = Plan::default();
    for e in masters {
        let m = match read_master(e) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(why) => {
                out.unreadable.insert(e.key.clone(), why);
                continue;
            }
        };
        let prefix = format!("{IDENTITIES}value/{}/", m.text);
        let has_node = nodes
            .range(prefix.as_str()..)
            .next()
            .is_some_and(|k| k.starts_with(&prefix));
        if has_node || used_ids.contains(&m.id) {
            continue;
        }
        match marked.get(&m.id) {
            Some((_, rev)) if *rev == m.mod_revision => out.delete.push(m),
            // Unmarked, or written since it was marked: the wait starts
            // again from this revision.
            _ => {
                out.stale.insert(m.id, (m.text, m.mod_revision));
            }
        }
    }
    out
}

/// A master key as a collectable identity; `None` for one outside this
/// allocator's range; why not, for one that does not read.
fn read_master(e: &Entry) -> Result<Option<Master>, String> {
    let id = layout::parse_id_key(&e.key).map_err(|err| err.to_string())?;
    if !(FIRST..=LAST).contains(&id.0) {
        return Ok(None);
    }
    let text =
        std::str::from_utf8(&e.value).map_err(|_| format!("{}: the value is not UTF-8", e.key))?;
    let labels = layout::parse_label_string(&e.key, text).map_err(|err| err.to_string())?;
    // A label string that reads but is not written the way xpf and Cilium
    // write it (unsorted, `any:`) would name other per-node keys and
    // another lock than its label set's: not ours to judge.
    if layout::label_string(&labels) != text {
        return Err(format!(
            "{}: `{text}` is not written as Cilium writes a label string",
            e.key
        ));
    }
    Ok(Some(Master {
        id: id.0,
        labels,
        text: text.to_string(),
        mod_revision: e.mod_revision,
    }))
}

/// Under the label set's allocation lock: deletes `m`'s master key if its
/// label set still has no per-node key and the key is still at the
/// revision it was marked at; whether it did.
fn delete_locked(etcd: &mut Etcd, m: &Master) -> Result<bool, KvError> {
    let lock_lease = etcd.grant(LOCK_TTL)?;
    let held = etcd.lock(&layout::lock_key(&m.labels), lock_lease);
    let result = held.and_then(|key| {
        let r = etcd
            .list(&layout::value_prefix(&m.labels))
            .and_then(|users| {
                if users.pairs.is_empty() {
                    etcd.delete_if_unchanged(&layout::id_key(NumericIdentity(m.id)), m.mod_revision)
                } else {
                    Ok(false)
                }
            });
        etcd.unlock(key).and(r)
    });
    // As in allocation: the lock's lease goes whatever happened.
    let _ = etcd.revoke(lock_lease);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str, mod_revision: i64) -> Entry {
        Entry {
            key: key.to_string(),
            value: value.as_bytes().to_vec(),
            mod_revision,
        }
    }

    fn master(id: u32, text: &str, rev: i64) -> Entry {
        entry(&format!("{IDENTITIES}id/{id}"), text, rev)
    }

    fn node_key(text: &str, node: &str, id: u32) -> Entry {
        entry(
            &format!("{IDENTITIES}value/{text}/{node}"),
            &id.to_string(),
            1,
        )
    }

    const WEB: &str = "k8s:app=web;";
    const DB: &str = "k8s:app=db;";

    #[test]
    fn an_unused_master_is_marked_then_deleted_at_the_same_revision_only() {
        let masters = [master(300, WEB, 7)];
        let first = plan(&masters, &[], &BTreeMap::new());
        assert!(first.delete.is_empty());
        assert_eq!(first.stale, BTreeMap::from([(300, (WEB.to_string(), 7))]));

        let second = plan(&masters, &[], &first.stale);
        assert_eq!(
            second.delete.iter().map(|m| m.id).collect::<Vec<_>>(),
            [300]
        );
        assert!(second.stale.is_empty());

        // Rewritten between the rounds: marked again, not deleted.
        let rewritten = plan(&[master(300, WEB, 9)], &[], &first.stale);
        assert!(rewritten.delete.is_empty());
        assert_eq!(rewritten.stale[&300].1, 9);
    }

    #[test]
    fn a_master_with_a_node_under_its_labels_or_naming_its_id_is_in_use() {
        let marked = BTreeMap::from([(300, (WEB.to_string(), 7)), (301, (DB.to_string(), 7))]);
        let masters = [master(300, WEB, 7), master(301, DB, 7)];
        // A node under web's label string, whatever id it names; a node
        // under another label string naming db's id.
        let nodes = [
            node_key(WEB, "198.18.0.1", 999),
            node_key("k8s:app=other;", "198.18.0.2", 301),
        ];
        let p = plan(&masters, &nodes, &marked);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_longer_label_string_is_not_a_user_of_a_shorter_one() {
        let masters = [master(300, "k8s:app=web;", 7)];
        let nodes = [node_key("k8s:app=web;k8s:tier=x;", "198.18.0.1", 301)];
        let p = plan(&masters, &nodes, &BTreeMap::new());
        assert_eq!(p.stale.len(), 1);
    }

    #[test]
    fn masters_that_do_not_read_or_are_not_ours_are_left_alone() {
        let masters = [
            entry(&format!("{IDENTITIES}id/x"), WEB, 7),
            master(302, "not a label string", 7),
            master(303, "k8s:tier=db;k8s:app=db;", 7),
            entry(&format!("{IDENTITIES}id/304"), "\u{0}", 7),
            master(70000, WEB, 7),
            master(5, WEB, 7),
        ];
        let marked = masters
            .iter()
            .filter_map(|e| layout::parse_id_key(&e.key).ok())
            .map(|id| (id.0, (WEB.to_string(), 7)))
            .collect();
        let p = plan(&masters, &[], &marked);
        assert!(p.delete.is_empty() && p.stale.is_empty(), "{p:?}");
        assert_eq!(p.unreadable.len(), 4, "{:?}", p.unreadable);
    }
}
