//! The reference egress evaluator: a deliberately naive reading of the
//! policy model that walks every rule for every query.
//!
//! It exists to check the compiled path ([`super::compile`], the inventory
//! and the ipcache) and therefore shares nothing with it: no identities, no
//! ipcache, no selector cache, and not even the matching helpers on the label
//! and model types (`Selector::matches`, `LabelSet::get`,
//! `CidrSelector::selects_prefix`). Each rule of the semantics in
//! [`super::model`] and [`crate::labels`] is written out again here, as
//! directly as it reads, so a mistake in one place cannot hide in both
//! engines. Speed is not a goal: a query allocates and scans everything.

use std::net::IpAddr;

use ipnet::IpNet;

use super::model::{Entity, IcmpFamily, Peer, Rule, RuleRef, L4};
use super::{Cause, Decision};
use crate::labels::{Label, LabelKey, Operator, Requirement, Selector};
use crate::world::{Endpoint, World};

/// What a destination address turns out to be.
enum Destination {
    /// A local endpoint or a labelled static ipcache entry, with its labels.
    Labelled(Vec<Label>),
    /// One of the host's own addresses.
    Host,
    /// Another host's node address: a static ipcache entry whose labels are
    /// `reserved:remote-node` and nothing else.
    RemoteNode,
    /// An address no endpoint, entry or host address claims.
    World(IpAddr),
}

/// The egress decision for `src` sending to `dst` with IP protocol
/// `ip_proto` and `port` (destination port, or ICMP type for ICMP).
pub fn decide(world: &World, src: &Endpoint, dst: IpAddr, ip_proto: u8, port: u16) -> Decision {
    let src_labels: Vec<Label> = src.labels.iter().cloned().collect();
    let destination = classify(world, dst);

    let applying: Vec<usize> = world
        .policies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.egress.has_section && selector_matches(&p.subject, &src_labels))
        .map(|(i, _)| i)
        .collect();

    let first_match = |deny: bool| {
        applying.iter().find_map(|&pi| {
            let egress = &world.policies[pi].egress;
            let rules = if deny { &egress.deny } else { &egress.allow };
            rules
                .iter()
                .position(|r| rule_matches(r, &destination, ip_proto, port))
                .map(|ri| RuleRef {
                    policy: pi as u32,
                    deny,
                    rule: ri as u32,
                })
        })
    };

    let cause = if let Some(r) = first_match(true) {
        Cause::Deny(r)
    } else if let Some(r) = first_match(false) {
        Cause::Allow(r)
    } else if applying
        .iter()
        .any(|&pi| world.policies[pi].egress.enables_default_deny())
    {
        Cause::DefaultDeny
    } else if !applying.is_empty() {
        Cause::DefaultAllow
    } else {
        Cause::NoPolicy
    };
    Decision::from_cause(cause)
}

/// Longest prefix among everything that carries labels: endpoint and host
/// addresses count as full-length prefixes, so an exact address always wins
/// over a static entry around it. Policy CIDRs play no part: they only ever
/// describe world addresses.
fn classify(world: &World, dst: IpAddr) -> Destination {
    let mut best: Option<(u8, Destination)> = None;
    let mut consider = |prefix: IpNet, what: &dyn Fn() -> Destination| {
        if prefix.contains(&dst)
            && best
                .as_ref()
                .is_none_or(|(len, _)| prefix.prefix_len() > *len)
        {
            best = Some((prefix.prefix_len(), what()));
        }
    };
    for ep in &world.endpoints {
        for a in ep.addresses() {
            consider(IpNet::from(a), &|| {
                Destination::Labelled(ep.labels.iter().cloned().collect())
            });
        }
    }
    for e in &world.ipcache {
        consider(e.prefix, &|| {
            let labels: Vec<Label> = e.labels.iter().cloned().collect();
            if labels == [reserved("remote-node")] {
                Destination::RemoteNode
            } else {
                Destination::Labelled(labels)
            }
        });
    }
    for a in &world.host_addresses {
        consider(IpNet::from(*a), &|| Destination::Host);
    }
    best.map_or(Destination::World(dst), |(_, d)| d)
}

fn rule_matches(rule: &Rule, destination: &Destination, ip_proto: u8, port: u16) -> bool {
    let peer_ok = rule.peers.is_empty() || rule.peers.iter().any(|p| peer_matches(p, destination));
    peer_ok && l4_matches(&rule.l4, ip_proto, port)
}

fn peer_matches(peer: &Peer, destination: &Destination) -> bool {
    match peer {
        Peer::Selector(sel) => match destination {
            Destination::Labelled(labels) => selector_matches(sel, labels),
            // The host, remote nodes and the world are only reachable by a
            // selector that names a reserved label, so `{}` never opens them.
            Destination::Host => names_reserved(sel) && selector_matches(sel, &[reserved("host")]),
            Destination::RemoteNode => {
                names_reserved(sel) && selector_matches(sel, &[reserved("remote-node")])
            }
            Destination::World(_) => {
                names_reserved(sel) && selector_matches(sel, &[reserved("world")])
            }
        },
        Peer::Cidr(c) => match destination {
            Destination::World(addr) => {
                c.cidr.contains(addr) && c.except.iter().all(|e| !e.contains(addr))
            }
            _ => false,
        },
        Peer::Entity(Entity::All) => true,
        Peer::Entity(Entity::World) => matches!(destination, Destination::World(_)),
        Peer::Entity(Entity::Host) => matches!(destination, Destination::Host),
        Peer::Entity(Entity::RemoteNode) => matches!(destination, Destination::RemoteNode),
        // Everything but the world: endpoints, labelled entries, the host
        // and the remote nodes.
        Peer::Entity(Entity::Cluster) => !matches!(destination, Destination::World(_)),
    }
}

fn l4_matches(l4: &L4, ip_proto: u8, port: u16) -> bool {
    match l4 {
        L4::Any => true,
        L4::Ports(ranges) => ranges.iter().any(|r| {
            r.protocols.iter().any(|p| p.number() == ip_proto) && r.first <= port && port <= r.last
        }),
        L4::Icmp(types) => types.iter().any(|(family, t)| {
            let family_proto = match family {
                IcmpFamily::V4 => 1,
                IcmpFamily::V6 => 58,
            };
            ip_proto == family_proto && port == u16::from(*t)
        }),
    }
}

fn reserved(name: &str) -> Label {
    Label::new("reserved", name, "")
}

fn names_reserved(sel: &Selector) -> bool {
    sel.requirements.iter().any(|r| r.key.source == "reserved")
}

/// Every requirement holds; no requirements hold for any label set.
fn selector_matches(sel: &Selector, labels: &[Label]) -> bool {
    sel.requirements
        .iter()
        .all(|r| requirement_holds(r, labels))
}

/// Kubernetes semantics: `NotIn` and `DoesNotExist` hold when the key is
/// absent. The value is that of the first label (in set order) the key names.
fn requirement_holds(req: &Requirement, labels: &[Label]) -> bool {
    let value = labels
        .iter()
        .find(|l| key_names(&req.key, &l.key))
        .map(|l| l.value.as_str());
    let listed = |v: &str| req.values.iter().any(|w| w == v);
    match (req.operator, value) {
        (Operator::In, Some(v)) => listed(v),
        (Operator::In, None) => false,
        (Operator::NotIn, Some(v)) => !listed(v),
        (Operator::NotIn, None) => true,
        (Operator::Exists, v) => v.is_some(),
        (Operator::DoesNotExist, v) => v.is_none(),
    }
}

/// A selector key names a label when the keys are equal and the sources
/// agree: equal, or either one is `any`.
fn key_names(selector_key: &LabelKey, label_key: &LabelKey) -> bool {
    selector_key.key == label_key.key
        && (selector_key.source == label_key.source
            || selector_key.source == "any"
            || label_key.source == "any")
}
