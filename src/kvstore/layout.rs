//! Cilium's kvstore layout, as xpf writes and reads it, so xpf can join a
//! store Cilium agents fill and Cilium-aware tools can read xpf's keys.
//! Facts from Cilium's source (`pkg/labels`, `pkg/identity`,
//! `pkg/kvstore/allocator`, `pkg/ipcache/kvstore.go`):
//!
//! | what | key | value |
//! |---|---|---|
//! | identity master key | `cilium/state/identities/v1/id/<id>` | the label string |
//! | identity per-node key | `cilium/state/identities/v1/value/<labels>/<node IP>` | the id, decimal |
//! | allocation lock | `cilium/state/identities/v1/locks/<labels>/...` | etcd mutex |
//! | ipcache entry | `cilium/state/ip/v1/default/<ip>` or `.../<ip>/<len>` | IPIdentityPair JSON |
//! | node | `cilium/state/nodes/v1/<cluster>/<name>` | node JSON (`pkg/node/types`) |
//!
//! The label string is each label as `source:key=value;`, sorted by key
//! (Cilium's `Labels.SortedList`, "DO NOT BREAK THE FORMAT"). xpf's bare
//! labels have the source `any`, which Cilium keeps for selectors; an
//! identity's bare labels are `unspec:` in Cilium, so `any` is written as
//! `unspec` and read back as `any`.
//!
//! No I/O here: keys and values in, keys and values out.

use std::net::IpAddr;

use base64::Engine as _;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::identity::NumericIdentity;
use crate::labels::{Label, LabelKey, LabelSet, SOURCE_ANY};

/// Where identities live.
pub const IDENTITIES: &str = "cilium/state/identities/v1/";
/// Where the ipcache lives (`default` is a constant in Cilium).
pub const IPCACHE: &str = "cilium/state/ip/v1/default/";
/// Where nodes register (`<cluster>/<name>` below it).
pub const NODES: &str = "cilium/state/nodes/v1/";
/// The cluster xpf's nodes are in (Cilium's default cluster name).
pub const CLUSTER: &str = "default";
/// The source Cilium gives a label written without one.
const SOURCE_UNSPEC: &str = "unspec";

/// Why a key or value from the store was not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("{key}: not a key of {what}")]
    Key { key: String, what: &'static str },
    #[error("{key}: label string `{labels}`: {message}")]
    Labels {
        key: String,
        labels: String,
        message: String,
    },
    #[error("{key}: value: {message}")]
    Value { key: String, message: String },
}

/// The label string of `labels` (see the module doc).
pub fn label_string(labels: &LabelSet) -> String {
    let mut sorted: Vec<&Label> = labels.iter().collect();
    sorted.sort_by(|a, b| a.key.key.cmp(&b.key.key));
    let mut out = String::new();
    for l in sorted {
        let source = match l.key.source.as_str() {
            SOURCE_ANY => SOURCE_UNSPEC,
            s => s,
        };
        out.push_str(source);
        out.push(':');
        out.push_str(&l.key.key);
        out.push('=');
        out.push_str(&l.value);
        out.push(';');
    }
    out
}

/// Reads a label string back (the key it came from names errors).
pub fn parse_label_string(key: &str, s: &str) -> Result<LabelSet, LayoutError> {
    let bad = |message: String| LayoutError::Labels {
        key: key.to_string(),
        labels: s.to_string(),
        message,
    };
    let Some(body) = s.strip_suffix(';') else {
        return Err(bad("does not end with `;`".into()));
    };
    let mut labels = Vec::new();
    for part in body.split(';') {
        let (source, rest) = part
            .split_once(':')
            .ok_or_else(|| bad(format!("`{part}` has no `source:`")))?;
        let (k, value) = rest
            .split_once('=')
            .ok_or_else(|| bad(format!("`{part}` has no `=`")))?;
        if source.is_empty() || k.is_empty() {
            return Err(bad(format!("`{part}` has an empty source or key")));
        }
        let source = match source {
            SOURCE_UNSPEC => SOURCE_ANY,
            s => s,
        };
        labels.push(Label {
            key: LabelKey {
                source: source.to_string(),
                key: k.to_string(),
            },
            value: value.to_string(),
        });
    }
    LabelSet::new(labels).map_err(|e| bad(e.to_string()))
}

/// The master key of identity `id`.
pub fn id_key(id: NumericIdentity) -> String {
    format!("{IDENTITIES}id/{}", id.0)
}

/// The identity a master key names.
pub fn parse_id_key(key: &str) -> Result<NumericIdentity, LayoutError> {
    key.strip_prefix(IDENTITIES)
        .and_then(|k| k.strip_prefix("id/"))
        .and_then(|n| n.parse::<u32>().ok())
        .map(NumericIdentity)
        .ok_or_else(|| LayoutError::Key {
            key: key.to_string(),
            what: "an identity (cilium/state/identities/v1/id/<id>)",
        })
}

/// The per-node key saying `node` uses the identity of `labels`.
pub fn value_key(labels: &LabelSet, node: IpAddr) -> String {
    format!("{IDENTITIES}value/{}/{node}", label_string(labels))
}

/// The prefix of every node's key for `labels` (the per-node keys of one
/// label set).
pub fn value_prefix(labels: &LabelSet) -> String {
    format!("{IDENTITIES}value/{}/", label_string(labels))
}

/// The lock taken while allocating an identity for `labels`.
pub fn lock_key(labels: &LabelSet) -> String {
    format!("{IDENTITIES}locks/{}", label_string(labels))
}

/// The ipcache key of `prefix`: the address alone for a host prefix
/// (Cilium's IPIdentityPair with no mask), else `address/len`.
pub fn ip_key(prefix: IpNet) -> String {
    if prefix.prefix_len() == prefix.max_prefix_len() {
        format!("{IPCACHE}{}", prefix.addr())
    } else {
        format!("{IPCACHE}{prefix}")
    }
}

/// One port name of an endpoint (Cilium's NamedPort).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Port")]
    pub port: u16,
    #[serde(rename = "Protocol")]
    pub protocol: String,
}

/// Cilium's IPIdentityPair, as JSON in the store: `Mask` is the netmask's
/// bytes in base64, or null for a host address; the Kubernetes fields are
/// left out when empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpIdentityPair {
    #[serde(rename = "IP")]
    pub ip: IpAddr,
    #[serde(rename = "Mask")]
    pub mask: Option<String>,
    #[serde(rename = "HostIP", with = "optional_ip")]
    pub host_ip: Option<IpAddr>,
    #[serde(rename = "ID")]
    pub id: u32,
    #[serde(rename = "Key", default)]
    pub key: u8,
    #[serde(rename = "Metadata", default)]
    pub metadata: String,
    #[serde(
        rename = "K8sNamespace",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub k8s_namespace: String,
    #[serde(
        rename = "K8sPodName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub k8s_pod_name: String,
    #[serde(rename = "NamedPorts", default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
}

/// Go's `net.IP` is `""` in JSON when empty; accept null too.
mod optional_ip {
    use std::net::IpAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }
}

impl IpIdentityPair {
    /// The entry for `prefix` with identity `id`, published by the node at
    /// `host_ip`; `metadata` says who wrote it (Cilium writes its own
    /// source string there).
    pub fn new(prefix: IpNet, id: NumericIdentity, host_ip: IpAddr, metadata: String) -> Self {
        let mask = (prefix.prefix_len() != prefix.max_prefix_len()).then(|| {
            let bytes = match prefix.netmask() {
                IpAddr::V4(m) => m.octets().to_vec(),
                IpAddr::V6(m) => m.octets().to_vec(),
            };
            base64::engine::general_purpose::STANDARD.encode(bytes)
        });
        Self {
            ip: prefix.addr(),
            mask,
            host_ip: Some(host_ip),
            id: id.0,
            key: 0,
            metadata,
            k8s_namespace: String::new(),
            k8s_pod_name: String::new(),
            named_ports: Vec::new(),
        }
    }

    /// The prefix the pair stands for: its IP with the mask's length, or a
    /// host prefix without a mask. A mask that is not a run of ones, or of
    /// the other family's length, is refused.
    pub fn prefix(&self) -> Result<IpNet, String> {
        let Some(mask) = &self.mask else {
            return Ok(IpNet::from(self.ip));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(mask)
            .map_err(|e| format!("Mask `{mask}`: {e}"))?;
        let want = if self.ip.is_ipv4() { 4 } else { 16 };
        if bytes.len() != want {
            return Err(format!(
                "Mask `{mask}`: {} bytes for an address of {want}",
                bytes.len()
            ));
        }
        let ones: u32 = bytes.iter().map(|b| b.count_ones()).sum();
        let contiguous = bytes
            .iter()
            .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1))
            .skip(ones as usize)
            .all(|bit| bit == 0);
        if !contiguous {
            return Err(format!("Mask `{mask}` is not a prefix mask"));
        }
        IpNet::new(self.ip, ones as u8)
            .map(|n| n.trunc())
            .map_err(|e| e.to_string())
    }
}

/// The prefix an ipcache key names, if it is one written as [`ip_key`]
/// writes it.
pub fn parse_ip_key(key: &str) -> Option<IpNet> {
    let suffix = key.strip_prefix(IPCACHE)?;
    let prefix = suffix
        .parse::<IpNet>()
        .ok()
        .or_else(|| suffix.parse::<IpAddr>().ok().map(IpNet::from))?;
    (ip_key(prefix.trunc()) == key).then_some(prefix)
}

/// Reads an ipcache key and its value: the prefix and the pair. As in
/// Cilium, a key whose suffix is not the value's prefix is refused.
pub fn parse_ip_entry(key: &str, value: &[u8]) -> Result<(IpNet, IpIdentityPair), LayoutError> {
    let suffix = key.strip_prefix(IPCACHE).ok_or_else(|| LayoutError::Key {
        key: key.to_string(),
        what: "the ipcache (cilium/state/ip/v1/default/<ip>[/<len>])",
    })?;
    let bad = |message: String| LayoutError::Value {
        key: key.to_string(),
        message,
    };
    let pair: IpIdentityPair =
        serde_json::from_slice(value).map_err(|e| bad(format!("not an IPIdentityPair: {e}")))?;
    let prefix = pair.prefix().map_err(bad)?;
    if ip_key(prefix) != key {
        return Err(bad(format!("the key says {suffix} and the value {prefix}")));
    }
    Ok((prefix, pair))
}

/// One address of a node (`pkg/node/types` `Address`): Cilium's types are
/// `InternalIP`, `ExternalIP` and `CiliumInternalIP`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "IP")]
    pub ip: IpAddr,
}

/// A node as it registers in the store: the fields of Cilium's node JSON
/// xpf writes and reads (the others are left out when writing and
/// ignored when reading).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Cluster")]
    pub cluster: String,
    #[serde(rename = "IPAddresses", default)]
    pub addresses: Vec<NodeAddress>,
    #[serde(rename = "ClusterID", default)]
    pub cluster_id: u32,
}

impl NodeRecord {
    /// This node: `name` at `ip` (its `InternalIP`) in [`CLUSTER`].
    pub fn new(name: &str, ip: IpAddr) -> Self {
        Self {
            name: name.to_string(),
            cluster: CLUSTER.to_string(),
            addresses: vec![NodeAddress {
                kind: "InternalIP".to_string(),
                ip,
            }],
            cluster_id: 0,
        }
    }
}

/// The key of the node `name` in [`CLUSTER`].
pub fn node_key(name: &str) -> String {
    format!("{NODES}{CLUSTER}/{name}")
}

/// A node key's value; its cluster and name must be the key's.
pub fn parse_node(key: &str, value: &[u8]) -> Result<NodeRecord, LayoutError> {
    let bad = |message: String| LayoutError::Value {
        key: key.to_string(),
        message,
    };
    let Some((cluster, name)) = key
        .strip_prefix(NODES)
        .and_then(|rest| rest.split_once('/'))
    else {
        return Err(LayoutError::Key {
            key: key.to_string(),
            what: "a node",
        });
    };
    let node: NodeRecord = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
    if node.cluster != cluster || node.name != name {
        return Err(bad(format!(
            "node `{}` of cluster `{}` under the key of `{name}` in `{cluster}`",
            node.name, node.cluster
        )));
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        LabelSet::from_pairs(pairs.iter().copied()).unwrap()
    }

    #[test]
    fn label_strings_sort_by_key_and_write_bare_labels_as_unspec() {
        let set = labels(&[
            ("k8s:io.kubernetes.pod.namespace", "default"),
            ("k8s:app", "frontend"),
        ]);
        let s = label_string(&set);
        // Cilium's own example.
        assert_eq!(
            s,
            "k8s:app=frontend;k8s:io.kubernetes.pod.namespace=default;"
        );
        assert_eq!(parse_label_string("k", &s).unwrap(), set);

        let bare = labels(&[("tier", "db"), ("app", "pg")]);
        let s = label_string(&bare);
        assert_eq!(s, "unspec:app=pg;unspec:tier=db;");
        assert_eq!(parse_label_string("k", &s).unwrap(), bare);
    }

    #[test]
    fn bad_label_strings_name_the_key_and_the_part() {
        for (s, says) in [
            ("k8s:app=x", "does not end"),
            ("app=x;", "no `source:`"),
            ("k8s:app;", "no `=`"),
            ("k8s:app=x;any:app=y;", "twice"),
        ] {
            let e = parse_label_string("cilium/state/identities/v1/id/300", s)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("cilium/state/identities/v1/id/300:"), "{e}");
            assert!(e.contains(says), "{s}: {e}");
        }
    }

    #[test]
    fn identity_keys() {
        let set = labels(&[("k8s:app", "web")]);
        assert_eq!(
            id_key(NumericIdentity(40905)),
            "cilium/state/identities/v1/id/40905"
        );
        assert_eq!(
            parse_id_key("cilium/state/identities/v1/id/40905"),
            Ok(NumericIdentity(40905))
        );
        assert!(parse_id_key("cilium/state/identities/v1/id/x").is_err());
        assert_eq!(
            value_key(&set, "198.18.0.1".parse().unwrap()),
            "cilium/state/identities/v1/value/k8s:app=web;/198.18.0.1"
        );
        assert!(value_key(&set, "198.18.0.1".parse().unwrap()).starts_with(&value_prefix(&set)));
        assert_eq!(
            lock_key(&set),
            "cilium/state/identities/v1/locks/k8s:app=web;"
        );
    }

    #[test]
    fn ipcache_pairs_read_as_cilium_writes_them() {
        // As in Cilium's store: a host address, no mask.
        let key = "cilium/state/ip/v1/default/10.0.1.5";
        let value = br#"{"IP":"10.0.1.5","Mask":null,"HostIP":"192.168.1.10","ID":12345,"Key":0,"Metadata":"cilium-global:default:node1:2345","K8sNamespace":"default","K8sPodName":"fe-1","NamedPorts":[{"Name":"http","Port":8080,"Protocol":"TCP"}]}"#;
        let (prefix, pair) = parse_ip_entry(key, value).unwrap();
        assert_eq!(prefix, "10.0.1.5/32".parse::<IpNet>().unwrap());
        assert_eq!(pair.id, 12345);
        assert_eq!(pair.host_ip, Some("192.168.1.10".parse().unwrap()));
        assert_eq!(pair.named_ports[0].port, 8080);

        // A prefix: the mask in base64 (/24 is ////AA==).
        let key = "cilium/state/ip/v1/default/198.18.4.0/24";
        let value =
            br#"{"IP":"198.18.4.0","Mask":"////AA==","HostIP":"","ID":300,"Key":0,"Metadata":""}"#;
        let (prefix, pair) = parse_ip_entry(key, value).unwrap();
        assert_eq!(prefix, "198.18.4.0/24".parse::<IpNet>().unwrap());
        assert_eq!(pair.host_ip, None);
    }

    #[test]
    fn written_pairs_read_back_and_keep_cilium_field_names() {
        for p in [
            "198.18.7.9/32",
            "198.18.4.0/22",
            "2001:db8:4::/48",
            "2001:db8::7/128",
        ] {
            let prefix: IpNet = p.parse().unwrap();
            let pair = IpIdentityPair::new(
                prefix,
                NumericIdentity(4242),
                "198.18.0.1".parse().unwrap(),
                "xpf:node-a".into(),
            );
            let json = serde_json::to_string(&pair).unwrap();
            for field in [
                "\"IP\"",
                "\"Mask\"",
                "\"HostIP\"",
                "\"ID\"",
                "\"Key\"",
                "\"Metadata\"",
            ] {
                assert!(json.contains(field), "{json}");
            }
            assert!(!json.contains("K8sPodName"), "{json}");
            let (back, again) = parse_ip_entry(&ip_key(prefix), json.as_bytes()).unwrap();
            assert_eq!((back, again), (prefix, pair), "{p}");
        }
        assert!(ip_key("2001:db8::7/128".parse().unwrap()).ends_with("/default/2001:db8::7"));
        for p in ["198.18.7.9/32", "198.18.4.0/22", "2001:db8:4::/48"] {
            let prefix: IpNet = p.parse().unwrap();
            assert_eq!(parse_ip_key(&ip_key(prefix)), Some(prefix));
        }
        // Not as ip_key writes it: a host written with its length, host bits.
        assert_eq!(
            parse_ip_key("cilium/state/ip/v1/default/198.18.7.9/32"),
            None
        );
        assert_eq!(
            parse_ip_key("cilium/state/ip/v1/default/198.18.4.1/22"),
            None
        );
    }

    #[test]
    fn a_key_that_disagrees_with_its_value_is_refused() {
        let value = br#"{"IP":"10.0.1.5","Mask":null,"HostIP":"","ID":1,"Key":0,"Metadata":""}"#;
        let e = parse_ip_entry("cilium/state/ip/v1/default/10.0.1.6", value).unwrap_err();
        assert!(e.to_string().contains("the key says 10.0.1.6"), "{e}");
        let holey =
            br#"{"IP":"10.0.0.0","Mask":"/wD/AA==","HostIP":"","ID":1,"Key":0,"Metadata":""}"#;
        let e = parse_ip_entry("cilium/state/ip/v1/default/10.0.0.0/16", holey).unwrap_err();
        assert!(e.to_string().contains("not a prefix mask"), "{e}");
    }

    #[test]
    fn a_node_is_written_as_cilium_names_its_fields_and_read_back_only_under_its_own_key() {
        let ip: IpAddr = "198.18.255.1".parse().unwrap();
        let json = serde_json::to_string(&NodeRecord::new("b", ip)).unwrap();
        assert_eq!(
            json,
            r#"{"Name":"b","Cluster":"default","IPAddresses":[{"Type":"InternalIP","IP":"198.18.255.1"}],"ClusterID":0}"#
        );
        let key = node_key("b");
        assert_eq!(key, "cilium/state/nodes/v1/default/b");
        assert_eq!(
            parse_node(&key, json.as_bytes()).unwrap().addresses[0].ip,
            ip
        );
        // Cilium writes many more fields; they are ignored.
        let cilium = br#"{"Name":"b","Cluster":"default","IPAddresses":[{"Type":"InternalIP","IP":"198.18.255.1"},{"Type":"CiliumInternalIP","IP":"198.19.0.1"}],"IPv4AllocCIDR":null,"Labels":{},"NodeIdentity":0,"ClusterID":0}"#;
        assert_eq!(parse_node(&key, cilium).unwrap().addresses.len(), 2);
        assert!(parse_node(&node_key("c"), json.as_bytes()).is_err());
        assert!(parse_node("cilium/state/nodes/v1/b", json.as_bytes()).is_err());
    }
}
