//! The BPF programs on real veths, root only: XDP attach in each mode and
//! its errors, fail-closed dropping without a socket, and the inbound TC
//! reporter's flow events. Each test builds its own pair of namespaces
//! (`host` holds the host-side veth the programs attach to, `peer` the
//! endpoint's end) and removes them on drop, also when an assertion fails.
//! Addresses come from 198.18.0.0/15 and 2001:db8::/32 only.

use std::io::ErrorKind;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use xpf::datapath::programs::{
    AttachMode, FlowEvent, ProgramConfig, ProgramError, Programs, TcCounter, XdpCounter,
};
use xpf::sys::netns::{self, OwnedNetns};

const HOST_IF: &str = "xh";
const PEER_IF: &str = "xe";
const HOST_MAC: &str = "02:00:5e:00:00:01";
const PEER_MAC: &str = "02:00:5e:00:00:02";
const HOST_V4: &str = "198.18.0.1";
const PEER_V4: &str = "198.18.0.2";
const HOST_V6: &str = "2001:db8::1";
const PEER_V6: &str = "2001:db8::2";

/// How long to wait for the kernel to process what a test sent. Only a
/// bound for polling: no assertion depends on how long anything took.
const PATIENCE: Duration = Duration::from_secs(10);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! skip_unless_root {
    () => {
        if !is_root() {
            eprintln!("note: skipped, needs root (BPF programs on veths in network namespaces)");
            return;
        }
    };
}

/// `ip` with whitespace-separated arguments, in the calling thread's netns.
fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -j link show dev <ifname>`'s one object.
fn link_json(ifname: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&ip(&format!("-j link show dev {ifname}"))).expect("ip -j is JSON");
    v[0].clone()
}

fn ifindex(ifname: &str) -> u32 {
    let index = link_json(ifname)["ifindex"].as_u64().expect("ifindex");
    u32::try_from(index).expect("ifindex fits u32")
}

/// Polls `cond` until it holds; panics with `what` if it never does.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn xdp_counter(p: &Programs, c: XdpCounter) -> u64 {
    p.xdp_counters().expect("xdp counters")[c.0 as usize]
}

fn tc_counter(p: &Programs, c: TcCounter) -> u64 {
    p.tc_counters().expect("tc counters")[c.0 as usize]
}

/// Two namespaces joined by a veth, addressed on both ends, with static
/// neighbour entries so no ARP or ND precedes the traffic under test.
struct Lab {
    host: OwnedNetns,
    peer: OwnedNetns,
}

impl Lab {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let lab = Lab {
            host: OwnedNetns::create(&format!("xpft-{pid}-{n}-host")).expect("host netns"),
            peer: OwnedNetns::create(&format!("xpft-{pid}-{n}-peer")).expect("peer netns"),
        };
        let peer_ns = lab.peer.name().to_string();
        lab.in_host(|| {
            ip(&format!(
                "link add {HOST_IF} address {HOST_MAC} type veth \
                 peer name {PEER_IF} address {PEER_MAC} netns {peer_ns}"
            ));
        });
        let addressing =
            |ifname: &str, v4: &str, v6: &str, other_v4: &str, other_v6: &str, other_mac: &str| {
                ip("link set lo up");
                ip(&format!("addr add {v4}/30 dev {ifname}"));
                ip(&format!("-6 addr add {v6}/64 dev {ifname} nodad"));
                ip(&format!("link set {ifname} up"));
                ip(&format!(
                    "neigh replace {other_v4} lladdr {other_mac} dev {ifname} nud permanent"
                ));
                ip(&format!(
                    "-6 neigh replace {other_v6} lladdr {other_mac} dev {ifname} nud permanent"
                ));
            };
        lab.in_host(|| addressing(HOST_IF, HOST_V4, HOST_V6, PEER_V4, PEER_V6, PEER_MAC));
        lab.in_peer(|| addressing(PEER_IF, PEER_V4, PEER_V6, HOST_V4, HOST_V6, HOST_MAC));
        lab
    }

    fn in_host<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::run_in(self.host.name(), f).expect("enter host netns")
    }

    fn in_peer<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::run_in(self.peer.name(), f).expect("enter peer netns")
    }

    fn host_ifindex(&self) -> u32 {
        self.in_host(|| ifindex(HOST_IF))
    }

    /// Sends `count` UDP datagrams from the peer (endpoint) side to the host
    /// side, i.e. into the host-side veth's receive path.
    fn send_from_peer(&self, dport: u16, count: usize) {
        self.in_peer(|| {
            let sock = UdpSocket::bind((PEER_V4.parse::<Ipv4Addr>().unwrap(), 0)).unwrap();
            for _ in 0..count {
                sock.send_to(b"xpf", (HOST_V4.parse::<Ipv4Addr>().unwrap(), dport))
                    .unwrap();
            }
        });
    }
}

/// A UDP socket on the host side of the veth, for seeing what got through.
fn host_listener(lab: &Lab) -> UdpSocket {
    lab.in_host(|| {
        let sock = UdpSocket::bind((HOST_V4.parse::<Ipv4Addr>().unwrap(), 0)).unwrap();
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        sock
    })
}

#[test]
fn xdp_attaches_natively_and_generically_and_detaches_on_drop() {
    skip_unless_root!();
    let programs = Programs::load(false).expect("programs load");
    let lab = Lab::new();
    let ifindex = lab.host_ifindex();
    lab.in_host(|| {
        // IFLA_XDP_ATTACHED: 1 driver, 2 generic (skb).
        for (mode, attached) in [(AttachMode::Native, 1), (AttachMode::Generic, 2)] {
            let attachment = programs
                .attach_xdp(HOST_IF, ifindex, mode)
                .unwrap_or_else(|e| panic!("{mode}: {e}"));
            assert_eq!(attachment.mode(), mode);
            assert_eq!(attachment.ifindex(), ifindex);
            let link = link_json(HOST_IF);
            assert_eq!(link["xdp"]["mode"], attached, "{mode}: {link}");
            assert!(
                link["xdp"]["prog"]["id"].as_u64().is_some(),
                "{mode}: {link}"
            );

            drop(attachment);
            let link = link_json(HOST_IF);
            assert!(link.get("xdp").is_none(), "{mode}: still attached: {link}");
        }
    });
}

#[test]
fn xdp_offload_on_a_veth_names_the_interface_and_the_mode() {
    skip_unless_root!();
    let programs = Programs::load(false).expect("programs load");
    let lab = Lab::new();
    let ifindex = lab.host_ifindex();
    let err = lab
        .in_host(|| programs.attach_xdp(HOST_IF, ifindex, AttachMode::Offload))
        .expect_err("veth cannot offload XDP");
    assert!(
        matches!(err, ProgramError::XdpModeUnsupported { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(HOST_IF) && text.contains("offload"), "{text}");
    lab.in_host(|| assert!(link_json(HOST_IF).get("xdp").is_none()));
}

#[test]
fn xdp_attaching_twice_reports_the_program_already_there() {
    skip_unless_root!();
    let programs = Programs::load(false).expect("programs load");
    let lab = Lab::new();
    let ifindex = lab.host_ifindex();
    lab.in_host(|| {
        let _first = programs
            .attach_xdp(HOST_IF, ifindex, AttachMode::Generic)
            .expect("first attach");
        // The same mode again, and the other mode beside it.
        for mode in [AttachMode::Generic, AttachMode::Native] {
            let err = programs
                .attach_xdp(HOST_IF, ifindex, mode)
                .expect_err("second attach must fail");
            let text = err.to_string();
            assert!(
                text.contains(&format!(
                    "interface {HOST_IF} already has an XDP program attached"
                )),
                "{mode}: {text}"
            );
        }
    });
}

#[test]
fn xdp_drops_and_counts_frames_without_a_socket() {
    skip_unless_root!();
    let programs = Programs::load(false).expect("programs load");
    let lab = Lab::new();
    let ifindex = lab.host_ifindex();
    let listener = host_listener(&lab);
    let port = listener.local_addr().unwrap().port();

    // Without XDP the datagram arrives: the path itself works.
    lab.send_from_peer(port, 1);
    let mut buf = [0u8; 16];
    listener
        .recv(&mut buf)
        .expect("datagram reaches the host without XDP");
    listener.set_nonblocking(true).unwrap();

    for mode in [AttachMode::Generic, AttachMode::Native] {
        let _xdp = lab
            .in_host(|| programs.attach_xdp(HOST_IF, ifindex, mode))
            .unwrap_or_else(|e| panic!("{mode}: {e}"));

        // Interface unknown to if_slots, then known but with an empty slot.
        for known in [false, true] {
            if known {
                programs.set_interface_slots(ifindex, 0).unwrap();
            }
            let before = xdp_counter(&programs, XdpCounter::XPF_XDP_NO_SOCKET);
            lab.send_from_peer(port, 3);
            wait_until(
                &format!("{mode}, known={known}: 3 frames counted no_socket"),
                || xdp_counter(&programs, XdpCounter::XPF_XDP_NO_SOCKET) >= before + 3,
            );
            let got = listener.recv(&mut buf);
            assert!(
                matches!(&got, Err(e) if e.kind() == ErrorKind::WouldBlock),
                "{mode}, known={known}: a frame got through: {got:?}"
            );
        }
        programs.remove_interface(ifindex).unwrap();
        assert_eq!(xdp_counter(&programs, XdpCounter::XPF_XDP_REDIRECTED), 0);
        assert_eq!(xdp_counter(&programs, XdpCounter::XPF_XDP_FAIL_OPEN), 0);
    }
    // Removing an interface twice is fine.
    programs.remove_interface(ifindex).unwrap();
}

#[test]
fn xdp_fail_open_passes_frames_without_a_socket() {
    skip_unless_root!();
    let programs = Programs::load(true).expect("programs load");
    let lab = Lab::new();
    let ifindex = lab.host_ifindex();
    let listener = host_listener(&lab);
    let port = listener.local_addr().unwrap().port();
    let _xdp = lab
        .in_host(|| programs.attach_xdp(HOST_IF, ifindex, AttachMode::Generic))
        .expect("attach");

    lab.send_from_peer(port, 1);
    let mut buf = [0u8; 16];
    listener
        .recv(&mut buf)
        .expect("fail-open passes the datagram");
    assert!(xdp_counter(&programs, XdpCounter::XPF_XDP_FAIL_OPEN) >= 1);
    assert_eq!(xdp_counter(&programs, XdpCounter::XPF_XDP_NO_SOCKET), 0);
}

#[test]
fn slots_and_sockets_outside_the_map_are_refused() {
    skip_unless_root!();
    let programs = Programs::load(false).expect("programs load");
    let max = xpf::datapath::programs::MAX_XSK_SLOTS;
    assert!(matches!(
        programs.set_interface_slots(1, max),
        Err(ProgramError::SlotOutOfRange { slot }) if slot == max
    ));
    assert!(matches!(
        programs.register_xsk(max, 0),
        Err(ProgramError::SlotOutOfRange { .. })
    ));
    // A map entry needs an AF_XDP socket, not any fd.
    let err = programs.register_xsk(0, 0).expect_err("stdin is no XSK");
    assert!(err.to_string().contains("xsks"), "{err}");
}

/// Sends one ICMP echo request with identifier `id` over a raw socket.
fn send_echo_request(to: Ipv4Addr, id: u16) {
    let mut msg = [8u8, 0, 0, 0, 0, 0, 0, 1]; // type 8, code 0, checksum, id, seq 1
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    let sum = msg
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    msg[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());

    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh socket nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(to).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `msg` and `addr` are valid for the lengths passed.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(
        sent,
        msg.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn inbound_reports_new_flows_towards_the_endpoint() {
    skip_unless_root!();
    // A long interval so "within the interval" does not depend on timing.
    let programs = Programs::load_with(
        ProgramConfig {
            inbound_report_interval: Duration::from_secs(3600),
            ..ProgramConfig::default()
        },
        None,
    )
    .expect("programs load");
    let lab = Lab::new();
    let ifindex = lab.host_ifindex();
    let _tc = lab
        .in_host(|| programs.attach_inbound(HOST_IF, ifindex))
        .expect("tcx attach");

    let host_v4: IpAddr = HOST_V4.parse().unwrap();
    let peer_v4: IpAddr = PEER_V4.parse().unwrap();
    let host_v6: IpAddr = HOST_V6.parse().unwrap();
    let peer_v6: IpAddr = PEER_V6.parse().unwrap();

    // Everything below leaves through the veth's tcx egress hook in the
    // sending thread, before the send call returns.
    let (udp4_sock, udp4_port, udp6_port) = lab.in_host(|| {
        // A connection attempt towards the endpoint: nobody listens, so a
        // RST answers the SYN; only the SYN matters.
        let _ = TcpStream::connect_timeout(&SocketAddr::new(peer_v4, 7777), Duration::from_secs(2));

        let udp4 = UdpSocket::bind(SocketAddr::new(host_v4, 0)).unwrap();
        udp4.send_to(b"one", SocketAddr::new(peer_v4, 5353))
            .unwrap();
        udp4.send_to(b"two", SocketAddr::new(peer_v4, 5353))
            .unwrap();
        let udp6 = UdpSocket::bind(SocketAddr::new(host_v6, 0)).unwrap();
        udp6.send_to(b"six", SocketAddr::new(peer_v6, 5353))
            .unwrap();

        send_echo_request(PEER_V4.parse().unwrap(), 0x4242);

        // Larger than the MTU: leaves as three IPv4 fragments, of which
        // only the first carries the UDP header. A later fragment read as
        // UDP would show 0xabab ports.
        let big = UdpSocket::bind(SocketAddr::new(host_v4, 0)).unwrap();
        big.send_to(&[0xab; 4000], SocketAddr::new(peer_v4, 6000))
            .unwrap();
        let udp4_port = udp4.local_addr().unwrap().port();
        (udp4, udp4_port, udp6.local_addr().unwrap().port())
    });

    let mut events: Vec<FlowEvent> = Vec::new();
    let is_syn = |e: &FlowEvent| e.proto == 6 && e.dport == 7777;
    let is_udp4 = |e: &FlowEvent| e.proto == 17 && e.src == host_v4 && e.sport == udp4_port;
    let is_udp6 = |e: &FlowEvent| e.proto == 17 && e.src == host_v6 && e.sport == udp6_port;
    let is_echo = |e: &FlowEvent| e.proto == 1;
    let is_fragmented = |e: &FlowEvent| e.proto == 17 && e.dport == 6000;
    wait_until("SYN, UDP, echo and fragmented UDP reports", || {
        programs.inbound_reports().drain(|e| events.push(e));
        [
            &is_syn as &dyn Fn(&FlowEvent) -> bool,
            &is_udp4,
            &is_udp6,
            &is_echo,
            &is_fragmented,
        ]
        .iter()
        .all(|want| events.iter().any(want))
    });
    // Whatever else is on the ring now.
    while programs.inbound_reports().drain(|e| events.push(e)) > 0 {}

    let syn = events.iter().find(|e| is_syn(e)).unwrap();
    assert_eq!((syn.src, syn.dst), (host_v4, peer_v4), "{syn:?}");
    assert_ne!(syn.sport, 0, "{syn:?}");
    assert_eq!(syn.tcp_flags & 0x12, 0x02, "SYN without ACK: {syn:?}");
    assert_eq!(syn.ifindex, ifindex, "{syn:?}");
    // The RST never leaves through this veth, and neither does a SYN-ACK.
    assert_eq!(
        events.iter().filter(|e| e.proto == 6).count(),
        1,
        "{events:?}"
    );

    let udp4: Vec<_> = events.iter().filter(|e| is_udp4(e)).collect();
    assert_eq!(
        udp4.len(),
        1,
        "second datagram of the flow reported: {events:?}"
    );
    assert_eq!(
        *udp4[0],
        FlowEvent {
            src: host_v4,
            dst: peer_v4,
            sport: udp4_port,
            dport: 5353,
            proto: 17,
            tcp_flags: 0,
            ifindex,
        }
    );
    let udp6 = events.iter().find(|e| is_udp6(e)).unwrap();
    assert_eq!(
        (udp6.dst, udp6.dport, udp6.ifindex),
        (peer_v6, 5353, ifindex),
        "{udp6:?}"
    );

    assert_eq!(
        events.iter().filter(|e| is_fragmented(e)).count(),
        1,
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.sport == 0xabab || e.dport == 0xabab),
        "a later fragment was parsed as UDP: {events:?}"
    );

    let echo = events.iter().find(|e| is_echo(e)).unwrap();
    assert_eq!((echo.src, echo.dst), (host_v4, peer_v4), "{echo:?}");
    assert_eq!((echo.sport, echo.dport), (0x4242, 0x4242), "{echo:?}");

    let counters = programs.tc_counters().unwrap();
    assert!(
        counters[TcCounter::XPF_TC_SKIPPED_DUPLICATE.0 as usize] >= 1,
        "{counters:?}"
    );
    assert!(
        counters[TcCounter::XPF_TC_REPORTED.0 as usize] >= events.len() as u64,
        "{counters:?} for {} events",
        events.len()
    );
    assert_eq!(counters[TcCounter::XPF_TC_RING_FULL.0 as usize], 0);
    assert_eq!(programs.inbound_reports().undecodable(), 0);

    // One more datagram of the reported flow: counted as a duplicate only.
    let skipped = tc_counter(&programs, TcCounter::XPF_TC_SKIPPED_DUPLICATE);
    // The socket stays in the host namespace whichever thread sends.
    udp4_sock
        .send_to(b"three", SocketAddr::new(peer_v4, 5353))
        .unwrap();
    assert_eq!(
        tc_counter(&programs, TcCounter::XPF_TC_SKIPPED_DUPLICATE),
        skipped + 1
    );
    let mut late = Vec::new();
    programs.inbound_reports().drain(|e| late.push(e));
    assert!(!late.iter().any(is_udp4), "{late:?}");
}

#[test]
fn inbound_detaches_on_drop() {
    skip_unless_root!();
    let programs = Programs::load(false).expect("programs load");
    let lab = Lab::new();
    let ifindex = lab.host_ifindex();
    let tc = lab
        .in_host(|| programs.attach_inbound(HOST_IF, ifindex))
        .expect("tcx attach");
    assert_eq!((tc.ifname(), tc.ifindex()), (HOST_IF, ifindex));
    drop(tc);
    // Whatever it reported before the drop.
    while programs.inbound_reports().drain(|_| {}) > 0 {}

    let reported = tc_counter(&programs, TcCounter::XPF_TC_REPORTED);
    lab.in_host(|| {
        let udp = UdpSocket::bind((HOST_V4.parse::<Ipv4Addr>().unwrap(), 0)).unwrap();
        udp.send_to(b"x", (PEER_V4.parse::<Ipv4Addr>().unwrap(), 5353))
            .unwrap();
    });
    assert_eq!(tc_counter(&programs, TcCounter::XPF_TC_REPORTED), reported);
    assert_eq!(programs.inbound_reports().drain(|_| {}), 0);
}

#[test]
fn inbound_reports_are_drained_once_across_threads() {
    skip_unless_root!();
    const FLOWS: u16 = 64;
    let programs = std::sync::Arc::new(Programs::load(false).expect("programs load"));
    let lab = Lab::new();
    let ifindex = lab.host_ifindex();
    let _tc = lab
        .in_host(|| programs.attach_inbound(HOST_IF, ifindex))
        .expect("tcx attach");
    let host_v4: IpAddr = HOST_V4.parse().unwrap();
    let peer_v4: IpAddr = PEER_V4.parse().unwrap();
    let sport = lab.in_host(|| {
        let udp = UdpSocket::bind(SocketAddr::new(host_v4, 0)).unwrap();
        for dport in 1..=FLOWS {
            udp.send_to(b"x", SocketAddr::new(peer_v4, 20000 + dport))
                .unwrap();
        }
        udp.local_addr().unwrap().port()
    });

    let seen = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                wait_until("all flows drained", || {
                    programs.inbound_reports().drain(|e| {
                        if e.src == host_v4 && e.sport == sport {
                            seen.lock().unwrap().push(e.dport);
                        }
                    });
                    seen.lock().unwrap().len() >= usize::from(FLOWS)
                });
            });
        }
    });
    let mut seen = seen.into_inner().unwrap();
    seen.sort_unstable();
    let want: Vec<u16> = (1..=FLOWS).map(|d| 20000 + d).collect();
    assert_eq!(seen, want, "each flow exactly once");
}
