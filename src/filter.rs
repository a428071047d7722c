//! The egress filter: what happens to one frame an endpoint sent. Parse it,
//! check the sender owns the source address, tie fragments and ICMP errors
//! to what they belong to, consult conntrack, check the sender's egress
//! policy, and say where the frame goes: to a local endpoint, into the host
//! stack, or nowhere (with a counted reason).
//!
//! No I/O and no clock (callers pass `now` in seconds), so every path here
//! is tested with byte-array frames and no sockets. The AF_XDP workers in
//! `datapath` call [`Filter::decide`] per frame and do the moving.
//!
//! Order matters for security: the parser refuses what it cannot read in
//! full before anything looks at addresses; anti-spoofing runs before
//! conntrack, so a forged source can never pose as the reply side of
//! someone else's flow; later fragments never reach policy at all, they
//! inherit their first fragment's verdict or are dropped.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::conntrack::{Conntrack, Created, Dir, State, Tuple};
use crate::engine::Verdicts;
use crate::fragments::{FragKey, FragVerdict, Fragments, Refused};
use crate::identity::WORLD;
use crate::ipcache::IpCacheView;
use crate::wire::{self, icmp_error, tcp_flags, FlowInfo, Fragment, L4Proto, ParseError};

/// Why a frame was dropped. Values are `enum xpf_drop_reason` of
/// `bpf/include/xpf_abi.h` (checked against the generated skeleton types in
/// `datapath`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DropReason {
    PolicyDenied = 0,
    PolicyDefault = 1,
    SpoofedSource = 2,
    VlanTagged = 3,
    NotIp = 4,
    Malformed = 5,
    FragmentNoFirst = 6,
    FragmentDenied = 7,
    TxFull = 8,
    HandoffFull = 9,
    FragmentConflict = 10,
    FragmentTableFull = 11,
    ConntrackFull = 12,
}

impl DropReason {
    pub const COUNT: usize = 13;
    pub const ALL: [DropReason; Self::COUNT] = [
        Self::PolicyDenied,
        Self::PolicyDefault,
        Self::SpoofedSource,
        Self::VlanTagged,
        Self::NotIp,
        Self::Malformed,
        Self::FragmentNoFirst,
        Self::FragmentDenied,
        Self::TxFull,
        Self::HandoffFull,
        Self::FragmentConflict,
        Self::FragmentTableFull,
        Self::ConntrackFull,
    ];

    /// Stable snake_case name, for counters and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PolicyDenied => "policy_denied",
            Self::PolicyDefault => "policy_default_deny",
            Self::SpoofedSource => "spoofed_source",
            Self::VlanTagged => "vlan_tagged",
            Self::NotIp => "not_ip",
            Self::Malformed => "malformed",
            Self::FragmentNoFirst => "fragment_without_first",
            Self::FragmentDenied => "fragment_of_denied",
            Self::TxFull => "tx_ring_full",
            Self::HandoffFull => "handoff_queue_full",
            Self::FragmentConflict => "fragment_conflict",
            Self::FragmentTableFull => "fragment_table_full",
            Self::ConntrackFull => "conntrack_full",
        }
    }

    fn of_parse_error(e: ParseError) -> Self {
        match e {
            ParseError::VlanTagged => Self::VlanTagged,
            ParseError::NotIp => Self::NotIp,
            _ => Self::Malformed,
        }
    }
}

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// To the local endpoint with this index: transmit on its host-side veth.
    ToEndpoint(u16),
    /// Into the host stack, which delivers or routes it.
    ToHost,
    Drop(DropReason),
}

/// How a passed frame got through (for counters and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passed {
    /// A new flow or a forward packet of a tracked one, allowed by policy.
    Policy,
    /// A reply in a tracked flow: policy not consulted.
    Reply,
    /// An ICMP error about a tracked flow.
    Related,
    /// A later fragment of an allowed datagram.
    Fragment,
}

/// A local endpoint as the filter sees it.
#[derive(Clone, Debug)]
pub struct EndpointInfo {
    pub name: String,
    pub ipv4: Option<IpAddr>,
    pub ipv6: Option<IpAddr>,
}

impl EndpointInfo {
    /// The endpoints `engine` enforces, in the world's order: index `i` here is
    /// endpoint index `i` everywhere in the datapath.
    pub fn all_of(engine: &crate::engine::Engine) -> Vec<EndpointInfo> {
        engine
            .world
            .endpoints
            .iter()
            .map(|e| EndpointInfo {
                name: e.name.clone(),
                ipv4: e.ipv4.map(IpAddr::V4),
                ipv6: e.ipv6.map(IpAddr::V6),
            })
            .collect()
    }

    #[inline]
    fn owns(&self, addr: IpAddr) -> bool {
        Some(addr) == self.ipv4 || Some(addr) == self.ipv6
    }
}

/// What a worker decides against for a batch: the ipcache and the
/// verdicts published with it, pinned together.
pub type View<'a> = IpCacheView<'a, Arc<Verdicts>>;

/// State every worker shares. The policy is not here: it is published
/// with the ipcache ([`Verdicts`]), so the two change together.
pub struct Shared {
    pub endpoints: Vec<EndpointInfo>,
    /// Local endpoint addresses to endpoint index.
    local: FxHashMap<IpAddr, u16>,
    pub conntrack: Conntrack,
}

impl Shared {
    pub fn new(endpoints: Vec<EndpointInfo>, conntrack: Conntrack) -> Self {
        let mut local = FxHashMap::default();
        for (i, e) in endpoints.iter().enumerate() {
            for a in e.ipv4.iter().chain(e.ipv6.iter()) {
                local.insert(*a, i as u16);
            }
        }
        Self {
            endpoints,
            local,
            conntrack,
        }
    }

    /// The endpoint that owns `addr`.
    #[inline]
    pub fn endpoint_of(&self, addr: IpAddr) -> Option<u16> {
        self.local.get(&addr).copied()
    }

    /// Records a flow opened towards an endpoint (reported by the TC
    /// program), so the endpoint's answers are replies. A flow conntrack
    /// already knows, either way round, is left as it is. The entry counts
    /// against the receiving endpoint's share.
    pub fn note_inbound(&self, t: &Tuple, tcp_flags: u8, now: u64) {
        if self.conntrack.peek(t, now).is_none() {
            let owner = self.endpoint_of(t.dst).unwrap_or(u16::MAX);
            self.conntrack.create(owner, t, tcp_flags, now);
        }
    }

    /// Conntrack, then policy, for a frame from endpoint `src` that carries
    /// its upper-layer header.
    fn flow_verdict(
        &self,
        src: usize,
        frame: &[u8],
        flow: &FlowInfo,
        ipcache: &View<'_>,
        now: u64,
        noted: &Noted,
    ) -> Result<Passed, DropReason> {
        let tuple = Tuple::of(flow);
        let tracked = self.conntrack.lookup(&tuple, flow.tcp_flags, now);
        noted.state.set(tracked.map(|(_, s)| s));
        if let Some((Dir::Reply, _)) = tracked {
            return Ok(Passed::Reply);
        }
        if tracked.is_none() && icmp_error::is_error(flow) && self.related(frame, flow, now) {
            return Ok(Passed::Related);
        }
        // New flows and every forward packet of a tracked one are checked,
        // so a policy change reaches established flows too (as in Cilium).
        let table = &ipcache.attached().tables[src];
        let dst_identity = ipcache.lookup(flow.dst).unwrap_or(WORLD);
        let code = table.lookup_code(dst_identity, flow.proto, flow.policy_port());
        if !code.allows(table) {
            return Err(if code.is_deny() {
                DropReason::PolicyDenied
            } else {
                DropReason::PolicyDefault
            });
        }
        // A flow conntrack has no room for is not let out untracked: its
        // replies could not pass, and the sender's share is what it spent.
        if tracked.is_none()
            && self
                .conntrack
                .create(src as u16, &tuple, flow.tcp_flags, now)
                == Created::Refused
        {
            return Err(DropReason::ConntrackFull);
        }
        if tracked.is_none() {
            noted.opened.set(true);
            noted.state.set(Some(created_state(flow)));
        }
        Ok(Passed::Policy)
    }

    /// Whether the ICMP error `flow` quotes a packet of a tracked flow that
    /// was sent to the endpoint now reporting the error.
    fn related(&self, frame: &[u8], flow: &FlowInfo, now: u64) -> bool {
        let Some(q) = icmp_error::quoted(frame, flow) else {
            return false;
        };
        if q.src != flow.dst || q.dst != flow.src {
            return false;
        }
        let quoted = Tuple {
            src: q.src,
            dst: q.dst,
            sport: q.sport,
            dport: q.dport,
            proto: q.proto,
        };
        self.conntrack.peek(&quoted, now).is_some()
    }
}

/// The state conntrack gives a flow `flow` opens.
fn created_state(flow: &FlowInfo) -> State {
    if flow.proto == L4Proto::TCP.0 && flow.tcp_flags & tcp_flags::SYN != 0 {
        State::SynSent
    } else {
        State::Established
    }
}

/// A frame whose flow the hybrid datapath's verdict cache may serve from
/// now on: passed by policy or as a reply, in a flow conntrack tracks and
/// that is not closing, and of a shape the XDP program reads exactly as
/// [`wire::parse`] does (`bpf/include/flow_cache.h`): not a fragment, IPv4
/// without options or IPv6 without extension headers, TCP without SYN, FIN
/// or RST, UDP, or ICMP / ICMPv6 echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cacheable {
    /// The flow's conntrack tuple, as the frame runs.
    pub tuple: Tuple,
    /// The cache key's ports: source and destination port, or for ICMP
    /// echo the identifier and the type (policy matches the type, so a
    /// request's entry must never serve a reply).
    pub ports: (u16, u16),
}

/// The cache key's ports of `flow` if its shape is one the cache serves
/// (see [`Cacheable`]).
pub fn cache_ports(flow: &FlowInfo) -> Option<(u16, u16)> {
    use crate::wire::ETH_HLEN;
    if flow.fragment != Fragment::None {
        return None;
    }
    let bare = match flow.src {
        IpAddr::V4(_) => usize::from(flow.l4_offset) == ETH_HLEN + 20,
        IpAddr::V6(_) => usize::from(flow.l4_offset) == ETH_HLEN + 40,
    };
    if !bare {
        return None;
    }
    let no_cache = tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST;
    match (L4Proto(flow.proto), flow.src) {
        (L4Proto::TCP, _) if flow.tcp_flags & no_cache == 0 => Some((flow.sport, flow.dport)),
        (L4Proto::UDP, _) => Some((flow.sport, flow.dport)),
        (L4Proto::ICMP, IpAddr::V4(_)) if matches!(flow.icmp_type, 0 | 8) => {
            Some((flow.sport, u16::from(flow.icmp_type)))
        }
        (L4Proto::ICMPV6, IpAddr::V6(_)) if matches!(flow.icmp_type, 128 | 129) => {
            Some((flow.sport, u16::from(flow.icmp_type)))
        }
        _ => None,
    }
}

/// The endpoint a tracked flow is charged to: the local endpoint that
/// opened it, else the one it goes to ([`crate::conntrack::NO_OWNER`] when
/// neither side is local).
pub fn conntrack_owner(endpoints: &[EndpointInfo], key: &Tuple, opened_by_first: bool) -> u16 {
    let (opener, other) = if opened_by_first {
        (key.src, key.dst)
    } else {
        (key.dst, key.src)
    };
    let of = |a| endpoints.iter().position(|e| e.owns(a));
    of(opener)
        .or_else(|| of(other))
        .map_or(crate::conntrack::NO_OWNER, |i| i as u16)
}

/// One worker's filter: the shared state plus its own fragment table and
/// counters.
pub struct Filter {
    shared: Arc<Shared>,
    frags: Fragments,
    pub stats: Arc<FilterStats>,
    /// What deciding the last frame found out about its flow.
    noted: Noted,
    /// Whether the frame last passed could be served by the verdict cache.
    cacheable: Option<Cacheable>,
}

/// What deciding a frame finds out about its flow, beside the verdict.
#[derive(Default)]
struct Noted {
    /// The frame opened a flow (for the monitor's verdict events).
    opened: Cell<bool>,
    /// The conntrack state of its flow, if tracked.
    state: Cell<Option<State>>,
}

/// Counters of one worker, read (and summed) by whoever reports.
pub struct FilterStats {
    /// Per endpoint, per drop reason.
    pub drops: Box<[[AtomicU64; DropReason::COUNT]]>,
    /// Malformed frames by parser reason (all endpoints).
    pub malformed: [AtomicU64; ParseError::COUNT],
    /// Per endpoint: frames received, and passed by policy / as reply /
    /// as related ICMP error / as fragment.
    pub rx: Box<[AtomicU64]>,
    pub passed: Box<[[AtomicU64; 4]]>,
    /// Per endpoint: first-fragment verdicts held in this worker's table
    /// (as of its latest first fragment).
    pub fragments_held: Box<[AtomicU64]>,
}

impl FilterStats {
    fn new(endpoints: usize) -> Self {
        Self {
            drops: (0..endpoints).map(|_| Default::default()).collect(),
            malformed: Default::default(),
            rx: (0..endpoints).map(|_| AtomicU64::new(0)).collect(),
            passed: (0..endpoints).map(|_| Default::default()).collect(),
            fragments_held: (0..endpoints).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn drop_count(&self, endpoint: usize, reason: DropReason) -> u64 {
        self.drops[endpoint][reason as usize].load(Ordering::Relaxed)
    }

    pub fn passed_count(&self, endpoint: usize, how: Passed) -> u64 {
        self.passed[endpoint][how as usize].load(Ordering::Relaxed)
    }
}

#[inline]
fn bump(c: &AtomicU64) {
    // One writer per counter (its worker): a relaxed add is enough.
    c.fetch_add(1, Ordering::Relaxed);
}

/// Fragment verdicts kept per worker (Linux's default ipfrag_high_thresh
/// holds about this many small datagrams), split evenly among endpoints.
const FRAGMENT_TABLE: usize = 16 * 1024;
/// Seconds a first fragment's verdict is kept (Linux's ipfrag_time).
const FRAGMENT_TTL: u64 = 30;

impl Filter {
    pub fn new(shared: Arc<Shared>) -> Self {
        let n = shared.endpoints.len();
        Self {
            shared,
            frags: Fragments::new(FRAGMENT_TABLE, n, FRAGMENT_TTL),
            stats: Arc::new(FilterStats::new(n)),
            noted: Noted::default(),
            cacheable: None,
        }
    }

    /// Whether the frame [`Filter::decide`] passed last opened a new flow
    /// (its policy verdict is the flow's).
    #[inline]
    pub fn opened_flow(&self) -> bool {
        self.noted.opened.get()
    }

    /// Whether the verdict cache may serve the flow of the frame
    /// [`Filter::decide`] passed last (`None` after a drop).
    #[inline]
    pub fn cacheable(&self) -> Option<Cacheable> {
        self.cacheable
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Decides about one frame sent by endpoint `src` (the index of the
    /// endpoint whose veth it arrived on).
    #[inline]
    pub fn decide(&mut self, src: usize, frame: &[u8], ipcache: &View<'_>, now: u64) -> Action {
        bump(&self.stats.rx[src]);
        self.noted.opened.set(false);
        self.noted.state.set(None);
        self.cacheable = None;
        match self.judge(src, frame, ipcache, now) {
            Ok((how, dst)) => {
                bump(&self.stats.passed[src][how as usize]);
                match self.shared.endpoint_of(dst) {
                    Some(i) => Action::ToEndpoint(i),
                    None => Action::ToHost,
                }
            }
            Err(reason) => {
                bump(&self.stats.drops[src][reason as usize]);
                Action::Drop(reason)
            }
        }
    }

    /// Where a frame goes with no checks at all: the `forward` benchmark
    /// baseline, which parses only to find the destination.
    #[inline]
    pub fn route_only(&mut self, src: usize, frame: &[u8]) -> Action {
        bump(&self.stats.rx[src]);
        match wire::parse(frame) {
            Ok(flow) => match self.shared.endpoint_of(flow.dst) {
                Some(i) => Action::ToEndpoint(i),
                None => Action::ToHost,
            },
            Err(e) => Action::Drop(DropReason::of_parse_error(e)),
        }
    }

    fn judge(
        &mut self,
        src: usize,
        frame: &[u8],
        ipcache: &View<'_>,
        now: u64,
    ) -> Result<(Passed, IpAddr), DropReason> {
        let flow = wire::parse(frame).map_err(|e| {
            bump(&self.stats.malformed[e.code() as usize]);
            DropReason::of_parse_error(e)
        })?;
        let shared = &*self.shared;
        if !shared.endpoints[src].owns(flow.src) {
            return Err(DropReason::SpoofedSource);
        }

        if let Fragment::Later { id, offset } = flow.fragment {
            return match self.frags.later(&FragKey::of(&flow, id), offset, now) {
                FragVerdict::Allowed => Ok((Passed::Fragment, flow.dst)),
                FragVerdict::Denied => Err(DropReason::FragmentDenied),
                FragVerdict::Conflict => Err(DropReason::FragmentConflict),
                FragVerdict::Unknown => Err(DropReason::FragmentNoFirst),
            };
        }

        let noted = &self.noted;
        let verdict = || shared.flow_verdict(src, frame, &flow, ipcache, now, noted);
        let how = match flow.fragment {
            Fragment::First { id, len } => {
                let digest = upper_layer_digest(frame, &flow);
                let v = self
                    .frags
                    .first(src, FragKey::of(&flow, id), len, digest, now, verdict);
                self.stats.fragments_held[src]
                    .store(self.frags.held_by(src) as u64, Ordering::Relaxed);
                v.map_err(|refused| match refused {
                    Refused::Conflict => DropReason::FragmentConflict,
                    Refused::Full => DropReason::FragmentTableFull,
                })??
            }
            _ => verdict()?,
        };
        if matches!(how, Passed::Policy | Passed::Reply)
            && matches!(
                self.noted.state.get(),
                Some(State::SynSent | State::Established)
            )
        {
            self.cacheable = cache_ports(&flow).map(|ports| Cacheable {
                tuple: Tuple::of(&flow),
                ports,
            });
        }
        Ok((how, flow.dst))
    }
}

/// Upper-layer bytes of a first fragment compared when it comes again: the
/// ports, flags and anything else policy could read.
const DIGEST_BYTES: usize = 64;

/// A digest of the first [`DIGEST_BYTES`] upper-layer bytes of `flow`.
fn upper_layer_digest(frame: &[u8], flow: &FlowInfo) -> u64 {
    use std::hash::BuildHasher;
    let start = usize::from(flow.l4_offset);
    let end = start + usize::from(flow.l4_len).min(DIGEST_BYTES);
    rustc_hash::FxBuildHasher.hash_one(frame.get(start..end).unwrap_or_default())
}
