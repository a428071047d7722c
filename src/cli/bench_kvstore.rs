//! `xpf bench kvstore`: its flags checked, then the cluster-mode benchmark
//! (`crate::harness::bench::kvstore`) run under blocked stop signals and
//! its report printed.

use super::*;
use crate::harness::bench::kvstore::{run, KvstoreOptions};
use crate::kvstore::identities::{FIRST, LAST};

#[derive(clap::Args, Debug)]
pub(super) struct KvstoreArgs {
    /// The etcd to measure: unix:///ABS/PATH or http://HOST:PORT. It must
    /// hold none of what the bench writes (it refuses otherwise); all of
    /// that is deleted when the bench ends. The latency part's `xpf run`
    /// is in a private namespace: a loopback address does not reach it.
    #[arg(long, value_name = "ENDPOINT")]
    etcd: String,
    /// Remote ipcache entries the fake node publishes (half /32, half
    /// /128).
    #[arg(long, default_value_t = 100_000)]
    entries: usize,
    /// Put-then-delete events of the latency part.
    #[arg(long, default_value_t = 100)]
    events: usize,
    /// Identities the entries are spread over.
    #[arg(long, default_value_t = 1_000)]
    identities: usize,
    /// Label sets each host allocates in the allocation part.
    #[arg(long, default_value_t = 500)]
    allocations: usize,
    /// Skip the latency part (the one that needs root).
    #[arg(long)]
    skip_latency: bool,
    /// `text` for people, `json` for scripts (the text goes to stderr then).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub(super) fn bench(args: KvstoreArgs) -> Result<()> {
    let e = &args.etcd;
    if !(e.starts_with("unix:///") || e.starts_with("http://")) {
        bail!("--etcd `{e}` is not unix:///ABS/PATH or http://HOST:PORT");
    }
    if args.entries == 0 || args.identities == 0 || args.allocations == 0 {
        bail!("--entries, --identities and --allocations must be at least 1");
    }
    let ids = args.identities + 2 * args.allocations + ROOM;
    if ids > (LAST - FIRST + 1) as usize {
        bail!(
            "--identities plus twice --allocations ({ids} with what the bench's hosts take) \
             exceeds the {} cluster identities",
            LAST - FIRST + 1
        );
    }
    if !args.skip_latency {
        if args.events == 0 {
            bail!("--events must be at least 1 (or --skip-latency)");
        }
        require_root("xpf bench kvstore (without --skip-latency)")?;
        let loopback = ["http://127.", "http://localhost", "http://[::1]"];
        if loopback.iter().any(|l| e.starts_with(l)) {
            bail!(
                "--etcd {e}: the latency part's xpf run is in a private namespace, where this \
                 loopback address is not the store's; use a unix:// endpoint or --skip-latency"
            );
        }
    }
    // A stop reaches the xpf child too (one process group); blocked here,
    // it unwinds this process, which removes what it made.
    let signals = super::signals::StopSignals::new()?;
    let report = run(
        &KvstoreOptions {
            etcd: args.etcd,
            entries: args.entries,
            identities: args.identities,
            events: (!args.skip_latency).then_some(args.events),
            allocations: args.allocations,
        },
        &|| signals.fired(),
    )?;
    match args.output {
        Output::Json => {
            eprint!("{report}");
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Output::Text => print!("{report}"),
    }
    std::io::stdout().flush().ok();
    Ok(())
}

/// Identities the bench's own hosts take besides those asked for (the
/// local endpoint, once per agent round and for `xpf run`; `db`).
const ROOM: usize = 16;
