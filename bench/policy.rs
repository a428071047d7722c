//! Criterion benchmarks of the policy core: verdict lookup, frame parsing,
//! the whole classify step, and compilation. Figures go in the README; they
//! are never asserted.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use xpf::classify::{classify, classify_batch, BATCH as CLASSIFY_BATCH};
use xpf::harness::synth::{frames, world, Rng, Shape};
use xpf::identity::WORLD;
use xpf::policy::compile::compile;

const QUERIES: usize = 4096;

fn verdict(c: &mut Criterion) {
    let w = world(Shape {
        ipcache_entries: 10_000,
        identities: 1_000,
        rules: 1_000,
        endpoints: 1,
    })
    .expect("world");
    let table = w
        .engine
        .compiled
        .table(w.engine.inventory.endpoint_identities[0]);
    let reader = w.engine.ipcache.reader();
    let ids: Vec<_> = w
        .destinations
        .iter()
        .map(|d| reader.lookup_or_world(*d))
        .collect();
    let mut rng = Rng::new(7);
    let queries: Vec<_> = (0..QUERIES)
        .map(|_| {
            let id = if rng.below(16) == 0 {
                WORLD
            } else {
                ids[rng.below(ids.len())]
            };
            (id, 10_000 + rng.below(1_200) as u16)
        })
        .collect();
    let mut g = c.benchmark_group("verdict");
    g.throughput(Throughput::Elements(QUERIES as u64));
    g.bench_function("1k_rules_1k_identities", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for (id, port) in &queries {
                acc = acc.wrapping_add(table.lookup_code(*id, 6, *port).0);
            }
            black_box(acc)
        })
    });
    g.finish();
}

fn parse_and_classify(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(QUERIES as u64));
    for entries in [1_000usize, 100_000, 1_000_000] {
        let w = world(Shape {
            ipcache_entries: entries,
            identities: 1_000,
            rules: 1_000,
            endpoints: 1,
        })
        .expect("world");
        let fs = frames(&w, QUERIES, 11);
        if entries == 1_000 {
            g.bench_function("parse_only", |b| {
                b.iter(|| {
                    let mut acc = 0u16;
                    for f in &fs {
                        if let Ok(flow) = xpf::wire::parse(f) {
                            acc = acc.wrapping_add(flow.dport);
                        }
                    }
                    black_box(acc)
                })
            });
        }
        let table = w
            .engine
            .compiled
            .table(w.engine.inventory.endpoint_identities[0]);
        let reader = w.engine.ipcache.reader();
        let refs: Vec<&[u8]> = fs.iter().map(Vec::as_slice).collect();
        g.bench_function(format!("batched_{entries}_ipcache"), |b| {
            let view = reader.enter().expect("open");
            let mut out = [Err(xpf::wire::ParseError::TruncatedEthernet); CLASSIFY_BATCH];
            b.iter(|| {
                let mut acc = 0u32;
                for batch in refs.chunks(CLASSIFY_BATCH) {
                    classify_batch(batch, table, &view, &mut out);
                    for c in out[..batch.len()].iter().flatten() {
                        acc = acc.wrapping_add(c.code.0);
                    }
                }
                black_box(acc)
            })
        });
        g.bench_function(format!("per_frame_{entries}_ipcache"), |b| {
            let view = reader.enter().expect("open");
            b.iter(|| {
                let mut acc = 0u32;
                for f in &fs {
                    if let Ok(c) = classify(f, table, &view) {
                        acc = acc.wrapping_add(c.code.0);
                    }
                }
                black_box(acc)
            })
        });
    }
    g.finish();
}

fn compilation(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for (name, endpoints) in [
        ("1k_rules_1k_endpoints", 1_000usize),
        ("1k_rules_1_endpoint", 1),
    ] {
        let w = world(Shape {
            ipcache_entries: 0,
            identities: 1_000,
            rules: 1_000,
            endpoints,
        })
        .expect("world");
        g.bench_function(name, |b| {
            b.iter_batched(
                || (),
                |_| black_box(compile(&w.engine.world.policies, &w.engine.inventory)),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, verdict, parse_and_classify, compilation);
criterion_main!(benches);
