//! The first bytes of the upper-layer header: ports, TCP flags, ICMP type,
//! code and echo identifier. Nothing past what policy and conntrack key on is
//! read, and TCP options, UDP length and payloads are not interpreted.
//!
//! `segment` is the upper-layer data of one IP packet (Ethernet padding already
//! cut off), so "truncated" means the header runs past the IP packet. Each
//! header's minimum length is checked before its pnet view is made, and only
//! fixed-offset accessors inside that minimum are called: after these checks
//! no accessor panics. ICMP is read by protocol number (1 is ICMPv4, 58 is
//! ICMPv6) whatever the IP version, since the number is what the packet says.

use pnet_packet::icmp::{echo_request::EchoRequestPacket, IcmpPacket};
use pnet_packet::icmpv6::{echo_request::EchoRequestPacket as Echo6RequestPacket, Icmpv6Packet};
use pnet_packet::tcp::TcpPacket;
use pnet_packet::udp::UdpPacket;

use super::{L4Proto, ParseError};

const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// Ports, verification tag and checksum (RFC 9260 section 3.1).
const SCTP_COMMON_HLEN: usize = 12;
/// Type, code, checksum and the 4 bytes that follow in every message.
const ICMP_HLEN: usize = 8;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// Upper-layer facts; all zero for protocols whose header is not read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct L4Header {
    pub sport: u16,
    pub dport: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub tcp_flags: u8,
}

/// Reads the header of protocol `proto` at the start of `segment`.
#[inline]
pub(super) fn parse(proto: u8, segment: &[u8]) -> Result<L4Header, ParseError> {
    match L4Proto(proto) {
        L4Proto::TCP => tcp(segment),
        L4Proto::UDP => udp(segment),
        L4Proto::SCTP => sctp(segment),
        L4Proto::ICMP => icmp(segment),
        L4Proto::ICMPV6 => icmpv6(segment),
        _ => Ok(L4Header::default()),
    }
}

#[inline]
fn tcp(segment: &[u8]) -> Result<L4Header, ParseError> {
    if segment.len() < TCP_MIN_HLEN {
        return Err(ParseError::TruncatedTcp);
    }
    // TCP_MIN_HLEN is TcpPacket's minimum size, so new() is Some.
    let tcp = TcpPacket::new(segment).ok_or(ParseError::TruncatedTcp)?;
    let hlen = usize::from(tcp.get_data_offset()) * 4;
    if hlen < TCP_MIN_HLEN {
        return Err(ParseError::TcpDataOffsetTooSmall);
    }
    // Options are not read, but a header claiming to run past the packet is
    // malformed and the receiver would drop it: refuse it here too.
    if hlen > segment.len() {
        return Err(ParseError::TcpDataOffsetPastPacket);
    }
    Ok(L4Header {
        sport: tcp.get_source(),
        dport: tcp.get_destination(),
        tcp_flags: tcp.get_flags(),
        ..L4Header::default()
    })
}

#[inline]
fn udp(segment: &[u8]) -> Result<L4Header, ParseError> {
    if segment.len() < UDP_HLEN {
        return Err(ParseError::TruncatedUdp);
    }
    // UDP_HLEN is UdpPacket's minimum size, so new() is Some.
    let udp = UdpPacket::new(segment).ok_or(ParseError::TruncatedUdp)?;
    Ok(L4Header {
        sport: udp.get_source(),
        dport: udp.get_destination(),
        ..L4Header::default()
    })
}

#[inline]
fn sctp(segment: &[u8]) -> Result<L4Header, ParseError> {
    if segment.len() < SCTP_COMMON_HLEN {
        return Err(ParseError::TruncatedSctp);
    }
    // pnet has no SCTP view; the ports are the first two 16-bit words, inside
    // the bytes checked above.
    Ok(L4Header {
        sport: u16::from_be_bytes([segment[0], segment[1]]),
        dport: u16::from_be_bytes([segment[2], segment[3]]),
        ..L4Header::default()
    })
}

#[inline]
fn icmp(segment: &[u8]) -> Result<L4Header, ParseError> {
    if segment.len() < ICMP_HLEN {
        return Err(ParseError::TruncatedIcmp);
    }
    // ICMP_HLEN covers IcmpPacket's and EchoRequestPacket's minimum sizes.
    let icmp = IcmpPacket::new(segment).ok_or(ParseError::TruncatedIcmp)?;
    let icmp_type = icmp.get_icmp_type().0;
    let sport = match icmp_type {
        // Echo and Echo Reply share one layout (RFC 792), so the request
        // view reads the reply's identifier too.
        ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => EchoRequestPacket::new(segment)
            .ok_or(ParseError::TruncatedIcmp)?
            .get_identifier(),
        _ => 0,
    };
    Ok(L4Header {
        sport,
        icmp_type,
        icmp_code: icmp.get_icmp_code().0,
        ..L4Header::default()
    })
}

#[inline]
fn icmpv6(segment: &[u8]) -> Result<L4Header, ParseError> {
    if segment.len() < ICMP_HLEN {
        return Err(ParseError::TruncatedIcmpv6);
    }
    // ICMP_HLEN covers Icmpv6Packet's and its EchoRequestPacket's minimum sizes.
    let icmp = Icmpv6Packet::new(segment).ok_or(ParseError::TruncatedIcmpv6)?;
    let icmp_type = icmp.get_icmpv6_type().0;
    let sport = match icmp_type {
        // Echo Request and Reply share one layout (RFC 4443 section 4).
        ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY => Echo6RequestPacket::new(segment)
            .ok_or(ParseError::TruncatedIcmpv6)?
            .get_identifier(),
        _ => 0,
    };
    Ok(L4Header {
        sport,
        icmp_type,
        icmp_code: icmp.get_icmpv6_code().0,
        ..L4Header::default()
    })
}
