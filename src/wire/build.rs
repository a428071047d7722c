//! Writes valid Ethernet frames into a caller's buffer, for tests, benchmarks
//! and the traffic generator.
//!
//! Invariants: it never allocates and never writes past the frame it reports;
//! a buffer too small, mixed address families or an oversized packet is a
//! [`BuildError`], not a panic. Frames are untagged Ethernet II carrying IPv4
//! (IHL 5, DF set, identification 0, TTL 64) or IPv6 (no extension headers,
//! hop limit 64); the payload is `payload_len` zero bytes. Every checksum is
//! written and verifies: the IPv4 header checksum, the TCP / UDP / ICMPv6
//! checksums over their pseudo-headers, the ICMP checksum, and the SCTP
//! CRC32c. What [`super::parse`] reads back from a built frame is what was
//! asked for (addresses, protocol, ports or echo identifier, TCP flags).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pnet_packet::icmp::{self, IcmpPacket, IcmpType, MutableIcmpPacket};
use pnet_packet::icmpv6::{self, Icmpv6Packet, Icmpv6Type, MutableIcmpv6Packet};
use pnet_packet::ip::IpNextHeaderProtocol;
use pnet_packet::ipv4::{self, Ipv4Flags, MutableIpv4Packet};
use pnet_packet::ipv6::MutableIpv6Packet;
use pnet_packet::tcp::{self, MutableTcpPacket};
use pnet_packet::udp::{self, MutableUdpPacket};

use super::{L4Proto, ETH_HLEN};

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TTL: u8 = 64;

/// Link and network addresses of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameAddrs {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Both addresses must be of one family; it picks IPv4 or IPv6.
    pub src: IpAddr,
    pub dst: IpAddr,
}

/// The upper-layer header to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp {
        sport: u16,
        dport: u16,
    },
    /// Sequence number 1, acknowledgement 0, window 65535, no options.
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    /// Common header only (verification tag 1); the payload is zeros, not
    /// well-formed chunks.
    Sctp {
        sport: u16,
        dport: u16,
    },
    /// ICMP Echo (8) / Echo Reply (0) over IPv4, ICMPv6 Echo Request (128) /
    /// Reply (129) over IPv6.
    IcmpEcho {
        request: bool,
        identifier: u16,
        sequence: u16,
    },
}

impl Transport {
    /// Bytes of header this writes before the payload.
    pub fn header_len(self) -> usize {
        match self {
            Transport::Udp { .. } => 8,
            Transport::Tcp { .. } => 20,
            Transport::Sctp { .. } => 12,
            Transport::IcmpEcho { .. } => 8,
        }
    }
}

/// Why a frame could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("buffer of {available} bytes cannot hold the {needed}-byte frame")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("source {src} and destination {dst} are of different address families")]
    MixedFamilies { src: IpAddr, dst: IpAddr },
    #[error("IP packet of {ip_len} bytes does not fit its 16-bit length field")]
    TooLong { ip_len: usize },
}

/// The address pair, once the families are known to match.
#[derive(Clone, Copy)]
enum Ips {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

/// Writes a frame at the start of `buf` and returns its length.
pub fn frame(
    buf: &mut [u8],
    addrs: &FrameAddrs,
    transport: Transport,
    payload_len: usize,
) -> Result<usize, BuildError> {
    let ips = match (addrs.src, addrs.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ips::V4(s, d),
        (IpAddr::V6(s), IpAddr::V6(d)) => Ips::V6(s, d),
        (src, dst) => return Err(BuildError::MixedFamilies { src, dst }),
    };
    let (ip_hlen, ethertype) = match ips {
        Ips::V4(..) => (IPV4_HLEN, 0x0800u16),
        Ips::V6(..) => (IPV6_HLEN, 0x86dd),
    };
    let l4_len = transport.header_len().saturating_add(payload_len);
    let ip_len = ip_hlen.saturating_add(l4_len);
    // IPv4 Total Length counts the header, IPv6 Payload Length does not.
    let length_field = match ips {
        Ips::V4(..) => ip_len,
        Ips::V6(..) => l4_len,
    };
    let length_field = u16::try_from(length_field).map_err(|_| BuildError::TooLong { ip_len })?;
    let needed = ETH_HLEN + ip_len;
    let too_small = BuildError::BufferTooSmall {
        needed,
        available: buf.len(),
    };
    let frame = buf.get_mut(..needed).ok_or(too_small)?;
    frame.fill(0);

    let (eth, ip) = frame.split_at_mut(ETH_HLEN);
    eth[0..6].copy_from_slice(&addrs.dst_mac);
    eth[6..12].copy_from_slice(&addrs.src_mac);
    eth[12..14].copy_from_slice(&ethertype.to_be_bytes());

    let proto = match (transport, ips) {
        (Transport::Udp { .. }, _) => L4Proto::UDP,
        (Transport::Tcp { .. }, _) => L4Proto::TCP,
        (Transport::Sctp { .. }, _) => L4Proto::SCTP,
        (Transport::IcmpEcho { .. }, Ips::V4(..)) => L4Proto::ICMP,
        (Transport::IcmpEcho { .. }, Ips::V6(..)) => L4Proto::ICMPV6,
    };
    let (l3, segment) = ip.split_at_mut(ip_hlen);
    // The views below are made over slices sized from the same header
    // lengths as their pnet minimums, so `new()` is Some; `too_small` only
    // keeps this function free of panics.
    match ips {
        Ips::V4(s, d) => {
            let mut ip = MutableIpv4Packet::new(l3).ok_or(too_small)?;
            ip.set_version(4);
            ip.set_header_length((IPV4_HLEN / 4) as u8);
            ip.set_total_length(length_field);
            ip.set_flags(Ipv4Flags::DontFragment);
            ip.set_ttl(TTL);
            ip.set_next_level_protocol(IpNextHeaderProtocol(proto.0));
            ip.set_source(s);
            ip.set_destination(d);
            let sum = ipv4::checksum(&ip.to_immutable());
            ip.set_checksum(sum);
        }
        Ips::V6(s, d) => {
            let mut ip = MutableIpv6Packet::new(l3).ok_or(too_small)?;
            ip.set_version(6);
            ip.set_payload_length(length_field);
            ip.set_next_header(IpNextHeaderProtocol(proto.0));
            ip.set_hop_limit(TTL);
            ip.set_source(s);
            ip.set_destination(d);
        }
    }
    write_transport(segment, transport, ips).ok_or(too_small)?;
    Ok(needed)
}

/// Writes the upper-layer header and its checksum over the whole `segment`
/// (header plus the zeroed payload). `None` only if `segment` is shorter than
/// the header, which `frame` rules out.
fn write_transport(segment: &mut [u8], transport: Transport, ips: Ips) -> Option<()> {
    match transport {
        Transport::Udp { sport, dport } => {
            // Fits: `frame` checked the whole upper layer against a u16 length.
            let len = segment.len() as u16;
            let mut udp = MutableUdpPacket::new(segment)?;
            udp.set_source(sport);
            udp.set_destination(dport);
            udp.set_length(len);
            let sum = match ips {
                Ips::V4(s, d) => udp::ipv4_checksum(&udp.to_immutable(), &s, &d),
                Ips::V6(s, d) => udp::ipv6_checksum(&udp.to_immutable(), &s, &d),
            };
            // RFC 768: a computed 0 is sent as all ones, 0 means "no checksum".
            udp.set_checksum(if sum == 0 { 0xffff } else { sum });
        }
        Transport::Tcp {
            sport,
            dport,
            flags,
        } => {
            let mut tcp = MutableTcpPacket::new(segment)?;
            tcp.set_source(sport);
            tcp.set_destination(dport);
            tcp.set_sequence(1);
            tcp.set_data_offset(5);
            tcp.set_flags(flags);
            tcp.set_window(u16::MAX);
            let sum = match ips {
                Ips::V4(s, d) => tcp::ipv4_checksum(&tcp.to_immutable(), &s, &d),
                Ips::V6(s, d) => tcp::ipv6_checksum(&tcp.to_immutable(), &s, &d),
            };
            tcp.set_checksum(sum);
        }
        Transport::Sctp { sport, dport } => {
            let header = segment.get_mut(..12)?;
            header[0..2].copy_from_slice(&sport.to_be_bytes());
            header[2..4].copy_from_slice(&dport.to_be_bytes());
            header[4..8].copy_from_slice(&1u32.to_be_bytes());
            // Computed with the checksum field zero, as `frame` left it.
            let crc = sctp_crc32c(segment);
            segment[8..12].copy_from_slice(&crc.to_le_bytes());
        }
        Transport::IcmpEcho {
            request,
            identifier,
            sequence,
        } => match ips {
            Ips::V4(..) => {
                let ty = if request { 8 } else { 0 };
                let mut echo = icmp::echo_request::MutableEchoRequestPacket::new(segment)?;
                echo.set_icmp_type(IcmpType(ty));
                echo.set_identifier(identifier);
                echo.set_sequence_number(sequence);
                let sum = icmp::checksum(&IcmpPacket::new(segment)?);
                MutableIcmpPacket::new(segment)?.set_checksum(sum);
            }
            Ips::V6(s, d) => {
                let ty = if request { 128 } else { 129 };
                let mut echo = icmpv6::echo_request::MutableEchoRequestPacket::new(segment)?;
                echo.set_icmpv6_type(Icmpv6Type(ty));
                echo.set_identifier(identifier);
                echo.set_sequence_number(sequence);
                let sum = icmpv6::checksum(&Icmpv6Packet::new(segment)?, &s, &d);
                MutableIcmpv6Packet::new(segment)?.set_checksum(sum);
            }
        },
    }
    Some(())
}

/// The SCTP checksum (RFC 9260 appendix A): CRC32c over the whole packet
/// with the checksum field zero. It goes on the wire least significant byte
/// first (`to_le_bytes`), as RFC 9260's sample code and Linux's
/// `sctp_compute_cksum` put it.
pub fn sctp_crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// A UDP datagram of `payload_len` zero bytes.
pub fn udp(
    buf: &mut [u8],
    addrs: &FrameAddrs,
    sport: u16,
    dport: u16,
    payload_len: usize,
) -> Result<usize, BuildError> {
    frame(buf, addrs, Transport::Udp { sport, dport }, payload_len)
}

/// A TCP segment with `flags` (see [`super::tcp_flags`]) and `payload_len`
/// zero bytes.
pub fn tcp(
    buf: &mut [u8],
    addrs: &FrameAddrs,
    sport: u16,
    dport: u16,
    flags: u8,
    payload_len: usize,
) -> Result<usize, BuildError> {
    frame(
        buf,
        addrs,
        Transport::Tcp {
            sport,
            dport,
            flags,
        },
        payload_len,
    )
}

/// An SCTP packet: common header and `payload_len` zero bytes.
pub fn sctp(
    buf: &mut [u8],
    addrs: &FrameAddrs,
    sport: u16,
    dport: u16,
    payload_len: usize,
) -> Result<usize, BuildError> {
    frame(buf, addrs, Transport::Sctp { sport, dport }, payload_len)
}

/// An ICMP (IPv4) or ICMPv6 (IPv6) echo request or reply.
pub fn icmp_echo(
    buf: &mut [u8],
    addrs: &FrameAddrs,
    request: bool,
    identifier: u16,
    sequence: u16,
    payload_len: usize,
) -> Result<usize, BuildError> {
    let echo = Transport::IcmpEcho {
        request,
        identifier,
        sequence,
    };
    frame(buf, addrs, echo, payload_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C catalogue check value for "123456789".
        assert_eq!(sctp_crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn refuses_small_buffers_mixed_families_and_oversized_packets() {
        let v4 = FrameAddrs {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        };
        let mut buf = [0u8; 41];
        assert_eq!(
            udp(&mut buf, &v4, 1, 2, 0),
            Err(BuildError::BufferTooSmall {
                needed: 42,
                available: 41
            })
        );
        let mixed = FrameAddrs {
            dst: IpAddr::V6(Ipv6Addr::LOCALHOST),
            ..v4
        };
        assert!(matches!(
            udp(&mut buf, &mixed, 1, 2, 0),
            Err(BuildError::MixedFamilies { .. })
        ));
        assert_eq!(
            udp(&mut buf, &v4, 1, 2, 65535 - 28 + 1),
            Err(BuildError::TooLong { ip_len: 65536 })
        );
        assert!(matches!(
            udp(&mut buf, &v4, 1, 2, usize::MAX),
            Err(BuildError::TooLong { .. })
        ));
    }
}
