//! `xpf demo`: the example topology with real traffic, in namespaces of its
//! own. A private "host" namespace stands in for the machine (so nothing of
//! the real host is touched), an "outside" namespace behind it stands for
//! the world, and the config's endpoints get namespaces named after this
//! run. Every endpoint tries TCP and UDP, over IPv4 and IPv6, to every other
//! endpoint, the host and the outside; the verdict the policy engine expects
//! is printed beside what the traffic did.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::datapath::Datapath;
use crate::netns::{self, OwnedNetns};
use crate::policy::Verdict;
use crate::probe::{round_trip, EchoServer, Transport};

/// How long a probe waits for its echo before calling it dropped.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(format!("/proc/sys/{path}"), value).with_context(|| format!("setting {path}"))
}

/// One destination the endpoints try.
struct Target {
    label: String,
    /// Namespace its servers run in (`None`: the demo's host namespace).
    netns: Option<String>,
    addrs: Vec<IpAddr>,
    port: u16,
}

pub(super) fn demo(config_path: &Path) -> Result<()> {
    let mut config = Config::load(config_path)?;
    let tag = format!("xd{}", std::process::id());
    let _signals = super::run::block_stop_signals();

    // The private host namespace; this thread (and every thread and `ip`
    // command started from now on) works inside it.
    let host = OwnedNetns::create(&format!("{tag}-host"))?;
    netns::enter(host.name())?;
    ip(&["link", "set", "lo", "up"])?;
    for a in &config.host_addresses {
        let len = if a.is_ipv4() { 32 } else { 128 };
        ip(&["addr", "add", &format!("{a}/{len}"), "dev", "lo"])?;
    }
    sysctl("net/ipv4/ip_forward", "1")?;
    sysctl("net/ipv6/conf/all/forwarding", "1")?;

    // The outside: one namespace behind a veth, holding a few world
    // addresses, among them the ones the example policies name.
    let outside = OwnedNetns::create(&format!("{tag}-out"))?;
    let out_ns = outside.name().to_string();
    // Fixed MACs and static neighbours, no link-local addresses: no ND or
    // DAD delays on the way to the outside.
    let (host_mac, out_mac) = ("02:00:00:00:01:01", "02:00:00:00:01:02");
    ip(&[
        "link", "add", "xpf-out", "address", host_mac, "type", "veth", "peer", "name", "eth0",
        "address", out_mac, "netns", &out_ns,
    ])?;
    ip(&["link", "set", "dev", "xpf-out", "addrgenmode", "none"])?;
    ip(&[
        "-n",
        &out_ns,
        "link",
        "set",
        "dev",
        "eth0",
        "addrgenmode",
        "none",
    ])?;
    for (ns, dev, addr, mac) in [
        (None, "xpf-out", "198.18.1.2", out_mac),
        (None, "xpf-out", "2001:db8:1::2", out_mac),
        (Some(&out_ns), "eth0", "198.18.1.1", host_mac),
        (Some(&out_ns), "eth0", "2001:db8:1::1", host_mac),
    ] {
        let mut args = Vec::new();
        if let Some(ns) = ns {
            args.extend(["-n", ns.as_str()]);
        }
        args.extend([
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
        ip(&args)?;
    }
    ip(&["addr", "add", "198.18.1.1/24", "dev", "xpf-out"])?;
    ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        "xpf-out",
        "nodad",
    ])?;
    ip(&["link", "set", "xpf-out", "up"])?;
    let world4 = ["198.19.1.1", "198.19.99.1", "198.19.200.1"];
    let world6 = "2001:db8:99::1";
    ip(&["-n", &out_ns, "link", "set", "lo", "up"])?;
    ip(&["-n", &out_ns, "addr", "add", "198.18.1.2/24", "dev", "eth0"])?;
    ip(&[
        "-n",
        &out_ns,
        "-6",
        "addr",
        "add",
        "2001:db8:1::2/64",
        "dev",
        "eth0",
        "nodad",
    ])?;
    for a in world4 {
        ip(&[
            "-n",
            &out_ns,
            "addr",
            "add",
            &format!("{a}/32"),
            "dev",
            "lo",
        ])?;
    }
    ip(&[
        "-n",
        &out_ns,
        "-6",
        "addr",
        "add",
        &format!("{world6}/128"),
        "dev",
        "lo",
    ])?;
    ip(&["-n", &out_ns, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        &out_ns,
        "route",
        "add",
        "default",
        "via",
        "198.18.1.1",
    ])?;
    ip(&[
        "-n",
        &out_ns,
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:1::1",
    ])?;
    ip(&["route", "add", "198.19.0.0/16", "via", "198.18.1.2"])?;
    ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:99::/48",
        "via",
        "2001:db8:1::2",
    ])?;

    for e in &mut config.endpoints {
        e.netns = format!("{tag}-{}", e.name);
    }
    let dp = Datapath::start(config.clone()).context("starting the datapath")?;
    println!("xpf: ready (demo namespaces {tag}-*)");

    // Ports the example policies talk about, so some exchanges are allowed.
    let port_of = |name: &str| match name {
        "backend" => 8080,
        "db" => 5432,
        _ => 80,
    };
    let mut targets: Vec<Target> = config
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
        addrs: config.host_addresses.clone(),
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

    let mut servers = Vec::new();
    for t in &targets {
        for a in &t.addrs {
            for tr in [Transport::Tcp, Transport::Udp] {
                servers.push(EchoServer::start(
                    t.netns.as_deref(),
                    tr,
                    SocketAddr::new(*a, t.port),
                )?);
            }
        }
    }

    // (from, from netns, to label, address, port, transport, expected)
    let mut probes = Vec::new();
    for (i, src) in config.endpoints.iter().enumerate() {
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
    for e in &config.endpoints {
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
    let fin = dp.stop();
    println!();
    print!("{}", fin.render());
    drop(outside);
    drop(host);
    println!();
    if mismatches > 0 {
        bail!(
            "{mismatches} of {} exchanges did not match the policy",
            probes.len()
        );
    }
    println!("all {} exchanges matched the policy", probes.len());
    Ok(())
}
