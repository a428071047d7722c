//! Two xpf "hosts" on one machine sharing one etcd, for the cluster-mode
//! tests: each host is a private namespace with forwarding on (a
//! [`Testbed`], with its own outside), the two are joined by a veth
//! "underlay" with routes to each other's endpoint prefixes, and both
//! configs name the same etcd's Unix socket. Names carry the process id
//! and a counter; guards remove every namespace, pin and state folder,
//! and the etcd, even when an assertion fails.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::etcd::TestEtcd;
use super::lab::{sa, unique_tag, Running, WORLD4, WORLD6};
use xpf::harness::probe::{round_trip, Transport};
use xpf::harness::testbed::Testbed;
use xpf::sys::netns;

/// The policies both hosts enforce.
pub const CLUSTER_POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
    - toEndpoints: [{matchLabels: {app: db}}]
      toPorts: [{ports: [{port: "5432", protocol: TCP}, {port: "5432", protocol: UDP}]}]
    - toEntities: [remote-node]
      toPorts: [{ports: [{port: "7000", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  egress:
    - toEndpoints: [{matchLabels: {app: web}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "8080", protocol: UDP}]}]
"#;

/// Underlay addresses, which are the node IPs: (IPv4, IPv6) of A and B.
pub const NODE_A: (&str, &str) = ("198.18.250.1", "2001:db8:250::1");
pub const NODE_B: (&str, &str) = ("198.18.250.2", "2001:db8:250::2");
/// Endpoint prefixes: A's and B's.
const PREFIX_A: (&str, &str) = ("198.18.30.0/24", "2001:db8:30::/64");
const PREFIX_B: (&str, &str) = ("198.18.31.0/24", "2001:db8:31::/64");

pub const TTL: u64 = 3;

/// One host: its namespaces, config and API socket.
pub struct Host {
    pub name: String,
    pub tag: String,
    pub dir: tempfile::TempDir,
    pub bed: Testbed,
    pub api: PathBuf,
    /// (endpoint name, short namespace suffix).
    endpoints: Vec<(String, String)>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Host {
    /// A host named `<tag><side>` with `endpoints` (YAML lines) and the
    /// kvstore section for `etcd`.
    fn new(
        tag: &str,
        side: &str,
        node: (&str, &str),
        endpoints: &[(&str, &str)],
        etcd: &str,
    ) -> Host {
        let tag = format!("{tag}{side}");
        let host_address: IpAddr = if side == "a" {
            "198.18.0.1".parse().unwrap()
        } else {
            "198.18.0.2".parse().unwrap()
        };
        let bed = Testbed::build(
            &tag,
            &[host_address],
            &[WORLD4.parse().unwrap(), WORLD6.parse().unwrap()],
            &[
                "198.19.0.0/16".parse().unwrap(),
                "2001:db8:99::/48".parse().unwrap(),
            ],
        )
        .expect("testbed");
        let dir = tempfile::tempdir().unwrap();
        let mut lines = String::new();
        let mut names = Vec::new();
        for (name, rest) in endpoints {
            let short: String = name.chars().take(3).collect();
            lines.push_str(&format!(
                "  - {{name: {name}, netns: {tag}-{short}, {rest}}}\n"
            ));
            names.push((name.to_string(), short));
        }
        let config = format!(
            "endpoints:\n{lines}host_addresses: [{host_address}]\npolicies: [policies.yaml]\n\
             kvstore:\n  endpoints: [\"{etcd}\"]\n  node: {{name: {tag}, ip: {}}}\n  lease_ttl: {TTL}\n",
            node.0
        );
        std::fs::write(dir.path().join("xpf.yaml"), config).unwrap();
        std::fs::write(dir.path().join("policies.yaml"), CLUSTER_POLICIES).unwrap();
        let api = dir.path().join("api.sock");
        Host {
            name: tag.clone(),
            tag,
            dir,
            bed,
            api,
            endpoints: names,
        }
    }

    pub fn ns(&self, endpoint: &str) -> String {
        let (_, short) = self
            .endpoints
            .iter()
            .find(|(n, _)| n == endpoint)
            .unwrap_or_else(|| panic!("no endpoint {endpoint}"));
        format!("{}-{short}", self.tag)
    }

    pub fn host_ns(&self) -> &str {
        self.bed.host.name()
    }

    /// `xpf ARGS` in this host's namespace, without `--config`.
    pub fn xpf_bare(&self, args: &[&str]) -> Command {
        super::lab::xpf_in(self.host_ns(), args)
    }

    /// `xpf ARGS --config <this host's config>`.
    pub fn xpf(&self, args: &[&str]) -> Command {
        let mut c = self.xpf_bare(args);
        c.arg("--config").arg(self.dir.path().join("xpf.yaml"));
        c
    }

    /// Starts `xpf run` without waiting for it to be ready.
    pub fn spawn(&self) -> Running {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let err = self.dir.path().join(format!(
            "xpf-run-{}.err",
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        let api = self.api.display().to_string();
        Running::spawn(self.xpf(&["run", "--output", "json", "--api", &api]), err)
    }

    /// `xpf ARGS --api <socket>`, which must succeed; its standard output.
    pub fn client(&self, args: &[&str]) -> String {
        let out: Output = self
            .xpf_bare(args)
            .arg("--api")
            .arg(&self.api)
            .output()
            .expect("run an xpf client");
        assert!(
            out.status.success(),
            "xpf {args:?} on {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.client(&["status", "--output", "json"])).expect("status JSON")
    }

    /// The identity `xpf status` gives local endpoint `name`.
    pub fn identity_of(&self, name: &str) -> u64 {
        let s = self.status();
        s["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no endpoint {name} in {s}"))["identity"]
            .as_u64()
            .unwrap()
    }

    /// `xpf policy check` on this host's config (which reads the store):
    /// the verdict and the destination's labels.
    pub fn check(&self, from: &str, to: &str, proto: &str, port: u16) -> (String, String) {
        let port = port.to_string();
        let out = self
            .xpf(&[
                "policy", "check", "--from", from, "--to", to, "--proto", proto, "--port", &port,
                "--output", "json",
            ])
            .output()
            .expect("xpf policy check");
        assert!(
            out.status.success(),
            "policy check: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v["verdict"].as_str().unwrap().to_string(),
            v["dst_labels"].to_string(),
        )
    }

    /// Whether `from` completes an exchange with `addr:port`.
    pub fn probe(&self, from: &str, t: Transport, addr: &str, port: u16, wait: Duration) -> bool {
        round_trip(Some(&self.ns(from)), t, sa(addr, port), wait)
    }

    /// Runs `xpf monitor ARGS` against this host (see
    /// [`super::lab::monitor_until`]).
    pub fn monitor_until(
        &self,
        args: &[&str],
        trigger: impl FnMut(),
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut all = vec!["monitor", "--output", "json"];
        all.extend_from_slice(args);
        let mut monitor = self.xpf_bare(&all);
        monitor.arg("--api").arg(&self.api);
        super::lab::monitor_until(monitor, trigger, wanted)
    }

    /// A per-endpoint counter from `xpf status`.
    pub fn counter(&self, endpoint: &str, key: &str) -> u64 {
        let s = self.status();
        super::lab::counter(&s["counters"], endpoint, key)
    }
}

/// Deletes a namespace (an endpoint added at run time) when dropped.
pub struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        if netns::exists(&self.0) {
            let _ = netns::delete(&self.0);
        }
    }
}

impl Host {
    /// Makes sure namespace `name` goes with the returned guard.
    pub fn adopt_namespace(&self, name: &str) -> NsGuard {
        NsGuard(name.to_string())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for (_, short) in &self.endpoints {
            let ns = format!("{}-{short}", self.tag);
            if netns::exists(&ns) {
                let _ = netns::delete(&ns);
            }
        }
        let name = self.bed.host.name().to_string();
        let _ = std::fs::remove_dir_all(std::path::Path::new("/sys/fs/bpf/xpf").join(&name));
        let _ = std::fs::remove_dir_all(std::path::Path::new("/run/xpf").join(&name));
    }
}

/// Two hosts and their etcd. Fields drop in order: hosts, then etcd.
pub struct TwoHosts {
    pub a: Host,
    pub b: Host,
    pub etcd: TestEtcd,
}

impl TwoHosts {
    /// Host A with `web` (app=web) and `shared` (app=shared); host B with
    /// `db` (app=db), `cache` (app=cache) and `shared`; the underlay and
    /// its routes; etcd. Nothing runs yet.
    pub fn new() -> Self {
        let etcd = TestEtcd::start();
        let tag = unique_tag();
        let a = Host::new(
            &tag,
            "a",
            NODE_A,
            &[
                (
                    "web",
                    "labels: {app: web}, ipv4: 198.18.30.2, ipv6: \"2001:db8:30::2\"",
                ),
                ("shared", "labels: {app: shared}, ipv4: 198.18.30.9"),
            ],
            &etcd.endpoint,
        );
        let b = Host::new(
            &tag,
            "b",
            NODE_B,
            &[
                (
                    "db",
                    "labels: {app: db}, ipv4: 198.18.31.2, ipv6: \"2001:db8:31::2\"",
                ),
                (
                    "cache",
                    "labels: {app: cache}, ipv4: 198.18.31.3, ipv6: \"2001:db8:31::3\"",
                ),
                ("shared", "labels: {app: shared}, ipv4: 198.18.31.9"),
            ],
            &etcd.endpoint,
        );
        let (ha, hb) = (a.host_ns().to_string(), b.host_ns().to_string());
        ip(&[
            "-n", &ha, "link", "add", "und0", "type", "veth", "peer", "name", "und0", "netns", &hb,
        ]);
        for (ns, me, them, prefix) in [
            (&ha, NODE_A, NODE_B, PREFIX_B),
            (&hb, NODE_B, NODE_A, PREFIX_A),
        ] {
            ip(&["-n", ns, "link", "set", "und0", "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", me.0),
                "dev",
                "und0",
            ]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/64", me.1),
                "dev",
                "und0",
                "nodad",
            ]);
            ip(&["-n", ns, "route", "add", prefix.0, "via", them.0]);
            ip(&["-n", ns, "route", "add", prefix.1, "via", them.1]);
        }
        Self { a, b, etcd }
    }

    /// Starts both hosts at once (so they allocate at the same moment)
    /// and waits until both are ready.
    pub fn run_both(&self) -> (Running, Running) {
        let (ra, rb) = (self.a.spawn(), self.b.spawn());
        (ra.ready(), rb.ready())
    }
}

/// Polls `f` until it holds or `limit` passes (a bound on waiting for
/// the cluster to converge, not a measurement); how long it took.
pub fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: still not so after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
