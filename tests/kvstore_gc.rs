//! Identity garbage collection against a real etcd (its own, on Unix
//! sockets in a temporary directory): a master key goes only after two
//! rounds without a per-node key and unchanged between them; what is in
//! use, was claimed again, was rewritten or does not read stays; and
//! allocation works as before afterwards.

mod common;

use common::etcd::TestEtcd;
use xpf::identity::NumericIdentity;
use xpf::kvstore::etcd::Etcd;
use xpf::kvstore::gc::Gc;
use xpf::kvstore::identities::allocate;
use xpf::kvstore::layout;

use common::etcd::{k8s_labels as labels, node_ip as node};

/// The ids that have a master key, in order.
fn masters(c: &mut Etcd) -> Vec<u32> {
    c.list(&format!("{}id/", layout::IDENTITIES))
        .unwrap()
        .pairs
        .iter()
        .map(|(k, _)| layout::parse_id_key(k).unwrap().0)
        .collect()
}

/// A node joins with a lease and allocates `app`'s identity.
fn join(c: &mut Etcd, app: &str, n: u8) -> (i64, NumericIdentity) {
    let lease = c.grant(60).unwrap();
    (lease, allocate(c, &labels(app), node(n), lease).unwrap())
}

#[test]
fn a_label_set_whose_last_node_went_is_marked_then_collected() {
    let etcd = TestEtcd::start();
    let mut c = etcd.client();
    let (lease, id) = join(&mut c, "web", 1);
    let (_, db) = join(&mut c, "db", 2);
    c.revoke(lease).unwrap();

    let mut gc = Gc::new();
    let first = gc.round(&mut c).unwrap();
    assert_eq!((first.deleted.len(), first.stale), (0, 1), "{first:?}");
    assert_eq!(masters(&mut c), vec![id.0, db.0]);

    let second = gc.round(&mut c).unwrap();
    assert_eq!(second.deleted, vec![id.0], "{second:?}");
    assert_eq!(second.stale, 0);
    assert_eq!(masters(&mut c), vec![db.0]);
    // No lock is left behind.
    let locks = c.list(&format!("{}locks/", layout::IDENTITIES)).unwrap();
    assert!(locks.pairs.is_empty(), "{:?}", locks.pairs);
}

#[test]
fn a_label_set_claimed_again_between_the_rounds_stays() {
    let etcd = TestEtcd::start();
    let mut c = etcd.client();
    let (lease, id) = join(&mut c, "web", 1);
    c.revoke(lease).unwrap();
    let mut gc = Gc::new();
    assert_eq!(gc.round(&mut c).unwrap().stale, 1);

    // The node comes back and writes its key again under a new lease (as
    // a Cilium agent re-creates its own keys); the master key is not
    // written. A host allocating the labels now gets that id too.
    let lease2 = c.grant(60).unwrap();
    c.put(
        &layout::value_key(&labels("web"), node(1)),
        id.0.to_string().as_bytes(),
        Some(lease2),
    )
    .unwrap();
    assert_eq!(
        allocate(&mut c, &labels("web"), node(2), lease2).unwrap(),
        id
    );
    let round = gc.round(&mut c).unwrap();
    assert!(round.deleted.is_empty(), "{round:?}");
    assert_eq!(round.stale, 0);
    assert_eq!(masters(&mut c), vec![id.0]);

    // Once that node goes too, it takes two more rounds.
    c.revoke(lease2).unwrap();
    assert!(gc.round(&mut c).unwrap().deleted.is_empty());
    assert_eq!(gc.round(&mut c).unwrap().deleted, vec![id.0]);
    assert!(masters(&mut c).is_empty());
}

#[test]
fn a_key_written_while_the_collector_waits_for_the_lock_keeps_the_identity() {
    let etcd = TestEtcd::start();
    let mut c = etcd.client();
    let (lease, id) = join(&mut c, "web", 1);
    c.revoke(lease).unwrap();
    let mut gc = Gc::new();
    assert_eq!(gc.round(&mut c).unwrap().stale, 1);

    // An allocator holds the label set's lock when the second round comes
    // to delete: the round has listed (nothing uses the labels) and waits.
    let lock_lease = c.grant(60).unwrap();
    let held = c
        .lock(&layout::lock_key(&labels("web")), lock_lease)
        .unwrap();
    let round = std::thread::scope(|s| {
        let collector = s.spawn(|| {
            let mut gc_client = etcd.client();
            gc.round(&mut gc_client).unwrap()
        });
        // Bounded wait until the collector queues on the lock (etcd shows
        // a waiter as a second key under the lock's name).
        let waiting = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            c.list(&layout::lock_key(&labels("web")))
                .unwrap()
                .pairs
                .len()
                == 2
        });
        assert!(waiting, "the collector never waited for the lock");
        // The allocator adds its node's key and lets go.
        let node_lease = c.grant(60).unwrap();
        c.put(
            &layout::value_key(&labels("web"), node(2)),
            id.0.to_string().as_bytes(),
            Some(node_lease),
        )
        .unwrap();
        c.unlock(held).unwrap();
        collector.join().unwrap()
    });
    assert!(round.deleted.is_empty(), "{round:?}");
    assert_eq!(masters(&mut c), vec![id.0]);
}

#[test]
fn a_master_key_rewritten_between_the_rounds_stays_until_two_more() {
    let etcd = TestEtcd::start();
    let mut c = etcd.client();
    let (lease, id) = join(&mut c, "web", 1);
    c.revoke(lease).unwrap();
    let mut gc = Gc::new();
    assert_eq!(gc.round(&mut c).unwrap().stale, 1);

    // Same value, new mod revision: someone wrote it since it was marked.
    let key = layout::id_key(id);
    let value = c.list(&key).unwrap().pairs[0].1.clone();
    c.put(&key, &value, None).unwrap();
    let round = gc.round(&mut c).unwrap();
    assert!(round.deleted.is_empty(), "{round:?}");
    assert_eq!(round.stale, 1, "marked again at the new revision");
    assert_eq!(masters(&mut c), vec![id.0]);

    assert_eq!(gc.round(&mut c).unwrap().deleted, vec![id.0]);
}

#[test]
fn identities_in_use_are_never_touched() {
    let etcd = TestEtcd::start();
    let mut c = etcd.client();
    let ids: Vec<u32> = ["web", "db", "cache"]
        .iter()
        .enumerate()
        .map(|(i, app)| join(&mut c, app, i as u8 + 1).1 .0)
        .collect();
    // One more, whose only per-node key sits under another label string
    // but names its id (a key Cilium would not write; still a user).
    c.put("cilium/state/identities/v1/id/40905", b"k8s:app=odd;", None)
        .unwrap();
    c.put(
        "cilium/state/identities/v1/value/k8s:app=elsewhere;/198.18.200.9",
        b"40905",
        None,
    )
    .unwrap();
    let before: Vec<_> = c
        .list_entries(&format!("{}id/", layout::IDENTITIES))
        .unwrap();

    let mut gc = Gc::new();
    for _ in 0..3 {
        let round = gc.round(&mut c).unwrap();
        assert!(round.deleted.is_empty() && round.stale == 0, "{round:?}");
    }
    // Not deleted, not rewritten.
    let after = c
        .list_entries(&format!("{}id/", layout::IDENTITIES))
        .unwrap();
    assert_eq!(after, before);
    let mut want = ids;
    want.push(40905);
    want.sort();
    assert_eq!(masters(&mut c), want);
}

#[test]
fn after_a_collection_the_labels_are_allocated_again_and_racers_agree() {
    let etcd = TestEtcd::start();
    let mut c = etcd.client();
    let (lease, _) = join(&mut c, "web", 1);
    let (_, db) = join(&mut c, "db", 2);
    c.revoke(lease).unwrap();
    let mut gc = Gc::new();
    gc.round(&mut c).unwrap();
    assert_eq!(gc.round(&mut c).unwrap().deleted.len(), 1);

    // Eight hosts ask for the collected labels at once.
    let got: Vec<NumericIdentity> = std::thread::scope(|s| {
        let hosts: Vec<_> = (1..=8u8)
            .map(|n| {
                let etcd = &etcd;
                s.spawn(move || {
                    let mut c = etcd.client();
                    let lease = c.grant(60).unwrap();
                    allocate(&mut c, &labels("web"), node(n), lease).unwrap()
                })
            })
            .collect();
        hosts.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(got.iter().all(|id| *id == got[0]), "{got:?}");
    assert_ne!(got[0], db);
    let master = c.list(&layout::id_key(got[0])).unwrap();
    assert_eq!(
        master.pairs[0].1,
        layout::label_string(&labels("web")).into_bytes()
    );
    let nodes = c.list(&layout::value_prefix(&labels("web"))).unwrap();
    assert_eq!(nodes.pairs.len(), 8);
    assert_eq!(masters(&mut c).len(), 2);

    // And the collector leaves the new identity alone.
    for _ in 0..2 {
        assert!(gc.round(&mut c).unwrap().deleted.is_empty());
    }
    assert_eq!(masters(&mut c).len(), 2);
}

#[test]
fn master_keys_that_do_not_read_are_left_alone() {
    let etcd = TestEtcd::start();
    let mut c = etcd.client();
    let bad = [
        ("cilium/state/identities/v1/id/300", &b"no label string"[..]),
        ("cilium/state/identities/v1/id/301", &b"\xff\xfe"[..]),
        // Reads, but not as Cilium writes it (unsorted).
        (
            "cilium/state/identities/v1/id/302",
            &b"k8s:z=1;k8s:a=2;"[..],
        ),
        ("cilium/state/identities/v1/id/web", &b"k8s:app=web;"[..]),
    ];
    for (k, v) in bad {
        c.put(k, v, None).unwrap();
    }
    // And one that reads and is unused, so the round has work to do.
    c.put("cilium/state/identities/v1/id/303", b"k8s:app=gone;", None)
        .unwrap();

    let mut gc = Gc::new();
    for round in 0..3 {
        let r = gc.round(&mut c).unwrap();
        assert_eq!(r.unreadable.len(), bad.len(), "{r:?}");
        assert_eq!(r.deleted, if round == 1 { vec![303] } else { vec![] });
    }
    let left: Vec<String> = c
        .list(&format!("{}id/", layout::IDENTITIES))
        .unwrap()
        .pairs
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut want: Vec<String> = bad.iter().map(|(k, _)| k.to_string()).collect();
    want.sort();
    assert_eq!(left, want);
}

#[test]
fn a_key_is_deleted_only_at_the_revision_it_was_read_at() {
    let etcd = TestEtcd::start();
    let mut c = etcd.client();
    let key = "cilium/state/identities/v1/id/300";
    c.put(key, b"k8s:app=web;", None).unwrap();
    let read = c.list_entries(key).unwrap()[0].mod_revision;
    c.put(key, b"k8s:app=web;", None).unwrap();
    assert!(!c.delete_if_unchanged(key, read).unwrap());
    assert_eq!(c.list(key).unwrap().pairs.len(), 1);

    let now = c.list_entries(key).unwrap()[0].mod_revision;
    assert!(now > read);
    assert!(c.delete_if_unchanged(key, now).unwrap());
    assert!(c.list(key).unwrap().pairs.is_empty());
    // A key that is gone is not deleted again.
    assert!(!c.delete_if_unchanged(key, now).unwrap());
}
