//! The benchmark report's JSON schema, as scripts read it: `latest.json` is
//! checked as untyped JSON, so a renamed or retyped field fails here even
//! though the Rust types still round-trip.

use serde_json::Value;
use xpf::harness::report::{
    self, CpuUse, Destination, Latency, Machine, MonitorLoad, Params, Ratio, Report, Run, Spread,
    UpdateLatency, UpdateLoad,
};

fn run(name: &str, ipcache_entries: u64, latency: bool) -> Run {
    Run {
        name: name.to_string(),
        label: format!("{name} ipcache={ipcache_entries} rules=1k flows=1k 64B w1"),
        delivered_pps: 1.5e6,
        offered_pps: 2.0e6,
        loss: 0.25,
        latency_us: latency.then_some(Latency {
            p50: 10.0,
            p99: 30.0,
            p999: 80.0,
        }),
        latency_curve: if latency {
            vec![(0.0, 3.0), (50.0, 10.0), (99.0, 30.0), (99.9, 80.0)]
        } else {
            Vec::new()
        },
        params: Params {
            ipcache_entries,
            rules: 1000,
            flows: 1000,
            frame_size: 64,
            workers: 1,
            rate_pps: 0,
            ipcache_updates_per_sec: 0,
            to: Destination::Outside,
        },
        cpu_ns_per_packet: None,
        notes: None,
        cpu: None,
        updates: None,
        monitor: None,
    }
}

fn synthetic() -> Report {
    let mut updated = run("xpf-updates", 100_000, true);
    updated.updates = Some(UpdateLoad {
        seconds: 3.5,
        reloads_asked_per_sec: 10.0,
        reloads_per_sec: 2.0,
        upserts_asked_per_sec: 10_000.0,
        upserts_per_sec: 2500.0,
        deletes_per_sec: 2000.0,
        errors: 0,
    });
    let mut e2e = run("xpf-hybrid", 100_000, false);
    e2e.params.to = Destination::Endpoint;
    e2e.cpu_ns_per_packet = Some(1250.0);
    e2e.cpu = Some(CpuUse {
        window_secs: 3.0,
        busy_secs: 5.7,
        busy_secs_by_cpu: vec![3.0, 2.7],
        idle_busy_cpus: 0.02,
        tasks_ns_per_packet: [("gen".to_string(), 300.0), ("xpf".to_string(), 700.0)]
            .into_iter()
            .collect(),
    });
    let mut monitored = run("xpf-monitor", 100_000, true);
    monitored.monitor = Some(MonitorLoad {
        lines: 1000,
        lost_events: 0,
    });
    let spread = Spread {
        p50: 0.5,
        p99: 1.0,
        max: 2.0,
    };
    Report {
        machine: Machine {
            cpu_model: "Synthetic CPU".to_string(),
            cores: 2,
            kernel: "6.18.0".to_string(),
            memory_gib: 4.0,
        },
        quick: true,
        started_at: "2024-05-01T12:00:00Z".to_string(),
        duration_secs: 12.5,
        runs: vec![
            run("xdp-drop", 100_000, false),
            run("afxdp-fwd", 100_000, true),
            run("xpf", 1_000, false),
            run("xpf", 100_000, true),
            run("xpf", 1_000_000, false),
            updated,
            monitored,
            e2e,
        ],
        ratios: vec![Ratio {
            name: "xpf / afxdp-fwd".to_string(),
            numerator: "xpf ipcache=100000 rules=1k flows=1k 64B w1".to_string(),
            denominator: "afxdp-fwd ipcache=100000 rules=1k flows=1k 64B w1".to_string(),
            value: 1.0,
            target: Some(">= 0.9".to_string()),
            met: Some(true),
        }],
        update_latency: vec![UpdateLatency {
            update: "upsert".to_string(),
            during: "xpf ipcache=100k rules=1k flows=1k 86B w1, 0.300 Mpps delivered".to_string(),
            samples: 200,
            call_ms: spread,
            applied_ms: spread,
            target: Some("p99 ≤ 50 ms".to_string()),
            met: Some(true),
        }],
    }
}

fn number(v: &Value, key: &str, what: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{what}.{key} is not a number: {}", v[key]))
}

#[test]
fn latest_json_has_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let written = report::write(dir.path(), &synthetic()).unwrap();
    assert_eq!(written.json, dir.path().join("latest.json"));
    assert!(written.markdown.exists());

    let text = std::fs::read_to_string(&written.json).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();

    let machine = &json["machine"];
    assert!(machine["cpu_model"].is_string(), "{machine}");
    assert!(machine["cores"].is_u64(), "{machine}");
    assert!(machine["kernel"].is_string(), "{machine}");
    number(machine, "memory_gib", "machine");
    assert!(json["quick"].is_boolean());
    assert!(json["started_at"].is_string());
    number(&json, "duration_secs", "report");

    let runs = json["runs"].as_array().expect("runs is an array");
    assert_eq!(runs.len(), 8);
    let mut with_latency = 0;
    for r in runs {
        assert!(r["name"].is_string(), "{r}");
        assert!(r["label"].is_string(), "{r}");
        number(r, "delivered_pps", "run");
        number(r, "offered_pps", "run");
        let loss = number(r, "loss", "run");
        assert!((0.0..=1.0).contains(&loss), "{r}");

        let latency = r
            .as_object()
            .unwrap()
            .get("latency_us")
            .expect("latency_us is present, null when absent");
        if latency.is_null() {
            assert!(r["latency_curve"].as_array().unwrap().is_empty());
        } else {
            with_latency += 1;
            for key in ["p50", "p99", "p999"] {
                number(latency, key, "latency_us");
            }
            for point in r["latency_curve"].as_array().unwrap() {
                let point = point.as_array().expect("a curve point is [percentile, us]");
                assert_eq!(point.len(), 2);
                assert!(point.iter().all(Value::is_f64));
            }
        }

        let params = &r["params"];
        for key in [
            "ipcache_entries",
            "rules",
            "flows",
            "frame_size",
            "workers",
            "rate_pps",
            "ipcache_updates_per_sec",
        ] {
            assert!(params[key].is_u64(), "params.{key}: {params}");
        }
        assert!(
            params["to"] == "outside" || params["to"] == "endpoint",
            "params.to: {params}"
        );
        assert!(r.as_object().unwrap().contains_key("notes"), "{r}");

        // The CPU figure is present, null when not measured; how it was
        // measured only where it was.
        let cpu = r
            .as_object()
            .unwrap()
            .get("cpu_ns_per_packet")
            .expect("cpu_ns_per_packet is present, null when absent");
        assert_eq!(cpu.is_null(), r.get("cpu").is_none(), "{r}");
        if let Some(c) = r.get("cpu") {
            assert!(cpu.is_f64(), "{r}");
            for key in ["window_secs", "busy_secs", "idle_busy_cpus"] {
                number(c, key, "cpu");
            }
            assert!(c["busy_secs_by_cpu"]
                .as_array()
                .unwrap()
                .iter()
                .all(Value::is_f64));
            let tasks = c["tasks_ns_per_packet"].as_object().expect("an object");
            assert!(tasks.values().all(Value::is_f64), "{c}");
        }

        // The control-plane load appears only on the runs that had one.
        let updates = r.get("updates");
        assert_eq!(updates.is_some(), r["name"] == "xpf-updates", "{r}");
        if let Some(u) = updates {
            for key in [
                "seconds",
                "reloads_asked_per_sec",
                "reloads_per_sec",
                "upserts_asked_per_sec",
                "upserts_per_sec",
                "deletes_per_sec",
            ] {
                number(u, key, "updates");
            }
            assert!(u["errors"].is_u64(), "{u}");
        }
        let monitor = r.get("monitor");
        assert_eq!(monitor.is_some(), r["name"] == "xpf-monitor", "{r}");
        if let Some(m) = monitor {
            assert!(m["lines"].is_u64() && m["lost_events"].is_u64(), "{m}");
        }
    }
    assert_eq!(with_latency, 4);

    let ratios = json["ratios"].as_array().expect("ratios is an array");
    assert_eq!(ratios.len(), 1);
    let ratio = &ratios[0];
    for key in ["name", "numerator", "denominator", "target"] {
        assert!(ratio[key].is_string(), "ratio.{key}: {ratio}");
    }
    number(ratio, "value", "ratio");
    assert_eq!(ratio["met"], Value::Bool(true));

    let latencies = json["update_latency"]
        .as_array()
        .expect("update_latency is an array");
    assert_eq!(latencies.len(), 1);
    let l = &latencies[0];
    for key in ["update", "during", "target"] {
        assert!(l[key].is_string(), "update_latency.{key}: {l}");
    }
    assert!(l["samples"].is_u64(), "{l}");
    for spread in ["call_ms", "applied_ms"] {
        for key in ["p50", "p99", "max"] {
            number(&l[spread], key, spread);
        }
    }
    assert_eq!(l["met"], Value::Bool(true));
}

#[test]
fn a_report_without_the_control_plane_figures_still_reads() {
    // Reports written before the control plane's figures, the CPU figure
    // and the destination existed.
    let dir = tempfile::tempdir().unwrap();
    let mut old = synthetic();
    old.runs
        .retain(|r| r.updates.is_none() && r.monitor.is_none() && r.cpu.is_none());
    old.update_latency.clear();
    let written = report::write(dir.path(), &old).unwrap();
    let mut json: Value =
        serde_json::from_str(&std::fs::read_to_string(&written.json).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("update_latency");
    for r in json["runs"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("cpu_ns_per_packet");
        r["params"].as_object_mut().unwrap().remove("to");
    }
    let back: Report = serde_json::from_value(json).unwrap();
    assert_eq!(back, old);
}

#[test]
fn machine_describes_this_host() {
    let m = report::machine();
    assert!(!m.cpu_model.trim().is_empty(), "{m:?}");
    assert!(!m.kernel.trim().is_empty(), "{m:?}");
    assert!(m.cores >= 1, "{m:?}");
    assert!(m.memory_gib >= 0.0, "{m:?}");
}
