//! The world xpf enforces: its local endpoints, the static ipcache entries,
//! the host's own addresses and the policies, as plain validated data.
//!
//! A [`World`] does not know where it came from: `config` builds one from a
//! file, and later a control plane may build one from API calls or a
//! key-value store. [`World::new`] is the one validation every source goes
//! through, so whatever `policy check` accepts is what `run` enforces. The
//! per-field rules for names, namespaces, interface names and addresses are
//! in [`crate::rules`], shared with the `endpoint` module, which checks
//! again before it touches the system.
//!
//! Errors name the field as a path into the world (`endpoints[2].ipv4`), so
//! a loader can prefix it with its file.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::labels::{remote_node_labels, LabelSet, SOURCE_CIDR, SOURCE_RESERVED};
use crate::policy::model::Policy;
use crate::policy::parse::PolicyError;
use crate::rules;

/// A local endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub name: String,
    pub labels: LabelSet,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Network namespace (default: the endpoint's name).
    pub netns: String,
    /// Host-side veth name (default `xpf-<name>`, or a hash for long names).
    pub host_ifname: String,
    /// `true` for `attach: existing`: the namespace and veth are the user's,
    /// adopted and never deleted.
    pub existing: bool,
}

impl Endpoint {
    /// For tests: endpoint `name` labelled `app: name`, at 198.18.0.`last`.
    #[cfg(test)]
    pub(crate) fn app_at(name: &str, last: u8) -> Self {
        Self::new(
            name,
            LabelSet::from_pairs([("app", name)]).expect("a valid label"),
            Some([198, 18, 0, last].into()),
            None,
        )
    }

    /// An endpoint with the default namespace (its name) and host
    /// interface, created by xpf.
    pub fn new(
        name: &str,
        labels: LabelSet,
        ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
    ) -> Self {
        Self {
            name: name.to_string(),
            labels,
            ipv4,
            ipv6,
            netns: name.to_string(),
            host_ifname: default_ifname(name),
            existing: false,
        }
    }

    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
    }
}

/// A static ipcache entry: a prefix that is not a local endpoint but has
/// labels (endpoints on another host, a labelled external service).
#[derive(Clone, Debug, PartialEq)]
pub struct StaticEntry {
    pub prefix: IpNet,
    pub labels: LabelSet,
}

/// What xpf enforces. Build it with [`World::new`]; the fields are public
/// for reading (and for tests that build worlds field by field).
#[derive(Clone, Debug, Default)]
pub struct World {
    pub endpoints: Vec<Endpoint>,
    pub ipcache: Vec<StaticEntry>,
    pub host_addresses: Vec<IpAddr>,
    pub policies: Vec<Policy>,
}

/// Why a world is not valid.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("field `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Policy(#[from] PolicyError),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> WorldError {
    WorldError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl World {
    /// Validates the parts and puts them together: endpoint names,
    /// namespaces, interfaces and addresses are valid and unique, labels
    /// are the user's to give (but for an ipcache entry labelled exactly
    /// [`remote_node_labels`]), host addresses belong to no endpoint,
    /// ipcache prefixes are unique and labelled, and no policy is defined
    /// twice.
    pub fn new(
        endpoints: Vec<Endpoint>,
        ipcache: Vec<StaticEntry>,
        host_addresses: Vec<IpAddr>,
        policies: Vec<Policy>,
    ) -> Result<Self, WorldError> {
        let mut names = HashSet::new();
        let mut addrs: HashSet<IpAddr> = HashSet::new();
        let mut netnses = HashSet::new();
        let mut ifnames = HashSet::new();
        for (i, ep) in endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}]");
            if !valid_name(&ep.name) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!(
                        "`{}` is not a valid endpoint name (1-15 characters of a-z, 0-9, '-', '_', \
                         starting with a letter or digit)",
                        ep.name
                    ),
                ));
            }
            if !names.insert(ep.name.as_str()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("duplicate endpoint `{}`", ep.name),
                ));
            }
            check_user_labels(&ep.labels).map_err(|m| invalid(format!("{at}.labels"), m))?;
            if ep.ipv4.is_none() && ep.ipv6.is_none() {
                return Err(invalid(at, "needs ipv4, ipv6 or both"));
            }
            if let Err(why) = rules::netns(&ep.netns) {
                return Err(invalid(
                    format!("{at}.netns"),
                    format!("`{}` {why}", ep.netns),
                ));
            }
            if !netnses.insert(ep.netns.as_str()) {
                return Err(invalid(
                    format!("{at}.netns"),
                    format!("namespace `{}` is used twice", ep.netns),
                ));
            }
            if let Err(why) = rules::ifname(&ep.host_ifname) {
                return Err(invalid(
                    format!("{at}.host_ifname"),
                    format!("`{}` {why}", ep.host_ifname),
                ));
            }
            if ep.host_ifname.starts_with("xpf_") || !ifnames.insert(ep.host_ifname.as_str()) {
                return Err(invalid(
                    format!("{at}.host_ifname"),
                    format!(
                        "interface `{}` is used twice or reserved (xpf_net and xpf_host are xpf's own)",
                        ep.host_ifname
                    ),
                ));
            }
            for a in ep.addresses() {
                let (f, rule) = match a {
                    IpAddr::V4(v4) => ("ipv4", rules::endpoint_ipv4(v4)),
                    IpAddr::V6(v6) => ("ipv6", rules::endpoint_ipv6(v6)),
                };
                if let Err(why) = rule {
                    return Err(invalid(format!("{at}.{f}"), format!("{a} {why}")));
                }
                if !addrs.insert(a) {
                    return Err(invalid(
                        format!("{at}.{f}"),
                        format!("address {a} is used twice"),
                    ));
                }
            }
        }

        for (i, a) in host_addresses.iter().enumerate() {
            if !addrs.insert(*a) {
                return Err(invalid(
                    format!("host_addresses[{i}]"),
                    format!("address {a} is already an endpoint's or listed twice"),
                ));
            }
        }

        let mut prefixes = HashSet::new();
        for (i, e) in ipcache.iter().enumerate() {
            let at = format!("ipcache[{i}]");
            let prefix = e.prefix;
            if prefix != prefix.trunc() {
                return Err(invalid(
                    format!("{at}.prefix"),
                    format!("{prefix} has host bits set (use {})", prefix.trunc()),
                ));
            }
            if !prefixes.insert(prefix) {
                return Err(invalid(
                    format!("{at}.prefix"),
                    format!("duplicate prefix {prefix}"),
                ));
            }
            if let Some(a) = addrs.iter().find(|a| IpNet::from(**a) == prefix) {
                return Err(invalid(
                    format!("{at}.prefix"),
                    format!("{prefix} is exactly a local endpoint's or the host's address {a}"),
                ));
            }
            // Cluster mode adds the other hosts' node addresses as entries
            // labelled exactly `reserved:remote-node`, built by xpf and
            // never parsed: configs and the API go through `user_labels`,
            // which refuses every `reserved:` label before a world is
            // built. Any other reserved or CIDR label is refused here too.
            if e.labels != remote_node_labels() {
                check_user_labels(&e.labels).map_err(|m| invalid(format!("{at}.labels"), m))?;
            }
            if e.labels.is_empty() {
                return Err(invalid(
                    format!("{at}.labels"),
                    "an ipcache entry needs at least one label (unlabelled addresses are world)",
                ));
            }
        }

        check_unique_policies(&policies)?;
        Ok(Self {
            endpoints,
            ipcache,
            host_addresses,
            policies,
        })
    }

    /// The endpoint called `name`, with its index.
    pub fn endpoint(&self, name: &str) -> Option<(usize, &Endpoint)> {
        self.endpoints
            .iter()
            .enumerate()
            .find(|(_, e)| e.name == name)
    }
}

/// `xpf-<name>`, or for names too long for that, `xpf-` and a hash.
pub fn default_ifname(name: &str) -> String {
    let plain = format!("xpf-{name}");
    if plain.len() <= 15 {
        plain
    } else {
        format!("xpf-{:08x}", crc32c::crc32c(name.as_bytes()))
    }
}

/// Labels a user gives an endpoint or entry, from `key: value` pairs: any
/// valid label except those of the `reserved:` and `cidr:` sources, which
/// only xpf assigns.
pub fn user_labels(map: &BTreeMap<String, String>) -> Result<LabelSet, String> {
    let set = LabelSet::from_pairs(map.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| e.to_string())?;
    check_user_labels(&set)?;
    Ok(set)
}

fn check_user_labels(set: &LabelSet) -> Result<(), String> {
    for source in [SOURCE_RESERVED, SOURCE_CIDR] {
        if set.has_source(source) {
            return Err(format!(
                "`{source}:` labels are assigned by xpf, not configured"
            ));
        }
    }
    Ok(())
}

/// What [`World::new`] checks of a world's policies alone: a policy
/// edit that leaves everything else as it was needs only this.
pub fn check_policies(policies: &[Policy]) -> Result<(), PolicyError> {
    check_unique_policies(policies)
}

fn check_unique_policies(policies: &[Policy]) -> Result<(), PolicyError> {
    let mut seen: HashSet<(String, Option<String>, String)> = HashSet::new();
    for p in policies {
        if !seen.insert((p.kind.to_string(), p.namespace.clone(), p.name.clone())) {
            return Err(PolicyError {
                file: p.origin.file.clone(),
                location: None,
                policy: Some(format!("{} `{}`", p.kind, p.display_name())),
                field: "metadata.name".into(),
                message: "defined twice".into(),
            });
        }
    }
    Ok(())
}

/// Endpoint names double as netns and interface-name stems.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        LabelSet::from_pairs(pairs.iter().copied()).unwrap()
    }

    fn ep(name: &str, v4: [u8; 4]) -> Endpoint {
        Endpoint::new(name, labels(&[("app", name)]), Some(v4.into()), None)
    }

    fn field_of(r: Result<World, WorldError>) -> String {
        match r {
            Err(WorldError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_world_builds() {
        let w = World::new(
            vec![ep("a", [198, 18, 0, 2]), ep("b", [198, 18, 0, 3])],
            vec![StaticEntry {
                prefix: "198.19.0.0/16".parse().unwrap(),
                labels: labels(&[("app", "db")]),
            }],
            vec!["198.18.0.1".parse().unwrap()],
            vec![],
        )
        .unwrap();
        assert_eq!(w.endpoint("b").map(|(i, _)| i), Some(1));
        assert!(w.endpoint("c").is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let twice = World::new(
            vec![ep("a", [198, 18, 0, 2]), ep("a", [198, 18, 0, 3])],
            vec![],
            vec![],
            vec![],
        );
        assert_eq!(field_of(twice), "endpoints[1].name");

        let bad_addr = World::new(vec![ep("a", [169, 254, 1, 1])], vec![], vec![], vec![]);
        assert_eq!(field_of(bad_addr), "endpoints[0].ipv4");

        let mut reserved = ep("a", [198, 18, 0, 2]);
        reserved.labels =
            LabelSet::new(vec![crate::labels::Label::new(SOURCE_RESERVED, "host", "")]).unwrap();
        assert_eq!(
            field_of(World::new(vec![reserved], vec![], vec![], vec![])),
            "endpoints[0].labels"
        );

        let host_is_endpoint = World::new(
            vec![ep("a", [198, 18, 0, 2])],
            vec![],
            vec!["198.18.0.2".parse().unwrap()],
            vec![],
        );
        assert_eq!(field_of(host_is_endpoint), "host_addresses[0]");

        let unlabelled = World::new(
            vec![],
            vec![StaticEntry {
                prefix: "198.19.0.0/16".parse().unwrap(),
                labels: LabelSet::default(),
            }],
            vec![],
            vec![],
        );
        assert_eq!(field_of(unlabelled), "ipcache[0].labels");

        let host_bits = World::new(
            vec![],
            vec![StaticEntry {
                prefix: "198.19.0.1/16".parse().unwrap(),
                labels: labels(&[("app", "db")]),
            }],
            vec![],
            vec![],
        );
        assert_eq!(field_of(host_bits), "ipcache[0].prefix");
    }

    #[test]
    fn only_an_entry_may_be_a_remote_node_and_only_xpf_says_so() {
        let node = |labels: LabelSet| StaticEntry {
            prefix: "198.19.0.7/32".parse().unwrap(),
            labels,
        };
        World::new(vec![], vec![node(remote_node_labels())], vec![], vec![])
            .expect("cluster mode's node entries are accepted");

        let mut with_more: Vec<_> = remote_node_labels().iter().cloned().collect();
        with_more.push(crate::labels::Label::new("any", "app", "db"));
        let mixed = World::new(
            vec![],
            vec![node(LabelSet::new(with_more).unwrap())],
            vec![],
            vec![],
        );
        assert_eq!(field_of(mixed), "ipcache[0].labels");

        let mut endpoint = ep("a", [198, 18, 0, 2]);
        endpoint.labels = remote_node_labels();
        assert_eq!(
            field_of(World::new(vec![endpoint], vec![], vec![], vec![])),
            "endpoints[0].labels"
        );

        // Configs and the API say it with a label map, which is refused.
        let written = BTreeMap::from([("reserved:remote-node".to_string(), String::new())]);
        let refused = user_labels(&written).unwrap_err();
        assert!(refused.contains("`reserved:` labels"), "{refused}");
    }
}
