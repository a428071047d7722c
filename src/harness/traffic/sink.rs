//! Receive-side accounting for generator traffic: counts, loss, reordering,
//! duplicates and one-way latency, from the [`PayloadHeader`] of each frame.
//!
//! Definitions (what the counters promise):
//!
//! - `received`: generator frames recorded, duplicates included.
//! - The sequence space starts at the first sequence number seen, not at 0:
//!   a sink started after the generator does not count what it missed.
//! - `reordered`: a new (not yet seen) sequence number lower than the
//!   highest seen so far.
//! - `duplicates`: a sequence number seen before (within the window).
//! - `late`: lower than the highest seen by [`REORDER_WINDOW`] or more. Too
//!   old to tell new from duplicate: counted as reordered, and its sequence
//!   number stays counted as lost.
//! - `lost` = (highest + 1 - first) - distinct sequence numbers seen, at any
//!   time; a frame that shows up late enough makes it go down again.
//! - Latency is receive time minus the send time in the frame (both
//!   CLOCK_MONOTONIC on one host), clamped at 0, in a histogram of
//!   nanoseconds.

use hdrhistogram::Histogram;
use serde::Serialize;

use super::payload::PayloadHeader;
use crate::wire::{self, FlowInfo, L4Proto};

/// How far below the highest sequence number a frame may arrive and still be
/// told apart as new or duplicate (one bit each: 128 KiB).
pub const REORDER_WINDOW: u64 = 1 << 20;

const UDP_HLEN: usize = 8;
/// Latencies above an hour are recorded as an hour.
const LATENCY_MAX_NS: u64 = 3_600_000_000_000;

/// The flow facts and payload header of a generator frame; `None` for any
/// other frame (not UDP, unparsable, a later fragment, no magic).
pub fn generator_frame(frame: &[u8]) -> Option<(FlowInfo, PayloadHeader)> {
    let info = wire::parse(frame).ok()?;
    if info.l4_proto() != L4Proto::UDP || info.l4_offset == 0 {
        return None;
    }
    let datagram = frame
        .get(info.l4_offset as usize..)?
        .get(..info.l4_len as usize)?;
    let header = PayloadHeader::read(datagram.get(UDP_HLEN..)?)?;
    Some((info, header))
}

/// The payload header of a generator frame; `None` for any other frame.
pub fn payload_header(frame: &[u8]) -> Option<PayloadHeader> {
    generator_frame(frame).map(|(_, h)| h)
}

/// The books of one sink.
pub struct Accounting {
    received: u64,
    foreign: u64,
    reordered: u64,
    duplicates: u64,
    late: u64,
    distinct: u64,
    /// First and highest sequence numbers; `first` moves down when a lower
    /// one arrives inside the window.
    first: u64,
    highest: u64,
    started: bool,
    /// Bit `s % REORDER_WINDOW` tells whether `s` was seen, for `s` in
    /// `(highest - REORDER_WINDOW, highest]`.
    seen: Vec<u64>,
    latency: Histogram<u64>,
}

impl Default for Accounting {
    fn default() -> Self {
        Self::new()
    }
}

impl Accounting {
    pub fn new() -> Self {
        Self {
            received: 0,
            foreign: 0,
            reordered: 0,
            duplicates: 0,
            late: 0,
            distinct: 0,
            first: 0,
            highest: 0,
            started: false,
            seen: vec![0; (REORDER_WINDOW / 64) as usize],
            latency: Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    /// Records a generator frame received at `now_ns` (CLOCK_MONOTONIC).
    pub fn record(&mut self, header: &PayloadHeader, now_ns: u64) {
        self.received += 1;
        self.latency
            .saturating_record(now_ns.saturating_sub(header.ts_ns));
        let seq = header.seq;
        if !self.started {
            self.started = true;
            self.first = seq;
            self.highest = seq;
            self.distinct = 1;
            self.set(seq);
            return;
        }
        if seq > self.highest {
            // The bits of the sequence numbers skipped over now stand for
            // newer ones: clear them.
            if seq - self.highest >= REORDER_WINDOW {
                self.seen.fill(0);
            } else {
                for s in self.highest + 1..seq {
                    self.clear(s);
                }
            }
            self.highest = seq;
            self.distinct += 1;
            self.set(seq);
            return;
        }
        if self.highest - seq >= REORDER_WINDOW {
            self.late += 1;
            self.reordered += 1;
            return;
        }
        if self.is_set(seq) {
            self.duplicates += 1;
            return;
        }
        self.set(seq);
        self.distinct += 1;
        if seq < self.highest {
            self.reordered += 1;
        }
        self.first = self.first.min(seq);
    }

    /// Counts a frame that is not the generator's.
    pub fn record_foreign(&mut self) {
        self.foreign += 1;
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn foreign(&self) -> u64 {
        self.foreign
    }

    /// Sequence numbers between the first and the highest seen that have
    /// not arrived.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.distinct)
    }

    /// Sequence numbers from the first to the highest seen.
    fn expected(&self) -> u64 {
        if self.started {
            self.highest - self.first + 1
        } else {
            0
        }
    }

    /// One-way latencies in nanoseconds.
    pub fn latency(&self) -> &Histogram<u64> {
        &self.latency
    }

    pub fn summary(&self) -> Summary {
        let expected = self.expected();
        let h = &self.latency;
        let us = |ns: u64| ns as f64 / 1e3;
        let latency_us = (!h.is_empty()).then(|| LatencyUs {
            p50: us(h.value_at_quantile(0.50)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        });
        let latency_curve = if h.is_empty() {
            Vec::new()
        } else {
            curve_percentiles()
                .map(|p| (p, us(h.value_at_quantile(p / 100.0))))
                .collect()
        };
        Summary {
            received: self.received,
            lost: self.lost(),
            reordered: self.reordered,
            duplicates: self.duplicates,
            late: self.late,
            foreign: self.foreign,
            loss_fraction: if expected == 0 {
                0.0
            } else {
                self.lost() as f64 / expected as f64
            },
            first_seq: self.started.then_some(self.first),
            highest_seq: self.started.then_some(self.highest),
            latency_us,
            latency_curve,
        }
    }

    fn set(&mut self, seq: u64) {
        let bit = seq % REORDER_WINDOW;
        self.seen[(bit / 64) as usize] |= 1 << (bit % 64);
    }

    fn clear(&mut self, seq: u64) {
        let bit = seq % REORDER_WINDOW;
        self.seen[(bit / 64) as usize] &= !(1 << (bit % 64));
    }

    fn is_set(&self, seq: u64) -> bool {
        let bit = seq % REORDER_WINDOW;
        self.seen[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }
}

/// Percentiles of the latency curve: every 5 up to 90, then eight per
/// decade of the tail up to 99.999, then 100 (52 points).
fn curve_percentiles() -> impl Iterator<Item = f64> {
    (0..=18)
        .map(|k| f64::from(k) * 5.0)
        .chain((1..=32).map(|k| 100.0 - 10.0 * 10f64.powf(-f64::from(k) / 8.0)))
        .chain(std::iter::once(100.0))
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatencyUs {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// What a sink saw; see the module documentation for each count.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub received: u64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicates: u64,
    pub late: u64,
    pub foreign: u64,
    /// `lost` over the sequence numbers from the first to the highest seen.
    pub loss_fraction: f64,
    pub first_seq: Option<u64>,
    pub highest_seq: Option<u64>,
    /// `None` until a generator frame arrived.
    pub latency_us: Option<LatencyUs>,
    /// `(percentile, microseconds)` pairs for plots, empty until a generator
    /// frame arrived.
    pub latency_curve: Vec<(f64, f64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::traffic::{FrameFactory, GenSpec};

    fn h(seq: u64) -> PayloadHeader {
        PayloadHeader {
            seq,
            ts_ns: 1_000,
            flow: 0,
        }
    }

    fn feed(seqs: &[u64]) -> Summary {
        let mut a = Accounting::new();
        for &s in seqs {
            a.record(&h(s), 3_000);
        }
        a.summary()
    }

    fn counts(s: &Summary) -> (u64, u64, u64, u64, u64) {
        (s.received, s.lost, s.reordered, s.duplicates, s.late)
    }

    #[test]
    fn in_order() {
        let s = feed(&(0..1000).collect::<Vec<_>>());
        assert_eq!(counts(&s), (1000, 0, 0, 0, 0));
        assert_eq!((s.first_seq, s.highest_seq), (Some(0), Some(999)));
        assert_eq!(s.loss_fraction, 0.0);
        let l = s.latency_us.unwrap();
        assert_eq!((l.p50, l.max), (2.0, 2.0));
        assert_eq!(s.latency_curve.len(), 52);
    }

    #[test]
    fn a_late_start_counts_from_the_first_frame_seen() {
        let s = feed(&(500..600).collect::<Vec<_>>());
        assert_eq!(counts(&s), (100, 0, 0, 0, 0));
        assert_eq!(s.first_seq, Some(500));
    }

    #[test]
    fn lost() {
        // 10 of 0..=19 missing, and the tail is unknowable: 20 is the last.
        let seqs: Vec<u64> = (0..=20).filter(|s| s % 2 == 0).collect();
        let s = feed(&seqs);
        assert_eq!(counts(&s), (11, 10, 0, 0, 0));
        assert!((s.loss_fraction - 10.0 / 21.0).abs() < 1e-12);
        // A gap wider than the window.
        let s = feed(&[0, 1, 2 + 3 * REORDER_WINDOW]);
        assert_eq!(counts(&s).1, 3 * REORDER_WINDOW);
    }

    #[test]
    fn reordered() {
        let s = feed(&[0, 1, 3, 2, 4, 7, 5, 6, 8]);
        assert_eq!(counts(&s), (9, 0, 3, 0, 0));
        // Lower than the first seen: the sequence space grows downwards.
        let s = feed(&[10, 11, 9, 12]);
        assert_eq!(counts(&s), (4, 0, 1, 0, 0));
        assert_eq!(s.first_seq, Some(9));
        // A loss that turns out to be a reordering goes away.
        let mut a = Accounting::new();
        for q in [0, 1, 3, 4] {
            a.record(&h(q), 0);
        }
        assert_eq!(a.lost(), 1);
        a.record(&h(2), 0);
        assert_eq!((a.lost(), a.summary().reordered), (0, 1));
    }

    #[test]
    fn duplicated() {
        let s = feed(&[0, 1, 1, 2, 0, 3, 3, 3]);
        assert_eq!(counts(&s), (8, 0, 0, 4, 0));
        // A duplicate of a reordered frame.
        let s = feed(&[0, 2, 1, 1, 3]);
        assert_eq!(counts(&s), (5, 0, 1, 1, 0));
    }

    #[test]
    fn older_than_the_window_is_late() {
        let w = REORDER_WINDOW;
        let s = feed(&[0, w + 5, 3, w + 4]);
        // 0 and w+5 seen; 3 is too old to tell (late, stays lost); w+4 is
        // reordered inside the window.
        assert_eq!(counts(&s), (4, w + 6 - 3, 2, 0, 1));
        // Bits reused after the window moved do not read as duplicates.
        let s = feed(&[0, 1, w + 1, w]);
        assert_eq!(counts(&s), (4, w - 2, 1, 0, 0));
        let s = feed(&[0, 5, w + 3, w]);
        assert_eq!(counts(&s), (4, w, 1, 0, 0));
    }

    #[test]
    fn foreign_and_latency_clamping() {
        let mut a = Accounting::new();
        a.record_foreign();
        a.record_foreign();
        // Sent "after" it was received (clocks of another host): 0.
        a.record(
            &PayloadHeader {
                seq: 0,
                ts_ns: 5_000,
                flow: 0,
            },
            1_000,
        );
        a.record(
            &PayloadHeader {
                seq: 1,
                ts_ns: 0,
                flow: 0,
            },
            2_000_000,
        );
        let s = a.summary();
        assert_eq!((s.received, s.foreign), (2, 2));
        let l = s.latency_us.unwrap();
        assert_eq!(a.latency().min(), 0);
        assert!((l.max - 2000.0).abs() < 2.0, "{l:?}");
        assert!(l.p50 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
        let curve = &s.latency_curve;
        assert!(curve
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(curve.last().unwrap().0, 100.0);

        let empty = Accounting::new().summary();
        assert_eq!(empty.latency_us, None);
        assert!(empty.latency_curve.is_empty());
        assert_eq!((empty.lost, empty.loss_fraction), (0, 0.0));
    }

    #[test]
    fn reads_generator_frames_and_refuses_others() {
        let spec = GenSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::2".parse().unwrap(),
            sport: "9".parse().unwrap(),
            dport: "9000-9001".parse().unwrap(),
            flows: 2,
            size: 128,
        };
        let f = FrameFactory::new(&spec).unwrap();
        let mut buf = [0u8; 256];
        let n = f.write(&mut buf, 1, 42, 7);
        let (info, header) = generator_frame(&buf[..n]).unwrap();
        assert_eq!(info.dport, 9001);
        assert_eq!(
            header,
            PayloadHeader {
                seq: 42,
                ts_ns: 7,
                flow: 1
            }
        );
        // Magic broken, truncated, not UDP, not IP at all.
        let mut bad = buf;
        bad[f.payload_offset()] ^= 1;
        assert_eq!(payload_header(&bad[..n]), None);
        assert_eq!(payload_header(&buf[..f.payload_offset() + 10]), None);
        let mut tcp = [0u8; 128];
        let addrs = crate::wire::build::FrameAddrs {
            src_mac: spec.src_mac,
            dst_mac: spec.dst_mac,
            src: spec.src.first(),
            dst: spec.dst.first(),
        };
        let m = crate::wire::build::tcp(&mut tcp, &addrs, 1, 2, 0x02, 40).unwrap();
        assert_eq!(payload_header(&tcp[..m]), None);
        assert_eq!(payload_header(&[0u8; 60]), None);
    }
}
