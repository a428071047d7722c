//! This host in the cluster, and the cluster as this host sees it.
//!
//! [`Node`] joins the store under a lease and publishes the local
//! endpoints: an identity for each label set ([`super::identities`]) and
//! an IPIdentityPair for each address, all under the lease, so they go
//! when the host does. [`ClusterView`] follows the identities and the
//! ipcache ([`super::follow`]) and turns the other hosts' entries into
//! labelled prefixes, the form the engine's ipcache entries take.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::etcd::{Change, Etcd, KvError};
use super::follow::Follower;
use super::identities::{self, AllocError};
use super::layout::{self, IpIdentityPair, NodeRecord, IDENTITIES, IPCACHE, NODES};
use super::settings::KvstoreSettings;
use crate::identity::NumericIdentity;
use crate::labels::LabelSet;
use crate::world::Endpoint;

/// This host's membership: a connection and the lease its keys live by.
pub struct Node {
    pub etcd: Etcd,
    pub lease: i64,
    pub ip: IpAddr,
    name: String,
    /// The prefixes this node has published, to withdraw what goes.
    published: BTreeMap<IpNet, NumericIdentity>,
}

impl Node {
    /// Connects to the first endpoint of `s` that answers, takes a lease
    /// of `s.lease_ttl` seconds and registers the node under it.
    pub fn join(s: &KvstoreSettings, timeout: Duration) -> Result<Self, KvError> {
        let mut etcd = Etcd::connect_any(&s.endpoints, timeout)?;
        let lease = etcd.grant(s.lease_ttl as i64)?;
        let record = NodeRecord::new(&s.node_name, s.node_ip);
        let json = serde_json::to_vec(&record).expect("a node serialises");
        etcd.put(&layout::node_key(&s.node_name), &json, Some(lease))?;
        Ok(Self {
            etcd,
            lease,
            ip: s.node_ip,
            name: s.node_name.clone(),
            published: BTreeMap::new(),
        })
    }

    /// Publishes `endpoints`: their identities (allocated cluster-wide)
    /// and an ipcache entry per address, all under this node's lease;
    /// withdraws what an earlier call published and these do not have.
    /// Returns each endpoint's identity, in order.
    pub fn publish(&mut self, endpoints: &[Endpoint]) -> Result<Vec<NumericIdentity>, AllocError> {
        let mut ids = Vec::with_capacity(endpoints.len());
        let mut now = BTreeMap::new();
        for ep in endpoints {
            let id = identities::allocate(&mut self.etcd, &ep.labels, self.ip, self.lease)?;
            ids.push(id);
            for a in ep.addresses() {
                now.insert(IpNet::from(a), id);
            }
        }
        for (prefix, id) in &now {
            if self.published.get(prefix) == Some(id) {
                continue;
            }
            let pair = IpIdentityPair::new(*prefix, *id, self.ip, format!("xpf:{}", self.name));
            let json = serde_json::to_vec(&pair).expect("a pair serialises");
            self.etcd
                .put(&layout::ip_key(*prefix), &json, Some(self.lease))?;
        }
        for prefix in self.published.keys().filter(|p| !now.contains_key(*p)) {
            self.etcd.delete(&layout::ip_key(*prefix))?;
        }
        self.published = now;
        Ok(ids)
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the store still holds every entry this node published, as
    /// it published it (someone may have deleted one: Cilium's agents
    /// write theirs again, and so does the caller, by publishing again
    /// after [`Node::forget_published`]). An entry another host has
    /// taken over counts as intact.
    pub fn published_intact(&self, view: &ClusterView) -> bool {
        self.published
            .iter()
            .all(|(prefix, id)| match view.entries.get(prefix) {
                None => false,
                Some(e) if e.host_ip == Some(self.ip) => e.identity == id.0,
                // Another host claims the address: writing it back would
                // start a fight neither host wins. Each host enforces its own
                // claim locally (a local address beats the store's entry).
                Some(_) => true,
            })
    }

    /// Forgets what was published, so the next [`Node::publish`] writes
    /// every entry again.
    pub fn forget_published(&mut self) {
        self.published.clear();
    }

    /// Renews the lease (call well within its TTL).
    pub fn keep_alive(&mut self) -> Result<(), KvError> {
        self.etcd.keep_alive(self.lease)
    }

    /// Leaves the cluster on purpose: the lease and every key under it go
    /// at once instead of at its end.
    pub fn leave(mut self) -> Result<(), KvError> {
        self.etcd.revoke(self.lease)
    }
}

/// An ipcache entry of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEntry {
    pub identity: u32,
    pub host_ip: Option<IpAddr>,
}

/// The identities and the ipcache of the store, kept up to date.
pub struct ClusterView {
    ids: Follower,
    ips: Follower,
    node_keys: Follower,
    /// Registered nodes by name.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Master keys that read: id to labels.
    pub identities: BTreeMap<u32, LabelSet>,
    pub entries: BTreeMap<IpNet, RemoteEntry>,
    /// Keys that did not read as Cilium writes them (left out).
    pub unreadable: BTreeMap<String, String>,
}

impl Default for ClusterView {
    fn default() -> Self {
        Self {
            ids: Follower::new(&format!("{IDENTITIES}id/")),
            ips: Follower::new(IPCACHE),
            node_keys: Follower::new(&format!("{NODES}{}/", layout::CLUSTER)),
            nodes: BTreeMap::new(),
            identities: BTreeMap::new(),
            entries: BTreeMap::new(),
            unreadable: BTreeMap::new(),
        }
    }
}

impl ClusterView {
    /// Catches up with the store, waiting up to `wait` on each prefix for
    /// news; whether anything changed. On error the view stays as it was.
    pub fn sync(&mut self, etcd: &mut Etcd, wait: Duration) -> Result<bool, KvError> {
        let ids = self.ids.sync(etcd, wait)?;
        let ips = self.ips.sync(etcd, wait)?;
        let nodes = self.node_keys.sync(etcd, wait)?;
        let changed = !ids.is_empty() || !ips.is_empty() || !nodes.is_empty();
        for c in nodes {
            match c {
                Change::Put(key, value) => match layout::parse_node(&key, &value) {
                    Ok(node) => {
                        self.unreadable.remove(&key);
                        self.nodes.insert(node.name.clone(), node);
                    }
                    Err(e) => {
                        self.drop_node(&key);
                        self.unreadable.insert(key, e.to_string());
                    }
                },
                Change::Delete(key) => {
                    self.unreadable.remove(&key);
                    self.drop_node(&key);
                }
            }
        }
        for c in ids {
            match c {
                Change::Put(key, value) => {
                    let text = String::from_utf8_lossy(&value);
                    let read = layout::parse_id_key(&key)
                        .and_then(|id| layout::parse_label_string(&key, &text).map(|l| (id, l)));
                    match read {
                        Ok((id, labels)) => {
                            self.unreadable.remove(&key);
                            self.identities.insert(id.0, labels);
                        }
                        Err(e) => {
                            self.unreadable.insert(key, e.to_string());
                        }
                    }
                }
                Change::Delete(key) => {
                    self.unreadable.remove(&key);
                    if let Ok(id) = layout::parse_id_key(&key) {
                        self.identities.remove(&id.0);
                    }
                }
            }
        }
        for c in ips {
            match c {
                Change::Put(key, value) => match layout::parse_ip_entry(&key, &value) {
                    Ok((prefix, pair)) => {
                        self.unreadable.remove(&key);
                        self.entries.insert(
                            prefix,
                            RemoteEntry {
                                identity: pair.id,
                                host_ip: pair.host_ip,
                            },
                        );
                    }
                    Err(e) => {
                        // A key that no longer reads no longer vouches
                        // for its address.
                        self.drop_key(&key);
                        self.unreadable.insert(key, e.to_string());
                    }
                },
                Change::Delete(key) => {
                    self.unreadable.remove(&key);
                    self.drop_key(&key);
                }
            }
        }
        Ok(changed)
    }

    /// Times a lost watch made the view list a prefix again.
    pub fn relists(&self) -> u64 {
        self.ids.relists + self.ips.relists + self.node_keys.relists
    }

    /// The revision of the store the view is at.
    pub fn revision(&self) -> i64 {
        self.ids
            .revision()
            .max(self.ips.revision())
            .max(self.node_keys.revision())
    }

    /// After the connection was lost: the watches died with it, so the
    /// next [`ClusterView::sync`] watches again from where the view is
    /// (and lists again if that revision is gone). What the view holds
    /// stays meanwhile.
    pub fn reconnected(&mut self) {
        for f in [&mut self.ids, &mut self.ips, &mut self.node_keys] {
            f.reconnected();
        }
    }

    fn drop_node(&mut self, key: &str) {
        if let Some(name) = key.rsplit_once('/').map(|(_, n)| n) {
            self.nodes.remove(name);
        }
    }

    /// The number of each label set the store numbers (the lowest, should
    /// two master keys hold the same labels).
    pub fn pins(&self) -> BTreeMap<LabelSet, NumericIdentity> {
        let mut pins = BTreeMap::new();
        for (id, labels) in self.identities.iter().rev() {
            pins.insert(labels.clone(), NumericIdentity(*id));
        }
        pins
    }

    fn drop_key(&mut self, key: &str) {
        if let Some(prefix) = layout::parse_ip_key(key) {
            self.entries.remove(&prefix);
        }
    }

    /// The other hosts' addresses as labelled prefixes: the addresses of
    /// every node but `own_name` as `reserved:remote-node`, then every
    /// ipcache entry not published from `own_ip` (winning over a node
    /// address), labelled as its identity's master key says. An entry
    /// whose identity has no master key is left out (its address stays
    /// what the local ipcache makes it, `world` unless a CIDR covers it)
    /// and named in the second list; so is one with a reserved identity
    /// xpf has no labels for.
    pub fn remote_entries(
        &self,
        own_name: &str,
        own_ip: IpAddr,
    ) -> (BTreeMap<IpNet, Remote>, Vec<IpNet>) {
        let mut known = BTreeMap::new();
        let mut unknown = Vec::new();
        // One copy of each label set and node name, shared by every entry
        // that has it: the map is made again on every change, and with
        // many entries copying them was most of the agent's time.
        let remote_node = Arc::new(crate::labels::remote_node_labels());
        let mut named: HashMap<IpAddr, Arc<str>> = HashMap::new();
        for node in self.nodes.values() {
            let name: Arc<str> = Arc::from(node.name.as_str());
            for a in &node.addresses {
                named.entry(a.ip).or_insert_with(|| name.clone());
            }
        }
        for node in self.nodes.values().filter(|n| n.name != own_name) {
            let name: Arc<str> = Arc::from(node.name.as_str());
            for a in &node.addresses {
                known.insert(
                    IpNet::from(a.ip),
                    Remote {
                        labels: remote_node.clone(),
                        host: Some(a.ip),
                        node: Some(name.clone()),
                    },
                );
            }
        }
        let mut labelled: HashMap<u32, Arc<LabelSet>> = HashMap::new();
        for (prefix, e) in &self.entries {
            if e.host_ip == Some(own_ip) {
                continue;
            }
            let labels = match e.identity {
                // A node's own addresses, as Cilium may publish them.
                1 | 6 => Some(remote_node.clone()),
                2 => continue, // world: what an address without entry is
                id => match labelled.get(&id) {
                    Some(l) => Some(l.clone()),
                    None => self.identities.get(&id).map(|l| {
                        let l = Arc::new(l.clone());
                        labelled.insert(id, l.clone());
                        l
                    }),
                },
            };
            match labels {
                Some(labels) => {
                    let node = e.host_ip.and_then(|h| named.get(&h).cloned());
                    known.insert(
                        *prefix,
                        Remote {
                            labels,
                            host: e.host_ip,
                            node,
                        },
                    );
                }
                None => unknown.push(*prefix),
            }
        }
        (known, unknown)
    }
}

/// An address of another host, as the cluster view gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Shared by every entry of the label set.
    pub labels: Arc<LabelSet>,
    /// The host it lives on (the entry's `HostIP`).
    pub host: Option<IpAddr>,
    /// That host's node name, when it is registered.
    pub node: Option<Arc<str>>,
}
