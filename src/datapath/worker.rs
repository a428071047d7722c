//! The worker loop, shaped like xdpsock's: per port, peek a batch from the
//! RX ring, decide every frame, put forwarded frames on the TX ring of the
//! port they leave by, refill the fill ring from free frames, reap
//! completions, and wake the kernel only when a ring asks for it. When all
//! ports stay empty for a while the worker sleeps in poll(2) on its sockets
//! and its hand-off eventfd, so an idle filter costs no CPU.
//!
//! A frame for an endpoint another worker serves is copied into that
//! worker's bounded hand-off queue (descriptors never leave their UMEM; see
//! `xsk`). Nothing on this path allocates: batches, pending-TX lists and
//! hand-off slots are sized up front. The only locks taken are a conntrack
//! shard's, for one lookup or insert, and the inbound report drain's.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use xsk_rs::FrameDesc;

use super::settings::Mode;
use super::xsk::{Port, PortKind, WorkerXsk};
use crate::conntrack::Tuple;
use crate::filter::{Action, DropReason, Filter};
use crate::ipcache::IpCacheReader;

/// Largest frame that can be handed to another worker.
pub const HANDOFF_FRAME: usize = 2048;
/// Slots in each worker's hand-off queue.
pub const HANDOFF_SLOTS: usize = 1024;
/// Empty polls before a worker sleeps in poll(2).
const SPINS_BEFORE_SLEEP: u32 = 128;
/// Most transmit kicks per port per round (32 frames each in copy mode).
const MAX_KICKS: u32 = 16;
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
#[derive(Default)]
pub struct WorkerCounters {
    pub rx: AtomicU64,
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub tx: AtomicU64,
    pub handed_off: AtomicU64,
    pub sleeps: AtomicU64,
}

/// What a worker needs; built by `datapath` and moved onto its thread.
pub struct Worker {
    pub id: usize,
    pub xsk: WorkerXsk,
    pub filter: Filter,
    pub ipcache: IpCacheReader,
    pub macs: Arc<Macs>,
    /// Per endpoint: (worker that serves it, index of its port there).
    pub owner: Arc<Vec<(usize, usize)>>,
    pub handoff_tx: Arc<Vec<Sender<Handoff>>>,
    pub handoff_rx: Receiver<Handoff>,
    /// Each worker's eventfd, written after handing it frames.
    pub wakers: Arc<Vec<OwnedFd>>,
    pub inbound: Arc<dyn InboundSource>,
    pub counters: Arc<WorkerCounters>,
    pub stop: Arc<AtomicBool>,
    pub batch: usize,
    pub epoch: Instant,
    /// `filter`, or a benchmark baseline.
    pub mode: Mode,
}

/// Creates an eventfd for hand-off wake-ups.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned by the returned value.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd. A full counter
    // (EAGAIN) already means "wake up".
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

fn clear(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64; EAGAIN when not signalled.
    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

/// Moves `port`'s completed transmit frames to the free stack.
fn reap(port: &mut Port, scratch: &mut [FrameDesc], free: &mut Vec<FrameDesc>) -> usize {
    // SAFETY: completed descriptors are this worker's again.
    let done = unsafe { port.comp.consume(scratch) };
    port.in_flight -= done as u32;
    free.extend_from_slice(&scratch[..done]);
    done
}

impl Worker {
    /// Runs until `stop` is set; gives its sockets back so they stay open
    /// (and their counters readable) until the datapath is dropped.
    pub fn run(mut self) -> WorkerXsk {
        let ports = self.xsk.ports.len();
        let batch = self.batch;
        let template = self.xsk.template;
        let mut rx_descs = vec![template; batch];
        let mut comp_descs = vec![template; batch.max(64)];
        // Frames waiting to go out on each port this round, and the
        // endpoint that sent each (for drop counters).
        let cap = batch * (ports + 1) + HANDOFF_SLOTS;
        let mut pending: Vec<Vec<FrameDesc>> =
            (0..ports).map(|_| Vec::with_capacity(cap)).collect();
        let mut senders: Vec<Vec<u16>> = (0..ports).map(|_| Vec::with_capacity(cap)).collect();
        let reinject_port = self
            .xsk
            .ports
            .iter()
            .position(|p| p.kind == PortKind::Reinject)
            .expect("every worker has a reinject port");
        let mut woke = vec![false; self.handoff_tx.len()];
        let mut pollfds: Vec<libc::pollfd> = self
            .xsk
            .ports
            .iter()
            .filter(|p| p.kind != PortKind::Reinject)
            .map(|p| p.fd())
            .chain(std::iter::once(self.wakers[self.id].as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut idle = 0u32;
        // One handle for the whole run: the report drain below needs it
        // while `self.filter` is borrowed elsewhere.
        let shared = self.filter.shared().clone();

        while !self.stop.load(Ordering::Relaxed) {
            let now = self.epoch.elapsed().as_secs();
            let mut worked = false;
            let (mut rx_n, mut allowed_n, mut denied_n) = (0u64, 0u64, 0u64);

            // Reports first: they were written before any reply to them
            // could reach our RX rings.
            self.inbound
                .drain(&mut |t, flags| shared.note_inbound(&t, flags, now));

            // Frames other workers handed us.
            while let Ok(h) = self.handoff_rx.try_recv() {
                worked = true;
                let Some(mut desc) = self.xsk.free.pop() else {
                    self.filter
                        .count_drop(h.endpoint as usize, DropReason::TxFull);
                    continue;
                };
                let (_, port) = self.owner[h.endpoint as usize];
                // SAFETY: `desc` came off this worker's free stack, so no
                // ring holds it and the frame memory is ours to write.
                let mut data = unsafe { self.xsk.umem.data_mut(&mut desc) };
                let mut cursor = data.cursor();
                cursor.set_pos(0);
                use std::io::Write;
                if cursor.write_all(&h.bytes[..h.len as usize]).is_err() {
                    self.xsk.free.push(desc);
                    self.filter
                        .count_drop(h.src as usize, DropReason::HandoffFull);
                    continue;
                }
                pending[port].push(desc);
                senders[port].push(h.src);
            }

            let reader = self.ipcache.enter();
            for p in 0..ports {
                let PortKind::Endpoint(src) = self.xsk.ports[p].kind else {
                    continue;
                };
                let src = src as usize;
                // SAFETY: the RX ring hands us descriptors of our UMEM.
                let n = unsafe { self.xsk.ports[p].rx.consume(&mut rx_descs[..batch]) };
                if n == 0 {
                    continue;
                }
                worked = true;
                rx_n += n as u64;
                self.xsk.ports[p].filled -= n as u32;
                for desc in rx_descs.iter_mut().take(n) {
                    // SAFETY: we hold `desc` (just consumed from RX) until it
                    // goes to a TX ring or the free stack below.
                    let mut data = unsafe { self.xsk.umem.data_mut(desc) };
                    let frame = data.contents_mut();
                    let action = match (self.mode, &reader) {
                        (Mode::Filter, Some(view)) => self.filter.decide(src, frame, view, now),
                        // The ipcache is being torn down: nothing to check
                        // against, so nothing passes.
                        (Mode::Filter, None) => Action::Drop(DropReason::PolicyDefault),
                        (Mode::Forward, _) => self.filter.route_only(src, frame),
                        (Mode::RxDrop, _) => Action::Drop(DropReason::PolicyDefault),
                    };
                    match action {
                        Action::ToEndpoint(dst) => {
                            allowed_n += 1;
                            let (eth0, veth) = self.macs.endpoints[dst as usize];
                            rewrite_ethernet(frame, eth0, veth);
                            let (worker, port) = self.owner[dst as usize];
                            if worker == self.id {
                                pending[port].push(*desc);
                                senders[port].push(src as u16);
                                continue;
                            }
                            if frame.len() > HANDOFF_FRAME {
                                self.filter.count_drop(src, DropReason::HandoffFull);
                            } else {
                                let mut h = Handoff {
                                    src: src as u16,
                                    endpoint: dst,
                                    len: frame.len() as u16,
                                    bytes: [0; HANDOFF_FRAME],
                                };
                                h.bytes[..frame.len()].copy_from_slice(frame);
                                match self.handoff_tx[worker].try_send(h) {
                                    Ok(()) => {
                                        woke[worker] = true;
                                        self.counters.handed_off.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                                        self.filter.count_drop(src, DropReason::HandoffFull)
                                    }
                                }
                            }
                            self.xsk.free.push(*desc);
                        }
                        Action::ToHost => {
                            allowed_n += 1;
                            let (host, net) = self.macs.reinject;
                            rewrite_ethernet(frame, host, net);
                            pending[reinject_port].push(*desc);
                            senders[reinject_port].push(src as u16);
                        }
                        Action::Drop(_) => {
                            denied_n += 1;
                            self.xsk.free.push(*desc);
                        }
                    }
                }
            }
            drop(reader);

            // Transmit what is pending, kick the kernel, reap completions.
            let mut tx_n = 0u64;
            for (p, frames) in pending.iter_mut().enumerate() {
                let port = &mut self.xsk.ports[p];
                if !frames.is_empty() {
                    // SAFETY: every pending descriptor is ours and leaves
                    // for the TX ring; the rest are dropped back below.
                    let sent = unsafe { port.tx.produce(frames) };
                    port.in_flight += sent as u32;
                    tx_n += sent as u64;
                    if sent < frames.len() {
                        // Already counted allowed; the drop is counted
                        // per endpoint below.
                        self.xsk.free.extend_from_slice(&frames[sent..]);
                        for src in &senders[p][sent..] {
                            self.filter.count_drop(*src as usize, DropReason::TxFull);
                        }
                    }
                    frames.clear();
                    senders[p].clear();
                }
                if port.in_flight > 0 {
                    // Reap, then kick only while kicks make progress: copy
                    // mode sends at most 32 frames per kick and completes
                    // them before the call returns, so a kick with nothing
                    // left to send is a wasted syscall.
                    let mut done = reap(port, &mut comp_descs, &mut self.xsk.free);
                    let mut kicks = 0;
                    while port.in_flight > 0 && port.tx.needs_wakeup() && kicks < MAX_KICKS {
                        let _ = port.tx.wakeup();
                        kicks += 1;
                        let n = reap(port, &mut comp_descs, &mut self.xsk.free);
                        if n == 0 {
                            break;
                        }
                        done += n;
                    }
                    worked |= done > 0;
                }
            }
            for p in 0..ports {
                self.xsk.refill(p);
            }
            for (w, flag) in woke.iter_mut().enumerate() {
                if *flag {
                    signal(self.wakers[w].as_raw_fd());
                    *flag = false;
                }
            }

            if rx_n > 0 {
                let c = &self.counters;
                c.rx.fetch_add(rx_n, Ordering::Relaxed);
                c.allowed.fetch_add(allowed_n, Ordering::Relaxed);
                c.denied.fetch_add(denied_n, Ordering::Relaxed);
            }
            if tx_n > 0 {
                self.counters.tx.fetch_add(tx_n, Ordering::Relaxed);
            }

            if worked {
                idle = 0;
                continue;
            }
            idle += 1;
            let busy = self.xsk.ports.iter().any(|p| p.in_flight > 0);
            if idle >= SPINS_BEFORE_SLEEP && !busy {
                self.counters.sleeps.fetch_add(1, Ordering::Relaxed);
                // SAFETY: `pollfds` is a live array of initialised pollfds.
                unsafe {
                    libc::poll(
                        pollfds.as_mut_ptr(),
                        pollfds.len() as libc::nfds_t,
                        SLEEP_MS,
                    )
                };
                clear(self.wakers[self.id].as_raw_fd());
                idle = 0;
            } else if idle >= SPINS_BEFORE_SLEEP {
                std::thread::yield_now();
            }
        }
        self.xsk
    }
}

/// Rewrites the Ethernet addresses of `frame` (at least 12 bytes, which a
/// frame [`Filter::decide`] passed always has).
#[inline]
fn rewrite_ethernet(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
}
