//! `xpf bench kvstore` runs its non-root parts against a private etcd: the
//! initial sync and the identity allocation race, with small numbers. It
//! checks the report's shape and that the racing hosts agreed, and that
//! the bench took everything it wrote out of the store. Nothing here
//! asserts a speed.

mod common;

use std::process::Command;

use common::etcd::TestEtcd;

#[test]
fn the_kvstore_bench_reports_sync_and_allocation_and_leaves_the_store_empty() {
    let etcd = TestEtcd::start();
    let out = Command::new(env!("CARGO_BIN_EXE_xpf"))
        .args(["bench", "kvstore", "--etcd", &etcd.endpoint])
        .args([
            "--entries",
            "2000",
            "--identities",
            "50",
            "--allocations",
            "40",
        ])
        .args(["--skip-latency", "--output", "json"])
        .output()
        .expect("run xpf bench kvstore");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xpf bench kvstore: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    assert_eq!(r["write"]["keys"], 2000 + 50 * 2 + 4, "{r}");
    assert!(r["write"]["seconds"].as_f64().unwrap() > 0.0, "{r}");
    let sync = &r["sync"];
    assert_eq!(sync["rounds"].as_array().unwrap().len(), 3, "{r}");
    for field in ["agent_ms", "first_world_ms", "engine_ms", "total_ms"] {
        assert!(
            sync["median"][field].as_f64().unwrap() > 0.0,
            "{field}: {r}"
        );
    }
    // The fake node's entries, the anchor and its node address.
    assert_eq!(sync["median"]["remote_entries"], 2002, "{r}");
    assert!(sync["met"].is_boolean(), "{r}");
    for field in ["list_ipcache_ms", "view_sync_ms", "remote_entries_ms"] {
        assert!(sync["breakdown"][field].is_number(), "{field}: {r}");
    }
    assert!(r["latency"].is_null(), "skipped: {r}");

    let a = &r["allocation"];
    assert_eq!(a["label_sets"], 40, "{r}");
    assert_eq!(a["race"]["agreed"], true, "{r}");
    assert_eq!(a["race"]["distinct_ids"], 40, "{r}");
    assert_eq!(a["race"]["hosts"].as_array().unwrap().len(), 2, "{r}");
    assert!(a["alone"]["per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(a["race"]["total_per_sec"].as_f64().unwrap() > 0.0, "{r}");

    let left = etcd.etcdctl(&["get", "", "--prefix", "--keys-only"]);
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        left.trim().is_empty(),
        "the bench left keys behind:\n{left}"
    );
}

#[test]
fn the_kvstore_bench_refuses_a_store_holding_what_it_would_write() {
    let etcd = TestEtcd::start();
    etcd.etcdctl(&["put", "cilium/state/ip/v1/default/198.19.40.1", "{}"]);
    let out = Command::new(env!("CARGO_BIN_EXE_xpf"))
        .args([
            "bench",
            "kvstore",
            "--etcd",
            &etcd.endpoint,
            "--skip-latency",
        ])
        .output()
        .expect("run xpf bench kvstore");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cilium/state/ip/v1/default/198.19.40.1") && stderr.contains("of its own"),
        "{stderr}"
    );
    // Refused before writing: the key is still there, alone.
    let keys = etcd.etcdctl(&["get", "", "--prefix", "--keys-only"]);
    let keys: Vec<String> = String::from_utf8_lossy(&keys.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(keys, ["cilium/state/ip/v1/default/198.19.40.1"]);
}
