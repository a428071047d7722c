//! A synthetic report for the report's tests: the shape of a full
//! benchmark, with numbers made up.

use super::{
    kind, CpuUse, Destination, Latency, Machine, MonitorLoad, Params, Ratio, Report, Run, Spread,
    UpdateLatency, UpdateLoad,
};

/// A synthetic report shaped like a full benchmark: every baseline kind
/// once, xpf swept over ipcache entries, rules and flows around a baseline,
/// kernel-nft swept over rules, latency curves, the runs under API
/// updates and with a monitor, the endpoint-to-endpoint runs with their
/// CPU figures, and update latencies (one meeting its target, one missing
/// it).
pub(crate) fn synthetic_report() -> Report {
    let base = Params {
        ipcache_entries: 100_000,
        rules: 1_000,
        flows: 1_000,
        frame_size: 64,
        workers: 1,
        rate_pps: 0,
        ipcache_updates_per_sec: 0,
        to: Destination::Outside,
    };
    let run = |name: &str, params: Params, delivered: f64, curve: bool| {
        let offered = 4.0e6;
        Run {
            name: name.to_string(),
            label: format!(
                "{name} ipcache={} rules={} flows={} {}B w{}",
                params.ipcache_entries,
                params.rules,
                params.flows,
                params.frame_size,
                params.workers
            ),
            delivered_pps: delivered,
            offered_pps: offered,
            // Rounded so the JSON round trip is exact.
            loss: ((1.0 - delivered / offered) * 1e4).round() / 1e4,
            latency_us: curve.then_some(Latency {
                p50: 12.0,
                p99: 40.0,
                p999: 95.5,
            }),
            latency_curve: if curve {
                vec![
                    (0.0, 4.0),
                    (50.0, 12.0),
                    (90.0, 20.0),
                    (99.0, 40.0),
                    (99.9, 95.5),
                    (99.99, 210.0),
                    (100.0, 400.0),
                ]
            } else {
                Vec::new()
            },
            params,
            cpu_ns_per_packet: None,
            notes: None,
            cpu: None,
            updates: None,
            monitor: None,
        }
    };
    let mut runs = vec![
        run(kind::XDP_DROP, base, 3.9e6, false),
        run(kind::AFXDP_RXDROP, base, 3.1e6, false),
        run(kind::AFXDP_FWD, base, 2.2e6, true),
    ];
    for (i, entries) in [1_000, 10_000, 100_000, 1_000_000].into_iter().enumerate() {
        let p = Params {
            ipcache_entries: entries,
            ..base
        };
        runs.push(run(kind::XPF, p, 1.9e6 - i as f64 * 1.0e5, i == 2));
    }
    for (i, rules) in [10, 100, 10_000].into_iter().enumerate() {
        let p = Params { rules, ..base };
        runs.push(run(kind::XPF, p, 1.8e6 - i as f64 * 5.0e4, false));
    }
    for (i, flows) in [1, 100_000].into_iter().enumerate() {
        let p = Params { flows, ..base };
        runs.push(run(kind::XPF, p, 1.85e6 - i as f64 * 3.0e5, false));
    }
    for (i, rules) in [10, 1_000, 10_000].into_iter().enumerate() {
        let p = Params { rules, ..base };
        runs.push(run(kind::KERNEL_NFT, p, 0.9e6 - i as f64 * 2.0e5, i == 1));
    }
    runs.last_mut().unwrap().notes = Some("nft | 10k rules".to_string());
    let mut updated = run(kind::XPF_UPDATES, base, 1.7e6, false);
    updated.updates = Some(UpdateLoad {
        seconds: 3.5,
        reloads_asked_per_sec: 10.0,
        reloads_per_sec: 2.5,
        upserts_asked_per_sec: 10_000.0,
        upserts_per_sec: 2_250.0,
        deletes_per_sec: 1_900.25,
        errors: 0,
    });
    runs.push(updated);
    let mut monitored = run(kind::XPF_MONITOR, base, 1.8e6, false);
    monitored.monitor = Some(MonitorLoad {
        lines: 1_000,
        lost_events: 0,
    });
    runs.push(monitored);
    runs[0].cpu_ns_per_packet = Some(310.0);
    let e2e = Params {
        to: Destination::Endpoint,
        ..base
    };
    for (name, delivered, cpu) in [
        (kind::XDP_REDIRECT, 1.2e6, 900.0),
        (kind::XPF, 0.6e6, 2_400.0),
        (kind::XPF_HYBRID, 1.1e6, 1_000.0),
    ] {
        let mut r = run(name, e2e, delivered, false);
        r.label.push_str(" e2e");
        r.cpu_ns_per_packet = Some(cpu);
        r.cpu = Some(CpuUse {
            window_secs: 3.0,
            busy_secs: cpu * delivered * 3.0 / 1e9 + 0.03,
            busy_secs_by_cpu: vec![1.0, 1.5],
            idle_busy_cpus: 0.01,
            tasks_ns_per_packet: [("gen".to_string(), 250.0), ("napi".to_string(), 500.0)]
                .into_iter()
                .collect(),
        });
        runs.push(r);
    }
    Report {
        machine: Machine {
            cpu_model: "Test CPU @ 3.0GHz".to_string(),
            cores: 2,
            kernel: "6.18.0-test".to_string(),
            memory_gib: 7.75,
        },
        quick: true,
        started_at: "2024-05-01T12:00:00Z".to_string(),
        duration_secs: 93.5,
        runs,
        ratios: vec![
            Ratio {
                name: "xpf / afxdp-fwd".to_string(),
                numerator: "xpf ipcache=100000 rules=1000 flows=1000 64B w1".to_string(),
                denominator: "afxdp-fwd ipcache=100000 rules=1000 flows=1000 64B w1".to_string(),
                value: 0.7727,
                target: Some(">= 0.5".to_string()),
                met: Some(true),
            },
            Ratio {
                name: "xpf / xdp-drop".to_string(),
                numerator: "xpf ipcache=100000 rules=1000 flows=1000 64B w1".to_string(),
                denominator: "xdp-drop ipcache=100000 rules=1000 flows=1000 64B w1".to_string(),
                value: 0.4359,
                target: Some(">= 0.6".to_string()),
                met: Some(false),
            },
            Ratio {
                name: "xpf / kernel-nft".to_string(),
                numerator: "xpf".to_string(),
                denominator: "kernel-nft".to_string(),
                value: 2.4,
                target: None,
                met: None,
            },
        ],
        update_latency: vec![
            UpdateLatency {
                update: "upsert".to_string(),
                during: "xpf ipcache=100k, 0.3 Mpps delivered".to_string(),
                samples: 200,
                call_ms: Spread {
                    p50: 0.5,
                    p99: 1.25,
                    max: 2.0,
                },
                applied_ms: Spread {
                    p50: 0.25,
                    p99: 0.75,
                    max: 1.0,
                },
                target: Some("p99 ≤ 50 ms".to_string()),
                met: Some(true),
            },
            UpdateLatency {
                update: "reload".to_string(),
                during: "xpf ipcache=100k, 0.3 Mpps delivered".to_string(),
                samples: 30,
                call_ms: Spread {
                    p50: 400.0,
                    p99: 650.0,
                    max: 650.0,
                },
                applied_ms: Spread {
                    p50: 150.0,
                    p99: 220.0,
                    max: 220.0,
                },
                target: Some("p99 ≤ 50 ms".to_string()),
                met: Some(false),
            },
        ],
    }
}
