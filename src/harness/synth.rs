//! Synthetic worlds for benchmarks: an engine with a chosen number of
//! ipcache entries, identities and rules, and frames that exercise it. Only
//! memory is involved; addresses come from the benchmarking ranges
//! 198.18.0.0/15 and 2001:db8::/32.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use rand::rngs::SmallRng;
use rand::{Rng as _, RngCore, SeedableRng};

use crate::engine::{Engine, EngineError};
use crate::identity::NumericIdentity;
use crate::ipcache::Origin;
use crate::labels::{Label, LabelKey, LabelSet, Operator, Requirement, Selector};
use crate::policy::model::{
    Direction, Origin as PolicyOrigin, Peer, Policy, PolicyKind, PortProto, PortRange, Rule, L4,
};
use crate::wire::build::{self, FrameAddrs};
use crate::world::{self, Endpoint, StaticEntry};

/// Shape of a synthetic world.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// ipcache entries in total (mostly /32 and /128, some shorter).
    pub ipcache_entries: usize,
    /// Distinct remote identities the entries are spread over.
    pub identities: usize,
    /// Egress allow rules in total (each names one identity and one TCP
    /// port), spread round-robin over one policy per local endpoint.
    pub rules: usize,
    /// Local endpoints, each with its own labels and its own policy, so each
    /// gets its own compiled table.
    pub endpoints: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            ipcache_entries: 100_000,
            identities: 1_000,
            rules: 1_000,
            endpoints: 1,
        }
    }
}

/// A seeded generator, so every run measures the same world.
#[derive(Clone, Debug)]
pub struct Rng(SmallRng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(SmallRng::seed_from_u64(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n.max(1))
    }
}

fn label(key: &str, value: &str) -> Label {
    Label::new("any", key, value)
}

fn service_labels(i: usize) -> LabelSet {
    LabelSet::new(vec![
        label("app", &format!("svc-{i}")),
        label("env", "bench"),
    ])
    .expect("distinct keys")
}

/// The whole synthetic world: engine plus the addresses in its ipcache.
pub struct World {
    pub engine: Engine,
    /// Destination addresses that hit entries, in insertion order.
    pub destinations: Vec<IpAddr>,
    /// Rules in total and identities they are spread over (rule `r` allows
    /// TCP port `10000 + r` to identity `r % identities`; destination `j` has
    /// identity `j % identities`).
    pub rules: usize,
    pub identities: usize,
    /// Local endpoints; endpoint `e` owns the rules `r % endpoints == e`.
    pub endpoints: usize,
}

/// Builds a world of `shape`: one policy selecting the local endpoints with
/// `rules` rules `toEndpoints: app=svc-k, toPorts: TCP 10000+i`.
pub fn world(shape: Shape) -> Result<World, EngineError> {
    let identities = shape.identities.max(1);
    let n_endpoints = shape.endpoints.clamp(1, 4096);
    let endpoints = (0..n_endpoints)
        .map(|i| Endpoint {
            name: format!("ep{i}"),
            netns: format!("ep{i}"),
            host_ifname: format!("xpf-ep{i}"),
            existing: false,
            labels: endpoint_labels(i),
            ipv4: Some(Ipv4Addr::from(
                u32::from(Ipv4Addr::new(198, 19, 240, 1)) + i as u32,
            )),
            ipv6: Some(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0xffff,
                0,
                0,
                0,
                0,
                1 + i as u16,
            )),
        })
        .collect();
    // One static entry per identity defines it; the rest go straight into
    // the ipcache (a config with a million label copies would measure the
    // YAML loader, not the datapath).
    let mut static_entries = Vec::with_capacity(identities);
    for i in 0..identities {
        static_entries.push(StaticEntry {
            prefix: IpNet::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, i as u16, 0, 0, 0, 0)),
                64,
            )
            .expect("valid prefix"),
            labels: service_labels(i),
        });
    }
    let mut per_endpoint: Vec<Vec<Rule>> = vec![Vec::new(); n_endpoints];
    for i in 0..shape.rules {
        let list = &mut per_endpoint[i % n_endpoints];
        list.push(Rule {
            index: list.len(),
            peers: vec![Peer::Selector(Selector {
                requirements: vec![Requirement {
                    key: LabelKey::new("any", "app"),
                    operator: Operator::In,
                    values: vec![format!("svc-{}", i % identities)],
                }],
            })],
            l4: L4::Ports(vec![PortRange {
                protocols: vec![PortProto::Tcp],
                first: port_of(i),
                last: port_of(i),
            }]),
        });
    }
    let policies = per_endpoint
        .into_iter()
        .enumerate()
        .map(|(k, allow)| Policy {
            kind: PolicyKind::CiliumNetworkPolicy,
            name: format!("bench-{k}"),
            namespace: None,
            origin: PolicyOrigin {
                file: PathBuf::from("<synthetic>"),
                document: 0,
            },
            subject: Selector {
                requirements: vec![Requirement {
                    key: LabelKey::new("any", "client"),
                    operator: Operator::In,
                    values: vec![k.to_string()],
                }],
            },
            egress: Direction {
                has_section: true,
                default_deny: true,
                allow,
                deny: Vec::new(),
            }
            .into(),
            ingress: Direction::default().into(),
        })
        .collect();
    let enforced = world::World::new(endpoints, static_entries, Vec::new(), policies)
        .expect("a synthetic world is valid");
    let mut engine = Engine::new(&enforced)?;

    let ids: Vec<NumericIdentity> = (0..identities)
        .map(|i| {
            engine
                .inventory
                .identities
                .values()
                .find(|info| info.labels == service_labels(i))
                .map(|info| info.id)
                .expect("identity allocated for every static entry")
        })
        .collect();
    let extra = shape.ipcache_entries.saturating_sub(engine.ipcache.len());
    let mut destinations = Vec::with_capacity(identities + extra);
    // One address inside each identity-defining /64 first, so destination
    // `j` has identity `j % identities` throughout.
    for i in 0..identities {
        destinations.push(IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 2, i as u16, 0, 0, 0, 1,
        )));
    }
    let mut rng = Rng::new(0x5eed);
    for n in 0..extra {
        let i = identities + n;
        let id = ids[i % identities];
        // One entry in 64 is a shorter prefix, so lookups see mixed lengths.
        let (prefix, addr) = if i % 64 == 63 {
            let a = IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                3,
                i as u16,
                (i >> 16) as u16,
                0,
                0,
                0,
            ));
            (IpNet::new(a, 80).expect("valid"), a)
        } else if i < 100_000 && i % 5 != 4 {
            // IPv4 host entries fill 198.18.0.0/15 below the endpoints.
            let a = IpAddr::V4(Ipv4Addr::from(
                u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32,
            ));
            (IpNet::from(a), a)
        } else {
            let a = IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                1,
                (i >> 32) as u16,
                (i >> 16) as u16,
                rng.next_u64() as u16,
                0,
                i as u16,
            ));
            (IpNet::from(a), a)
        };
        engine.ipcache.insert(prefix, id, Origin::Labelled);
        destinations.push(addr);
    }
    engine.ipcache.publish();
    Ok(World {
        engine,
        destinations,
        rules: shape.rules,
        identities,
        endpoints: n_endpoints,
    })
}

fn endpoint_labels(i: usize) -> LabelSet {
    LabelSet::new(vec![
        label("app", "client"),
        label("client", &i.to_string()),
        label("env", "bench"),
    ])
    .expect("distinct keys")
}

fn port_of(rule: usize) -> u16 {
    10_000 + (rule % 50_000) as u16
}

/// `count` TCP SYN frames (64 bytes on the wire for IPv4) from endpoint 0 to
/// random destinations of `world`; about half use the port a rule of
/// endpoint 0 allows towards that destination (when it has one).
pub fn frames(world: &World, count: usize, seed: u64) -> Vec<Vec<u8>> {
    let ep = &world.engine.world.endpoints[0];
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let j = rng.below(world.destinations.len());
            let dst = world.destinations[j];
            let src = match dst {
                IpAddr::V4(_) => IpAddr::V4(ep.ipv4.expect("synthetic endpoints have IPv4")),
                IpAddr::V6(_) => IpAddr::V6(ep.ipv6.expect("synthetic endpoints have IPv6")),
            };
            // Rules naming this destination's identity that endpoint 0 owns.
            let k = j % world.identities;
            let owned: Vec<usize> = (k..world.rules)
                .step_by(world.identities)
                .filter(|r| r % world.endpoints == 0)
                .collect();
            let dport = if rng.below(2) == 0 && !owned.is_empty() {
                port_of(owned[rng.below(owned.len())])
            } else {
                1 + rng.below(9_999) as u16
            };
            let mut buf = vec![0u8; 128];
            let addrs = FrameAddrs {
                src_mac: [0x02, 0, 0, 0, 0, 1],
                dst_mac: [0x02, 0, 0, 0, 0, 2],
                src,
                dst,
            };
            let len = build::tcp(&mut buf, &addrs, 40_000, dport, 0x02, 0).expect("fits");
            buf.truncate(len);
            buf
        })
        .collect()
}
