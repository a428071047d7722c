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

use crate::labels::{LabelSet, SOURCE_CIDR, SOURCE_RESERVED};
use crate::policy::model::Policy;
use crate::policy::parse::{load_policy_paths, PolicyError};

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
}

impl EndpointConfig {
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
            message: strip_location(e.to_string()),
        })?;
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };

        let mut names = HashSet::new();
        let mut addrs: HashSet<IpAddr> = HashSet::new();
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
            let cfg = EndpointConfig {
                name: ep.name,
                labels,
                ipv4: ep.ipv4,
                ipv6: ep.ipv6,
            };
            for a in cfg.addresses() {
                let f = if a.is_ipv4() { "ipv4" } else { "ipv6" };
                if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                    return Err(invalid(
                        format!("{at}.{f}"),
                        format!("{a} cannot be an endpoint address"),
                    ));
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
        let policies = load_policy_paths(&policy_paths)?;
        check_unique_policies(&policies)?;

        Ok(Config {
            path: path.to_path_buf(),
            endpoints,
            ipcache,
            host_addresses: raw.host_addresses,
            policies,
        })
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

fn strip_location(mut s: String) -> String {
    if let Some(pos) = s.rfind(" at line ") {
        s.truncate(pos);
    }
    s
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
