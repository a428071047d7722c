//! The filter on byte-array frames against the example config: frontend ->
//! backend TCP 8080 and ping, backend -> db TCP 5432, db -> nothing,
//! frontend -> 198.19.0.0/16 TCP 443 except 198.19.99.0/24.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use std::sync::atomic::Ordering;
use xpf::config::Config;

use xpf::conntrack::{self, Conntrack, Tuple};
use xpf::engine::Engine;
use xpf::filter::*;
use xpf::wire::build::{self, FrameAddrs};
use xpf::wire::tcp_flags::{ACK, SYN};
use xpf::wire::{self, ParseError};

const FRONTEND: usize = 0;
const BACKEND: usize = 1;
const DB: usize = 2;
const NOW: u64 = 1_000;

struct World {
    engine: Engine,
    filter: Filter,
}

fn world() -> World {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/xpf.yaml");
    let engine = Engine::new(&Config::load(&path).unwrap().world).unwrap();
    let endpoints = EndpointInfo::all_of(&engine);
    let shared = Shared::new(endpoints, Conntrack::new(conntrack::Config::default()));
    World {
        filter: Filter::new(Arc::new(shared)),
        engine,
    }
}

impl World {
    fn decide(&mut self, src: usize, frame: &[u8]) -> Action {
        let reader = self.engine.ipcache.reader();
        let view = reader.enter().unwrap();
        self.filter.decide(src, frame, &view, NOW)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addrs(src: &str, dst: &str) -> FrameAddrs {
    FrameAddrs {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src: ip(src),
        dst: ip(dst),
    }
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut buf = vec![0; 256];
    let n = build::tcp(&mut buf, &addrs(src, dst), sport, dport, flags, 0).unwrap();
    buf.truncate(n);
    buf
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    let mut buf = vec![0; 256];
    let n = build::udp(&mut buf, &addrs(src, dst), sport, dport, 8).unwrap();
    buf.truncate(n);
    buf
}

/// Turns an IPv4 frame into a fragment: `first` keeps the UDP header and
/// sets More Fragments; otherwise offset 8 bytes, no header.
/// `f` (IPv4) made the first fragment of datagram `id`, or a later one at
/// byte 64, past what any first fragment here carries.
fn fragment(mut f: Vec<u8>, id: u16, first: bool) -> Vec<u8> {
    f[18..20].copy_from_slice(&id.to_be_bytes());
    let word: u16 = if first { 0x2000 } else { 64 / 8 };
    f[20..22].copy_from_slice(&word.to_be_bytes());
    f
}

/// An ICMP port unreachable from `src` to `dst` quoting `quoted` (a frame).
fn icmp_unreachable(src: &str, dst: &str, quoted: &[u8]) -> Vec<u8> {
    let inner = &quoted[14..14 + 28];
    let mut f = udp(src, dst, 0, 0);
    f.truncate(14 + 20);
    f[23] = 1; // protocol ICMP
    f.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(inner);
    let total = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f
}

#[test]
fn allowed_flow_goes_to_the_destination_endpoint_and_denied_is_counted() {
    let mut w = world();
    let syn = tcp("198.18.10.2", "198.18.10.3", 40000, 8080, SYN);
    assert_eq!(w.decide(FRONTEND, &syn), Action::ToEndpoint(BACKEND as u16));
    let wrong_port = tcp("198.18.10.2", "198.18.10.3", 40000, 8081, SYN);
    assert_eq!(
        w.decide(FRONTEND, &wrong_port),
        Action::Drop(DropReason::PolicyDefault)
    );
    let v6 = tcp("2001:db8:10::2", "2001:db8:10::3", 40000, 8080, SYN);
    assert_eq!(w.decide(FRONTEND, &v6), Action::ToEndpoint(BACKEND as u16));
    let s = &w.filter.stats;
    assert_eq!(s.drop_count(FRONTEND, DropReason::PolicyDefault), 1);
    assert_eq!(s.passed_count(FRONTEND, Passed::Policy), 2);
}

#[test]
fn world_destinations_go_to_the_host_and_deny_rules_win() {
    let mut w = world();
    let https = tcp("198.18.10.2", "198.19.1.1", 40000, 443, SYN);
    assert_eq!(w.decide(FRONTEND, &https), Action::ToHost);
    let quarantined = tcp("198.18.10.2", "198.19.99.1", 40000, 443, SYN);
    assert_eq!(
        w.decide(FRONTEND, &quarantined),
        Action::Drop(DropReason::PolicyDenied)
    );
}

#[test]
fn replies_skip_policy_but_new_flows_the_other_way_do_not() {
    let mut w = world();
    let syn = tcp("198.18.10.3", "198.18.10.4", 41000, 5432, SYN);
    assert_eq!(w.decide(BACKEND, &syn), Action::ToEndpoint(DB as u16));
    // db may send nothing, but this is the answer.
    let synack = tcp("198.18.10.4", "198.18.10.3", 5432, 41000, SYN | ACK);
    assert_eq!(w.decide(DB, &synack), Action::ToEndpoint(BACKEND as u16));
    assert_eq!(w.filter.stats.passed_count(DB, Passed::Reply), 1);
    let own = tcp("198.18.10.4", "198.18.10.3", 5432, 41001, SYN);
    assert_eq!(w.decide(DB, &own), Action::Drop(DropReason::PolicyDefault));
}

#[test]
fn inbound_reports_make_the_endpoints_answers_replies() {
    let mut w = world();
    let answer = tcp("198.18.10.4", "198.18.50.9", 5432, 50000, SYN | ACK);
    assert_eq!(
        w.decide(DB, &answer),
        Action::Drop(DropReason::PolicyDefault),
        "without the report it is a new egress flow"
    );
    let inbound = Tuple {
        src: ip("198.18.50.9"),
        dst: ip("198.18.10.4"),
        sport: 50000,
        dport: 5432,
        proto: 6,
    };
    w.filter.shared().note_inbound(&inbound, SYN, NOW);
    assert_eq!(w.decide(DB, &answer), Action::ToHost);
}

#[test]
fn icmp_errors_about_tracked_flows_are_related() {
    let mut w = world();
    let probe = udp("198.18.50.9", "198.18.10.4", 50000, 53);
    let err = icmp_unreachable("198.18.10.4", "198.18.50.9", &probe);
    assert_eq!(w.decide(DB, &err), Action::Drop(DropReason::PolicyDefault));
    let t = Tuple::of(&wire::parse(&probe).unwrap());
    w.filter.shared().note_inbound(&t, 0, NOW);
    assert_eq!(w.decide(DB, &err), Action::ToHost);
    assert_eq!(w.filter.stats.passed_count(DB, Passed::Related), 1);
    // An error quoting a packet that was not sent to the reporter is not.
    let other = udp("198.18.50.9", "198.18.10.3", 50000, 53);
    let forged = icmp_unreachable("198.18.10.4", "198.18.50.9", &other);
    assert_eq!(
        w.decide(DB, &forged),
        Action::Drop(DropReason::PolicyDefault)
    );
}

#[test]
fn echo_replies_match_their_request() {
    let mut w = world();
    let mut buf = vec![0; 128];
    let n = build::icmp_echo(
        &mut buf,
        &addrs("198.18.10.2", "198.18.10.3"),
        true,
        77,
        1,
        8,
    )
    .unwrap();
    assert_eq!(
        w.decide(FRONTEND, &buf[..n]),
        Action::ToEndpoint(BACKEND as u16)
    );
    let n = build::icmp_echo(
        &mut buf,
        &addrs("198.18.10.3", "198.18.10.2"),
        false,
        77,
        1,
        8,
    )
    .unwrap();
    assert_eq!(
        w.decide(BACKEND, &buf[..n]),
        Action::ToEndpoint(FRONTEND as u16)
    );
    assert_eq!(w.filter.stats.passed_count(BACKEND, Passed::Reply), 1);
}

#[test]
fn spoofed_vlan_and_malformed_frames_are_dropped_with_their_reason() {
    let mut w = world();
    let spoofed = tcp("198.18.10.3", "198.18.10.4", 41000, 5432, SYN);
    assert_eq!(
        w.decide(FRONTEND, &spoofed),
        Action::Drop(DropReason::SpoofedSource),
        "frontend sending as backend"
    );
    let mut vlan = tcp("198.18.10.2", "198.18.10.3", 40000, 8080, SYN);
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    assert_eq!(
        w.decide(FRONTEND, &vlan),
        Action::Drop(DropReason::VlanTagged)
    );
    let mut truncated = tcp("198.18.10.2", "198.18.10.3", 40000, 8080, SYN);
    truncated.truncate(14 + 20 + 10);
    assert_eq!(
        w.decide(FRONTEND, &truncated),
        Action::Drop(DropReason::Malformed)
    );
    let mut ihl = tcp("198.18.10.2", "198.18.10.3", 40000, 8080, SYN);
    ihl[14] = 0x44;
    assert_eq!(
        w.decide(FRONTEND, &ihl),
        Action::Drop(DropReason::Malformed)
    );
    let s = &w.filter.stats;
    assert_eq!(s.drop_count(FRONTEND, DropReason::Malformed), 2);
    assert_eq!(
        s.malformed[ParseError::Ipv4IhlTooSmall.code() as usize].load(Ordering::Relaxed),
        1
    );
}

#[test]
fn later_fragments_inherit_the_first_fragments_verdict() {
    let mut w = world();
    let allowed = udp("198.18.10.3", "198.18.0.1", 41000, 53);
    let denied = udp("198.18.10.3", "198.18.0.1", 41000, 54);
    let orphan = fragment(allowed.clone(), 9, false);
    assert_eq!(
        w.decide(BACKEND, &orphan),
        Action::Drop(DropReason::FragmentNoFirst)
    );
    assert_eq!(
        w.decide(BACKEND, &fragment(allowed.clone(), 1, true)),
        Action::ToHost
    );
    assert_eq!(
        w.decide(BACKEND, &fragment(allowed, 1, false)),
        Action::ToHost
    );
    assert_eq!(
        w.decide(BACKEND, &fragment(denied.clone(), 2, true)),
        Action::Drop(DropReason::PolicyDefault)
    );
    // The later fragment carries no port; it must not slip through on the
    // flow of datagram 1.
    assert_eq!(
        w.decide(BACKEND, &fragment(denied, 2, false)),
        Action::Drop(DropReason::FragmentDenied)
    );
}

/// What the hybrid datapath may cache after each frame (the XDP program
/// serves only these shapes; `bpf/include/flow_cache.h` mirrors the rule).
#[test]
fn only_passed_frames_of_tracked_flows_with_a_plain_shape_are_cacheable() {
    use xpf::wire::tcp_flags::{FIN, RST};
    let mut w = world();
    let (fe, be) = ("198.18.10.2", "198.18.10.3");
    // A SYN opens the flow but is never served from the cache; the
    // answer and the ACKs after it are.
    assert_eq!(
        w.decide(FRONTEND, &tcp(fe, be, 40000, 8080, SYN)),
        Action::ToEndpoint(1)
    );
    assert_eq!(w.filter.cacheable(), None);
    w.decide(BACKEND, &tcp(be, fe, 8080, 40000, SYN | ACK));
    assert_eq!(w.filter.cacheable(), None, "a SYN-ACK is not cacheable");
    w.decide(FRONTEND, &tcp(fe, be, 40000, 8080, ACK));
    let c = w.filter.cacheable().expect("an established flow's ACK");
    assert_eq!(
        (c.tuple.sport, c.tuple.dport, c.ports),
        (40000, 8080, (40000, 8080))
    );
    w.decide(BACKEND, &tcp(be, fe, 8080, 40000, ACK));
    assert!(w.filter.cacheable().is_some(), "the reply direction too");
    // FIN and RST close the flow: neither they nor what follows is.
    w.decide(FRONTEND, &tcp(fe, be, 40000, 8080, FIN | ACK));
    assert_eq!(w.filter.cacheable(), None);
    w.decide(FRONTEND, &tcp(fe, be, 40000, 8080, ACK));
    assert_eq!(w.filter.cacheable(), None, "a closing flow");
    w.decide(FRONTEND, &tcp(fe, be, 40001, 8080, SYN));
    w.decide(FRONTEND, &tcp(fe, be, 40001, 8080, RST));
    assert_eq!(w.filter.cacheable(), None);
    // A denied frame is not; a fragment of an allowed datagram is not.
    assert!(matches!(
        w.decide(DB, &tcp("198.18.10.4", be, 40000, 8080, ACK)),
        Action::Drop(_)
    ));
    assert_eq!(w.filter.cacheable(), None);
    w.decide(FRONTEND, &fragment(tcp(fe, be, 40002, 8080, ACK), 7, true));
    assert_eq!(w.filter.cacheable(), None, "a first fragment");
    // An ICMP error about a tracked flow passes as related, uncached.
    let quoted = tcp(fe, be, 40000, 8080, ACK);
    w.decide(BACKEND, &icmp_unreachable(be, fe, &quoted));
    assert_eq!(w.filter.cacheable(), None);
    // IPv4 options take the frame out of the cache's shape.
    let mut opts = tcp(fe, be, 40003, 8080, ACK);
    wire::edit::ipv4_options(&mut opts, &[1, 1, 1, 1]);
    assert_eq!(w.decide(FRONTEND, &opts), Action::ToEndpoint(1));
    assert_eq!(w.filter.cacheable(), None);
    assert_eq!(
        w.decide(FRONTEND, &tcp(fe, be, 40003, 8080, ACK)),
        Action::ToEndpoint(1)
    );
    assert!(
        w.filter.cacheable().is_some(),
        "the same flow without options"
    );
}
