//! Cluster-wide identities in etcd, allocated as Cilium's kvstore
//! allocator does, so every host (xpf or Cilium) gives one label set one
//! number:
//!
//! 1. A label set some node already uses has per-node keys under
//!    `.../value/<labels>/`: take their id (re-creating its master key if
//!    it was lost) and add this node's key, under this node's lease.
//! 2. Otherwise take etcd's lock `.../locks/<labels>` and look again (a
//!    racer may have finished meanwhile); if still nothing, create the
//!    master key `.../id/<id>` of the lowest free id from
//!    [`FIRST`], create-only (a racer for another label set that took the
//!    same id makes this one try the next), then add this node's key and
//!    unlock.
//!
//! Master keys have no lease; per-node keys go with their node's lease,
//! so a dead node's keys vanish and its label sets may be collected.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::etcd::{Etcd, KvError};
use super::layout::{self, LayoutError};
use crate::identity::NumericIdentity;
use crate::labels::LabelSet;

/// The first cluster-local identity (Cilium's, for cluster 0).
pub const FIRST: u32 = 256;
/// The last one cluster 0 may use.
pub const LAST: u32 = 65535;
/// Seconds the allocation lock's lease lives if its holder dies.
pub(super) const LOCK_TTL: i64 = 25;

/// Why an identity could not be allocated.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("every cluster identity from {FIRST} to {LAST} is taken")]
    Exhausted,
    /// The master key went between the lookup and the claim.
    #[error("the identity's master key was collected while it was claimed")]
    Raced,
}

/// The cluster identity of `labels` for the node at `node`, whose keys live
/// under `lease`: an existing one if any node has it, else a new one.
pub fn allocate(
    etcd: &mut Etcd,
    labels: &LabelSet,
    node: IpAddr,
    lease: i64,
) -> Result<NumericIdentity, AllocError> {
    if let Some(id) = in_use(etcd, labels)? {
        // Raced with the collector: allocate under the lock, which it
        // takes too.
        match claim(etcd, labels, node, lease, id) {
            Err(AllocError::Raced) => {}
            done => return done,
        }
    }
    let lock_lease = etcd.grant(LOCK_TTL)?;
    let held = etcd.lock(&layout::lock_key(labels), lock_lease);
    let result = held.and_then(|key| {
        let r = locked_allocate(etcd, labels, node, lease);
        etcd.unlock(key).map(|()| r)
    });
    // The lock's lease goes whatever happened, so a failure leaves no lock.
    let _ = etcd.revoke(lock_lease);
    result?
}

fn locked_allocate(
    etcd: &mut Etcd,
    labels: &LabelSet,
    node: IpAddr,
    lease: i64,
) -> Result<NumericIdentity, AllocError> {
    if let Some(id) = in_use(etcd, labels)? {
        return claim(etcd, labels, node, lease, id);
    }
    let text = layout::label_string(labels);
    let taken: BTreeSet<u32> = etcd
        .list(&format!("{}id/", layout::IDENTITIES))?
        .pairs
        .iter()
        .filter_map(|(k, _)| layout::parse_id_key(k).ok())
        .map(|id| id.0)
        .collect();
    for candidate in (FIRST..=LAST).filter(|c| !taken.contains(c)) {
        let id = NumericIdentity(candidate);
        if etcd.create(&layout::id_key(id), text.as_bytes(), None)? {
            etcd.put(
                &layout::value_key(labels, node),
                id.0.to_string().as_bytes(),
                Some(lease),
            )?;
            return Ok(id);
        }
    }
    Err(AllocError::Exhausted)
}

/// The id some node's key gives `labels`, whose master key holds the same
/// labels (or is gone: then it is made again, as Cilium does). Keys that
/// disagree with their master are passed over.
fn in_use(etcd: &mut Etcd, labels: &LabelSet) -> Result<Option<NumericIdentity>, AllocError> {
    let text = layout::label_string(labels);
    let listing = etcd.list(&layout::value_prefix(labels))?;
    let ids: BTreeSet<u32> = listing
        .pairs
        .iter()
        .filter_map(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok())
        .collect();
    for id in ids.into_iter().map(NumericIdentity) {
        let master = layout::id_key(id);
        let found = etcd.list(&master)?;
        match found.pairs.iter().find(|(k, _)| *k == master) {
            Some((_, v)) if v.as_slice() == text.as_bytes() => return Ok(Some(id)),
            Some(_) => continue,
            None => {
                if etcd.create(&master, text.as_bytes(), None)? {
                    return Ok(Some(id));
                }
            }
        }
    }
    Ok(None)
}

/// Adds this node's key for `id`, as long as its master key still holds
/// `labels` (one transaction, as Cilium guards it: a master key collected
/// meanwhile must not leave this node holding a number nobody owns). If
/// it went, the allocation starts again.
fn claim(
    etcd: &mut Etcd,
    labels: &LabelSet,
    node: IpAddr,
    lease: i64,
    id: NumericIdentity,
) -> Result<NumericIdentity, AllocError> {
    let text = layout::label_string(labels);
    let put = etcd.put_if(
        &layout::value_key(labels, node),
        id.0.to_string().as_bytes(),
        Some(lease),
        &layout::id_key(id),
        text.as_bytes(),
    )?;
    if put {
        Ok(id)
    } else {
        Err(AllocError::Raced)
    }
}
