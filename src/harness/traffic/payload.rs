//! The header at the start of every generator frame's UDP payload.
//!
//! Layout, 24 bytes, every integer big-endian (network order):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `XPFG` |
//! | 4 | 8 | sequence number, global across flows, from 0 |
//! | 12 | 8 | send time, CLOCK_MONOTONIC nanoseconds |
//! | 20 | 4 | flow index |
//!
//! Zero padding follows up to the frame size. The header starts at an even
//! offset of the UDP datagram, so each field falls on whole 16-bit words of
//! the UDP checksum (the generator relies on that to patch the checksum).

/// The first four payload bytes of every generator frame.
pub const MAGIC: [u8; 4] = *b"XPFG";

/// Bytes the header takes.
pub const PAYLOAD_HEADER_LEN: usize = 24;

/// What a generator frame says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadHeader {
    /// Position in the generator's whole output (all flows), from 0.
    pub seq: u64,
    /// When the generator wrote the frame, CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Index of the flow (5-tuple) the frame belongs to.
    pub flow: u32,
}

impl PayloadHeader {
    /// Reads a header from the start of `payload`; `None` if it is shorter
    /// than the header or does not start with [`MAGIC`].
    pub fn read(payload: &[u8]) -> Option<Self> {
        let b: &[u8; PAYLOAD_HEADER_LEN] = payload.get(..PAYLOAD_HEADER_LEN)?.try_into().ok()?;
        if b[0..4] != MAGIC {
            return None;
        }
        let u64_at = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_be_bytes(w)
        };
        Some(Self {
            seq: u64_at(4),
            ts_ns: u64_at(12),
            flow: u32::from_be_bytes([b[20], b[21], b[22], b[23]]),
        })
    }

    /// Writes the header into `out`.
    pub fn write(&self, out: &mut [u8; PAYLOAD_HEADER_LEN]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4..12].copy_from_slice(&self.seq.to_be_bytes());
        out[12..20].copy_from_slice(&self.ts_ns.to_be_bytes());
        out[20..24].copy_from_slice(&self.flow.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_short_or_foreign_payloads() {
        let h = PayloadHeader {
            seq: 0x0102_0304_0506_0708,
            ts_ns: u64::MAX - 1,
            flow: 7,
        };
        let mut b = [0u8; PAYLOAD_HEADER_LEN];
        h.write(&mut b);
        assert_eq!(&b[..4], b"XPFG");
        assert_eq!(&b[4..12], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(PayloadHeader::read(&b), Some(h));
        assert_eq!(PayloadHeader::read(&b[..23]), None);
        b[0] = b'Y';
        assert_eq!(PayloadHeader::read(&b), None);
    }
}
