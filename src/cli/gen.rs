//! `xpf gen`: a transmit-only AF_XDP traffic generator with pktgen-like
//! options.
//!
//! The frames come from [`crate::harness::traffic::FrameFactory`]; this module owns
//! the I/O around it: the device's addresses (through `ip -j`), one AF_XDP
//! socket on (device, queue) with libxdp's program loading inhibited (no XDP
//! program is needed to transmit), pacing against CLOCK_MONOTONIC, and the
//! stop signals.
//!
//! Frame ownership (what every `unsafe` below relies on): each UMEM frame
//! descriptor is either on the free stack, where only this thread touches
//! its memory, or on the TX ring / in the kernel until the completion ring
//! hands it back to the free stack. Frames are written only while on the
//! free stack, right before they are produced.

use std::io;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use super::signals::{wait, StopSignals};
use super::Output;
use crate::endpoint::format_mac;
use crate::harness::traffic::{AddrRange, FrameFactory, GenSpec, PortRange};

/// Transmit and completion ring size, and UMEM frames (twice that).
const TX_RING: u32 = 2048;
/// Copy mode moves at most 32 frames per kick; enough kicks for a full ring.
const MAX_KICKS: u32 = TX_RING / 32;
/// Transmit with frames outstanding and none completing for this long is a
/// stall (the link went down, the driver stopped).
const STALL_NS: u64 = 2_000_000_000;
/// Longest sleep between checks of the clock, the count and the progress
/// line (a stop signal ends any sleep at once).
const MAX_SLEEP_NS: u64 = 200_000_000;
/// Binds retried, 10 ms apart, while the queue is busy (see `Tx::bind`).
const BUSY_RETRIES: u32 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BindMode {
    /// The kernel copies each frame into an skb (every driver, veth too).
    Copy,
    /// The driver transmits straight from the UMEM (needs driver support;
    /// veth has none).
    Zerocopy,
}

impl BindMode {
    fn name(self) -> &'static str {
        match self {
            BindMode::Copy => "copy",
            BindMode::Zerocopy => "zerocopy",
        }
    }
}

/// `--dst-mac`: a MAC or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DstMac {
    Auto,
    Mac([u8; 6]),
}

fn parse_dst_mac(s: &str) -> Result<DstMac, String> {
    if s == "auto" {
        return Ok(DstMac::Auto);
    }
    parse_mac(s).map(DstMac::Mac)
}

/// `aa:bb:cc:dd:ee:ff`.
fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("`{s}` is not a MAC address (aa:bb:cc:dd:ee:ff)");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    match parts.next() {
        None => Ok(mac),
        Some(_) => Err(bad()),
    }
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Stops after --count frames or --duration seconds, whichever comes first \
(10 s when neither is given), or on SIGINT/SIGTERM; the summary is printed \
in every case. Every frame's UDP payload starts with `XPFG`, a sequence \
number, the send time (CLOCK_MONOTONIC ns) and the flow index, which \
`xpf sink` reads. Needs root (AF_XDP).")]
pub(super) struct GenArgs {
    /// Device to transmit on.
    #[arg(long, value_name = "IFACE")]
    dev: String,
    /// Destination MAC, or `auto`: the neighbour entry of --dev's default
    /// gateway (of --dst's family), such as the permanent entry an xpf
    /// endpoint has for its gateway.
    #[arg(long, value_name = "MAC|auto", value_parser = parse_dst_mac)]
    dst_mac: DstMac,
    /// Source MAC [default: --dev's own].
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    src_mac: Option<[u8; 6]>,
    /// Source addresses: `A`, `A-B` or a CIDR prefix [default: --dev's first
    /// global address of --dst's family].
    #[arg(long, value_name = "RANGE")]
    src: Option<AddrRange>,
    /// Destination addresses: `A`, `A-B` or a CIDR prefix.
    #[arg(long, value_name = "RANGE")]
    dst: AddrRange,
    /// UDP source ports: `P` or `A-B`.
    #[arg(long, value_name = "RANGE", default_value = "9")]
    sport: PortRange,
    /// UDP destination ports: `P` or `A-B`.
    #[arg(long, value_name = "RANGE", default_value = "9")]
    dport: PortRange,
    /// Distinct 5-tuples spread over the ranges; frames go to them in turn.
    #[arg(long, value_name = "N", default_value_t = 1)]
    flows: u32,
    /// Ethernet frame size without FCS [default: 66 for IPv4, 86 for IPv6,
    /// the smallest that holds the payload header].
    #[arg(long, value_name = "BYTES")]
    size: Option<usize>,
    /// Frames per second; 0 sends as fast as the socket takes them.
    #[arg(long, value_name = "PPS", default_value_t = 0)]
    rate: u64,
    /// Stop after this many frames.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this many seconds [default: 10 unless --count is given].
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// AF_XDP bind mode.
    #[arg(long, value_enum, default_value_t = BindMode::Copy)]
    bind: BindMode,
    /// Frames written and put on the TX ring at once.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch: u32,
    /// Device queue to bind.
    #[arg(long, value_name = "Q", default_value_t = 0)]
    queue: u32,
    /// Pin to this CPU.
    #[arg(long, value_name = "N")]
    cpu: Option<usize>,
    /// Print `gen: <pps> pps` to stderr every second.
    #[arg(long)]
    progress: bool,
    /// The summary as `text` or one `json` object.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub(super) fn gen(args: GenArgs) -> Result<()> {
    let duration_ns = match (args.duration, args.count) {
        (Some(d), _) if !(d > 0.0 && d <= 1e9) => {
            bail!("--duration must be a positive number of seconds")
        }
        (Some(d), _) => Some((d * 1e9) as u64),
        (None, Some(_)) => None,
        (None, None) => Some(10_000_000_000),
    };
    if args.count == Some(0) {
        bail!("--count must be at least 1");
    }
    let ipv4 = args.dst.is_ipv4();
    let dev = device(&args.dev)?;
    if !dev.up {
        bail!(
            "--dev {}: the device is down (ip link set {} up)",
            args.dev,
            args.dev
        );
    }
    let src = match args.src {
        Some(s) => s,
        None => AddrRange::single(device_address(&args.dev, ipv4)?),
    };
    let dst_mac = match args.dst_mac {
        DstMac::Mac(m) => m,
        DstMac::Auto => gateway_mac(&args.dev, ipv4)?,
    };
    let size = args.size.unwrap_or(GenSpec::min_size(ipv4).max(64));
    if size > dev.mtu + 14 {
        bail!(
            "--size {size} is larger than {} can send: MTU {} plus the 14-byte Ethernet header",
            args.dev,
            dev.mtu
        );
    }
    let spec = GenSpec {
        src_mac: args.src_mac.unwrap_or(dev.mac),
        dst_mac,
        src,
        dst: args.dst,
        sport: args.sport,
        dport: args.dport,
        flows: args.flows,
        size,
    };
    let factory = FrameFactory::new(&spec)?;
    if let Some(cpu) = args.cpu {
        pin(cpu)?;
    }
    let mut tx = Tx::bind(&args.dev, args.queue, args.bind, size)?;
    let dropped_before = device_tx_dropped(&args.dev);
    eprintln!(
        "gen: {} queue {} ({} mode): {} -> {} ({}), udp {} -> {}, {} flow{}, {size}-byte frames, {}",
        args.dev,
        args.queue,
        args.bind.name(),
        spec.src,
        spec.dst,
        format_mac(&dst_mac),
        spec.sport,
        spec.dport,
        spec.flows,
        if spec.flows == 1 { "" } else { "s" },
        if args.rate == 0 {
            "as fast as possible".to_string()
        } else {
            format!("{} pps", args.rate)
        },
    );

    let signals = StopSignals::new().context("blocking SIGINT and SIGTERM")?;
    let run = Run {
        factory: &factory,
        batch: u64::from(args.batch),
        count: args.count,
        duration_ns,
        rate: args.rate,
        progress: args.progress,
    };
    let result = run.go(&mut tx, &signals);
    let dropped = match (dropped_before, device_tx_dropped(&args.dev)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let done = result.with_context(|| format!("transmitting on {}", args.dev))?;
    let pps = if done.seconds > 0.0 {
        done.sent as f64 / done.seconds
    } else {
        0.0
    };
    match args.output {
        Output::Json => println!(
            "{}",
            json!({
                "sent": done.sent,
                "seconds": done.seconds,
                "pps": pps,
                "dev": args.dev,
                "queue": args.queue,
                "bind": args.bind.name(),
                "size": size,
                "flows": spec.flows,
                "rate": args.rate,
                "interrupted": done.interrupted,
                "device_tx_dropped": dropped,
            })
        ),
        Output::Text => {
            println!(
                "gen: sent {} frames in {:.3} s: {:.0} pps ({}, {size} bytes, {} flow{}, rate {}, {} mode){}",
                done.sent,
                done.seconds,
                pps,
                args.dev,
                spec.flows,
                if spec.flows == 1 { "" } else { "s" },
                if args.rate == 0 {
                    "unlimited".to_string()
                } else {
                    format!("{} pps", args.rate)
                },
                args.bind.name(),
                if done.interrupted { ", interrupted" } else { "" },
            );
            if let Some(d) = dropped.filter(|d| *d > 0) {
                println!(
                    "gen: {} dropped {d} frames on transmit (all senders)",
                    args.dev
                );
            }
        }
    }
    Ok(())
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the payload timestamps.
pub(super) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread to `cpu`.
pub(super) fn pin(cpu: usize) -> Result<()> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let Some(core) = ids.iter().find(|c| c.id == cpu) else {
        let have: Vec<String> = ids.iter().map(|c| c.id.to_string()).collect();
        bail!(
            "--cpu {cpu}: no such CPU (this process may use {})",
            have.join(", ")
        );
    };
    if !core_affinity::set_for_current(*core) {
        bail!("--cpu {cpu}: cannot pin to it");
    }
    Ok(())
}

/// One AF_XDP socket used only to transmit, its UMEM and free frames.
struct Tx {
    umem: Umem,
    tx: TxQueue,
    comp: CompQueue,
    // Never used, but they hold the socket's fill and RX rings mapped for
    // as long as the socket lives.
    _rx: RxQueue,
    _fill: FillQueue,
    /// Frames userspace holds (see the module documentation).
    free: Vec<FrameDesc>,
    /// Completion batch buffer.
    scratch: Vec<FrameDesc>,
    /// Frames on the TX ring or in the kernel.
    in_flight: u64,
    /// Frames the kernel completed (transmitted or dropped by the driver).
    completed: u64,
    size: usize,
}

impl Tx {
    fn bind(dev: &str, queue: u32, mode: BindMode, size: usize) -> Result<Self> {
        let qsize = |n: u32| QueueSize::new(n).map_err(|e| anyhow!("ring size {n}: {e}"));
        // The UMEM frame also holds the kernel's 256-byte XDP headroom.
        let frame_size = if size + 256 <= 2048 { 2048 } else { 4096 };
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(frame_size).map_err(|e| anyhow!("frame size: {e}"))?)
            .fill_queue_size(qsize(64)?)
            .comp_queue_size(qsize(TX_RING)?)
            .build()
            .map_err(|e| anyhow!("UMEM config: {e}"))?;
        if size > umem_config.mtu() as usize {
            bail!(
                "--size {size}: AF_XDP frames hold at most {} bytes",
                umem_config.mtu()
            );
        }
        let frames = NonZeroU32::new(2 * TX_RING).expect("non-zero");
        let (umem, free) = Umem::new(umem_config, frames, false).map_err(|e| {
            anyhow!(
                "cannot create a UMEM of {frames} frames of {frame_size} bytes: {e}{}",
                source_text(&e)
            )
        })?;
        let flags = match mode {
            BindMode::Copy => BindFlags::XDP_COPY,
            BindMode::Zerocopy => BindFlags::XDP_ZEROCOPY,
        };
        let config = SocketConfig::builder()
            .rx_queue_size(qsize(64)?)
            .tx_queue_size(qsize(TX_RING)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(flags | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let ifname: Interface = dev
            .parse()
            .map_err(|_| anyhow!("--dev `{dev}`: not an interface name"))?;
        // The kernel lets go of a closed socket's queue a moment after the
        // close (deferred work), so a run right after another gets EBUSY
        // for a few milliseconds: retry for a while before blaming anyone.
        let mut busy_retries = 0;
        let bound = loop {
            // SAFETY: libxdp's program loading is inhibited; the UMEM is not
            // shared with any other socket.
            let r = unsafe { xsk_rs::Socket::new(config, &umem, &ifname, queue) };
            match r {
                Err(e) if errno_of(&e) == Some(libc::EBUSY) && busy_retries < BUSY_RETRIES => {
                    busy_retries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => break r,
            }
        };
        let (tx, rx, rings) = match bound {
            Ok(b) => b,
            Err(e) => {
                let errno = errno_of(&e);
                let os = errno.map(io::Error::from_raw_os_error);
                let why = os.as_ref().map_or(e.to_string(), |o| o.to_string());
                match (mode, errno) {
                    (_, Some(libc::EPERM)) => {
                        bail!("cannot create an AF_XDP socket on {dev} ({why}): xpf gen needs root")
                    }
                    (BindMode::Zerocopy, Some(libc::EOPNOTSUPP | libc::EINVAL)) => bail!(
                        "--bind zerocopy: {dev} queue {queue}: its driver has no AF_XDP \
                         zero-copy support ({why}); veth has none: use --bind copy"
                    ),
                    (_, Some(libc::EBUSY)) => bail!(
                        "cannot bind an AF_XDP socket to {dev} queue {queue} ({why}): another \
                         AF_XDP socket holds that queue (or one closed a moment ago)"
                    ),
                    (_, Some(libc::EINVAL)) => bail!(
                        "--queue {queue}: cannot bind an AF_XDP socket to {dev} queue {queue} \
                         ({} mode): {why} (does {dev} have that queue?)",
                        mode.name()
                    ),
                    _ => bail!(
                        "cannot bind an AF_XDP socket to {dev} queue {queue} ({} mode): {why}",
                        mode.name()
                    ),
                }
            }
        };
        let (fill, comp) = rings.ok_or_else(|| anyhow!("{dev} queue {queue}: already bound"))?;
        let scratch = vec![free[0]; TX_RING as usize];
        Ok(Self {
            umem,
            tx,
            comp,
            _rx: rx,
            _fill: fill,
            free,
            scratch,
            in_flight: 0,
            completed: 0,
            size,
        })
    }

    /// Moves completed frames to the free stack; returns how many.
    fn reap(&mut self) -> u64 {
        // SAFETY: completed descriptors are ours again.
        let n = unsafe { self.comp.consume(&mut self.scratch) };
        self.free.extend_from_slice(&self.scratch[..n]);
        self.in_flight -= n as u64;
        self.completed += n as u64;
        n as u64
    }

    /// Writes `n` frames (sequence numbers from `seq`, flows in turn) and
    /// puts them on the TX ring; returns how many went on.
    fn produce(&mut self, factory: &FrameFactory, n: usize, seq: u64, ts_ns: u64) -> u64 {
        let flows = factory.flows();
        let mut flow = (seq % u64::from(flows)) as u32;
        let at = self.free.len() - n;
        for (k, desc) in self.free[at..].iter_mut().enumerate() {
            // SAFETY: `desc` is on the free stack: no ring holds it and only
            // this thread touches its memory.
            let mut data = unsafe { self.umem.data_mut(desc) };
            // Sets the frame length; `write` then fills all of it.
            data.cursor().set_pos(self.size);
            factory.write(data.contents_mut(), flow, seq + k as u64, ts_ns);
            flow += 1;
            if flow == flows {
                flow = 0;
            }
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
    fn kick(&mut self) -> io::Result<()> {
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

/// What a run is asked to do.
struct Run<'a> {
    factory: &'a FrameFactory,
    batch: u64,
    count: Option<u64>,
    duration_ns: Option<u64>,
    rate: u64,
    progress: bool,
}

/// What a run did.
struct Done {
    sent: u64,
    seconds: f64,
    interrupted: bool,
}

impl Run<'_> {
    fn go(&self, tx: &mut Tx, signals: &StopSignals) -> Result<Done> {
        let start = monotonic_ns();
        let deadline = self.duration_ns.map(|d| start + d);
        let mut pacer = (self.rate > 0).then(|| Pacer::new(self.rate, self.batch, start));
        let mut seq = 0u64;
        let mut interrupted = false;
        let mut last_completion = start;
        let (mut tick_at, mut tick_sent) = (start, 0u64);
        loop {
            if signals.fired() {
                interrupted = true;
                break;
            }
            let now = monotonic_ns();
            if deadline.is_some_and(|d| now >= d) {
                break;
            }
            let remaining = self.count.map_or(u64::MAX, |c| c - seq);
            if remaining == 0 {
                break;
            }
            if self.progress && now - tick_at >= 1_000_000_000 {
                let pps = (tx.completed - tick_sent) as f64 * 1e9 / (now - tick_at) as f64;
                eprintln!("gen: {pps:.0} pps");
                (tick_at, tick_sent) = (now, tx.completed);
            }
            if tx.reap() > 0 {
                last_completion = now;
            }
            let mut want = self.batch.min(remaining).min(tx.free.len() as u64);
            if let Some(p) = &mut pacer {
                let burst = want.min(p.burst);
                let due = p.due(now, seq);
                if due < burst.max(1) {
                    let mut wake = p.due_at(seq + burst.max(1) - 1);
                    if let Some(d) = deadline {
                        wake = wake.min(d);
                    }
                    let ns = wake.saturating_sub(now).min(MAX_SLEEP_NS);
                    if tx.in_flight > 0 {
                        tx.kick()?;
                    }
                    if ns > 0 && signals.sleep(ns) {
                        interrupted = true;
                        break;
                    }
                    continue;
                }
                want = want.min(due);
            }
            if want == 0 {
                // Every frame is in flight: wait for completions.
                tx.kick()?;
                if tx.free.is_empty() {
                    if now - last_completion > STALL_NS {
                        bail!(
                            "transmit stalled: no frame completed for {} s (is the link up?)",
                            STALL_NS / 1_000_000_000
                        );
                    }
                    let mut fds = [libc::pollfd {
                        fd: tx.tx.fd().as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    }];
                    wait(&mut fds, 1_000_000);
                }
                continue;
            }
            let ts = monotonic_ns();
            seq += tx.produce(self.factory, want as usize, seq, ts);
            let before = tx.completed;
            tx.kick()?;
            if tx.completed > before {
                last_completion = monotonic_ns();
            }
        }
        // Let what is on the ring go out (copy mode: at once).
        let drain_until = monotonic_ns() + 1_000_000_000;
        while tx.in_flight > 0 && monotonic_ns() < drain_until {
            let before = tx.completed;
            tx.kick()?;
            if tx.completed > before {
                last_completion = monotonic_ns();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let end = if tx.completed > 0 {
            last_completion
        } else {
            monotonic_ns()
        };
        Ok(Done {
            sent: tx.completed,
            seconds: end.saturating_sub(start) as f64 / 1e9,
            interrupted,
        })
    }
}

/// Frame `k` of a paced run is due at `start + k / rate`. Frames go out in
/// bursts of up to a millisecond's worth (at most a batch), and a run that
/// falls behind (a slow machine, a stopped process) catches up by at most
/// `max_lag` frames at once instead of the whole debt.
struct Pacer {
    start_ns: u64,
    interval_ns: f64,
    burst: u64,
    max_lag: u64,
}

impl Pacer {
    fn new(rate: u64, batch: u64, now: u64) -> Self {
        Self {
            start_ns: now,
            interval_ns: 1e9 / rate as f64,
            burst: (rate / 1000).clamp(1, batch),
            max_lag: (rate / 100).max(4 * batch),
        }
    }

    /// How many frames beyond the `sent` ones are due at `now`.
    fn due(&mut self, now: u64, sent: u64) -> u64 {
        let elapsed = now.saturating_sub(self.start_ns) as f64;
        let allowed = (elapsed / self.interval_ns) as u64 + 1;
        if allowed > sent + self.max_lag {
            let behind = ((sent + self.max_lag - 1) as f64 * self.interval_ns) as u64;
            self.start_ns = now.saturating_sub(behind);
            return self.max_lag;
        }
        allowed.saturating_sub(sent)
    }

    /// When frame `k` is due.
    fn due_at(&self, k: u64) -> u64 {
        self.start_ns + (k as f64 * self.interval_ns) as u64
    }
}

/// The OS error under an xsk-rs error, if any.
fn errno_of(e: &dyn std::error::Error) -> Option<i32> {
    e.source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error)
}

fn source_text(e: &dyn std::error::Error) -> String {
    e.source().map(|s| format!(": {s}")).unwrap_or_default()
}

/// `ip ARGS` with JSON output, in this process's network namespace.
fn ip_json(args: &[&str]) -> Result<Value, String> {
    crate::sys::ip::json(args).map_err(|e| e.stderr().map_or_else(|| e.to_string(), str::to_string))
}

struct Device {
    mac: [u8; 6],
    mtu: usize,
    up: bool,
}

fn device(dev: &str) -> Result<Device> {
    let v = ip_json(&["link", "show", "dev", dev])
        .map_err(|e| anyhow!("--dev {dev}: no such device in this network namespace ({e})"))?;
    let link = &v[0];
    let mac = link["address"]
        .as_str()
        .and_then(|m| parse_mac(m).ok())
        .ok_or_else(|| anyhow!("--dev {dev}: not an Ethernet device (no MAC address)"))?;
    let mtu = link["mtu"].as_u64().unwrap_or(1500) as usize;
    let up = link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    Ok(Device { mac, mtu, up })
}

/// The device's transmit drop counter (a veth counts frames its peer
/// could not take).
fn device_tx_dropped(dev: &str) -> Option<u64> {
    let v = ip_json(&["-s", "link", "show", "dev", dev]).ok()?;
    v[0]["stats64"]["tx"]["dropped"].as_u64()
}

/// The device's first address of a family, global scope preferred.
fn device_address(dev: &str, ipv4: bool) -> Result<IpAddr> {
    let family = if ipv4 { "inet" } else { "inet6" };
    let v = ip_json(&["addr", "show", "dev", dev]).map_err(|e| anyhow!("--dev {dev}: {e}"))?;
    let addrs: Vec<(IpAddr, bool)> = v[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["family"] == family)
        .filter_map(|a| {
            let ip = a["local"].as_str()?.parse().ok()?;
            Some((ip, a["scope"] == "global"))
        })
        .collect();
    addrs
        .iter()
        .find(|(_, global)| *global)
        .or(addrs.first())
        .map(|(ip, _)| *ip)
        .ok_or_else(|| {
            anyhow!(
                "--src is needed: {dev} has no {} address to default to",
                if ipv4 { "IPv4" } else { "IPv6" }
            )
        })
}

/// `--dst-mac auto`: the MAC of the neighbour entry of `dev`'s default
/// gateway.
fn gateway_mac(dev: &str, ipv4: bool) -> Result<[u8; 6]> {
    let family = if ipv4 { "-4" } else { "-6" };
    let routes = ip_json(&[family, "route", "show", "default", "dev", dev])
        .map_err(|e| anyhow!("--dst-mac auto: {e}"))?;
    let gateway: IpAddr = routes
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|r| r["gateway"].as_str()?.parse().ok())
        .ok_or_else(|| {
            anyhow!(
                "--dst-mac auto: {dev} has no {} default route through a gateway; pass --dst-mac MAC",
                if ipv4 { "IPv4" } else { "IPv6" }
            )
        })?;
    let neighbours = ip_json(&[family, "neigh", "show", "dev", dev])
        .map_err(|e| anyhow!("--dst-mac auto: {e}"))?;
    neighbours
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["dst"].as_str().and_then(|d| d.parse::<IpAddr>().ok()) == Some(gateway))
        .find_map(|n| parse_mac(n["lladdr"].as_str()?).ok())
        .ok_or_else(|| {
            anyhow!(
                "--dst-mac auto: no neighbour entry with a MAC for gateway {gateway} on {dev}; \
                 add one (ip neigh replace {gateway} lladdr MAC nud permanent dev {dev}) \
                 or pass --dst-mac MAC"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("02:00:0a:FF:00:01"), Ok([2, 0, 10, 255, 0, 1]));
        assert!(parse_mac("02:00:0a:ff:00").is_err());
        assert!(parse_mac("02:00:0a:ff:00:01:02").is_err());
        assert!(parse_mac("2:0:a:ff:0:1").is_err());
        assert_eq!(parse_dst_mac("auto"), Ok(DstMac::Auto));
    }

    #[test]
    fn pacing_spreads_frames_and_bounds_catching_up() {
        // 1000 pps from t=0: frame k is due at k ms.
        let mut p = Pacer::new(1000, 64, 0);
        assert_eq!(p.burst, 1);
        assert_eq!(p.due(0, 0), 1);
        assert_eq!(p.due(0, 1), 0);
        assert_eq!(p.due_at(1), 1_000_000);
        assert_eq!(p.due(5_500_000, 1), 5);
        // A long stall: at most max_lag frames at once, then on schedule.
        let lag = p.max_lag;
        assert_eq!(p.due(10_000_000_000, 6), lag);
        assert_eq!(p.due(10_000_000_000, 6 + lag), 0);
        assert_eq!(p.due(10_001_000_000, 6 + lag), 1);
        // Fast rates burst up to a batch.
        assert_eq!(Pacer::new(10_000_000, 64, 0).burst, 64);
        assert_eq!(Pacer::new(20_000, 64, 0).burst, 20);
    }
}
