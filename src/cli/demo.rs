//! `xpf demo`: the example topology with real traffic, in namespaces of its
//! own. A private "host" namespace stands in for the machine (so nothing of
//! the real host is touched), an "outside" namespace behind it stands for
//! the world, and the config's endpoints get namespaces named after this
//! run. Every endpoint tries TCP and UDP, over IPv4 and IPv6, to every other
//! endpoint, the host and the outside; the verdict the policy engine expects
//! is printed beside what the traffic did. Then one allowed flow watches a
//! policy edit applied live and reverted (see [`live`]).

mod live;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::datapath::Datapath;
use crate::engine::Engine;
use crate::harness::probe::{round_trip, EchoServer, Transport};
use crate::harness::testbed::Testbed;
use crate::policy::Verdict;
use crate::sys::netns;

/// How long a probe waits for its echo before calling it dropped.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// One destination the endpoints try.
struct Target {
    label: String,
    /// Namespace its servers run in (`None`: the demo's host namespace).
    netns: Option<String>,
    addrs: Vec<IpAddr>,
    port: u16,
}

pub(super) fn demo(config_path: &Path) -> Result<()> {
    let mut config = super::load_config(config_path)?;
    let tag = format!("xd{}", std::process::id());
    // Held, never read: a Ctrl-C waits for the demo to finish and clean up.
    let _signals = super::signals::StopSignals::new()?;

    let world4 = ["198.19.1.1", "198.19.99.1", "198.19.200.1"];
    let world6 = "2001:db8:99::1";
    let world: Vec<IpAddr> = world4
        .iter()
        .chain([&world6])
        .map(|a| a.parse().expect("literal address"))
        .collect();
    let routes = ["198.19.0.0/16".parse()?, "2001:db8:99::/48".parse()?];
    let bed = Testbed::build(&tag, &config.world.host_addresses, &world, &routes)?;
    let out_ns = bed.outside.name().to_string();
    // This thread, and every thread and `ip` command started from now on,
    // works inside the private host namespace.
    netns::enter(bed.host.name())?;

    for e in &mut config.world.endpoints {
        e.netns = format!("{tag}-{}", e.name);
    }
    // Ports the example policies talk about, so some exchanges are allowed.
    let port_of = |name: &str| match name {
        "backend" => 8080,
        "db" => 5432,
        _ => 80,
    };
    let mut targets: Vec<Target> = config
        .world
        .endpoints
        .iter()
        .map(|e| Target {
            label: e.name.clone(),
            netns: Some(e.netns.clone()),
            addrs: e.addresses().collect(),
            port: port_of(&e.name),
        })
        .collect();
    targets.push(Target {
        label: "host".into(),
        netns: None,
        addrs: config.world.host_addresses.clone(),
        port: 53,
    });
    targets.push(Target {
        label: "world".into(),
        netns: Some(out_ns.clone()),
        addrs: vec![world4[0].parse()?, world6.parse()?],
        port: 443,
    });
    targets.push(Target {
        label: "quarantine".into(),
        netns: Some(out_ns.clone()),
        addrs: vec![world4[1].parse()?],
        port: 443,
    });
    targets.push(Target {
        label: "backup".into(),
        netns: Some(out_ns.clone()),
        addrs: vec![world4[2].parse()?],
        port: 873,
    });

    let engine = Engine::new(&config.world)?;
    let mut dp =
        Datapath::start(engine, config.datapath.clone()).context("starting the datapath")?;
    println!("xpf: ready (demo namespaces {tag}-*)");
    let servers: Result<Vec<_>, _> = targets
        .iter()
        .flat_map(|t| t.addrs.iter().map(move |a| (t, *a)))
        .flat_map(|(t, a)| {
            [Transport::Tcp, Transport::Udp]
                .map(|tr| EchoServer::start(t.netns.as_deref(), tr, SocketAddr::new(a, t.port)))
        })
        .collect();
    let servers = match servers {
        Ok(s) => s,
        Err(e) => {
            // The demo's world is throwaway: remove it, not leave it
            // enforcing as a dropped datapath would.
            dp.stop();
            return Err(e).context("starting the demo's echo servers");
        }
    };

    // (from, from netns, to label, address, port, transport, expected)
    let mut probes = Vec::new();
    for (i, src) in config.world.endpoints.iter().enumerate() {
        for t in &targets {
            if t.label == src.name {
                continue;
            }
            for a in &t.addrs {
                if (a.is_ipv4() && src.ipv4.is_none()) || (a.is_ipv6() && src.ipv6.is_none()) {
                    continue;
                }
                for tr in [Transport::Tcp, Transport::Udp] {
                    let proto = if tr == Transport::Tcp { 6 } else { 17 };
                    let expected =
                        dp.engine.check(i, *a, proto, t.port).decision.verdict == Verdict::Allowed;
                    probes.push((
                        src.name.clone(),
                        src.netns.clone(),
                        t.label.clone(),
                        *a,
                        t.port,
                        tr,
                        expected,
                    ));
                }
            }
        }
    }
    // Inbound: the world opens connections to the endpoints. Egress policy
    // does not apply; the endpoints' answers are replies.
    for e in &config.world.endpoints {
        for a in e.addresses() {
            probes.push((
                "world".into(),
                out_ns.clone(),
                e.name.clone(),
                a,
                port_of(&e.name),
                Transport::Tcp,
                true,
            ));
        }
    }

    let observed: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|(_, ns, _, a, port, tr, _)| {
                s.spawn(move || {
                    round_trip(Some(ns), *tr, SocketAddr::new(*a, *port), PROBE_TIMEOUT)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .collect()
    });
    drop(servers);

    println!();
    println!(
        "{:<10} {:<11} {:<18} {:<9} {:<8} {:<8}",
        "from", "to", "address", "proto", "expect", "observed"
    );
    let mut mismatches = 0;
    for (p, got) in probes.iter().zip(&observed) {
        let (from, _, to, a, port, tr, expected) = p;
        let verdict = |b: bool| if b { "allow" } else { "deny" };
        let mark = if got == expected {
            ""
        } else {
            "  <-- MISMATCH"
        };
        mismatches += usize::from(got != expected);
        println!(
            "{:<10} {:<11} {:<18} {:<9} {:<8} {:<8}{mark}",
            from,
            to,
            a.to_string(),
            format!("{}/{port}", tr.as_str()),
            verdict(*expected),
            verdict(*got)
        );
    }
    println!();
    let live = match live::run(&mut dp) {
        Ok(l) => l,
        Err(e) => {
            dp.stop();
            return Err(e);
        }
    };
    let fin = dp.stop();
    println!();
    print!("{}", fin.render());
    drop(bed);
    println!();
    let mut failed = Vec::new();
    if mismatches > 0 {
        failed.push(format!(
            "{mismatches} of {} exchanges did not match the policy",
            probes.len()
        ));
    } else {
        println!("all {} exchanges matched the policy", probes.len());
    }
    match live {
        Some(l) if l.mismatches > 0 => failed.push(format!(
            "{} of {} live-change checks did not match the policy",
            l.mismatches, l.checks
        )),
        Some(l) => println!(
            "live change: all {} checks as expected (deny at revision {}, reverted at revision {})",
            l.checks, l.revisions.0, l.revisions.1
        ),
        None => {}
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}
