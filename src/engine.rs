//! The assembled policy core: a world's inventory, its published ipcache
//! and its compiled egress tables, with the one verdict query every command
//! uses. No I/O.
//!
//! [`Engine::update`] moves the engine to another world without a gap: the
//! new tables are compiled aside, then the ipcache changes and the new
//! [`Verdicts`] are published in one swap, so a reader sees the old table
//! with the old verdicts or the new with the new, never a mix. Identities
//! stay what they were for label sets both worlds have.

use std::net::IpAddr;
use std::sync::Arc;

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;

use crate::identity::{LocalAllocator, NumericIdentity};
use crate::inventory::{policy_cidrs, IdentityKind, Inventory};
use crate::ipcache::{IpCache, IpCacheReader, Origin};
use crate::labels::LabelSet;
use crate::policy::compile::{compile, CompiledPolicy, EgressTable};
use crate::policy::model::Policy;
use crate::policy::Decision;
use crate::world::{Endpoint, StaticEntry, World};

/// Why an engine could not be built or asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Alloc(#[from] crate::identity::AllocError),
    #[error("no endpoint named `{name}` (known: {known})")]
    UnknownEndpoint { name: String, known: String },
}

/// The result of one verdict query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    pub src_identity: NumericIdentity,
    pub dst_identity: NumericIdentity,
    pub decision: Decision,
}

/// What the datapath enforces, published with the ipcache: each local
/// endpoint's egress table, by endpoint index (the world's order).
#[derive(Debug)]
pub struct Verdicts {
    pub tables: Vec<Arc<EgressTable>>,
    /// The policy revision these tables belong to (1 for the first world).
    pub revision: u64,
}

/// The ipcache as the datapath reads it: the table and the verdicts
/// published with it.
pub type EnforcedCache = IpCache<Arc<Verdicts>>;

/// What an [`Engine::update`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Update {
    pub revision: u64,
    pub ipcache_inserted: usize,
    pub ipcache_removed: usize,
    pub identities: usize,
}

pub struct Engine {
    pub world: World,
    pub inventory: Inventory,
    pub compiled: CompiledPolicy,
    pub ipcache: EnforcedCache,
    reader: IpCacheReader<Arc<Verdicts>>,
    alloc: LocalAllocator,
    revision: u64,
    /// What entry changes without recompiling look up: see [`Index`].
    index: Index,
}

/// Lookups for entry changes that need no recompiling, rebuilt with every
/// full build: where each prefix sits in the world's and the inventory's
/// lists, the identity of each label set the tables know, and the
/// prefixes such a change must leave alone (policy CIDRs, endpoint and
/// host addresses).
#[derive(Default)]
struct Index {
    world_at: HashMap<IpNet, usize>,
    entry_at: HashMap<IpNet, usize>,
    identity_of: HashMap<LabelSet, NumericIdentity>,
    reserved: HashSet<IpNet>,
}

impl Index {
    fn of(world: &World, inventory: &Inventory) -> Self {
        let world_at = world
            .ipcache
            .iter()
            .enumerate()
            .map(|(i, e)| (e.prefix, i))
            .collect();
        let entry_at = inventory
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.0, i))
            .collect();
        // Remote nodes too: another node address is a table change only
        // once the tables know the remote-node identity.
        let identity_of = inventory
            .identities
            .values()
            .filter(|i| i.is_endpoint_like() || i.kind == IdentityKind::RemoteNode)
            .map(|i| (i.labels.clone(), i.id))
            .collect();
        let reserved = policy_cidrs(&world.policies)
            .into_iter()
            .chain(
                world
                    .endpoints
                    .iter()
                    .flat_map(|e| e.addresses())
                    .chain(world.host_addresses.iter().copied())
                    .map(IpNet::from),
            )
            .collect();
        Self {
            world_at,
            entry_at,
            identity_of,
            reserved,
        }
    }
}

impl Engine {
    /// Allocates the world's identities and compiles its policies.
    pub fn new(world: &World) -> Result<Self, EngineError> {
        Self::succeeding(world, LocalAllocator::new(), 0)
    }

    /// An engine for `world` that follows one at `revision` whose
    /// allocator was `alloc`: label sets keep their numbers, and the
    /// revision goes on counting.
    pub fn succeeding(
        world: &World,
        mut alloc: LocalAllocator,
        revision: u64,
    ) -> Result<Self, EngineError> {
        let revision = revision + 1;
        let inventory = Inventory::build(world, &mut alloc)?;
        let compiled = compile(&world.policies, &inventory);
        let verdicts = verdicts(&inventory, &compiled, revision);
        let v4 = inventory
            .entries
            .iter()
            .filter(|e| e.0.addr().is_ipv4())
            .count();
        let mut ipcache =
            IpCache::with_attached(v4, inventory.entries.len() - v4, Arc::new(verdicts));
        for (prefix, id, origin) in &inventory.entries {
            ipcache.insert(*prefix, *id, *origin);
        }
        ipcache.publish();
        let reader = ipcache.reader();
        let index = Index::of(world, &inventory);
        Ok(Self {
            world: world.clone(),
            inventory,
            compiled,
            ipcache,
            reader,
            alloc,
            revision,
            index,
        })
    }

    /// Numbers label sets as the cluster does from now on (see
    /// [`LocalAllocator::pin`]); whether an identity the engine enforces
    /// now would get another number, which takes an [`Engine::update`] to
    /// apply. Changes nothing enforced by itself.
    pub fn pin_identities(
        &mut self,
        ids: Arc<std::collections::BTreeMap<LabelSet, NumericIdentity>>,
    ) -> bool {
        self.alloc.pin(ids);
        self.inventory
            .identities
            .values()
            .filter(|i| i.is_endpoint_like())
            .any(|i| self.alloc.peek(&i.labels) != Some(i.id))
    }

    /// The identity allocator, for a [`Engine::succeeding`] engine (this
    /// one keeps an empty one).
    pub fn take_allocator(&mut self) -> LocalAllocator {
        std::mem::take(&mut self.alloc)
    }

    /// Moves to `world`, which must have the same endpoints in the same
    /// order (their labels may differ): compiles it aside, then publishes
    /// its ipcache changes and verdicts in one swap. Returns once no reader
    /// can see the old state. On error nothing changed.
    pub fn update(&mut self, world: &World) -> Result<Update, EngineError> {
        debug_assert_eq!(
            world.endpoints.len(),
            self.world.endpoints.len(),
            "the endpoint set is the datapath's to change"
        );
        let inventory = Inventory::build(world, &mut self.alloc)?;
        let compiled = compile(&world.policies, &inventory);
        let revision = self.revision + 1;
        let verdicts = verdicts(&inventory, &compiled, revision);

        let new: HashMap<_, _> = inventory
            .entries
            .iter()
            .map(|(p, id, o)| (*p, (*id, *o)))
            .collect();
        let mut removed = 0;
        for (prefix, _, _) in &self.inventory.entries {
            if !new.contains_key(prefix) {
                self.ipcache.remove(*prefix);
                removed += 1;
            }
        }
        let mut inserted = 0;
        for (prefix, (id, origin)) in &new {
            if self.ipcache.get(*prefix) != Some((*id, *origin)) {
                self.ipcache.insert(*prefix, *id, *origin);
                inserted += 1;
            }
        }
        self.ipcache.attach(Arc::new(verdicts));
        self.ipcache.publish();

        self.index = Index::of(world, &inventory);
        self.world = world.clone();
        self.inventory = inventory;
        self.compiled = compiled;
        self.revision = revision;
        Ok(Update {
            revision,
            ipcache_inserted: inserted,
            ipcache_removed: removed,
            identities: self.inventory.identities.len(),
        })
    }

    /// Moves to the same world with `policies` (checked by
    /// [`crate::world::check_policies`]) without touching the ipcache,
    /// when that is the same as [`Engine::update`]: the policies name the
    /// same CIDRs, so the identities and entries stay. Compiles the new
    /// tables aside and publishes them in one swap. `Err` gives the
    /// policies back when their CIDRs differ (the caller updates the whole
    /// world); nothing changed then.
    pub fn update_policies(&mut self, policies: Vec<Policy>) -> Result<Update, Vec<Policy>> {
        if policy_cidrs(&policies) != policy_cidrs(&self.world.policies) {
            return Err(policies);
        }
        let compiled = compile(&policies, &self.inventory);
        self.revision += 1;
        let verdicts = verdicts(&self.inventory, &compiled, self.revision);
        self.ipcache.attach(Arc::new(verdicts));
        self.ipcache.publish();
        self.world.policies = policies;
        self.compiled = compiled;
        Ok(Update {
            revision: self.revision,
            ipcache_inserted: 0,
            ipcache_removed: 0,
            identities: self.inventory.identities.len(),
        })
    }

    /// Adds or replaces the labelled entries `entries` (a later one wins
    /// over an earlier one with the same prefix) without recompiling, when
    /// that is the same as [`Engine::update`] to the world with them: every
    /// label set already has an identity the compiled tables know, and no
    /// prefix is a policy CIDR's (whose identity it would shadow), an
    /// endpoint's or a host address. All or nothing: `None` when one of
    /// them is not so (the caller updates the whole world); nothing changed
    /// then. One publish for all of them.
    pub fn try_upsert_entries(&mut self, entries: Vec<StaticEntry>) -> Option<Update> {
        let ids: Vec<NumericIdentity> = entries
            .iter()
            .map(|e| {
                if self.index.reserved.contains(&e.prefix) {
                    return None;
                }
                self.index.identity_of.get(&e.labels).copied()
            })
            .collect::<Option<_>>()?;
        let inserted = entries.len();
        for (entry, id) in entries.into_iter().zip(ids) {
            let prefix = entry.prefix;
            match self.index.world_at.get(&prefix) {
                Some(&i) => self.world.ipcache[i] = entry,
                None => {
                    self.index.world_at.insert(prefix, self.world.ipcache.len());
                    self.world.ipcache.push(entry);
                }
            }
            let row = (prefix, id, Origin::Labelled);
            match self.index.entry_at.get(&prefix) {
                Some(&i) => self.inventory.entries[i] = row,
                None => {
                    self.index
                        .entry_at
                        .insert(prefix, self.inventory.entries.len());
                    self.inventory.entries.push(row);
                }
            }
            self.ipcache.insert(prefix, id, Origin::Labelled);
        }
        Some(self.publish_entry_change(inserted, 0))
    }

    /// Removes the labelled entries for `prefixes` without recompiling,
    /// when no policy CIDR identity comes back with them. All or nothing:
    /// `None` when one is not an entry or is a policy CIDR's prefix;
    /// nothing changed then.
    pub fn try_remove_entries(&mut self, prefixes: &[IpNet]) -> Option<Update> {
        let known = prefixes
            .iter()
            .all(|p| self.index.world_at.contains_key(p) && !self.index.reserved.contains(p));
        if !known {
            return None;
        }
        let mut removed = 0;
        for prefix in prefixes {
            let Some(i) = self.index.world_at.remove(prefix) else {
                continue; // listed twice
            };
            self.world.ipcache.swap_remove(i);
            if let Some(moved) = self.world.ipcache.get(i) {
                self.index.world_at.insert(moved.prefix, i);
            }
            if let Some(i) = self.index.entry_at.remove(prefix) {
                self.inventory.entries.swap_remove(i);
                if let Some(moved) = self.inventory.entries.get(i) {
                    self.index.entry_at.insert(moved.0, i);
                }
            }
            self.ipcache.remove(*prefix);
            removed += 1;
        }
        Some(self.publish_entry_change(0, removed))
    }

    /// Publishes staged entry changes with the same tables under the next
    /// revision.
    fn publish_entry_change(&mut self, inserted: usize, removed: usize) -> Update {
        self.revision += 1;
        let tables = self.reader.enter().map(|v| v.attached().tables.clone());
        let tables = tables
            .unwrap_or_else(|| verdicts(&self.inventory, &self.compiled, self.revision).tables);
        self.ipcache.attach(Arc::new(Verdicts {
            tables,
            revision: self.revision,
        }));
        self.ipcache.publish();
        Update {
            revision: self.revision,
            ipcache_inserted: inserted,
            ipcache_removed: removed,
            identities: self.inventory.identities.len(),
        }
    }

    /// The policy revision enforced (1 for the first world, one more per
    /// update).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn endpoint(&self, name: &str) -> Result<(usize, &Endpoint), EngineError> {
        self.world
            .endpoint(name)
            .ok_or_else(|| EngineError::UnknownEndpoint {
                name: name.to_string(),
                known: self
                    .world
                    .endpoints
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Identity of a destination address, as the datapath sees it.
    pub fn destination(&self, dst: IpAddr) -> NumericIdentity {
        self.reader.lookup_or_world(dst)
    }

    /// The egress verdict for endpoint number `src` sending to `dst` with IP
    /// protocol `ip_proto` and `port` (destination port or ICMP type).
    pub fn check(&self, src: usize, dst: IpAddr, ip_proto: u8, port: u16) -> Check {
        let src_identity = self.inventory.endpoint_identities[src];
        let dst_identity = self.destination(dst);
        Check {
            src_identity,
            dst_identity,
            decision: self
                .compiled
                .decide(src_identity, dst_identity, ip_proto, port),
        }
    }
}

/// Each endpoint's table, in the world's order.
fn verdicts(inventory: &Inventory, compiled: &CompiledPolicy, revision: u64) -> Verdicts {
    Verdicts {
        tables: inventory
            .endpoint_identities
            .iter()
            .map(|id| compiled.table(*id).clone())
            .collect(),
        revision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse::parse_policies;
    use crate::policy::Verdict;

    const ALLOW_DB: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
  - toCIDR: [198.19.0.0/16]
"#;

    fn world(entries: Vec<StaticEntry>, policy: &str) -> World {
        let client = Endpoint::new(
            "client",
            LabelSet::from_pairs([("app", "client")]).unwrap(),
            Some([198, 18, 0, 10].into()),
            None,
        );
        let policies = parse_policies(policy, std::path::Path::new("p.yaml")).unwrap();
        World::new(vec![client], entries, vec![], policies).unwrap()
    }

    fn db_at(prefix: &str) -> StaticEntry {
        StaticEntry {
            prefix: prefix.parse().unwrap(),
            labels: LabelSet::from_pairs([("app", "db")]).unwrap(),
        }
    }

    fn verdict(e: &Engine, dst: &str) -> Verdict {
        e.check(0, dst.parse().unwrap(), 6, 5432).decision.verdict
    }

    #[test]
    fn an_update_publishes_the_ipcache_and_the_verdicts_together() {
        let mut e = Engine::new(&world(vec![], ALLOW_DB)).unwrap();
        let reader = e.ipcache.reader();
        let db = "198.18.5.5";
        assert_eq!(verdict(&e, db), Verdict::Denied, "world, not db");
        assert_eq!(reader.enter().unwrap().attached().revision, 1);

        let u = e
            .update(&world(vec![db_at("198.18.5.0/24")], ALLOW_DB))
            .unwrap();
        assert_eq!(
            (u.revision, u.ipcache_inserted, u.ipcache_removed),
            (2, 1, 0)
        );
        assert_eq!(verdict(&e, db), Verdict::Allowed, "now labelled app=db");
        let view = reader.enter().unwrap();
        let dst = view.lookup_or_world(db.parse().unwrap());
        assert_eq!(view.attached().revision, 2);
        let table = &view.attached().tables[0];
        assert!(
            table.lookup_code(dst, 6, 5432).allows(table),
            "the published table allows the published identity"
        );
    }

    #[test]
    fn identities_stay_and_a_shadowed_cidr_comes_back() {
        let mut e = Engine::new(&world(vec![db_at("198.19.0.0/16")], ALLOW_DB)).unwrap();
        let client = e.inventory.endpoint_identities[0];
        let db_id = e.destination("198.19.1.1".parse().unwrap());
        // The labelled entry equal to the policy's CIDR shadows it.
        assert!(e.inventory.identity(db_id).unwrap().is_endpoint_like());

        e.update(&world(vec![], ALLOW_DB)).unwrap();
        assert_eq!(
            e.inventory.endpoint_identities[0], client,
            "same labels, same id"
        );
        let cidr_id = e.destination("198.19.1.1".parse().unwrap());
        assert_ne!(cidr_id, db_id);
        assert!(matches!(
            e.inventory.identity(cidr_id).unwrap().kind,
            crate::inventory::IdentityKind::Cidr(_)
        ));
        assert_eq!(
            verdict(&e, "198.19.1.1"),
            Verdict::Allowed,
            "by the CIDR rule"
        );

        e.update(&world(vec![db_at("198.19.0.0/16")], ALLOW_DB))
            .unwrap();
        assert_eq!(
            e.destination("198.19.1.1".parse().unwrap()),
            db_id,
            "db's id again"
        );
    }

    #[test]
    fn an_entry_change_without_recompiling_agrees_with_a_full_build() {
        let base = world(vec![db_at("198.18.5.0/24")], ALLOW_DB);
        let mut e = Engine::new(&base).unwrap();
        // app=db has an identity already: no recompiling needed.
        let u = e
            .try_upsert_entries(vec![db_at("198.18.6.0/24")])
            .expect("fast path");
        assert_eq!((u.revision, u.ipcache_inserted), (2, 1));
        let fresh = Engine::new(&world(
            vec![db_at("198.18.5.0/24"), db_at("198.18.6.0/24")],
            ALLOW_DB,
        ))
        .unwrap();
        for dst in ["198.18.5.1", "198.18.6.1", "198.18.7.1", "198.19.0.1"] {
            assert_eq!(verdict(&e, dst), verdict(&fresh, dst), "{dst}");
        }
        let reader = e.ipcache.reader();
        assert_eq!(reader.enter().unwrap().attached().revision, 2);

        // New labels, a policy CIDR's prefix, an endpoint's address: the
        // full path's business, and nothing changes here.
        let other = StaticEntry {
            prefix: "198.18.8.0/24".parse().unwrap(),
            labels: LabelSet::from_pairs([("app", "other")]).unwrap(),
        };
        assert!(e.try_upsert_entries(vec![other]).is_none());
        assert!(e.try_upsert_entries(vec![db_at("198.19.0.0/16")]).is_none());
        assert!(e
            .try_upsert_entries(vec![db_at("198.18.0.10/32")])
            .is_none());
        assert!(e
            .try_remove_entries(&["198.18.9.0/24".parse().unwrap()])
            .is_none());
        assert_eq!(e.revision(), 2);

        let u = e
            .try_remove_entries(&["198.18.6.0/24".parse().unwrap()])
            .unwrap();
        assert_eq!((u.revision, u.ipcache_removed), (3, 1));
        assert_eq!(verdict(&e, "198.18.6.1"), Verdict::Denied, "world again");
        assert_eq!(e.world.ipcache.len(), 1);
    }

    #[test]
    fn a_batch_of_entry_changes_is_all_or_nothing() {
        let mut e = Engine::new(&world(vec![db_at("198.18.5.0/24")], ALLOW_DB)).unwrap();
        let unknown = StaticEntry {
            prefix: "198.18.8.0/24".parse().unwrap(),
            labels: LabelSet::from_pairs([("app", "new")]).unwrap(),
        };
        assert!(e
            .try_upsert_entries(vec![db_at("198.18.6.0/24"), unknown])
            .is_none());
        assert_eq!(
            verdict(&e, "198.18.6.1"),
            Verdict::Denied,
            "not half applied"
        );
        assert_eq!((e.revision(), e.world.ipcache.len()), (1, 1));

        let batch: Vec<StaticEntry> = (6..9).map(|n| db_at(&format!("198.18.{n}.0/24"))).collect();
        let u = e.try_upsert_entries(batch).unwrap();
        assert_eq!((u.revision, u.ipcache_inserted), (2, 3), "one publish");
        assert_eq!(verdict(&e, "198.18.8.1"), Verdict::Allowed);

        let gone = [
            "198.18.6.0/24".parse().unwrap(),
            "198.18.99.0/24".parse().unwrap(),
        ];
        assert!(e.try_remove_entries(&gone).is_none(), "one is no entry");
        assert_eq!(verdict(&e, "198.18.6.1"), Verdict::Allowed);
        let gone = [
            "198.18.6.0/24".parse().unwrap(),
            "198.18.5.0/24".parse().unwrap(),
        ];
        let u = e.try_remove_entries(&gone).unwrap();
        assert_eq!((u.revision, u.ipcache_removed), (3, 2));
        for (dst, want) in [
            ("198.18.5.1", Verdict::Denied),
            ("198.18.6.1", Verdict::Denied),
            ("198.18.7.1", Verdict::Allowed),
            ("198.18.8.1", Verdict::Allowed),
        ] {
            assert_eq!(verdict(&e, dst), want, "{dst}");
        }
        // The index followed the swaps: the survivors can still go.
        let rest = [
            "198.18.7.0/24".parse().unwrap(),
            "198.18.8.0/24".parse().unwrap(),
        ];
        assert!(e.try_remove_entries(&rest).is_some());
        let fresh = Engine::new(&world(vec![], ALLOW_DB)).unwrap();
        assert!(e.world.ipcache.is_empty());
        assert_eq!(e.inventory.entries.len(), fresh.inventory.entries.len());
    }

    #[test]
    fn remote_nodes_share_their_identity_and_a_new_one_needs_no_recompiling() {
        const TO_NODES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress: [{toEntities: [remote-node]}]
"#;
        let node_at = |prefix: &str| StaticEntry {
            prefix: prefix.parse().unwrap(),
            labels: crate::labels::remote_node_labels(),
        };
        let mut e = Engine::new(&world(vec![db_at("198.18.5.0/24")], TO_NODES)).unwrap();
        assert!(
            e.try_upsert_entries(vec![node_at("198.18.7.1/32")])
                .is_none(),
            "the first node brings the identity: a full build"
        );
        e.update(&world(vec![node_at("198.18.7.1/32")], TO_NODES))
            .unwrap();
        let dst = |a: &str| e.destination(a.parse().unwrap());
        assert_eq!(dst("198.18.7.1"), crate::identity::REMOTE_NODE);
        e.try_upsert_entries(vec![node_at("2001:db8::7/128")])
            .expect("the tables know remote nodes");
        for (dst, want) in [
            ("198.18.7.1", Verdict::Allowed),
            ("2001:db8::7", Verdict::Allowed),
            ("198.18.7.2", Verdict::Denied),
            ("198.18.5.1", Verdict::Denied),
        ] {
            assert_eq!(verdict(&e, dst), want, "{dst}");
            let naive = crate::policy::reference::decide(
                &e.world,
                &e.world.endpoints[0],
                dst.parse().unwrap(),
                6,
                5432,
            );
            assert_eq!(naive.verdict, want, "reference, {dst}");
        }
    }
}
