//! Everything xpf knows about addresses and identities, derived from a
//! [`World`]: the identity of every local endpoint, static ipcache entry, the
//! host, the world, and one local-scope identity per CIDR prefix the policies
//! mention. It is the input of the compiled policy and of the ipcache.
//!
//! An ipcache entry labelled exactly [`remote_node_labels`] is another
//! host's node address: like Cilium, xpf gives all of them the one reserved
//! identity [`REMOTE_NODE`] instead of allocating one for the label set.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::identity::{AllocError, IdentityAllocator, NumericIdentity, HOST, REMOTE_NODE, WORLD};
use crate::ipcache::Origin;
use crate::labels::{remote_node_labels, Label, LabelSet, SOURCE_CIDR, SOURCE_RESERVED};
use crate::policy::model::{Peer, Policy};
use crate::world::World;

/// What an identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    Host,
    World,
    /// A local endpoint (or several with the same labels).
    Endpoint,
    /// A labelled static ipcache entry.
    Remote,
    /// Another host's node addresses (`reserved:remote-node`).
    RemoteNode,
    /// A CIDR prefix named by a policy.
    Cidr(#[serde(serialize_with = "crate::inventory::display")] IpNet),
}

impl IdentityKind {
    /// The kind as `identity list` and JSON name it (`remote_node`, `cidr`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::World => "world",
            Self::Endpoint => "endpoint",
            Self::Remote => "remote",
            Self::RemoteNode => "remote_node",
            Self::Cidr(_) => "cidr",
        }
    }
}

pub(crate) fn display<T: std::fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[derive(Clone, Debug)]
pub struct IdentityInfo {
    pub id: NumericIdentity,
    pub labels: LabelSet,
    pub kind: IdentityKind,
}

impl IdentityInfo {
    /// Endpoints and labelled entries: what a label selector selects
    /// without naming a `reserved:` label. Not the host or remote nodes,
    /// which `cluster` selects besides these.
    pub fn is_endpoint_like(&self) -> bool {
        matches!(self.kind, IdentityKind::Endpoint | IdentityKind::Remote)
    }
}

/// Identities and ipcache content derived from one world.
#[derive(Clone, Debug)]
pub struct Inventory {
    pub identities: BTreeMap<NumericIdentity, IdentityInfo>,
    /// Identity of each world endpoint, in the world's order.
    pub endpoint_identities: Vec<NumericIdentity>,
    /// What the ipcache holds (unmatched addresses are world).
    pub entries: Vec<(IpNet, NumericIdentity, Origin)>,
}

impl Inventory {
    pub fn build(world: &World, alloc: &mut dyn IdentityAllocator) -> Result<Self, AllocError> {
        let mut identities = BTreeMap::new();
        let mut entries = Vec::new();
        let reserved = |name: &str| {
            LabelSet::new(vec![Label::new(SOURCE_RESERVED, name, "")]).expect("one label")
        };
        for (id, name, kind) in [
            (HOST, "host", IdentityKind::Host),
            (WORLD, "world", IdentityKind::World),
        ] {
            identities.insert(
                id,
                IdentityInfo {
                    id,
                    labels: reserved(name),
                    kind,
                },
            );
        }
        for a in &world.host_addresses {
            entries.push((IpNet::from(*a), HOST, Origin::Labelled));
        }

        let mut endpoint_identities = Vec::new();
        for ep in &world.endpoints {
            let id = alloc.allocate(&ep.labels)?;
            identities.insert(
                id,
                IdentityInfo {
                    id,
                    labels: ep.labels.clone(),
                    kind: IdentityKind::Endpoint,
                },
            );
            endpoint_identities.push(id);
            for a in ep.addresses() {
                entries.push((IpNet::from(a), id, Origin::Labelled));
            }
        }
        let remote_node = remote_node_labels();
        for e in &world.ipcache {
            let (id, kind) = if e.labels == remote_node {
                (REMOTE_NODE, IdentityKind::RemoteNode)
            } else {
                (alloc.allocate(&e.labels)?, IdentityKind::Remote)
            };
            // A label set shared with a local endpoint keeps its kind.
            identities.entry(id).or_insert_with(|| IdentityInfo {
                id,
                labels: e.labels.clone(),
                kind,
            });
            entries.push((e.prefix, id, Origin::Labelled));
        }

        // A policy CIDR equal to a labelled prefix would take that prefix
        // over in the ipcache; the labelled entry wins, so it gets no entry.
        let labelled: std::collections::HashSet<IpNet> = entries.iter().map(|e| e.0).collect();
        for prefix in policy_cidrs(&world.policies) {
            if labelled.contains(&prefix) {
                continue;
            }
            let labels = LabelSet::new(vec![
                Label::new(SOURCE_CIDR, &prefix.to_string(), ""),
                Label::new(SOURCE_RESERVED, "world", ""),
            ])
            .expect("distinct keys");
            let id = alloc.allocate_local(&labels)?;
            identities.insert(
                id,
                IdentityInfo {
                    id,
                    labels,
                    kind: IdentityKind::Cidr(prefix),
                },
            );
            entries.push((prefix, id, Origin::Cidr));
        }

        Ok(Self {
            identities,
            endpoint_identities,
            entries,
        })
    }

    pub fn identity(&self, id: NumericIdentity) -> Option<&IdentityInfo> {
        self.identities.get(&id)
    }
}

/// Every CIDR prefix (and exception) any policy names, in order.
pub fn policy_cidrs(policies: &[Policy]) -> BTreeSet<IpNet> {
    let mut out = BTreeSet::new();
    for p in policies {
        for dir in [&p.egress, &p.ingress] {
            for rule in dir.allow.iter().chain(&dir.deny) {
                for peer in &rule.peers {
                    if let Peer::Cidr(c) = peer {
                        out.insert(c.cidr);
                        out.extend(c.except.iter().copied());
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{LocalAllocator, MIN_ALLOCATED};
    use crate::world::StaticEntry;

    fn entry(prefix: &str, labels: LabelSet) -> StaticEntry {
        StaticEntry {
            prefix: prefix.parse().unwrap(),
            labels,
        }
    }

    #[test]
    fn remote_nodes_get_the_reserved_identity_not_an_allocated_one() {
        let db = LabelSet::from_pairs([("app", "db")]).unwrap();
        let world = World::new(
            vec![],
            vec![
                entry("198.18.7.1/32", remote_node_labels()),
                entry("198.19.0.0/16", db),
                entry("2001:db8::7/128", remote_node_labels()),
            ],
            vec![],
            vec![],
        )
        .unwrap();
        let inv = Inventory::build(&world, &mut LocalAllocator::new()).unwrap();

        let node = inv.identity(REMOTE_NODE).expect("a remote-node identity");
        assert_eq!(node.kind, IdentityKind::RemoteNode);
        assert_eq!(node.labels.to_string(), "reserved:remote-node");
        assert!(!node.is_endpoint_like(), "plain selectors leave it alone");
        let ids: Vec<_> = inv
            .entries
            .iter()
            .map(|(p, id, o)| (p.to_string(), id.0, *o))
            .collect();
        assert_eq!(
            ids,
            [
                ("198.18.7.1/32".to_string(), 6, Origin::Labelled),
                ("198.19.0.0/16".to_string(), MIN_ALLOCATED, Origin::Labelled),
                ("2001:db8::7/128".to_string(), 6, Origin::Labelled),
            ],
            "the db entry got the first allocated number"
        );
    }

    #[test]
    fn no_remote_node_entry_no_remote_node_identity() {
        let inv = Inventory::build(&World::default(), &mut LocalAllocator::new()).unwrap();
        assert!(inv.identity(REMOTE_NODE).is_none());
        assert_eq!(inv.identities.len(), 2, "host and world");
    }
}
