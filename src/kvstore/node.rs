//! This host in the cluster, and the cluster as this host sees it.
//!
//! [`Node`] joins the store under a lease and publishes the local
//! endpoints: an identity for each label set ([`super::identities`]) and
//! an IPIdentityPair for each address, all under the lease, so they go
//! when the host does. [`ClusterView`] follows the identities and the
//! ipcache ([`super::follow`]) and turns the other hosts' entries into
//! labelled prefixes, the form the engine's ipcache entries take.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::etcd::{Change, Etcd, KvError};
use super::follow::Follower;
use super::identities::{self, AllocError};
use super::layout::{self, IpIdentityPair, IDENTITIES, IPCACHE};
use super::settings::KvstoreSettings;
use crate::identity::NumericIdentity;
use crate::labels::LabelSet;
use crate::world::{Endpoint, StaticEntry};

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
    /// Connects to the first endpoint of `s` that answers and takes a
    /// lease of `s.lease_ttl` seconds.
    pub fn join(s: &KvstoreSettings, timeout: Duration) -> Result<Self, KvError> {
        let mut etcd = Etcd::connect_any(&s.endpoints, timeout)?;
        let lease = etcd.grant(s.lease_ttl as i64)?;
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
        let changed = !ids.is_empty() || !ips.is_empty();
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

    fn drop_key(&mut self, key: &str) {
        if let Some(prefix) = layout::parse_ip_key(key) {
            self.entries.remove(&prefix);
        }
    }

    /// The other hosts' entries as labelled prefixes: every entry not
    /// published from `own` whose identity's labels are known. An entry
    /// whose identity has no master key is left out (its address stays
    /// what the local ipcache makes it, `world` unless a CIDR covers it);
    /// the second list names them.
    pub fn remote_entries(&self, own: IpAddr) -> (Vec<StaticEntry>, Vec<IpNet>) {
        let mut known = Vec::new();
        let mut unknown = Vec::new();
        for (prefix, e) in &self.entries {
            if e.host_ip == Some(own) {
                continue;
            }
            match self.identities.get(&e.identity) {
                Some(labels) => known.push(StaticEntry {
                    prefix: *prefix,
                    labels: labels.clone(),
                }),
                None => unknown.push(*prefix),
            }
        }
        (known, unknown)
    }
}
