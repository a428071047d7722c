//! Cilium rules (CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy) to
//! the model: `spec`/`specs` into one policy each, the namespace scoping of
//! subjects and peers, the L3 peers of a rule (endpoints, CIDRs, CIDR sets,
//! entities) and its L4 part (`toPorts` or `icmps`, never both). A rule with
//! neither peers nor ports selects nothing and only turns default deny on.

use super::cidr::{cidr_selector, parse_cidr};
use super::l4::{icmp_field, port_range};
use super::selector::{namespace_requirement, selector};
use super::{field_err, FieldResult};
use crate::labels::Selector;
use crate::policy::model::{
    CidrSelector, Direction, Entity, Origin, Peer, Policy, PolicyKind, Rule, L4,
};
use crate::policy::raw;

pub(super) fn convert_cilium(
    doc: raw::CiliumDoc,
    kind: PolicyKind,
    origin: &Origin,
) -> FieldResult<Vec<Policy>> {
    let name = doc.metadata.name;
    let namespace = doc.metadata.namespace.filter(|ns| !ns.is_empty());
    if kind == PolicyKind::CiliumClusterwideNetworkPolicy && namespace.is_some() {
        return field_err(
            "metadata.namespace",
            "a CiliumClusterwideNetworkPolicy has no namespace",
        );
    }
    let mut specs: Vec<(String, raw::CiliumRule)> = Vec::new();
    if let Some(spec) = doc.spec {
        specs.push(("spec".into(), spec));
    }
    for (i, spec) in doc.specs.into_iter().flatten().enumerate() {
        specs.push((format!("specs[{i}]"), spec));
    }
    if specs.is_empty() {
        return field_err("spec", "neither `spec` nor `specs` is given");
    }
    let many = specs.len() > 1;
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (path, spec))| {
            let name = if many {
                format!("{name}#{i}")
            } else {
                name.clone()
            };
            convert_cilium_rule(spec, &path, kind, name, namespace.clone(), origin)
        })
        .collect()
}

fn convert_cilium_rule(
    spec: raw::CiliumRule,
    path: &str,
    kind: PolicyKind,
    name: String,
    namespace: Option<String>,
    origin: &Origin,
) -> FieldResult<Policy> {
    let Some(sel) = spec.endpoint_selector else {
        return field_err(
            format!("{path}.endpointSelector"),
            "missing (use `{}` to select every endpoint)",
        );
    };
    let mut subject = selector(&sel, &format!("{path}.endpointSelector"))?;
    if let Some(ns) = &namespace {
        subject = subject.and(namespace_requirement(ns));
    }
    let scope = |s: Selector| match &namespace {
        Some(ns) if !s.names_namespace() => s.and(namespace_requirement(ns)),
        _ => s,
    };
    let default_deny = spec.enable_default_deny.as_ref();

    let mut egress = Direction {
        has_section: false,
        default_deny: default_deny.and_then(|d| d.egress).unwrap_or(true),
        ..Default::default()
    };
    for (rules, deny, field) in [
        (spec.egress, false, "egress"),
        (spec.egress_deny, true, "egressDeny"),
    ] {
        let Some(rules) = rules else { continue };
        egress.has_section |= !rules.is_empty();
        for (i, r) in rules.into_iter().enumerate() {
            let at = format!("{path}.{field}[{i}]");
            let peers = cilium_peers(
                r.to_endpoints,
                r.to_cidr,
                r.to_cidr_set,
                r.to_entities,
                &scope,
                &at,
                "to",
            )?;
            push_cilium_rule(&mut egress, deny, i, peers, r.to_ports, r.icmps, &at)?;
        }
    }

    let mut ingress = Direction {
        has_section: false,
        default_deny: default_deny.and_then(|d| d.ingress).unwrap_or(true),
        ..Default::default()
    };
    for (rules, deny, field) in [
        (spec.ingress, false, "ingress"),
        (spec.ingress_deny, true, "ingressDeny"),
    ] {
        let Some(rules) = rules else { continue };
        ingress.has_section |= !rules.is_empty();
        for (i, r) in rules.into_iter().enumerate() {
            let at = format!("{path}.{field}[{i}]");
            let peers = cilium_peers(
                r.from_endpoints,
                r.from_cidr,
                r.from_cidr_set,
                r.from_entities,
                &scope,
                &at,
                "from",
            )?;
            push_cilium_rule(&mut ingress, deny, i, peers, r.to_ports, r.icmps, &at)?;
        }
    }

    Ok(Policy {
        kind,
        name,
        namespace,
        origin: origin.clone(),
        subject,
        egress: egress.into(),
        ingress: ingress.into(),
    })
}

/// The peers of a Cilium rule; `None` when the rule names no L3 peer at all.
fn cilium_peers(
    endpoints: Option<Vec<raw::LabelSelector>>,
    cidrs: Option<Vec<String>>,
    cidr_sets: Option<Vec<raw::CidrRule>>,
    entities: Option<Vec<String>>,
    scope: &dyn Fn(Selector) -> Selector,
    at: &str,
    dir: &str,
) -> FieldResult<Option<Vec<Peer>>> {
    let mut peers = Vec::new();
    let mut named = false;
    if let Some(list) = endpoints {
        named |= !list.is_empty();
        for (i, s) in list.iter().enumerate() {
            let sel = selector(s, &format!("{at}.{dir}Endpoints[{i}]"))?;
            peers.push(Peer::Selector(scope(sel)));
        }
    }
    if let Some(list) = cidrs {
        named |= !list.is_empty();
        for (i, c) in list.iter().enumerate() {
            let cidr = parse_cidr(c, &format!("{at}.{dir}CIDR[{i}]"))?;
            peers.push(Peer::Cidr(CidrSelector {
                cidr,
                except: Vec::new(),
            }));
        }
    }
    if let Some(list) = cidr_sets {
        named |= !list.is_empty();
        for (i, c) in list.iter().enumerate() {
            let f = format!("{at}.{dir}CIDRSet[{i}]");
            peers.push(Peer::Cidr(cidr_selector(&c.cidr, c.except.as_deref(), &f)?));
        }
    }
    if let Some(list) = entities {
        named |= !list.is_empty();
        for (i, e) in list.iter().enumerate() {
            let f = format!("{at}.{dir}Entities[{i}]");
            match Entity::parse(e) {
                Some(entity) => peers.push(Peer::Entity(entity)),
                None => {
                    return field_err(
                        f,
                        format!(
                            "entity `{e}` is not supported (xpf knows world, host, \
                             remote-node, cluster, all)"
                        ),
                    )
                }
            }
        }
    }
    Ok(named.then_some(peers))
}

fn push_cilium_rule(
    dir: &mut Direction,
    deny: bool,
    index: usize,
    peers: Option<Vec<Peer>>,
    ports: Option<Vec<raw::PortRule>>,
    icmps: Option<Vec<raw::IcmpRule>>,
    at: &str,
) -> FieldResult<()> {
    let ports = ports.filter(|p| !p.is_empty());
    let icmps = icmps.filter(|i| !i.is_empty());
    let l4 = match (ports, icmps) {
        (Some(_), Some(_)) => {
            return field_err(
                at,
                "`toPorts` and `icmps` cannot be combined in one rule; write two rules",
            )
        }
        (Some(ports), None) => {
            let mut ranges = Vec::new();
            for (i, pr) in ports.iter().enumerate() {
                let f = format!("{at}.toPorts[{i}].ports");
                let list = pr.ports.as_deref().unwrap_or_default();
                if list.is_empty() {
                    return field_err(f, "empty: name at least one port");
                }
                for (j, pp) in list.iter().enumerate() {
                    ranges.push(port_range(pp, &format!("{f}[{j}]"), "ANY", true)?);
                }
            }
            L4::Ports(ranges)
        }
        (None, Some(icmps)) => {
            let mut types = Vec::new();
            for (i, r) in icmps.iter().enumerate() {
                if r.fields.is_empty() {
                    return field_err(format!("{at}.icmps[{i}].fields"), "empty");
                }
                for (j, fld) in r.fields.iter().enumerate() {
                    types.push(icmp_field(fld, &format!("{at}.icmps[{i}].fields[{j}]"))?);
                }
            }
            L4::Icmp(types)
        }
        (None, None) => L4::Any,
    };
    // A Cilium rule with neither peers nor ports selects nothing: `egress:
    // [{}]` is how a policy turns default deny on without allowing anything.
    let peers = match (peers, &l4) {
        (None, L4::Any) => return Ok(()),
        (None, _) => Vec::new(),
        (Some(p), _) => p,
    };
    let list = if deny { &mut dir.deny } else { &mut dir.allow };
    list.push(Rule { index, peers, l4 });
    Ok(())
}
