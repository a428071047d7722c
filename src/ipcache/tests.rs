//! Unit and property tests for the ipcache. The property tests compare the
//! real table with `Naive`, a list scanned linearly with the two-tier rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().expect("test prefix")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn id(n: u32) -> NumericIdentity {
    NumericIdentity(n)
}

/// A published cache holding `entries`, and a reader of it.
fn cache(entries: &[(&str, u32, Origin)]) -> (IpCache, IpCacheReader) {
    let mut c = IpCache::new();
    for (p, n, o) in entries {
        c.insert(net(p), id(*n), *o);
    }
    c.publish();
    let r = c.reader();
    (c, r)
}

use Origin::{Cidr, Labelled};

#[test]
fn exact_hits_v4_and_v6() {
    let (_c, r) = cache(&[
        ("10.0.0.1/32", 1001, Labelled),
        ("10.0.0.2/32", 1002, Labelled),
        ("2001:db8::1/128", 2001, Labelled),
    ]);
    assert_eq!(r.lookup(ip("10.0.0.1")), Some(id(1001)));
    assert_eq!(r.lookup(ip("10.0.0.2")), Some(id(1002)));
    assert_eq!(r.lookup(ip("10.0.0.3")), None);
    assert_eq!(r.lookup(ip("2001:db8::1")), Some(id(2001)));
    assert_eq!(r.lookup(ip("2001:db8::2")), None);
    assert_eq!(r.lookup_v4("10.0.0.1".parse().unwrap()), Some(id(1001)));
    assert_eq!(r.lookup_v6("2001:db8::1".parse().unwrap()), Some(id(2001)));
    assert_eq!(r.lookup_or_world(ip("10.0.0.3")), WORLD);
    assert_eq!(r.lookup_or_world(ip("10.0.0.1")), id(1001));
}

#[test]
fn longest_prefix_wins() {
    let (_c, r) = cache(&[
        ("10.0.0.0/8", 8, Labelled),
        ("10.1.0.0/16", 16, Labelled),
        ("10.1.2.0/24", 24, Labelled),
        ("10.1.2.3/32", 32, Labelled),
        ("10.1.128.0/17", 17, Labelled),
        ("2001:db8::/32", 632, Labelled),
        ("2001:db8:1::/48", 648, Labelled),
        ("2001:db8:1:2::/64", 664, Labelled),
    ]);
    assert_eq!(r.lookup(ip("10.1.2.3")), Some(id(32)));
    assert_eq!(r.lookup(ip("10.1.2.4")), Some(id(24)));
    assert_eq!(r.lookup(ip("10.1.3.4")), Some(id(16)));
    assert_eq!(r.lookup(ip("10.1.200.4")), Some(id(17)));
    assert_eq!(r.lookup(ip("10.2.3.4")), Some(id(8)));
    assert_eq!(r.lookup(ip("11.0.0.0")), None);
    assert_eq!(r.lookup(ip("2001:db8:1:2::9")), Some(id(664)));
    assert_eq!(r.lookup(ip("2001:db8:1:3::9")), Some(id(648)));
    assert_eq!(r.lookup(ip("2001:db8:2::9")), Some(id(632)));
    assert_eq!(r.lookup(ip("2001:db9::")), None);
}

#[test]
fn zero_prefix_matches_its_family_only() {
    let (mut c, r) = cache(&[("0.0.0.0/0", 4, Cidr)]);
    assert_eq!(r.lookup(ip("1.2.3.4")), Some(id(4)));
    assert_eq!(r.lookup(ip("255.255.255.255")), Some(id(4)));
    assert_eq!(r.lookup(ip("::ffff:1.2.3.4")), None);
    assert_eq!(r.lookup(ip("::")), None);
    c.insert(net("::/0"), id(6), Labelled);
    c.publish();
    assert_eq!(r.lookup(ip("2001:db8::1")), Some(id(6)));
    assert_eq!(r.lookup(ip("1.2.3.4")), Some(id(4)));
    assert!(c.remove(net("0.0.0.0/0")));
    c.publish();
    assert_eq!(r.lookup(ip("1.2.3.4")), None);
    assert_eq!(r.lookup(ip("::1")), Some(id(6)));
}

#[test]
fn removal_restores_the_shorter_match() {
    let (mut c, r) = cache(&[
        ("10.0.0.0/8", 8, Labelled),
        ("10.1.0.0/16", 16, Labelled),
        ("10.1.2.0/24", 24, Labelled),
        ("10.1.2.3/32", 32, Labelled),
        ("2001:db8::/32", 632, Labelled),
        ("2001:db8::1/128", 6128, Labelled),
    ]);
    assert!(c.remove(net("10.1.2.3/32")));
    c.publish();
    assert_eq!(r.lookup(ip("10.1.2.3")), Some(id(24)));
    assert!(c.remove(net("10.1.2.0/24")));
    c.publish();
    assert_eq!(r.lookup(ip("10.1.2.3")), Some(id(16)));
    assert!(c.remove(net("10.1.0.0/16")));
    c.publish();
    assert_eq!(r.lookup(ip("10.1.2.3")), Some(id(8)));
    assert!(c.remove(net("10.0.0.0/8")));
    c.publish();
    assert_eq!(r.lookup(ip("10.1.2.3")), None);
    assert!(c.remove(net("2001:db8::1/128")));
    c.publish();
    assert_eq!(r.lookup(ip("2001:db8::1")), Some(id(632)));
    assert!(!c.remove(net("2001:db8::1/128")));
    assert_eq!(c.len(), 1);
}

#[test]
fn removing_a_short_prefix_keeps_a_longer_short_one() {
    // Both lengths are resolved through the /16 slot array.
    let (mut c, r) = cache(&[("10.0.0.0/8", 8, Labelled), ("10.1.0.0/16", 16, Labelled)]);
    assert!(c.remove(net("10.0.0.0/8")));
    c.publish();
    assert_eq!(r.lookup(ip("10.1.2.3")), Some(id(16)));
    assert_eq!(r.lookup(ip("10.2.2.3")), None);
}

#[test]
fn labelled_beats_longer_cidr() {
    let (_c, r) = cache(&[
        ("10.0.0.0/8", 8, Labelled),
        ("10.1.2.0/24", 24, Cidr),
        ("10.1.2.3/32", 32, Cidr),
        ("2001:db8::/32", 632, Labelled),
        ("2001:db8::1/128", 6128, Cidr),
    ]);
    assert_eq!(r.lookup(ip("10.1.2.3")), Some(id(8)));
    assert_eq!(r.lookup(ip("10.1.2.4")), Some(id(8)));
    assert_eq!(r.lookup(ip("2001:db8::1")), Some(id(632)));
}

#[test]
fn cidr_used_where_no_labelled_entry_covers() {
    let (_c, r) = cache(&[
        ("10.1.2.3/32", 1003, Labelled),
        ("10.0.0.0/8", 8, Cidr),
        ("10.1.0.0/16", 16, Cidr),
        ("0.0.0.0/0", 1, Cidr),
        ("2001:db8::1/128", 6128, Labelled),
        ("2001:db8::/32", 632, Cidr),
    ]);
    assert_eq!(r.lookup(ip("10.1.2.3")), Some(id(1003)));
    assert_eq!(r.lookup(ip("10.1.2.4")), Some(id(16)));
    assert_eq!(r.lookup(ip("10.2.2.4")), Some(id(8)));
    assert_eq!(r.lookup(ip("11.2.2.4")), Some(id(1)));
    assert_eq!(r.lookup(ip("2001:db8::1")), Some(id(6128)));
    assert_eq!(r.lookup(ip("2001:db8::2")), Some(id(632)));
    assert_eq!(r.lookup(ip("2001:db9::2")), None);
}

#[test]
fn insert_replaces_identity_and_origin() {
    let (mut c, r) = cache(&[("10.0.0.0/8", 8, Cidr), ("10.1.0.0/16", 16, Labelled)]);
    // Unnormalised prefixes name the same entry.
    c.insert(net("10.1.2.3/16"), id(160), Labelled);
    assert_eq!(c.len(), 2);
    c.publish();
    assert_eq!(r.lookup(ip("10.1.9.9")), Some(id(160)));
    // Demote the /16 and promote the /8: the Labelled /8 now wins over the
    // longer Cidr /16.
    c.insert(net("10.1.0.0/16"), id(161), Cidr);
    c.insert(net("10.0.0.0/8"), id(80), Labelled);
    assert_eq!(c.len(), 2);
    assert_eq!(c.get(net("10.1.0.0/16")), Some((id(161), Cidr)));
    c.publish();
    assert_eq!(r.lookup(ip("10.1.9.9")), Some(id(80)));
    assert_eq!(
        c.entries(),
        vec![
            IpCacheEntry {
                prefix: net("10.0.0.0/8"),
                identity: id(80),
                origin: Labelled
            },
            IpCacheEntry {
                prefix: net("10.1.0.0/16"),
                identity: id(161),
                origin: Cidr
            },
        ]
    );
}

#[test]
fn staged_changes_are_invisible_until_publish() {
    let (mut c, r) = cache(&[("10.0.0.1/32", 1, Labelled)]);
    c.insert(net("10.0.0.2/32"), id(2), Labelled);
    assert!(c.remove(net("10.0.0.1/32")));
    c.insert(net("2001:db8::/64"), id(3), Cidr);
    // The writer sees its staged state...
    assert_eq!(c.len(), 2);
    assert!(!c.remove(net("10.0.0.1/32")));
    assert_eq!(c.get(net("10.0.0.2/32")), Some((id(2), Labelled)));
    assert_eq!(c.entries().len(), 2);
    // ...readers do not.
    assert_eq!(r.lookup(ip("10.0.0.1")), Some(id(1)));
    assert_eq!(r.lookup(ip("10.0.0.2")), None);
    assert_eq!(r.lookup(ip("2001:db8::5")), None);
    c.publish();
    assert_eq!(r.lookup(ip("10.0.0.1")), None);
    assert_eq!(r.lookup(ip("10.0.0.2")), Some(id(2)));
    assert_eq!(r.lookup(ip("2001:db8::5")), Some(id(3)));
    // A second publish brings the other copy up to date too.
    c.publish();
    assert_eq!(r.lookup(ip("10.0.0.2")), Some(id(2)));
    assert_eq!(c.len(), 2);
}

#[test]
fn view_sees_one_published_state() {
    let (mut c, r) = cache(&[("10.0.0.1/32", 1, Labelled)]);
    let view = r.enter().expect("writer alive");
    assert_eq!(view.lookup(ip("10.0.0.1")), Some(id(1)));
    assert_eq!(view.lookup_v4("10.0.0.1".parse().unwrap()), Some(id(1)));
    assert_eq!(view.lookup_v6(Ipv6Addr::LOCALHOST), None);
    assert_eq!(view.lookup_or_world(ip("::1")), WORLD);
    drop(view);
    c.insert(net("10.0.0.1/32"), id(7), Labelled);
    c.publish();
    assert_eq!(r.enter().unwrap().lookup(ip("10.0.0.1")), Some(id(7)));
    drop(c);
    assert!(r.enter().is_none());
    assert_eq!(r.lookup_or_world(ip("10.0.0.1")), WORLD);
}

#[test]
fn entries_are_sorted_and_serialise() {
    let (c, _r) = cache(&[
        ("2001:db8::/32", 5, Cidr),
        ("10.1.0.0/16", 3, Labelled),
        ("10.0.0.0/8", 2, Cidr),
        ("10.0.0.0/16", 4, Labelled),
        ("9.0.0.0/8", 1, Labelled),
    ]);
    let prefixes: Vec<String> = c.entries().iter().map(|e| e.prefix.to_string()).collect();
    assert_eq!(
        prefixes,
        [
            "9.0.0.0/8",
            "10.0.0.0/8",
            "10.0.0.0/16",
            "10.1.0.0/16",
            "2001:db8::/32"
        ]
    );
    let json = serde_json::to_string(&c.entries()[0]).unwrap();
    assert_eq!(
        json,
        r#"{"prefix":"9.0.0.0/8","identity":1,"origin":"labelled"}"#
    );
}

#[test]
fn handles_move_between_threads() {
    fn send<T: Send>() {}
    send::<IpCache>();
    send::<IpCacheReader>();
}

#[test]
fn reader_on_another_thread_sees_whole_publishes() {
    const ROUNDS: u32 = 2000;
    let mut c = IpCache::new();
    let r = c.reader();
    let worker = std::thread::spawn(move || {
        // Each publish moves 10.0.0.1 and 2001:db8::1 together; a reader
        // must never see one without the other, nor go backwards.
        let mut last = 0;
        loop {
            let view = r.enter().expect("writer outlives the loop");
            let v4 = view.lookup(ip("10.0.0.1"));
            let v6 = view.lookup(ip("2001:db8::1"));
            drop(view);
            assert_eq!(v4, v6);
            let n = v4.map_or(0, |i| i.0);
            assert!(n >= last, "went back from {last} to {n}");
            last = n;
            if n == ROUNDS {
                return;
            }
        }
    });
    for n in 1..=ROUNDS {
        c.insert(net("10.0.0.1/32"), id(n), Labelled);
        c.insert(net("2001:db8::1/128"), id(n), Labelled);
        // Churn that must not disturb the two entries above.
        c.insert(net(&format!("10.0.{}.0/24", n % 7)), id(n), Cidr);
        c.remove(net(&format!("10.0.{}.0/24", (n + 3) % 7)));
        c.publish();
    }
    worker.join().expect("reader thread");
}

/// Distinct addresses from an index: multiplying by an odd constant is a
/// bijection on u32 / u128.
fn spread4(i: u32) -> u32 {
    i.wrapping_mul(0x9e37_79b9)
}

fn spread6(i: u32) -> u128 {
    0x2001_0db8_u128 << 96 | u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[test]
fn holds_a_million_entries() {
    // 700k IPv4 /32 and 200k IPv6 /128 endpoints, and 100k Cidr /24s that
    // the /32s partly fall into.
    let (n4, n6, n24) = (700_000u32, 200_000u32, 100_000u32);
    let hosts4: std::collections::HashMap<u32, u32> = (0..n4).map(|i| (spread4(i), i)).collect();
    let hosts6: std::collections::HashSet<u128> = (0..n6).map(spread6).collect();
    let mut c = IpCache::with_capacity(n4 as usize, n6 as usize);
    for i in 0..n4 {
        let p = IpNet::new(IpAddr::V4(Ipv4Addr::from(spread4(i))), 32).unwrap();
        c.insert(p, id(1000 + i), Labelled);
    }
    for i in 0..n6 {
        let p = IpNet::new(IpAddr::V6(Ipv6Addr::from(spread6(i))), 128).unwrap();
        c.insert(p, id(5_000_000 + i), Labelled);
    }
    for i in 0..n24 {
        let p = IpNet::new(IpAddr::V4(Ipv4Addr::from(i << 8)), 24).unwrap();
        c.insert(p, id(9_000_000 + i), Cidr);
    }
    assert_eq!(c.len(), 1_000_000);
    c.publish();
    assert_eq!(c.len(), 1_000_000);
    let r = c.reader();
    let view = r.enter().unwrap();
    for i in (0..n4).step_by(97) {
        let a = Ipv4Addr::from(spread4(i));
        assert_eq!(view.lookup_v4(a), Some(id(1000 + i)));
    }
    for i in (0..n24).step_by(97) {
        let a = i << 8 | 0x42;
        let want = match hosts4.get(&a) {
            Some(h) => id(1000 + h),
            None => id(9_000_000 + i),
        };
        assert_eq!(view.lookup_v4(Ipv4Addr::from(a)), Some(want));
    }
    for i in (0..n6).step_by(97) {
        let a = spread6(i);
        assert_eq!(view.lookup_v6(Ipv6Addr::from(a)), Some(id(5_000_000 + i)));
        // The neighbouring host is (almost always) not an endpoint.
        if !hosts6.contains(&(a ^ 1)) {
            assert_eq!(view.lookup_v6(Ipv6Addr::from(a ^ 1)), None);
        }
    }
    drop(view);
    // A second publish syncs the other copy; lookups still agree.
    c.publish();
    assert_eq!(
        r.lookup(IpAddr::V4(Ipv4Addr::from(spread4(5)))),
        Some(id(1005))
    );
}

// ---- property tests against a naive reference ----

/// The reference: every entry in a list, every lookup a linear scan.
#[derive(Clone, Debug, Default)]
struct Naive(Vec<IpCacheEntry>);

impl Naive {
    fn insert(&mut self, prefix: IpNet, identity: NumericIdentity, origin: Origin) {
        let prefix = prefix.trunc();
        self.0.retain(|e| e.prefix != prefix);
        self.0.push(IpCacheEntry {
            prefix,
            identity,
            origin,
        });
    }

    fn remove(&mut self, prefix: IpNet) -> bool {
        let prefix = prefix.trunc();
        let before = self.0.len();
        self.0.retain(|e| e.prefix != prefix);
        self.0.len() != before
    }

    fn lookup(&self, addr: IpAddr) -> Option<NumericIdentity> {
        [Labelled, Cidr].into_iter().find_map(|origin| {
            self.0
                .iter()
                .filter(|e| e.origin == origin && e.prefix.contains(&addr))
                .max_by_key(|e| e.prefix.prefix_len())
                .map(|e| e.identity)
        })
    }

    fn sorted(&self) -> Vec<IpCacheEntry> {
        let mut v = self.0.clone();
        v.sort_by_key(|e| lpm::sort_key(&e.prefix));
        v
    }
}

#[derive(Clone, Debug)]
enum Step {
    Insert(IpNet, u32, Origin),
    /// Remove the n-th entry present (mod count), so removals hit.
    RemovePresent(usize),
    /// Remove an arbitrary prefix, usually absent.
    Remove(IpNet),
    Publish,
}

/// Few bases and all lengths, so prefixes nest and collide.
fn prefix() -> impl Strategy<Value = IpNet> {
    let v4_base = prop_oneof![
        Just(0x0a00_0000u32),
        Just(0x0a01_0203),
        Just(0x0a01_8000),
        Just(0xc612_0000),
        Just(0xc613_ff01),
        any::<u32>(),
    ];
    let v6_base = prop_oneof![
        Just(0x2001_0db8_u128 << 96),
        Just(0x2001_0db8_0000_0001_u128 << 64 | 5),
        Just(0x2001_0db8_0001_u128 << 80),
        Just(u128::from(0xffff_0a01_0203_u64)), // ::ffff:10.1.2.3
        any::<u128>(),
    ];
    prop_oneof![
        3 => (v4_base, 0u8..=32).prop_map(|(a, l)| IpNet::new(IpAddr::V4(a.into()), l).unwrap().trunc()),
        2 => (v6_base, 0u8..=128).prop_map(|(a, l)| IpNet::new(IpAddr::V6(a.into()), l).unwrap().trunc()),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let origin = prop_oneof![Just(Labelled), Just(Cidr)];
    prop_oneof![
        6 => (prefix(), 0u32..6, origin).prop_map(|(p, i, o)| Step::Insert(p, i, o)),
        2 => any::<usize>().prop_map(Step::RemovePresent),
        1 => prefix().prop_map(Step::Remove),
        1 => Just(Step::Publish),
    ]
}

/// An address inside the `n`-th prefix ever inserted, with random host
/// bits, or (`None` prefix) a random address.
#[derive(Clone, Debug)]
struct Query {
    inside: Option<usize>,
    bits: u128,
    v6: bool,
}

fn query() -> impl Strategy<Value = Query> {
    (
        prop::option::weighted(0.8, any::<usize>()),
        any::<u128>(),
        any::<bool>(),
    )
        .prop_map(|(inside, bits, v6)| Query { inside, bits, v6 })
}

fn resolve(q: &Query, seen: &[IpNet]) -> IpAddr {
    match q.inside.filter(|_| !seen.is_empty()) {
        Some(i) => match seen[i % seen.len()] {
            IpNet::V4(p) => {
                let host = !u32::from(p.netmask()) & q.bits as u32;
                IpAddr::V4(Ipv4Addr::from(u32::from(p.network()) | host))
            }
            IpNet::V6(p) => {
                let host = !u128::from(p.netmask()) & q.bits;
                IpAddr::V6(Ipv6Addr::from(u128::from(p.network()) | host))
            }
        },
        None if q.v6 => IpAddr::V6(Ipv6Addr::from(q.bits)),
        None => IpAddr::V4(Ipv4Addr::from(q.bits as u32)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn matches_naive_reference(
        steps in prop::collection::vec(step(), 1..120),
        queries in prop::collection::vec(query(), 64),
    ) {
        let mut cache = IpCache::new();
        let reader = cache.reader();
        let mut lpm = Lpm::new();
        let mut staged = Naive::default();
        let mut published = Naive::default();
        let mut seen: Vec<IpNet> = Vec::new();

        let check = |lpm: &Lpm, cache: &IpCache, staged: &Naive, published: &Naive, seen: &[IpNet]|
            -> Result<(), TestCaseError> {
            prop_assert_eq!(lpm.len(), staged.0.len());
            prop_assert_eq!(cache.len(), staged.0.len());
            prop_assert_eq!(lpm.entries(), staged.sorted());
            prop_assert_eq!(cache.entries(), staged.sorted());
            let view = reader.enter().unwrap();
            for q in &queries {
                let addr = resolve(q, seen);
                prop_assert_eq!(lpm.lookup(addr), staged.lookup(addr), "lpm {}", addr);
                prop_assert_eq!(view.lookup(addr), published.lookup(addr), "view {}", addr);
                prop_assert_eq!(reader.lookup(addr), published.lookup(addr), "reader {}", addr);
            }
            Ok(())
        };

        for s in &steps {
            match s {
                Step::Insert(p, i, o) => {
                    cache.insert(*p, id(*i), *o);
                    lpm.insert(*p, id(*i), *o);
                    staged.insert(*p, id(*i), *o);
                    seen.push(*p);
                }
                Step::RemovePresent(n) => {
                    if !staged.0.is_empty() {
                        let p = staged.0[n % staged.0.len()].prefix;
                        prop_assert!(cache.remove(p));
                        prop_assert!(lpm.remove(p).is_some());
                        prop_assert!(staged.remove(p));
                    }
                }
                Step::Remove(p) => {
                    let was = staged.remove(*p);
                    prop_assert_eq!(cache.remove(*p), was);
                    prop_assert_eq!(lpm.remove(*p).is_some(), was);
                }
                Step::Publish => {
                    cache.publish();
                    published = staged.clone();
                    check(&lpm, &cache, &staged, &published, &seen)?;
                }
            }
        }
        check(&lpm, &cache, &staged, &published, &seen)?;
        // The derived indexes are checked once per case: the check rebuilds
        // the whole /16 slot array.
        lpm.check_invariants();
        cache.publish();
        published = staged.clone();
        check(&lpm, &cache, &staged, &published, &seen)?;
    }
}

#[test]
fn an_attached_value_is_published_with_the_table() {
    let mut cache: IpCache<u32> = IpCache::with_attached(0, 0, 1);
    let reader = cache.reader();
    let addr: IpAddr = "198.18.0.1".parse().unwrap();
    cache.insert(
        "198.18.0.0/24".parse().unwrap(),
        NumericIdentity(300),
        Origin::Labelled,
    );
    cache.attach(2);
    {
        let view = reader.enter().unwrap();
        assert_eq!(
            (view.lookup(addr), *view.attached()),
            (None, 1),
            "nothing staged is seen"
        );
    }
    cache.publish();
    let view = reader.enter().unwrap();
    assert_eq!(
        (view.lookup(addr), *view.attached()),
        (Some(NumericIdentity(300)), 2),
        "the table and its value arrive together"
    );
    drop(view);
    // The other copy gets both too.
    cache.remove("198.18.0.0/24".parse().unwrap());
    cache.publish();
    let view = reader.enter().unwrap();
    assert_eq!((view.lookup(addr), *view.attached()), (None, 2));
}
