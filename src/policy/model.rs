//! The parsed policy model: what every policy document means once its kind's
//! syntax is gone. Both verdict engines read only this.
//!
//! # Semantics (egress; ingress is parsed into the same shapes)
//!
//! * A [`Policy`] applies to the endpoints its `subject` selector matches.
//!   Namespaced policies (NetworkPolicy, CiliumNetworkPolicy with
//!   `metadata.namespace`) have the namespace requirement already added to
//!   `subject` and to their label-selector peers by the parser.
//! * A [`Rule`] matches a packet when its peers match the destination and its
//!   L4 part matches the protocol and port. Rules add up; a matching deny rule
//!   beats every allow rule.
//! * Peers: [`Peer::Selector`] matches endpoint identities (local endpoints and
//!   labelled ipcache entries) by labels. It matches the host, remote nodes or
//!   the world only when the selector names a `reserved:` label itself
//!   (`reserved:host`, `reserved:remote-node`), so `{}` or a `NotIn` never
//!   silently opens the world. [`Peer::Cidr`] matches only addresses that
//!   belong to no endpoint, labelled ipcache entry or the host. A remote node
//!   is an ipcache entry labelled exactly `reserved:remote-node` (another
//!   host's node address). [`Peer::Entity`]: `world` is every address no
//!   entry claims, `host` the host, `remote-node` the remote nodes, `cluster`
//!   the host, the remote nodes and every endpoint identity, as in Cilium;
//!   `all` everything. No peers means every destination.
//! * L4: [`L4::Any`] matches every protocol. [`L4::Ports`] matches TCP, UDP
//!   and SCTP (as listed) on a port range; `ANY` means those three, never
//!   ICMP. [`L4::Icmp`] matches ICMP or ICMPv6 by type.
//! * Default deny for an endpoint's egress is on when any policy that selects
//!   it has an egress section and does not set `enableDefaultDeny.egress:
//!   false`. An endpoint no such policy selects allows everything not denied.

use std::fmt;

use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;

use crate::labels::Selector;

/// Where a policy came from, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    /// 0-based index of the YAML document within the file.
    pub document: usize,
}

/// The document kinds xpf reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum PolicyKind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    NetworkPolicy,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One policy (one `spec`, or one entry of `specs`, of a document).
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub name: String,
    pub namespace: Option<String>,
    pub origin: Origin,
    /// Which endpoints the policy applies to.
    pub subject: Selector,
    /// The rules, shared: a reload copies a policy file's policies without
    /// copying their rules.
    pub egress: Arc<Direction>,
    pub ingress: Arc<Direction>,
}

impl Policy {
    /// `namespace/name` or `name`, as messages and reasons print it.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// The rules of one direction of a policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Direction {
    /// The policy has a section for this direction (rules, deny rules, or a
    /// NetworkPolicy `policyTypes` entry), which turns default deny on unless
    /// `default_deny` is false.
    pub has_section: bool,
    /// `enableDefaultDeny.<direction>`; `true` when not written.
    pub default_deny: bool,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

impl Direction {
    /// Whether this section switches default deny on for what it selects.
    pub fn enables_default_deny(&self) -> bool {
        self.has_section && self.default_deny
    }
}

/// One rule: the destinations (peers) and the L4 part.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Position among the allow (or deny) rules of its direction as written,
    /// 0-based (empty Cilium rules are dropped, so it may skip numbers).
    pub index: usize,
    /// Empty: every destination.
    pub peers: Vec<Peer>,
    pub l4: L4,
}

/// A destination a rule names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    Selector(Selector),
    Cidr(CidrSelector),
    Entity(Entity),
}

/// A CIDR with exceptions (`toCIDR`, `toCIDRSet`, `ipBlock`). Every exception
/// lies inside `cidr`; all prefixes are normalised.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrSelector {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl CidrSelector {
    /// Whether `prefix` (an ipcache CIDR entry) lies inside `cidr` and in no
    /// exception.
    pub fn selects_prefix(&self, prefix: &IpNet) -> bool {
        self.cidr.contains(prefix) && !self.except.iter().any(|e| e.contains(prefix))
    }
}

impl fmt::Display for CidrSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        for e in &self.except {
            write!(f, " except {e}")?;
        }
        Ok(())
    }
}

/// Cilium entities xpf supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Entity {
    World,
    Host,
    #[serde(rename = "remote-node")]
    RemoteNode,
    Cluster,
    All,
}

impl Entity {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "world" => Some(Self::World),
            "host" => Some(Self::Host),
            "remote-node" => Some(Self::RemoteNode),
            "cluster" => Some(Self::Cluster),
            "all" => Some(Self::All),
            _ => None,
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::World => "world",
            Self::Host => "host",
            Self::RemoteNode => "remote-node",
            Self::Cluster => "cluster",
            Self::All => "all",
        })
    }
}

/// Transport protocols a port rule can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum PortProto {
    Tcp,
    Udp,
    Sctp,
}

impl PortProto {
    pub const ALL: [PortProto; 3] = [PortProto::Tcp, PortProto::Udp, PortProto::Sctp];

    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }
}

/// One `port`/`endPort`/`protocol` entry. `protocols` lists what `ANY`
/// expanded to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub protocols: Vec<PortProto>,
    pub first: u16,
    pub last: u16,
}

/// ICMP family of an `icmps` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum IcmpFamily {
    V4,
    V6,
}

impl IcmpFamily {
    /// IP protocol number (1 or 58).
    pub fn number(self) -> u8 {
        match self {
            Self::V4 => 1,
            Self::V6 => 58,
        }
    }
}

/// The L4 part of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    /// No port or ICMP restriction.
    Any,
    /// `toPorts` / `ports`: non-empty.
    Ports(Vec<PortRange>),
    /// `icmps`: non-empty list of (family, type).
    Icmp(Vec<(IcmpFamily, u8)>),
}

/// IP protocol numbers the engines know by name.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;

    /// Whether `p` carries ports a port rule can match.
    pub fn has_ports(p: u8) -> bool {
        matches!(p, TCP | UDP | SCTP)
    }
}

/// Names an egress rule inside a policy set: the policy's position, allow
/// or deny, and the rule's position in that list (not [`Rule::index`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    pub policy: u32,
    pub deny: bool,
    pub rule: u32,
}

/// What a verdict query asks: from which endpoint labels, to what, how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Query {
    /// IP protocol number.
    pub proto: u8,
    /// Destination port (TCP/UDP/SCTP) or ICMP type; ignored otherwise.
    pub port: u16,
}
