//! What the fuzz targets and the seed writer share: the byte format of a
//! `filter` input (a sequence of frames, each with its sender and a clock
//! step) and the small world the `filter` target decides in.
//!
//! The format is read and written here, in one place, so the seeds the
//! `seeds` bin writes are exactly what the `filter` target reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use xpf::config::Config;
use xpf::conntrack::{self, Conntrack};
use xpf::engine::Engine;
use xpf::filter::{EndpointInfo, Filter, Shared};

/// The example config every world is built from (three endpoints, a static
/// ipcache entry, host addresses, four policy files).
pub fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/xpf.yaml")
}

/// One frame of a `filter` input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step<'a> {
    /// Index of the sending endpoint, taken modulo the number of endpoints.
    pub sender: u8,
    /// How far the clock moves before this frame; see [`advance`].
    pub clock: u8,
    pub frame: &'a [u8],
}

/// Bytes before each frame: sender, clock step, frame length (big-endian).
pub const STEP_HEADER: usize = 4;

/// Reads the steps of a `filter` input. A frame whose length runs past the
/// input gets the bytes that are left, so no input is wasted; an incomplete
/// header ends the sequence.
pub fn steps(mut data: &[u8]) -> impl Iterator<Item = Step<'_>> {
    std::iter::from_fn(move || {
        let (header, rest) = data.split_first_chunk::<STEP_HEADER>()?;
        let len = usize::from(u16::from_be_bytes([header[2], header[3]])).min(rest.len());
        let (frame, rest) = rest.split_at(len);
        data = rest;
        Some(Step {
            sender: header[0],
            clock: header[1],
            frame,
        })
    })
}

/// Appends one step in the format [`steps`] reads.
pub fn push_step(out: &mut Vec<u8>, sender: u8, clock: u8, frame: &[u8]) {
    let len = u16::try_from(frame.len()).expect("a frame fits a u16 length");
    out.push(sender);
    out.push(clock);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
}

/// The clock before the first frame of an input (seconds).
pub const START: u64 = 1_000;

/// Moves the clock by a step byte: below 0x80 that many seconds (the
/// fragment TTL and short conntrack timeouts), otherwise the low seven bits
/// in units of 256 s, so the 6-hour established-TCP timeout is a few steps
/// away.
pub fn advance(now: u64, clock: u8) -> u64 {
    if clock < 0x80 {
        now + u64::from(clock)
    } else {
        now + (u64::from(clock & 0x7f) << 8)
    }
}

/// The compiled example config and its endpoints, built once per process.
pub struct World {
    pub engine: Engine,
    pub endpoints: Vec<EndpointInfo>,
}

impl World {
    /// Loads [`example_config`] the way the filter's unit tests do.
    pub fn load() -> Self {
        let path = example_config();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let engine = Engine::new(&config.world).expect("the example config compiles");
        let endpoints = EndpointInfo::all_of(&engine);
        Self { engine, endpoints }
    }

    /// A filter with empty conntrack and fragment tables, so each input
    /// starts from the same state and a crash replays from its file alone.
    pub fn fresh_filter(&self) -> Filter {
        let conntrack = Conntrack::new(conntrack::Config {
            // Small, so eviction is reachable in a few frames.
            capacity: 256,
            // Shared among the endpoints as the datapath shares it.
            owners: self.endpoints.len(),
            ..Default::default()
        });
        let shared = Shared::new(self.endpoints.clone(), conntrack);
        Filter::new(Arc::new(shared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_read_back_what_push_step_wrote() {
        let mut data = Vec::new();
        push_step(&mut data, 1, 2, b"abc");
        push_step(&mut data, 3, 0x81, b"");
        push_step(&mut data, 5, 6, b"z");
        let got: Vec<Step> = steps(&data).collect();
        assert_eq!(
            got,
            [
                Step {
                    sender: 1,
                    clock: 2,
                    frame: b"abc"
                },
                Step {
                    sender: 3,
                    clock: 0x81,
                    frame: b""
                },
                Step {
                    sender: 5,
                    clock: 6,
                    frame: b"z"
                },
            ]
        );
    }

    #[test]
    fn a_short_tail_is_a_short_frame_and_a_partial_header_ends() {
        let got: Vec<Step> = steps(&[0, 0, 0, 9, 1, 2, 7, 7]).collect();
        assert_eq!(
            got,
            [Step {
                sender: 0,
                clock: 0,
                frame: &[1, 2, 7, 7]
            }]
        );
        assert_eq!(steps(&[0, 0, 0]).count(), 0);
    }

    #[test]
    fn clock_steps_reach_the_long_timeouts() {
        assert_eq!(advance(START, 0x7f), START + 127);
        assert_eq!(advance(START, 0xff), START + 127 * 256);
    }

    #[test]
    fn the_example_world_has_three_endpoints() {
        let world = World::load();
        assert_eq!(world.endpoints.len(), 3);
        let _ = world.fresh_filter();
    }
}
