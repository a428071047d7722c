use super::*;
use crate::wire::tcp_flags::{ACK, FIN, RST, SYN};

fn tuple(src: &str, sport: u16, dst: &str, dport: u16, proto_: u8) -> Tuple {
    Tuple {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        sport,
        dport,
        proto: proto_,
    }
}

fn small(capacity: usize) -> Conntrack {
    Conntrack::new(Config {
        capacity,
        shards: 1,
        ..Config::default()
    })
}

#[test]
fn replies_are_recognised_in_both_orders() {
    let ct = small(16);
    // Opener on either side of the canonical order.
    for (a, b) in [
        ("198.18.10.2", "198.18.10.3"),
        ("198.18.10.9", "198.18.10.3"),
    ] {
        let t = tuple(a, 40000, b, 8080, L4Proto::TCP.0);
        assert_eq!(ct.lookup(&t, SYN, 0), None);
        ct.create(NO_OWNER, &t, SYN, 0);
        assert_eq!(ct.lookup(&t, SYN, 1), Some((Dir::Forward, State::SynSent)));
        assert_eq!(
            ct.lookup(&t.reversed(), SYN | ACK, 1),
            Some((Dir::Reply, State::Established))
        );
        assert_eq!(
            ct.lookup(&t, ACK, 2),
            Some((Dir::Forward, State::Established))
        );
    }
    // IPv6 and UDP alike.
    let u = tuple("2001:db8:10::2", 5353, "2001:db8:10::3", 53, L4Proto::UDP.0);
    ct.create(NO_OWNER, &u, 0, 0);
    assert_eq!(
        ct.lookup(&u.reversed(), 0, 0),
        Some((Dir::Reply, State::Established))
    );
    // A different port is a different flow.
    assert_eq!(
        ct.lookup(
            &tuple("2001:db8:10::2", 5354, "2001:db8:10::3", 53, L4Proto::UDP.0),
            0,
            0
        ),
        None
    );
    assert_eq!(ct.counters().created, 3);
}

#[test]
fn timeouts_follow_the_tcp_state() {
    let ct = small(16);
    let t = tuple("198.18.10.2", 40000, "198.18.10.3", 80, L4Proto::TCP.0);
    ct.create(NO_OWNER, &t, SYN, 100);
    // An unanswered SYN expires after the SYN timeout.
    assert_eq!(ct.lookup(&t, SYN, 161), None);
    assert_eq!(ct.counters().expired, 1);
    ct.create(NO_OWNER, &t, SYN, 200);
    ct.lookup(&t.reversed(), SYN | ACK, 201);
    // Established lives long...
    assert!(ct.lookup(&t, ACK, 201 + 20_000).is_some());
    // ...until a FIN or RST shortens it.
    assert_eq!(
        ct.lookup(&t, FIN | ACK, 30_000),
        Some((Dir::Forward, State::Closing))
    );
    assert!(ct.lookup(&t.reversed(), ACK, 30_010).is_some());
    assert_eq!(ct.lookup(&t, ACK, 30_021), None);
    let u = tuple("198.18.10.2", 1, "198.18.10.3", 2, L4Proto::UDP.0);
    ct.create(NO_OWNER, &u, RST, 0);
    assert_eq!(
        ct.lookup(&u, 0, 60),
        Some((Dir::Forward, State::Established))
    );
    assert_eq!(ct.lookup(&u, 0, 121), None);
}

#[test]
fn capacity_is_bounded_and_eviction_counted() {
    let ct = small(4);
    for p in 0..4 {
        assert_eq!(
            Created::Tracked,
            ct.create(
                NO_OWNER,
                &tuple("198.18.0.1", p, "198.18.0.2", 80, L4Proto::UDP.0),
                0,
                p as u64
            )
        );
    }
    assert_eq!(ct.len(), 4);
    // Full: the least recently seen (port 0) goes.
    assert_eq!(
        Created::Evicted,
        ct.create(
            NO_OWNER,
            &tuple("198.18.0.1", 9, "198.18.0.2", 80, L4Proto::UDP.0),
            0,
            10
        )
    );
    assert_eq!(ct.len(), 4);
    assert_eq!(ct.counters().evicted, 1);
    assert_eq!(
        ct.lookup(
            &tuple("198.18.0.1", 0, "198.18.0.2", 80, L4Proto::UDP.0),
            0,
            10
        ),
        None
    );
    // Expired entries make room without counting as evictions.
    assert_eq!(
        Created::Tracked,
        ct.create(
            NO_OWNER,
            &tuple("198.18.0.1", 10, "198.18.0.2", 80, L4Proto::UDP.0),
            0,
            1_000
        )
    );
    assert_eq!(ct.counters().evicted, 1);
}

fn shared(capacity: usize, owners: usize) -> Conntrack {
    Conntrack::new(Config {
        capacity,
        shards: 4,
        owners,
        ..Config::default()
    })
}

#[test]
fn a_syn_flood_from_one_owner_never_evicts_anothers_flows() {
    let ct = shared(100, 2);
    assert_eq!(ct.share(), Some(50));
    // Owner 1 has 40 established flows.
    let theirs: Vec<Tuple> = (0..40)
        .map(|p| tuple("198.18.10.3", 30000 + p, "198.18.0.9", 443, L4Proto::TCP.0))
        .collect();
    for t in &theirs {
        assert_eq!(ct.create(1, t, SYN, 0), Created::Tracked);
        ct.lookup(&t.reversed(), SYN | ACK, 0);
    }
    // Owner 0 floods SYNs: it cycles through its own share, oldest
    // unassured first, and never touches owner 1's entries.
    for p in 0..10_000u16 {
        let t = tuple("198.18.10.2", p, "198.18.0.9", 80, L4Proto::TCP.0);
        assert_ne!(ct.create(0, &t, SYN, 1), Created::Refused);
    }
    assert_eq!((ct.held_by(0), ct.held_by(1)), (50, 40));
    assert_eq!(ct.counters().early_dropped, 10_000 - 50);
    assert_eq!(ct.counters().evicted, 0);
    for t in &theirs {
        assert_eq!(
            ct.lookup(&t.reversed(), ACK, 2),
            Some((Dir::Reply, State::Established))
        );
    }
    // The newest SYNs survive; the oldest went first.
    let newest = tuple("198.18.10.2", 9_999, "198.18.0.9", 80, L4Proto::TCP.0);
    assert!(ct.peek(&newest, 2).is_some());
    assert!(ct
        .peek(
            &tuple("198.18.10.2", 0, "198.18.0.9", 80, L4Proto::TCP.0),
            2
        )
        .is_none());
}

#[test]
fn an_owner_full_of_assured_flows_is_refused_new_ones() {
    let ct = shared(4, 2);
    for p in 0..2 {
        let t = tuple("198.18.10.2", p, "198.18.0.9", 53, L4Proto::UDP.0);
        ct.create(0, &t, 0, 0);
        ct.lookup(&t.reversed(), 0, 0);
    }
    let t = tuple("198.18.10.2", 9, "198.18.0.9", 53, L4Proto::UDP.0);
    assert_eq!(ct.create(0, &t, 0, 1), Created::Refused);
    assert_eq!(ct.counters().refused, 1);
    // Once they expire and are collected, the share has room again.
    assert_eq!(ct.gc(1_000), 2);
    assert_eq!(ct.create(0, &t, 0, 1_000), Created::Tracked);
    assert_eq!(ct.held_by(0), 1);
    // The other owner was never affected.
    let u = tuple("198.18.10.3", 9, "198.18.0.9", 53, L4Proto::UDP.0);
    assert_eq!(ct.create(1, &u, 0, 1), Created::Tracked);
}

#[test]
fn a_syn_answered_with_a_reset_stays_unassured() {
    let ct = shared(2, 2);
    let t = tuple("198.18.10.2", 1, "198.18.0.9", 80, L4Proto::TCP.0);
    ct.create(0, &t, SYN, 0);
    ct.lookup(&t.reversed(), RST | ACK, 0);
    // At its share of 1, the owner may still give the reset flow up.
    let u = tuple("198.18.10.2", 2, "198.18.0.9", 80, L4Proto::TCP.0);
    assert_eq!(ct.create(0, &u, SYN, 1), Created::Tracked);
    assert_eq!(ct.counters().early_dropped, 1);
}

#[test]
fn a_full_shard_evicts_unassured_before_assured() {
    let ct = small(3);
    let assured = tuple("198.18.0.1", 1, "198.18.0.2", 80, L4Proto::TCP.0);
    ct.create(NO_OWNER, &assured, SYN, 0);
    ct.lookup(&assured.reversed(), SYN | ACK, 0);
    for p in 2..4 {
        ct.create(
            NO_OWNER,
            &tuple("198.18.0.1", p, "198.18.0.2", 80, L4Proto::TCP.0),
            SYN,
            5,
        );
    }
    // The assured entry is the oldest, yet an unassured one goes.
    let t = tuple("198.18.0.1", 9, "198.18.0.2", 80, L4Proto::TCP.0);
    assert_eq!(ct.create(NO_OWNER, &t, SYN, 6), Created::Evicted);
    assert!(ct.peek(&assured, 6).is_some());
}

#[test]
fn gc_removes_only_expired_entries() {
    let ct = Conntrack::new(Config::default());
    for p in 0..100u16 {
        ct.create(
            NO_OWNER,
            &tuple("198.18.0.1", p, "198.18.0.2", 80, L4Proto::UDP.0),
            0,
            u64::from(p),
        );
    }
    assert_eq!(ct.gc(60), 0);
    // Entries last seen at 0..=69 have been idle for more than 60 s.
    assert_eq!(ct.gc(130), 70);
    assert_eq!(ct.len(), 30);
    assert_eq!(ct.counters().expired, 70);
}

#[test]
fn shared_between_threads() {
    let ct = std::sync::Arc::new(Conntrack::new(Config::default()));
    let handles: Vec<_> = (0..2u16)
        .map(|w| {
            let ct = ct.clone();
            std::thread::spawn(move || {
                for p in 0..1000u16 {
                    let t = tuple("198.18.0.1", p, "198.18.0.2", 1000 + w, L4Proto::TCP.0);
                    ct.create(NO_OWNER, &t, SYN, 0);
                    assert!(ct.lookup(&t.reversed(), SYN | ACK, 0).is_some());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(ct.len(), 2000);
}

/// A journal that keeps what it hears in memory.
#[derive(Default, Clone)]
struct Mirror(std::sync::Arc<Mutex<HashMap<Tuple, (bool, State)>>>);

impl Journal for Mirror {
    fn record(&self, key: &Tuple, opened_by_first: bool, state: State) {
        self.0
            .lock()
            .unwrap()
            .insert(*key, (opened_by_first, state));
    }
    fn forget(&self, key: &Tuple) {
        self.0.lock().unwrap().remove(key);
    }
}

#[test]
fn the_journal_mirrors_the_table_and_restores_it() {
    let mirror = Mirror::default();
    let ct = Conntrack::new(Config {
        capacity: 4,
        shards: 1,
        ..Config::default()
    })
    .with_journal(std::sync::Arc::new(mirror.clone()));
    for p in 0..4u16 {
        ct.create(
            NO_OWNER,
            &tuple("198.18.0.1", p, "198.18.0.2", 53, L4Proto::UDP.0),
            0,
            u64::from(p),
        );
    }
    // Full: the new TCP flow evicts the oldest UDP one.
    let tcp = tuple("198.18.10.9", 40000, "198.18.10.3", 8080, L4Proto::TCP.0);
    ct.create(NO_OWNER, &tcp, SYN, 10);
    assert_eq!(ct.counters().evicted, 1);
    ct.lookup(&tcp.reversed(), SYN | ACK, 11);
    // The UDP flows expire; the journal holds what the table holds.
    assert_eq!(ct.gc(70), 3);
    let (key, first) = tcp.key();
    assert_eq!(
        mirror
            .0
            .lock()
            .unwrap()
            .clone()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![(key, (first, State::Established))]
    );

    // A fresh table restored from the journal answers replies as the
    // old one did, in both orders of the canonical key.
    let ct2 = small(16);
    let again = Mirror::default();
    ct2.restore(&key, first, State::Established, NO_OWNER, 0);
    let ct2 = ct2.with_journal(std::sync::Arc::new(again.clone()));
    assert_eq!(
        ct2.lookup(&tcp.reversed(), ACK, 1),
        Some((Dir::Reply, State::Established))
    );
    assert_eq!(
        ct2.lookup(&tcp, ACK, 1),
        Some((Dir::Forward, State::Established))
    );
    // Restoring is not journalled again; a non-canonical key is refused.
    assert!(again.0.lock().unwrap().is_empty());
    assert!(!ct2.restore(&key.reversed(), first, State::Established, NO_OWNER, 0));
}

/// A projection that records what it was told and answers `last_seen`
/// from a value the test sets.
#[derive(Default)]
struct Recorder {
    withdrawn: Mutex<Vec<Tuple>>,
    seen: Mutex<Option<u64>>,
}

impl Projection for Recorder {
    fn withdraw(&self, key: &Tuple) {
        self.withdrawn.lock().unwrap().push(*key);
    }
    fn last_seen(&self, _: &Tuple) -> Option<u64> {
        *self.seen.lock().unwrap()
    }
}

fn projected() -> (Conntrack, std::sync::Arc<Recorder>) {
    let p = std::sync::Arc::new(Recorder::default());
    (small(16).with_projection(p.clone()), p)
}

#[test]
fn a_projected_flow_is_withdrawn_when_it_starts_closing_and_never_projected_again() {
    let (ct, p) = projected();
    let t = tuple("198.18.10.2", 40000, "198.18.10.3", 8080, L4Proto::TCP.0);
    ct.create(NO_OWNER, &t, SYN, 0);
    ct.lookup(&t.reversed(), SYN | ACK, 0);
    assert!(ct.project(&t, 0, || true));
    // Data changes nothing; a FIN (either way) withdraws, once.
    ct.lookup(&t, ACK, 1);
    assert!(p.withdrawn.lock().unwrap().is_empty());
    ct.lookup(&t.reversed(), FIN | ACK, 2);
    assert_eq!(*p.withdrawn.lock().unwrap(), vec![t.key().0]);
    ct.lookup(&t, FIN | ACK, 2);
    assert_eq!(p.withdrawn.lock().unwrap().len(), 1);
    // A closing flow is not handed out again; publish is not even called.
    assert!(!ct.project(&t, 2, || panic!("published a closing flow")));
    // An RST does the same for another flow.
    let r = tuple("198.18.10.2", 40001, "198.18.10.3", 8080, L4Proto::TCP.0);
    ct.create(NO_OWNER, &r, 0, 3);
    assert!(ct.project(&r, 3, || true));
    ct.lookup(&r, RST, 4);
    assert_eq!(p.withdrawn.lock().unwrap().len(), 2);
}

#[test]
fn a_projected_flow_lives_while_the_projection_serves_it_and_is_withdrawn_when_it_expires() {
    let (ct, p) = projected();
    let u = tuple("198.18.10.2", 5000, "198.18.10.3", 53, L4Proto::UDP.0);
    let other = Timeouts::default().other;
    ct.create(NO_OWNER, &u, 0, 0);
    assert!(ct.project(&u, 0, || true));
    // The projection served it until second `other`: alive past the
    // table's own timeout.
    *p.seen.lock().unwrap() = Some(other);
    assert_eq!(ct.gc(other + 10), 0);
    assert_eq!(ct.peek(&u, other + 20), Some(Dir::Forward));
    assert!(p.withdrawn.lock().unwrap().is_empty());
    // Idle since then: expired and withdrawn.
    assert_eq!(ct.gc(2 * other + 1), 1);
    assert_eq!(*p.withdrawn.lock().unwrap(), vec![u.key().0]);
    // A flow that is not projected is never withdrawn; one the projection
    // refused is not marked.
    let v = tuple("198.18.10.2", 5001, "198.18.10.3", 53, L4Proto::UDP.0);
    ct.create(NO_OWNER, &v, 0, 3 * other);
    assert!(!ct.project(&v, 3 * other, || false));
    assert_eq!(ct.gc(5 * other), 1);
    assert_eq!(p.withdrawn.lock().unwrap().len(), 1);
}

#[test]
fn a_projected_flow_given_up_or_replaced_is_withdrawn() {
    let p = std::sync::Arc::new(Recorder::default());
    let ct = Conntrack::new(Config {
        capacity: 4,
        shards: 1,
        owners: 1,
        ..Config::default()
    })
    .with_projection(p.clone());
    let flow = |port| tuple("198.18.10.2", port, "198.18.10.3", 53, L4Proto::UDP.0);
    ct.create(0, &flow(1), 0, 0);
    assert!(ct.project(&flow(1), 0, || true));
    // The owner's share is 4: the fifth flow gives up its oldest
    // unanswered one, the projected flow.
    for port in 2..=5 {
        ct.create(0, &flow(port), 0, 1);
    }
    assert_eq!(ct.peek(&flow(1), 1), None, "given up");
    assert_eq!(*p.withdrawn.lock().unwrap(), vec![flow(1).key().0]);
    // Made again over a projected entry: the old one is withdrawn.
    assert!(ct.project(&flow(5), 1, || true));
    ct.create(0, &flow(5), 0, 2);
    assert_eq!(p.withdrawn.lock().unwrap().len(), 2);
}
