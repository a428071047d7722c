//! The worker loop, shaped like xdpsock's, in phases: take the frames other
//! workers handed over, receive a batch per port and decide every frame,
//! transmit what is pending on the port it leaves by, take completions back
//! (waking the kernel only when a ring asks for it), refill the fill rings,
//! and wake the workers that were handed frames. When all ports stay empty
//! for a while the worker sleeps in poll(2) on its sockets and its hand-off
//! eventfd, so an idle filter costs no CPU.
//!
//! The mode (`filter`, or a benchmark baseline) is chosen once, outside the
//! loop: [`Worker::run`] picks a [`Decide`] and the loop is compiled for it.
//! The sockets are behind [`Rings`], so the phases run on in-memory rings in
//! the tests.
//!
//! A frame for an endpoint another worker serves is copied into that
//! worker's bounded hand-off queue (descriptors never leave their UMEM; see
//! `xsk`). Nothing on this path allocates: batches, pending-TX lists and
//! hand-off slots are sized up front. The only locks taken are a conntrack
//! shard's, for one lookup or insert, and the inbound report drain's.
//!
//! Drop accounting: the filter counts what it decides to drop; the worker
//! counts what it cannot deliver after an allow (`tx_full`, `handoff_full`),
//! against the endpoint that sent the frame, in [`WorkerCounters`].

mod rings;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

pub use rings::{Rings, XskRings};

use super::cache::HybridCache;
use super::monitor::MonitorTap;
use super::settings::Mode;
use super::xsk::PortKind;
use crate::conntrack::Tuple;
use crate::engine::Verdicts;
use crate::filter::{Action, Cacheable, DropReason, Filter, View};
use crate::ipcache::IpCacheReader;
use crate::sys::eventfd::EventFd;

/// Largest frame that can be handed to another worker.
pub const HANDOFF_FRAME: usize = 2048;
/// Slots in each worker's hand-off queue.
pub const HANDOFF_SLOTS: usize = 1024;
/// Empty polls before a worker sleeps in poll(2).
const SPINS_BEFORE_SLEEP: u32 = 128;
/// Longest sleep, so a stop request is noticed.
const SLEEP_MS: i32 = 100;

/// A frame copied for another worker's port.
pub struct Handoff {
    /// The endpoint that sent the frame (drops are counted against it).
    pub src: u16,
    /// The endpoint it goes to.
    pub endpoint: u16,
    pub len: u16,
    pub bytes: [u8; HANDOFF_FRAME],
}

/// Where flows opened towards endpoints are reported from (the TC
/// program's ring buffer); drained before every batch so a reply is never
/// judged before the report of the flow it answers.
pub trait InboundSource: Send + Sync {
    fn drain(&self, f: &mut dyn FnMut(Tuple, u8));
}

/// Link addresses a worker writes when forwarding.
#[derive(Clone, Debug)]
pub struct Macs {
    /// Per endpoint: (the endpoint's own eth0, its host-side veth).
    pub endpoints: Vec<([u8; 6], [u8; 6])>,
    /// (xpf_host, xpf_net): reinjected frames go from xpf_net to xpf_host.
    pub reinject: ([u8; 6], [u8; 6]),
}

/// Counters of one worker, merged by the reporter.
pub struct WorkerCounters {
    pub rx: AtomicU64,
    pub allowed: AtomicU64,
    pub allowed_bytes: AtomicU64,
    pub denied: AtomicU64,
    pub tx: AtomicU64,
    pub handed_off: AtomicU64,
    pub sleeps: AtomicU64,
    /// Monitor events lost to a full queue.
    pub monitor_lost: AtomicU64,
    /// Per endpoint that sent them: allowed frames the transmit ring had no
    /// room (or no free frame) for, and frames the hand-off queue refused.
    tx_full: Box<[AtomicU64]>,
    handoff_full: Box<[AtomicU64]>,
}

impl WorkerCounters {
    pub fn new(endpoints: usize) -> Self {
        let zeros = || (0..endpoints).map(|_| AtomicU64::new(0)).collect();
        Self {
            rx: AtomicU64::new(0),
            allowed: AtomicU64::new(0),
            allowed_bytes: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            tx: AtomicU64::new(0),
            handed_off: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
            monitor_lost: AtomicU64::new(0),
            tx_full: zeros(),
            handoff_full: zeros(),
        }
    }

    /// Frames of `endpoint` this worker dropped for `reason` after the
    /// filter let them through (0 for the filter's own reasons).
    pub fn io_drops(&self, endpoint: usize, reason: DropReason) -> u64 {
        match reason {
            DropReason::TxFull => self.tx_full[endpoint].load(Ordering::Relaxed),
            DropReason::HandoffFull => self.handoff_full[endpoint].load(Ordering::Relaxed),
            _ => 0,
        }
    }

    fn count_io_drop(&self, endpoint: usize, reason: DropReason) {
        let c = match reason {
            DropReason::HandoffFull => &self.handoff_full[endpoint],
            _ => &self.tx_full[endpoint],
        };
        // One writer per counter (its worker): a relaxed add is enough.
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where the worker's forwarded frames go: which worker and port serves
/// each endpoint, the addresses to write, and the other workers' queues.
pub struct Routes {
    /// This worker's number.
    pub id: usize,
    pub macs: Arc<Macs>,
    /// Per endpoint: (worker that serves it, index of its port there).
    pub owner: Arc<Vec<(usize, usize)>>,
    pub handoff_tx: Arc<Vec<Sender<Handoff>>>,
    /// Each worker's eventfd, written after handing it frames.
    pub wakers: Arc<Vec<EventFd>>,
}

/// What a worker needs; built by `datapath` and moved onto its thread.
pub struct Worker<R: Rings> {
    pub rings: R,
    pub filter: Filter,
    /// The ipcache and the verdicts published with it.
    pub ipcache: IpCacheReader<Arc<Verdicts>>,
    pub routes: Routes,
    pub handoff_rx: Receiver<Handoff>,
    pub inbound: Arc<dyn InboundSource>,
    /// Where drops and new flows are described while a monitor listens.
    pub monitor: MonitorTap,
    pub counters: Arc<WorkerCounters>,
    pub stop: Arc<AtomicBool>,
    pub batch: usize,
    pub epoch: Instant,
    /// `hybrid`, `userspace`, or a benchmark baseline.
    pub mode: Mode,
    /// The verdict cache this worker fills (hybrid mode).
    pub cache: Option<Arc<HybridCache>>,
}

/// How a worker decides about a frame; one per [`Mode`], chosen before
/// the loop starts.
pub trait Decide {
    fn decide(
        &self,
        filter: &mut Filter,
        src: usize,
        frame: &[u8],
        view: Option<&View<'_>>,
        now: u64,
    ) -> Action;
}

/// `filter`: the policy, conntrack and all.
pub struct Enforce;
/// `forward`: parse and forward, no checks (a benchmark baseline).
pub struct ForwardOnly;
/// `rxdrop`: receive and discard (a benchmark baseline).
pub struct DropAll;

impl Decide for Enforce {
    #[inline]
    fn decide(
        &self,
        filter: &mut Filter,
        src: usize,
        frame: &[u8],
        view: Option<&View<'_>>,
        now: u64,
    ) -> Action {
        match view {
            Some(view) => filter.decide(src, frame, view, now),
            // The ipcache is being torn down: nothing to check against, so
            // nothing passes.
            None => Action::Drop(DropReason::PolicyDefault),
        }
    }
}

impl Decide for ForwardOnly {
    #[inline]
    fn decide(
        &self,
        filter: &mut Filter,
        src: usize,
        frame: &[u8],
        _: Option<&View<'_>>,
        _: u64,
    ) -> Action {
        filter.route_only(src, frame)
    }
}

impl Decide for DropAll {
    #[inline]
    fn decide(&self, _: &mut Filter, _: usize, _: &[u8], _: Option<&View<'_>>, _: u64) -> Action {
        Action::Drop(DropReason::PolicyDefault)
    }
}

/// Frames waiting to go out this round, per port, with the endpoint that
/// sent each (for drop counters), and the workers to wake.
pub struct Outbox<D> {
    pending: Vec<Vec<D>>,
    senders: Vec<Vec<u16>>,
    woke: Vec<bool>,
}

impl<D: Copy> Outbox<D> {
    fn new(ports: usize, batch: usize, workers: usize) -> Self {
        let cap = batch * (ports + 1) + HANDOFF_SLOTS;
        Self {
            pending: (0..ports).map(|_| Vec::with_capacity(cap)).collect(),
            senders: (0..ports).map(|_| Vec::with_capacity(cap)).collect(),
            woke: vec![false; workers],
        }
    }

    #[inline]
    fn push(&mut self, port: usize, desc: D, src: u16) {
        self.pending[port].push(desc);
        self.senders[port].push(src);
    }
}

/// A worker's per-round scratch: the receive batch, the outbox, and the
/// flows to hand to the verdict cache once the round's frames are out.
pub struct RoundState<D> {
    rx: Vec<D>,
    outbox: Outbox<D>,
    reinject_port: usize,
    /// (sender, flow, where its frames go), decided under `generation`.
    offers: Vec<(usize, Cacheable, Action)>,
    generation: u64,
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub rx: u64,
    pub allowed: u64,
    pub allowed_bytes: u64,
    pub denied: u64,
    pub tx: u64,
    pub completed: u64,
    pub handed_in: u64,
}

impl Round {
    fn worked(&self) -> bool {
        self.rx > 0 || self.completed > 0 || self.handed_in > 0
    }
}

/// Where a decided frame goes next.
enum Next {
    /// Onto this worker's port.
    Port(usize),
    /// Copied away or dropped: the frame is free again.
    Release,
}

impl Routes {
    /// Rewrites `frame` for where `action` sends it and says what to do
    /// with its descriptor; a frame for another worker's endpoint is copied
    /// into that worker's queue here.
    #[inline]
    fn route(
        &self,
        action: Action,
        src: usize,
        frame: &mut [u8],
        reinject_port: usize,
        woke: &mut [bool],
        counters: &WorkerCounters,
    ) -> Next {
        match action {
            Action::ToEndpoint(dst) => {
                let (eth0, veth) = self.macs.endpoints[dst as usize];
                rewrite_ethernet(frame, eth0, veth);
                let (worker, port) = self.owner[dst as usize];
                if worker == self.id {
                    return Next::Port(port);
                }
                if frame.len() > HANDOFF_FRAME {
                    counters.count_io_drop(src, DropReason::HandoffFull);
                    return Next::Release;
                }
                let mut h = Handoff {
                    src: src as u16,
                    endpoint: dst,
                    len: frame.len() as u16,
                    bytes: [0; HANDOFF_FRAME],
                };
                h.bytes[..frame.len()].copy_from_slice(frame);
                if self.handoff_tx[worker].try_send(h).is_ok() {
                    woke[worker] = true;
                    counters.handed_off.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.count_io_drop(src, DropReason::HandoffFull);
                }
                Next::Release
            }
            Action::ToHost => {
                let (host, net) = self.macs.reinject;
                rewrite_ethernet(frame, host, net);
                Next::Port(reinject_port)
            }
            Action::Drop(_) => Next::Release,
        }
    }
}

impl<R: Rings> Worker<R> {
    /// Runs until `stop` is set; gives its rings back so the sockets stay
    /// open (and their counters readable) until the datapath is dropped.
    pub fn run(self) -> R {
        match self.mode {
            Mode::Hybrid | Mode::Userspace => self.run_with(&Enforce),
            Mode::Forward => self.run_with(&ForwardOnly),
            Mode::RxDrop => self.run_with(&DropAll),
        }
    }

    fn run_with<D: Decide>(mut self, decide: &D) -> R {
        let mut st = self.round_state();
        let own = &self.routes.wakers[self.routes.id];
        let mut pollfds: Vec<libc::pollfd> = self
            .rings
            .poll_fds()
            .into_iter()
            .chain(std::iter::once(std::os::fd::AsRawFd::as_raw_fd(own)))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut idle = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            let now = self.epoch.elapsed().as_secs();
            if self.round(decide, &mut st, now).worked() {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle >= SPINS_BEFORE_SLEEP && !self.rings.busy() {
                self.counters.sleeps.fetch_add(1, Ordering::Relaxed);
                // SAFETY: `pollfds` is a live array of initialised pollfds.
                unsafe {
                    libc::poll(
                        pollfds.as_mut_ptr(),
                        pollfds.len() as libc::nfds_t,
                        SLEEP_MS,
                    )
                };
                self.routes.wakers[self.routes.id].clear();
                idle = 0;
            } else if idle >= SPINS_BEFORE_SLEEP {
                std::thread::yield_now();
            }
        }
        self.rings
    }

    /// The scratch space of [`Worker::round`], sized once.
    pub fn round_state(&self) -> RoundState<R::Desc> {
        let ports = self.rings.ports();
        RoundState {
            rx: vec![self.rings.template(); self.batch],
            outbox: Outbox::new(ports, self.batch, self.routes.handoff_tx.len()),
            reinject_port: (0..ports)
                .find(|p| self.rings.kind(*p) == PortKind::Reinject)
                .expect("every worker has a reinject port"),
            offers: Vec::with_capacity(self.batch * ports),
            generation: 0,
        }
    }

    /// One pass of every phase.
    pub fn round<D: Decide>(
        &mut self,
        decide: &D,
        st: &mut RoundState<R::Desc>,
        now: u64,
    ) -> Round {
        let mut r = Round::default();
        // Reports first: they were written before any reply to them could
        // reach our RX rings.
        let shared = self.filter.shared();
        self.inbound
            .drain(&mut |t, flags| shared.note_inbound(&t, flags, now));
        r.handed_in = self.take_handoffs(&mut st.outbox);
        self.receive(decide, st, now, &mut r);
        self.transmit(&mut st.outbox, &mut r);
        for p in 0..self.rings.ports() {
            self.rings.refill(p);
        }
        self.wake_peers(&mut st.outbox);
        // After the frames are out: a map write per new cached flow is
        // not paid by the frame that made it.
        if let Some(cache) = &self.cache {
            let ct = &self.filter.shared().conntrack;
            for (src, c, action) in st.offers.drain(..) {
                cache.offer(ct, src, &c, action, st.generation, now);
            }
        }

        let c = &self.counters;
        if r.rx > 0 {
            c.rx.fetch_add(r.rx, Ordering::Relaxed);
            c.allowed.fetch_add(r.allowed, Ordering::Relaxed);
            c.allowed_bytes
                .fetch_add(r.allowed_bytes, Ordering::Relaxed);
            c.denied.fetch_add(r.denied, Ordering::Relaxed);
        }
        if r.tx > 0 {
            c.tx.fetch_add(r.tx, Ordering::Relaxed);
        }
        r
    }

    /// Hand-off: copies the frames other workers queued for this worker's
    /// endpoints into free frames, pending on their ports.
    fn take_handoffs(&mut self, out: &mut Outbox<R::Desc>) -> u64 {
        let mut n = 0;
        while let Ok(h) = self.handoff_rx.try_recv() {
            n += 1;
            let Some(desc) = self.rings.alloc_copy(&h.bytes[..h.len as usize]) else {
                self.counters
                    .count_io_drop(h.src as usize, DropReason::TxFull);
                continue;
            };
            let (_, port) = self.routes.owner[h.endpoint as usize];
            out.push(port, desc, h.src);
        }
        n
    }

    /// Receive and decide: a batch from every endpoint port, each frame
    /// decided, rewritten and queued for its port, handed off or freed.
    fn receive<D: Decide>(
        &mut self,
        decide: &D,
        st: &mut RoundState<R::Desc>,
        now: u64,
        r: &mut Round,
    ) {
        // Before entering the ipcache: see `cache` for why.
        if let Some(cache) = &self.cache {
            st.generation = cache.generation();
        }
        let offering = self.cache.is_some();
        let reader = self.ipcache.enter();
        let view = reader.as_ref();
        let watching = self.monitor.active();
        let mut lost = 0;
        for p in 0..self.rings.ports() {
            let PortKind::Endpoint(src) = self.rings.kind(p) else {
                continue;
            };
            let src = src as usize;
            let n = self.rings.receive(p, &mut st.rx);
            r.rx += n as u64;
            for desc in st.rx.iter_mut().take(n) {
                let next = self.rings.with_frame(desc, |frame| {
                    let action = decide.decide(&mut self.filter, src, frame, view, now);
                    if watching {
                        let opened = self.filter.opened_flow();
                        if !self.monitor.record(src, frame, action, opened, view) {
                            lost += 1;
                        }
                    }
                    match action {
                        Action::Drop(_) => r.denied += 1,
                        _ => {
                            r.allowed += 1;
                            r.allowed_bytes += frame.len() as u64;
                            if offering {
                                if let Some(c) = self.filter.cacheable() {
                                    // A burst of one flow is offered once.
                                    let again = st.offers.last().is_some_and(|o| o.1 == c);
                                    if !again && st.offers.len() < st.offers.capacity() {
                                        st.offers.push((src, c, action));
                                    }
                                }
                            }
                        }
                    }
                    self.routes.route(
                        action,
                        src,
                        frame,
                        st.reinject_port,
                        &mut st.outbox.woke,
                        &self.counters,
                    )
                });
                match next {
                    Next::Port(port) => st.outbox.push(port, *desc, src as u16),
                    Next::Release => self.rings.release(std::slice::from_ref(desc)),
                }
            }
        }
        if lost > 0 {
            self.counters
                .monitor_lost
                .fetch_add(lost, Ordering::Relaxed);
        }
    }

    /// Transmit what is pending on each port (what does not fit is freed
    /// and counted against its sender), then take completions back.
    fn transmit(&mut self, out: &mut Outbox<R::Desc>, r: &mut Round) {
        for p in 0..self.rings.ports() {
            let frames = &mut out.pending[p];
            if !frames.is_empty() {
                let sent = self.rings.transmit(p, frames);
                r.tx += sent as u64;
                if sent < frames.len() {
                    // Already counted allowed; the drop is counted per
                    // endpoint here.
                    self.rings.release(&frames[sent..]);
                    for src in &out.senders[p][sent..] {
                        self.counters
                            .count_io_drop(*src as usize, DropReason::TxFull);
                    }
                }
                frames.clear();
                out.senders[p].clear();
            }
            r.completed += self.rings.complete(p) as u64;
        }
    }

    fn wake_peers(&mut self, out: &mut Outbox<R::Desc>) {
        for (w, flag) in out.woke.iter_mut().enumerate() {
            if *flag {
                self.routes.wakers[w].signal();
                *flag = false;
            }
        }
    }
}

/// Rewrites the Ethernet addresses of `frame` (at least 12 bytes, which a
/// frame [`Filter::decide`] passed always has).
#[inline]
fn rewrite_ethernet(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
}
