//! Flows opened towards endpoints, as the inbound program reports them
//! through the `inbound_flows` ring buffer: [`FlowEvent`] is one decoded
//! report, [`InboundReports`] the reading end all workers share.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};
use libbpf_rs::{MapMut, RingBuffer, RingBufferBuilder};

use super::{ProgramError, Programs};
use crate::datapath::bpf::inbound;

/// At most this many ring samples are decoded per [`InboundReports::drain`],
/// so a burst never stalls one worker's batch for long.
pub const INBOUND_DRAIN_MAX: usize = 512;

type RawFlowEvent = inbound::types::xpf_flow_event;
const RAW_FLOW_EVENT_SIZE: usize = size_of::<RawFlowEvent>();
// The byte copy in `FlowEvent::decode` relies on the generated type having
// exactly the C layout's fields and no padding: 16 + 16 + 4 + 2 + 2 + 4 × 1.
const _: () = assert!(RAW_FLOW_EVENT_SIZE == 44);

/// A flow opened towards an endpoint, as the inbound program saw it leave
/// the host towards the endpoint's veth. Source is the remote side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowEvent {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// For ICMP echo, the echo identifier (as is `dport`).
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// The TCP flags of the SYN; zero for other protocols.
    pub tcp_flags: u8,
    /// The host-side veth the packet left through.
    pub ifindex: u32,
}

impl FlowEvent {
    /// Decodes one `struct xpf_flow_event` ring sample; `None` for a sample
    /// of the wrong size or an unknown address family.
    fn decode(sample: &[u8]) -> Option<Self> {
        if sample.len() != RAW_FLOW_EVENT_SIZE {
            return None;
        }
        // SAFETY: the sample holds exactly `size_of::<RawFlowEvent>()` bytes,
        // and the type is `repr(C)` integers and byte arrays, valid for any
        // bit pattern. Unaligned read: the slice promises no alignment.
        let raw: RawFlowEvent = unsafe { sample.as_ptr().cast::<RawFlowEvent>().read_unaligned() };
        let (src, dst) = match raw.family {
            4 => {
                let v4 = |a: [u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
                (v4(raw.saddr), v4(raw.daddr))
            }
            6 => (
                IpAddr::V6(Ipv6Addr::from(raw.saddr)),
                IpAddr::V6(Ipv6Addr::from(raw.daddr)),
            ),
            _ => return None,
        };
        Some(FlowEvent {
            src,
            dst,
            sport: raw.sport,
            dport: raw.dport,
            proto: raw.proto,
            tcp_flags: raw.tcp_flags,
            ifindex: raw.ifindex,
        })
    }
}

/// The reading end of `inbound_flows`, shared by all workers.
///
/// [`drain`](Self::drain) takes the ring's lock, decodes what is there and
/// hands it to the caller before letting go. So when `drain` returns, every
/// report written before it was called has been handled, by this caller or
/// an earlier one: a worker that drains before judging a batch never sees a
/// reply before the report of the flow it answers, whichever worker took
/// the report. The lock is held for a bounded number of reports; when the
/// ring is empty a call costs an uncontended lock and two index reads, no
/// syscall.
pub struct InboundReports {
    ring: Mutex<RingBuffer<'static>>,
    events: Receiver<FlowEvent>,
    undecodable: Arc<AtomicU64>,
}

impl fmt::Debug for InboundReports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundReports")
            .field("queued", &self.events.len())
            .field("undecodable", &self.undecodable())
            .finish_non_exhaustive()
    }
}

impl InboundReports {
    pub(super) fn new(map: &MapMut<'static>) -> Result<Self, ProgramError> {
        let (tx, events): (Sender<FlowEvent>, _) = crossbeam_channel::unbounded();
        let undecodable = Arc::new(AtomicU64::new(0));
        let bad = Arc::clone(&undecodable);
        let ring_error = |source| ProgramError::Map {
            map: "inbound_flows",
            action: "opening the ring buffer".to_string(),
            source,
        };
        let mut builder = RingBufferBuilder::new();
        builder
            .add(map, move |sample: &[u8]| {
                match FlowEvent::decode(sample) {
                    // The receiver lives in the same struct, so it is
                    // there whenever the ring can be consumed.
                    Some(event) => drop(tx.send(event)),
                    None => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
                0
            })
            .map_err(ring_error)?;
        let ring = builder.build().map_err(ring_error)?;
        Ok(Self {
            ring: Mutex::new(ring),
            events,
            undecodable,
        })
    }

    /// Hands every reported flow waiting now (up to about
    /// [`INBOUND_DRAIN_MAX`] new ones) to `f`, under the ring's lock;
    /// returns how many.
    pub fn drain(&self, mut f: impl FnMut(FlowEvent)) -> usize {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        // Negative only when a callback fails, and ours never does.
        let _ = ring.consume_raw_n(INBOUND_DRAIN_MAX);
        let mut handed = 0;
        while let Ok(event) = self.events.try_recv() {
            f(event);
            handed += 1;
        }
        drop(ring);
        handed
    }

    /// Ring samples that were not a `struct xpf_flow_event` (an ABI
    /// mismatch; should stay zero).
    pub fn undecodable(&self) -> u64 {
        self.undecodable.load(Ordering::Relaxed)
    }
}

impl Programs {
    /// The reader of flows opened towards endpoints.
    pub fn inbound_reports(&self) -> &InboundReports {
        &self.inbound_reports
    }

    /// Shorthand for `inbound_reports().drain(f)`.
    pub fn drain_inbound(&self, f: impl FnMut(FlowEvent)) -> usize {
        self.inbound_reports.drain(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(family: u8, saddr: &[u8], daddr: &[u8]) -> Vec<u8> {
        let mut s = vec![0u8; RAW_FLOW_EVENT_SIZE];
        s[..saddr.len()].copy_from_slice(saddr);
        s[16..16 + daddr.len()].copy_from_slice(daddr);
        s[32..36].copy_from_slice(&7u32.to_ne_bytes()); // ifindex
        s[36..38].copy_from_slice(&40000u16.to_ne_bytes()); // sport
        s[38..40].copy_from_slice(&443u16.to_ne_bytes()); // dport
        s[40] = family;
        s[41] = 6; // TCP
        s[42] = 0x02; // SYN
        s
    }

    #[test]
    fn decodes_an_ipv4_event() {
        let ev = FlowEvent::decode(&sample(4, &[198, 18, 0, 1], &[198, 18, 0, 2])).unwrap();
        assert_eq!(
            ev,
            FlowEvent {
                src: "198.18.0.1".parse().unwrap(),
                dst: "198.18.0.2".parse().unwrap(),
                sport: 40000,
                dport: 443,
                proto: 6,
                tcp_flags: 0x02,
                ifindex: 7,
            }
        );
    }

    #[test]
    fn decodes_an_ipv6_event() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let ev = FlowEvent::decode(&sample(6, &src.octets(), &dst.octets())).unwrap();
        assert_eq!((ev.src, ev.dst), (IpAddr::V6(src), IpAddr::V6(dst)));
    }

    #[test]
    fn rejects_wrong_size_and_unknown_family() {
        let good = sample(4, &[198, 18, 0, 1], &[198, 18, 0, 2]);
        assert!(FlowEvent::decode(&good[..RAW_FLOW_EVENT_SIZE - 1]).is_none());
        assert!(FlowEvent::decode(&[good.as_slice(), &[0]].concat()).is_none());
        assert!(FlowEvent::decode(&sample(5, &[], &[])).is_none());
    }
}
