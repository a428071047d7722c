//! `xpf gen` and `xpf sink` end to end: the built binary sends AF_XDP
//! frames from one namespace over a veth pair to a sink in another, and the
//! sink's books must match what was sent exactly.
//!
//! The traffic tests need root and print `skipped: needs root` otherwise.
//! Each creates its own pair of namespaces (names unique to the run), which
//! are deleted, with their veths, when the test ends, failing or not. IPv6
//! is disabled on both veths, and the receiving side has no address, so
//! neither kernel sends anything of its own: every frame the sink sees is
//! the generator's. Only 198.18.0.0/15 and 2001:db8::/32 are used.
//!
//! The option checks at the end run without root.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use xpf::sys::netns::{self, OwnedNetns};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// A name no other test or run uses, short enough for an interface.
fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("x{tag}{:x}{n:x}", std::process::id())
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespace `a` and `b` joined by a veth: `va` in a, `vb` in b, both up,
/// IPv6 off.
struct Pair {
    a: OwnedNetns,
    b: OwnedNetns,
    vb_mac: String,
}

impl Pair {
    fn new(tag: &str) -> Self {
        let a = OwnedNetns::create(&unique(&format!("{tag}a"))).expect("create netns a");
        let b = OwnedNetns::create(&unique(&format!("{tag}b"))).expect("create netns b");
        ip(&[
            "-n",
            a.name(),
            "link",
            "add",
            "va",
            "type",
            "veth",
            "peer",
            "name",
            "vb",
            "netns",
            b.name(),
        ]);
        for (ns, dev) in [(&a, "va"), (&b, "vb")] {
            netns::run_in(ns.name(), || {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1")
            })
            .expect("enter netns")
            .expect("disable IPv6");
            ip(&["-n", ns.name(), "link", "set", dev, "up"]);
        }
        let out = Command::new("ip")
            .args(["-n", b.name(), "-j", "link", "show", "vb"])
            .output()
            .expect("ip runs");
        let link: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        let vb_mac = link[0]["address"]
            .as_str()
            .expect("vb has a MAC")
            .to_string();
        Self { a, b, vb_mac }
    }

    /// `xpf ARGS` inside namespace `ns` (nsenter execs it: the pid is
    /// xpf's own, so signals reach it).
    fn xpf(ns: &OwnedNetns, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", netns::path(ns.name()).display()));
        c.arg(env!("CARGO_BIN_EXE_xpf"));
        c.args(args);
        c
    }

    /// Runs `xpf gen` in a, to vb, and returns its JSON summary.
    fn gen(&self, args: &[&str]) -> Value {
        let mut all = vec!["gen", "--dev", "va", "--output", "json"];
        all.extend_from_slice(args);
        let out = Self::xpf(&self.a, &all).output().expect("run xpf gen");
        last_json("xpf gen", &out)
    }

    /// Starts `xpf sink` on vb and waits until it listens.
    fn sink(&self) -> Sink {
        let mut child = Self::xpf(
            &self.b,
            &[
                "sink",
                "--dev",
                "vb",
                "--duration",
                "60",
                "--output",
                "json",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start xpf sink");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("sink: listening") {
                    let _ = tx.send(());
                }
                all += &line;
                all.push('\n');
            }
            all
        });
        let mut sink = Sink {
            child,
            log: Some(log),
        };
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = sink.child.kill();
            let _ = sink.child.wait();
            panic!("xpf sink did not start: {}", sink.log());
        }
        sink
    }
}

/// A running `xpf sink`, killed if the test fails before stopping it.
struct Sink {
    child: Child,
    log: Option<std::thread::JoinHandle<String>>,
}

impl Sink {
    fn log(&mut self) -> String {
        self.log
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Lets the last frames land, stops the sink with SIGINT (its summary
    /// must still come) and returns the summary.
    fn stop(mut self) -> Value {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) on the pid of our own child, which has not been
        // waited for yet, so the pid is still its.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) },
            0
        );
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = self.child.wait().expect("wait for xpf sink");
        let stderr = self.log();
        assert!(status.success(), "xpf sink failed: {status}\n{stderr}");
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("xpf sink's last line is not JSON ({e}): {stdout}\n{stderr}")
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The JSON object on the last line of a successful command's stdout.
fn last_json(what: &str, out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed: {stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{what}'s last line is not JSON ({e}): {stdout}\n{stderr}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not a count in {v}"))
}

/// Every frame sent arrives once, in order, with sane latencies.
fn assert_clean(sink: &Value, sent: u64) {
    assert_eq!(u(sink, "received"), sent, "{sink}");
    assert_eq!(u(sink, "lost"), 0, "{sink}");
    assert_eq!(u(sink, "reordered"), 0, "{sink}");
    assert_eq!(u(sink, "duplicates"), 0, "{sink}");
    assert_eq!(u(sink, "foreign"), 0, "{sink}");
    assert_eq!(u(sink, "frames"), sent, "{sink}");
    assert_eq!(u(sink, "first_seq"), 0, "{sink}");
    assert_eq!(u(sink, "highest_seq"), sent - 1, "{sink}");
    assert_eq!(sink["loss_fraction"].as_f64(), Some(0.0));
    let lat = &sink["latency_us"];
    let p = |k: &str| {
        lat[k]
            .as_f64()
            .unwrap_or_else(|| panic!("latency_us.{k} missing: {sink}"))
    };
    assert!(p("p50") <= p("p99"), "{lat}");
    assert!(p("p99") <= p("p999"), "{lat}");
    assert!(p("p999") <= p("max"), "{lat}");
    let curve = sink["latency_curve"].as_array().expect("latency_curve");
    assert!(curve.len() >= 40, "{} curve points", curve.len());
    for key in ["pps", "seconds"] {
        assert!(sink[key].is_f64(), "{key} in {sink}");
    }
}

#[test]
fn every_frame_sent_arrives_once_in_order() {
    require_root!();
    let pair = Pair::new("tg");
    let sink = pair.sink();
    let gen = pair.gen(&[
        "--dst-mac",
        &pair.vb_mac,
        "--src",
        "198.18.77.1",
        "--dst",
        "198.18.77.2",
        "--count",
        "2000",
        "--rate",
        "20000",
    ]);
    let got = sink.stop();
    assert_eq!(u(&gen, "sent"), 2000, "{gen}");
    assert_eq!(gen["dev"], "va");
    assert_eq!((u(&gen, "size"), u(&gen, "flows")), (66, 1));
    assert_eq!(u(&gen, "rate"), 20000);
    assert!(gen["seconds"].is_f64() && gen["pps"].is_f64(), "{gen}");
    assert_clean(&got, 2000);
    assert_eq!(got["dports"], serde_json::json!({"9": 2000}));
}

#[test]
fn flows_spread_over_the_ports_with_addresses_from_the_device() {
    require_root!();
    let pair = Pair::new("tf");
    // What an xpf endpoint has: an address, a default route through a
    // gateway, and a permanent neighbour entry for it.
    let a = pair.a.name();
    ip(&["-n", a, "addr", "add", "198.18.78.1/30", "dev", "va"]);
    ip(&["-n", a, "route", "add", "default", "via", "198.18.78.2"]);
    ip(&[
        "-n",
        a,
        "neigh",
        "replace",
        "198.18.78.2",
        "lladdr",
        &pair.vb_mac,
        "nud",
        "permanent",
        "dev",
        "va",
    ]);
    let sink = pair.sink();
    let gen = pair.gen(&[
        "--dst-mac",
        "auto",
        "--dst",
        "198.18.79.0/24",
        "--dport",
        "9000-9002",
        "--flows",
        "3",
        "--count",
        "300",
        "--rate",
        "20000",
    ]);
    let got = sink.stop();
    assert_eq!(u(&gen, "sent"), 300, "{gen}");
    assert_clean(&got, 300);
    assert_eq!(
        got["dports"],
        serde_json::json!({"9000": 100, "9001": 100, "9002": 100})
    );
}

#[test]
fn ipv6_frames_of_any_size_arrive_whole() {
    require_root!();
    let pair = Pair::new("t6");
    let sink = pair.sink();
    let gen = pair.gen(&[
        "--dst-mac",
        &pair.vb_mac,
        "--src",
        "2001:db8:77::1-2001:db8:77::4",
        "--dst",
        "2001:db8:78::1",
        "--sport",
        "1000-1999",
        "--flows",
        "8",
        "--size",
        "1514",
        "--count",
        "800",
        "--rate",
        "20000",
    ]);
    let got = sink.stop();
    assert_eq!(u(&gen, "sent"), 800, "{gen}");
    assert_eq!(u(&gen, "size"), 1514);
    assert_clean(&got, 800);
}

/// `xpf gen` with `args` against the loopback device (no root, nothing
/// sent: every one of these fails before a socket is opened); returns its
/// stderr after checking the exit status is 2.
fn gen_error(args: &[&str]) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xpf"));
    c.args(["gen", "--dev", "lo"]);
    if !args.contains(&"--dst-mac") {
        c.args(["--dst-mac", "02:00:00:00:00:01"]);
    }
    let out = c.args(args).output().expect("run xpf gen");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    stderr
}

#[test]
fn gen_names_the_option_at_fault() {
    let v4 = ["--src", "198.18.0.1", "--dst", "198.18.0.2"];
    let e = gen_error(&["--src", "198.18.0.1", "--dst", "198.18.0.9-198.18.0.2"]);
    assert!(e.contains("--dst") && e.contains("backwards"), "{e}");
    let e = gen_error(&["--src", "198.18.0.5/16", "--dst", "198.18.0.2"]);
    assert!(e.contains("--src") && e.contains("198.18.0.0/16"), "{e}");
    let e = gen_error(&["--src", "198.18.0.1", "--dst", "2001:db8::1"]);
    assert!(e.contains("--src 198.18.0.1 and --dst 2001:db8::1"), "{e}");
    let e = gen_error(&[&v4[..], &["--dport", "1-2", "--flows", "3"]].concat());
    assert!(e.contains("--flows 3") && e.contains("2 distinct"), "{e}");
    let e = gen_error(&[&v4[..], &["--size", "60"]].concat());
    assert!(
        e.contains("--size 60 is too small") && e.contains("66"),
        "{e}"
    );
    let e = gen_error(&[&v4[..], &["--sport", "70000"]].concat());
    assert!(e.contains("--sport"), "{e}");
    let e = gen_error(&[&v4[..], &["--dst-mac", "02:00:00:00:00"]].concat());
    assert!(e.contains("--dst-mac"), "{e}");
    let e = gen_error(&[&v4[..], &["--batch", "0"]].concat());
    assert!(e.contains("--batch"), "{e}");
}
