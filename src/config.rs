//! `xpf.yaml`: the one config file every command reads (YAML; JSON works
//! too). It names the local endpoints, static ipcache entries, the host's own
//! addresses and the policy files. [`Config::load`] turns it into a
//! [`World`] (validated by [`World::new`], like a world from any other
//! source) plus the datapath settings: a config loads whole or not at all.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::datapath::settings::{self, DatapathConfig, RawDatapath};
use crate::kvstore::settings::{KvstoreSettings, RawKvstore};
use crate::policy::model::Policy;
use crate::policy::parse::{hash_of, PolicyError, PolicyFiles};
use crate::world::{self, Endpoint, StaticEntry, World, WorldError};

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
    #[serde(default)]
    kvstore: Option<RawKvstore>,
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

/// A loaded, validated config: the world it describes and how to run the
/// datapath that enforces it.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub world: World,
    pub datapath: DatapathConfig,
    /// The `kvstore:` section: cluster mode when present.
    pub kvstore: Option<KvstoreSettings>,
    /// The policy files and folders it names, resolved.
    pub policy_paths: Vec<PathBuf>,
    /// A hash of the file's text, to tell a reload what changed.
    text_hash: u64,
    /// The file as it was when read, if it had settled by then: a reload
    /// that finds it so does not read it again.
    stamp: Option<Stamp>,
    /// The policy files as last read, so a reload parses only the changed
    /// ones.
    policy_files: PolicyFiles,
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
        let stamp = Stamp::settled(path);
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        config.stamp = stamp;
        Ok(config)
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

        let mut endpoints = Vec::new();
        for (i, ep) in raw.endpoints.into_iter().enumerate() {
            let at = format!("endpoints[{i}]");
            let labels =
                world::user_labels(&ep.labels).map_err(|m| invalid(format!("{at}.labels"), m))?;
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
            endpoints.push(Endpoint {
                netns: ep.netns.unwrap_or_else(|| ep.name.clone()),
                host_ifname: ep
                    .host_ifname
                    .unwrap_or_else(|| world::default_ifname(&ep.name)),
                name: ep.name,
                labels,
                ipv4: ep.ipv4,
                ipv6: ep.ipv6,
                existing,
            });
        }

        let mut ipcache = Vec::new();
        for (i, e) in raw.ipcache.into_iter().enumerate() {
            let at = format!("ipcache[{i}]");
            let prefix = parse_prefix(&e.prefix).ok_or_else(|| {
                invalid(
                    format!("{at}.prefix"),
                    format!("invalid CIDR `{}`", e.prefix),
                )
            })?;
            let labels =
                world::user_labels(&e.labels).map_err(|m| invalid(format!("{at}.labels"), m))?;
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
        let kvstore = raw
            .kvstore
            .map(KvstoreSettings::parse)
            .transpose()
            .map_err(|(f, m)| invalid(format!("kvstore.{f}"), m))?;
        let policy_files = PolicyFiles::load(&policy_paths, &PolicyFiles::default())?;
        let policies = policy_files.policies();
        let world =
            World::new(endpoints, ipcache, raw.host_addresses, policies).map_err(|e| match e {
                WorldError::Invalid { field, message } => invalid(field, message),
                WorldError::Policy(e) => ConfigError::Policy(e),
            })?;

        Ok(Config {
            path: path.to_path_buf(),
            world,
            datapath,
            kvstore,
            policy_paths,
            text_hash: hash_of(text),
            stamp: None,
            policy_files,
        })
    }

    /// The config as it is on disk now. When the file's text is what it
    /// was, only the policy files are read again and checked, and the
    /// answer is [`Reloaded::Policies`]: a config with a large ipcache is
    /// neither parsed nor copied again for a policy edit. Otherwise the
    /// file is parsed and validated whole.
    pub fn reload(&self) -> Result<Reloaded, ConfigError> {
        let stamp = Stamp::settled(&self.path);
        if stamp.is_none() || stamp != self.stamp {
            let text = std::fs::read_to_string(&self.path).map_err(|source| ConfigError::Read {
                path: self.path.clone(),
                source,
            })?;
            if hash_of(&text) != self.text_hash {
                let mut config = Self::parse(&text, &self.path)?;
                config.stamp = stamp;
                return Ok(Reloaded::Whole(Box::new(config)));
            }
        }
        let files = PolicyFiles::load(&self.policy_paths, &self.policy_files)?;
        let policies = files.policies();
        world::check_policies(&policies)?;
        Ok(Reloaded::Policies(PolicyEdit { files, stamp }, policies))
    }

    /// This config with the policies of a [`Reloaded::Policies`] in place
    /// of its own (and the file's stamp as that reload found it, so a
    /// file touched without a change is not read again next time).
    pub fn set_policies(&mut self, edit: PolicyEdit, policies: Vec<Policy>) {
        self.policy_files = edit.files;
        self.stamp = edit.stamp;
        self.world.policies = policies;
    }
}

/// What a policy-only reload read besides the policies.
#[derive(Debug)]
pub struct PolicyEdit {
    files: PolicyFiles,
    stamp: Option<Stamp>,
}

/// What identifies a file's contents without reading it: device, inode,
/// size, and the modification and change times. Taken only when the
/// change time is over a second old, so a write in the same clock tick as
/// the read cannot hide behind an equal stamp (git's "racy clean" rule);
/// the change time moves with every write and every `touch`, whatever
/// modification time is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn settled(path: &Path) -> Option<Self> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        Self::settled_at(path, i64::try_from(now).ok()?)
    }

    /// The stamp of `path` if its change time is over a second before
    /// `now` (seconds since the epoch).
    fn settled_at(path: &Path, now: i64) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        let settled = m.ctime() < now - 1;
        settled.then(|| Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// What [`Config::reload`] found.
#[derive(Debug)]
pub enum Reloaded {
    /// The config file is as it was; these are its policy files now, and
    /// the policies they hold.
    Policies(PolicyEdit, Vec<Policy>),
    /// The config file changed: all of it, validated.
    Whole(Box<Config>),
}

fn parse_prefix(s: &str) -> Option<IpNet> {
    s.trim()
        .parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.trim().parse::<IpAddr>().map(IpNet::from))
        .ok()
}

#[cfg(test)]
mod reload_tests {
    use super::*;

    const POLICY: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  egress: [{}]\n";

    #[test]
    fn a_reload_reads_what_changed_and_validates_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xpf.yaml");
        std::fs::write(
            &path,
            "endpoints: [{name: a, labels: {app: a}, ipv4: 198.18.0.2}]\npolicies: [p.yaml]\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("p.yaml"), POLICY).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.world.policies.len(), 1);

        // Same config text, one more policy: only the policies are read.
        let two = format!("{POLICY}---\n{}", POLICY.replace("name: a}", "name: b}"));
        std::fs::write(dir.path().join("p.yaml"), &two).unwrap();
        let Reloaded::Policies(files, policies) = c.reload().unwrap() else {
            panic!("the config text did not change");
        };
        assert_eq!(policies.len(), 2);
        let mut c2 = c.clone();
        c2.set_policies(files, policies);

        // Twice the same name: refused, naming the field.
        std::fs::write(dir.path().join("p.yaml"), format!("{POLICY}---\n{POLICY}")).unwrap();
        let e = c2.reload().unwrap_err().to_string();
        assert!(
            e.contains("metadata.name") && e.contains("defined twice"),
            "{e}"
        );

        // A broken policy: refused, naming the file.
        std::fs::write(dir.path().join("p.yaml"), "kind: [").unwrap();
        let e = c2.reload().unwrap_err().to_string();
        assert!(e.contains("p.yaml"), "{e}");

        // The config itself changed: parsed again.
        std::fs::write(dir.path().join("p.yaml"), POLICY).unwrap();
        std::fs::write(
            &path,
            "endpoints: [{name: a, labels: {app: z}, ipv4: 198.18.0.2}]\npolicies: [p.yaml]\n",
        )
        .unwrap();
        let Reloaded::Whole(c3) = c2.reload().unwrap() else {
            panic!("the config text changed");
        };
        assert_eq!(
            c3.world.endpoints[0].labels.iter().next().unwrap().value,
            "z"
        );
    }

    #[test]
    fn a_stamp_is_taken_only_of_a_settled_file_and_moves_with_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xpf.yaml");
        std::fs::write(&path, "endpoints: []\n").unwrap();
        // Just written: not to be trusted yet.
        assert_eq!(Stamp::settled(&path), None);
        let later = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + 60;
        let stamp = Stamp::settled_at(&path, later).expect("settled a minute on");
        assert_eq!(Stamp::settled_at(&path, later), Some(stamp));
        // The same length written again through another file: another
        // inode, so another stamp whatever the clock says.
        let tmp = dir.path().join("new.yaml");
        std::fs::write(&tmp, "endpoints: {}\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_ne!(Stamp::settled_at(&path, later), Some(stamp));
    }
}
