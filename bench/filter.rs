//! Criterion benchmarks of one worker's whole per-frame decision
//! ([`Filter::decide`]) on the example world: a forward packet of an
//! established flow, its reply, a new flow under churn (a table at its
//! share, so every new flow makes room), and a fragmented datagram. Figures
//! go in commit messages and the README; they are never asserted.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use xpf::config::Config;
use xpf::conntrack::{self, Conntrack};
use xpf::engine::Engine;
use xpf::filter::{EndpointInfo, Filter, Shared};
use xpf::hostile::tcp_frame;
use xpf::wire::tcp_flags::{ACK, SYN};

const FLOWS: u16 = 1024;

/// Bytes `[off, off + len)` of the IPv4 datagram in `full` as a fragment
/// of datagram `id` (header checksum left stale: the filter does not read
/// it).
fn fragment(full: &[u8], id: u16, off: usize, len: usize) -> Vec<u8> {
    let mut f = full[..34].to_vec();
    f.extend_from_slice(&full[34 + off..34 + off + len]);
    let total = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[18..20].copy_from_slice(&id.to_be_bytes());
    let more = if off + len < full.len() - 34 {
        0x2000
    } else {
        0
    };
    f[20..22].copy_from_slice(&(more | (off / 8) as u16).to_be_bytes());
    f
}

fn decide(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/xpf.yaml");
    let engine = Engine::new(&Config::load(&path).unwrap().world).unwrap();
    let endpoints = EndpointInfo::all_of(&engine);
    let ct = Conntrack::new(conntrack::Config {
        capacity: 16 * 1024,
        owners: endpoints.len(),
        ..Default::default()
    });
    let mut filter = Filter::new(Arc::new(Shared::new(endpoints, ct)));
    let reader = engine.ipcache.reader();
    let view = reader.enter().unwrap();
    // frontend 198.18.10.2 -> backend 198.18.10.3 TCP 8080, answered.
    let (fe, be) = (0, 1);
    let forward: Vec<_> = (0..FLOWS)
        .map(|p| tcp_frame("198.18.10.2", "198.18.10.3", 20_000 + p, 8080, ACK, 22))
        .collect();
    let reply: Vec<_> = (0..FLOWS)
        .map(|p| tcp_frame("198.18.10.3", "198.18.10.2", 8080, 20_000 + p, ACK, 22))
        .collect();
    for (f, r) in forward.iter().zip(&reply) {
        filter.decide(fe, &f.clone(), &view, 0);
        filter.decide(be, r, &view, 0);
    }
    // frontend -> the world, TCP 443: new flows from 60,000 source ports,
    // ten times its share of the table.
    let new_flows: Vec<_> = (0..60_000u16)
        .map(|p| tcp_frame("198.18.10.2", "198.19.1.1", 1 + p, 443, SYN, 22))
        .collect();
    let whole = tcp_frame("198.18.10.2", "198.18.10.3", 20_000, 8080, ACK, 22);
    let datagrams: Vec<_> = (0..FLOWS)
        .map(|id| (fragment(&whole, id, 0, 24), fragment(&whole, id, 24, 18)))
        .collect();

    let mut g = c.benchmark_group("filter");
    g.throughput(Throughput::Elements(u64::from(FLOWS)));
    g.bench_function("established_forward", |b| {
        b.iter(|| {
            for f in &forward {
                black_box(filter.decide(fe, f, &view, 1));
            }
        })
    });
    g.bench_function("established_reply", |b| {
        b.iter(|| {
            for r in &reply {
                black_box(filter.decide(be, r, &view, 1));
            }
        })
    });
    let mut next = 0;
    g.bench_function("new_flow_at_share", |b| {
        b.iter(|| {
            for _ in 0..FLOWS {
                black_box(filter.decide(fe, &new_flows[next], &view, 1));
                next = (next + 1) % new_flows.len();
            }
        })
    });
    g.throughput(Throughput::Elements(2 * u64::from(FLOWS)));
    let mut now = 1;
    g.bench_function("fragmented_datagram", |b| {
        b.iter(|| {
            // A new second each round, so the ids can be used again.
            now += 31;
            for (f, l) in &datagrams {
                black_box(filter.decide(fe, f, &view, now));
                black_box(filter.decide(fe, l, &view, now));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
