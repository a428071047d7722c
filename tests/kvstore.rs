//! Cluster identities against a real etcd (its own, on Unix sockets in a
//! temporary directory): the same labels get the same number on every
//! host, also when hosts ask at the same moment, and the keys are where
//! and what Cilium writes.

mod common;

use std::collections::BTreeSet;

use common::etcd::TestEtcd;
use xpf::identity::NumericIdentity;
use xpf::kvstore::identities::{allocate, FIRST};
use xpf::kvstore::layout;
use xpf::labels::LabelSet;

use common::etcd::{k8s_labels as labels, node_ip as node};

#[test]
fn one_label_set_gets_one_identity_on_every_host_even_when_they_race() {
    let etcd = TestEtcd::start();
    // Eight hosts, each allocating the same four label sets at once.
    let apps = ["web", "db", "cache", "queue"];
    let per_host: Vec<Vec<NumericIdentity>> = std::thread::scope(|s| {
        let hosts: Vec<_> = (1..=8u8)
            .map(|n| {
                let etcd = &etcd;
                s.spawn(move || {
                    let mut c = etcd.client();
                    let lease = c.grant(60).unwrap();
                    apps.iter()
                        .map(|a| allocate(&mut c, &labels(a), node(n), lease).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hosts.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for host in &per_host[1..] {
        assert_eq!(host, &per_host[0], "hosts disagree: {per_host:?}");
    }
    let distinct: BTreeSet<_> = per_host[0].iter().collect();
    assert_eq!(distinct.len(), apps.len(), "{per_host:?}");
    assert!(per_host[0].iter().all(|id| id.0 >= FIRST), "{per_host:?}");

    // The store holds what Cilium would: one master key per label set with
    // the label string, and one per-node key per host with the id.
    let mut c = etcd.client();
    for (app, id) in apps.iter().zip(&per_host[0]) {
        let master = c.list(&layout::id_key(*id)).unwrap();
        assert_eq!(
            master.pairs,
            vec![(
                layout::id_key(*id),
                format!("k8s:app={app};k8s:io.kubernetes.pod.namespace=default;").into_bytes()
            )]
        );
        let nodes = c.list(&layout::value_prefix(&labels(app))).unwrap();
        assert_eq!(nodes.pairs.len(), 8, "{:?}", nodes.pairs);
        assert!(nodes
            .pairs
            .iter()
            .all(|(_, v)| v.as_slice() == id.0.to_string().as_bytes()));
    }
    // No lock is left behind.
    let locks = c.list(&format!("{}locks/", layout::IDENTITIES)).unwrap();
    assert!(locks.pairs.is_empty(), "{:?}", locks.pairs);
}

#[test]
fn a_lost_master_key_is_made_again_and_a_dead_hosts_keys_go_with_its_lease() {
    let etcd = TestEtcd::start();
    let mut c = etcd.client();
    let a = c.grant(60).unwrap();
    let id = allocate(&mut c, &labels("web"), node(1), a).unwrap();
    c.delete(&layout::id_key(id)).unwrap();
    let b = c.grant(60).unwrap();
    assert_eq!(allocate(&mut c, &labels("web"), node(2), b).unwrap(), id);
    assert_eq!(c.list(&layout::id_key(id)).unwrap().pairs.len(), 1);

    // Host 1 dies (its lease ends): only host 2's key stays.
    c.revoke(a).unwrap();
    let nodes = c.list(&layout::value_prefix(&labels("web"))).unwrap();
    assert_eq!(
        nodes
            .pairs
            .iter()
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>(),
        vec![layout::value_key(&labels("web"), node(2))]
    );
}

#[test]
fn a_master_key_cilium_wrote_is_honoured() {
    let etcd = TestEtcd::start();
    let mut c = etcd.client();
    // As a Cilium agent leaves them: master and per-node key.
    let text = "k8s:app=web;k8s:io.kubernetes.pod.namespace=default;";
    c.put("cilium/state/identities/v1/id/40905", text.as_bytes(), None)
        .unwrap();
    let cilium = c.grant(60).unwrap();
    c.put(
        &format!("cilium/state/identities/v1/value/{text}/198.18.200.99"),
        b"40905",
        Some(cilium),
    )
    .unwrap();
    let mine = c.grant(60).unwrap();
    assert_eq!(
        allocate(&mut c, &labels("web"), node(1), mine).unwrap(),
        NumericIdentity(40905)
    );
}

/// Waits (boundedly; this times nothing) for a follower's next changes.
fn next_changes(
    f: &mut xpf::kvstore::follow::Follower,
    c: &mut xpf::kvstore::etcd::Etcd,
) -> Vec<xpf::kvstore::etcd::Change> {
    for _ in 0..50 {
        let changes = f.sync(c, std::time::Duration::from_millis(200)).unwrap();
        if !changes.is_empty() {
            return changes;
        }
    }
    panic!("no change came");
}

#[test]
fn a_follower_sees_puts_and_deletes_and_lists_again_when_its_revision_was_compacted() {
    use xpf::kvstore::etcd::Change::{Delete, Put};
    use xpf::kvstore::follow::Follower;
    let etcd = TestEtcd::start();
    let mut writer = etcd.client();
    let mut reader = etcd.client();
    let key = |n: u8| format!("{}198.18.200.{n}", layout::IPCACHE);
    writer.put(&key(1), b"one", None).unwrap();
    writer.put(&key(2), b"two", None).unwrap();

    let mut f = Follower::new(layout::IPCACHE);
    assert_eq!(
        next_changes(&mut f, &mut reader),
        vec![Put(key(1), b"one".to_vec()), Put(key(2), b"two".to_vec())]
    );
    // From here on it watches.
    writer.put(&key(3), b"three", None).unwrap();
    assert_eq!(
        next_changes(&mut f, &mut reader),
        vec![Put(key(3), b"three".to_vec())]
    );
    writer.delete(&key(1)).unwrap();
    assert_eq!(next_changes(&mut f, &mut reader), vec![Delete(key(1))]);
    assert_eq!(f.relists, 0);

    // A host that read the prefix and then lost its watch while the store
    // moved on and was compacted: it lists again, and what vanished comes
    // out as deletes.
    let mut late = Follower::new(layout::IPCACHE);
    next_changes(&mut late, &mut reader);
    writer.delete(&key(2)).unwrap();
    writer.put(&key(4), b"four", None).unwrap();
    let now = writer.list(layout::IPCACHE).unwrap().revision;
    writer.compact(now).unwrap();
    assert_eq!(
        next_changes(&mut late, &mut reader),
        vec![Delete(key(2)), Put(key(4), b"four".to_vec())]
    );
    assert_eq!(late.relists, 1);
    assert_eq!(
        late.keys().keys().cloned().collect::<Vec<_>>(),
        vec![key(3), key(4)]
    );
}

/// A config naming the test's etcd as its store.
fn cluster_config(dir: &std::path::Path, endpoint: &str) -> std::path::PathBuf {
    let path = dir.join("xpf.yaml");
    std::fs::write(
        &path,
        format!(
            "endpoints: [{{name: web, labels: {{app: web}}, ipv4: 198.18.10.2}}]\n\
             kvstore:\n  endpoints: [\"{endpoint}\"]\n  node: {{name: host-a, ip: 198.18.100.1}}\n  lease_ttl: 5\n"
        ),
    )
    .unwrap();
    path
}

/// Runs `xpf ARGS --config CONFIG`.
fn xpf_with(args: &[&str], config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_xpf"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn kvstore_dump_reads_what_cilium_wrote_and_names_what_it_cannot_read() {
    let etcd = TestEtcd::start();
    let mut c = etcd.client();
    let text = "k8s:app=web;k8s:io.kubernetes.pod.namespace=default;";
    c.put("cilium/state/identities/v1/id/40905", text.as_bytes(), None)
        .unwrap();
    c.put(
        &format!("cilium/state/identities/v1/value/{text}/198.18.100.9"),
        b"40905",
        None,
    )
    .unwrap();
    c.put(
        "cilium/state/ip/v1/default/198.18.20.5",
        br#"{"IP":"198.18.20.5","Mask":null,"HostIP":"198.18.100.9","ID":40905,"Key":0,"Metadata":"cilium-global:default:node9:1","K8sNamespace":"default","K8sPodName":"web-1"}"#,
        None,
    )
    .unwrap();
    c.put("cilium/state/ip/v1/default/198.18.20.6", b"not json", None)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_config(dir.path(), &etcd.endpoint);
    let out = xpf_with(&["kvstore", "dump", "--output", "json"], &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["identities"][0]["id"], 40905, "{v}");
    assert_eq!(v["identities"][0]["labels"], text, "{v}");
    assert_eq!(v["identities"][0]["nodes"][0], "198.18.100.9", "{v}");
    assert_eq!(v["ipcache"][0]["prefix"], "198.18.20.5/32", "{v}");
    assert_eq!(v["ipcache"][0]["labels"], text, "{v}");
    assert_eq!(v["ipcache"][0]["host_ip"], "198.18.100.9", "{v}");
    assert_eq!(
        v["unreadable"][0]["key"], "cilium/state/ip/v1/default/198.18.20.6",
        "{v}"
    );

    // The text form says the same for people.
    let out = xpf_with(&["kvstore", "dump"], &config);
    let text_out = String::from_utf8_lossy(&out.stdout);
    assert!(
        text_out.contains("40905") && text_out.contains("198.18.20.5/32"),
        "{text_out}"
    );
}

#[test]
fn a_store_that_does_not_answer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("unix://{}/localhost:2379", dir.path().display());
    let config = cluster_config(dir.path(), &missing);
    let out = xpf_with(&["kvstore", "dump"], &config);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no kvstore endpoint answered") && err.contains(&missing),
        "{err}"
    );

    // The inspecting commands read the store in cluster mode: without it
    // they say so rather than answer for one host alone.
    let out = xpf_with(&["ipcache", "list"], &config);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kvstore") && err.contains(&missing), "{err}");
}

fn settings(etcd: &TestEtcd, name: &str, n: u8) -> xpf::kvstore::settings::KvstoreSettings {
    xpf::kvstore::settings::KvstoreSettings {
        endpoints: vec![etcd.endpoint.clone()],
        node_name: name.into(),
        node_ip: node(n),
        lease_ttl: 60,
    }
}

/// Syncs `view` until `done` holds of it (bounded; times nothing).
fn sync_until(
    view: &mut xpf::kvstore::node::ClusterView,
    c: &mut xpf::kvstore::etcd::Etcd,
    done: impl Fn(&xpf::kvstore::node::ClusterView) -> bool,
) {
    for _ in 0..50 {
        view.sync(c, std::time::Duration::from_millis(100)).unwrap();
        if done(view) {
            return;
        }
    }
    panic!("the view never got there: {:?}", view.entries);
}

#[test]
fn a_host_sees_the_others_endpoints_by_their_labels_until_they_go() {
    use xpf::kvstore::node::{ClusterView, Node};
    use xpf::world::Endpoint;
    let etcd = TestEtcd::start();
    let timeout = std::time::Duration::from_secs(5);
    let web = Endpoint::new(
        "web",
        labels("web"),
        Some([198, 18, 10, 2].into()),
        Some("2001:db8:10::2".parse().unwrap()),
    );
    let db = Endpoint::new("db", labels("db"), Some([198, 18, 11, 2].into()), None);

    let mut a = Node::join(&settings(&etcd, "host-a", 1), timeout).unwrap();
    let a_ids = a.publish(std::slice::from_ref(&web)).unwrap();
    let mut b = Node::join(&settings(&etcd, "host-b", 2), timeout).unwrap();
    b.publish(std::slice::from_ref(&db)).unwrap();
    // The same labels on another host: the same number.
    let twin = Endpoint::new("web2", labels("web"), Some([198, 18, 11, 3].into()), None);
    let b_ids = b.publish(&[db.clone(), twin]).unwrap();
    assert_eq!(b_ids[1], a_ids[0]);

    // B's view: A's two addresses with A's labels; none of B's own.
    let mut view = ClusterView::default();
    let mut c = etcd.client();
    sync_until(&mut view, &mut c, |v| v.entries.len() == 4);
    let (remote, unknown) = view.remote_entries("host-b", node(2));
    assert!(unknown.is_empty(), "{unknown:?}");
    let got: Vec<(String, LabelSet, Option<String>)> = remote
        .into_iter()
        .map(|(prefix, e)| {
            let node = e.node.as_deref().map(str::to_string);
            (prefix.to_string(), LabelSet::clone(&e.labels), node)
        })
        .collect();
    let a_node = Some("host-a".to_string());
    assert_eq!(
        got,
        vec![
            ("198.18.10.2/32".to_string(), labels("web"), a_node.clone()),
            (
                format!("{}/32", node(1)),
                xpf::labels::remote_node_labels(),
                a_node.clone()
            ),
            ("2001:db8:10::2/128".to_string(), labels("web"), a_node),
        ]
    );

    // A removes its endpoint: its entries go, its node address stays.
    a.publish(&[]).unwrap();
    sync_until(&mut view, &mut c, |v| {
        v.remote_entries("host-b", node(2)).0.len() == 1
    });

    // A publishes again and then dies with its lease: all gone.
    a.publish(std::slice::from_ref(&web)).unwrap();
    sync_until(&mut view, &mut c, |v| {
        v.remote_entries("host-b", node(2)).0.len() == 3
    });
    a.leave().unwrap();
    sync_until(&mut view, &mut c, |v| {
        v.remote_entries("host-b", node(2)).0.is_empty()
    });
    // B's entries stay.
    assert_eq!(view.entries.len(), 2, "{:?}", view.entries);
}

#[test]
fn an_entry_whose_identity_is_unknown_stays_out_of_the_labelled_entries() {
    use xpf::kvstore::node::ClusterView;
    let etcd = TestEtcd::start();
    let mut c = etcd.client();
    c.put(
        "cilium/state/ip/v1/default/198.18.20.7",
        br#"{"IP":"198.18.20.7","Mask":null,"HostIP":"198.18.100.9","ID":50000,"Key":0,"Metadata":""}"#,
        None,
    )
    .unwrap();
    let mut view = ClusterView::default();
    sync_until(&mut view, &mut c, |v| !v.entries.is_empty());
    let (known, unknown) = view.remote_entries("host-a", node(1));
    assert!(known.is_empty(), "{known:?}");
    assert_eq!(
        unknown,
        vec!["198.18.20.7/32".parse::<ipnet::IpNet>().unwrap()]
    );

    // Its master key arrives: now it is labelled.
    c.put(
        "cilium/state/identities/v1/id/50000",
        b"k8s:app=batch;",
        None,
    )
    .unwrap();
    sync_until(&mut view, &mut c, |v| {
        !v.remote_entries("host-a", node(1)).0.is_empty()
    });
    let (known, _) = view.remote_entries("host-a", node(1));
    assert_eq!(
        *known.values().next().unwrap().labels,
        LabelSet::from_pairs([("k8s:app", "batch")]).unwrap()
    );
}
