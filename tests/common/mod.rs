//! Helpers shared by the integration tests: a config and its policy files in
//! a temporary directory that disappears with the guard.
#![allow(dead_code)]

pub mod cluster;
pub mod etcd;
pub mod lab;
pub mod raw;

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use xpf::config::{Config, ConfigError};
use xpf::engine::Engine;
use xpf::labels::remote_node_labels;
use xpf::policy::{reference, Decision, Verdict};
use xpf::world::{StaticEntry, World};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// The endpoints most tests use: three tiers, dual stack, plus one remote
/// labelled prefix and the host.
pub const ENDPOINTS: &str = r#"
endpoints:
  - name: frontend
    labels: {app: frontend, env: prod}
    ipv4: 198.18.10.2
    ipv6: 2001:db8:10::2
  - name: backend
    labels: {app: backend, env: prod, tier: api}
    ipv4: 198.18.10.3
    ipv6: 2001:db8:10::3
  - name: db
    labels: {app: db, env: staging}
    ipv4: 198.18.10.4
    ipv6: 2001:db8:10::4
ipcache:
  - prefix: 198.19.200.0/24
    labels: {app: backup}
  - prefix: 2001:db8:200::/48
    labels: {app: backup}
host_addresses: [198.18.0.1, 2001:db8::1]
policies: [policies/]
"#;

pub struct Dir {
    pub dir: tempfile::TempDir,
}

impl Dir {
    pub fn new(config: &str, policies: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("xpf.yaml"), config).unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        for (name, text) in policies {
            std::fs::write(dir.path().join("policies").join(name), text).unwrap();
        }
        Self { dir }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("xpf.yaml")
    }

    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(&self.config_path())
    }
}

/// Loads the standard endpoints with `policies` (one file each).
pub fn engine(policies: &[&str]) -> Engine {
    Engine::new(&world(policies)).expect("engine builds")
}

/// The world of the standard endpoints with `policies` (one file each).
fn world(policies: &[&str]) -> World {
    let files: Vec<(String, &str)> = policies
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("p{i}.yaml"), *p))
        .collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    let d = Dir::new(ENDPOINTS, &refs);
    d.load().expect("config loads").world
}

/// [`engine`], with other hosts' node addresses `nodes` added the way
/// cluster mode adds them (entries labelled exactly `reserved:remote-node`,
/// which no config may write).
pub fn engine_with_nodes(policies: &[&str], nodes: &[&str]) -> Engine {
    let w = world(policies);
    let mut ipcache = w.ipcache;
    ipcache.extend(nodes.iter().map(|n| StaticEntry {
        prefix: IpAddr::from_str(n).expect("node address").into(),
        labels: remote_node_labels(),
    }));
    let w = World::new(w.endpoints, ipcache, w.host_addresses, w.policies)
        .expect("a world with remote nodes");
    Engine::new(&w).expect("engine builds")
}

/// The load error message for the standard endpoints with one policy file.
pub fn load_error(policy: &str) -> String {
    let d = Dir::new(ENDPOINTS, &[("bad.yaml", policy)]);
    match d.load() {
        Ok(_) => panic!("policy loaded but should not:\n{policy}"),
        Err(e) => e.to_string(),
    }
}

/// The decision of both engines, which must agree.
pub fn decide(engine: &Engine, from: &str, to: &str, proto: u8, port: u16) -> Decision {
    let (i, ep) = engine.endpoint(from).expect("endpoint");
    let dst: IpAddr = to.parse().expect("address");
    let compiled = engine.check(i, dst, proto, port).decision;
    let naive = reference::decide(&engine.world, ep, dst, proto, port);
    assert_eq!(
        compiled, naive,
        "compiled and reference engines disagree for {from} -> {to} proto {proto} port {port}"
    );
    compiled
}

pub fn allowed(engine: &Engine, from: &str, to: &str, proto: u8, port: u16) -> bool {
    decide(engine, from, to, proto, port).verdict == Verdict::Allowed
}
