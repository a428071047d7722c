//! Numeric security identities, as Cilium numbers them.
//!
//! Numbers below 256 are reserved; [`HOST`], [`WORLD`] and [`REMOTE_NODE`]
//! are the ones xpf derives today, the rest are kept free so the numbering
//! matches Cilium's.
//! Label sets get identities from 256 upward through an [`IdentityAllocator`];
//! CIDR selectors get *local-scope* identities (bit 24 set), which never leave
//! this host. Allocation is deterministic: the same label set asked for in the
//! same order always gets the same number, and a given set keeps its number for
//! as long as the allocator lives.

use std::collections::BTreeMap;
use std::fmt;

use crate::labels::LabelSet;

/// A security identity as carried in the ipcache and the policy tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct NumericIdentity(pub u32);

/// Not known (never assigned to anything).
pub const UNKNOWN: NumericIdentity = NumericIdentity(0);
/// The local host.
pub const HOST: NumericIdentity = NumericIdentity(1);
/// Anything outside: every address that no ipcache entry claims.
pub const WORLD: NumericIdentity = NumericIdentity(2);
/// Another host of the cluster (its node addresses), as Cilium's
/// `ReservedIdentityRemoteNode`.
pub const REMOTE_NODE: NumericIdentity = NumericIdentity(6);
/// First identity handed to a label set.
pub const MIN_ALLOCATED: u32 = 256;
/// Local-scope identities (CIDR selectors) have this bit set, as in Cilium.
pub const LOCAL_SCOPE: u32 = 1 << 24;
/// Highest local-scope identity.
pub const MAX_LOCAL: u32 = LOCAL_SCOPE | 0x00ff_ffff;

impl fmt::Display for NumericIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Hands out identities for label sets. The local implementation keeps them
/// in memory; a shared store (kvstore, file) can implement the same trait.
pub trait IdentityAllocator {
    /// The identity of `labels`, allocating one when the set is new.
    fn allocate(&mut self, labels: &LabelSet) -> Result<NumericIdentity, AllocError>;
    /// A fresh local-scope identity for a CIDR selector, keyed by its labels.
    fn allocate_local(&mut self, labels: &LabelSet) -> Result<NumericIdentity, AllocError>;
}

/// The allocator ran out of numbers in a scope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("identity space exhausted ({scope} scope)")]
    Exhausted { scope: &'static str },
}

/// In-memory allocator: sequential numbers in order of first request.
///
/// In cluster mode it is *pinned*: label sets take the numbers the
/// cluster gave them ([`LocalAllocator::pin`]), and a set the cluster has
/// not numbered (yet) gets a local-scope number, which never leaves this
/// host and so cannot collide with a number the cluster hands out later.
/// Policy decides by labels, so a set that moves from a local-scope number
/// to its cluster number keeps its verdicts.
#[derive(Clone, Debug, Default)]
pub struct LocalAllocator {
    global: BTreeMap<LabelSet, NumericIdentity>,
    local: BTreeMap<LabelSet, NumericIdentity>,
    pinned: Option<std::sync::Arc<BTreeMap<LabelSet, NumericIdentity>>>,
}

impl LocalAllocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Numbers label sets as `ids` does (cluster mode, see above) from the
    /// next build on.
    pub fn pin(&mut self, ids: std::sync::Arc<BTreeMap<LabelSet, NumericIdentity>>) {
        self.pinned = Some(ids);
    }

    /// The number `labels` would get now, without allocating.
    pub fn peek(&self, labels: &LabelSet) -> Option<NumericIdentity> {
        match &self.pinned {
            Some(p) => p.get(labels).or_else(|| self.local.get(labels)).copied(),
            None => self.global.get(labels).copied(),
        }
    }
}

impl IdentityAllocator for LocalAllocator {
    fn allocate(&mut self, labels: &LabelSet) -> Result<NumericIdentity, AllocError> {
        if let Some(pinned) = &self.pinned {
            if let Some(id) = pinned.get(labels) {
                return Ok(*id);
            }
            return self.allocate_local(labels);
        }
        if let Some(id) = self.global.get(labels) {
            return Ok(*id);
        }
        let next = MIN_ALLOCATED + self.global.len() as u32;
        if next >= LOCAL_SCOPE {
            return Err(AllocError::Exhausted { scope: "global" });
        }
        let id = NumericIdentity(next);
        self.global.insert(labels.clone(), id);
        Ok(id)
    }

    fn allocate_local(&mut self, labels: &LabelSet) -> Result<NumericIdentity, AllocError> {
        if let Some(id) = self.local.get(labels) {
            return Ok(*id);
        }
        let next = LOCAL_SCOPE + 1 + self.local.len() as u32;
        if next > MAX_LOCAL {
            return Err(AllocError::Exhausted { scope: "local" });
        }
        let id = NumericIdentity(next);
        self.local.insert(labels.clone(), id);
        Ok(id)
    }
}
