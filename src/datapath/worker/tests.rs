//! The worker's phases on in-memory rings: where each decided frame goes,
//! hand-off between workers, and which counter each undeliverable frame
//! moves. No sockets, no root.
//!
//! The world: `frontend` (198.18.0.10) may send TCP 8080 to `backend`
//! (198.18.0.20) and to `far` (198.18.0.30), and anything to the host
//! (198.18.0.1). Worker 0 serves frontend and backend, worker 1 serves far.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::path::Path;

use crossbeam_channel::bounded;

use super::*;
use crate::conntrack::{self, Conntrack};
use crate::engine::Engine;
use crate::filter::{EndpointInfo, Shared};
use crate::hostile::tcp_frame;
use crate::policy::parse::parse_policies;
use crate::wire::tcp_flags::SYN;
use crate::world::{Endpoint, World};

const FRONTEND: u16 = 0;
const BACKEND: u16 = 1;
const FAR: u16 = 2;
const FRAME_SIZE: usize = 2048;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: backend}}, {matchLabels: {app: far}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - toEntities: [host]
"#;

/// Rings in memory: descriptors index `frames`; a transmitted frame is
/// recorded and comes back on the next `complete`.
struct MemRings {
    kinds: Vec<PortKind>,
    frames: Vec<Vec<u8>>,
    free: Vec<usize>,
    rx: Vec<VecDeque<usize>>,
    /// Room left on each port's TX ring.
    tx_room: Vec<usize>,
    sent: Vec<Vec<Vec<u8>>>,
    out: Vec<Vec<usize>>,
}

impl MemRings {
    fn new(kinds: Vec<PortKind>, frames: usize) -> Self {
        let ports = kinds.len();
        Self {
            kinds,
            frames: vec![Vec::new(); frames],
            free: (0..frames).collect(),
            rx: vec![VecDeque::new(); ports],
            tx_room: vec![usize::MAX; ports],
            sent: vec![Vec::new(); ports],
            out: vec![Vec::new(); ports],
        }
    }

    /// The kernel receives `bytes` on `port`.
    fn deliver(&mut self, port: usize, bytes: &[u8]) {
        let d = self
            .alloc_copy(bytes)
            .expect("a free frame to receive into");
        self.rx[port].push_back(d);
    }

    /// Frames that are neither free nor out: a leak if not zero between
    /// rounds.
    fn held(&self) -> usize {
        self.frames.len()
            - self.free.len()
            - self.rx.iter().map(VecDeque::len).sum::<usize>()
            - self.out.iter().map(Vec::len).sum::<usize>()
    }
}

impl Rings for MemRings {
    type Desc = usize;

    fn ports(&self) -> usize {
        self.kinds.len()
    }
    fn kind(&self, port: usize) -> PortKind {
        self.kinds[port]
    }
    fn template(&self) -> usize {
        0
    }
    fn receive(&mut self, port: usize, out: &mut [usize]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(d) = self.rx[port].pop_front() else {
                break;
            };
            out[n] = d;
            n += 1;
        }
        n
    }
    fn with_frame<T>(&mut self, desc: &mut usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
        f(&mut self.frames[*desc])
    }
    fn alloc_copy(&mut self, bytes: &[u8]) -> Option<usize> {
        if bytes.len() > FRAME_SIZE {
            return None;
        }
        let d = self.free.pop()?;
        self.frames[d] = bytes.to_vec();
        Some(d)
    }
    fn release(&mut self, descs: &[usize]) {
        self.free.extend_from_slice(descs);
    }
    fn transmit(&mut self, port: usize, descs: &[usize]) -> usize {
        let n = descs.len().min(self.tx_room[port]);
        self.tx_room[port] -= n;
        for d in &descs[..n] {
            self.sent[port].push(self.frames[*d].clone());
            self.out[port].push(*d);
        }
        n
    }
    fn complete(&mut self, port: usize) -> usize {
        let done = std::mem::take(&mut self.out[port]);
        self.free.extend_from_slice(&done);
        done.len()
    }
    fn refill(&mut self, _: usize) {}
    fn busy(&self) -> bool {
        self.out.iter().any(|o| !o.is_empty())
    }
    fn poll_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
}

struct NoReports;

impl InboundSource for NoReports {
    fn drain(&self, _: &mut dyn FnMut(Tuple, u8)) {}
}

fn mac(n: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, n]
}

/// Two workers over one world, with hand-off queues of `queue` slots.
struct Pair {
    workers: Vec<Worker<MemRings>>,
    engine: Engine,
    monitor: crate::datapath::monitor::MonitorQueues,
}

fn pair(queue: usize) -> Pair {
    let ep = Endpoint::app_at;
    let world = World::new(
        vec![ep("frontend", 10), ep("backend", 20), ep("far", 30)],
        vec![],
        vec!["198.18.0.1".parse().unwrap()],
        parse_policies(POLICY, Path::new("policy.yaml")).unwrap(),
    )
    .unwrap();
    let engine = Engine::new(&world).unwrap();
    let shared = Arc::new(Shared::new(
        EndpointInfo::all_of(&engine),
        Conntrack::new(conntrack::Config::default()),
    ));
    let macs = Arc::new(Macs {
        // (eth0, veth) of endpoint i: (10+i, 20+i)
        endpoints: (0..3).map(|i| (mac(10 + i), mac(20 + i))).collect(),
        reinject: (mac(1), mac(2)),
    });
    // frontend: worker 0 port 0, backend: worker 0 port 1, far: worker 1
    // port 0; each worker's last port reinjects.
    let owner = Arc::new(vec![(0, 0), (0, 1), (1, 0)]);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..2).map(|_| bounded(queue)).unzip();
    let senders = Arc::new(senders);
    let wakers = Arc::new(vec![EventFd::new().unwrap(), EventFd::new().unwrap()]);
    let kinds = [
        vec![
            PortKind::Endpoint(FRONTEND),
            PortKind::Endpoint(BACKEND),
            PortKind::Reinject,
        ],
        vec![PortKind::Endpoint(FAR), PortKind::Reinject],
    ];
    let (taps, monitor) = crate::datapath::monitor::queues(2);
    let workers = kinds
        .into_iter()
        .zip(receivers)
        .zip(taps)
        .enumerate()
        .map(|(id, ((kinds, handoff_rx), tap))| Worker {
            rings: MemRings::new(kinds, 8),
            filter: Filter::new(shared.clone()),
            ipcache: engine.ipcache.reader(),
            routes: Routes {
                id,
                macs: macs.clone(),
                owner: owner.clone(),
                handoff_tx: senders.clone(),
                wakers: wakers.clone(),
            },
            handoff_rx,
            inbound: Arc::new(NoReports),
            monitor: tap,
            counters: Arc::new(WorkerCounters::new(3)),
            stop: Arc::new(AtomicBool::new(false)),
            batch: 4,
            epoch: Instant::now(),
            mode: Mode::Userspace,
            cache: None,
        })
        .collect();
    Pair {
        workers,
        engine,
        monitor,
    }
}

impl Pair {
    fn round(&mut self, w: usize) -> Round {
        self.round_as(w, &Enforce)
    }

    fn round_as<D: Decide>(&mut self, w: usize, d: &D) -> Round {
        let worker = &mut self.workers[w];
        let mut st = worker.round_state();
        let r = worker.round(d, &mut st, 1_000);
        assert_eq!(worker.rings.held(), 0, "worker {w} leaked a frame");
        r
    }

    fn sent(&self, w: usize, port: usize) -> &[Vec<u8>] {
        &self.workers[w].rings.sent[port]
    }

    fn filter_drops(&self, w: usize, ep: u16, reason: DropReason) -> u64 {
        self.workers[w].filter.stats.drop_count(ep as usize, reason)
    }

    fn io_drops(&self, w: usize, ep: u16, reason: DropReason) -> u64 {
        self.workers[w].counters.io_drops(ep as usize, reason)
    }
}

fn syn(dst: &str, dport: u16) -> Vec<u8> {
    tcp_frame("198.18.0.10", dst, 40000, dport, SYN, 0)
}

#[test]
fn allowed_frames_leave_by_their_port_with_their_link_addresses() {
    let mut p = pair(16);
    let to_backend = syn("198.18.0.20", 8080);
    p.workers[0].rings.deliver(0, &to_backend);
    p.workers[0].rings.deliver(0, &syn("198.18.0.1", 22));
    let r = p.round(0);
    assert_eq!((r.rx, r.allowed, r.denied, r.tx), (2, 2, 0, 2));
    let bytes = p.workers[0].counters.allowed_bytes.load(Ordering::Relaxed);
    assert_eq!(bytes, 2 * to_backend.len() as u64, "two SYNs of one size");

    let backend = p.sent(0, 1);
    assert_eq!(backend.len(), 1, "one frame out on backend's port");
    assert_eq!(backend[0][0..6], mac(11), "to backend's eth0");
    assert_eq!(backend[0][6..12], mac(21), "from backend's host-side veth");
    assert_eq!(backend[0][12..], to_backend[12..], "only the MACs change");

    let host = p.sent(0, 2);
    assert_eq!(host.len(), 1, "one frame reinjected");
    assert_eq!(
        (&host[0][0..6], &host[0][6..12]),
        (&mac(1)[..], &mac(2)[..])
    );
    assert!(p.sent(0, 0).is_empty(), "nothing goes back to the sender");
}

#[test]
fn denied_frames_are_freed_and_counted_by_the_filter() {
    let mut p = pair(16);
    p.workers[0].rings.deliver(0, &syn("198.18.0.20", 9999));
    let r = p.round(0);
    assert_eq!((r.rx, r.allowed, r.denied, r.tx), (1, 0, 1, 0));
    assert!(p.sent(0, 1).is_empty());
    assert_eq!(p.filter_drops(0, FRONTEND, DropReason::PolicyDefault), 1);
    assert_eq!(p.workers[0].counters.denied.load(Ordering::Relaxed), 1);
}

#[test]
fn a_frame_for_another_workers_endpoint_is_handed_off_and_sent_there() {
    let mut p = pair(16);
    let to_far = syn("198.18.0.30", 8080);
    p.workers[0].rings.deliver(0, &to_far);
    let r = p.round(0);
    assert_eq!((r.allowed, r.tx), (1, 0), "nothing sent by worker 0");
    assert_eq!(p.workers[0].counters.handed_off.load(Ordering::Relaxed), 1);
    assert!(p.workers[0].routes.wakers[1].clear(), "worker 1 was woken");

    let r = p.round(1);
    assert_eq!((r.handed_in, r.rx, r.tx), (1, 0, 1));
    let far = p.sent(1, 0);
    assert_eq!(far.len(), 1);
    assert_eq!(
        (&far[0][0..6], &far[0][6..12]),
        (&mac(12)[..], &mac(22)[..])
    );
    assert_eq!(far[0][12..], to_far[12..]);
}

#[test]
fn a_full_handoff_queue_drops_against_the_sender() {
    let mut p = pair(1);
    for _ in 0..3 {
        p.workers[0].rings.deliver(0, &syn("198.18.0.30", 8080));
    }
    let r = p.round(0);
    assert_eq!((r.rx, r.allowed), (3, 3), "the filter allowed all three");
    assert_eq!(p.workers[0].counters.handed_off.load(Ordering::Relaxed), 1);
    assert_eq!(p.io_drops(0, FRONTEND, DropReason::HandoffFull), 2);
    assert_eq!(p.io_drops(0, FAR, DropReason::HandoffFull), 0);
    assert_eq!(
        p.filter_drops(0, FRONTEND, DropReason::HandoffFull),
        0,
        "I/O drops are the worker's, not the filter's"
    );
}

#[test]
fn a_full_transmit_ring_drops_against_the_sender() {
    let mut p = pair(16);
    p.workers[0].rings.tx_room[1] = 1;
    for sport in [1, 2, 3] {
        p.workers[0].rings.deliver(
            0,
            &tcp_frame("198.18.0.10", "198.18.0.20", sport, 8080, SYN, 0),
        );
    }
    let r = p.round(0);
    assert_eq!((r.allowed, r.tx), (3, 1));
    assert_eq!(p.sent(0, 1).len(), 1);
    assert_eq!(p.io_drops(0, FRONTEND, DropReason::TxFull), 2);
    assert_eq!(p.io_drops(0, BACKEND, DropReason::TxFull), 0);
}

#[test]
fn a_handed_off_frame_with_no_free_frame_drops_against_its_sender() {
    let mut p = pair(16);
    p.workers[0].rings.deliver(0, &syn("198.18.0.30", 8080));
    p.round(0);
    // Worker 1 has no free frame to copy the hand-off into.
    let all: Vec<usize> = std::mem::take(&mut p.workers[1].rings.free);
    let mut st = p.workers[1].round_state();
    let r = p.workers[1].round(&Enforce, &mut st, 1_000);
    assert_eq!((r.handed_in, r.tx), (1, 0));
    assert_eq!(p.io_drops(1, FRONTEND, DropReason::TxFull), 1);
    assert_eq!(p.io_drops(1, FAR, DropReason::TxFull), 0);
    p.workers[1].rings.free = all;
}

#[test]
fn the_mode_decides_before_the_policy_does() {
    let denied = syn("198.18.0.20", 9999);

    let mut p = pair(16);
    p.workers[0].rings.deliver(0, &denied);
    let r = p.round_as(0, &ForwardOnly);
    assert_eq!((r.allowed, r.tx), (1, 1), "forward ignores the policy");
    assert_eq!(p.sent(0, 1).len(), 1);

    let mut p = pair(16);
    p.workers[0].rings.deliver(0, &syn("198.18.0.20", 8080));
    let r = p.round_as(0, &DropAll);
    assert_eq!((r.rx, r.denied, r.tx), (1, 1, 0), "rxdrop drops everything");
    assert_eq!(
        p.filter_drops(0, FRONTEND, DropReason::PolicyDefault),
        0,
        "and asks no filter"
    );
    let _ = &p.engine;
}

#[test]
fn a_listening_monitor_hears_of_drops_and_new_flows_only() {
    let mut p = pair(16);
    let to_backend = syn("198.18.0.20", 8080);
    p.workers[0].rings.deliver(0, &to_backend);
    p.round(0);
    let mut events = Vec::new();
    p.monitor.drain(&mut events);
    assert!(events.is_empty(), "nobody listens: no events");

    p.monitor.set_active(true);
    // A retransmitted SYN of the flow opened above: forward, not new.
    p.workers[0].rings.deliver(0, &to_backend);
    p.workers[0].rings.deliver(
        0,
        &tcp_frame("198.18.0.10", "198.18.0.20", 40001, 8080, SYN, 0),
    );
    p.workers[0].rings.deliver(0, &syn("198.18.0.20", 9999));
    p.round(0);
    p.monitor.drain(&mut events);
    assert_eq!(events.len(), 2, "{events:?}");
    let (new, denied) = (&events[0], &events[1]);
    let (nf, df) = (new.flow.unwrap(), denied.flow.unwrap());
    assert_eq!((new.drop, nf.sport, nf.dport), (None, 40001, 8080));
    assert_eq!(new.endpoint, FRONTEND);
    assert!(new.code != 0, "allowed by a rule");
    assert_eq!(denied.drop, Some(DropReason::PolicyDefault));
    assert_eq!((df.dport, denied.code), (9999, 0));
    assert_eq!(denied.revision, 1);
    assert_eq!(
        p.workers[0].counters.monitor_lost.load(Ordering::Relaxed),
        0
    );
}

#[test]
fn a_full_monitor_queue_loses_events_and_counts_them() {
    let mut p = pair(16);
    p.monitor.set_active(true);
    let n = crate::datapath::monitor::QUEUE + 3;
    for _ in 0..n {
        p.workers[0].rings.deliver(0, &syn("198.18.0.20", 9999));
        p.round(0);
    }
    assert_eq!(
        p.workers[0].counters.monitor_lost.load(Ordering::Relaxed),
        3
    );
    let r = p.workers[0].counters.denied.load(Ordering::Relaxed);
    assert_eq!(r, n as u64, "every frame decided all the same");
}
