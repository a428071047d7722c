//! The compiled egress path ([`Engine::check`]: inventory, ipcache, compiled
//! tables) against the naive [`reference::decide`], on random worlds.
//!
//! Worlds are built as `World` values directly rather than parsed, so the
//! generators can aim at the corners where the two paths could part ways:
//! endpoints sharing label sets, labels keyed with and without a source,
//! static ipcache entries nesting each other and covering endpoint
//! addresses, remote-node entries among them, policy CIDRs equal to or inside labelled prefixes, exceptions
//! at CIDR edges, selectors naming reserved labels, and port ranges at their
//! edges. Generated worlds keep the invariants `World::new` enforces
//! (unique endpoint and host addresses, distinct ipcache prefixes none of
//! which is exactly such an address, non-empty ipcache labels, exceptions
//! inside their CIDR, `port <= endPort`), because the engines may rely on
//! them. Nothing here sends a packet: every address is only looked up.
//!
//! Two disagreements this property found (a policy CIDR equal to a labelled
//! prefix, and a `reserved:world` selector under a policy CIDR) are pinned
//! by the regression tests at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use proptest::prelude::*;

use xpf::engine::Engine;
use xpf::labels::{
    remote_node_labels, Label, LabelKey, LabelSet, Operator, Requirement, Selector, NAMESPACE_LABEL,
};
use xpf::policy::model::{
    CidrSelector, Direction, Entity, IcmpFamily, Origin, Peer, Policy, PolicyKind, PortProto,
    PortRange, Rule, RuleRef, L4,
};
use xpf::policy::{reference, Cause, Decision};
use xpf::world::{Endpoint, StaticEntry, World};

// ---- address space ----

const V4_BASE: u32 = 0xc612_0000; // 198.18.0.0/15
const V6_BASE: u128 = 0x2001_0db8 << 96; // 2001:db8::/32

/// An address in 198.18.0.0/15 at `offset` (wrapped into the /15).
fn v4(offset: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(V4_BASE | (offset & 0x1_ffff)))
}

/// An address in 2001:db8::/32 at `offset` (wrapped into the /32).
fn v6(offset: u128) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(V6_BASE | (offset & ((1 << 96) - 1))))
}

fn net(addr: IpAddr, len: u8) -> IpNet {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    IpNet::new(addr, len.min(max))
        .expect("length clamped")
        .trunc()
}

/// `addr + delta` within its family, wrapping.
fn step(addr: IpAddr, delta: i8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
            u32::from(a).wrapping_add_signed(i32::from(delta)),
        )),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(
            u128::from(a).wrapping_add_signed(i128::from(delta)),
        )),
    }
}

/// The address at `offset` inside `prefix` (wrapped into its host bits).
fn inside(prefix: &IpNet, offset: u128) -> IpAddr {
    match prefix {
        IpNet::V4(p) => {
            let host = u32::MAX.checked_shr(u32::from(p.prefix_len())).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(
                u32::from(p.network()) | (offset as u32 & host),
            ))
        }
        IpNet::V6(p) => {
            let host = u128::MAX
                .checked_shr(u32::from(p.prefix_len()))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(p.network()) | (offset & host)))
        }
    }
}

/// Addresses worth asking about around a prefix: its edges, just outside
/// them, and one point inside.
fn prefix_probe(prefix: &IpNet, which: u8, offset: u128) -> IpAddr {
    match which % 5 {
        0 => prefix.network(),
        1 => prefix.broadcast(),
        2 => step(prefix.network(), -1),
        3 => step(prefix.broadcast(), 1),
        _ => inside(prefix, offset),
    }
}

// ---- seeds: what proptest generates and shrinks ----

/// An address seed. Offsets are mostly small so that addresses, prefixes and
/// CIDRs of different parts of a world collide and nest.
#[derive(Clone, Debug)]
enum AddrSeed {
    V4(u32),
    V6(u128),
}

impl AddrSeed {
    fn addr(&self) -> IpAddr {
        match self {
            Self::V4(o) => v4(*o),
            Self::V6(o) => v6(*o),
        }
    }
}

fn addr_seed() -> impl Strategy<Value = AddrSeed> {
    prop_oneof![
        4 => (0u32..64).prop_map(AddrSeed::V4),
        2 => (0u32..1024).prop_map(AddrSeed::V4),
        1 => any::<u32>().prop_map(AddrSeed::V4),
        3 => (0u128..64).prop_map(AddrSeed::V6),
        1 => (0u8..4, 0u128..64).prop_map(|(hi, lo)| AddrSeed::V6((u128::from(hi) << 64) | lo)),
        1 => any::<u128>().prop_map(AddrSeed::V6),
    ]
}

/// The label keys and values of the small alphabet worlds are drawn from.
const LABEL_KEYS: [(&str, &[&str]); 4] = [
    ("app", &["web", "db", "cache"]),
    ("env", &["prod", "dev"]),
    ("tier", &["front", "back"]),
    (NAMESPACE_LABEL, &["default", "kube-system"]),
];

/// Per alphabet key: absent, or (source is `k8s`, value index).
#[derive(Clone, Debug)]
struct LabelsSeed {
    keys: Vec<Option<(bool, usize)>>,
    /// A second label with the same key as an existing one and the other
    /// source (`any:app` beside `k8s:app`): selectors name both.
    twin: Option<(usize, usize)>,
}

fn labels_seed() -> impl Strategy<Value = LabelsSeed> {
    let key = prop::option::weighted(0.6, (prop::bool::weighted(0.2), 0usize..3));
    (
        prop::collection::vec(key, 4),
        prop::option::weighted(0.1, (0usize..4, 0usize..3)),
    )
        .prop_map(|(keys, twin)| LabelsSeed { keys, twin })
}

impl LabelsSeed {
    fn build(&self) -> LabelSet {
        let mut labels: BTreeMap<LabelKey, String> = BTreeMap::new();
        for (i, k) in self.keys.iter().enumerate() {
            if let Some((k8s, v)) = k {
                let (key, values) = LABEL_KEYS[i];
                let source = if *k8s { "k8s" } else { "any" };
                labels.insert(LabelKey::new(source, key), values[v % values.len()].into());
            }
        }
        // A key appears once per set whatever its source (LabelSet refuses
        // `app` beside `k8s:app`), so the twin re-sources a key instead.
        if let Some((i, v)) = self.twin {
            let (key, values) = LABEL_KEYS[i];
            let source = match &self.keys[i] {
                Some((false, _)) => "k8s",
                _ => "any",
            };
            labels.retain(|k, _| k.key != key);
            labels.insert(LabelKey::new(source, key), values[v % values.len()].into());
        }
        LabelSet::new(
            labels
                .into_iter()
                .map(|(key, value)| Label { key, value })
                .collect(),
        )
        .expect("keys are distinct")
    }
}

#[derive(Clone, Debug)]
struct ReqSeed {
    /// 0..4: alphabet keys; 4: `reserved:host`; 5: `reserved:world`;
    /// 6: `reserved:remote-node`.
    key: usize,
    k8s: bool,
    op: u8,
    values: Vec<usize>,
}

fn req_seed() -> impl Strategy<Value = ReqSeed> {
    (
        prop_oneof![8 => 0usize..4, 1 => 4usize..7],
        prop::bool::weighted(0.25),
        0u8..4,
        prop::collection::vec(0usize..4, 1..3),
    )
        .prop_map(|(key, k8s, op, values)| ReqSeed {
            key,
            k8s,
            op,
            values,
        })
}

fn build_requirement(seed: &ReqSeed) -> Requirement {
    let operator = [
        Operator::In,
        Operator::NotIn,
        Operator::Exists,
        Operator::DoesNotExist,
    ][usize::from(seed.op % 4)];
    let (key, alphabet): (LabelKey, Vec<String>) = match seed.key {
        k @ 0..4 => {
            let (key, values) = LABEL_KEYS[k];
            let source = if seed.k8s { "k8s" } else { "any" };
            // One value outside the alphabet, which nothing carries.
            let mut alphabet: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            alphabet.push("other".into());
            (LabelKey::new(source, key), alphabet)
        }
        k => {
            let name = ["host", "world", "remote-node"][k - 4];
            (LabelKey::new("reserved", name), vec!["".into(), "x".into()])
        }
    };
    let values = match operator {
        Operator::In | Operator::NotIn => {
            let set: BTreeSet<String> = seed
                .values
                .iter()
                .map(|v| alphabet[v % alphabet.len()].clone())
                .collect();
            set.into_iter().collect()
        }
        Operator::Exists | Operator::DoesNotExist => Vec::new(),
    };
    Requirement {
        key,
        operator,
        values,
    }
}

fn selector_seed() -> impl Strategy<Value = Vec<ReqSeed>> {
    prop::collection::vec(req_seed(), 0..3)
}

fn build_selector(seeds: &[ReqSeed]) -> Selector {
    Selector {
        requirements: seeds.iter().map(build_requirement).collect(),
    }
}

/// Where a prefix is anchored, resolved against the world built so far.
#[derive(Clone, Debug)]
enum Anchor {
    Endpoint(usize),
    Host(usize),
    Entry(usize),
    Free(AddrSeed),
}

fn anchor() -> impl Strategy<Value = Anchor> {
    prop_oneof![
        3 => any::<usize>().prop_map(Anchor::Endpoint),
        1 => any::<usize>().prop_map(Anchor::Host),
        2 => any::<usize>().prop_map(Anchor::Entry),
        3 => addr_seed().prop_map(Anchor::Free),
    ]
}

/// A prefix: an anchor address truncated to a length picked from a list
/// that depends on the family (`len` indexes it).
#[derive(Clone, Debug)]
struct PrefixSeed {
    anchor: Anchor,
    len: usize,
    /// For an `Entry` anchor: keep the entry's own length (an equal prefix).
    same: bool,
}

fn prefix_seed() -> impl Strategy<Value = PrefixSeed> {
    (anchor(), any::<usize>(), prop::bool::weighted(0.3))
        .prop_map(|(anchor, len, same)| PrefixSeed { anchor, len, same })
}

const V4_LENS: [u8; 12] = [15, 16, 20, 23, 24, 25, 26, 28, 30, 31, 32, 32];
const V6_LENS: [u8; 10] = [32, 48, 64, 96, 112, 120, 124, 127, 128, 128];
/// Policy CIDRs also reach outside the test ranges.
const V4_CIDR_LENS: [u8; 15] = [0, 8, 15, 16, 20, 23, 24, 25, 26, 28, 30, 31, 32, 32, 24];
const V6_CIDR_LENS: [u8; 12] = [0, 16, 32, 48, 64, 96, 112, 120, 124, 127, 128, 128];

#[derive(Clone, Debug)]
struct CidrSeed {
    prefix: PrefixSeed,
    /// (extra length beyond the CIDR's, offset inside it, anchor on an
    /// endpoint address when one lies inside).
    except: Vec<(u8, u128, Option<usize>)>,
}

#[derive(Clone, Debug)]
enum PeerSeed {
    Selector(Vec<ReqSeed>),
    Cidr(CidrSeed),
    Entity(u8),
}

fn peer_seed() -> impl Strategy<Value = PeerSeed> {
    let except = (
        prop_oneof![1 => Just(0u8), 3 => 1u8..9, 1 => 9u8..129],
        any::<u128>(),
        prop::option::weighted(0.3, any::<usize>()),
    );
    prop_oneof![
        3 => selector_seed().prop_map(PeerSeed::Selector),
        3 => (prefix_seed(), prop::collection::vec(except, 0..3))
            .prop_map(|(prefix, except)| PeerSeed::Cidr(CidrSeed { prefix, except })),
        2 => (0u8..5).prop_map(PeerSeed::Entity),
    ]
}

#[derive(Clone, Debug)]
enum PortSeed {
    Edge(usize),
    Any(u16),
}

const PORT_EDGES: [u16; 10] = [0, 1, 2, 53, 80, 443, 1024, 8080, 65534, 65535];

fn port_seed() -> impl Strategy<Value = PortSeed> {
    prop_oneof![
        3 => (0usize..PORT_EDGES.len()).prop_map(PortSeed::Edge),
        1 => any::<u16>().prop_map(PortSeed::Any),
    ]
}

impl PortSeed {
    fn port(&self) -> u16 {
        match self {
            Self::Edge(i) => PORT_EDGES[*i],
            Self::Any(p) => *p,
        }
    }
}

const ICMP_TYPES: [u8; 6] = [0, 3, 8, 128, 129, 255];

#[derive(Clone, Debug)]
enum L4Seed {
    Any,
    /// (protocol choice, first, last); 3 is `ANY`, 4 is "no port".
    Ports(Vec<(u8, PortSeed, PortSeed)>),
    /// (IPv6 family, type).
    Icmp(Vec<(bool, u8)>),
}

fn l4_seed() -> impl Strategy<Value = L4Seed> {
    let icmp_type = prop_oneof![
        3 => (0usize..ICMP_TYPES.len()).prop_map(|i| ICMP_TYPES[i]),
        1 => any::<u8>(),
    ];
    prop_oneof![
        2 => Just(L4Seed::Any),
        4 => prop::collection::vec((0u8..5, port_seed(), port_seed()), 1..3).prop_map(L4Seed::Ports),
        1 => prop::collection::vec((any::<bool>(), icmp_type), 1..3).prop_map(L4Seed::Icmp),
    ]
}

fn build_l4(seed: &L4Seed) -> L4 {
    match seed {
        L4Seed::Any => L4::Any,
        L4Seed::Ports(ranges) => L4::Ports(
            ranges
                .iter()
                .map(|(proto, a, b)| {
                    let protocols = match proto % 5 {
                        0 => vec![PortProto::Tcp],
                        1 => vec![PortProto::Udp],
                        2 => vec![PortProto::Sctp],
                        _ => PortProto::ALL.to_vec(),
                    };
                    let (first, last) = if proto % 5 == 4 {
                        (0, u16::MAX)
                    } else {
                        let (a, b) = (a.port().max(1), b.port().max(1));
                        (a.min(b), a.max(b))
                    };
                    PortRange {
                        protocols,
                        first,
                        last,
                    }
                })
                .collect(),
        ),
        L4Seed::Icmp(types) => L4::Icmp(
            types
                .iter()
                .map(|(v6, t)| (if *v6 { IcmpFamily::V6 } else { IcmpFamily::V4 }, *t))
                .collect(),
        ),
    }
}

#[derive(Clone, Debug)]
struct RuleSeed {
    peers: Vec<PeerSeed>,
    l4: L4Seed,
}

fn rule_seed() -> impl Strategy<Value = RuleSeed> {
    (prop::collection::vec(peer_seed(), 0..3), l4_seed())
        .prop_map(|(peers, l4)| RuleSeed { peers, l4 })
}

#[derive(Clone, Debug)]
struct PolicySeed {
    subject: Vec<ReqSeed>,
    has_section: bool,
    default_deny: bool,
    allow: Vec<RuleSeed>,
    deny: Vec<RuleSeed>,
    /// Ingress rules do not decide egress, but their CIDRs still reach the
    /// ipcache.
    ingress: Vec<RuleSeed>,
}

fn policy_seed() -> impl Strategy<Value = PolicySeed> {
    (
        selector_seed(),
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.8),
        prop::collection::vec(rule_seed(), 0..4),
        prop::collection::vec(rule_seed(), 0..3),
        prop::collection::vec(rule_seed(), 0..2),
    )
        .prop_map(
            |(subject, has_section, default_deny, allow, deny, ingress)| PolicySeed {
                subject,
                has_section,
                default_deny,
                allow,
                deny,
                ingress,
            },
        )
}

#[derive(Clone, Debug)]
struct EndpointSeed {
    /// Index into the world's label-set pool, so some endpoints share sets.
    labels: usize,
    v4: Option<AddrSeed>,
    v6: Option<AddrSeed>,
}

fn endpoint_seed() -> impl Strategy<Value = EndpointSeed> {
    let v4 = (0u32..1024).prop_map(AddrSeed::V4);
    let v6 = prop_oneof![
        3 => (0u128..64).prop_map(AddrSeed::V6),
        1 => (0u8..4, 0u128..64).prop_map(|(hi, lo)| AddrSeed::V6((u128::from(hi) << 64) | lo)),
    ];
    (
        any::<usize>(),
        prop::option::weighted(0.8, v4),
        prop::option::weighted(0.5, v6),
    )
        .prop_map(|(labels, v4, v6)| EndpointSeed { labels, v4, v6 })
}

#[derive(Clone, Debug)]
struct EntrySeed {
    prefix: PrefixSeed,
    /// `Ok`: a set from the pool (possibly an endpoint's); `Err`: its own.
    labels: Result<usize, LabelsSeed>,
    /// Another host's node address: labelled `reserved:remote-node` only,
    /// whatever `labels` says.
    node: bool,
}

fn entry_seed() -> impl Strategy<Value = EntrySeed> {
    (
        prefix_seed(),
        prop_oneof![
            1 => any::<usize>().prop_map(Ok),
            2 => labels_seed().prop_map(Err),
        ],
        prop::bool::weighted(0.2),
    )
        .prop_map(|(prefix, labels, node)| EntrySeed {
            prefix,
            labels,
            node,
        })
}

#[derive(Clone, Debug)]
struct QuerySeed {
    src: usize,
    /// 0 endpoint, 1 host, 2 ipcache entry, 3 policy CIDR or except,
    /// 4 random in the test ranges, 5 outside them.
    dst_kind: u8,
    dst_pick: usize,
    dst_which: u8,
    dst_offset: u128,
    dst_free: AddrSeed,
    proto: usize,
    /// `Ok(i)`: the i-th rule edge (±1 by `edge_delta`); `Err(p)`: `p`.
    port: Result<usize, u16>,
    edge_delta: i8,
}

fn query_seed() -> impl Strategy<Value = QuerySeed> {
    (
        any::<usize>(),
        prop_oneof![3 => 0u8..1, 1 => 1u8..2, 3 => 2u8..3, 3 => 3u8..4, 2 => 4u8..5, 1 => 5u8..6],
        any::<usize>(),
        any::<u8>(),
        any::<u128>(),
        addr_seed(),
        0usize..PROTOCOLS.len(),
        prop_oneof![3 => any::<usize>().prop_map(Ok), 1 => any::<u16>().prop_map(Err)],
        -1i8..=1,
    )
        .prop_map(
            |(
                src,
                dst_kind,
                dst_pick,
                dst_which,
                dst_offset,
                dst_free,
                proto,
                port,
                edge_delta,
            )| {
                QuerySeed {
                    src,
                    dst_kind,
                    dst_pick,
                    dst_which,
                    dst_offset,
                    dst_free,
                    proto,
                    port,
                    edge_delta,
                }
            },
        )
}

const PROTOCOLS: [u8; 6] = [1, 6, 17, 58, 132, 47];

#[derive(Clone, Debug)]
struct WorldSeed {
    pool: Vec<LabelsSeed>,
    endpoints: Vec<EndpointSeed>,
    hosts: Vec<AddrSeed>,
    entries: Vec<EntrySeed>,
    policies: Vec<PolicySeed>,
    queries: Vec<QuerySeed>,
}

fn world_seed() -> impl Strategy<Value = WorldSeed> {
    (
        prop::collection::vec(labels_seed(), 1..5),
        prop::collection::vec(endpoint_seed(), 1..7),
        prop::collection::vec(addr_seed(), 0..3),
        prop::collection::vec(entry_seed(), 0..5),
        prop::collection::vec(policy_seed(), 0..6),
        prop::collection::vec(query_seed(), 24),
    )
        .prop_map(
            |(pool, endpoints, hosts, entries, policies, queries)| WorldSeed {
                pool,
                endpoints,
                hosts,
                entries,
                policies,
                queries,
            },
        )
}

// ---- building a world from its seed ----

/// A query, resolved against its world.
#[derive(Clone, Copy, Debug)]
struct Query {
    src: usize,
    dst: IpAddr,
    proto: u8,
    port: u16,
}

/// Hands out addresses not used yet: a taken one is bumped to the next free.
#[derive(Default)]
struct Addresses(BTreeSet<IpAddr>);

impl Addresses {
    fn claim(&mut self, mut a: IpAddr) -> IpAddr {
        while !self.0.insert(a) {
            a = step(a, 1);
        }
        a
    }
}

fn build_world(seed: &WorldSeed) -> (World, Vec<Query>) {
    let pool: Vec<LabelSet> = seed.pool.iter().map(LabelsSeed::build).collect();

    let mut used = Addresses::default();
    let mut endpoints = Vec::new();
    for (i, e) in seed.endpoints.iter().enumerate() {
        let mut ipv4 = e.v4.as_ref().map(|a| used.claim(a.addr()));
        let ipv6 = e.v6.as_ref().map(|a| used.claim(a.addr()));
        if ipv4.is_none() && ipv6.is_none() {
            ipv4 = Some(used.claim(v4(i as u32)));
        }
        endpoints.push(Endpoint::new(
            &format!("ep{i}"),
            pool[e.labels % pool.len()].clone(),
            ipv4.map(|a| match a {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => unreachable!("claimed from a v4 seed"),
            }),
            ipv6.map(|a| match a {
                IpAddr::V6(a) => a,
                IpAddr::V4(_) => unreachable!("claimed from a v6 seed"),
            }),
        ));
    }
    let endpoint_addrs: Vec<IpAddr> = endpoints.iter().flat_map(|e| e.addresses()).collect();
    let host_addresses: Vec<IpAddr> = seed.hosts.iter().map(|h| used.claim(h.addr())).collect();

    let anchor_addr = |anchor: &Anchor, entries: &[StaticEntry]| -> Option<(IpAddr, Option<u8>)> {
        match anchor {
            Anchor::Endpoint(i) => (!endpoint_addrs.is_empty())
                .then(|| (endpoint_addrs[i % endpoint_addrs.len()], None)),
            Anchor::Host(i) => (!host_addresses.is_empty())
                .then(|| (host_addresses[i % host_addresses.len()], None)),
            Anchor::Entry(i) => (!entries.is_empty()).then(|| {
                let p = entries[i % entries.len()].prefix;
                (p.addr(), Some(p.prefix_len()))
            }),
            Anchor::Free(a) => Some((a.addr(), None)),
        }
    };
    let prefix_of = |seed: &PrefixSeed, entries: &[StaticEntry], cidr: bool| -> IpNet {
        let (addr, entry_len) = anchor_addr(&seed.anchor, entries).unwrap_or((v4(0), None));
        let len = match (entry_len, seed.same, addr.is_ipv4(), cidr) {
            (Some(l), true, _, _) => l,
            (_, _, true, false) => V4_LENS[seed.len % V4_LENS.len()],
            (_, _, false, false) => V6_LENS[seed.len % V6_LENS.len()],
            (_, _, true, true) => V4_CIDR_LENS[seed.len % V4_CIDR_LENS.len()],
            (_, _, false, true) => V6_CIDR_LENS[seed.len % V6_CIDR_LENS.len()],
        };
        net(addr, len)
    };

    let mut ipcache: Vec<StaticEntry> = Vec::new();
    for e in &seed.entries {
        let prefix = prefix_of(&e.prefix, &ipcache, false);
        // What `World::new` rejects: a repeated prefix, or one that is
        // exactly an endpoint's or the host's address.
        let is_address = |a: &IpAddr| IpNet::from(*a) == prefix;
        if ipcache.iter().any(|x| x.prefix == prefix)
            || endpoint_addrs.iter().any(is_address)
            || host_addresses.iter().any(is_address)
        {
            continue;
        }
        let mut labels = match &e.labels {
            _ if e.node => remote_node_labels(),
            Ok(i) => pool[i % pool.len()].clone(),
            Err(s) => s.build(),
        };
        if labels.is_empty() {
            labels = LabelSet::new(vec![Label::new("any", "app", "external")]).expect("one");
        }
        ipcache.push(StaticEntry { prefix, labels });
    }

    let build_rule = |index: usize, seed: &RuleSeed| -> Rule {
        let peers = seed
            .peers
            .iter()
            .map(|p| match p {
                PeerSeed::Selector(s) => Peer::Selector(build_selector(s)),
                PeerSeed::Entity(e) => Peer::Entity(
                    [
                        Entity::World,
                        Entity::Host,
                        Entity::RemoteNode,
                        Entity::Cluster,
                        Entity::All,
                    ][usize::from(*e % 5)],
                ),
                PeerSeed::Cidr(c) => {
                    let cidr = prefix_of(&c.prefix, &ipcache, true);
                    let max = if cidr.addr().is_ipv4() { 32 } else { 128 };
                    let except = c
                        .except
                        .iter()
                        .map(|(extra, offset, on_endpoint)| {
                            let len =
                                (u16::from(cidr.prefix_len()) + u16::from(*extra)).min(max) as u8;
                            let at = on_endpoint
                                .and_then(|i| {
                                    let inside: Vec<&IpAddr> = endpoint_addrs
                                        .iter()
                                        .filter(|a| cidr.contains(*a))
                                        .collect();
                                    (!inside.is_empty()).then(|| *inside[i % inside.len()])
                                })
                                .unwrap_or_else(|| inside(&cidr, *offset));
                            net(at, len)
                        })
                        .collect();
                    Peer::Cidr(CidrSelector { cidr, except })
                }
            })
            .collect();
        Rule {
            index,
            peers,
            l4: build_l4(&seed.l4),
        }
    };
    let build_rules = |seeds: &[RuleSeed]| {
        seeds
            .iter()
            .enumerate()
            .map(|(i, r)| build_rule(i, r))
            .collect()
    };

    let policies: Vec<Policy> = seed
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| Policy {
            kind: PolicyKind::CiliumNetworkPolicy,
            name: format!("p{i}"),
            namespace: None,
            origin: Origin {
                file: PathBuf::from("props.yaml"),
                document: i,
            },
            subject: build_selector(&p.subject),
            egress: Direction {
                has_section: p.has_section,
                default_deny: p.default_deny,
                allow: build_rules(&p.allow),
                deny: build_rules(&p.deny),
            }
            .into(),
            ingress: Direction {
                has_section: !p.ingress.is_empty(),
                default_deny: true,
                allow: build_rules(&p.ingress),
                deny: Vec::new(),
            }
            .into(),
        })
        .collect();

    let config = World::new(endpoints, ipcache, host_addresses, policies)
        .expect("a generated world keeps World's invariants");
    let queries = seed
        .queries
        .iter()
        .map(|q| resolve_query(&config, q))
        .collect();
    (config, queries)
}

/// Every CIDR and exception of every rule, egress or ingress.
fn policy_prefixes(config: &World) -> Vec<IpNet> {
    let mut out = Vec::new();
    for p in &config.policies {
        for rule in p
            .egress
            .allow
            .iter()
            .chain(&p.egress.deny)
            .chain(&p.ingress.allow)
        {
            for peer in &rule.peers {
                if let Peer::Cidr(c) = peer {
                    out.push(c.cidr);
                    out.extend(c.except.iter().copied());
                }
            }
        }
    }
    out
}

/// Port-range ends and ICMP types the egress rules name.
fn rule_edges(config: &World) -> Vec<u16> {
    let mut out = Vec::new();
    for p in &config.policies {
        for rule in p.egress.allow.iter().chain(&p.egress.deny) {
            match &rule.l4 {
                L4::Any => {}
                L4::Ports(ranges) => {
                    for r in ranges {
                        out.extend([r.first, r.last]);
                    }
                }
                L4::Icmp(types) => out.extend(types.iter().map(|(_, t)| u16::from(*t))),
            }
        }
    }
    out
}

fn resolve_query(config: &World, q: &QuerySeed) -> Query {
    let endpoint_addrs: Vec<IpAddr> = config
        .endpoints
        .iter()
        .flat_map(|e| e.addresses())
        .collect();
    let pick = |v: &[IpNet]| (!v.is_empty()).then(|| v[q.dst_pick % v.len()]);
    let dst = match q.dst_kind {
        0 => {
            (!endpoint_addrs.is_empty()).then(|| endpoint_addrs[q.dst_pick % endpoint_addrs.len()])
        }
        1 => (!config.host_addresses.is_empty())
            .then(|| config.host_addresses[q.dst_pick % config.host_addresses.len()]),
        2 => pick(&config.ipcache.iter().map(|e| e.prefix).collect::<Vec<_>>())
            .map(|p| prefix_probe(&p, q.dst_which, q.dst_offset)),
        3 => pick(&policy_prefixes(config)).map(|p| prefix_probe(&p, q.dst_which, q.dst_offset)),
        5 => Some(
            [
                IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
                IpAddr::V4(Ipv4Addr::new(198, 17, 255, 255)),
                IpAddr::V4(Ipv4Addr::new(198, 20, 0, 0)),
                IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb9, 0, 0, 0, 0, 0, 1)),
                IpAddr::V6(Ipv6Addr::new(
                    0x2001, 0xdb7, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
                )),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
            ][q.dst_pick % 8],
        ),
        _ => None,
    }
    .unwrap_or_else(|| q.dst_free.addr());

    let proto = PROTOCOLS[q.proto % PROTOCOLS.len()];
    let edges = rule_edges(config);
    let port = match q.port {
        Ok(i) if !edges.is_empty() => {
            edges[i % edges.len()].wrapping_add_signed(i16::from(q.edge_delta))
        }
        Ok(i) => PORT_EDGES[i % PORT_EDGES.len()],
        Err(p) => p,
    };
    // The port argument of an ICMP query is the ICMP type, 8 bits on the
    // wire; the compiled tables stop at 255 by design (see compile.rs).
    let port = if proto == 1 || proto == 58 {
        port & 0xff
    } else {
        port
    };
    Query {
        src: q.src % config.endpoints.len(),
        dst,
        proto,
        port,
    }
}

/// A compact picture of a world for failure messages.
fn describe(config: &World) -> String {
    let mut s = String::new();
    for (i, e) in config.endpoints.iter().enumerate() {
        let addrs: Vec<String> = e.addresses().map(|a| a.to_string()).collect();
        s += &format!(
            "  endpoint {i} {} [{}] {}\n",
            e.name,
            e.labels,
            addrs.join(" ")
        );
    }
    for e in &config.ipcache {
        s += &format!("  ipcache {} [{}]\n", e.prefix, e.labels);
    }
    for a in &config.host_addresses {
        s += &format!("  host {a}\n");
    }
    for (i, p) in config.policies.iter().enumerate() {
        s += &format!(
            "  policy {i} subject {} has_section={} default_deny={}\n",
            p.subject, p.egress.has_section, p.egress.default_deny
        );
        for (kind, rules) in [("deny", &p.egress.deny), ("allow", &p.egress.allow)] {
            for (ri, r) in rules.iter().enumerate() {
                let peers: Vec<String> = r
                    .peers
                    .iter()
                    .map(|p| match p {
                        Peer::Selector(s) => format!("sel({s})"),
                        Peer::Cidr(c) => format!("cidr({c})"),
                        Peer::Entity(e) => format!("entity({e})"),
                    })
                    .collect();
                s += &format!(
                    "    {kind}[{ri}] peers [{}] l4 {:?}\n",
                    peers.join(", "),
                    r.l4
                );
            }
        }
        for r in &p.ingress.allow {
            let cidrs: Vec<String> = r
                .peers
                .iter()
                .filter_map(|p| match p {
                    Peer::Cidr(c) => Some(c.to_string()),
                    _ => None,
                })
                .collect();
            if !cidrs.is_empty() {
                s += &format!("    ingress cidrs [{}]\n", cidrs.join(", "));
            }
        }
    }
    s
}

/// Both engines on one query; `Err` describes a disagreement.
fn compare(engine: &Engine, q: &Query) -> Result<Decision, String> {
    let config = &engine.world;
    let want = reference::decide(config, &config.endpoints[q.src], q.dst, q.proto, q.port);
    let have = engine.check(q.src, q.dst, q.proto, q.port).decision;
    if want == have {
        Ok(want)
    } else {
        Err(format!(
            "from endpoint {} to {} proto {} port {}: reference {:?}, compiled {:?}\n{}",
            q.src,
            q.dst,
            q.proto,
            q.port,
            want,
            have,
            describe(config)
        ))
    }
}

/// Builds the world of `seed` and asks both engines every query.
fn agree(seed: &WorldSeed) -> Result<(), TestCaseError> {
    let (config, queries) = build_world(seed);
    let engine = Engine::new(&config).expect("a small world allocates");
    for q in &queries {
        if let Err(message) = compare(&engine, q) {
            prop_assert!(false, "{}", message);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compiled_engine_agrees_with_reference(seed in world_seed()) {
        agree(&seed)?;
    }
}

// ---- hand-written cases from the spec ----

fn ep(name: &str, labels: &[(&str, &str)], ipv4: [u8; 4]) -> Endpoint {
    Endpoint::new(
        name,
        LabelSet::from_pairs(labels.iter().copied()).expect("valid labels"),
        Some(Ipv4Addr::from(ipv4)),
        None,
    )
}

fn sel(pairs: &[(&str, &str)]) -> Selector {
    Selector {
        requirements: pairs
            .iter()
            .map(|(k, v)| Requirement {
                key: LabelKey::parse(k).expect("valid key"),
                operator: Operator::In,
                values: vec![v.to_string()],
            })
            .collect(),
    }
}

fn cidr(c: &str, except: &[&str]) -> Peer {
    Peer::Cidr(CidrSelector {
        cidr: c.parse().expect("valid CIDR"),
        except: except
            .iter()
            .map(|e| e.parse().expect("valid CIDR"))
            .collect(),
    })
}

fn rule(peers: Vec<Peer>, l4: L4) -> Rule {
    Rule {
        index: 0,
        peers,
        l4,
    }
}

fn tcp(first: u16, last: u16) -> L4 {
    L4::Ports(vec![PortRange {
        protocols: vec![PortProto::Tcp],
        first,
        last,
    }])
}

fn policy(subject: Selector, allow: Vec<Rule>, deny: Vec<Rule>) -> Policy {
    Policy {
        kind: PolicyKind::CiliumNetworkPolicy,
        name: "p".into(),
        namespace: None,
        origin: Origin {
            file: PathBuf::from("spec.yaml"),
            document: 0,
        },
        subject,
        egress: Direction {
            has_section: true,
            default_deny: true,
            allow,
            deny,
        }
        .into(),
        ingress: Direction::default().into(),
    }
}

/// Two endpoints, `client` (app=client, 198.18.0.10) and `server`
/// (app=server, 198.18.0.20), one labelled entry 198.18.1.0/24 (app=remote),
/// two remote nodes (198.18.2.7 and 2001:db8::7) and the host at
/// 198.18.0.1, with `policies` (named `p0`, `p1`, ... in order, as a
/// world's policies are unique).
fn spec_world(mut policies: Vec<Policy>) -> Engine {
    for (i, p) in policies.iter_mut().enumerate() {
        p.name = format!("p{i}");
    }
    let world = World::new(
        vec![
            ep("client", &[("app", "client")], [198, 18, 0, 10]),
            ep("server", &[("app", "server")], [198, 18, 0, 20]),
        ],
        vec![
            StaticEntry {
                prefix: "198.18.1.0/24".parse().expect("valid"),
                labels: LabelSet::from_pairs([("app", "remote")]).expect("valid"),
            },
            StaticEntry {
                prefix: "198.18.2.7/32".parse().expect("valid"),
                labels: remote_node_labels(),
            },
            StaticEntry {
                prefix: "2001:db8::7/128".parse().expect("valid"),
                labels: remote_node_labels(),
            },
        ],
        vec!["198.18.0.1".parse().expect("valid")],
        policies,
    )
    .expect("a valid world");
    Engine::new(&world).expect("engine")
}

/// Asks both engines from `client`; both must give `want`.
fn expect(engine: &Engine, dst: &str, proto: u8, port: u16, want: Cause) {
    let q = Query {
        src: 0,
        dst: dst.parse().expect("valid address"),
        proto,
        port,
    };
    match compare(engine, &q) {
        Ok(decision) => assert_eq!(decision, Decision::from_cause(want), "to {dst}"),
        Err(message) => panic!("{message}"),
    }
}

fn allow_ref(policy: u32, rule: u32) -> Cause {
    Cause::Allow(RuleRef {
        policy,
        deny: false,
        rule,
    })
}

fn deny_ref(policy: u32, rule: u32) -> Cause {
    Cause::Deny(RuleRef {
        policy,
        deny: true,
        rule,
    })
}

#[test]
fn cidr_does_not_match_an_endpoint_address() {
    let e = spec_world(vec![policy(
        sel(&[("app", "client")]),
        vec![rule(vec![cidr("198.18.0.0/16", &[])], L4::Any)],
        vec![],
    )]);
    expect(&e, "198.18.0.20", 6, 80, Cause::DefaultDeny);
    expect(&e, "198.18.0.1", 6, 80, Cause::DefaultDeny);
    expect(&e, "198.18.0.21", 6, 80, allow_ref(0, 0));
}

#[test]
fn labelled_entry_beats_a_longer_policy_cidr() {
    let e = spec_world(vec![policy(
        sel(&[("app", "client")]),
        vec![rule(vec![cidr("198.18.1.128/25", &[])], L4::Any)],
        vec![],
    )]);
    expect(&e, "198.18.1.200", 6, 80, Cause::DefaultDeny);
    expect(&e, "198.18.2.200", 6, 80, Cause::DefaultDeny);
}

#[test]
fn cidr_except_carves_out_addresses() {
    let e = spec_world(vec![policy(
        sel(&[("app", "client")]),
        vec![rule(
            vec![cidr("198.19.0.0/16", &["198.19.4.0/24"])],
            tcp(443, 443),
        )],
        vec![],
    )]);
    expect(&e, "198.19.3.255", 6, 443, allow_ref(0, 0));
    expect(&e, "198.19.4.0", 6, 443, Cause::DefaultDeny);
    expect(&e, "198.19.4.255", 6, 443, Cause::DefaultDeny);
    expect(&e, "198.19.5.0", 6, 443, allow_ref(0, 0));
    expect(&e, "198.19.5.0", 6, 444, Cause::DefaultDeny);
    expect(&e, "198.19.5.0", 17, 443, Cause::DefaultDeny);
}

#[test]
fn deny_beats_allow_whatever_the_order() {
    let e = spec_world(vec![
        policy(
            sel(&[("app", "client")]),
            vec![rule(vec![], L4::Any)],
            vec![],
        ),
        policy(
            Selector::all(),
            vec![],
            vec![rule(
                vec![Peer::Selector(sel(&[("app", "server")]))],
                tcp(1, 1024),
            )],
        ),
    ]);
    expect(&e, "198.18.0.20", 6, 80, deny_ref(1, 0));
    expect(&e, "198.18.0.20", 6, 1025, allow_ref(0, 0));
    expect(&e, "198.18.0.20", 17, 80, allow_ref(0, 0));
}

#[test]
fn empty_selector_does_not_select_world_or_host() {
    let e = spec_world(vec![policy(
        sel(&[("app", "client")]),
        vec![rule(vec![Peer::Selector(Selector::all())], L4::Any)],
        vec![],
    )]);
    expect(&e, "198.18.0.20", 6, 80, allow_ref(0, 0));
    expect(&e, "198.18.1.7", 6, 80, allow_ref(0, 0));
    expect(&e, "198.18.0.1", 6, 80, Cause::DefaultDeny);
    expect(&e, "8.8.8.8", 6, 80, Cause::DefaultDeny);
}

#[test]
fn reserved_host_selector_selects_the_host() {
    let e = spec_world(vec![policy(
        sel(&[("app", "client")]),
        vec![rule(
            vec![Peer::Selector(sel(&[("reserved:host", "")]))],
            L4::Any,
        )],
        vec![],
    )]);
    expect(&e, "198.18.0.1", 6, 22, allow_ref(0, 0));
    expect(&e, "198.18.0.20", 6, 22, Cause::DefaultDeny);
    expect(&e, "8.8.8.8", 6, 22, Cause::DefaultDeny);
}

#[test]
fn remote_node_entity_selects_the_node_addresses_only() {
    let e = spec_world(vec![policy(
        sel(&[("app", "client")]),
        vec![rule(vec![Peer::Entity(Entity::RemoteNode)], tcp(1, 1024))],
        vec![],
    )]);
    for node in ["198.18.2.7", "2001:db8::7"] {
        expect(&e, node, 6, 443, allow_ref(0, 0));
        expect(&e, node, 6, 8080, Cause::DefaultDeny);
    }
    // Endpoints, a labelled entry, the host, and world addresses beside
    // the nodes are not remote nodes.
    for other in [
        "198.18.0.20",
        "198.18.1.7",
        "198.18.0.1",
        "198.18.2.8",
        "2001:db8::6",
    ] {
        expect(&e, other, 6, 443, Cause::DefaultDeny);
    }
}

#[test]
fn only_a_reserved_selector_selects_a_remote_node() {
    let node = sel(&[("reserved:remote-node", "")]);
    let e = spec_world(vec![policy(
        sel(&[("app", "client")]),
        vec![
            rule(vec![Peer::Selector(node)], tcp(1, 1)),
            rule(vec![Peer::Selector(Selector::all())], tcp(2, 2)),
        ],
        vec![],
    )]);
    expect(&e, "198.18.2.7", 6, 1, allow_ref(0, 0));
    expect(&e, "198.18.2.7", 6, 2, Cause::DefaultDeny);
    expect(&e, "198.18.0.20", 6, 1, Cause::DefaultDeny);
    expect(&e, "198.18.0.20", 6, 2, allow_ref(0, 1));
    expect(&e, "198.18.0.1", 6, 1, Cause::DefaultDeny);
}

#[test]
fn a_cidr_around_a_remote_node_does_not_select_it() {
    let e = spec_world(vec![policy(
        sel(&[("app", "client")]),
        vec![rule(vec![cidr("198.18.2.0/24", &[])], L4::Any)],
        vec![],
    )]);
    expect(&e, "198.18.2.7", 6, 80, Cause::DefaultDeny);
    expect(&e, "198.18.2.8", 6, 80, allow_ref(0, 0));
}

#[test]
fn entities_split_the_destinations() {
    let e = spec_world(vec![policy(
        sel(&[("app", "client")]),
        vec![
            rule(vec![Peer::Entity(Entity::World)], tcp(1, 1)),
            rule(vec![Peer::Entity(Entity::Host)], tcp(2, 2)),
            rule(vec![Peer::Entity(Entity::Cluster)], tcp(3, 3)),
            rule(vec![Peer::Entity(Entity::All)], tcp(4, 4)),
            rule(vec![Peer::Entity(Entity::RemoteNode)], tcp(5, 5)),
        ],
        vec![],
    )]);
    for (dst, world, host, cluster, node) in [
        ("8.8.8.8", true, false, false, false),
        ("198.19.0.7", true, false, false, false),
        ("2001:db8::8", true, false, false, false),
        ("198.18.0.1", false, true, true, false),
        ("198.18.0.20", false, false, true, false),
        ("198.18.1.1", false, false, true, false),
        ("198.18.2.7", false, false, true, true),
        ("2001:db8::7", false, false, true, true),
    ] {
        for (port, hit) in [(1, world), (2, host), (3, cluster), (4, true), (5, node)] {
            let want = if hit {
                allow_ref(0, u32::from(port) - 1)
            } else {
                Cause::DefaultDeny
            };
            expect(&e, dst, 6, port, want);
        }
    }
}

#[test]
fn icmp_and_any_protocol_rules() {
    let e = spec_world(vec![policy(
        sel(&[("app", "client")]),
        vec![
            rule(vec![], L4::Icmp(vec![(IcmpFamily::V4, 8)])),
            rule(
                vec![Peer::Entity(Entity::Host)],
                L4::Ports(vec![PortRange {
                    protocols: PortProto::ALL.to_vec(),
                    first: 1,
                    last: 65535,
                }]),
            ),
        ],
        vec![],
    )]);
    expect(&e, "8.8.8.8", 1, 8, allow_ref(0, 0));
    expect(&e, "8.8.8.8", 1, 0, Cause::DefaultDeny);
    expect(&e, "8.8.8.8", 58, 8, Cause::DefaultDeny);
    expect(&e, "198.18.0.1", 132, 65535, allow_ref(0, 1));
    expect(&e, "198.18.0.1", 17, 0, Cause::DefaultDeny);
    expect(&e, "198.18.0.1", 47, 0, Cause::DefaultDeny);
}

#[test]
fn defaults_follow_the_selecting_policies() {
    let mut off = policy(sel(&[("app", "client")]), vec![], vec![]);
    std::sync::Arc::make_mut(&mut off.egress).default_deny = false;
    let e = spec_world(vec![off.clone()]);
    expect(&e, "8.8.8.8", 6, 80, Cause::DefaultAllow);

    let mut no_section = policy(Selector::all(), vec![rule(vec![], L4::Any)], vec![]);
    std::sync::Arc::make_mut(&mut no_section.egress).has_section = false;
    let e = spec_world(vec![no_section]);
    expect(&e, "8.8.8.8", 6, 80, Cause::NoPolicy);

    let e = spec_world(vec![off, policy(sel(&[("app", "server")]), vec![], vec![])]);
    expect(&e, "8.8.8.8", 6, 80, Cause::DefaultAllow);
}

// ---- disagreements found by the properties, pinned as minimal cases ----
//
// Both fail today: the reference follows the model's semantics and the
// compiled path does not. They are left failing on purpose.

/// A policy CIDR equal to a labelled prefix (an endpoint's /32, a host
/// address, a static entry's prefix) must not take that prefix over: CIDR
/// peers match only addresses nothing labelled claims. Today the inventory
/// inserts the CIDR's prefix into the ipcache after the labelled one, and the
/// ipcache moves an existing prefix into the CIDR tier, so the endpoint turns
/// into a CIDR identity: its selector stops matching and the CIDR starts to.
#[test]
fn regression_policy_cidr_equal_to_an_endpoint_address() {
    let e = spec_world(vec![policy(
        sel(&[("app", "client")]),
        vec![
            rule(vec![Peer::Selector(sel(&[("app", "server")]))], L4::Any),
            rule(vec![cidr("198.18.0.20/32", &[])], L4::Any),
        ],
        vec![],
    )]);
    expect(&e, "198.18.0.20", 6, 80, allow_ref(0, 0));
}

/// The same for the host's address and a static entry's prefix.
#[test]
fn regression_policy_cidr_equal_to_host_or_entry_prefix() {
    let e = spec_world(vec![policy(
        sel(&[("app", "client")]),
        vec![rule(
            vec![cidr("198.18.0.1/32", &[]), cidr("198.18.1.0/24", &[])],
            L4::Any,
        )],
        vec![],
    )]);
    expect(&e, "198.18.0.1", 6, 80, Cause::DefaultDeny);
    expect(&e, "198.18.1.7", 6, 80, Cause::DefaultDeny);
}

fn reserved_world_selector() -> Selector {
    Selector {
        requirements: vec![Requirement {
            key: LabelKey::new("reserved", "world"),
            operator: Operator::Exists,
            values: Vec::new(),
        }],
    }
}

#[test]
fn reserved_world_selector_selects_the_world() {
    let e = spec_world(vec![policy(
        sel(&[("app", "client")]),
        vec![rule(
            vec![Peer::Selector(reserved_world_selector())],
            L4::Any,
        )],
        vec![],
    )]);
    expect(&e, "8.8.8.8", 6, 80, allow_ref(0, 0));
    expect(&e, "198.18.0.1", 6, 80, Cause::DefaultDeny);
    expect(&e, "198.18.0.20", 6, 80, Cause::DefaultDeny);
}

/// A selector naming `reserved:world` selects every world address, also the
/// ones some other policy's CIDR happens to cover (here only an ingress
/// rule's). Today a world address under any policy CIDR gets a CIDR
/// identity, and a selector is only ever tried on endpoint, entry, host and
/// world identities, never on CIDR ones, so the allow silently stops
/// applying once an unrelated policy mentions 8.8.0.0/16.
#[test]
fn regression_reserved_world_selector_under_a_policy_cidr() {
    let allow_world = policy(
        sel(&[("app", "client")]),
        vec![rule(
            vec![Peer::Selector(reserved_world_selector())],
            L4::Any,
        )],
        vec![],
    );
    let mut ingress_only = policy(sel(&[("app", "server")]), vec![], vec![]);
    ingress_only.egress = Direction::default().into();
    ingress_only.ingress = Direction {
        has_section: true,
        default_deny: true,
        allow: vec![rule(vec![cidr("8.8.0.0/16", &[])], L4::Any)],
        deny: Vec::new(),
    }
    .into();
    let e = spec_world(vec![allow_world, ingress_only]);
    expect(&e, "8.8.8.8", 6, 80, allow_ref(0, 0));
}
