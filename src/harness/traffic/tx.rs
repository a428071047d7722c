//! `xpf gen`'s run: the I/O around [`FrameFactory`]. It reads the device's
//! MAC, MTU, addresses and gateway through `ip -j` ([`crate::sys::ip`]),
//! transmits through one AF_XDP socket on (device, queue)
//! ([`TxXsk`]; no XDP program is needed to transmit), paces against
//! CLOCK_MONOTONIC, stops on the caller's [`Stop`], and prints the summary.
//! The JSON summary also has the CPU time spent while it sent: the whole
//! machine's busy time (`/proc/stat`, [`crate::sys::cputime`]) and its own,
//! which `xpf bench datapath` turns into CPU per packet. Its errors name
//! the `xpf gen` option at fault.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::{monotonic_ns, pin, AddrRange, FrameFactory, GenSpec, PortRange, Stop};
use crate::datapath::xsk::BindMode;
use crate::datapath::xsk::{TxXsk, TxXskError};
use crate::endpoint::format_mac;
use crate::sys::cputime;

/// Transmit with frames outstanding and none completing for this long is a
/// stall (the link went down, the driver stopped).
const STALL_NS: u64 = 2_000_000_000;
/// Longest sleep between checks of the clock, the count and the progress
/// line (a stop request ends any sleep at once).
const MAX_SLEEP_NS: u64 = 200_000_000;

/// `--dst-mac`: a MAC or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DstMac {
    Auto,
    Mac([u8; 6]),
}

/// `--dst-mac`: `auto` or a MAC.
pub fn parse_dst_mac(s: &str) -> Result<DstMac, String> {
    if s == "auto" {
        return Ok(DstMac::Auto);
    }
    parse_mac(s).map(DstMac::Mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
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

/// What `xpf gen` was asked to do (its options, one field each).
#[derive(Debug)]
pub struct GenOptions {
    pub dev: String,
    pub dst_mac: DstMac,
    pub src_mac: Option<[u8; 6]>,
    pub src: Option<AddrRange>,
    pub dst: AddrRange,
    pub sport: PortRange,
    pub dport: PortRange,
    pub flows: u32,
    pub size: Option<usize>,
    pub rate: u64,
    pub count: Option<u64>,
    pub duration: Option<f64>,
    /// Copy or zero-copy.
    pub bind: BindMode,
    pub batch: u32,
    pub queue: u32,
    pub cpu: Option<usize>,
    pub progress: bool,
    /// The summary as one JSON object rather than text.
    pub json: bool,
}

/// A generator set up and bound, ready to transmit.
pub struct Generator {
    args: GenOptions,
    spec: GenSpec,
    factory: FrameFactory,
    tx: TxXsk,
    duration_ns: Option<u64>,
    size: usize,
    dropped_before: Option<u64>,
}

impl Generator {
    /// Checks the options against the device, builds the frames, pins the
    /// thread and binds the socket; says on stderr what it will send.
    pub fn new(args: GenOptions) -> Result<Self> {
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
        let tx = TxXsk::new(&args.dev, args.queue, args.bind, size)
            .map_err(|e| bind_error(e, &args, size))?;
        let dropped_before = device_tx_dropped(&args.dev);
        eprintln!(
            "gen: {} queue {} ({} mode): {} -> {} ({}), udp {} -> {}, {} flow{}, {size}-byte frames, {}",
            args.dev,
            args.queue,
            args.bind.as_str(),
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
        Ok(Self {
            args,
            spec,
            factory,
            tx,
            duration_ns,
            size,
            dropped_before,
        })
    }

    /// Transmits until the count, the duration or `stop`, then prints the
    /// summary on stdout.
    pub fn run(self, stop: &impl Stop) -> Result<()> {
        let Generator {
            args,
            spec,
            factory,
            mut tx,
            duration_ns,
            size,
            dropped_before,
        } = self;
        let run = Run {
            factory: &factory,
            batch: u64::from(args.batch),
            count: args.count,
            duration_ns,
            rate: args.rate,
            progress: args.progress,
        };
        let result = run.go(&mut tx, stop);
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
        if args.json {
            println!(
                "{}",
                json!({
                    "sent": done.sent,
                    "seconds": done.seconds,
                    "pps": pps,
                    "dev": args.dev,
                    "queue": args.queue,
                    "bind": args.bind.as_str(),
                    "size": size,
                    "flows": spec.flows,
                    "rate": args.rate,
                    "interrupted": done.interrupted,
                    "device_tx_dropped": dropped,
                    "busy_window_ns": done.cpu.as_ref().map(|c| c.wall_ns),
                    "busy_cpu_ns": done.cpu.as_ref().map(|c| c.busy_ns),
                    "busy_cpu_ns_by_cpu": done.cpu.as_ref().map(|c| c.busy_ns_by_cpu.clone()),
                    "own_cpu_ns": done.cpu.as_ref().map(|c| c.own_ns),
                })
            );
        } else {
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
                args.bind.as_str(),
                if done.interrupted { ", interrupted" } else { "" },
            );
            if let Some(d) = dropped.filter(|d| *d > 0) {
                println!(
                    "gen: {} dropped {d} frames on transmit (all senders)",
                    args.dev
                );
            }
        }
        Ok(())
    }
}

/// A [`TxXsk`] error in `xpf gen`'s terms: the option at fault, or what to
/// do about it.
fn bind_error(e: TxXskError, args: &GenOptions, size: usize) -> anyhow::Error {
    let (dev, queue, mode) = (&args.dev, args.queue, args.bind);
    match e {
        TxXskError::FrameTooLong { mtu, .. } => {
            anyhow!("--size {size}: AF_XDP frames hold at most {mtu} bytes")
        }
        TxXskError::InterfaceName(_) => anyhow!("--dev `{dev}`: not an interface name"),
        TxXskError::Bind {
            errno,
            message: why,
            ..
        } => match (mode, errno) {
            (_, Some(libc::EPERM)) => {
                anyhow!("cannot create an AF_XDP socket on {dev} ({why}): xpf gen needs root")
            }
            (BindMode::ZeroCopy, Some(libc::EOPNOTSUPP | libc::EINVAL)) => anyhow!(
                "--bind zerocopy: {dev} queue {queue}: its driver has no AF_XDP \
                 zero-copy support ({why}); veth has none: use --bind copy"
            ),
            (_, Some(libc::EBUSY)) => anyhow!(
                "cannot bind an AF_XDP socket to {dev} queue {queue} ({why}): another \
                 AF_XDP socket holds that queue (or one closed a moment ago)"
            ),
            (_, Some(libc::EINVAL)) => anyhow!(
                "--queue {queue}: cannot bind an AF_XDP socket to {dev} queue {queue} \
                 ({} mode): {why} (does {dev} have that queue?)",
                mode.as_str()
            ),
            _ => anyhow!(
                "cannot bind an AF_XDP socket to {dev} queue {queue} ({} mode): {why}",
                mode.as_str()
            ),
        },
        e => e.into(),
    }
}

/// Writes `n` frames (sequence numbers from `seq`, flows in turn) and puts
/// them on the TX ring; returns how many went on.
fn produce(tx: &mut TxXsk, factory: &FrameFactory, n: usize, seq: u64, ts_ns: u64) -> u64 {
    let flows = factory.flows();
    let mut flow = (seq % u64::from(flows)) as u32;
    tx.produce(n, |k, frame| {
        factory.write(frame, flow, seq + k as u64, ts_ns);
        flow += 1;
        if flow == flows {
            flow = 0;
        }
    })
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
    /// The CPU time spent while it sent; `None` if `/proc/stat` was
    /// unreadable.
    cpu: Option<SendingCpu>,
}

/// CPU time over the sending window (first frame to the drained ring), for
/// `xpf bench datapath`'s CPU per packet: the whole machine's busy time
/// (`/proc/stat`), and this process's own.
struct SendingCpu {
    /// The window as the two `/proc/stat` readings bound it.
    wall_ns: u64,
    busy_ns: u64,
    busy_ns_by_cpu: Vec<u64>,
    own_ns: u64,
}

/// The counters [`SendingCpu`] is the difference of.
struct CpuMark {
    at_ns: u64,
    stat: cputime::StatTimes,
    own_ns: u64,
}

impl CpuMark {
    fn now() -> Option<Self> {
        let stat = cputime::stat().ok()?;
        Some(Self {
            at_ns: monotonic_ns(),
            stat,
            own_ns: cputime::own_process_ns(),
        })
    }

    fn since(&self, start: &CpuMark) -> SendingCpu {
        SendingCpu {
            wall_ns: self.at_ns.saturating_sub(start.at_ns),
            busy_ns: self.stat.all.since(&start.stat.all).busy_ns,
            busy_ns_by_cpu: self
                .stat
                .per_cpu
                .iter()
                .zip(&start.stat.per_cpu)
                .map(|(b, a)| b.since(a).busy_ns)
                .collect(),
            own_ns: self.own_ns.saturating_sub(start.own_ns),
        }
    }
}

impl Run<'_> {
    fn go(&self, tx: &mut TxXsk, stop: &impl Stop) -> Result<Done> {
        let cpu_start = CpuMark::now();
        let start = monotonic_ns();
        let deadline = self.duration_ns.map(|d| start + d);
        let mut pacer = (self.rate > 0).then(|| Pacer::new(self.rate, self.batch, start));
        let mut seq = 0u64;
        let mut interrupted = false;
        let mut last_completion = start;
        let (mut tick_at, mut tick_sent) = (start, 0u64);
        loop {
            if stop.fired() {
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
                let pps = (tx.completed() - tick_sent) as f64 * 1e9 / (now - tick_at) as f64;
                eprintln!("gen: {pps:.0} pps");
                (tick_at, tick_sent) = (now, tx.completed());
            }
            if tx.reap() > 0 {
                last_completion = now;
            }
            let mut want = self.batch.min(remaining).min(tx.free() as u64);
            if let Some(p) = &mut pacer {
                let burst = want.min(p.burst);
                let due = p.due(now, seq);
                if due < burst.max(1) {
                    let mut wake = p.due_at(seq + burst.max(1) - 1);
                    if let Some(d) = deadline {
                        wake = wake.min(d);
                    }
                    let ns = wake.saturating_sub(now).min(MAX_SLEEP_NS);
                    if tx.in_flight() > 0 {
                        tx.kick()?;
                    }
                    if ns > 0 && stop.sleep(ns) {
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
                if tx.free() == 0 {
                    if now - last_completion > STALL_NS {
                        bail!(
                            "transmit stalled: no frame completed for {} s (is the link up?)",
                            STALL_NS / 1_000_000_000
                        );
                    }
                    stop.wait(tx.fd(), libc::POLLOUT, 1_000_000);
                }
                continue;
            }
            let ts = monotonic_ns();
            seq += produce(tx, self.factory, want as usize, seq, ts);
            let before = tx.completed();
            tx.kick()?;
            if tx.completed() > before {
                last_completion = monotonic_ns();
            }
        }
        // Let what is on the ring go out (copy mode: at once).
        let drain_until = monotonic_ns() + 1_000_000_000;
        while tx.in_flight() > 0 && monotonic_ns() < drain_until {
            let before = tx.completed();
            tx.kick()?;
            if tx.completed() > before {
                last_completion = monotonic_ns();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let cpu = cpu_start.and_then(|a| Some(CpuMark::now()?.since(&a)));
        let end = if tx.completed() > 0 {
            last_completion
        } else {
            monotonic_ns()
        };
        Ok(Done {
            sent: tx.completed(),
            seconds: end.saturating_sub(start) as f64 / 1e9,
            interrupted,
            cpu,
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
