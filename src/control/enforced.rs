//! What `xpf run` enforces comes from three sources: the config file, the
//! runtime entries and endpoints the API added, and in cluster mode the
//! other hosts' addresses from the store. This puts them together into
//! one world, the local ones first: an address of the store that the
//! config or the API already claims, or that is a local endpoint's or the
//! host's, is left out and named (a conflict), never allowed to replace
//! what this host was told.

use std::collections::{BTreeMap, HashSet};

use ipnet::IpNet;

use crate::kvstore::agent::Remotes;
use crate::labels::remote_node_labels;
use crate::labels::{LabelSet, SOURCE_CIDR, SOURCE_RESERVED};
use crate::world::{Endpoint, StaticEntry, World, WorldError};

/// Endpoints and ipcache entries added through the API: they live until
/// removed or until the daemon stops, and survive reloads.
#[derive(Clone, Debug, Default)]
pub(super) struct Runtime {
    pub ipcache: BTreeMap<IpNet, LabelSet>,
    pub endpoints: Vec<Endpoint>,
}

/// The store's addresses a world takes, and those it leaves out.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct RemoteShare {
    pub entries: BTreeMap<IpNet, LabelSet>,
    /// Claimed locally (config, API, endpoint or host address).
    pub conflicts: Vec<IpNet>,
    /// Labelled with what only xpf assigns (`reserved:` other than
    /// remote-node, `cidr:`), or a prefix with host bits set: xpf cannot
    /// say what they are.
    pub refused: Vec<IpNet>,
}

impl RemoteShare {
    /// What of `remotes` goes beside `base` and `runtime`.
    pub fn of(remotes: &Remotes, base: &World, runtime: &Runtime) -> Self {
        let mut local: HashSet<IpNet> = base.ipcache.iter().map(|e| e.prefix).collect();
        local.extend(runtime.ipcache.keys().copied());
        local.extend(
            base.endpoints
                .iter()
                .chain(&runtime.endpoints)
                .flat_map(|e| e.addresses())
                .chain(base.host_addresses.iter().copied())
                .map(IpNet::from),
        );
        let remote_node = remote_node_labels();
        let mut share = Self::default();
        for (prefix, r) in remotes {
            if local.contains(prefix) {
                share.conflicts.push(*prefix);
            } else if *prefix != prefix.trunc()
                || (r.labels != remote_node
                    && (r.labels.has_source(SOURCE_RESERVED) || r.labels.has_source(SOURCE_CIDR)))
            {
                share.refused.push(*prefix);
            } else {
                share.entries.insert(*prefix, r.labels.clone());
            }
        }
        share
    }
}

/// The config's world with the runtime endpoints and ipcache entries and
/// the store's share added, validated as one.
pub(super) fn enforced_world(
    base: &World,
    runtime: &Runtime,
    remote: &RemoteShare,
) -> Result<World, WorldError> {
    let mut ipcache = base.ipcache.clone();
    ipcache.extend(runtime.ipcache.iter().map(|(prefix, labels)| StaticEntry {
        prefix: *prefix,
        labels: labels.clone(),
    }));
    let local = ipcache.len();
    ipcache.extend(remote.entries.iter().map(|(prefix, labels)| StaticEntry {
        prefix: *prefix,
        labels: labels.clone(),
    }));
    let prefixes: Vec<IpNet> = ipcache.iter().map(|e| e.prefix).collect();
    let mut endpoints = base.endpoints.clone();
    endpoints.extend(runtime.endpoints.iter().cloned());
    let names: Vec<String> = endpoints.iter().map(|e| e.name.clone()).collect();
    World::new(
        endpoints,
        ipcache,
        base.host_addresses.clone(),
        base.policies.clone(),
    )
    .map_err(|e| match e {
        // What the API or the store added has no place in the file: name
        // it instead.
        WorldError::Invalid { field, message } => {
            let at = |list: &str| {
                field
                    .strip_prefix(list)
                    .and_then(|r| r.split_once(']'))
                    .and_then(|(i, rest)| Some((i.parse::<usize>().ok()?, rest.to_string())))
            };
            let field = match (at("ipcache["), at("endpoints[")) {
                (Some((i, rest)), _) if i >= local => {
                    format!("kvstore ipcache entry {}{rest}", prefixes[i])
                }
                (Some((i, rest)), _) if i >= base.ipcache.len() => {
                    format!("runtime ipcache entry {}{rest}", prefixes[i])
                }
                (_, Some((i, rest))) if i >= base.endpoints.len() => {
                    format!("runtime endpoint `{}`{rest}", names[i])
                }
                _ => field,
            };
            WorldError::Invalid { field, message }
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvstore::node::Remote;
    use crate::labels::remote_node_labels;

    fn labels(app: &str) -> LabelSet {
        LabelSet::from_pairs([("k8s:app", app)]).unwrap()
    }

    fn remote(labels: LabelSet) -> Remote {
        Remote {
            labels,
            host: Some("198.18.250.2".parse().unwrap()),
            node: Some("b".into()),
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn local_claims_win_and_what_only_xpf_assigns_is_refused() {
        let base = World::new(
            vec![Endpoint::new(
                "web",
                labels("web"),
                Some("198.18.30.2".parse().unwrap()),
                None,
            )],
            vec![StaticEntry {
                prefix: net("198.19.0.0/16"),
                labels: labels("ext"),
            }],
            vec!["198.18.0.1".parse().unwrap()],
            vec![],
        )
        .unwrap();
        let mut runtime = Runtime::default();
        runtime
            .ipcache
            .insert(net("198.18.31.5/32"), labels("runtime"));
        let mut remotes = Remotes::new();
        for (prefix, r) in [
            ("198.18.31.2/32", remote(labels("db"))),
            ("198.18.250.2/32", remote(remote_node_labels())),
            // Claimed locally: config, API, endpoint and host address.
            ("198.19.0.0/16", remote(labels("db"))),
            ("198.18.31.5/32", remote(labels("db"))),
            ("198.18.30.2/32", remote(labels("db"))),
            ("198.18.0.1/32", remote(labels("db"))),
            // Only xpf assigns these.
            (
                "198.18.31.6/32",
                remote(LabelSet::from_pairs([("reserved:host", "")]).unwrap()),
            ),
            (
                "198.18.31.7/32",
                remote(LabelSet::from_pairs([("cidr:10.0.0.0/8", "")]).unwrap()),
            ),
        ] {
            remotes.insert(net(prefix), r);
        }
        // Host bits set: not a prefix xpf can place.
        remotes.insert(
            IpNet::new("198.18.31.9".parse().unwrap(), 24).unwrap(),
            remote(labels("db")),
        );
        let share = RemoteShare::of(&remotes, &base, &runtime);
        assert_eq!(
            share
                .entries
                .keys()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
            ["198.18.31.2/32", "198.18.250.2/32"]
        );
        let mut conflicts = share.conflicts.clone();
        conflicts.sort();
        assert_eq!(
            conflicts,
            [
                net("198.18.0.1/32"),
                net("198.18.30.2/32"),
                net("198.18.31.5/32"),
                net("198.19.0.0/16")
            ]
        );
        assert_eq!(share.refused.len(), 3, "{:?}", share.refused);

        // The three sources make one world, the store's part last.
        let world = enforced_world(&base, &runtime, &share).unwrap();
        let prefixes: Vec<String> = world.ipcache.iter().map(|e| e.prefix.to_string()).collect();
        assert_eq!(
            prefixes,
            [
                "198.19.0.0/16",
                "198.18.31.5/32",
                "198.18.31.2/32",
                "198.18.250.2/32"
            ]
        );
    }
}
