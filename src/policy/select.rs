//! Which identities a rule's peer selects: entities by kind, CIDRs by
//! their identities' prefixes, label selectors by labels (narrowed by an
//! index on `In` values, so 1k selectors over 1k identities are not a
//! million label comparisons).

use std::collections::HashMap;

use super::model::{Entity, Peer};
use crate::inventory::{IdentityInfo, IdentityKind};
use crate::labels::{LabelSet, Operator, Selector};

/// Destinations a peer (or a rule) selects.
#[derive(Clone, Debug)]
pub(super) enum Selected {
    All,
    Some(Vec<u32>),
}

/// The endpoint and remote identities by label (key without its source,
/// and value): a selector with an `In` requirement is weighed against the
/// identities carrying one of its values only, not against every identity.
pub(super) struct LabelIndex<'a> {
    by_label: HashMap<(&'a str, &'a str), Vec<&'a IdentityInfo>>,
}

impl<'a> LabelIndex<'a> {
    pub(super) fn of(identities: &[&'a IdentityInfo]) -> Self {
        let mut by_label: HashMap<(&str, &str), Vec<&IdentityInfo>> = HashMap::new();
        for i in identities {
            if i.is_endpoint_like() {
                for l in i.labels.iter() {
                    by_label
                        .entry((l.key.key.as_str(), l.value.as_str()))
                        .or_default()
                        .push(i);
                }
            }
        }
        Self { by_label }
    }

    /// The endpoint and remote identities `s` may select, or `None` when
    /// it has no `In` requirement to narrow them by. The caller still
    /// weighs each candidate against the whole selector.
    fn candidates<'s>(
        &'s self,
        s: &'s Selector,
    ) -> Option<impl Iterator<Item = &'a IdentityInfo> + 's> {
        let r = s
            .requirements
            .iter()
            .filter(|r| r.operator == Operator::In)
            .min_by_key(|r| r.values.len())?;
        Some(r.values.iter().flat_map(move |v| {
            self.by_label
                .get(&(r.key.key.as_str(), v.as_str()))
                .into_iter()
                .flatten()
                .copied()
        }))
    }
}

pub(super) fn select(
    peer: &Peer,
    identities: &[&IdentityInfo],
    index: &LabelIndex,
    world_labels: &LabelSet,
) -> Selected {
    let ids = |f: &dyn Fn(&IdentityInfo) -> bool| {
        Selected::Some(identities.iter().filter(|i| f(i)).map(|i| i.id.0).collect())
    };
    match peer {
        Peer::Entity(Entity::All) => Selected::All,
        Peer::Entity(Entity::World) => {
            ids(&|i| matches!(i.kind, IdentityKind::World | IdentityKind::Cidr(_)))
        }
        Peer::Entity(Entity::Host) => ids(&|i| i.kind == IdentityKind::Host),
        Peer::Entity(Entity::RemoteNode) => ids(&|i| i.kind == IdentityKind::RemoteNode),
        Peer::Entity(Entity::Cluster) => ids(&|i| {
            matches!(i.kind, IdentityKind::Host | IdentityKind::RemoteNode) || i.is_endpoint_like()
        }),
        Peer::Cidr(c) => ids(&|i| match &i.kind {
            IdentityKind::Cidr(prefix) => c.selects_prefix(prefix),
            _ => false,
        }),
        Peer::Selector(s) => {
            // Only a selector naming a `reserved:` label may select the
            // host, remote nodes or the world; every world address (CIDR
            // identities included) is matched with the world's labels
            // alone. Such a selector is weighed against every identity,
            // never narrowed by the index, which holds endpoint-like ones
            // only.
            let reserved = s.names_reserved();
            match index.candidates(s) {
                Some(candidates) if !reserved => {
                    let mut v: Vec<u32> = candidates
                        .filter(|i| s.matches(&i.labels))
                        .map(|i| i.id.0)
                        .collect();
                    v.sort_unstable();
                    v.dedup();
                    Selected::Some(v)
                }
                _ => ids(&|i| match &i.kind {
                    IdentityKind::Endpoint | IdentityKind::Remote => s.matches(&i.labels),
                    IdentityKind::Host | IdentityKind::RemoteNode => {
                        reserved && s.matches(&i.labels)
                    }
                    IdentityKind::World | IdentityKind::Cidr(_) => {
                        reserved && s.matches(world_labels)
                    }
                }),
            }
        }
    }
}
