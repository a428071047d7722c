//! The `xpf` command line: one clap enum, one subcommand per thing a user
//! does. Errors become a message on stderr and exit status 2; a verdict,
//! whatever it is, exits 0.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod bench_classify;
mod bench_datapath;
mod bench_kvstore;
mod control;
mod demo;
mod endpoints;
mod gen;
mod inspect;
mod kvstore;
mod lifecycle;
mod run;
mod signals;
mod sink;

use bench_classify::bench_classify;
use inspect::{check, compile_cmd, identity_list, ipcache_list};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::config::Config;
use crate::engine::Engine;
use crate::identity::NumericIdentity;
use crate::kvstore::agent::Remotes;
use crate::policy::compile::{Code, CompiledPolicy, Segment};
use crate::policy::model::proto;
use crate::policy::Decision;

#[derive(Parser, Debug)]
#[command(
    name = "xpf",
    version,
    about = "Identity-based egress packet filter for veth endpoints on one Linux host",
    long_about = "xpf gives endpoints (network namespaces joined to the host by veth) security \
identities from their labels, maps addresses back to identities with an ipcache, and enforces \
CiliumNetworkPolicy / NetworkPolicy egress rules on every packet they send."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check and inspect policies without touching the network.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Security identities derived from the config.
    #[command(subcommand)]
    Identity(ListCommand),
    /// Cluster mode's key-value store (etcd, in Cilium's layout), named by
    /// the config's `kvstore:` section.
    #[command(subcommand)]
    Kvstore(KvstoreCommand),
    /// The ipcache (prefix to identity): derived from the config, or
    /// changed in a running xpf (runtime entries for integrations).
    #[command(subcommand)]
    Ipcache(IpcacheCommand),
    /// What the running xpf enforces: endpoints, workers, policy revision,
    /// table sizes, uptime and counters (asked through its API socket).
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// `text` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Watch what the running xpf decides, live, until interrupted: drops
    /// (with the reason) and policy verdicts (each new flow let through,
    /// each frame policy denied, with the policy and rule), with the
    /// 5-tuple and both identities and their labels.
    ///
    /// With `--output json`, one flow per line in Hubble's JSON shape
    /// (`flow.verdict`, `flow.drop_reason_desc`, `flow.IP`, `flow.l4`,
    /// `flow.source`/`flow.destination` with `identity` and `labels`, ...)
    /// plus an `xpf` object. Events a slow reader cannot take are lost, never
    /// waited for; a `lost_events` line says how many.
    Monitor {
        /// `drop`: dropped frames; `verdict`: policy verdicts; `all`.
        #[arg(long = "type", value_enum, default_value_t = MonitorType::All)]
        kind: MonitorType,
        /// Only events of the endpoint with this name.
        #[arg(long)]
        endpoint: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
        /// `text` for people, `json` (one flow per line) for scripts.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Make the running xpf read its config file again and apply the
    /// difference (ipcache entries, host addresses, endpoint labels,
    /// policy files), all or nothing: if anything is invalid, nothing
    /// changes, the old state keeps enforcing, and the reason is printed
    /// (exit 2). Returns once every worker uses the new state. SIGHUP to
    /// the daemon does the same. Adding or removing endpoints, and the
    /// datapath: section, still need a restart.
    Reload {
        #[command(flatten)]
        api: ApiArgs,
        /// `text` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Measure the policy core on this CPU (in memory, no traffic).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the filter: create the endpoints, attach XDP and TC, filter
    /// every frame they send until SIGINT or SIGTERM, then undo it all.
    ///
    /// Prints `xpf: ready` once every program is attached and every worker
    /// is polling, and the final counters (per endpoint and drop reason) at
    /// exit. Needs root.
    Run {
        /// The config file: endpoints, ipcache entries, policy paths and the
        /// `datapath:` section.
        #[arg(long, default_value = "xpf.yaml")]
        config: PathBuf,
        /// Print one line of per-worker and total rx/allowed/denied/tx
        /// packets per second every SECS seconds, with the conntrack entries
        /// and first-fragment verdicts held; with `--output json`, also a
        /// line `xpf: counters {...}` with every counter so far.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        stats_interval: Option<u64>,
        /// Final counters as `text` or `json`.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Benchmarking: apply this many ipcache updates per second while
        /// running (synthetic /128 entries in 2001:db8:ffff:ffff::/64, added
        /// and removed in turn, published every millisecond), to measure
        /// the rate the filter keeps under control-plane churn.
        #[arg(long, value_name = "UPDATES_PER_SEC", default_value_t = 0)]
        ipcache_churn: u64,
        /// Serve the control API here (a Unix socket, mode 0600) instead of
        /// /run/xpf/<instance>/api.sock. `xpf status`, `xpf reload` and
        /// `xpf ipcache upsert/delete` talk to it; so can
        /// `curl --unix-socket PATH http://xpf/v1/status`.
        #[arg(long, value_name = "PATH")]
        api: Option<PathBuf>,
        /// Serve Prometheus/OpenMetrics text on http://ADDR/metrics (e.g.
        /// 127.0.0.1:9090).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
    },
    /// Stop the `xpf run` of this network namespace (found through its
    /// lock under /run/xpf), and wait until it has exited.
    ///
    /// Without --keep-datapath it sends SIGTERM: xpf removes everything it
    /// made (namespaces, veths, the internal pair, pins, state). With
    /// --keep-datapath it sends SIGUSR2: xpf exits but leaves its programs
    /// attached and pinned, dropping everything endpoints send (counted
    /// `no_socket`), and its conntrack journal, so the next `xpf run` with
    /// the same config takes over without dropping established
    /// connections (upgrades, planned restarts). Needs root.
    Stop {
        /// Hand over instead of removing everything (SIGUSR2).
        #[arg(long)]
        keep_datapath: bool,
        /// Seconds to wait for the process to exit.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Remove everything a dead or handed-over `xpf run` left in this
    /// network namespace: the endpoints it created (adopted ones get back
    /// what xpf changed), xpf_net/xpf_host, its pinned programs and maps
    /// under /sys/fs/bpf/xpf and its state under /run/xpf. Refuses while
    /// an xpf runs here. With --config, the config's created endpoints are
    /// removed too even when no state describes them. Needs root.
    Cleanup {
        /// Also delete these endpoints (as `xpf endpoint delete` does).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Endpoint namespaces and veths, without running the filter (to start
    /// your own processes inside first). Needs root.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Build the example topology in private namespaces, run the filter,
    /// send real TCP and UDP between every pair over IPv4 and IPv6, print
    /// expected against observed verdicts and the drop counters, tear down.
    Demo {
        /// The config to demonstrate.
        #[arg(long, default_value = "examples/xpf.yaml")]
        config: PathBuf,
    },
    /// Transmit-only AF_XDP traffic generator with pktgen-like options
    /// (sequence number and timestamp in every payload).
    Gen(gen::GenArgs),
    /// Count what arrives on a device: rate, loss and reordering from the
    /// generator's sequence numbers, one-way latency from its timestamps.
    Sink(sink::SinkArgs),
}

#[derive(Subcommand, Debug)]
enum EndpointCommand {
    /// Create every endpoint of the config (namespace, veth, addresses,
    /// routes). They stay until `xpf endpoint delete`.
    Create {
        /// The config file whose `endpoints` to create.
        #[arg(long, default_value = "xpf.yaml")]
        config: PathBuf,
    },
    /// Delete the namespaces (and with them the veths) of the config's
    /// endpoints, and whatever else a dead `xpf run` left here (as `xpf
    /// cleanup` does). Endpoints marked `attach: existing` are left alone.
    /// Refuses while an xpf runs in this network namespace.
    Delete {
        /// The config file whose `endpoints` to delete.
        #[arg(long, default_value = "xpf.yaml")]
        config: PathBuf,
    },
    /// Add an endpoint to the running xpf (for a container runtime or VM
    /// manager): its namespace (named after it) and veth are created,
    /// sockets bound, and it is enforced as its labels and the policies
    /// say, until `xpf endpoint remove` or the daemon stops. The datapath
    /// restarts through its takeover path to take it in: established flows
    /// stay, and what endpoints send in the gap is dropped (fail-closed)
    /// and counted. Exit 2 with the reason if refused; nothing changes
    /// then.
    Add {
        /// The endpoint's name (also its namespace's, and its veth's
        /// stem): 1-15 of a-z, 0-9, '-', '_'.
        #[arg(long)]
        name: String,
        /// Its labels, `key=value[,key=value...]`.
        #[arg(long, value_name = "K=V,...")]
        labels: String,
        /// Its IPv4 address.
        #[arg(long)]
        ipv4: Option<std::net::Ipv4Addr>,
        /// Its IPv6 address.
        #[arg(long)]
        ipv6: Option<std::net::Ipv6Addr>,
        #[command(flatten)]
        api: ApiArgs,
        /// `text` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Remove an endpoint added with `xpf endpoint add` from the running
    /// xpf; its namespace and veth are deleted.
    Remove {
        /// The endpoint's name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
        /// `text` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show which of the config's endpoints exist.
    List {
        /// The config file whose `endpoints` to look for.
        #[arg(long, default_value = "xpf.yaml")]
        config: PathBuf,
        /// A table as `text`, or `json`.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// The egress verdict for one packet, and why.
    ///
    /// Exit status 0 whatever the verdict; 2 on bad input.
    Check {
        /// The config file: endpoints, ipcache entries, policy paths.
        #[arg(long, default_value = "xpf.yaml")]
        config: PathBuf,
        /// Sending endpoint (its `name` in the config).
        #[arg(long)]
        from: String,
        /// Destination address (IPv4 or IPv6).
        #[arg(long)]
        to: IpAddr,
        /// Destination port (tcp, udp, sctp).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
        /// Protocol; defaults to tcp, or icmp/icmpv6 when --icmp-type is given.
        #[arg(long, value_enum)]
        proto: Option<Proto>,
        /// ICMP or ICMPv6 type (default: echo request, 8 or 128).
        #[arg(long)]
        icmp_type: Option<u8>,
        /// `text` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Every endpoint's compiled egress table.
    Compile {
        /// The config file: endpoints, ipcache entries, policy paths.
        #[arg(long, default_value = "xpf.yaml")]
        config: PathBuf,
        /// `text` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
enum ListCommand {
    /// List what was derived.
    List {
        /// The config file: endpoints, ipcache entries, policy paths.
        #[arg(long, default_value = "xpf.yaml")]
        config: PathBuf,
        /// `text` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
enum KvstoreCommand {
    /// What the store holds, read as Cilium writes it: identities (id,
    /// labels, the nodes using each), ipcache entries (prefix, identity,
    /// labels, host IP) and every key that did not read.
    Dump {
        /// The config file; its `kvstore:` section names the store.
        #[arg(long, default_value = "xpf.yaml")]
        config: PathBuf,
        /// `text` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
enum IpcacheCommand {
    /// List the ipcache derived from the config.
    List {
        /// The config file: endpoints, ipcache entries, policy paths.
        #[arg(long, default_value = "xpf.yaml")]
        config: PathBuf,
        /// `text` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Add or replace a runtime entry in the running xpf: PREFIX (a CIDR or
    /// an address) gets the identity of its labels, for as long as the
    /// daemon runs or until `xpf ipcache delete`. Applied all or nothing,
    /// like a reload; the config's own entries change only by reload.
    Upsert {
        /// The prefix, e.g. 198.18.9.0/24 or 2001:db8:9::1.
        prefix: String,
        /// The entry's labels, `key=value[,key=value...]`.
        #[arg(long, value_name = "K=V,...")]
        labels: String,
        #[command(flatten)]
        api: ApiArgs,
        /// `text` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Remove a runtime entry from the running xpf; a policy CIDR identity
    /// it was shadowing comes back.
    Delete {
        /// The prefix, exactly as upserted.
        prefix: String,
        #[command(flatten)]
        api: ApiArgs,
        /// `text` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Where a client finds the running xpf.
#[derive(clap::Args, Debug)]
pub(crate) struct ApiArgs {
    /// The API socket of the running xpf (default: that of this network
    /// namespace's instance, /run/xpf/<instance>/api.sock).
    #[arg(long, value_name = "PATH")]
    api: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// The packet-rate benchmark: generator, filter and sink in private
    /// namespaces; baselines (xdp-drop, afxdp-rxdrop, afxdp-fwd,
    /// kernel-nft) and xpf side by side in one run. Writes latest.json,
    /// latest.md and PNG plots. Needs root; `scripts/bench.sh` runs it.
    Datapath(bench_datapath::BenchArgs),
    /// Cluster mode against a real etcd: the initial sync of many remote
    /// entries, event-to-enforcement with real packets (root), identity
    /// allocation with two hosts racing. `scripts/bench-kvstore.sh` runs
    /// it on a private etcd.
    Kvstore(bench_kvstore::KvstoreArgs),
    /// Parse + ipcache + verdict on synthetic frames, on one core.
    ///
    /// Answers "how many packets per second can the userspace policy logic
    /// take on this CPU". Frames are 64-byte TCP SYNs (IPv4 and IPv6) to
    /// random ipcache entries; about half hit an allowed port.
    Classify {
        /// ipcache entries (mostly /32 and /128, some shorter).
        #[arg(long, default_value_t = 100_000)]
        ipcache_entries: usize,
        /// Egress rules of the sending endpoint.
        #[arg(long, default_value_t = 1_000)]
        rules: usize,
        /// Distinct destination identities.
        #[arg(long, default_value_t = 1_000)]
        identities: usize,
        /// How long to measure.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// `text` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum MonitorType {
    Drop,
    Verdict,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
}

/// Runs the CLI; returns the process exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    if cli.command.prints_and_exits() {
        // Like any Unix filter: a reader that goes away (`| head`) ends
        // the command quietly, instead of a panic on the broken pipe.
        // SAFETY: restoring the default action of a signal, before any
        // thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("xpf: {}", describe(&e));
            2
        }
    }
}

impl Command {
    /// Commands that only print what they read (no datapath, no state to
    /// clean up if a signal ends them).
    fn prints_and_exits(&self) -> bool {
        matches!(
            self,
            Command::Policy(_)
                | Command::Identity(_)
                | Command::Kvstore(_)
                | Command::Ipcache(_)
                | Command::Status { .. }
                | Command::Monitor { .. }
        ) || matches!(self, Command::Endpoint(EndpointCommand::List { .. }))
    }
}

/// The datapath creates namespaces, loads BPF and binds AF_XDP sockets:
/// say so up front rather than fail half-way on EPERM.
fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (it creates network namespaces, loads BPF programs and binds AF_XDP sockets)");
    }
    Ok(())
}

fn load(path: &Path) -> Result<Engine> {
    Ok(load_with_remotes(path)?.0)
}

/// The engine of a config; in cluster mode with the other hosts'
/// addresses as the store holds them now (which it also returns).
fn load_with_remotes(path: &Path) -> Result<(Engine, Option<Remotes>)> {
    let config = load_config(path)?;
    let Some(kv) = &config.kvstore else {
        return Ok((Engine::new(&config.world)?, None));
    };
    let (world, alloc, remotes) = crate::control::cluster::read_world(&config, kv)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((Engine::succeeding(&world, alloc, 0)?, Some(remotes)))
}

/// Loads the config a command was given; a missing file is named with the
/// flag that names it (every command defaults to `./xpf.yaml`).
pub(crate) fn load_config(path: &Path) -> Result<Config> {
    if !path.exists() {
        bail!(
            "{}: no such config file (name one with --config PATH)",
            path.display()
        );
    }
    Ok(Config::load(path)?)
}

/// `e` and its causes, each said once: a cause whose text the message
/// already carries (errors that quote their source) is not repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Policy(PolicyCommand::Check {
            config,
            from,
            to,
            port,
            proto,
            icmp_type,
            output,
        }) => check(&load(&config)?, &from, to, port, proto, icmp_type, output),
        Command::Policy(PolicyCommand::Compile { config, output }) => {
            compile_cmd(&load(&config)?, output)
        }
        Command::Identity(ListCommand::List { config, output }) => {
            identity_list(&load(&config)?, output)
        }
        Command::Kvstore(KvstoreCommand::Dump { config, output }) => {
            kvstore::dump(&load_config(&config)?, output == Output::Json)
        }
        Command::Ipcache(IpcacheCommand::List { config, output }) => {
            let (engine, remotes) = load_with_remotes(&config)?;
            ipcache_list(&engine, remotes.as_ref(), output)
        }
        Command::Ipcache(IpcacheCommand::Upsert {
            prefix,
            labels,
            api,
            output,
        }) => control::ipcache_upsert(&api, &prefix, &labels, output),
        Command::Ipcache(IpcacheCommand::Delete {
            prefix,
            api,
            output,
        }) => control::ipcache_delete(&api, &prefix, output),
        Command::Status { api, output } => control::status(&api, output),
        Command::Monitor {
            kind,
            endpoint,
            api,
            output,
        } => {
            let kind = match kind {
                MonitorType::Drop => "drop",
                MonitorType::Verdict => "verdict",
                MonitorType::All => "all",
            };
            control::monitor(&api, kind, endpoint.as_deref(), output)
        }
        Command::Reload { api, output } => control::reload(&api, output),
        Command::Bench(BenchCommand::Datapath(args)) => {
            require_root("xpf bench datapath")?;
            bench_datapath::bench(args)
        }
        Command::Bench(BenchCommand::Kvstore(args)) => bench_kvstore::bench(args),
        Command::Bench(BenchCommand::Classify {
            ipcache_entries,
            rules,
            identities,
            seconds,
            output,
        }) => bench_classify(ipcache_entries, rules, identities, seconds, output),
        Command::Run {
            config,
            stats_interval,
            output,
            ipcache_churn,
            api,
            metrics,
        } => {
            require_root("xpf run")?;
            run::run(
                &config,
                stats_interval,
                output == Output::Json,
                ipcache_churn,
                api,
                metrics,
            )
        }
        Command::Endpoint(EndpointCommand::Add {
            name,
            labels,
            ipv4,
            ipv6,
            api,
            output,
        }) => control::endpoint_add(&api, &name, &labels, ipv4, ipv6, output),
        Command::Endpoint(EndpointCommand::Remove { name, api, output }) => {
            control::endpoint_remove(&api, &name, output)
        }
        Command::Endpoint(EndpointCommand::Create { config }) => {
            require_root("xpf endpoint create")?;
            endpoints::create(&config)
        }
        Command::Endpoint(EndpointCommand::Delete { config }) => {
            require_root("xpf endpoint delete")?;
            lifecycle::cleanup(Some(&config))
        }
        Command::Stop {
            keep_datapath,
            timeout,
        } => {
            require_root("xpf stop")?;
            lifecycle::stop(keep_datapath, Duration::from_secs(timeout))
        }
        Command::Cleanup { config } => {
            require_root("xpf cleanup")?;
            lifecycle::cleanup(config.as_deref())
        }
        Command::Endpoint(EndpointCommand::List { config, output }) => {
            endpoints::list(&config, output == Output::Json)
        }
        Command::Demo { config } => {
            require_root("xpf demo")?;
            demo::demo(&config)
        }
        Command::Gen(args) => gen::gen(args),
        Command::Sink(args) => sink::sink(args),
    }
}
