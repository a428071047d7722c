//! `xpf sink`: counts what arrives on a device and keeps the generator's
//! books ([`crate::harness::traffic::Accounting`]).
//!
//! It reads with an AF_PACKET raw socket bound to the device (every
//! protocol), `recvmmsg` in batches of 64, non-blocking behind ppoll(2) so
//! the duration and the stop signals are honoured. Receiving with AF_XDP
//! would need an XDP program on the device; a packet socket needs nothing,
//! sees every frame the device receives (its own transmissions excluded)
//! and leaves the frame to the kernel as well. Frames are stamped with
//! CLOCK_MONOTONIC when a batch is read, the generator's clock on the same
//! host.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Result};
use serde_json::json;

use super::gen::{monotonic_ns, pin};
use super::signals::{wait, StopSignals};
use super::Output;
use crate::harness::traffic::{generator_frame, Accounting, Summary};

/// Frames per `recvmmsg`.
const BATCH: usize = 64;
/// Bytes kept of each frame; longer ones are cut (the generator's frames
/// never are: its UMEM frames hold less).
const FRAME_BUF: usize = 4096;
/// Socket receive buffer asked for (root may exceed `rmem_max`).
const RCVBUF: libc::c_int = 64 << 20;
/// Batches read back to back before the clock and signals are checked.
const BATCHES_PER_CHECK: usize = 16;
/// Not in the libc crate yet (linux/if_packet.h, Linux 4.20).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Prints `sink: listening on IFACE` on stderr once the socket is bound. The \
final summary (received, lost, reordered, duplicates, late, foreign, \
loss_fraction, latency_us, latency_curve, pps, seconds, ...) comes on the \
last line of standard output, as one JSON object with --output json. Loss \
and reordering come from the generator's sequence numbers, counted from \
the first one seen; latency is one-way, from the generator's send time on \
the same host. Needs root (a packet socket).")]
pub(super) struct SinkArgs {
    /// Device to receive on.
    #[arg(long, value_name = "IFACE")]
    dev: String,
    /// Stop after this many seconds; 0 runs until SIGINT or SIGTERM.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Print a progress line every SECS seconds (a JSON line
    /// `{"t":..,"pps":..,"received":..}` with --output json).
    #[arg(long, value_name = "SECS")]
    interval: Option<f64>,
    /// The summary as `text` or one `json` object.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Pin to this CPU.
    #[arg(long, value_name = "N")]
    cpu: Option<usize>,
}

pub(super) fn sink(args: SinkArgs) -> Result<()> {
    if !(0.0..=1e9).contains(&args.duration) {
        bail!("--duration must be 0 (until SIGINT) or a positive number of seconds");
    }
    if let Some(i) = args.interval {
        if !(i > 0.0 && i <= 1e6) {
            bail!("--interval must be a positive number of seconds");
        }
    }
    if let Some(cpu) = args.cpu {
        pin(cpu)?;
    }
    let mut socket = PacketSocket::bind(&args.dev)?;
    let signals = StopSignals::new()?;
    eprintln!("sink: listening on {}", args.dev);
    io::stderr().flush().ok();

    let json_out = args.output == Output::Json;
    let start = monotonic_ns();
    let end = (args.duration > 0.0).then(|| start + (args.duration * 1e9) as u64);
    let interval = args.interval.map(|i| (i * 1e9) as u64);
    let mut next_tick = interval.map(|i| start + i);
    let (mut tick_at, mut tick_frames) = (start, 0u64);
    let mut acc = Accounting::new();
    let mut dports = vec![0u64; 1 << 16];
    let mut frames = 0u64;
    let (mut first_at, mut last_at) = (None, 0u64);
    let mut batch = RecvBatch::new();
    let mut fds = [
        libc::pollfd {
            fd: socket.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: signals.fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    while !signals.fired() {
        let now = monotonic_ns();
        if end.is_some_and(|e| now >= e) {
            break;
        }
        if let (Some(tick), Some(every)) = (next_tick, interval) {
            if now >= tick {
                let dt = (now - tick_at) as f64 / 1e9;
                let pps = (frames - tick_frames) as f64 / dt;
                let t = (now - start) as f64 / 1e9;
                if json_out {
                    println!(
                        "{}",
                        json!({"t": t, "pps": pps, "received": acc.received(), "lost": acc.lost()})
                    );
                } else {
                    println!(
                        "sink: t={t:.1} s {pps:.0} pps received {} lost {}",
                        acc.received(),
                        acc.lost()
                    );
                }
                io::stdout().flush().ok();
                (tick_at, tick_frames) = (now, frames);
                next_tick = Some(tick + every * ((now - tick) / every + 1));
            }
        }
        let wake = [end, next_tick, Some(now + 1_000_000_000)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
        wait(&mut fds, wake.saturating_sub(now));
        for _ in 0..BATCHES_PER_CHECK {
            let n = batch.receive(&socket)?;
            if n == 0 {
                break;
            }
            let now = monotonic_ns();
            for frame in batch.frames(n) {
                frames += 1;
                match generator_frame(frame) {
                    Some((info, header)) => {
                        acc.record(&header, now);
                        dports[usize::from(info.dport)] += 1;
                        first_at.get_or_insert(now);
                        last_at = now;
                    }
                    None => acc.record_foreign(),
                }
            }
            if n < BATCH {
                break;
            }
        }
    }

    let seconds = (monotonic_ns() - start) as f64 / 1e9;
    let socket_drops = socket.drops();
    let summary = acc.summary();
    let generator_pps = match first_at {
        Some(f) if last_at > f => (summary.received - 1) as f64 * 1e9 / (last_at - f) as f64,
        _ => 0.0,
    };
    let dports: BTreeMap<u16, u64> = dports
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(p, n)| (p as u16, *n))
        .collect();
    let report = Report {
        dev: &args.dev,
        seconds,
        frames,
        pps: frames as f64 / seconds.max(1e-9),
        generator_pps,
        socket_drops,
        dports,
        summary,
    };
    if json_out {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.render());
    }
    io::stdout().flush().ok();
    Ok(())
}

/// The final summary: the accounting plus what only the sink knows.
#[derive(serde::Serialize)]
struct Report<'a> {
    dev: &'a str,
    /// From bind to stop.
    seconds: f64,
    /// Every frame counted, generator or not.
    frames: u64,
    /// `frames` over `seconds`.
    pps: f64,
    /// Generator frames per second between the first and the last one.
    generator_pps: f64,
    /// Frames the kernel dropped because the socket buffer was full.
    socket_drops: u64,
    /// Generator frames per UDP destination port.
    dports: BTreeMap<u16, u64>,
    #[serde(flatten)]
    summary: Summary,
}

impl Report<'_> {
    fn render(&self) -> String {
        let s = &self.summary;
        let mut out = format!(
            "sink: {} frames in {:.2} s on {} ({:.0} pps; generator frames at {:.0} pps while they arrived)\n",
            self.frames, self.seconds, self.dev, self.pps, self.generator_pps
        );
        out += &format!(
            "  received {}  lost {} ({:.4}%)  reordered {}  duplicates {}  late {}  foreign {}  socket drops {}\n",
            s.received,
            s.lost,
            s.loss_fraction * 100.0,
            s.reordered,
            s.duplicates,
            s.late,
            s.foreign,
            self.socket_drops
        );
        if let Some(l) = &s.latency_us {
            out += &format!(
                "  latency us: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n",
                l.p50, l.p99, l.p999, l.max
            );
        }
        if !self.dports.is_empty() {
            let shown: Vec<String> = self
                .dports
                .iter()
                .take(8)
                .map(|(p, n)| format!("{p} ({n})"))
                .collect();
            let more = self.dports.len().saturating_sub(8);
            out += &format!(
                "  udp dports: {}{}\n",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
        out
    }
}

/// An AF_PACKET raw socket bound to one device, every protocol.
struct PacketSocket {
    fd: OwnedFd,
    /// PACKET_STATISTICS resets on read: the drops read so far.
    drops: u64,
}

impl PacketSocket {
    fn bind(dev: &str) -> Result<Self> {
        let name = std::ffi::CString::new(dev)
            .map_err(|_| anyhow::anyhow!("--dev `{dev}`: not an interface name"))?;
        // SAFETY: `name` is a live NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("--dev {dev}: no such device in this network namespace");
        }
        // Protocol 0 receives nothing until bind() names the device, so no
        // frame of another device slips in before.
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                bail!("cannot open a packet socket ({e}): xpf sink needs root");
            }
            bail!("cannot open a packet socket: {e}");
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        if setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
            let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
        }
        // Older kernels lack it; outgoing frames are also skipped by type.
        let _ = setsockopt_int(raw, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
        // SAFETY: sockaddr_ll is plain integers; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a live sockaddr_ll of the length given.
        let rc = unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            bail!(
                "cannot bind a packet socket to {dev}: {}",
                io::Error::last_os_error()
            );
        }
        Ok(Self { fd, drops: 0 })
    }

    /// Frames the kernel dropped for want of buffer space, since bind.
    fn drops(&mut self) -> u64 {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `st` and `len` are live and sized for PACKET_STATISTICS.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            self.drops += u64::from(st.tp_drops);
        }
        self.drops
    }
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a live c_int of the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Buffers for one `recvmmsg`. The headers point into the boxed buffers,
/// whose heap storage never moves while the batch lives.
struct RecvBatch {
    bufs: Box<[[u8; FRAME_BUF]]>,
    addrs: Box<[libc::sockaddr_ll]>,
    /// Only read through `hdrs`.
    _iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl RecvBatch {
    fn new() -> Self {
        let mut bufs = vec![[0u8; FRAME_BUF]; BATCH].into_boxed_slice();
        // SAFETY: sockaddr_ll is plain integers; all-zero is valid.
        let mut addrs: Box<[libc::sockaddr_ll]> =
            vec![unsafe { std::mem::zeroed() }; BATCH].into_boxed_slice();
        let mut iovs: Box<[libc::iovec]> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: FRAME_BUF,
            })
            .collect();
        let hdrs = iovs
            .iter_mut()
            .zip(addrs.iter_mut())
            .map(|(iov, addr)| {
                // SAFETY: integers and pointers; all-zero is a valid empty header.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_ll).cast();
                h
            })
            .collect();
        Self {
            bufs,
            addrs,
            _iovs: iovs,
            hdrs,
        }
    }

    /// Reads up to a batch without blocking; 0 when none is waiting.
    fn receive(&mut self, socket: &PacketSocket) -> Result<usize> {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            h.msg_len = 0;
        }
        // SAFETY: every header points at a live iovec, buffer and address
        // of the sizes given; they outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => bail!("receiving: {e}"),
            };
        }
        Ok(n as usize)
    }

    /// The first `n` frames received, skipping any this host sent.
    fn frames(&self, n: usize) -> impl Iterator<Item = &[u8]> {
        (0..n)
            .filter(|&i| self.addrs[i].sll_pkttype != libc::PACKET_OUTGOING)
            .map(|i| &self.bufs[i][..(self.hdrs[i].msg_len as usize).min(FRAME_BUF)])
    }
}
