//! The hostile-frame corpus (`xpf::hostile`): every case against the filter
//! core without root, and the bypass-prone ones end to end as root, sent
//! from inside an endpoint namespace through a host with IPv4 and IPv6
//! forwarding on, with what reaches backend captured there. Floods from one
//! endpoint must not cost another endpoint its allowed traffic.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::lab::*;
use common::raw::{capture_while, send_raw};
use xpf::config::Config;
use xpf::conntrack::{self, Conntrack};
use xpf::engine::Engine;
use xpf::filter::{Action, DropReason, EndpointInfo, Filter, Shared};
use xpf::harness::probe::{echoes, HoldingEcho};
use xpf::hostile::{self, corpus, tag_of, Case, Expect};
use xpf::sys::netns;

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, XDP)");
            return;
        }
    };
}

/// The lab's world as the workers see it, with nothing running.
struct World {
    engine: Engine,
    filter: Filter,
    _dir: tempfile::TempDir,
}

fn world(conntrack_max: usize) -> World {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("xpf.yaml"), lab_config("xtcorpus", "")).unwrap();
    std::fs::write(dir.path().join("policies.yaml"), POLICIES).unwrap();
    let engine = Engine::new(&Config::load(&dir.path().join("xpf.yaml")).unwrap().world).unwrap();
    let endpoints = EndpointInfo::all_of(&engine);
    let ct = Conntrack::new(conntrack::Config {
        capacity: conntrack_max,
        owners: endpoints.len(),
        ..Default::default()
    });
    let shared = Shared::new(endpoints, ct);
    World {
        filter: Filter::new(Arc::new(shared)),
        engine,
        _dir: dir,
    }
}

impl World {
    fn index(&self, endpoint: &str) -> usize {
        self.engine.endpoint(endpoint).unwrap().0
    }

    fn decide(&mut self, src: usize, frame: &[u8], now: u64) -> Action {
        let reader = self.engine.ipcache.reader();
        let view = reader.enter().unwrap();
        self.filter.decide(src, frame, &view, now)
    }
}

/// What went wrong with one case, or nothing.
fn judge_case(case: &Case) -> Vec<String> {
    let mut w = world(10_000);
    let src = w.index(case.sender);
    let mut wrong = Vec::new();
    for (i, (frame, expect)) in case.frames.iter().zip(&case.expect).enumerate() {
        let action = w.decide(src, frame, 1_000 + i as u64);
        let ok = match *expect {
            Expect::Deliver => !matches!(action, Action::Drop(_)),
            Expect::Drop(reason) => action == Action::Drop(reason),
            Expect::Malformed(e) => {
                let counted = w.filter.stats.malformed[e.code() as usize]
                    .load(std::sync::atomic::Ordering::Relaxed);
                action == Action::Drop(DropReason::Malformed) && counted == 1
            }
        };
        if !ok {
            wrong.push(format!(
                "{}: frame {i}: expected {expect:?}, got {action:?}",
                case.name
            ));
        }
    }
    wrong
}

#[test]
fn every_hostile_frame_gets_its_verdict_from_the_filter() {
    let cases = corpus([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let wrong: Vec<String> = cases.iter().flat_map(judge_case).collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_syn_flood_from_one_endpoint_leaves_the_others_flows_alone() {
    use xpf::wire::tcp_flags::{ACK, SYN};
    // conntrack_max 10,000 as in the review. frontend opens 1,000 flows to
    // backend, answered; then backend floods db with SYNs (TCP 5432 is
    // allowed to it) from 50,000 source ports, five times its share.
    let mut w = world(10_000);
    let (fe, be) = (w.index("frontend"), w.index("backend"));
    for p in 0..1_000u16 {
        let syn = hostile::tcp_frame(
            hostile::FRONTEND4,
            hostile::BACKEND4,
            30_000 + p,
            8080,
            SYN,
            0,
        );
        assert_eq!(w.decide(fe, &syn, 0), Action::ToEndpoint(be as u16));
        let synack = hostile::tcp_frame(
            hostile::BACKEND4,
            hostile::FRONTEND4,
            8080,
            30_000 + p,
            SYN | ACK,
            0,
        );
        assert_eq!(w.decide(be, &synack, 0), Action::ToEndpoint(fe as u16));
    }
    let mut refused = 0;
    for p in 0..50_000u16 {
        let syn = hostile::tcp_frame(hostile::BACKEND4, hostile::DB4, p + 1, 5432, SYN, 0);
        if w.decide(be, &syn, 1) == Action::Drop(DropReason::ConntrackFull) {
            refused += 1;
        }
    }
    let ct = &w.filter.shared().conntrack;
    let c = ct.counters();
    // The flood cycled through backend's own share, oldest SYN first.
    eprintln!("after the flood: {c:?}");
    assert!(c.early_dropped > 40_000, "{c:?}");
    assert_eq!((refused, c.evicted), (0, 0), "{c:?}");
    assert_eq!(ct.held_by(fe as u16), 1_000);
    // Every one of frontend's flows still passes its replies.
    for p in 0..1_000u16 {
        let reply = hostile::tcp_frame(
            hostile::BACKEND4,
            hostile::FRONTEND4,
            8080,
            30_000 + p,
            ACK,
            0,
        );
        assert_eq!(
            w.decide(be, &reply, 2),
            Action::ToEndpoint(fe as u16),
            "reply of flow {p} after the flood"
        );
    }
}

#[test]
fn a_fragment_flood_from_one_endpoint_leaves_the_others_datagrams_alone() {
    let mut w = world(10_000);
    let (fe, be) = (w.index("frontend"), w.index("backend"));
    // backend sends 20,000 first fragments (to db, TCP 5432: allowed).
    let flood = hostile::fragmented_tcp(hostile::BACKEND4, hostile::DB4, 5432);
    for id in 0..20_000u16 {
        let first = hostile::with_fragment_id(&flood.0, id);
        let _ = w.decide(be, &first, 0);
    }
    // frontend's fragmented datagram to backend still gets through whole.
    let (first, later) = hostile::fragmented_tcp(hostile::FRONTEND4, hostile::BACKEND4, 8080);
    assert_eq!(w.decide(fe, &first, 1), Action::ToEndpoint(be as u16));
    assert_eq!(w.decide(fe, &later, 1), Action::ToEndpoint(be as u16));
    let s = &w.filter.stats;
    assert!(s.drop_count(be, DropReason::FragmentTableFull) > 10_000);
    assert_eq!(s.drop_count(fe, DropReason::FragmentTableFull), 0);
}

#[test]
fn bypass_prone_hostile_frames_end_to_end() {
    require_root!();
    hostile_end_to_end("datapath: {mode: userspace}", false);
}

/// The same corpus through the hybrid datapath, after well-formed frames
/// of every flow the corpus names have warmed the verdict cache: hostile
/// frames then share addresses and ports with cached flows. Each verdict
/// must be the same as without the cache.
#[test]
fn bypass_prone_hostile_frames_end_to_end_through_the_verdict_cache() {
    require_root!();
    hostile_end_to_end("datapath: {mode: hybrid}", true);
}

/// A TCP connection from `from` to `to`, opened inside `ns`.
fn connect_from(
    ns: &str,
    from: std::net::SocketAddr,
    to: std::net::SocketAddr,
) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    netns::run_in(ns, || {
        let s = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&from.into()).unwrap();
        s.connect_timeout(&to.into(), Duration::from_secs(2))
            .unwrap();
        std::net::TcpStream::from(s)
    })
    .unwrap()
}

/// A few echoes on `s`, which must all come back.
fn talk(s: &mut std::net::TcpStream, what: &str) {
    for i in 0..3 {
        let msg = format!("warm {what} {i}");
        assert!(
            echoes(s, msg.as_bytes(), Duration::from_secs(2)),
            "{what}: echo {i}"
        );
    }
}

/// One well-formed, untagged frame (TCP ACK, UDP, ICMP echo) per flow that
/// `frames` name, for the cache to learn the allowed ones from.
fn warm_up(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    use xpf::wire::{self, build};
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for f in frames {
        let Ok(flow) = wire::parse(f) else { continue };
        if !seen.insert((flow.src, flow.dst, flow.proto, flow.sport, flow.dport)) {
            continue;
        }
        let addrs = build::FrameAddrs {
            src_mac: f[6..12].try_into().unwrap(),
            dst_mac: f[0..6].try_into().unwrap(),
            src: flow.src,
            dst: flow.dst,
        };
        let mut buf = vec![0u8; 256];
        let n = match flow.proto {
            6 => build::tcp(&mut buf, &addrs, flow.sport, flow.dport, 0x10, 16),
            17 => build::udp(&mut buf, &addrs, flow.sport, flow.dport, 16),
            1 | 58 => build::icmp_echo(&mut buf, &addrs, true, flow.sport, 1, 16),
            _ => continue,
        };
        if let Ok(n) = n {
            buf.truncate(n);
            out.push(buf);
        }
    }
    out
}

/// Sends every end-to-end case of the corpus through a lab with
/// `datapath` (after [`warm_up`] frames, twice, if `warm`), and checks
/// what reached backend and the drop counters.
fn hostile_end_to_end(datapath: &str, warm: bool) {
    let lab = Lab::new(datapath);
    let xpf = lab.run();
    // The corpus's TCP flow (frontend port 40000 to backend 8080) as a
    // real connection, so the cache holds it before the corpus comes.
    let mut servers = Vec::new();
    let mut warm_tcp = HashMap::new();
    if warm {
        for (from, to) in [
            (hostile::FRONTEND4, hostile::BACKEND4),
            (hostile::FRONTEND6, hostile::BACKEND6),
        ] {
            let to: IpAddr = to.parse().unwrap();
            servers
                .push(HoldingEcho::start(&lab.ns("backend"), sa(&to.to_string(), 8080)).unwrap());
            warm_tcp.insert(
                to,
                connect_from(
                    &lab.ns("frontend"),
                    sa(from, 40000),
                    sa(&to.to_string(), 8080),
                ),
            );
        }
    }
    let be = lab.ns("backend");
    let backend: [IpAddr; 2] = [
        hostile::BACKEND4.parse().unwrap(),
        hostile::BACKEND6.parse().unwrap(),
    ];
    // Each sender's cases, built with its own MACs.
    let mut cases: Vec<Case> = Vec::new();
    for sender in [hostile::FRONTEND, hostile::DB] {
        let (own, gateway) = lab.macs(sender);
        cases.extend(
            corpus(own, gateway)
                .into_iter()
                .filter(|c| c.end_to_end && c.sender == sender),
        );
    }
    let captured = capture_while(&be, Duration::from_millis(1500), || {
        if warm {
            for _ in 0..2 {
                for (from, to) in [
                    (hostile::FRONTEND4, hostile::BACKEND4),
                    (hostile::FRONTEND6, hostile::BACKEND6),
                ] {
                    talk(
                        warm_tcp.get_mut(&to.parse::<IpAddr>().unwrap()).unwrap(),
                        from,
                    );
                }
                for c in &cases {
                    send_raw(&lab.ns(c.sender), &warm_up(&c.frames));
                }
                // The workers write cache entries after each batch.
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        for c in &cases {
            send_raw(&lab.ns(c.sender), &c.frames);
        }
    });
    let mut arrived: HashMap<u16, usize> = HashMap::new();
    for f in &captured {
        if let Some(t) = tag_of(f) {
            *arrived.entry(t).or_default() += 1;
        }
    }
    let all = corpus([0; 6], [0; 6]);
    let mut wrong = Vec::new();
    for c in &cases {
        let index = all.iter().position(|a| a.name == c.name).unwrap() as u16;
        let got = arrived.get(&index).copied().unwrap_or(0);
        let want = c.arrivals_at(&backend);
        if got != want {
            wrong.push(format!(
                "{}: {got} frames reached backend, expected {want}",
                c.name
            ));
        }
    }
    let (status, counters) = xpf.stop();
    assert!(status.success());
    // Each sender's drops by reason: at least what the corpus expects (the
    // kernels in the endpoints send their own traffic too).
    let mut expected: HashMap<(&str, &str), u64> = HashMap::new();
    for c in &cases {
        for e in &c.expect {
            if let Expect::Drop(r) = e {
                *expected.entry((c.sender, r.as_str())).or_default() += 1;
            }
        }
    }
    for ((sender, reason), n) in &expected {
        let got = counter(&counters, sender, reason);
        if got < *n {
            wrong.push(format!(
                "{sender} {reason}: counted {got}, expected at least {n}"
            ));
        }
    }
    if warm {
        let served: u64 = [hostile::FRONTEND, hostile::DB]
            .iter()
            .map(|s| counter(&counters, s, "passed_cached"))
            .sum();
        if served == 0 {
            wrong.push("no frame was served from the verdict cache".into());
        }
    }
    assert!(wrong.is_empty(), "{}\n{counters:#}", wrong.join("\n"));
}

#[test]
fn floods_from_one_endpoint_cost_the_others_nothing_end_to_end() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use xpf::sys::netns;
    use xpf::wire::tcp_flags::SYN;
    require_root!();
    // conntrack_max as small as xpf allows: 1,024 entries, 341 each.
    let lab = Lab::new("datapath:\n  conntrack_max: 1024");
    let xpf = lab.run();
    let (fe, be) = (lab.ns("frontend"), lab.ns("backend"));

    // frontend -> backend TCP 8080, established; both ends held here.
    let listener = netns::run_in(&be, || TcpListener::bind("198.18.10.3:8080"))
        .unwrap()
        .unwrap();
    let mut client = netns::run_in(&fe, || {
        TcpStream::connect_timeout(&"198.18.10.3:8080".parse().unwrap(), Duration::from_secs(5))
    })
    .unwrap()
    .expect("frontend connects to backend");
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).unwrap();

    // backend floods: SYNs to db TCP 5432 (allowed) from 20,000 ports, and
    // 20,000 first fragments, in bursts the worker can take in.
    let syns: Vec<Vec<u8>> = (0..20_000u16)
        .map(|p| hostile::tcp_frame(hostile::BACKEND4, hostile::DB4, 10_000 + p, 5432, SYN, 0))
        .collect();
    let (first, _) = hostile::fragmented_tcp(hostile::BACKEND4, hostile::DB4, 5432);
    let frags: Vec<Vec<u8>> = (0..20_000u16)
        .map(|id| hostile::with_fragment_id(&first, id))
        .collect();
    for burst in syns.chunks(250).chain(frags.chunks(250)) {
        send_raw(&be, burst);
        std::thread::sleep(Duration::from_millis(2));
    }

    // backend speaks first on the old connection: its segment passes only
    // as a reply, so only if frontend's entry survived the flood.
    server.write_all(b"still").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let got = client.read_exact(&mut buf).map(|_| buf);
    // frontend's fragmented datagram to backend arrives whole.
    let (own, gateway) = lab.macs("frontend");
    let case = corpus(own, gateway)
        .into_iter()
        .find(|c| c.name == "IPv4 fragments of an allowed datagram")
        .unwrap();
    let captured = capture_while(&be, Duration::from_millis(1000), || {
        send_raw(&fe, &case.frames)
    });
    let whole = captured.iter().filter(|f| tag_of(f).is_some()).count();
    let (status, c) = xpf.stop();
    assert!(status.success());
    assert_eq!(got.as_ref().ok(), Some(b"still"), "{c:#}");
    assert_eq!(whole, 2, "{c:#}");
    // The flood cost backend: its share was full, and it gave up its own
    // unanswered SYNs.
    assert!(counter(&c, "backend", "fragment_table_full") > 0, "{c:#}");
    assert!(c["conntrack_early_dropped"].as_u64().unwrap() > 0, "{c:#}");
    assert_eq!(counter(&c, "frontend", "fragment_table_full"), 0);
    assert_eq!(counter(&c, "frontend", "conntrack_full"), 0);
}
