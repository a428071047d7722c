//! `xpf gen`: a transmit-only AF_XDP traffic generator with pktgen-like
//! options. This module maps the options onto
//! [`crate::harness::traffic::Generator`], which does the work, and blocks
//! the stop signals once the socket is bound.

use std::os::fd::RawFd;

use anyhow::{Context, Result};

use super::signals::{wait, StopSignals};
use super::Output;
use crate::datapath::xsk;
use crate::harness::traffic::tx::{parse_dst_mac, parse_mac};
use crate::harness::traffic::{AddrRange, DstMac, GenOptions, Generator, PortRange, Stop};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BindMode {
    /// The kernel copies each frame into an skb (every driver, veth too).
    Copy,
    /// The driver transmits straight from the UMEM (needs driver support;
    /// veth has none).
    Zerocopy,
}

impl From<BindMode> for xsk::BindMode {
    fn from(mode: BindMode) -> Self {
        match mode {
            BindMode::Copy => xsk::BindMode::Copy,
            BindMode::Zerocopy => xsk::BindMode::ZeroCopy,
        }
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
    let generator = Generator::new(GenOptions {
        dev: args.dev,
        dst_mac: args.dst_mac,
        src_mac: args.src_mac,
        src: args.src,
        dst: args.dst,
        sport: args.sport,
        dport: args.dport,
        flows: args.flows,
        size: args.size,
        rate: args.rate,
        count: args.count,
        duration: args.duration,
        bind: args.bind.into(),
        batch: args.batch,
        queue: args.queue,
        cpu: args.cpu,
        progress: args.progress,
        json: args.output == Output::Json,
    })?;
    let signals = StopSignals::new().context("blocking SIGINT and SIGTERM")?;
    generator.run(&signals)
}

/// The harness's runs (`xpf gen`, `xpf sink`) stop on SIGINT and SIGTERM.
impl Stop for StopSignals {
    fn fired(&self) -> bool {
        StopSignals::fired(self)
    }

    fn sleep(&self, ns: u64) -> bool {
        StopSignals::sleep(self, ns)
    }

    fn wait(&self, fd: RawFd, events: i16, ns: u64) {
        let mut fds = [
            libc::pollfd {
                fd,
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: self.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        wait(&mut fds, ns);
    }
}
