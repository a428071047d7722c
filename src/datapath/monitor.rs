//! Monitor events: what the workers saw, for `xpf monitor`. While a
//! monitor is attached, each worker describes every frame it drops and the
//! first frame of every flow it lets through, and puts the description on
//! its own bounded queue; when the queue is full the event is lost and
//! counted, so a slow reader never slows the datapath. With no monitor
//! attached the workers pay one relaxed load per round.
//!
//! An event carries numbers only (addresses, ports, identities, the
//! verdict code and the revision it was decided under); the control loop
//! turns them into names and labels.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::filter::{Action, DropReason, View};
use crate::identity::NumericIdentity;
use crate::wire::{self, FlowInfo};

/// Events each worker's queue holds before it loses some.
pub const QUEUE: usize = 4096;

/// What a worker saw happen to one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitorEvent {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The endpoint that sent the frame (index in the world's order).
    pub endpoint: u16,
    /// `None`: let through, the first frame of a new flow.
    pub drop: Option<DropReason>,
    /// The frame's headers; `None` when it did not parse.
    pub flow: Option<FlowInfo>,
    pub dst_identity: NumericIdentity,
    /// The sender's egress table's verdict code for this destination and
    /// port (0: no rule matched), under `revision`.
    pub code: u32,
    pub revision: u64,
}

/// The workers' side: whether to describe frames, and the queues.
#[derive(Clone)]
pub struct MonitorTap {
    active: Arc<AtomicBool>,
    queue: Sender<MonitorEvent>,
}

/// The control loop's side of every worker's queue.
pub struct MonitorQueues {
    active: Arc<AtomicBool>,
    queues: Vec<Receiver<MonitorEvent>>,
}

/// One tap per worker, and the receiving side of them all.
pub fn queues(workers: usize) -> (Vec<MonitorTap>, MonitorQueues) {
    let active = Arc::new(AtomicBool::new(false));
    let (taps, queues) = (0..workers)
        .map(|_| {
            let (tx, rx) = bounded(QUEUE);
            (
                MonitorTap {
                    active: active.clone(),
                    queue: tx,
                },
                rx,
            )
        })
        .unzip();
    (taps, MonitorQueues { active, queues })
}

impl MonitorQueues {
    /// Turns event collection on or off. Off also empties the queues.
    pub fn set_active(&self, on: bool) {
        self.active.store(on, Ordering::Relaxed);
        if !on {
            for q in &self.queues {
                while q.try_recv().is_ok() {}
            }
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Moves every queued event to `out`.
    pub fn drain(&self, out: &mut Vec<MonitorEvent>) {
        for q in &self.queues {
            out.extend(q.try_iter());
        }
    }
}

impl MonitorTap {
    /// Whether frames are to be described this round.
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Describes `frame`, sent by `endpoint` and decided as `action`, if
    /// it is an event (a drop, or the first frame of a flow: `opened`).
    /// Returns false when the event was lost to a full queue.
    pub fn record(
        &self,
        endpoint: usize,
        frame: &[u8],
        action: Action,
        opened: bool,
        view: Option<&View<'_>>,
    ) -> bool {
        let drop = match action {
            Action::Drop(reason) => Some(reason),
            _ if opened => None,
            _ => return true,
        };
        let event = describe(endpoint, frame, drop, view);
        !matches!(self.queue.try_send(event), Err(TrySendError::Full(_)))
    }
}

fn describe(
    endpoint: usize,
    frame: &[u8],
    drop: Option<DropReason>,
    view: Option<&View<'_>>,
) -> MonitorEvent {
    let time_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let flow = wire::parse(frame).ok();
    let mut e = MonitorEvent {
        time_ns,
        endpoint: endpoint as u16,
        drop,
        flow,
        dst_identity: crate::identity::WORLD,
        code: 0,
        revision: 0,
    };
    let Some(flow) = flow else {
        return e;
    };
    if let Some(view) = view {
        e.dst_identity = view.lookup_or_world(flow.dst);
        let verdicts = view.attached();
        e.revision = verdicts.revision;
        if let Some(table) = verdicts.tables.get(endpoint) {
            e.code = table
                .lookup_code(e.dst_identity, flow.proto, flow.policy_port())
                .0;
        }
    }
    e
}
