//! The lab every datapath test runs in: a private "host" namespace with
//! IPv4 and IPv6 forwarding on (xpf runs inside it, so the machine's own
//! namespace is never touched), an "outside" namespace behind it standing
//! for the world, a config with three endpoints, and `xpf run` as a child
//! process. Names carry the process id and a counter, so tests and parallel
//! runs never collide; guards remove everything even when an assertion
//! fails, pins and instance state included.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use xpf::harness::testbed::Testbed;
use xpf::sys::netns;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn unique_tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "xt{}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `xpf ARGS` in namespace `ns`, through nsenter: `ip netns exec` would
/// also give it a private mount namespace, and the namespaces xpf then
/// creates would be invisible to the test.
pub fn xpf_in(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns::path(ns).display()));
    c.arg(env!("CARGO_BIN_EXE_xpf"));
    c.args(args);
    c
}

/// Runs `monitor` (an `xpf monitor ... --output json`) and `trigger`
/// until an event `wanted` holds of shows up (30 rounds at most: a bound,
/// it times nothing); that event. The monitor may attach after the first
/// rounds' traffic, hence the repeats.
pub fn monitor_until(
    mut monitor: Command,
    mut trigger: impl FnMut(),
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut monitor = monitor
        .stdout(Stdio::piped())
        .spawn()
        .expect("start xpf monitor");
    let (tx, rx) = crossbeam_channel::unbounded::<String>();
    let stdout = monitor.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut found = None;
    for _ in 0..30 {
        trigger();
        found = rx
            .try_iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(&l).expect("a JSON line"))
            .find(|v| wanted(v));
        if found.is_some() {
            break;
        }
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    found.expect("the monitor showed the event")
}

pub fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The MAC address of `ifname` in namespace `ns`.
pub fn mac_of(ns: &str, ifname: &str) -> [u8; 6] {
    let link = ip_out(&["-n", ns, "-j", "link", "show", ifname]);
    let link: serde_json::Value =
        serde_json::from_str(&link).unwrap_or_else(|e| panic!("{ifname} in {ns}: {e}"));
    let mac: Vec<u8> = link[0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("{ifname} in {ns} has no address"))
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    mac.try_into().unwrap()
}

pub const POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
    - toEndpoints: [{matchLabels: {app: backend}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "8080", protocol: UDP}]}]
    - toCIDR: [198.19.0.0/16, 2001:db8:99::/48]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
    - toEndpoints: [{matchLabels: {app: db}}]
      toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  egress: [{}]
"#;

/// frontend may not talk to backend at all (a deny beats the allow in
/// [`POLICIES`]); tests append it to cut a flow.
pub const DENY_FRONTEND_TO_BACKEND: &str = r#"
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: quarantine-frontend}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egressDeny:
    - toEndpoints: [{matchLabels: {app: backend}}]
"#;

/// The lab's config: three endpoints in namespaces named after `tag`, the
/// host's addresses, [`POLICIES`] in `policies.yaml` beside it, and
/// `datapath` (a YAML `datapath:` section, or nothing) appended.
pub fn lab_config(tag: &str, datapath: &str) -> String {
    format!(
        r#"
endpoints:
  - {{name: frontend, netns: {tag}-fe, labels: {{app: frontend}}, ipv4: 198.18.10.2, ipv6: "2001:db8:10::2"}}
  - {{name: backend, netns: {tag}-be, labels: {{app: backend}}, ipv4: 198.18.10.3, ipv6: "2001:db8:10::3"}}
  - {{name: db, netns: {tag}-db, labels: {{app: db}}, ipv4: 198.18.10.4, ipv6: "2001:db8:10::4"}}
host_addresses: [198.18.0.1, "2001:db8::1"]
policies: [policies.yaml]
{datapath}
"#
    )
}

/// The namespaces and config of one test; removed on drop.
pub struct Lab {
    pub tag: String,
    pub dir: tempfile::TempDir,
    pub bed: Testbed,
}

pub const WORLD4: &str = "198.19.1.1";
pub const WORLD6: &str = "2001:db8:99::1";

impl Lab {
    pub fn new(datapath: &str) -> Self {
        let tag = unique_tag();
        let world = [WORLD4.parse().unwrap(), WORLD6.parse().unwrap()];
        let routes = [
            "198.19.0.0/16".parse().unwrap(),
            "2001:db8:99::/48".parse().unwrap(),
        ];
        let host_addresses = [
            "198.18.0.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ];
        let bed = Testbed::build(&tag, &host_addresses, &world, &routes).expect("testbed");

        let dir = tempfile::tempdir().unwrap();
        let config = lab_config(&tag, datapath);
        std::fs::write(dir.path().join("xpf.yaml"), config).unwrap();
        std::fs::write(dir.path().join("policies.yaml"), POLICIES).unwrap();
        Self { tag, dir, bed }
    }

    /// The MAC of `endpoint`'s `eth0` and of its veth's host side.
    pub fn macs(&self, endpoint: &str) -> ([u8; 6], [u8; 6]) {
        let host_side = format!("xpf-{endpoint}");
        (
            mac_of(&self.ns(endpoint), "eth0"),
            mac_of(self.bed.host.name(), &host_side),
        )
    }

    pub fn ns(&self, endpoint: &str) -> String {
        let short = match endpoint {
            "frontend" => "fe",
            "backend" => "be",
            "db" => "db",
            other => panic!("no endpoint {other}"),
        };
        format!("{}-{short}", self.tag)
    }

    /// `xpf ARGS` in the host namespace, without `--config`.
    ///
    /// nsenter, not `ip netns exec`: the latter also gives the command a
    /// private mount namespace, and the namespaces xpf then creates would
    /// be invisible to this test.
    pub fn xpf_bare(&self, args: &[&str]) -> Command {
        xpf_in(self.bed.host.name(), args)
    }

    /// `xpf ARGS --config <the lab's config>` in the host namespace.
    pub fn xpf(&self, args: &[&str]) -> Command {
        let mut c = self.xpf_bare(args);
        c.arg("--config").arg(self.dir.path().join("xpf.yaml"));
        c
    }

    /// Starts `xpf run` and waits for `xpf: ready`.
    pub fn run(&self) -> Running {
        self.run_with(&[])
    }

    pub fn run_with(&self, extra: &[&str]) -> Running {
        let mut args = vec!["run", "--output", "json"];
        args.extend_from_slice(extra);
        // Standard error goes to a file (a pipe nobody reads could fill up
        // and stall xpf); tests read it with `Running::stderr`.
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let err_path = self.dir.path().join(format!(
            "xpf-run-{}.err",
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        Running::spawn(self.xpf(&args), err_path).ready()
    }

    /// Marks every endpoint `attach: existing` in the config.
    pub fn adopt_endpoints(&self) {
        let path = self.dir.path().join("xpf.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("labels:", "attach: existing, labels:")).unwrap();
    }

    /// Undoes [`Lab::adopt_endpoints`].
    pub fn own_endpoints(&self) {
        let path = self.dir.path().join("xpf.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("attach: existing, ", "")).unwrap();
    }

    /// Interfaces and XDP attachments left in the host namespace.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let links = ip_out(&["-n", self.bed.host.name(), "-d", "-j", "link", "show"]);
        let links: serde_json::Value = serde_json::from_str(&links).unwrap();
        for l in links.as_array().unwrap() {
            let name = l["ifname"].as_str().unwrap_or("?");
            if name != "lo" && name != "out0" {
                found.push(format!("interface {name}"));
            }
            if l.get("xdp").is_some() {
                found.push(format!("XDP on {name}"));
            }
        }
        for ep in ["frontend", "backend", "db"] {
            if netns::exists(&self.ns(ep)) {
                found.push(format!("namespace {}", self.ns(ep)));
            }
        }
        found
    }
}

impl Lab {
    /// The pin folder and state folder of the lab's xpf instance (named
    /// after the host namespace).
    pub fn instance_dirs(&self) -> [std::path::PathBuf; 2] {
        let name = self.bed.host.name();
        [
            std::path::Path::new("/sys/fs/bpf/xpf").join(name),
            std::path::Path::new("/run/xpf").join(name),
        ]
    }

    /// What is left of the instance in bpffs and /run (pins, state).
    pub fn instance_left(&self) -> Vec<String> {
        self.instance_dirs()
            .iter()
            .filter(|d| d.exists())
            .map(|d| d.display().to_string())
            .collect()
    }
}

impl Drop for Lab {
    /// Endpoint namespaces a failed test may have left (`xpf endpoint
    /// create` without its delete, a killed `xpf run`), and the instance's
    /// pins and state; the host and outside namespaces go with their
    /// guards.
    fn drop(&mut self) {
        for ep in ["frontend", "backend", "db"] {
            let ns = self.ns(ep);
            if netns::exists(&ns) {
                let _ = netns::delete(&ns);
            }
        }
        for d in self.instance_dirs() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A running `xpf run`; stopped with SIGTERM when dropped.
pub struct Running {
    pub child: Option<Child>,
    pub out: Option<BufReader<ChildStdout>>,
    err_path: std::path::PathBuf,
}

impl Running {
    /// Starts `cmd` (an `xpf run`), its standard error going to
    /// `err_path`; does not wait for it (see [`Running::ready`]).
    pub fn spawn(mut cmd: Command, err_path: std::path::PathBuf) -> Running {
        // Standard error goes to a file (a pipe nobody reads could fill up
        // and stall xpf); tests read it with `Running::stderr`.
        let err_file = std::fs::File::create(&err_path).expect("stderr file");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(err_file)
            .spawn()
            .expect("start xpf run");
        let out = BufReader::new(child.stdout.take().unwrap());
        Running {
            child: Some(child),
            out: Some(out),
            err_path,
        }
    }

    /// Waits for `xpf: ready`.
    pub fn ready(mut self) -> Running {
        let out = self.out.as_mut().unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = self.child.as_mut().unwrap().wait();
                panic!("xpf run exited before it was ready: {}", self.stderr());
            }
            if line.trim() == "xpf: ready" {
                return self;
            }
        }
    }

    /// What xpf has written to standard error so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err_path).unwrap_or_default()
    }

    /// Reads standard output up to the next line starting with `prefix`.
    pub fn next_line(&mut self, prefix: &str) -> String {
        let out = self.out.as_mut().unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap_or(0) > 0,
                "xpf run ended before printing `{prefix}`"
            );
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// SIGTERM, wait, and return (exit status, final counters).
    pub fn stop(self) -> (std::process::ExitStatus, serde_json::Value) {
        let child = self.child.as_ref().unwrap();
        // nsenter execs xpf, so the child's pid is xpf's.
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        self.stop_exited()
    }

    /// Waits for an xpf that was told to stop some other way, and returns
    /// (exit status, final counters).
    pub fn stop_exited(mut self) -> (std::process::ExitStatus, serde_json::Value) {
        let mut child = self.child.take().unwrap();
        let mut rest = String::new();
        self.out.take().unwrap().read_to_string(&mut rest).unwrap();
        let status = child.wait().unwrap();
        // The final counters are pretty-printed: a line that is just `{`.
        let json_start = rest
            .match_indices("{\n")
            .map(|(i, _)| i)
            .find(|i| *i == 0 || rest.as_bytes()[i - 1] == b'\n')
            .unwrap_or_else(|| panic!("no final counters in: {rest}"));
        let counters = serde_json::from_str(&rest[json_start..]).expect("final counters are JSON");
        (status, counters)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn sa(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(addr.parse::<IpAddr>().unwrap(), port)
}

pub fn counter(c: &serde_json::Value, endpoint: &str, key: &str) -> u64 {
    let ep = c["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == endpoint)
        .unwrap_or_else(|| panic!("no endpoint {endpoint} in {c}"));
    ep.get(key)
        .or_else(|| ep["drops"].get(key))
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}
