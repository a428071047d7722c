//! The whole per-frame decision: a sequence of frames (see
//! `xpf_fuzz::steps`) from the example world's endpoints, fed to one fresh
//! `Filter`, so conntrack, replies, ICMP errors and fragment verdicts carry
//! from frame to frame within an input but never between inputs.
//!
//! Oracles, each a promise of `src/filter.rs`: `decide` never panics; a
//! frame `wire::parse` refuses is dropped with the reason its parse error
//! maps to; a frame that is not dropped parsed and has a source its sender
//! owns, and goes to the endpoint that owns its destination or, if none
//! does, to the host.

use std::panic::AssertUnwindSafe;

use xpf::filter::{Action, DropReason, EndpointInfo};
use xpf::wire::{self, ParseError};
use xpf_fuzz::{advance, steps, World, START};

fn owner(endpoints: &[EndpointInfo], addr: std::net::IpAddr) -> Option<usize> {
    endpoints
        .iter()
        .position(|e| e.ipv4 == Some(addr) || e.ipv6 == Some(addr))
}

fn main() {
    // afl::fuzz! aborts the process on a panic, so no state is seen after
    // one: asserting unwind safety for the world and its ipcache is sound.
    let world = AssertUnwindSafe(World::load());
    let reader = world.engine.ipcache.reader();
    let view = AssertUnwindSafe(reader.enter().expect("the ipcache is published"));
    let endpoints = &world.endpoints;

    afl::fuzz!(|data: &[u8]| {
        let mut filter = world.fresh_filter();
        let mut now = START;
        for step in steps(data) {
            let src = usize::from(step.sender) % endpoints.len();
            now = advance(now, step.clock);
            let action = filter.decide(src, step.frame, &view, now);
            let parsed = wire::parse(step.frame);
            match (action, parsed) {
                (Action::Drop(reason), Err(e)) => {
                    let expected = match e {
                        ParseError::VlanTagged => DropReason::VlanTagged,
                        ParseError::NotIp => DropReason::NotIp,
                        _ => DropReason::Malformed,
                    };
                    assert_eq!(reason, expected, "parse error {e:?}");
                }
                (Action::Drop(reason), Ok(_)) => assert!(
                    !matches!(
                        reason,
                        DropReason::VlanTagged | DropReason::NotIp | DropReason::Malformed
                    ),
                    "a frame that parses dropped as {reason:?}"
                ),
                (passed, Err(e)) => panic!("{passed:?} for a frame parse refuses ({e:?})"),
                (passed, Ok(flow)) => {
                    assert_eq!(
                        owner(endpoints, flow.src),
                        Some(src),
                        "{passed:?} from endpoint {src} with source {}",
                        flow.src
                    );
                    let to = owner(endpoints, flow.dst);
                    match passed {
                        Action::ToEndpoint(i) => assert_eq!(Some(usize::from(i)), to),
                        Action::ToHost => assert_eq!(None, to),
                        Action::Drop(_) => unreachable!(),
                    }
                }
            }
        }
    });
}
