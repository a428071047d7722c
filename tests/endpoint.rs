//! Endpoints and the internal pair on real namespaces and veths, with real
//! TCP between two endpoints (the kernel forwards: no XDP is attached).
//!
//! Needs root; skipped with a note otherwise. Every test works inside a host
//! namespace of its own, with names unique to the run, so tests can run in
//! parallel and never touch the machine's own namespace. Only 198.18.0.0/15
//! and 2001:db8::/32 are used.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use xpf::endpoint::{
    self, Attach, EndpointError, EndpointSpec, Owner, Topology, GATEWAY_V6, INTERNAL_HOST_IFNAME,
    INTERNAL_NET_IFNAME,
};
use xpf::sys::netns::{self, OwnedNetns};

const WAIT: Duration = Duration::from_secs(5);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("note: skipping {}: needs root", module_path!());
            return;
        }
    };
}

/// A name no other test or run uses: `x`, a tag, the pid and a counter, all
/// within the 15 bytes an interface name may have.
fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("x{tag}{:x}{n:x}", std::process::id())
}

/// Deletes the named namespaces on drop if they still exist, so a failing
/// test leaves nothing behind even when it never reached its teardown.
struct Sweep(Vec<String>);

impl Drop for Sweep {
    fn drop(&mut self) {
        for name in &self.0 {
            if netns::exists(name) {
                let _ = netns::delete(name);
            }
        }
    }
}

fn spec(name: &str, host_ifname: &str, n: u8, queues: u32) -> EndpointSpec {
    EndpointSpec {
        name: name.into(),
        netns: name.into(),
        host_ifname: host_ifname.into(),
        ipv4: Some(Ipv4Addr::new(198, 18, 0, n)),
        ipv6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n.into())),
        attach: Attach::Create,
        queues,
    }
}

/// `ip ARGS` in the calling thread's namespace.
fn ip(args: &str) -> Output {
    Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("ip runs")
}

fn ip_ok(args: &str) -> String {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ip_json(args: &str) -> serde_json::Value {
    let text = ip_ok(args);
    if text.trim().is_empty() {
        return serde_json::Value::Array(Vec::new());
    }
    serde_json::from_str(&text).unwrap()
}

fn link_exists(ifname: &str) -> bool {
    ip(&format!("link show dev {ifname}")).status.success()
}

fn sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{name}"))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .trim()
        .to_string()
}

/// A TCP connection from `from_ns` to `to` inside `to_ns`, bytes both ways,
/// and the source address the server saw.
fn tcp_round_trip(from_ns: &str, to_ns: &str, to: IpAddr) -> IpAddr {
    let listener = netns::run_in(to_ns, || TcpListener::bind((to, 0)))
        .unwrap()
        .unwrap_or_else(|e| panic!("bind {to} in {to_ns}: {e}"));
    let addr: SocketAddr = listener.local_addr().unwrap();
    let mut client = netns::run_in(from_ns, || TcpStream::connect_timeout(&addr, WAIT))
        .unwrap()
        .unwrap_or_else(|e| panic!("connect to {addr} from {from_ns}: {e}"));
    client.set_read_timeout(Some(WAIT)).unwrap();
    // The handshake is done, so the connection is already queued.
    let (mut server, seen) = listener.accept().unwrap();
    server.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    seen.ip()
}

#[test]
fn two_endpoints_carry_tcp_over_both_families() {
    require_root!();
    let (n1, n2) = (unique("a"), unique("b"));
    let _sweep = Sweep(vec![n1.clone(), n2.clone()]);
    let host = OwnedNetns::create(&unique("h")).unwrap();
    let global_forwarding = sysctl("net/ipv4/ip_forward");
    let s1 = spec(&n1, &unique("v"), 2, 2);
    let s2 = spec(&n2, &unique("v"), 3, 1);
    let specs = vec![s1.clone(), s2.clone()];

    let topology = netns::run_in(host.name(), || Topology::build(specs.clone(), 2))
        .unwrap()
        .unwrap();
    let [e1, e2] = &topology.endpoints[..] else {
        panic!("two endpoints")
    };
    assert_eq!((e1.rx_queues, e2.rx_queues), (2, 1));
    assert_eq!(e1.peer_ifname, "eth0");
    assert_ne!(e1.host_mac, e1.peer_mac);
    assert_ne!(e1.host_mac, e2.host_mac);
    let internal = &topology.internal;
    assert_eq!(internal.queues, 2);
    assert_eq!(
        (internal.net_ifname.as_str(), internal.host_ifname.as_str()),
        (INTERNAL_NET_IFNAME, INTERNAL_HOST_IFNAME)
    );
    assert_ne!(internal.net_ifindex, internal.host_ifindex);

    netns::run_in(host.name(), || {
        // What `ip` reports is what the endpoint says.
        let link = &ip_json(&format!("-j -d link show dev {}", s1.host_ifname))[0];
        assert_eq!(link["ifindex"], e1.host_ifindex);
        assert_eq!(link["address"], endpoint::format_mac(&e1.host_mac));
        assert_eq!(link["num_rx_queues"], 2);
        let peer = &ip_json(&format!("-n {n1} -j link show dev eth0"))[0];
        assert_eq!(peer["address"], endpoint::format_mac(&e1.peer_mac));
        let pair = &ip_json(&format!("-j -d link show dev {INTERNAL_NET_IFNAME}"))[0];
        assert_eq!(pair["num_rx_queues"], 2);
        assert_eq!(pair["num_tx_queues"], 2);

        // The internal pair's sysctls, in this namespace only.
        for (name, want) in [
            ("net/ipv4/conf/xpf_host/forwarding", "1"),
            ("net/ipv4/conf/xpf_host/rp_filter", "0"),
            ("net/ipv6/conf/xpf_host/force_forwarding", "1"),
        ] {
            assert_eq!(sysctl(name), want, "{name}");
        }

        // No link-local address on either end, and none on the host side at all.
        for (ns, dev) in [(Some(n1.as_str()), "eth0"), (None, s1.host_ifname.as_str())] {
            let cmd = match ns {
                Some(ns) => format!("-n {ns} -j addr show dev {dev}"),
                None => format!("-j addr show dev {dev}"),
            };
            let addrs = ip_json(&cmd);
            let infos = addrs[0]["addr_info"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(
                !infos.iter().any(|a| a["scope"] == "link"),
                "{dev} has a link-local address: {infos:?}"
            );
            if ns.is_none() {
                assert!(
                    infos.iter().all(|a| a.get("local").is_none()),
                    "{dev}: {infos:?}"
                );
            }
        }
        // The IPv6 default route is the link-local gateway, without one of our own.
        let routes = ip_json(&format!("-n {n1} -6 -j route show default"));
        assert_eq!(routes[0]["gateway"], GATEWAY_V6.to_string());

        // The kernel forwards between the endpoints in this namespace only.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").unwrap();
        let v4 = |s: &EndpointSpec| IpAddr::V4(s.ipv4.unwrap());
        let v6 = |s: &EndpointSpec| IpAddr::V6(s.ipv6.unwrap());
        for (from_ns, from, to_ns, to) in [
            (&n1, v4(&s1), &n2, v4(&s2)),
            (&n1, v6(&s1), &n2, v6(&s2)),
            (&n2, v6(&s2), &n1, v6(&s1)),
        ] {
            assert_eq!(tcp_round_trip(from_ns, to_ns, to), from, "{from} -> {to}");
        }

        let status = endpoint::list(&specs).unwrap();
        for (st, s) in status.iter().zip(&specs) {
            assert!(st.netns_exists && st.host_if_exists, "{st:?}");
            assert_eq!(st.peer_ifname.as_deref(), Some("eth0"));
            assert_eq!(st.tx_checksum_offload, Some(false), "{}", s.name);
            let mut want: Vec<IpAddr> = vec![s.ipv4.unwrap().into(), s.ipv6.unwrap().into()];
            let mut got = st.addresses.clone();
            want.sort();
            got.sort();
            assert_eq!(got, want);
        }
    })
    .unwrap();
    assert_eq!(
        sysctl("net/ipv4/ip_forward"),
        global_forwarding,
        "the machine's own forwarding setting changed"
    );

    // Dropped on this thread, outside the host namespace: it still tears
    // down in the namespace it was built in.
    drop(topology);
    assert!(!netns::exists(&n1) && !netns::exists(&n2));
    netns::run_in(host.name(), || {
        for dev in [&s1.host_ifname, &s2.host_ifname] {
            assert!(!link_exists(dev), "{dev} is still there");
        }
        assert!(!link_exists(INTERNAL_NET_IFNAME));
        assert!(!link_exists(INTERNAL_HOST_IFNAME));
        let status = endpoint::list(&specs).unwrap();
        assert!(status.iter().all(|s| !s.netns_exists && !s.host_if_exists));
    })
    .unwrap();
}

#[test]
fn building_twice_fails_cleanly_and_leaves_nothing_half_made() {
    require_root!();
    let names: Vec<String> = (0..5).map(|_| unique("e")).collect();
    let _sweep = Sweep(names.clone());
    let host_a = OwnedNetns::create(&unique("h")).unwrap();
    let host_b = OwnedNetns::create(&unique("h")).unwrap();
    let specs: Vec<EndpointSpec> = names
        .iter()
        .enumerate()
        .map(|(i, n)| spec(n, &unique("v"), 10 + i as u8, 1))
        .collect();

    netns::run_in(host_a.name(), || {
        let first = Topology::build(specs[..2].to_vec(), 1).unwrap();

        // Same namespace: the internal pair is taken.
        let err = Topology::build(specs[..2].to_vec(), 1).unwrap_err();
        assert_eq!(err.owner(), &Owner::InternalPair);
        let text = err.to_string();
        assert!(
            text.contains("interface `xpf_net`: exists") && text.contains("xpf cleanup"),
            "{text}"
        );
        assert!(netns::exists(&names[0]) && netns::exists(&names[1]));
        assert!(link_exists(&specs[0].host_ifname) && link_exists(&specs[1].host_ifname));

        netns::run_in(host_b.name(), || {
            // Another host namespace: the second endpoint's namespace is
            // taken, so the first endpoint and the pair are undone again.
            let clash = vec![specs[2].clone(), specs[0].clone()];
            let err = Topology::build(clash, 1).unwrap_err();
            match &err {
                EndpointError::Netns {
                    owner,
                    netns,
                    message,
                } => {
                    assert_eq!(owner, &Owner::Endpoint(names[0].clone()));
                    assert_eq!(netns, &names[0]);
                    assert!(message.contains("already exists"), "{message}");
                }
                other => panic!("expected a namespace error, got {other}"),
            }
            assert!(!netns::exists(&names[2]));
            assert!(!link_exists(&specs[2].host_ifname));
            assert!(!link_exists(INTERNAL_NET_IFNAME));
            // ...and the endpoint that exists elsewhere is not touched.
            assert!(netns::exists(&names[0]));

            // Failing half-way through an endpoint: its host route is taken.
            ip_ok("link add name xblk0 type veth peer name xblk1");
            ip_ok("link set dev xblk0 up");
            ip_ok(&format!(
                "route add {}/32 dev xblk0",
                specs[4].ipv4.unwrap()
            ));
            let err = Topology::build(specs[3..5].to_vec(), 1).unwrap_err();
            match &err {
                EndpointError::Command {
                    owner,
                    interface,
                    command,
                    stderr,
                } => {
                    assert_eq!(owner, &Owner::Endpoint(names[4].clone()));
                    assert_eq!(interface, &specs[4].host_ifname);
                    assert!(command.contains("route add"), "{command}");
                    assert!(stderr.contains("File exists"), "{stderr}");
                }
                other => panic!("expected a command error, got {other}"),
            }
            let text = err.to_string();
            assert!(
                text.contains(&names[4]) && text.contains(&specs[4].host_ifname),
                "{text}"
            );
            for i in [3, 4] {
                assert!(!netns::exists(&names[i]), "{} is still there", names[i]);
                assert!(!link_exists(&specs[i].host_ifname));
            }
            assert!(!link_exists(INTERNAL_NET_IFNAME));
            assert!(
                link_exists("xblk0"),
                "a failed build deleted what it did not make"
            );
        })
        .unwrap();

        assert!(netns::exists(&names[0]) && netns::exists(&names[1]));
        first.teardown().unwrap();
        assert!(!netns::exists(&names[0]) && !netns::exists(&names[1]));
        assert!(!link_exists(&specs[0].host_ifname) && !link_exists(INTERNAL_NET_IFNAME));
    })
    .unwrap();
}

#[test]
fn errors_name_the_field_and_the_interface() {
    require_root!();
    let host = OwnedNetns::create(&unique("h")).unwrap();
    let n = unique("e");
    let _sweep = Sweep(vec![n.clone()]);
    netns::run_in(host.name(), || {
        let mut bad = spec(&n, &unique("v"), 20, 0);
        let err = Topology::build(vec![bad.clone()], 1).unwrap_err();
        assert!(
            matches!(&err, EndpointError::Invalid { field: "queues", .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("endpoint `{n}`")), "{err}");

        bad.queues = 1;
        bad.host_ifname = "far-too-long-name".into();
        let err = Topology::build(vec![bad.clone()], 1).unwrap_err();
        assert!(err.to_string().contains("host_ifname"), "{err}");

        let err = Topology::build(Vec::new(), 0).unwrap_err();
        assert!(
            matches!(&err, EndpointError::Invalid { owner: Owner::InternalPair, field: "workers", .. }),
            "{err}"
        );

        // Nothing was made by any of that.
        assert!(!netns::exists(&n));
        assert!(!link_exists(INTERNAL_NET_IFNAME));

        // Adopting what is not there names the namespace, then the interface.
        let mut adopted = spec(&n, &unique("v"), 21, 1);
        adopted.attach = Attach::Existing;
        let err = endpoint::adopt(adopted.clone()).unwrap_err();
        assert!(
            matches!(&err, EndpointError::Netns { netns, .. } if *netns == n),
            "{err}"
        );
        let _ns = OwnedNetns::create(&n).unwrap();
        let err = endpoint::adopt(adopted.clone()).unwrap_err();
        assert!(
            matches!(&err, EndpointError::Interface { interface, .. } if *interface == adopted.host_ifname),
            "{err}"
        );
        assert!(err.to_string().contains("does not exist"), "{err}");

        // Creating over a host interface that exists names it.
        ip_ok(&format!("link add name {} type veth peer name xblk1", adopted.host_ifname));
        let mut created = adopted.clone();
        created.netns = unique("e");
        created.attach = Attach::Create;
        let _sweep = Sweep(vec![created.netns.clone()]);
        let err = endpoint::create(created.clone()).unwrap_err();
        assert!(
            matches!(&err, EndpointError::Interface { interface, .. } if *interface == created.host_ifname),
            "{err}"
        );
        assert!(!netns::exists(&created.netns));
    })
    .unwrap();
}

#[test]
fn adopted_endpoint_is_left_as_it_was_found() {
    require_root!();
    let host = OwnedNetns::create(&unique("h")).unwrap();
    let inner = OwnedNetns::create(&unique("e")).unwrap();
    let ns = inner.name().to_string();
    let host_if = unique("v");
    let mut s = spec("adopted", &host_if, 30, 1);
    s.netns = ns.clone();
    s.attach = Attach::Existing;
    let (a4, a6) = (s.ipv4.unwrap(), s.ipv6.unwrap());

    netns::run_in(host.name(), || {
        ip_ok(&format!(
            "link add name {host_if} type veth peer name inside netns {ns}"
        ));
        ip_ok(&format!("-n {ns} link set dev inside up"));
        ip_ok(&format!("-n {ns} addr add {a4}/32 dev inside"));

        // The IPv6 address is missing: refused, naming the interface.
        let err = endpoint::adopt(s.clone()).unwrap_err();
        assert!(
            matches!(&err, EndpointError::Interface { interface, .. } if interface == "inside"),
            "{err}"
        );
        assert!(err.to_string().contains(&a6.to_string()), "{err}");
        ip_ok(&format!("-n {ns} -6 addr add {a6}/128 dev inside nodad"));

        let before = endpoint::list(std::slice::from_ref(&s)).unwrap().remove(0);
        assert_eq!(before.tx_checksum_offload, Some(true));
        let ep = endpoint::setup(s.clone()).unwrap();
        assert_eq!(ep.peer_ifname, "inside");
        let peer = &ip_json(&format!("-n {ns} -j link show dev inside"))[0];
        assert_eq!(peer["address"], endpoint::format_mac(&ep.peer_mac));
        // veth's default queue count is the number of possible CPUs.
        let link = &ip_json(&format!("-j -d link show dev {host_if}"))[0];
        assert_eq!(link["num_rx_queues"], ep.rx_queues);
        assert_eq!(link["ifindex"], ep.host_ifindex);
        let during = endpoint::list(std::slice::from_ref(&s)).unwrap().remove(0);
        assert_eq!(during.tx_checksum_offload, Some(false));
        for (family, dst) in [("-4", format!("{a4}/32")), ("-6", format!("{a6}/128"))] {
            let routes = ip_json(&format!("{family} -j route show exact {dst}"));
            assert_eq!(routes[0]["dev"], host_if.as_str(), "{dst}");
        }
        let neigh = ip_json(&format!("-j neigh show {a4} dev {host_if}"));
        assert_eq!(neigh[0]["lladdr"], endpoint::format_mac(&ep.peer_mac));
        // Deleting by spec leaves adopted endpoints alone.
        assert!(!endpoint::delete(&s).unwrap());

        ep.teardown().unwrap();
        assert!(netns::exists(&ns), "the adopted namespace was deleted");
        assert!(link_exists(&host_if), "the adopted veth was deleted");
        for (family, dst) in [("-4", format!("{a4}/32")), ("-6", format!("{a6}/128"))] {
            let routes = ip_json(&format!("{family} -j route show exact {dst}"));
            assert_eq!(routes, serde_json::json!([]), "{dst}");
        }
        for a in [IpAddr::V4(a4), IpAddr::V6(a6)] {
            let neigh = ip_json(&format!("-j neigh show {a} dev {host_if}"));
            assert_eq!(neigh, serde_json::json!([]), "{a}");
        }
        let after = endpoint::list(std::slice::from_ref(&s)).unwrap().remove(0);
        assert_eq!(after, before);
    })
    .unwrap();
}

#[test]
fn created_endpoint_outlives_its_value_until_deleted_by_spec() {
    require_root!();
    let host = OwnedNetns::create(&unique("h")).unwrap();
    let n = unique("e");
    let _sweep = Sweep(vec![n.clone()]);
    let mut s = spec(&n, &unique("v"), 40, 1);
    s.ipv6 = None;
    netns::run_in(host.name(), || {
        drop(endpoint::create(s.clone()).unwrap());
        assert!(netns::exists(&n) && link_exists(&s.host_ifname));
        let status = endpoint::list(std::slice::from_ref(&s)).unwrap().remove(0);
        assert_eq!(status.addresses, vec![IpAddr::V4(s.ipv4.unwrap())]);

        assert!(endpoint::delete(&s).unwrap());
        assert!(!netns::exists(&n) && !link_exists(&s.host_ifname));
        assert!(!endpoint::delete(&s).unwrap());
    })
    .unwrap();
}
