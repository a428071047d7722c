//! The config's `kvstore:` section: where the store is and who this node
//! is in it. Without the section xpf is single-host.
//!
//! ```yaml
//! kvstore:
//!   endpoints: ["unix:///var/lib/etcd/localhost:2379"]   # or http://HOST:PORT
//!   node: {name: host-a, ip: 198.18.100.1}
//!   lease_ttl: 900        # seconds; Cilium's default is 15 minutes
//! ```

use std::net::IpAddr;

use serde::Deserialize;

/// Cilium's default lease TTL (`--kvstore-lease-ttl`, 15 minutes).
pub const DEFAULT_LEASE_TTL: u64 = 900;
/// The shortest lease xpf asks for: a few seconds, for tests.
pub const MIN_LEASE_TTL: u64 = 2;

/// The section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKvstore {
    #[serde(default)]
    endpoints: Vec<String>,
    node: Option<RawNode>,
    lease_ttl: Option<u64>,
    tls: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    ip: IpAddr,
}

/// The section, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvstoreSettings {
    /// Tried in order.
    pub endpoints: Vec<String>,
    pub node_name: String,
    /// The address other hosts reach this node at: its per-node identity
    /// keys and the `HostIP` of its ipcache entries.
    pub node_ip: IpAddr,
    pub lease_ttl: u64,
}

impl KvstoreSettings {
    /// Checks the section; errors are (field, message) with the field
    /// under `kvstore.`.
    pub fn parse(raw: RawKvstore) -> Result<Self, (String, String)> {
        let bad = |field: &str, message: String| (field.to_string(), message);
        if raw.tls.is_some() {
            return Err(bad(
                "tls",
                "TLS to the store is not supported yet; use a unix:// endpoint or a \
                 trusted network"
                    .into(),
            ));
        }
        if raw.endpoints.is_empty() {
            return Err(bad(
                "endpoints",
                "name at least one etcd endpoint (http://HOST:PORT or unix:///PATH)".into(),
            ));
        }
        for (i, e) in raw.endpoints.iter().enumerate() {
            let ok = match e.strip_prefix("unix://") {
                Some(path) => path.starts_with('/'),
                None => e.starts_with("http://") && e.len() > "http://".len(),
            };
            if !ok {
                return Err(bad(
                    &format!("endpoints[{i}]"),
                    format!("`{e}` is not http://HOST:PORT or unix:///ABSOLUTE/PATH"),
                ));
            }
        }
        let Some(node) = raw.node else {
            return Err(bad(
                "node",
                "name this node and the address other hosts reach it at: node: {name: N, ip: A}"
                    .into(),
            ));
        };
        if node.name.is_empty() || node.name.contains('/') {
            return Err(bad(
                "node.name",
                format!("`{}` must be non-empty and without `/`", node.name),
            ));
        }
        let lease_ttl = raw.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
        if lease_ttl < MIN_LEASE_TTL {
            return Err(bad(
                "lease_ttl",
                format!("{lease_ttl} s is shorter than the {MIN_LEASE_TTL} s a lease needs"),
            ));
        }
        Ok(Self {
            endpoints: raw.endpoints,
            node_name: node.name,
            node_ip: node.ip,
            lease_ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<KvstoreSettings, (String, String)> {
        KvstoreSettings::parse(serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn a_section_with_defaults() {
        let s = parse(
            "endpoints: [\"unix:///run/etcd/localhost:2379\"]\nnode: {name: a, ip: 198.18.100.1}\n",
        )
        .unwrap();
        assert_eq!(s.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(s.node_ip, "198.18.100.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn errors_name_the_field() {
        for (yaml, field) in [
            ("node: {name: a, ip: 198.18.100.1}\n", "endpoints"),
            (
                "endpoints: [\"localhost:2379\"]\nnode: {name: a, ip: 198.18.100.1}\n",
                "endpoints[0]",
            ),
            (
                "endpoints: [\"unix://rel\"]\nnode: {name: a, ip: 198.18.100.1}\n",
                "endpoints[0]",
            ),
            ("endpoints: [\"http://e:2379\"]\n", "node"),
            (
                "endpoints: [\"http://e:2379\"]\nnode: {name: \"a/b\", ip: 198.18.100.1}\n",
                "node.name",
            ),
            (
                "endpoints: [\"http://e:2379\"]\nnode: {name: a, ip: 198.18.100.1}\nlease_ttl: 1\n",
                "lease_ttl",
            ),
            (
                "endpoints: [\"http://e:2379\"]\nnode: {name: a, ip: 198.18.100.1}\ntls: {ca: x}\n",
                "tls",
            ),
        ] {
            assert_eq!(parse(yaml).unwrap_err().0, field, "{yaml}");
        }
    }
}
