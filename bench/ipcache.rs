//! ipcache lookup cost, in ns per lookup, at 1k, 100k and 1M entries.
//!
//! The table mixes what a busy node holds: 70% IPv4 /32 and 20% IPv6 /128
//! endpoint addresses (Labelled), 10% shorter Labelled prefixes (/24, /16,
//! /8, /64, /48), plus a few Cidr-origin prefixes overlapping them. Queries
//! are pre-generated (4096 per iteration) so the loop measures lookups, not
//! address generation. Addresses come from 198.18.0.0/15 and 2001:db8::/32
//! plus random ones; nothing here touches a network.
//!
//! Each table size is measured with three query sets (`hit`: a Labelled
//! entry covers the address; `miss`: none does, so the lookup falls through
//! to the Cidr tier or to nothing; `mixed`: half each) and two access modes
//! (`lookup`: one reader enter/exit per lookup; `view`: one enter per 4096
//! lookups, as a worker does per batch).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ipnet::IpNet;
use rand::rngs::SmallRng;
use rand::{Rng as _, RngCore, SeedableRng};
use xpf::identity::{NumericIdentity, LOCAL_SCOPE};
use xpf::ipcache::{IpCache, IpCacheReader, Origin};

const QUERIES: usize = 4096;
const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

/// Seeded, so every run measures the same table.
struct Rng(SmallRng);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0.random_range(0..n)
    }

    fn u128(&mut self) -> u128 {
        self.0.random()
    }
}

const BENCH_NET4: u32 = 0xc612_0000; // 198.18.0.0/15
const DOC_NET6: u128 = 0x2001_0db8 << 96; // 2001:db8::/32

fn v4(rng: &mut Rng, len: u8) -> IpNet {
    // Half of the IPv4 prefixes in 198.18.0.0/15, half anywhere.
    let a = if rng.below(2) == 0 {
        BENCH_NET4 | (rng.next() as u32 & 0x1_ffff)
    } else {
        rng.next() as u32
    };
    IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), len)
        .unwrap()
        .trunc()
}

fn v6(rng: &mut Rng, len: u8) -> IpNet {
    let a = DOC_NET6 | (rng.u128() & (u128::MAX >> 32));
    IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), len)
        .unwrap()
        .trunc()
}

/// Labelled identities stay below LOCAL_SCOPE, Cidr ones above, so a
/// lookup result tells which tier answered.
fn build(n: usize, rng: &mut Rng) -> (IpCache, Vec<IpNet>) {
    let mut cache = IpCache::with_capacity(n * 7 / 10, n * 2 / 10);
    let mut labelled = Vec::with_capacity(n);
    for i in 0..n {
        let roll = rng.below(100);
        let prefix = match roll {
            0..70 => v4(rng, 32),
            70..90 => v6(rng, 128),
            90..94 => v4(rng, 24),
            94 => v4(rng, 16),
            95..98 => v6(rng, 64),
            _ => v6(rng, 48),
        };
        cache.insert(
            prefix,
            NumericIdentity(256 + i as u32 % 100_000),
            Origin::Labelled,
        );
        labelled.push(prefix);
    }
    // A few /8s would swallow a large share of IPv4 if they were many.
    for _ in 0..2 {
        let p = v4(rng, 8);
        cache.insert(p, NumericIdentity(300), Origin::Labelled);
        labelled.push(p);
    }
    let cidrs = [
        "198.18.0.0/16",
        "198.19.128.0/17",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "203.0.113.0/24",
        "2001:db8::/32",
        "2001:db8:ff00::/40",
    ];
    for (i, c) in cidrs.iter().enumerate() {
        let id = NumericIdentity(LOCAL_SCOPE | i as u32);
        cache.insert(c.parse().unwrap(), id, Origin::Cidr);
    }
    for i in 0..16 {
        let id = NumericIdentity(LOCAL_SCOPE | 100 | i);
        cache.insert(v4(rng, 20), id, Origin::Cidr);
    }
    cache.publish();
    // Second publish: both copies are full, as in steady state.
    cache.publish();
    (cache, labelled)
}

fn inside(prefix: &IpNet, rng: &mut Rng) -> IpAddr {
    match prefix {
        IpNet::V4(p) => {
            let host = !u32::from(p.netmask()) & rng.next() as u32;
            IpAddr::V4(Ipv4Addr::from(u32::from(p.network()) | host))
        }
        IpNet::V6(p) => {
            let host = !u128::from(p.netmask()) & rng.u128();
            IpAddr::V6(Ipv6Addr::from(u128::from(p.network()) | host))
        }
    }
}

fn random_addr(rng: &mut Rng) -> IpAddr {
    match rng.below(10) {
        0..4 => IpAddr::V4(Ipv4Addr::from(rng.next() as u32)),
        4..7 => IpAddr::V4(Ipv4Addr::from(BENCH_NET4 | (rng.next() as u32 & 0x1_ffff))),
        7..9 => IpAddr::V6(Ipv6Addr::from(DOC_NET6 | (rng.u128() & (u128::MAX >> 32)))),
        _ => IpAddr::V6(Ipv6Addr::from(rng.u128())),
    }
}

fn is_labelled_hit(reader: &IpCacheReader, addr: IpAddr) -> bool {
    reader
        .lookup(addr)
        .is_some_and(|id| id.0 & LOCAL_SCOPE == 0)
}

/// `hits` and `misses` of QUERIES addresses each, shuffled together for
/// `mixed`.
fn queries(reader: &IpCacheReader, labelled: &[IpNet], rng: &mut Rng) -> [Vec<IpAddr>; 3] {
    let mut hits = Vec::with_capacity(QUERIES);
    while hits.len() < QUERIES {
        let a = inside(&labelled[rng.below(labelled.len() as u64) as usize], rng);
        // Skips the rare Labelled prefix a Cidr insert replaced.
        if is_labelled_hit(reader, a) {
            hits.push(a);
        }
    }
    let mut misses = Vec::with_capacity(QUERIES);
    while misses.len() < QUERIES {
        let a = random_addr(rng);
        if !is_labelled_hit(reader, a) {
            misses.push(a);
        }
    }
    let mut mixed: Vec<IpAddr> = hits[..QUERIES / 2]
        .iter()
        .chain(&misses[..QUERIES / 2])
        .copied()
        .collect();
    for i in (1..mixed.len()).rev() {
        mixed.swap(i, rng.below(i as u64 + 1) as usize);
    }
    [mixed, hits, misses]
}

fn lookups(c: &mut Criterion) {
    let mut rng = Rng(SmallRng::seed_from_u64(0x5eed));
    for size in SIZES {
        let (cache, labelled) = build(size, &mut rng);
        let reader = cache.reader();
        let sets = queries(&reader, &labelled, &mut rng);
        let mut group = c.benchmark_group(format!("ipcache/{size}"));
        group.throughput(Throughput::Elements(QUERIES as u64));
        for (name, set) in ["mixed", "hit", "miss"].iter().zip(&sets) {
            group.bench_with_input(BenchmarkId::new("lookup", name), set, |b, set| {
                b.iter(|| {
                    let mut acc = 0u32;
                    for a in set {
                        acc = acc.wrapping_add(reader.lookup_or_world(black_box(*a)).0);
                    }
                    acc
                })
            });
            group.bench_with_input(BenchmarkId::new("view", name), set, |b, set| {
                b.iter(|| {
                    let view = reader.enter().expect("writer alive");
                    let mut acc = 0u32;
                    for a in set {
                        acc = acc.wrapping_add(view.lookup_or_world(black_box(*a)).0);
                    }
                    acc
                })
            });
        }
        group.finish();
        drop(reader);
        drop(cache);
    }
}

criterion_group!(benches, lookups);
criterion_main!(benches);
