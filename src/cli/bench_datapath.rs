//! `xpf bench datapath`: its flags, and the packet-rate benchmark
//! (`crate::harness::bench`) run under blocked stop signals.

use std::path::PathBuf;

use anyhow::Result;

use crate::harness::bench::{datapath, DatapathOptions};

#[derive(clap::Args, Debug)]
pub(super) struct BenchArgs {
    /// The middle point of each kind, endpoint to endpoint and to the
    /// outside at saturation (a few minutes), without the 40 kpps CPU
    /// comparisons and the sweeps over ipcache size, rules, flows, frame
    /// size and workers.
    #[arg(long)]
    quick: bool,
    /// Seconds each measurement sends for [default: 5, or 3 with --quick].
    #[arg(long)]
    seconds: Option<u64>,
    /// Where latest.json, latest.md and the plots are written.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

pub(super) fn bench(args: BenchArgs) -> Result<()> {
    // Ctrl-C reaches the children too (one process group): they stop and
    // clean up, this process sees their failure and unwinds, removing the
    // testbed. Blocked here, it cannot kill this process half-way.
    let signals = super::signals::StopSignals::new()?;
    let opts = DatapathOptions {
        quick: args.quick,
        seconds: args.seconds,
        out: args.out,
    };
    datapath(&opts, &|| signals.fired())
}
