//! The live change at the end of `xpf demo`: one allowed flow (frontend to
//! backend, TCP 8080 over IPv4) is held open as an established connection,
//! then a policy edit is applied to the running datapath (an `egressDeny`
//! from app=frontend to app=backend) and reverted. Each check is a row of
//! expected against observed, and the demo counts its mismatches as it
//! counts the exchanges'.
//!
//! The established connection talks to a [`HoldingEcho`], which keeps
//! every connection open: the probes' other servers answer once and hang
//! up, which would end the connection with no policy's help.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::datapath::Datapath;
use crate::harness::probe::{self, round_trip, HoldingEcho, Transport};
use crate::policy::parse::parse_policies;
use crate::policy::Verdict;
use crate::world::World;

/// How long an exchange that should pass is waited for.
const ALLOWED: Duration = Duration::from_millis(1500);
/// How long an exchange that should be dropped is waited for.
const DENIED: Duration = Duration::from_millis(700);
/// The flow: the example's frontend to its backend's API.
const FROM: &str = "frontend";
const TO: &str = "backend";
const PORT: u16 = 8080;

/// The edit: frontend may not talk to backend at all (a deny beats the
/// example's allow).
const DENY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: demo-live-deny}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egressDeny:
    - toEndpoints: [{matchLabels: {app: backend}}]
"#;

/// What the live change did, for the demo's outcome.
pub(super) struct Outcome {
    pub checks: usize,
    pub mismatches: usize,
    /// Revisions the deny and the revert were published at.
    pub revisions: (u64, u64),
}

/// Runs the live change on `dp` and prints it. `None` (and a note) when
/// the config has no frontend and backend with IPv4 between which TCP 8080
/// is allowed. An error means an update or the echo server failed; the
/// caller stops the datapath.
pub(super) fn run(dp: &mut Datapath) -> Result<Option<Outcome>> {
    let eps = &dp.engine.world.endpoints;
    let find = |name: &str| eps.iter().find(|e| e.name == name && e.ipv4.is_some());
    let (Some(src), Some(dst)) = (find(FROM), find(TO)) else {
        println!("live change: skipped (needs endpoints {FROM} and {TO} with IPv4)");
        return Ok(None);
    };
    let from = eps
        .iter()
        .position(|e| e.name == FROM)
        .expect("found above");
    let (from_ns, to_ns) = (src.netns.clone(), dst.netns.clone());
    let addr = SocketAddr::new(IpAddr::V4(dst.ipv4.expect("found with IPv4")), PORT);
    let engine_allows = |dp: &Datapath| {
        dp.engine.check(from, addr.ip(), 6, PORT).decision.verdict == Verdict::Allowed
    };
    if !engine_allows(dp) {
        println!("live change: skipped (the policies do not allow {FROM} -> {TO} tcp/{PORT})");
        return Ok(None);
    }

    let original = dp.engine.world.clone();
    let denied = with_policy(&original, DENY)?;
    let _server = HoldingEcho::start(&to_ns, addr)?;

    println!("live change: {FROM} -> {TO} {} tcp/{PORT}", addr.ip());
    println!("{:<32} {:<8} {:<8}", "step", "expect", "observed");
    let mut rows = Rows::default();
    let mut conn = connect(&from_ns, addr);
    rows.show(
        "established connection",
        true,
        echoes(&mut conn, b"before", ALLOWED),
    );

    let deny = update(dp, &denied, "+ egressDeny app=frontend -> app=backend")?;
    rows.show("engine check", false, engine_allows(dp));
    rows.show(
        "established connection",
        false,
        echoes(&mut conn, b"after", DENIED),
    );
    let fresh = round_trip(Some(&from_ns), Transport::Tcp, addr, DENIED);
    rows.show("new connection", false, fresh);
    // The old connection may have given up by now; only new ones count.
    drop(conn);

    let revert = update(dp, &original, "policy edit reverted")?;
    rows.show("engine check", true, engine_allows(dp));
    let fresh = round_trip(Some(&from_ns), Transport::Tcp, addr, ALLOWED);
    rows.show("new connection", true, fresh);

    Ok(Some(Outcome {
        checks: rows.checks,
        mismatches: rows.mismatches,
        revisions: (deny, revert),
    }))
}

/// `world` with the policies of `yaml` added, validated as a config's.
fn with_policy(world: &World, yaml: &str) -> Result<World> {
    let mut policies = world.policies.clone();
    policies.extend(parse_policies(yaml, Path::new("(xpf demo's live change)"))?);
    World::new(
        world.endpoints.clone(),
        world.ipcache.clone(),
        world.host_addresses.clone(),
        policies,
    )
    .context("the live change's world")
}

/// Applies `world` and prints what the update reports; returns its
/// revision.
fn update(dp: &mut Datapath, world: &World, what: &str) -> Result<u64> {
    let began = Instant::now();
    let done = dp
        .update(world)
        .with_context(|| format!("live update: {what}"))?;
    let took = began.elapsed();
    println!(
        "update: {what}: revision {}, every worker on it after {:.1} ms",
        done.revision,
        took.as_secs_f64() * 1e3
    );
    Ok(done.revision)
}

/// The checks so far, printed as they are made.
#[derive(Default)]
struct Rows {
    checks: usize,
    mismatches: usize,
}

impl Rows {
    fn show(&mut self, step: &str, expected: bool, observed: bool) {
        let verdict = |b: bool| if b { "allow" } else { "deny" };
        let mark = if expected == observed {
            ""
        } else {
            "  <-- MISMATCH"
        };
        self.checks += 1;
        self.mismatches += usize::from(expected != observed);
        println!(
            "{step:<32} {:<8} {:<8}{mark}",
            verdict(expected),
            verdict(observed)
        );
    }
}

/// A TCP connection opened from inside `ns` (`None` if it was not).
fn connect(ns: &str, addr: SocketAddr) -> Option<TcpStream> {
    probe::connect_in(ns, addr, ALLOWED).ok()
}

/// Whether `msg` comes back on `conn` within `wait`.
fn echoes(conn: &mut Option<TcpStream>, msg: &[u8], wait: Duration) -> bool {
    conn.as_mut().is_some_and(|s| probe::echoes(s, msg, wait))
}
