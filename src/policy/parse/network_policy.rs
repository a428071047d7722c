//! Kubernetes NetworkPolicy to the model: the namespace (`default` when
//! none is given) scopes the subject and pod-selector peers, `policyTypes`
//! decides which directions have a section, `ipBlock` peers stand alone, and
//! ports default to TCP with no `ANY`.

use super::cidr::cidr_selector;
use super::l4::port_range;
use super::selector::{namespace_requirement, namespace_selector, selector};
use super::{field_err, FieldResult};
use crate::labels::{LabelKey, Operator, Requirement, Selector, NAMESPACE_LABEL, SOURCE_ANY};
use crate::policy::model::{Direction, Origin, Peer, Policy, PolicyKind, Rule, L4};
use crate::policy::raw;

pub(super) fn convert_network_policy(
    doc: raw::NetworkPolicyDoc,
    origin: &Origin,
) -> FieldResult<Policy> {
    let ns = doc
        .metadata
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let spec = doc.spec;
    let subject = selector(&spec.pod_selector, "spec.podSelector")?.and(namespace_requirement(&ns));

    // Kubernetes: without policyTypes, Ingress always and Egress when the
    // policy has egress rules.
    let (mut has_ingress, mut has_egress) = (true, spec.egress.is_some());
    if let Some(types) = &spec.policy_types {
        has_ingress = false;
        has_egress = false;
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                "Ingress" => has_ingress = true,
                "Egress" => has_egress = true,
                other => {
                    return field_err(
                        format!("spec.policyTypes[{i}]"),
                        format!("unknown policy type `{other}` (Ingress or Egress)"),
                    )
                }
            }
        }
    }

    let mut egress = Direction {
        has_section: has_egress,
        default_deny: true,
        ..Default::default()
    };
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let at = format!("spec.egress[{i}]");
        let peers = np_peers(r.to.as_deref(), &ns, &at, "to")?;
        let l4 = np_ports(r.ports.as_deref(), &at)?;
        egress.allow.push(Rule {
            index: i,
            peers,
            l4,
        });
    }
    let mut ingress = Direction {
        has_section: has_ingress,
        default_deny: true,
        ..Default::default()
    };
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let at = format!("spec.ingress[{i}]");
        let peers = np_peers(r.from.as_deref(), &ns, &at, "from")?;
        let l4 = np_ports(r.ports.as_deref(), &at)?;
        ingress.allow.push(Rule {
            index: i,
            peers,
            l4,
        });
    }
    Ok(Policy {
        kind: PolicyKind::NetworkPolicy,
        name: doc.metadata.name,
        namespace: Some(ns),
        origin: origin.clone(),
        subject,
        egress: egress.into(),
        ingress: ingress.into(),
    })
}

fn np_peers(
    peers: Option<&[raw::NetworkPolicyPeer]>,
    ns: &str,
    at: &str,
    dir: &str,
) -> FieldResult<Vec<Peer>> {
    let mut out = Vec::new();
    for (i, p) in peers.unwrap_or_default().iter().enumerate() {
        let f = format!("{at}.{dir}[{i}]");
        if let Some(block) = &p.ip_block {
            if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                return field_err(f, "ipBlock cannot be combined with a selector");
            }
            out.push(Peer::Cidr(cidr_selector(
                &block.cidr,
                block.except.as_deref(),
                &format!("{f}.ipBlock"),
            )?));
            continue;
        }
        let pods = match &p.pod_selector {
            Some(pods) => Some(selector(pods, &format!("{f}.podSelector"))?),
            None => None,
        };
        let sel = match (&p.namespace_selector, pods) {
            (None, None) => return field_err(f, "empty peer: name a selector or ipBlock"),
            (None, Some(pods)) => pods.and(namespace_requirement(ns)),
            (Some(nss), pods) => {
                let mut sel = pods.unwrap_or_else(Selector::all);
                for r in namespace_selector(nss, &format!("{f}.namespaceSelector"))? {
                    sel = sel.and(r);
                }
                sel.and(Requirement {
                    key: LabelKey::new(SOURCE_ANY, NAMESPACE_LABEL),
                    operator: Operator::Exists,
                    values: Vec::new(),
                })
            }
        };
        out.push(Peer::Selector(sel));
    }
    Ok(out)
}

fn np_ports(ports: Option<&[raw::PortProtocol]>, at: &str) -> FieldResult<L4> {
    let ports = ports.unwrap_or_default();
    if ports.is_empty() {
        return Ok(L4::Any);
    }
    let ranges = ports
        .iter()
        .enumerate()
        .map(|(i, p)| port_range(p, &format!("{at}.ports[{i}]"), "TCP", false))
        .collect::<FieldResult<Vec<_>>>()?;
    Ok(L4::Ports(ranges))
}
