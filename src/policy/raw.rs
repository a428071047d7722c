#![allow(dead_code)] // Fields are accepted so deny_unknown_fields lets them through; they carry no policy.
//! The policy documents as written: serde shapes of CiliumNetworkPolicy,
//! CiliumClusterwideNetworkPolicy and NetworkPolicy. Every struct refuses
//! unknown fields, so a field xpf does not implement (`toFQDNs`, L7 `rules`,
//! ...) stops the load with its line instead of being ignored; the parser
//! turns those refusals into "not supported" messages (see
//! [`UNSUPPORTED_FIELDS`]). Meaning is given in `parse.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Fields of the upstream schemas xpf refuses, with why. Anything else
/// unknown is reported as an unknown field.
pub const UNSUPPORTED_FIELDS: &[(&str, &str)] = &[
    ("toFQDNs", "DNS-based policy needs a DNS proxy"),
    ("toServices", "service selection needs a service registry"),
    ("toGroups", "cloud provider groups are not available"),
    ("fromGroups", "cloud provider groups are not available"),
    ("toRequires", "requirements are deprecated upstream"),
    ("fromRequires", "requirements are deprecated upstream"),
    ("toNodes", "node selection needs a node registry"),
    ("fromNodes", "node selection needs a node registry"),
    ("nodeSelector", "host policies are not implemented"),
    ("authentication", "mutual authentication is not implemented"),
    ("rules", "L7 rules need a proxy"),
    ("serverNames", "TLS SNI matching needs a proxy"),
    ("listener", "Envoy listeners are not available"),
    ("originatingTLS", "TLS interception needs a proxy"),
    ("terminatingTLS", "TLS interception needs a proxy"),
    ("cidrGroupRef", "CIDR groups are not implemented"),
    ("cidrGroupSelector", "CIDR groups are not implemented"),
    ("fromEndpointsSelector", "not implemented"),
    ("log", "policy logging is not implemented"),
];

/// What every document has; read first to know which shape the rest takes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Head {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: Option<HeadMeta>,
}

#[derive(Debug, Deserialize)]
pub struct HeadMeta {
    #[serde(default)]
    pub name: Option<String>,
}

/// `metadata`: only name and namespace matter; the usual Kubernetes
/// bookkeeping fields are accepted and ignored because they carry no policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub uid: Option<serde_yaml::Value>,
    #[serde(default)]
    pub resource_version: Option<serde_yaml::Value>,
    #[serde(default)]
    pub generation: Option<serde_yaml::Value>,
    #[serde(default)]
    pub creation_timestamp: Option<serde_yaml::Value>,
}

/// `kind: List` (or `...List`): items read one by one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListDoc {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: Option<serde_yaml::Value>,
    pub items: Vec<serde_yaml::Value>,
}

/// CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CiliumDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Option<CiliumRule>,
    #[serde(default)]
    pub specs: Option<Vec<CiliumRule>>,
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CiliumRule {
    #[serde(default)]
    pub endpoint_selector: Option<LabelSelector>,
    #[serde(default)]
    pub ingress: Option<Vec<CiliumIngressRule>>,
    #[serde(default)]
    pub ingress_deny: Option<Vec<CiliumIngressRule>>,
    #[serde(default)]
    pub egress: Option<Vec<CiliumEgressRule>>,
    #[serde(default)]
    pub egress_deny: Option<Vec<CiliumEgressRule>>,
    #[serde(default)]
    pub enable_default_deny: Option<DefaultDeny>,
    #[serde(default)]
    pub labels: Option<serde_yaml::Value>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    #[serde(default)]
    pub ingress: Option<bool>,
    #[serde(default)]
    pub egress: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CiliumEgressRule {
    #[serde(default)]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    #[serde(default, rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(default, rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default)]
    pub to_entities: Option<Vec<String>>,
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CiliumIngressRule {
    #[serde(default)]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    #[serde(default, rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(default, rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default)]
    pub from_entities: Option<Vec<String>>,
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrRule {
    pub cidr: String,
    #[serde(default)]
    pub except: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRule {
    #[serde(default)]
    pub ports: Option<Vec<PortProtocol>>,
}

/// One port entry, shared by Cilium `toPorts[].ports[]` and NetworkPolicy
/// `ports[]`. `port` may be a number or a string in both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortProtocol {
    #[serde(default)]
    pub port: Option<IntOrString>,
    #[serde(default)]
    pub end_port: Option<i64>,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpRule {
    pub fields: Vec<IcmpField>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpField {
    #[serde(rename = "type")]
    pub icmp_type: IntOrString,
    #[serde(default)]
    pub family: Option<String>,
}

/// Kubernetes `LabelSelector`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Option<Vec<String>>,
}

/// `networking.k8s.io/v1` NetworkPolicy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: NetworkPolicySpec,
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    pub pod_selector: LabelSelector,
    #[serde(default)]
    pub policy_types: Option<Vec<String>>,
    #[serde(default)]
    pub ingress: Option<Vec<NetworkPolicyIngressRule>>,
    #[serde(default)]
    pub egress: Option<Vec<NetworkPolicyEgressRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicyEgressRule {
    #[serde(default)]
    pub to: Option<Vec<NetworkPolicyPeer>>,
    #[serde(default)]
    pub ports: Option<Vec<PortProtocol>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicyIngressRule {
    #[serde(default)]
    pub from: Option<Vec<NetworkPolicyPeer>>,
    #[serde(default)]
    pub ports: Option<Vec<PortProtocol>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default)]
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(default)]
    pub except: Option<Vec<String>>,
}
