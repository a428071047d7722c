//! What the store holds in Cilium's layout, read for people and scripts
//! (`xpf kvstore dump`): identities with their labels and the nodes using
//! them, ipcache entries with their identity's labels, and every key that
//! did not read as Cilium writes it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use super::etcd::{Etcd, KvError};
use super::layout::{self, IDENTITIES, IPCACHE};

/// One identity: its master key's labels and the nodes with a key for it.
#[derive(Debug, Serialize)]
pub struct DumpedIdentity {
    pub id: u32,
    pub labels: String,
    pub nodes: Vec<String>,
}

/// One ipcache entry.
#[derive(Debug, Serialize)]
pub struct DumpedEntry {
    pub prefix: String,
    pub identity: u32,
    /// The identity's labels, when its master key is in the store.
    pub labels: Option<String>,
    pub host_ip: Option<IpAddr>,
    pub metadata: String,
}

/// A key that did not read as Cilium writes it, and why.
#[derive(Debug, Serialize)]
pub struct Unreadable {
    pub key: String,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct Dump {
    pub endpoint: String,
    /// The store's revision the identities were read at.
    pub revision: i64,
    pub identities: Vec<DumpedIdentity>,
    pub ipcache: Vec<DumpedEntry>,
    pub unreadable: Vec<Unreadable>,
}

/// Reads identities and the ipcache from `etcd`.
pub fn dump(etcd: &mut Etcd) -> Result<Dump, KvError> {
    let ids = etcd.list(&format!("{IDENTITIES}id/"))?;
    let values = etcd.list(&format!("{IDENTITIES}value/"))?;
    let ips = etcd.list(IPCACHE)?;
    let mut unreadable = Vec::new();
    let mut identities: BTreeMap<u32, DumpedIdentity> = BTreeMap::new();
    for (key, value) in &ids.pairs {
        let text = String::from_utf8_lossy(value).into_owned();
        match layout::parse_id_key(key)
            .and_then(|id| layout::parse_label_string(key, &text).map(|_| id))
        {
            Ok(id) => {
                identities.insert(
                    id.0,
                    DumpedIdentity {
                        id: id.0,
                        labels: text,
                        nodes: Vec::new(),
                    },
                );
            }
            Err(e) => unreadable.push(Unreadable {
                key: key.clone(),
                error: e.to_string(),
            }),
        }
    }
    for (key, value) in &values.pairs {
        // .../value/<labels>/<node>: the node is after the last `/`.
        let id = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok());
        let node = key.rsplit_once('/').map(|(_, n)| n.to_string());
        match (id, node) {
            (Some(id), Some(node)) if identities.contains_key(&id) => {
                identities.get_mut(&id).expect("checked").nodes.push(node);
            }
            (Some(id), Some(_)) => unreadable.push(Unreadable {
                key: key.clone(),
                error: format!("identity {id} has no master key"),
            }),
            _ => unreadable.push(Unreadable {
                key: key.clone(),
                error: "the value is not an identity number".into(),
            }),
        }
    }
    let mut ipcache = Vec::new();
    for (key, value) in &ips.pairs {
        match layout::parse_ip_entry(key, value) {
            Ok((prefix, pair)) => ipcache.push(DumpedEntry {
                prefix: prefix.to_string(),
                identity: pair.id,
                labels: identities.get(&pair.id).map(|i| i.labels.clone()),
                host_ip: pair.host_ip,
                metadata: pair.metadata,
            }),
            Err(e) => unreadable.push(Unreadable {
                key: key.clone(),
                error: e.to_string(),
            }),
        }
    }
    Ok(Dump {
        endpoint: etcd.endpoint().to_string(),
        revision: ids.revision,
        identities: identities.into_values().collect(),
        ipcache,
        unreadable,
    })
}
