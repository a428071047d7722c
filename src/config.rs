//! `xpf.yaml`: the one config file every command reads (YAML; JSON works
//! too). It names the local endpoints, static ipcache entries, the host's own
//! addresses and the policy files. [`Config::load`] validates all of it,
//! policies included, before anything uses it: a config loads whole or not
//! at all.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::datapath::settings::{self, DatapathConfig, RawDatapath};
use crate::labels::{LabelSet, SOURCE_CIDR, SOURCE_RESERVED};
use crate::policy::model::Policy;
use crate::policy::parse::{load_policy_paths, PolicyError};
use crate::rules;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    ipcache: Vec<RawIpcacheEntry>,
    #[serde(default)]
    host_addresses: Vec<IpAddr>,
    #[serde(default)]
    policies: Vec<PathBuf>,
    #[serde(default)]
    datapath: Option<RawDatapath>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    ipv4: Option<Ipv4Addr>,
    #[serde(default)]
    ipv6: Option<Ipv6Addr>,
    #[serde(default)]
    netns: Option<String>,
    #[serde(default)]
    host_ifname: Option<String>,
    #[serde(default)]
    attach: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpcacheEntry {
    prefix: String,
    labels: BTreeMap<String, String>,
}

/// A local endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointConfig {
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

impl EndpointConfig {
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

/// A loaded, validated config.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub endpoints: Vec<EndpointConfig>,
    pub ipcache: Vec<StaticEntry>,
    pub host_addresses: Vec<IpAddr>,
    pub policies: Vec<Policy>,
    pub datapath: DatapathConfig,
}

/// Why a config did not load.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}{}: {message}", path.display(), location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Syntax {
        path: PathBuf,
        location: Option<(usize, usize)>,
        message: String,
    },
    #[error("{}: field `{field}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{0}")]
    Policy(#[from] PolicyError),
}

impl Config {
    /// Reads and validates `path` and every policy file it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text` as the config at `path` (policy paths are relative
    /// to its directory).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            location: e.location().map(|l| (l.line(), l.column())),
            message: crate::policy::parse::strip_yaml_location(&e.to_string()),
        })?;
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };

        let mut names = HashSet::new();
        let mut addrs: HashSet<IpAddr> = HashSet::new();
        let mut netnses = HashSet::new();
        let mut ifnames = HashSet::new();
        let mut endpoints = Vec::new();
        for (i, ep) in raw.endpoints.into_iter().enumerate() {
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
            if !names.insert(ep.name.clone()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("duplicate endpoint `{}`", ep.name),
                ));
            }
            let labels = user_labels(&ep.labels).map_err(|m| invalid(format!("{at}.labels"), m))?;
            if ep.ipv4.is_none() && ep.ipv6.is_none() {
                return Err(invalid(at, "needs ipv4, ipv6 or both".into()));
            }
            let netns = ep.netns.unwrap_or_else(|| ep.name.clone());
            if let Err(why) = rules::netns(&netns) {
                return Err(invalid(format!("{at}.netns"), format!("`{netns}` {why}")));
            }
            if !netnses.insert(netns.clone()) {
                return Err(invalid(
                    format!("{at}.netns"),
                    format!("namespace `{netns}` is used twice"),
                ));
            }
            let host_ifname = ep.host_ifname.unwrap_or_else(|| default_ifname(&ep.name));
            if let Err(why) = rules::ifname(&host_ifname) {
                return Err(invalid(
                    format!("{at}.host_ifname"),
                    format!("`{host_ifname}` {why}"),
                ));
            }
            if host_ifname.starts_with("xpf_") || !ifnames.insert(host_ifname.clone()) {
                return Err(invalid(
                    format!("{at}.host_ifname"),
                    format!("interface `{host_ifname}` is used twice or reserved (xpf_net and xpf_host are xpf's own)"),
                ));
            }
            let existing = match ep.attach.as_deref() {
                None | Some("create") => false,
                Some("existing") => true,
                Some(other) => {
                    return Err(invalid(
                        format!("{at}.attach"),
                        format!("`{other}` is not one of: create, existing"),
                    ))
                }
            };
            let cfg = EndpointConfig {
                name: ep.name,
                labels,
                ipv4: ep.ipv4,
                ipv6: ep.ipv6,
                netns,
                host_ifname,
                existing,
            };
            for a in cfg.addresses() {
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
            endpoints.push(cfg);
        }

        for (i, a) in raw.host_addresses.iter().enumerate() {
            if !addrs.insert(*a) {
                return Err(invalid(
                    format!("host_addresses[{i}]"),
                    format!("address {a} is already an endpoint's or listed twice"),
                ));
            }
        }

        let mut prefixes = HashSet::new();
        let mut ipcache = Vec::new();
        for (i, e) in raw.ipcache.into_iter().enumerate() {
            let at = format!("ipcache[{i}]");
            let prefix = parse_prefix(&e.prefix).ok_or_else(|| {
                invalid(
                    format!("{at}.prefix"),
                    format!("invalid CIDR `{}`", e.prefix),
                )
            })?;
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
            let labels = user_labels(&e.labels).map_err(|m| invalid(format!("{at}.labels"), m))?;
            if labels.is_empty() {
                return Err(invalid(
                    format!("{at}.labels"),
                    "an ipcache entry needs at least one label (unlabelled addresses are world)"
                        .into(),
                ));
            }
            ipcache.push(StaticEntry { prefix, labels });
        }

        let base = path.parent().unwrap_or(Path::new("."));
        let policy_paths: Vec<PathBuf> = raw.policies.iter().map(|p| base.join(p)).collect();
        for (i, p) in policy_paths.iter().enumerate() {
            if !p.exists() {
                return Err(invalid(
                    format!("policies[{i}]"),
                    format!("{} does not exist", p.display()),
                ));
            }
        }
        let datapath = settings::parse(raw.datapath.unwrap_or_default())
            .map_err(|(f, m)| invalid(format!("datapath.{f}"), m))?;
        let policies = load_policy_paths(&policy_paths)?;
        check_unique_policies(&policies)?;

        Ok(Config {
            path: path.to_path_buf(),
            endpoints,
            ipcache,
            host_addresses: raw.host_addresses,
            policies,
            datapath,
        })
    }
}

/// `xpf-<name>`, or for names too long for that, `xpf-` and a hash.
fn default_ifname(name: &str) -> String {
    let plain = format!("xpf-{name}");
    if plain.len() <= 15 {
        plain
    } else {
        format!("xpf-{:08x}", crc32c::crc32c(name.as_bytes()))
    }
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

fn parse_prefix(s: &str) -> Option<IpNet> {
    s.trim()
        .parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.trim().parse::<IpAddr>().map(IpNet::from))
        .ok()
}

/// Labels a user may give an endpoint: no `reserved:` or `cidr:` source,
/// which only xpf assigns.
fn user_labels(map: &BTreeMap<String, String>) -> Result<LabelSet, String> {
    let set = LabelSet::from_pairs(map.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| e.to_string())?;
    for source in [SOURCE_RESERVED, SOURCE_CIDR] {
        if set.has_source(source) {
            return Err(format!(
                "`{source}:` labels are assigned by xpf, not configured"
            ));
        }
    }
    Ok(set)
}
