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
use crate::kvstore::node::Remote;
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

/// Where one address of the store goes.
#[derive(Clone, Debug, PartialEq)]
enum Place {
    Entry(LabelSet),
    Conflict,
    Refused,
}

/// The addresses of the store whose place in a share changes, and where
/// they go (`None`: out of the store). See [`RemoteShare::change`].
#[derive(Debug, Default)]
pub(super) struct ShareChange {
    places: Vec<(IpNet, Option<Place>)>,
}

impl ShareChange {
    /// The entries `share` has that the change takes away.
    pub fn removed(&self, share: &RemoteShare) -> Vec<IpNet> {
        self.places
            .iter()
            .filter(|(p, place)| {
                share.entries.contains_key(p) && !matches!(place, Some(Place::Entry(_)))
            })
            .map(|(p, _)| *p)
            .collect()
    }

    /// The entries the change adds to `share`, or labels otherwise.
    pub fn upserts(&self, share: &RemoteShare) -> Vec<StaticEntry> {
        self.places
            .iter()
            .filter_map(|(prefix, place)| match place {
                Some(Place::Entry(labels)) if share.entries.get(prefix) != Some(labels) => {
                    Some(StaticEntry {
                        prefix: *prefix,
                        labels: labels.clone(),
                    })
                }
                _ => None,
            })
            .collect()
    }
}

/// The addresses a share leaves to the config, the API and the host.
struct Local {
    prefixes: HashSet<IpNet>,
    remote_node: LabelSet,
}

impl Local {
    fn of(base: &World, runtime: &Runtime) -> Self {
        let mut prefixes: HashSet<IpNet> = base.ipcache.iter().map(|e| e.prefix).collect();
        prefixes.extend(runtime.ipcache.keys().copied());
        prefixes.extend(
            base.endpoints
                .iter()
                .chain(&runtime.endpoints)
                .flat_map(|e| e.addresses())
                .chain(base.host_addresses.iter().copied())
                .map(IpNet::from),
        );
        Self {
            prefixes,
            remote_node: remote_node_labels(),
        }
    }

    fn place(&self, prefix: &IpNet, r: &Remote) -> Place {
        if self.prefixes.contains(prefix) {
            Place::Conflict
        } else if *prefix != prefix.trunc()
            || (*r.labels != self.remote_node
                && (r.labels.has_source(SOURCE_RESERVED) || r.labels.has_source(SOURCE_CIDR)))
        {
            Place::Refused
        } else {
            Place::Entry(LabelSet::clone(&r.labels))
        }
    }
}

impl RemoteShare {
    /// What of `remotes` goes beside `base` and `runtime`.
    pub fn of(remotes: &Remotes, base: &World, runtime: &Runtime) -> Self {
        let local = Local::of(base, runtime);
        let mut share = Self::default();
        for (prefix, r) in remotes {
            share.put(*prefix, local.place(prefix, r));
        }
        share
    }

    /// What takes this share, made of `old`, to the share of `new`
    /// beside the same `base` and `runtime`: only the addresses whose
    /// labels differ between the two are placed again, so a store event
    /// costs one pass over both maps, not a copy of every label set.
    pub fn change(
        &self,
        old: &Remotes,
        new: &Remotes,
        base: &World,
        runtime: &Runtime,
    ) -> ShareChange {
        let differ = differing(old, new);
        if differ.is_empty() {
            return ShareChange::default();
        }
        let local = Local::of(base, runtime);
        let places = differ
            .into_iter()
            .map(|p| (p, new.get(&p).map(|r| local.place(&p, r))))
            .collect();
        ShareChange { places }
    }

    /// Makes `change` (from [`RemoteShare::change`] on this share).
    pub fn apply(&mut self, change: ShareChange) {
        for (prefix, place) in change.places {
            self.entries.remove(&prefix);
            for list in [&mut self.conflicts, &mut self.refused] {
                if let Ok(i) = list.binary_search(&prefix) {
                    list.remove(i);
                }
            }
            if let Some(place) = place {
                self.put(prefix, place);
            }
        }
    }

    /// Puts `prefix` where `place` says (the lists stay sorted).
    fn put(&mut self, prefix: IpNet, place: Place) {
        let list = match place {
            Place::Entry(labels) => {
                self.entries.insert(prefix, labels);
                return;
            }
            Place::Conflict => &mut self.conflicts,
            Place::Refused => &mut self.refused,
        };
        if let Err(i) = list.binary_search(&prefix) {
            list.insert(i, prefix);
        }
    }
}

/// The prefixes that are in only one of `old` and `new`, or in both with
/// other labels, in one merged pass over both.
fn differing(old: &Remotes, new: &Remotes) -> Vec<IpNet> {
    use std::cmp::Ordering;
    if std::ptr::eq(old, new) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((pa, _)), Some((pb, _))) => pa.cmp(pb),
        };
        match order {
            Ordering::Less => out.extend(a.next().map(|(p, _)| *p)),
            Ordering::Greater => out.extend(b.next().map(|(p, _)| *p)),
            Ordering::Equal => {
                let ((p, ra), (_, rb)) = (a.next().expect("peeked"), b.next().expect("peeked"));
                if ra.labels != rb.labels {
                    out.push(*p);
                }
            }
        }
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

    fn app(name: &str) -> LabelSet {
        labels(name)
    }

    fn remote(labels: LabelSet) -> Remote {
        Remote {
            labels: std::sync::Arc::new(labels),
            host: None,
            node: None,
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

    #[test]
    fn a_share_changed_in_place_is_the_share_made_afresh() {
        let base = World::new(
            vec![Endpoint::app_at("web", 2)],
            vec![StaticEntry {
                prefix: net("198.19.9.0/24"),
                labels: app("backup"),
            }],
            vec!["198.18.0.1".parse().unwrap()],
            Vec::new(),
        )
        .unwrap();
        let runtime = Runtime::default();
        let cidr = LabelSet::from_pairs([("cidr:198.19.7.0/24", "")]).unwrap();
        let old: Remotes = [
            ("198.19.1.1/32", remote(app("db"))),
            ("198.19.1.2/32", remote(app("db"))),
            ("198.19.1.3/32", remote(app("cache"))),
            // Claimed by the config, then by the host, then refused.
            ("198.19.9.0/24", remote(app("db"))),
            ("198.19.5.0/24", remote(app("db"))),
            ("198.19.7.0/24", remote(cidr.clone())),
            ("198.18.2.1/32", remote(remote_node_labels())),
        ]
        .into_iter()
        .map(|(p, r)| (net(p), r))
        .collect();
        let mut new = old.clone();
        new.remove(&net("198.19.1.1/32"));
        new.insert(net("198.19.1.3/32"), remote(app("db")));
        new.insert(net("198.19.1.4/32"), remote(app("web")));
        new.insert(net("198.18.0.1/32"), remote(app("db")));
        new.insert(net("198.19.6.1/24"), remote(app("db")));
        new.remove(&net("198.19.7.0/24"));
        new.insert(net("198.19.8.0/24"), remote(cidr));

        let mut share = RemoteShare::of(&old, &base, &runtime);
        let change = share.change(&old, &new, &base, &runtime);
        let mut removed = change.removed(&share);
        removed.sort();
        assert_eq!(removed, vec![net("198.19.1.1/32")]);
        let upserts: Vec<IpNet> = change.upserts(&share).iter().map(|e| e.prefix).collect();
        assert_eq!(upserts, vec![net("198.19.1.3/32"), net("198.19.1.4/32")]);
        share.apply(change);
        assert_eq!(share, RemoteShare::of(&new, &base, &runtime));
        assert_eq!(
            share.conflicts,
            vec![net("198.18.0.1/32"), net("198.19.9.0/24")]
        );

        // Nothing differs: nothing to do.
        let same = share.change(&new, &new.clone(), &base, &runtime);
        assert!(same.places.is_empty());
    }
}
