//! The packet quoted inside an ICMP or ICMPv6 error (destination
//! unreachable, time exceeded, parameter problem, packet too big): its
//! addresses, protocol and ports, so conntrack can tie the error to the flow
//! that caused it. Only what RFC 792 / RFC 4443 promise is read: the quoted
//! IP header and the first 8 bytes after it. The quote is usually cut short,
//! so its length fields are not checked against what is present.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{FlowInfo, L4Proto};

/// The ICMP header before the quoted packet: type, code, checksum, 4 bytes.
const ICMP_HLEN: usize = 8;
const IPV6_HLEN: usize = 40;

/// The flow of the packet an ICMP error quotes, as that packet carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Ports for TCP, UDP and SCTP; the echo identifier (both sides) for an
    /// ICMP echo; 0 otherwise.
    pub sport: u16,
    pub dport: u16,
}

/// Whether `flow` is an ICMP error message (the kinds that quote a packet).
#[inline]
pub fn is_error(flow: &FlowInfo) -> bool {
    match flow.l4_proto() {
        L4Proto::ICMP => matches!(flow.icmp_type, 3 | 4 | 5 | 11 | 12),
        L4Proto::ICMPV6 => matches!(flow.icmp_type, 1..=4),
        _ => false,
    }
}

/// Reads the quoted packet of the ICMP error `flow` parsed from `frame`;
/// `None` when it is not an error or the quote is too short to name a flow.
pub fn quoted(frame: &[u8], flow: &FlowInfo) -> Option<Quoted> {
    if !is_error(flow) {
        return None;
    }
    let start = usize::from(flow.l4_offset) + ICMP_HLEN;
    let end = usize::from(flow.l4_offset) + usize::from(flow.l4_len);
    let q = frame.get(start..end)?;
    let (src, dst, proto, l4) = match flow.l4_proto() {
        L4Proto::ICMP => {
            let first = *q.first()?;
            let hlen = usize::from(first & 0x0f) * 4;
            if first >> 4 != 4 || hlen < 20 || q.len() < hlen {
                return None;
            }
            let src = Ipv4Addr::new(q[12], q[13], q[14], q[15]);
            let dst = Ipv4Addr::new(q[16], q[17], q[18], q[19]);
            // A quoted later fragment has no ports to match.
            if u16::from_be_bytes([q[6], q[7]]) & 0x1fff != 0 {
                return None;
            }
            (IpAddr::V4(src), IpAddr::V4(dst), q[9], &q[hlen..])
        }
        _ => {
            if q.len() < IPV6_HLEN || q[0] >> 4 != 6 {
                return None;
            }
            let src: [u8; 16] = q[8..24].try_into().ok()?;
            let dst: [u8; 16] = q[24..40].try_into().ok()?;
            // Extension headers in the quote are not walked: such errors
            // are not tied to a flow (and so get no reply treatment).
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                q[6],
                &q[IPV6_HLEN..],
            )
        }
    };
    let (sport, dport) = match L4Proto(proto) {
        L4Proto::TCP | L4Proto::UDP | L4Proto::SCTP => {
            let p = l4.get(..4)?;
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        }
        L4Proto::ICMP | L4Proto::ICMPV6 => {
            let p = l4.get(..8)?;
            let echo = matches!((proto, p[0]), (1, 0 | 8) | (58, 128 | 129));
            let id = if echo {
                u16::from_be_bytes([p[4], p[5]])
            } else {
                0
            };
            (id, id)
        }
        _ => (0, 0),
    };
    Some(Quoted {
        src,
        dst,
        proto,
        sport,
        dport,
    })
}
