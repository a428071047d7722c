//! [`TxXsk`]: one AF_XDP socket on a UMEM of its own, used only to
//! transmit (`xpf gen`). It follows the frame-ownership rule of the parent
//! module: a frame is written only while on the free stack, right before it
//! is produced, and comes back to the free stack through the completion
//! ring.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use xsk_rs::config::{FrameSize, Interface, QueueSize, UmemConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use super::BindMode;
use super::{attempts, errno_of, new_socket, source_text};

/// Transmit and completion ring size of a [`TxXsk`]; its UMEM has twice as
/// many frames.
const TX_RING: u32 = 2048;
/// Copy mode moves at most 32 frames per kick; enough kicks for a full ring.
const MAX_KICKS: u32 = TX_RING / 32;
/// Binds retried, 10 ms apart, while the queue is busy (see `TxXsk::new`).
const BUSY_RETRIES: u32 = 100;
/// Fill and RX ring size of a [`TxXsk`]: it receives nothing, but a socket
/// has both rings.
const TX_ONLY_RX_RING: u32 = 64;

/// Why a [`TxXsk`] could not be set up. A failed bind carries the OS error
/// so that the caller can say what to do about it in its own terms.
#[derive(Debug, thiserror::Error)]
pub enum TxXskError {
    #[error("ring size {size}: {message}")]
    RingSize { size: u32, message: String },
    #[error("frame size: {0}")]
    FrameSize(String),
    #[error("UMEM config: {0}")]
    UmemConfig(String),
    /// Frames of `frame_len` bytes do not fit in a UMEM frame.
    #[error("frames of {frame_len} bytes: AF_XDP frames hold at most {mtu} bytes")]
    FrameTooLong { frame_len: usize, mtu: u32 },
    #[error("cannot create a UMEM of {frames} frames of {frame_size} bytes: {message}")]
    Umem {
        frames: u32,
        frame_size: u32,
        message: String,
    },
    #[error("`{0}` is not an interface name")]
    InterfaceName(String),
    /// The bind failed in `mode` (the last one tried); `errno` is the OS
    /// error, `message` its text (or xsk-rs's when there is none).
    #[error("cannot bind an AF_XDP socket to {ifname} queue {queue} ({mode} mode): {message}")]
    Bind {
        ifname: String,
        queue: u32,
        mode: &'static str,
        errno: Option<i32>,
        message: String,
    },
    #[error("{ifname} queue {queue}: already bound")]
    AlreadyBound { ifname: String, queue: u32 },
}

/// One AF_XDP socket used only to transmit, with a UMEM of its own and the
/// frames userspace holds (its free stack; see the module documentation).
/// Every frame it sends is `frame_len` bytes long.
pub struct TxXsk {
    umem: Umem,
    tx: TxQueue,
    comp: CompQueue,
    // Never used, but they hold the socket's fill and RX rings mapped for
    // as long as the socket lives.
    _rx: RxQueue,
    _fill: FillQueue,
    free: Vec<FrameDesc>,
    /// Completion batch buffer.
    scratch: Vec<FrameDesc>,
    /// Frames on the TX ring or in the kernel.
    in_flight: u64,
    /// Frames the kernel completed (transmitted or dropped by the driver).
    completed: u64,
    frame_len: usize,
}

impl TxXsk {
    /// Creates a UMEM of twice `TX_RING` (2048) frames, each big enough for
    /// `frame_len` bytes, and binds one socket on it to (`ifname`, `queue`)
    /// in `mode`.
    ///
    /// The kernel lets go of a closed socket's queue a moment after the
    /// close (deferred work), so a run right after another gets EBUSY for a
    /// few milliseconds: the bind is retried for a second before it fails.
    pub fn new(
        ifname: &str,
        queue: u32,
        mode: BindMode,
        frame_len: usize,
    ) -> Result<Self, TxXskError> {
        let qsize = |n: u32| {
            QueueSize::new(n).map_err(|e| TxXskError::RingSize {
                size: n,
                message: e.to_string(),
            })
        };
        // The UMEM frame also holds the kernel's 256-byte XDP headroom.
        let frame_size = if frame_len + 256 <= 2048 { 2048 } else { 4096 };
        let umem_config = UmemConfig::builder()
            .frame_size(
                FrameSize::new(frame_size).map_err(|e| TxXskError::FrameSize(e.to_string()))?,
            )
            .fill_queue_size(qsize(TX_ONLY_RX_RING)?)
            .comp_queue_size(qsize(TX_RING)?)
            .build()
            .map_err(|e| TxXskError::UmemConfig(e.to_string()))?;
        if frame_len > umem_config.mtu() as usize {
            return Err(TxXskError::FrameTooLong {
                frame_len,
                mtu: umem_config.mtu(),
            });
        }
        let frames = 2 * TX_RING;
        let nz = NonZeroU32::new(frames).expect("non-zero");
        let (umem, free) = Umem::new(umem_config, nz, false).map_err(|e| TxXskError::Umem {
            frames,
            frame_size,
            message: format!("{e}{}", source_text(&e)),
        })?;
        let (rx_ring, tx_ring) = (qsize(TX_ONLY_RX_RING)?, qsize(TX_RING)?);
        let interface: Interface = ifname
            .parse()
            .map_err(|_| TxXskError::InterfaceName(ifname.to_string()))?;
        let mut last_err = None;
        for (flags, name) in attempts(mode) {
            let mut busy_retries = 0;
            let bound = loop {
                match new_socket(&umem, &interface, queue, rx_ring, tx_ring, *flags) {
                    Err(e) if errno_of(&e) == Some(libc::EBUSY) && busy_retries < BUSY_RETRIES => {
                        busy_retries += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    r => break r,
                }
            };
            match bound {
                Ok((tx, rx, Some((fill, comp)))) => {
                    let scratch = vec![free[0]; TX_RING as usize];
                    return Ok(Self {
                        umem,
                        tx,
                        comp,
                        _rx: rx,
                        _fill: fill,
                        free,
                        scratch,
                        in_flight: 0,
                        completed: 0,
                        frame_len,
                    });
                }
                Ok((_, _, None)) => {
                    return Err(TxXskError::AlreadyBound {
                        ifname: ifname.to_string(),
                        queue,
                    })
                }
                Err(e) => last_err = Some((*name, e)),
            }
        }
        let (mode, e) = last_err.expect("at least one bind attempt");
        let errno = errno_of(&e);
        Err(TxXskError::Bind {
            ifname: ifname.to_string(),
            queue,
            mode,
            errno,
            message: errno.map_or(e.to_string(), |n| {
                io::Error::from_raw_os_error(n).to_string()
            }),
        })
    }

    /// The socket, to poll for room on the TX ring.
    pub fn fd(&self) -> RawFd {
        self.tx.fd().as_raw_fd()
    }

    /// Frames on the free stack, ready to be written and produced.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Frames on the TX ring or in the kernel.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Frames the kernel completed (transmitted or dropped by the driver).
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Moves completed frames to the free stack; returns how many.
    pub fn reap(&mut self) -> u64 {
        // SAFETY: completed descriptors are ours again.
        let n = unsafe { self.comp.consume(&mut self.scratch) };
        self.free.extend_from_slice(&self.scratch[..n]);
        self.in_flight -= n as u64;
        self.completed += n as u64;
        n as u64
    }

    /// Has `write(k, frame)` fill frame `k` of `n` (at most [`Self::free`])
    /// and puts them on the TX ring in that order; returns how many went on
    /// (the ring may take fewer: the rest stay free and are written again
    /// next time).
    #[inline]
    pub fn produce(&mut self, n: usize, mut write: impl FnMut(usize, &mut [u8])) -> u64 {
        let at = self.free.len() - n;
        for (k, desc) in self.free[at..].iter_mut().enumerate() {
            // SAFETY: `desc` is on the free stack: no ring holds it and only
            // this thread touches its memory.
            let mut data = unsafe { self.umem.data_mut(desc) };
            // Sets the frame length; `write` then fills all of it.
            data.cursor().set_pos(self.frame_len);
            write(k, data.contents_mut());
        }
        // SAFETY: the descriptors leave the free stack for the ring below
        // (only those produced).
        let produced = unsafe { self.tx.produce(&self.free[at..]) };
        self.free.drain(at..at + produced);
        self.in_flight += produced as u64;
        produced as u64
    }

    /// Kicks the kernel while kicks make progress, reaping as it goes:
    /// copy mode transmits at most 32 frames per kick and completes them
    /// before the call returns.
    pub fn kick(&mut self) -> io::Result<()> {
        self.reap();
        let mut kicks = 0;
        while self.in_flight > 0 && self.tx.needs_wakeup() && kicks < MAX_KICKS {
            self.tx.wakeup()?;
            kicks += 1;
            if self.reap() == 0 {
                break;
            }
        }
        Ok(())
    }
}
