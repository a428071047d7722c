//! The `xpf` command line: one clap enum, one subcommand per thing a user
//! does. Errors become a message on stderr and exit status 2; a verdict,
//! whatever it is, exits 0.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod bench_datapath;
mod demo;
mod endpoints;
mod gen;
mod lifecycle;
mod run;
mod signals;
mod sink;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::config::Config;
use crate::engine::Engine;
use crate::identity::NumericIdentity;
use crate::inventory::IdentityKind;
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
    /// The ipcache (prefix to identity) derived from the config.
    #[command(subcommand)]
    Ipcache(ListCommand),
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
enum BenchCommand {
    /// The packet-rate benchmark: generator, filter and sink in private
    /// namespaces; baselines (xdp-drop, afxdp-rxdrop, afxdp-fwd,
    /// kernel-nft) and xpf side by side in one run. Writes latest.json,
    /// latest.md and PNG plots. Needs root; `scripts/bench.sh` runs it.
    Datapath(bench_datapath::BenchArgs),
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
            Command::Policy(_) | Command::Identity(_) | Command::Ipcache(_)
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
    Ok(Engine::new(load_config(path)?)?)
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
        Command::Ipcache(ListCommand::List { config, output }) => {
            ipcache_list(&load(&config)?, output)
        }
        Command::Bench(BenchCommand::Datapath(args)) => {
            require_root("xpf bench datapath")?;
            bench_datapath::bench(args)
        }
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
        } => {
            require_root("xpf run")?;
            run::run(
                &config,
                stats_interval,
                output == Output::Json,
                ipcache_churn,
            )
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

fn check(
    engine: &Engine,
    from: &str,
    to: IpAddr,
    port: Option<u16>,
    proto_arg: Option<Proto>,
    icmp_type: Option<u8>,
    output: Output,
) -> Result<()> {
    let (src_index, _) = engine.endpoint(from)?;
    let proto = proto_arg.unwrap_or(match (icmp_type, to) {
        (Some(_), IpAddr::V4(_)) => Proto::Icmp,
        (Some(_), IpAddr::V6(_)) => Proto::Icmpv6,
        (None, _) => Proto::Tcp,
    });
    let (ip_proto, value) = match proto {
        Proto::Tcp | Proto::Udp | Proto::Sctp => {
            if icmp_type.is_some() {
                bail!("--icmp-type goes with --proto icmp or icmpv6");
            }
            let Some(port) = port else {
                let name = proto.to_possible_value().expect("no skipped values");
                bail!("--port is required with --proto {}", name.get_name());
            };
            let n = match proto {
                Proto::Tcp => proto::TCP,
                Proto::Udp => proto::UDP,
                _ => proto::SCTP,
            };
            (n, port)
        }
        Proto::Icmp | Proto::Icmpv6 => {
            if port.is_some() {
                bail!("--port does not apply to ICMP; use --icmp-type");
            }
            let v6 = proto == Proto::Icmpv6;
            if v6 != to.is_ipv6() {
                bail!(
                    "--proto {} does not match the {} destination {to}",
                    if v6 { "icmpv6" } else { "icmp" },
                    if to.is_ipv6() { "IPv6" } else { "IPv4" }
                );
            }
            let default = if v6 { 128 } else { 8 };
            let n = if v6 { proto::ICMPV6 } else { proto::ICMP };
            (n, icmp_type.unwrap_or(default) as u16)
        }
    };
    let result = engine.check(src_index, to, ip_proto, value);
    let reason = result.decision.reason(&engine.config.policies);
    let what = match proto {
        Proto::Icmp | Proto::Icmpv6 => format!("{}/type {value}", proto_name(ip_proto)),
        _ => format!("{}/{value}", proto_name(ip_proto)),
    };
    match output {
        Output::Json => {
            let v = json!({
                "verdict": result.decision.verdict,
                "from": from,
                "to": to.to_string(),
                "proto": proto_name(ip_proto),
                "port": if proto::has_ports(ip_proto) { Some(value) } else { None },
                "icmp_type": if proto::has_ports(ip_proto) { None } else { Some(value) },
                "src_identity": result.src_identity.0,
                "dst_identity": result.dst_identity.0,
                "dst_labels": labels_of(engine, result.dst_identity),
                "reason": reason,
                "rule": rule_json(engine, &result.decision),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            println!("{from} -> {to} {what}: {}", result.decision.verdict);
            println!(
                "  source identity {} [{}]",
                result.src_identity,
                labels_of(engine, result.src_identity)
            );
            println!(
                "  destination identity {} [{}]",
                result.dst_identity,
                labels_of(engine, result.dst_identity)
            );
            println!("  reason: {reason}");
        }
    }
    Ok(())
}

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::SCTP => "sctp",
        proto::ICMP => "icmp",
        proto::ICMPV6 => "icmpv6",
        _ => "other",
    }
}

fn labels_of(engine: &Engine, id: NumericIdentity) -> String {
    engine
        .inventory
        .identity(id)
        .map(|i| i.labels.to_string())
        .unwrap_or_default()
}

fn rule_json(engine: &Engine, d: &Decision) -> serde_json::Value {
    let r = match d.cause {
        crate::policy::Cause::Allow(r) | crate::policy::Cause::Deny(r) => r,
        _ => return serde_json::Value::Null,
    };
    let p = &engine.config.policies[r.policy as usize];
    let rules = if r.deny {
        &p.egress.deny
    } else {
        &p.egress.allow
    };
    json!({
        "kind": p.kind,
        "name": p.name,
        "namespace": p.namespace,
        "section": if r.deny { "egressDeny" } else { "egress" },
        "index": rules[r.rule as usize].index,
        "file": p.origin.file.display().to_string(),
    })
}

fn describe_code(compiled: &CompiledPolicy, engine: &Engine, code: Code) -> (String, String) {
    let verdict = if code.is_deny() { "deny" } else { "allow" };
    let rule = compiled.rule(code).expect("non-zero code");
    let p = &engine.config.policies[rule.policy as usize];
    let rules = if rule.deny {
        &p.egress.deny
    } else {
        &p.egress.allow
    };
    let section = if rule.deny { "egressDeny" } else { "egress" };
    (
        verdict.to_string(),
        format!(
            "{} {section}[{}]",
            p.display_name(),
            rules[rule.rule as usize].index
        ),
    )
}

fn segment_ranges(segs: &[Segment]) -> Vec<(u16, u16, u32)> {
    let mut out = Vec::new();
    let mut first = 0u16;
    for s in segs {
        if s.code != 0 {
            out.push((first, s.last, s.code));
        }
        first = s.last.wrapping_add(1);
    }
    out
}

fn compile_cmd(engine: &Engine, output: Output) -> Result<()> {
    let compiled = &engine.compiled;
    let mut json_eps = Vec::new();
    for (i, ep) in engine.config.endpoints.iter().enumerate() {
        let id = engine.inventory.endpoint_identities[i];
        let table = compiled.table(id);
        let policies: Vec<String> = table
            .policies
            .iter()
            .map(|p| engine.config.policies[*p as usize].display_name())
            .collect();
        let default = format!("{:?}", table.default);
        let mut entries = Vec::new();
        for (dst, classes) in table.describe() {
            let mut ranges = Vec::new();
            for (class, segs) in &classes {
                for (first, last, code) in segment_ranges(segs) {
                    let (verdict, rule) = describe_code(compiled, engine, Code(code));
                    ranges.push((class.name(), first, last, verdict, rule));
                }
            }
            if dst.is_none() && ranges.is_empty() {
                continue;
            }
            entries.push((dst, ranges));
        }
        match output {
            Output::Text => {
                println!(
                    "endpoint {} (identity {id}) default: {default}; policies: {}",
                    ep.name,
                    if policies.is_empty() {
                        "none".to_string()
                    } else {
                        policies.join(", ")
                    }
                );
                for (dst, ranges) in &entries {
                    let who = match dst {
                        Some(d) => format!("{d} [{}]", labels_of(engine, *d)),
                        None => "any other identity".to_string(),
                    };
                    println!("  -> {who}");
                    for (class, first, last, verdict, rule) in ranges {
                        let span = match (*class, first, last) {
                            ("other", _, _) => "all".to_string(),
                            (_, f, l) if f == l => format!("{f}"),
                            (_, 0, 65535) | ("icmp" | "icmpv6", 0, 255) => "all".to_string(),
                            (_, f, l) => format!("{f}-{l}"),
                        };
                        println!("       {class:<6} {span:<12} {verdict:<5} {rule}");
                    }
                }
            }
            Output::Json => json_eps.push(json!({
                "endpoint": ep.name,
                "identity": id.0,
                "default": default,
                "policies": policies,
                "entries": entries.iter().map(|(dst, ranges)| json!({
                    "identity": dst.map(|d| d.0),
                    "rules": ranges.iter().map(|(class, first, last, verdict, rule)| json!({
                        "proto": class, "first": first, "last": last, "verdict": verdict, "rule": rule,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })),
        }
    }
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "endpoints": json_eps }))?
        );
    }
    Ok(())
}

fn identity_list(engine: &Engine, output: Output) -> Result<()> {
    let mut rows = Vec::new();
    for info in engine.inventory.identities.values() {
        let users: Vec<&str> = engine
            .config
            .endpoints
            .iter()
            .zip(&engine.inventory.endpoint_identities)
            .filter(|(_, id)| **id == info.id)
            .map(|(e, _)| e.name.as_str())
            .collect();
        rows.push((info, users));
    }
    match output {
        Output::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|(info, users)| {
                    json!({
                        "identity": info.id.0,
                        "kind": info.kind,
                        "labels": info.labels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                        "endpoints": users,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            println!(
                "{:<10} {:<9} {:<30} ENDPOINTS",
                "IDENTITY", "KIND", "LABELS"
            );
            for (info, users) in rows {
                let kind = match &info.kind {
                    IdentityKind::Cidr(_) => "cidr".to_string(),
                    k => format!("{k:?}").to_lowercase(),
                };
                println!(
                    "{:<10} {:<9} {:<30} {}",
                    info.id.0,
                    kind,
                    info.labels.to_string(),
                    users.join(",")
                );
            }
        }
    }
    Ok(())
}

fn ipcache_list(engine: &Engine, output: Output) -> Result<()> {
    let entries = engine.ipcache.entries();
    match output {
        Output::Json => {
            let v: Vec<_> = entries
                .iter()
                .map(|e| {
                    json!({
                        "prefix": e.prefix.to_string(),
                        "identity": e.identity.0,
                        "origin": format!("{:?}", e.origin).to_lowercase(),
                        "labels": labels_of(engine, e.identity),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            println!("{:<28} {:<10} {:<9} LABELS", "PREFIX", "IDENTITY", "ORIGIN");
            for e in entries {
                println!(
                    "{:<28} {:<10} {:<9} {}",
                    e.prefix.to_string(),
                    e.identity.0,
                    format!("{:?}", e.origin).to_lowercase(),
                    labels_of(engine, e.identity)
                );
            }
            println!("(addresses no prefix covers are world, identity 2)");
        }
    }
    Ok(())
}

fn bench_classify(
    ipcache_entries: usize,
    rules: usize,
    identities: usize,
    seconds: f64,
    output: Output,
) -> Result<()> {
    if !(0.1..=600.0).contains(&seconds) {
        bail!("--seconds must be between 0.1 and 600");
    }
    if identities == 0 {
        bail!("--identities must be at least 1");
    }
    let pin = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().next());
    if let Some(core) = pin {
        core_affinity::set_for_current(core);
    }
    let t = Instant::now();
    let world = crate::harness::synth::world(crate::harness::synth::Shape {
        ipcache_entries,
        identities,
        rules,
        endpoints: 1,
    })
    .context("building the synthetic world")?;
    let setup = t.elapsed();
    let frames = crate::harness::synth::frames(&world, 1 << 14, 42);
    let table = world
        .engine
        .compiled
        .table(world.engine.inventory.endpoint_identities[0]);
    let reader = world.engine.ipcache.reader();
    let view = reader.enter().context("ipcache closed")?;

    // Batched with prefetch (what a worker does with a batch of frames) and
    // frame by frame, in alternating rounds of the same run so that both
    // see the same machine: this VM is shared and its speed drifts.
    let budget = Duration::from_secs_f64(seconds);
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let mut tally = Tally::default();
    let mut single = Tally::default();
    let mut out = [Err(crate::wire::ParseError::TruncatedEthernet); crate::classify::BATCH];
    let (mut batched_ns, mut single_ns, mut rounds) = (0u128, 0u128, 0u64);
    let start = Instant::now();
    while start.elapsed() < budget {
        let t = Instant::now();
        for batch in refs.chunks(crate::classify::BATCH) {
            crate::classify::classify_batch(batch, table, &view, &mut out);
            for r in &out[..batch.len()] {
                tally.add(table, r);
            }
        }
        batched_ns += t.elapsed().as_nanos();
        let t = Instant::now();
        for f in &refs {
            single.add(table, &crate::classify::classify(f, table, &view));
        }
        single_ns += t.elapsed().as_nanos();
        rounds += 1;
    }
    let per_mode = rounds * refs.len() as u64;
    let batched = (per_mode, batched_ns as f64 / per_mode as f64);
    let unbatched = (per_mode, single_ns as f64 / per_mode as f64);
    // The headline is the plain loop; the batched one wins once the
    // ipcache no longer fits in cache (see README, Benchmarks).
    let (packets, ns) = unbatched;
    let (allowed, denied, dropped) = (single.allowed, single.denied, single.dropped);
    debug_assert_eq!(
        (tally.allowed, tally.denied, tally.dropped),
        (allowed, denied, dropped)
    );
    let mpps = 1e3 / ns;
    let batched_ns = batched.1;
    let ipcache_len = world.engine.ipcache.len();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "ns_per_packet": ns,
                "mpps": mpps,
                "batched_ns_per_packet": batched_ns,
                "batched_mpps": 1e3 / batched_ns,
                "batch": crate::classify::BATCH,
                "distinct_frames": refs.len(),
                "packets": packets,
                "allowed": allowed,
                "denied": denied,
                "parse_errors": dropped,
                "ipcache_entries": ipcache_len,
                "rules": rules,
                "identities": identities,
                "pinned_core": pin.map(|c| c.id),
                "setup_seconds": setup.as_secs_f64(),
            }))?
        ),
        Output::Text => {
            println!(
                "classify: {ns:.1} ns/packet, {mpps:.2} Mpps on one core, frame by frame \
                 ({packets} packets: {allowed} allowed, {denied} denied, {dropped} unparsable)"
            );
            println!(
                "          {batched_ns:.1} ns/packet, {:.2} Mpps in batches of {} with prefetch",
                1e3 / batched_ns,
                crate::classify::BATCH
            );
            println!(
                "  ipcache {ipcache_len} entries, {rules} rules over {identities} identities \
                 (setup {:.2} s)",
                setup.as_secs_f64()
            );
        }
    }
    std::io::stdout().flush().ok();
    Ok(())
}

/// Verdict counts of a benchmark loop.
#[derive(Default)]
struct Tally {
    allowed: u64,
    denied: u64,
    dropped: u64,
}

impl Tally {
    fn add(
        &mut self,
        table: &crate::policy::compile::EgressTable,
        r: &Result<crate::classify::Classified, crate::wire::ParseError>,
    ) {
        match r {
            Ok(c) if c.code.allows(table) => self.allowed += 1,
            Ok(_) => self.denied += 1,
            Err(_) => self.dropped += 1,
        }
    }
}
