//! `xpf sink`'s run: counts what arrives on a device and keeps the
//! generator's books ([`Accounting`]).
//!
//! It reads with an AF_PACKET raw socket bound to the device (every
//! protocol; [`crate::sys::packet`]), `recvmmsg` in batches of 64,
//! non-blocking behind the caller's [`Stop`] wait, so the duration and stop
//! requests are honoured. Receiving with AF_XDP would need an XDP program
//! on the device; a packet socket needs nothing, sees every frame the
//! device receives (its own transmissions excluded) and leaves the frame to
//! the kernel as well. Frames are stamped with CLOCK_MONOTONIC when a batch
//! is read, the generator's clock on the same host. Its errors name the
//! `xpf sink` option at fault.

use std::collections::BTreeMap;
use std::io::{self, Write};

use anyhow::{anyhow, bail, Result};
use serde_json::json;

use super::{generator_frame, monotonic_ns, pin, Accounting, Stop, Summary};
use crate::sys::packet::{PacketError, PacketSocket, ReceiveOptions, RecvBatch};

/// Frames per `recvmmsg`.
const BATCH: usize = 64;
/// Socket receive buffer asked for (root may exceed `rmem_max`).
const RCVBUF: libc::c_int = 64 << 20;
/// Batches read back to back before the clock and the stop are checked.
const BATCHES_PER_CHECK: usize = 16;

/// What `xpf sink` was asked to do (its options, one field each).
#[derive(Debug)]
pub struct SinkOptions {
    pub dev: String,
    /// Seconds; 0 runs until a stop request.
    pub duration: f64,
    /// Seconds between progress lines.
    pub interval: Option<f64>,
    /// Progress lines and the summary as JSON rather than text.
    pub json: bool,
    pub cpu: Option<usize>,
}

/// A sink with its socket bound, ready to count.
pub struct Sink {
    args: SinkOptions,
    socket: PacketSocket,
}

impl Sink {
    /// Checks the options, pins the thread and binds the socket.
    pub fn new(args: SinkOptions) -> Result<Self> {
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
        let socket = PacketSocket::receiver(
            &args.dev,
            ReceiveOptions {
                receive_buffer: Some(RCVBUF),
                ignore_outgoing: true,
            },
        )
        .map_err(|e| open_error(e, &args.dev))?;
        Ok(Self { args, socket })
    }

    /// Says on stderr that it listens, counts until the duration or
    /// `stop`, then prints the summary on stdout.
    pub fn run(self, stop: &impl Stop) -> Result<()> {
        let Sink { args, mut socket } = self;
        eprintln!("sink: listening on {}", args.dev);
        io::stderr().flush().ok();

        let json_out = args.json;
        let start = monotonic_ns();
        let end = (args.duration > 0.0).then(|| start + (args.duration * 1e9) as u64);
        let interval = args.interval.map(|i| (i * 1e9) as u64);
        let mut next_tick = interval.map(|i| start + i);
        let (mut tick_at, mut tick_frames) = (start, 0u64);
        let mut acc = Accounting::new();
        let mut dports = vec![0u64; 1 << 16];
        let mut frames = 0u64;
        let (mut first_at, mut last_at) = (None, 0u64);
        let mut batch = RecvBatch::new(BATCH);
        while !stop.fired() {
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
            stop.wait(socket.fd(), libc::POLLIN, wake.saturating_sub(now));
            for _ in 0..BATCHES_PER_CHECK {
                let n = batch
                    .receive(&socket)
                    .map_err(|e| anyhow!("receiving: {e}"))?;
                if n == 0 {
                    break;
                }
                let now = monotonic_ns();
                for frame in batch.incoming(n) {
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
}

/// A [`PacketError`] in `xpf sink`'s terms.
fn open_error(e: PacketError, dev: &str) -> anyhow::Error {
    match e {
        PacketError::Name(_) => anyhow!("--dev `{dev}`: not an interface name"),
        PacketError::NoDevice(_) => {
            anyhow!("--dev {dev}: no such device in this network namespace")
        }
        PacketError::Open(e) if e.raw_os_error() == Some(libc::EPERM) => {
            anyhow!("cannot open a packet socket ({e}): xpf sink needs root")
        }
        PacketError::Open(e) => anyhow!("cannot open a packet socket: {e}"),
        e @ PacketError::Bind { .. } => anyhow!("{e}"),
    }
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
