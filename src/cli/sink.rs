//! `xpf sink`: counts what arrives on a device and keeps the generator's
//! books. This module maps the options onto
//! [`crate::harness::traffic::Sink`], which does the work, and blocks the
//! stop signals once the socket is bound.

use anyhow::Result;

use super::signals::StopSignals;
use super::Output;
use crate::harness::traffic::{Sink, SinkOptions};

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
    let sink = Sink::new(SinkOptions {
        dev: args.dev,
        duration: args.duration,
        interval: args.interval,
        json: args.output == Output::Json,
        cpu: args.cpu,
    })?;
    let signals = StopSignals::new()?;
    sink.run(&signals)
}
