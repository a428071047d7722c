//! Policy documents (YAML or JSON, several per file, `List` kinds) to the
//! model. Syntax errors carry the file, line and field path serde_yaml gives;
//! meaning errors (a bad CIDR, a port out of range, an unsupported entity)
//! carry the file, the policy and the field path. A file either loads whole
//! or not at all.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use super::model::{
    CidrSelector, Direction, Entity, IcmpFamily, Origin, Peer, Policy, PolicyKind, PortProto,
    PortRange, Rule, L4,
};
use super::raw::{self, IntOrString};
use crate::labels::{
    LabelKey, Operator, Requirement, Selector, K8S_NAMESPACE_NAME_LABEL, NAMESPACE_LABEL,
    NAMESPACE_LABELS_PREFIX, SOURCE_ANY,
};

/// A policy that could not be loaded, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    /// 1-based line and column, when the YAML parser knows them.
    pub location: Option<(usize, usize)>,
    /// `Kind name` of the policy, when it could be read.
    pub policy: Option<String>,
    /// Field path inside the document, e.g. `spec.egress[0].toPorts[0]`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.location {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(p) = &self.policy {
            write!(f, ": {p}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for PolicyError {}

/// A meaning error found while converting, before the file/policy context is
/// attached.
struct FieldError {
    field: String,
    message: String,
}

type FieldResult<T> = Result<T, FieldError>;

fn field_err<T>(field: impl Into<String>, message: impl Into<String>) -> FieldResult<T> {
    Err(FieldError {
        field: field.into(),
        message: message.into(),
    })
}

/// Parses every policy document in `text` (read from `file`).
pub fn parse_policies(text: &str, file: &Path) -> Result<Vec<Policy>, PolicyError> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| yaml_error(file, None, e))?;
        if value.is_null() {
            continue; // an empty document (`---` at the end) carries nothing
        }
        let origin = Origin {
            file: file.to_path_buf(),
            document: index,
        };
        // The typed parse reads the document's text again so that its errors
        // carry line numbers; the untyped value only names kind and policy.
        let typed = serde_yaml::Deserializer::from_str(text)
            .nth(index)
            .expect("document seen by the first pass");
        parse_document(&value, Some(typed), &origin, "", &mut out)?;
    }
    Ok(out)
}

fn head_of(value: &serde_yaml::Value) -> raw::Head {
    raw::Head::deserialize(value.clone()).unwrap_or(raw::Head {
        api_version: None,
        kind: None,
        metadata: None,
    })
}

fn describe(head: &raw::Head) -> Option<String> {
    let kind = head.kind.as_deref()?;
    match head.metadata.as_ref().and_then(|m| m.name.as_deref()) {
        Some(name) => Some(format!("{kind} `{name}`")),
        None => Some(kind.to_string()),
    }
}

/// Parses one document given as an untyped value and, for top-level
/// documents, the deserializer over its text (for line numbers). `prefix` is
/// the field path of the document (`items[3].` inside a list).
fn parse_document(
    value: &serde_yaml::Value,
    typed: Option<serde_yaml::Deserializer<'_>>,
    origin: &Origin,
    prefix: &str,
    out: &mut Vec<Policy>,
) -> Result<(), PolicyError> {
    let head = head_of(value);
    let who = describe(&head);
    let fail = |field: String, message: String| PolicyError {
        file: origin.file.clone(),
        location: None,
        policy: who.clone(),
        field,
        message,
    };
    let kind = head
        .kind
        .as_deref()
        .ok_or_else(|| fail(format!("{prefix}kind"), "missing `kind`".into()))?;
    let api = head.api_version.as_deref().unwrap_or("");

    fn typed_parse<T: for<'de> Deserialize<'de>>(
        value: &serde_yaml::Value,
        typed: Option<serde_yaml::Deserializer<'_>>,
        origin: &Origin,
        who: &Option<String>,
        prefix: &str,
    ) -> Result<T, PolicyError> {
        match typed {
            Some(de) => T::deserialize(de).map_err(|e| yaml_error(&origin.file, who.clone(), e)),
            None => T::deserialize(value.clone()).map_err(|e| {
                let mut err = yaml_error(&origin.file, who.clone(), e);
                err.field = format!("{prefix}{}", err.field);
                err.location = None;
                err
            }),
        }
    }

    let policy_kind = match kind {
        "CiliumNetworkPolicy" => PolicyKind::CiliumNetworkPolicy,
        "CiliumClusterwideNetworkPolicy" => PolicyKind::CiliumClusterwideNetworkPolicy,
        "NetworkPolicy" => PolicyKind::NetworkPolicy,
        k if k == "List" || k.ends_with("List") => {
            let list: raw::ListDoc = typed_parse(value, typed, origin, &who, prefix)?;
            for (i, item) in list.items.iter().enumerate() {
                parse_document(item, None, origin, &format!("{prefix}items[{i}]."), out)?;
            }
            return Ok(());
        }
        other => {
            return Err(fail(
                format!("{prefix}kind"),
                format!(
                    "unsupported kind `{other}` (xpf reads CiliumNetworkPolicy, \
                     CiliumClusterwideNetworkPolicy, NetworkPolicy and List)"
                ),
            ))
        }
    };
    let want_api = match policy_kind {
        PolicyKind::NetworkPolicy => "networking.k8s.io/v1",
        _ => "cilium.io/v2",
    };
    if api != want_api {
        return Err(fail(
            format!("{prefix}apiVersion"),
            format!("{kind} needs apiVersion `{want_api}`, found `{api}`"),
        ));
    }

    let converted = match policy_kind {
        PolicyKind::NetworkPolicy => {
            let doc: raw::NetworkPolicyDoc = typed_parse(value, typed, origin, &who, prefix)?;
            convert_network_policy(doc, origin).map(|p| vec![p])
        }
        _ => {
            let doc: raw::CiliumDoc = typed_parse(value, typed, origin, &who, prefix)?;
            convert_cilium(doc, policy_kind, origin)
        }
    };
    match converted {
        Ok(policies) => {
            out.extend(policies);
            Ok(())
        }
        Err(e) => Err(fail(format!("{prefix}{}", e.field), e.message)),
    }
}

/// A serde_yaml message without the " at line L column C" it puts after
/// the message and again after the context (", while parsing a flow
/// mapping at line ..."), since callers print the location once.
pub(crate) fn strip_yaml_location(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" at line ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + " at line ".len()..];
        let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let line = digits(after);
        let tail = &after[line..];
        match tail.strip_prefix(" column ") {
            Some(col) if line > 0 && digits(col) > 0 => rest = &col[digits(col)..],
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Turns a serde_yaml error into a [`PolicyError`], rewording refusals of
/// upstream fields xpf does not implement.
fn yaml_error(file: &Path, policy: Option<String>, e: serde_yaml::Error) -> PolicyError {
    let location = e.location().map(|l| (l.line(), l.column()));
    // The location is printed apart.
    let text = strip_yaml_location(&e.to_string());
    // serde_yaml prefixes the field path as "a.b[0].c: message".
    let (mut field, mut message) = match text.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => (path.to_string(), rest.to_string()),
        _ => (String::new(), text.clone()),
    };
    if let Some(name) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        let name = name.to_string();
        field = if field.is_empty() || field == "." {
            name.clone()
        } else {
            format!("{field}.{name}")
        };
        message = match raw::UNSUPPORTED_FIELDS.iter().find(|(f, _)| *f == name) {
            Some((_, why)) => format!("not supported by xpf ({why})"),
            None => match message.split_once("`, ") {
                Some((_, expected)) => format!("unknown field ({expected})"),
                None => "unknown field".to_string(),
            },
        };
    }
    PolicyError {
        file: file.to_path_buf(),
        location,
        policy,
        field,
        message,
    }
}

fn namespace_requirement(ns: &str) -> Requirement {
    Requirement {
        key: LabelKey::new(SOURCE_ANY, NAMESPACE_LABEL),
        operator: Operator::In,
        values: vec![ns.to_string()],
    }
}

fn convert_cilium(
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
        egress,
        ingress,
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
                            "entity `{e}` is not supported (xpf knows world, host, cluster, all)"
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

fn convert_network_policy(doc: raw::NetworkPolicyDoc, origin: &Origin) -> FieldResult<Policy> {
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
        egress,
        ingress,
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

/// Converts a Kubernetes label selector. Keys may carry a Cilium source
/// prefix (`k8s:app`).
fn selector(sel: &raw::LabelSelector, at: &str) -> FieldResult<Selector> {
    requirements(sel, at, |k| LabelKey::parse(k).map_err(|e| e.to_string()))
        .map(|requirements| Selector { requirements })
}

/// Converts a NetworkPolicy `namespaceSelector` into requirements on the
/// endpoint labels that carry namespace facts, as Cilium maps them.
fn namespace_selector(sel: &raw::LabelSelector, at: &str) -> FieldResult<Vec<Requirement>> {
    requirements(sel, at, |k| {
        Ok(if k == K8S_NAMESPACE_NAME_LABEL {
            LabelKey::new(SOURCE_ANY, NAMESPACE_LABEL)
        } else {
            LabelKey::new(SOURCE_ANY, &format!("{NAMESPACE_LABELS_PREFIX}{k}"))
        })
    })
}

fn requirements(
    sel: &raw::LabelSelector,
    at: &str,
    key: impl Fn(&str) -> Result<LabelKey, String>,
) -> FieldResult<Vec<Requirement>> {
    let mut out = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        let f = format!("{at}.matchLabels.{k}");
        out.push(Requirement {
            key: key(k).or_else(|m| field_err(&f, m))?,
            operator: Operator::In,
            values: vec![v.clone()],
        });
    }
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{at}.matchExpressions[{i}]");
        let operator = match e.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return field_err(
                    format!("{f}.operator"),
                    format!("unknown operator `{other}` (In, NotIn, Exists, DoesNotExist)"),
                )
            }
        };
        let values = e.values.clone().unwrap_or_default();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return field_err(format!("{f}.values"), "must not be empty for In and NotIn")
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return field_err(
                    format!("{f}.values"),
                    "must be empty for Exists and DoesNotExist",
                )
            }
            _ => {}
        }
        out.push(Requirement {
            key: key(&e.key).or_else(|m| field_err(format!("{f}.key"), m))?,
            operator,
            values,
        });
    }
    Ok(out)
}

/// Parses a CIDR (or a bare address, meaning a host prefix), normalised.
fn parse_cidr(s: &str, at: &str) -> FieldResult<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    field_err(at, format!("invalid CIDR `{s}`"))
}

fn cidr_selector(cidr: &str, except: Option<&[String]>, at: &str) -> FieldResult<CidrSelector> {
    let net = parse_cidr(cidr, &format!("{at}.cidr"))?;
    let mut excepts = Vec::new();
    for (i, e) in except.unwrap_or_default().iter().enumerate() {
        let f = format!("{at}.except[{i}]");
        let ex = parse_cidr(e, &f)?;
        if !net.contains(&ex) {
            return field_err(f, format!("{ex} is not inside {net}"));
        }
        excepts.push(ex);
    }
    Ok(CidrSelector {
        cidr: net,
        except: excepts,
    })
}

fn port_range(
    pp: &raw::PortProtocol,
    at: &str,
    default_proto: &str,
    allow_any: bool,
) -> FieldResult<PortRange> {
    let proto = pp.protocol.as_deref().unwrap_or(default_proto);
    let protocols = match proto {
        "TCP" => vec![PortProto::Tcp],
        "UDP" => vec![PortProto::Udp],
        "SCTP" => vec![PortProto::Sctp],
        "ANY" if allow_any => PortProto::ALL.to_vec(),
        other => {
            let known = if allow_any {
                "TCP, UDP, SCTP, ANY"
            } else {
                "TCP, UDP, SCTP"
            };
            return field_err(
                format!("{at}.protocol"),
                format!("unknown protocol `{other}` ({known})"),
            );
        }
    };
    let first = match &pp.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::Str(s)) if s.is_empty() => None,
        Some(IntOrString::Str(s)) => match s.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return field_err(
                    format!("{at}.port"),
                    format!("named port `{s}` is not supported (write the number)"),
                )
            }
        },
    };
    // Port 0, as Cilium reads it, is every port of the protocol: the same
    // as no port at all.
    let Some(first) = first.filter(|n| *n != 0) else {
        if pp.end_port.is_some() {
            return field_err(format!("{at}.endPort"), "needs a `port` above 0");
        }
        return Ok(PortRange {
            protocols,
            first: 0,
            last: u16::MAX,
        });
    };
    if !(1..=65535).contains(&first) {
        return field_err(
            format!("{at}.port"),
            format!("port {first} is out of range (1-65535)"),
        );
    }
    let last = pp.end_port.unwrap_or(first);
    if !(1..=65535).contains(&last) {
        return field_err(
            format!("{at}.endPort"),
            format!("endPort {last} is out of range (1-65535)"),
        );
    }
    if last < first {
        return field_err(
            format!("{at}.endPort"),
            format!("endPort {last} is below port {first}"),
        );
    }
    Ok(PortRange {
        protocols,
        first: first as u16,
        last: last as u16,
    })
}

fn icmp_field(f: &raw::IcmpField, at: &str) -> FieldResult<(IcmpFamily, u8)> {
    let family = match f.family.as_deref().unwrap_or("IPv4") {
        "IPv4" => IcmpFamily::V4,
        "IPv6" => IcmpFamily::V6,
        other => {
            return field_err(
                format!("{at}.family"),
                format!("unknown ICMP family `{other}` (IPv4 or IPv6)"),
            )
        }
    };
    let t = match &f.icmp_type {
        IntOrString::Int(n) if (0..=255).contains(n) => *n as u8,
        IntOrString::Int(n) => {
            return field_err(
                format!("{at}.type"),
                format!("ICMP type {n} is out of range (0-255)"),
            )
        }
        IntOrString::Str(s) => match s.parse::<u8>().ok().or_else(|| icmp_type_name(family, s)) {
            Some(t) => t,
            None => {
                return field_err(
                    format!("{at}.type"),
                    format!("unknown ICMP type `{s}` for {family:?}"),
                )
            }
        },
    };
    Ok((family, t))
}

/// Cilium's ICMP type names.
fn icmp_type_name(family: IcmpFamily, name: &str) -> Option<u8> {
    let table: &[(&str, u8)] = match family {
        IcmpFamily::V4 => &[
            ("EchoReply", 0),
            ("DestinationUnreachable", 3),
            ("Redirect", 5),
            ("Echo", 8),
            ("EchoRequest", 8),
            ("RouterAdvertisement", 9),
            ("RouterSelection", 10),
            ("TimeExceeded", 11),
            ("ParameterProblem", 12),
            ("Timestamp", 13),
            ("TimestampReply", 14),
            ("Photuris", 40),
            ("ExtendedEchoRequest", 42),
            ("ExtendedEchoReply", 43),
        ],
        IcmpFamily::V6 => &[
            ("DestinationUnreachable", 1),
            ("PacketTooBig", 2),
            ("TimeExceeded", 3),
            ("ParameterProblem", 4),
            ("EchoRequest", 128),
            ("EchoReply", 129),
            ("MulticastListenerQuery", 130),
            ("MulticastListenerReport", 131),
            ("MulticastListenerDone", 132),
            ("RouterSolicitation", 133),
            ("RouterAdvertisement", 134),
            ("NeighborSolicitation", 135),
            ("NeighborAdvertisement", 136),
            ("RedirectMessage", 137),
            ("RouterRenumbering", 138),
            ("ICMPNodeInformationQuery", 139),
            ("ICMPNodeInformationResponse", 140),
            ("InverseNeighborDiscoverySolicitation", 141),
            ("InverseNeighborDiscoveryAdvertisement", 142),
            ("HomeAgentAddressDiscoveryRequest", 144),
            ("HomeAgentAddressDiscoveryReply", 145),
            ("MobilePrefixSolicitation", 146),
            ("MobilePrefixAdvertisement", 147),
            ("DuplicateAddressRequestCodeSuffix", 157),
            ("DuplicateAddressConfirmationCodeSuffix", 158),
            ("ExtendedEchoRequest", 160),
            ("ExtendedEchoReply", 161),
        ],
    };
    table.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Loads every policy file named by `paths` (files, or directories whose
/// `.yaml`, `.yml` and `.json` files are read in name order).
pub fn load_policy_paths(paths: &[PathBuf]) -> Result<Vec<Policy>, PolicyError> {
    let mut files = Vec::new();
    let unreadable = |file: &Path, e: std::io::Error| PolicyError {
        file: file.to_path_buf(),
        location: None,
        policy: None,
        field: String::new(),
        message: format!("cannot read: {e}"),
    };
    for p in paths {
        let io = |e| unreadable(p, e);
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && matches!(
                            f.extension().and_then(|e| e.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| unreadable(&f, e))?;
        out.extend(parse_policies(&text, &f)?);
    }
    Ok(out)
}
