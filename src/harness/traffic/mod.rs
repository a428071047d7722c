//! Test traffic: what `xpf gen` puts in its frames and what `xpf sink`
//! makes of them, and the two runs that send and count them.
//!
//! [`gen`] turns address and port ranges into a fixed set of flows and
//! writes complete, checksummed UDP frames for them; every frame carries a
//! [`PayloadHeader`] (sequence number, send time, flow). [`sink`] reads that
//! header back out of received frames and keeps the books: loss, reordering,
//! duplicates and one-way latency. Both sides run on one host, so the send
//! time (CLOCK_MONOTONIC) is comparable with the receive time. These three
//! do no I/O: they are deterministic and tested without root.
//!
//! [`tx`] and [`rx`] are the I/O around them: the generator's AF_XDP
//! transmit loop with its pacing, and the sink's AF_PACKET receive loop,
//! each with its summary. They stop on a [`Stop`] the caller gives them
//! (the CLI's SIGINT and SIGTERM); the command-line options are the CLI's.

pub mod gen;
mod payload;
pub mod rx;
pub mod sink;
pub mod tx;

use std::os::fd::RawFd;

use anyhow::{bail, Result};

pub use gen::{AddrRange, FlowTuple, FrameFactory, GenSpec, PortRange, RangeError, SpecError};
pub use payload::{PayloadHeader, MAGIC, PAYLOAD_HEADER_LEN};
pub use rx::{Sink, SinkOptions};
pub use sink::{generator_frame, payload_header, Accounting, LatencyUs, Summary};
pub use tx::{DstMac, GenOptions, Generator};

/// How a run learns that it should stop, and waits without missing it.
pub trait Stop {
    /// Whether a stop was requested; does not block.
    fn fired(&self) -> bool;
    /// Sleeps up to `ns` nanoseconds or until a stop request; whether one
    /// came.
    fn sleep(&self, ns: u64) -> bool;
    /// Waits up to `ns` nanoseconds for `fd` to be ready for `events`
    /// (poll(2) flags) or for a stop request, whichever comes first.
    fn wait(&self, fd: RawFd, events: i16, ns: u64);
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the payload timestamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread to `cpu` (`--cpu`).
pub fn pin(cpu: usize) -> Result<()> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let Some(core) = ids.iter().find(|c| c.id == cpu) else {
        let have: Vec<String> = ids.iter().map(|c| c.id.to_string()).collect();
        bail!(
            "--cpu {cpu}: no such CPU (this process may use {})",
            have.join(", ")
        );
    };
    if !core_affinity::set_for_current(*core) {
        bail!("--cpu {cpu}: cannot pin to it");
    }
    Ok(())
}
