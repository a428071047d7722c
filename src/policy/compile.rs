//! Compiled egress policy: for each source identity, a table keyed by
//! destination identity that resolves (protocol, port) to a verdict in a few
//! memory accesses, like Cilium's per-endpoint policy map.
//!
//! Compilation evaluates every peer once against the identities it may
//! select (a selector cache; see `select`), groups endpoints by the exact
//! set of policies selecting them (endpoints with equal labels share a
//! table), and resolves all rules
//! touching a destination identity into disjoint port segments per protocol
//! class, so a lookup never weighs rules against each other:
//!
//! ```text
//! table[src] --(Fx hash on dst identity)--> entry --class--> segments --scan--> code
//! ```
//!
//! A code is 0 (no rule: the table's default applies) or a rule number plus
//! one, with [`DENY_BIT`] set for deny rules. Segments of a class cover its
//! whole port space, so the scan always ends. Identities no rule names by
//! identity share the table's fallback entry, built from the rules that
//! select every destination.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hashbrown::HashMap as FastMap;
use rustc_hash::FxBuildHasher;

use super::model::{proto, IcmpFamily, Peer, Policy, RuleRef, L4};
use super::select::{select, LabelIndex, Selected};
use super::{Cause, Decision};
use crate::identity::NumericIdentity;
use crate::inventory::{IdentityKind, Inventory};

/// Set in a code for deny rules.
pub const DENY_BIT: u32 = 1 << 31;

/// A verdict code as a table holds it: no rule matched (the table's
/// default applies), or the rule that did, allow or deny. Decoded only
/// here, so the hot path asks [`Code::allows`] and never looks at bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Code(pub u32);

impl Code {
    /// No rule matched.
    pub const NONE: Code = Code(0);

    /// Whether a rule matched.
    #[inline]
    pub fn is_rule(self) -> bool {
        self.0 != 0
    }

    /// Whether the rule that matched is a deny rule.
    #[inline]
    pub fn is_deny(self) -> bool {
        self.0 & DENY_BIT != 0
    }

    /// Whether a code from `table` lets the packet through.
    #[inline]
    pub fn allows(self, table: &EgressTable) -> bool {
        if self.0 == 0 {
            table.default != DefaultVerdict::DefaultDeny
        } else {
            !self.is_deny()
        }
    }

    /// Index of the matching rule in [`CompiledPolicy`]'s rule list.
    fn rule_index(self) -> Option<usize> {
        self.is_rule().then(|| ((self.0 & !DENY_BIT) - 1) as usize)
    }
}

/// Protocol classes a table distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Class {
    Tcp = 0,
    Udp = 1,
    Sctp = 2,
    Icmp = 3,
    Icmpv6 = 4,
    /// Every other IP protocol: no ports, only rules without L4 match.
    Other = 5,
}

const CLASSES: usize = 6;
const ALL_CLASSES: [Class; CLASSES] = [
    Class::Tcp,
    Class::Udp,
    Class::Sctp,
    Class::Icmp,
    Class::Icmpv6,
    Class::Other,
];

impl Class {
    #[inline]
    pub fn of(ip_proto: u8) -> Self {
        match ip_proto {
            proto::TCP => Self::Tcp,
            proto::UDP => Self::Udp,
            proto::SCTP => Self::Sctp,
            proto::ICMP => Self::Icmp,
            proto::ICMPV6 => Self::Icmpv6,
            _ => Self::Other,
        }
    }

    /// Highest "port" of the class: ports, ICMP types, or a single slot.
    fn top(self) -> u16 {
        match self {
            Self::Tcp | Self::Udp | Self::Sctp => u16::MAX,
            Self::Icmp | Self::Icmpv6 => u8::MAX as u16,
            Self::Other => 0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
            Self::Icmp => "icmp",
            Self::Icmpv6 => "icmpv6",
            Self::Other => "other",
        }
    }
}

/// One segment: ports up to and including `last` resolve to `code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    pub last: u16,
    pub code: u32,
}

/// The resolved rules towards one destination identity: per class, a run of
/// segments in the table's segment pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Entry {
    start: [u32; CLASSES],
    len: [u16; CLASSES],
}

/// What applies when no rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultVerdict {
    DefaultDeny,
    DefaultAllow,
    NoPolicy,
}

impl DefaultVerdict {
    fn cause(self) -> Cause {
        match self {
            Self::DefaultDeny => Cause::DefaultDeny,
            Self::DefaultAllow => Cause::DefaultAllow,
            Self::NoPolicy => Cause::NoPolicy,
        }
    }
}

/// The resolved segments of each protocol class of one entry.
pub type ClassSegments = Vec<(Class, Vec<Segment>)>;

/// The egress table of one group of endpoints.
#[derive(Debug)]
pub struct EgressTable {
    pub default: DefaultVerdict,
    /// Policies selecting this group, by position.
    pub policies: Vec<u32>,
    by_identity: FastMap<u32, Entry, FxBuildHasher>,
    fallback: Entry,
    segments: Vec<Segment>,
}

impl EgressTable {
    /// The code for a packet to `dst` with `ip_proto` and `port` (port or
    /// ICMP type; ignored for other protocols).
    #[inline]
    pub fn lookup_code(&self, dst: NumericIdentity, ip_proto: u8, port: u16) -> Code {
        let entry = self.by_identity.get(&dst.0).unwrap_or(&self.fallback);
        let class = Class::of(ip_proto) as usize;
        let start = entry.start[class] as usize;
        let segs = &self.segments[start..start + entry.len[class] as usize];
        let port = if class == Class::Other as usize {
            0
        } else {
            port
        };
        for s in segs {
            if port <= s.last {
                return Code(s.code);
            }
        }
        // Segments cover the class's whole range; a port above it (an ICMP
        // "type" above 255 cannot be parsed) falls to the default.
        Code::NONE
    }

    /// Destination identities with their own entry, sorted, and the
    /// resolved segments per class (for `xpf policy compile`).
    pub fn describe(&self) -> Vec<(Option<NumericIdentity>, ClassSegments)> {
        let mut ids: Vec<u32> = self.by_identity.keys().copied().collect();
        ids.sort_unstable();
        let show = |e: &Entry| {
            ALL_CLASSES
                .iter()
                .map(|c| {
                    let s = e.start[*c as usize] as usize;
                    (
                        *c,
                        self.segments[s..s + e.len[*c as usize] as usize].to_vec(),
                    )
                })
                .collect()
        };
        let mut out: Vec<_> = ids
            .into_iter()
            .map(|id| (Some(NumericIdentity(id)), show(&self.by_identity[&id])))
            .collect();
        out.push((None, show(&self.fallback)));
        out
    }
}

/// Compiled egress policy for every local endpoint identity.
#[derive(Debug)]
pub struct CompiledPolicy {
    tables: HashMap<NumericIdentity, Arc<EgressTable>>,
    /// Rule number (code - 1, without the deny bit) to the rule it names.
    rules: Vec<RuleRef>,
    no_policy: Arc<EgressTable>,
}

impl CompiledPolicy {
    /// The table for a source identity; endpoints that are not local (or
    /// unknown) get the empty "no policy" table.
    pub fn table(&self, src: NumericIdentity) -> &Arc<EgressTable> {
        self.tables.get(&src).unwrap_or(&self.no_policy)
    }

    /// Full verdict with cause.
    pub fn decide(
        &self,
        src: NumericIdentity,
        dst: NumericIdentity,
        ip_proto: u8,
        port: u16,
    ) -> Decision {
        let table = self.table(src);
        self.decision(table, table.lookup_code(dst, ip_proto, port))
    }

    /// Turns a code from `table` into a decision.
    pub fn decision(&self, table: &EgressTable, code: Code) -> Decision {
        let Some(rule) = self.rule(code) else {
            return Decision::from_cause(table.default.cause());
        };
        Decision::from_cause(if code.is_deny() {
            Cause::Deny(rule)
        } else {
            Cause::Allow(rule)
        })
    }

    /// The rule a code names.
    pub fn rule(&self, code: Code) -> Option<RuleRef> {
        code.rule_index().map(|i| self.rules[i])
    }
}

/// A rule's policy, the destinations it selects, and its port spans.
type RuleSpans = (u32, Selected, Vec<Span>);

/// One resolved contribution: a port range of a class, with its code.
#[derive(Clone, Copy, Debug)]
struct Span {
    class: Class,
    first: u16,
    last: u16,
    code: u32,
}

/// Compiles `policies` against the identities of `inventory`.
pub fn compile(policies: &[Policy], inventory: &Inventory) -> CompiledPolicy {
    let identities: Vec<_> = inventory.identities.values().collect();
    let world_labels = &inventory
        .identity(crate::identity::WORLD)
        .expect("the inventory always holds the world")
        .labels;

    // Rule numbers: allow and deny rules numbered in (policy, index) order,
    // so the lowest code of a kind is the first rule as written.
    let mut rules = Vec::new();
    let mut rule_spans: Vec<RuleSpans> = Vec::new();
    let mut selector_cache: HashMap<&Peer, Selected> = HashMap::new();
    let by_label = LabelIndex::of(&identities);
    for (pi, p) in policies.iter().enumerate() {
        for (deny, list) in [(true, &p.egress.deny), (false, &p.egress.allow)] {
            for (ri, rule) in list.iter().enumerate() {
                rules.push(RuleRef {
                    policy: pi as u32,
                    deny,
                    rule: ri as u32,
                });
                let mut code = rules.len() as u32;
                if deny {
                    code |= DENY_BIT;
                }
                let selected = if rule.peers.is_empty() {
                    Selected::All
                } else {
                    let mut ids: Vec<u32> = Vec::new();
                    let mut all = false;
                    for peer in &rule.peers {
                        let sel = selector_cache
                            .entry(peer)
                            .or_insert_with(|| select(peer, &identities, &by_label, world_labels));
                        match sel {
                            Selected::All => all = true,
                            Selected::Some(v) => ids.extend_from_slice(v),
                        }
                    }
                    if all {
                        Selected::All
                    } else {
                        ids.sort_unstable();
                        ids.dedup();
                        Selected::Some(ids)
                    }
                };
                rule_spans.push((pi as u32, selected, spans(&rule.l4, code)));
            }
        }
    }

    // Group source endpoints by the policies that select them.
    let mut groups: BTreeMap<Vec<u32>, Vec<NumericIdentity>> = BTreeMap::new();
    for info in identities
        .iter()
        .filter(|i| i.kind == IdentityKind::Endpoint)
    {
        let selecting: Vec<u32> = policies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.egress.has_section && p.subject.matches(&info.labels))
            .map(|(i, _)| i as u32)
            .collect();
        groups.entry(selecting).or_default().push(info.id);
    }

    let mut tables = HashMap::new();
    for (selecting, members) in groups {
        let table = Arc::new(build_table(policies, &selecting, &rule_spans));
        for id in members {
            tables.insert(id, Arc::clone(&table));
        }
    }
    CompiledPolicy {
        tables,
        rules,
        no_policy: Arc::new(build_table(policies, &[], &[])),
    }
}

fn spans(l4: &L4, code: u32) -> Vec<Span> {
    match l4 {
        L4::Any => ALL_CLASSES
            .iter()
            .map(|c| Span {
                class: *c,
                first: 0,
                last: c.top(),
                code,
            })
            .collect(),
        L4::Ports(ranges) => ranges
            .iter()
            .flat_map(|r| {
                r.protocols.iter().map(move |p| Span {
                    class: Class::of(p.number()),
                    first: r.first,
                    last: r.last,
                    code,
                })
            })
            .collect(),
        L4::Icmp(types) => types
            .iter()
            .map(|(family, t)| Span {
                class: match family {
                    IcmpFamily::V4 => Class::Icmp,
                    IcmpFamily::V6 => Class::Icmpv6,
                },
                first: *t as u16,
                last: *t as u16,
                code,
            })
            .collect(),
    }
}

fn build_table(policies: &[Policy], selecting: &[u32], rule_spans: &[RuleSpans]) -> EgressTable {
    let default = if selecting.is_empty() {
        DefaultVerdict::NoPolicy
    } else if selecting
        .iter()
        .any(|p| policies[*p as usize].egress.enables_default_deny())
    {
        DefaultVerdict::DefaultDeny
    } else {
        DefaultVerdict::DefaultAllow
    };

    let mut wild: Vec<Span> = Vec::new();
    let mut named: BTreeMap<u32, Vec<Span>> = BTreeMap::new();
    for (policy, selected, spans) in rule_spans {
        if selecting.binary_search(policy).is_err() {
            continue;
        }
        match selected {
            Selected::All => wild.extend_from_slice(spans),
            Selected::Some(ids) => {
                for id in ids {
                    named.entry(*id).or_default().extend_from_slice(spans);
                }
            }
        }
    }

    let mut builder = SegmentPool::default();
    let fallback = builder.entry(&wild);
    let mut by_identity = FastMap::with_capacity_and_hasher(named.len(), FxBuildHasher);
    for (id, mut spans) in named {
        spans.extend_from_slice(&wild);
        by_identity.insert(id, builder.entry(&spans));
    }
    EgressTable {
        default,
        policies: selecting.to_vec(),
        by_identity,
        fallback,
        segments: builder.segments,
    }
}

/// Builds segment runs, sharing identical runs between entries.
#[derive(Default)]
struct SegmentPool {
    segments: Vec<Segment>,
    runs: HashMap<Vec<Segment>, u32>,
}

impl SegmentPool {
    fn entry(&mut self, spans: &[Span]) -> Entry {
        let mut entry = Entry {
            start: [0; CLASSES],
            len: [0; CLASSES],
        };
        for class in ALL_CLASSES {
            let run = resolve(class, spans.iter().filter(|s| s.class == class));
            let start = match self.runs.get(&run) {
                Some(start) => *start,
                None => {
                    let start = self.segments.len() as u32;
                    self.segments.extend_from_slice(&run);
                    self.runs.insert(run.clone(), start);
                    start
                }
            };
            entry.start[class as usize] = start;
            entry.len[class as usize] = run.len() as u16;
        }
        entry
    }
}

/// Priority of a code: deny first, then the lowest rule number.
fn rank(code: u32) -> (bool, u32) {
    (code & DENY_BIT == 0, code & !DENY_BIT)
}

/// Resolves overlapping spans of one class into disjoint segments covering
/// `0..=class.top()`, each carrying the winning code (0 when none covers it).
fn resolve<'a>(class: Class, spans: impl Iterator<Item = &'a Span>) -> Vec<Segment> {
    // Sweep over span edges, keeping the codes active at each point.
    let mut events: Vec<(u32, bool, u32)> = Vec::new(); // (point, starts, code)
    for s in spans {
        events.push((s.first as u32, true, s.code));
        events.push((s.last as u32 + 1, false, s.code));
    }
    events.sort_unstable_by_key(|e| (e.0, e.1));
    let mut active: BTreeMap<(bool, u32), u32> = BTreeMap::new();
    let mut out: Vec<Segment> = Vec::new();
    let max = class.top() as u32;
    let mut pos = 0u32;
    let mut i = 0;
    while pos <= max {
        while i < events.len() && events[i].0 == pos {
            let (_, starts, code) = events[i];
            let key = rank(code);
            if starts {
                *active.entry(key).or_default() += 1;
            } else if let Some(n) = active.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    active.remove(&key);
                }
            }
            i += 1;
        }
        let next = events.get(i).map_or(max + 1, |e| e.0).min(max + 1);
        let code = active
            .keys()
            .next()
            .map_or(0, |(allow, n)| if *allow { *n } else { *n | DENY_BIT });
        match out.last_mut() {
            Some(last) if last.code == code => last.last = (next - 1) as u16,
            _ => out.push(Segment {
                last: (next - 1) as u16,
                code,
            }),
        }
        pos = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(class: Class, first: u16, last: u16, code: u32) -> Span {
        Span {
            class,
            first,
            last,
            code,
        }
    }

    fn code_at(segs: &[Segment], port: u16) -> u32 {
        segs.iter().find(|s| port <= s.last).map_or(0, |s| s.code)
    }

    #[test]
    fn segments_cover_the_class_and_merge_neighbours() {
        let segs = resolve(Class::Tcp, [span(Class::Tcp, 80, 80, 3)].iter());
        assert_eq!(
            segs,
            vec![
                Segment { last: 79, code: 0 },
                Segment { last: 80, code: 3 },
                Segment {
                    last: u16::MAX,
                    code: 0
                }
            ]
        );
        let segs = resolve(
            Class::Udp,
            [
                span(Class::Udp, 0, 100, 2),
                span(Class::Udp, 101, u16::MAX, 2),
            ]
            .iter(),
        );
        assert_eq!(
            segs,
            vec![Segment {
                last: u16::MAX,
                code: 2
            }]
        );
        assert_eq!(
            resolve(Class::Icmp, [].iter()),
            vec![Segment { last: 255, code: 0 }]
        );
        assert_eq!(
            resolve(Class::Other, [].iter()),
            vec![Segment { last: 0, code: 0 }]
        );
    }

    #[test]
    fn deny_wins_then_the_lowest_rule() {
        let spans = [
            span(Class::Tcp, 1000, 2000, 7),
            span(Class::Tcp, 1500, 1600, 5 | DENY_BIT),
            span(Class::Tcp, 1550, 3000, 2),
            span(Class::Tcp, 1590, 1590, 9 | DENY_BIT),
        ];
        let segs = resolve(Class::Tcp, spans.iter());
        assert_eq!(code_at(&segs, 999), 0);
        assert_eq!(code_at(&segs, 1000), 7);
        assert_eq!(code_at(&segs, 1499), 7);
        assert_eq!(code_at(&segs, 1500), 5 | DENY_BIT);
        assert_eq!(code_at(&segs, 1590), 5 | DENY_BIT);
        assert_eq!(code_at(&segs, 1600), 5 | DENY_BIT);
        assert_eq!(code_at(&segs, 1601), 2);
        assert_eq!(code_at(&segs, 3000), 2);
        assert_eq!(code_at(&segs, 3001), 0);
        assert_eq!(segs.last().map(|s| s.last), Some(u16::MAX));
    }

    #[test]
    fn port_edges_of_the_range() {
        let segs = resolve(
            Class::Sctp,
            [
                span(Class::Sctp, 0, 0, 1),
                span(Class::Sctp, u16::MAX, u16::MAX, 4),
            ]
            .iter(),
        );
        assert_eq!(code_at(&segs, 0), 1);
        assert_eq!(code_at(&segs, 1), 0);
        assert_eq!(code_at(&segs, u16::MAX - 1), 0);
        assert_eq!(code_at(&segs, u16::MAX), 4);
    }
}
