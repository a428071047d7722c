//! What a worker needs from its sockets, as a small trait: take received
//! frames, read and write a frame it holds, allocate and release frames,
//! transmit, complete, refill. [`XskRings`] is the real thing (one UMEM and
//! its AF_XDP sockets); the worker's tests use a plain in-memory one, so
//! dispatch, hand-off and drop accounting run without root.
//!
//! The ownership rule of [`crate::datapath::xsk`] holds through the trait:
//! a descriptor the worker holds was received or allocated and not yet
//! transmitted or released, and only then does it touch the frame.

use std::os::fd::RawFd;

use xsk_rs::FrameDesc;

use crate::datapath::xsk::{PortKind, WorkerXsk};

/// Copy-mode transmit sends at most 32 frames per kick: kicks per port per
/// round, at most.
const MAX_KICKS: u32 = 16;

/// A worker's frames and rings.
pub trait Rings {
    /// A handle on one frame of the worker's memory.
    type Desc: Copy;

    fn ports(&self) -> usize;
    fn kind(&self, port: usize) -> PortKind;
    /// Any descriptor, to size batch arrays with.
    fn template(&self) -> Self::Desc;
    /// Takes up to `out.len()` frames received on `port`; the worker holds
    /// them from now on.
    fn receive(&mut self, port: usize, out: &mut [Self::Desc]) -> usize;
    /// Runs `f` on the bytes of a frame the worker holds.
    fn with_frame<T>(&mut self, desc: &mut Self::Desc, f: impl FnOnce(&mut [u8]) -> T) -> T;
    /// A free frame holding a copy of `bytes`, or `None` when no frame is
    /// free or `bytes` do not fit.
    fn alloc_copy(&mut self, bytes: &[u8]) -> Option<Self::Desc>;
    /// Gives frames the worker holds back to the free pool.
    fn release(&mut self, descs: &[Self::Desc]);
    /// Puts frames on `port`'s transmit ring, in order; returns how many
    /// went (the rest are still the worker's).
    fn transmit(&mut self, port: usize, descs: &[Self::Desc]) -> usize;
    /// Takes back `port`'s transmitted frames, waking the kernel while that
    /// makes progress; returns how many came back.
    fn complete(&mut self, port: usize) -> usize;
    /// Tops up `port`'s fill ring from the free pool.
    fn refill(&mut self, port: usize);
    /// Whether any transmitted frame is still out.
    fn busy(&self) -> bool;
    /// Descriptors to sleep on in poll(2) (receiving ports).
    fn poll_fds(&self) -> Vec<RawFd>;
}

/// A worker's AF_XDP sockets and UMEM behind [`Rings`].
pub struct XskRings {
    xsk: WorkerXsk,
    /// Completed descriptors, read in batches.
    done: Vec<FrameDesc>,
}

impl XskRings {
    pub fn new(xsk: WorkerXsk, batch: usize) -> Self {
        let done = vec![xsk.template; batch.max(64)];
        Self { xsk, done }
    }

    /// The sockets, kept open (and their counters readable) after the
    /// worker stops.
    pub fn into_xsk(self) -> WorkerXsk {
        self.xsk
    }

    fn reap(&mut self, port: usize) -> usize {
        let p = &mut self.xsk.ports[port];
        // SAFETY: completed descriptors are this worker's again.
        let n = unsafe { p.comp.consume(&mut self.done) };
        p.in_flight -= n as u32;
        self.xsk.free.extend_from_slice(&self.done[..n]);
        n
    }
}

impl Rings for XskRings {
    type Desc = FrameDesc;

    #[inline]
    fn ports(&self) -> usize {
        self.xsk.ports.len()
    }

    #[inline]
    fn kind(&self, port: usize) -> PortKind {
        self.xsk.ports[port].kind
    }

    fn template(&self) -> FrameDesc {
        self.xsk.template
    }

    #[inline]
    fn receive(&mut self, port: usize, out: &mut [FrameDesc]) -> usize {
        let p = &mut self.xsk.ports[port];
        // SAFETY: the RX ring hands us descriptors of our UMEM.
        let n = unsafe { p.rx.consume(out) };
        p.filled -= n as u32;
        n
    }

    #[inline]
    fn with_frame<T>(&mut self, desc: &mut FrameDesc, f: impl FnOnce(&mut [u8]) -> T) -> T {
        // SAFETY: the caller holds `desc` (received or allocated, not yet
        // transmitted or released), so no ring holds it and the frame
        // memory is ours.
        let mut data = unsafe { self.xsk.umem.data_mut(desc) };
        f(data.contents_mut())
    }

    fn alloc_copy(&mut self, bytes: &[u8]) -> Option<FrameDesc> {
        let mut desc = self.xsk.free.pop()?;
        // SAFETY: `desc` came off the free stack, so no ring holds it.
        let mut data = unsafe { self.xsk.umem.data_mut(&mut desc) };
        let mut cursor = data.cursor();
        cursor.set_pos(0);
        if std::io::Write::write_all(&mut cursor, bytes).is_err() {
            self.xsk.free.push(desc);
            return None;
        }
        Some(desc)
    }

    #[inline]
    fn release(&mut self, descs: &[FrameDesc]) {
        self.xsk.free.extend_from_slice(descs);
    }

    #[inline]
    fn transmit(&mut self, port: usize, descs: &[FrameDesc]) -> usize {
        let p = &mut self.xsk.ports[port];
        // SAFETY: the worker holds every descriptor in `descs`; those
        // produced now belong to the TX ring.
        let sent = unsafe { p.tx.produce(descs) };
        p.in_flight += sent as u32;
        sent
    }

    fn complete(&mut self, port: usize) -> usize {
        if self.xsk.ports[port].in_flight == 0 {
            return 0;
        }
        // Reap, then kick only while kicks make progress: copy mode sends
        // at most 32 frames per kick and completes them before the call
        // returns, so a kick with nothing left to send is a wasted syscall.
        let mut done = self.reap(port);
        let mut kicks = 0;
        while self.xsk.ports[port].in_flight > 0
            && self.xsk.ports[port].tx.needs_wakeup()
            && kicks < MAX_KICKS
        {
            let _ = self.xsk.ports[port].tx.wakeup();
            kicks += 1;
            let n = self.reap(port);
            if n == 0 {
                break;
            }
            done += n;
        }
        done
    }

    #[inline]
    fn refill(&mut self, port: usize) {
        self.xsk.refill(port);
    }

    fn busy(&self) -> bool {
        self.xsk.ports.iter().any(|p| p.in_flight > 0)
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        self.xsk
            .ports
            .iter()
            .filter(|p| p.kind != PortKind::Reinject)
            .map(|p| p.fd())
            .collect()
    }
}
