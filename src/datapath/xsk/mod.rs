//! AF_XDP sockets (xsk-rs) and the frames they move: the workers' sockets
//! and the generator's transmit-only one. Every AF_XDP socket xpf opens is
//! created here, with libxdp's program loading inhibited (xpf attaches its
//! own program; transmitting needs none).
//!
//! Each worker owns one UMEM shared by all of its sockets ("ports"): the
//! receive queues of the endpoints' host-side veths it serves, and its own
//! queue of `xpf_net`, through which it reinjects frames into the host
//! stack. Sharing the UMEM lets a frame received on one port be transmitted
//! on another without a copy. A [`TxXsk`] (`xpf gen`) owns a UMEM of its
//! own with one socket on it, used only to transmit.
//!
//! Frame ownership (the rule every `unsafe` below relies on): a frame
//! descriptor is, at any time, in exactly one place: its owner's free
//! stack, a fill ring, an RX ring, a TX ring, a completion ring, or a
//! worker's local batch. The kernel owns it while it sits on a fill or TX
//! ring and hands it back through the RX or completion ring; userspace
//! touches frame memory only while it holds the descriptor (a [`TxXsk`]
//! writes a frame only on its free stack, right before producing it). All
//! descriptors come from their owner's own UMEM, and no descriptor ever
//! crosses to another worker (frames for another worker's port are copied).

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::socket::SocketCreateError;
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

mod tx;

pub use tx::{TxXsk, TxXskError};

/// Why a socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("interface {ifname} queue {queue}: AF_XDP zero-copy is not supported by its driver ({source}); veth has none: use `bind: copy` or `bind: auto`")]
    NoZeroCopy {
        ifname: String,
        queue: u32,
        source: io::Error,
    },
    #[error(
        "interface {ifname} queue {queue}: cannot create AF_XDP socket ({mode} mode): {message}"
    )]
    Socket {
        ifname: String,
        queue: u32,
        mode: &'static str,
        message: String,
    },
    #[error("cannot create a UMEM of {frames} frames of {frame_size} bytes: {message}")]
    Umem {
        frames: u32,
        frame_size: u32,
        message: String,
    },
    #[error("invalid ring or frame size: {0}")]
    Size(String),
}

/// What a port is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// Receives what endpoint `n` sends; transmits frames to it.
    Endpoint(u16),
    /// Transmits into the host stack (xpf_net).
    Reinject,
}

/// One AF_XDP socket bound to an (interface, queue).
pub struct Port {
    pub kind: PortKind,
    pub ifname: String,
    pub queue: u32,
    /// Whether the bind came out zero-copy.
    pub zerocopy: bool,
    pub(crate) tx: TxQueue,
    pub(crate) rx: RxQueue,
    pub(crate) fill: FillQueue,
    pub(crate) comp: CompQueue,
    /// Frames on the TX ring not yet completed.
    pub(crate) in_flight: u32,
    /// Frames handed to the kernel for receiving (fill ring plus RX ring).
    pub(crate) filled: u32,
}

impl Port {
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }
}

/// A worker's UMEM, its free frames and its ports.
pub struct WorkerXsk {
    pub(crate) umem: Umem,
    pub(crate) free: Vec<FrameDesc>,
    pub ports: Vec<Port>,
    /// Any descriptor, to size batch arrays with (xsk-rs has no public
    /// constructor; the rings overwrite every field).
    pub(crate) template: FrameDesc,
    /// Frames each receiving port keeps handed to the kernel.
    pub(crate) fill_target: u32,
}

/// Where a port binds and what it is for.
pub struct PortSpec {
    pub kind: PortKind,
    pub ifname: String,
    pub queue: u32,
}

/// How AF_XDP sockets bind (`datapath.bind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy where the driver supports it, else copy.
    Auto,
    Copy,
    ZeroCopy,
}

impl BindMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Copy => "copy",
            Self::ZeroCopy => "zerocopy",
        }
    }
}

/// How a worker's sockets are bound and sized (`datapath.bind`,
/// `datapath.{rx,tx,fill,comp}_ring`, `datapath.frame_size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XskSettings {
    pub bind: BindMode,
    pub rx_ring: u32,
    pub tx_ring: u32,
    pub fill_ring: u32,
    pub comp_ring: u32,
    pub frame_size: u32,
}

impl Default for XskSettings {
    fn default() -> Self {
        Self {
            bind: BindMode::Auto,
            rx_ring: 2048,
            tx_ring: 2048,
            fill_ring: 4096,
            comp_ring: 2048,
            frame_size: 2048,
        }
    }
}

impl XskSettings {
    /// Settings with `bind`, the rings given as (field, size) in the order
    /// rx, tx, fill, comp, and `frame_size`; absent sizes take the default.
    /// A ring is a power of two from 64 to 32768, a frame 2048 or 4096
    /// bytes; errors are (field, message).
    pub fn checked(
        bind: BindMode,
        rings: [(&'static str, Option<u32>); 4],
        frame_size: Option<u32>,
    ) -> Result<Self, (&'static str, String)> {
        let d = Self::default();
        let defaults = [d.rx_ring, d.tx_ring, d.fill_ring, d.comp_ring];
        let mut sizes = [0u32; 4];
        for (i, ((field, v), default)) in rings.into_iter().zip(defaults).enumerate() {
            let v = v.unwrap_or(default);
            if !v.is_power_of_two() || !(64..=32768).contains(&v) {
                return Err((
                    field,
                    format!("{v} must be a power of two from 64 to 32768"),
                ));
            }
            sizes[i] = v;
        }
        let frame_size = frame_size.unwrap_or(d.frame_size);
        if frame_size != 2048 && frame_size != 4096 {
            return Err(("frame_size", format!("{frame_size} must be 2048 or 4096")));
        }
        let [rx_ring, tx_ring, fill_ring, comp_ring] = sizes;
        Ok(Self {
            bind,
            rx_ring,
            tx_ring,
            fill_ring,
            comp_ring,
            frame_size,
        })
    }
}

fn queue_size(v: u32) -> Result<QueueSize, XskError> {
    QueueSize::new(v).map_err(|e| XskError::Size(e.to_string()))
}

impl WorkerXsk {
    /// Creates the UMEM and binds one socket per spec. The caller registers
    /// each port's fd in the XSKMAP afterwards.
    pub fn new(specs: &[PortSpec], dp: &XskSettings) -> Result<Self, XskError> {
        let per_port = dp.fill_ring + dp.tx_ring;
        let frames = per_port * specs.len().max(1) as u32;
        let umem_config: UmemConfig = UmemConfig::builder()
            .frame_size(FrameSize::new(dp.frame_size).map_err(|e| XskError::Size(e.to_string()))?)
            .fill_queue_size(queue_size(dp.fill_ring)?)
            .comp_queue_size(queue_size(dp.comp_ring)?)
            .build()
            .map_err(|e| XskError::Size(e.to_string()))?;
        let nz = NonZeroU32::new(frames).expect("at least one frame per port");
        let (umem, free) = Umem::new(umem_config, nz, false).map_err(|e| XskError::Umem {
            frames,
            frame_size: dp.frame_size,
            message: e.to_string(),
        })?;
        let template = free[0];
        let mut me = Self {
            umem,
            free,
            ports: Vec::with_capacity(specs.len()),
            template,
            fill_target: dp.fill_ring.min(dp.rx_ring),
        };
        for spec in specs {
            let port = me.bind(spec, dp)?;
            me.ports.push(port);
        }
        for i in 0..me.ports.len() {
            me.refill(i);
        }
        Ok(me)
    }

    /// Tops port `i`'s fill ring up from the free stack to `fill_target`
    /// frames handed to the kernel (fill ring plus RX ring). More would only
    /// sit in the fill ring; the rest of the UMEM covers frames in flight on
    /// TX rings and in hand-offs. The reinject port receives nothing.
    pub(crate) fn refill(&mut self, i: usize) {
        let port = &mut self.ports[i];
        if port.kind == PortKind::Reinject || port.filled >= self.fill_target {
            return;
        }
        let n = ((self.fill_target - port.filled) as usize).min(self.free.len());
        if n == 0 {
            return;
        }
        let at = self.free.len() - n;
        // SAFETY: free-stack descriptors belong to this worker's UMEM and
        // no ring holds them; only those produced leave the stack.
        let produced = unsafe { port.fill.produce(&self.free[at..]) };
        self.free.truncate(self.free.len() - produced);
        port.filled += produced as u32;
        if produced > 0 && port.fill.needs_wakeup() {
            let _ = port.fill.wakeup(port.rx.fd_mut(), 0);
        }
    }

    fn bind(&self, spec: &PortSpec, dp: &XskSettings) -> Result<Port, XskError> {
        let ifname: Interface = spec
            .ifname
            .parse()
            .map_err(|_| XskError::Size(format!("interface name `{}`", spec.ifname)))?;
        let mut last_err = None;
        for (flags, mode) in attempts(dp.bind) {
            let (rx_ring, tx_ring) = (queue_size(dp.rx_ring)?, queue_size(dp.tx_ring)?);
            match new_socket(&self.umem, &ifname, spec.queue, rx_ring, tx_ring, *flags) {
                Ok((tx, rx, Some((fill, comp)))) => {
                    // Sockets after the first on a shared UMEM inherit its
                    // mode whatever they ask for: ask the kernel.
                    let zerocopy = is_zerocopy(rx.fd().as_raw_fd());
                    if dp.bind == BindMode::ZeroCopy && !zerocopy {
                        return Err(XskError::NoZeroCopy {
                            ifname: spec.ifname.clone(),
                            queue: spec.queue,
                            source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                        });
                    }
                    return Ok(Port {
                        kind: spec.kind,
                        ifname: spec.ifname.clone(),
                        queue: spec.queue,
                        zerocopy,
                        tx,
                        rx,
                        fill,
                        comp,
                        in_flight: 0,
                        filled: 0,
                    });
                }
                Ok((_, _, None)) => {
                    return Err(XskError::Socket {
                        ifname: spec.ifname.clone(),
                        queue: spec.queue,
                        mode,
                        message: "the queue is already bound by this worker".into(),
                    })
                }
                Err(e) => last_err = Some((*mode, e)),
            }
        }
        let (mode, e) = last_err.expect("at least one bind attempt");
        let source = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .map(|s| io::Error::from_raw_os_error(s.raw_os_error().unwrap_or(0)));
        if dp.bind == BindMode::ZeroCopy {
            if let Some(source) = source {
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
                ) {
                    return Err(XskError::NoZeroCopy {
                        ifname: spec.ifname.clone(),
                        queue: spec.queue,
                        source,
                    });
                }
            }
        }
        Err(XskError::Socket {
            ifname: spec.ifname.clone(),
            queue: spec.queue,
            mode,
            message: format!("{e}{}", source_text(&e)),
        })
    }
}

/// The bind flags to try, in order, and the name of each mode.
fn attempts(mode: BindMode) -> &'static [(BindFlags, &'static str)] {
    match mode {
        BindMode::ZeroCopy => &[(BindFlags::XDP_ZEROCOPY, "zerocopy")],
        BindMode::Copy => &[(BindFlags::XDP_COPY, "copy")],
        BindMode::Auto => &[
            (BindFlags::XDP_ZEROCOPY, "zerocopy"),
            (BindFlags::XDP_COPY, "copy"),
        ],
    }
}

/// A new socket's rings: TX, RX, and the UMEM's fill and completion rings
/// when the socket is the first on its (interface, queue).
type NewSocket = (TxQueue, RxQueue, Option<(FillQueue, CompQueue)>);

/// Creates one socket on `umem` bound to (`ifname`, `queue`), asking for
/// wake-ups only when the rings need them. The fill and completion rings
/// come back with the first socket on each (interface, queue).
fn new_socket(
    umem: &Umem,
    ifname: &Interface,
    queue: u32,
    rx_ring: QueueSize,
    tx_ring: QueueSize,
    flags: BindFlags,
) -> Result<NewSocket, SocketCreateError> {
    let config = SocketConfig::builder()
        .rx_queue_size(rx_ring)
        .tx_queue_size(tx_ring)
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(flags | BindFlags::XDP_USE_NEED_WAKEUP)
        .build();
    // SAFETY: libxdp's program loading is inhibited (xpf attaches its own;
    // a transmit-only socket needs none), as `Socket::new` requires when
    // sharing a UMEM.
    unsafe { Socket::new(config, umem, ifname, queue) }
}

/// The OS error under an xsk-rs error, if any.
fn errno_of(e: &dyn std::error::Error) -> Option<i32> {
    e.source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error)
}

/// `: ` and the cause of an xsk-rs error (its text leaves the OS error out).
fn source_text(e: &dyn std::error::Error) -> String {
    e.source().map(|s| format!(": {s}")).unwrap_or_default()
}

/// Whether the kernel bound socket `fd` in zero-copy mode (XDP_OPTIONS).
fn is_zerocopy(fd: RawFd) -> bool {
    let mut opts = libc::xdp_options { flags: 0 };
    let mut len = std::mem::size_of::<libc::xdp_options>() as libc::socklen_t;
    // SAFETY: `opts` and `len` are live and sized for XDP_OPTIONS.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_OPTIONS,
            (&mut opts as *mut libc::xdp_options).cast(),
            &mut len,
        )
    };
    rc == 0 && opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0
}

/// The kernel's counters of one AF_XDP socket: frames it could not deliver
/// (RX ring full, fill ring empty) and descriptors it refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SocketStats {
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub tx_ring_empty: u64,
}

impl SocketStats {
    pub fn add(&mut self, o: &SocketStats) {
        self.rx_dropped += o.rx_dropped;
        self.rx_ring_full += o.rx_ring_full;
        self.rx_fill_ring_empty += o.rx_fill_ring_empty;
        self.rx_invalid_descs += o.rx_invalid_descs;
        self.tx_invalid_descs += o.tx_invalid_descs;
        self.tx_ring_empty += o.tx_ring_empty;
    }
}

/// Reads socket `fd`'s XDP_STATISTICS. The caller keeps the socket open
/// (`Datapath` holds every worker's sockets until it is dropped).
pub fn statistics(fd: RawFd) -> Option<SocketStats> {
    // SAFETY: xdp_statistics is plain integers; all-zero is valid.
    let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
    // SAFETY: `st` and `len` are live and sized for XDP_STATISTICS.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_STATISTICS,
            (&mut st as *mut libc::xdp_statistics).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(SocketStats {
        rx_dropped: st.rx_dropped,
        rx_ring_full: st.rx_ring_full,
        rx_fill_ring_empty: st.rx_fill_ring_empty_descs,
        rx_invalid_descs: st.rx_invalid_descs,
        tx_invalid_descs: st.tx_invalid_descs,
        tx_ring_empty: st.tx_ring_empty_descs,
    })
}
