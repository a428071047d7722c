//! IPv6: the fixed header, the extension header walk, and fragmentation, then
//! the upper-layer header via [`l4`](super::l4).
//!
//! The walk follows Next Header through Hop-by-Hop Options (0), Routing (43),
//! Fragment (44), Authentication Header (51) and Destination Options (60), and
//! stops at the first value that is none of these: that is the upper layer,
//! whether xpf reads its header (TCP, UDP, SCTP, ICMPv6) or not (ESP, No Next
//! Header, anything else, reported with ports 0). At most
//! [`MAX_IPV6_EXT_HEADERS`] are walked, so a frame costs bounded work.
//!
//! Every extension header is bounds-checked against the IPv6 payload (not the
//! frame) before its fields are read: first its 2 fixed bytes (8 for
//! Fragment), then the whole length its length field gives. After these checks
//! no accessor or slice below panics.

use std::net::IpAddr;

use pnet_packet::ipv6::{FragmentPacket, Ipv6Packet};

use super::{l4, FlowInfo, Fragment, ParseError, MAX_IPV6_EXT_HEADERS};

/// Length of the fixed IPv6 header.
const HLEN: usize = 40;

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTS: u8 = 60;

/// Length of the Fragment header, which has no length field.
const FRAGMENT_HLEN: usize = 8;
/// More Fragments flag in the Fragment header's offset/flags word.
const MORE_FRAGMENTS: u16 = 0x0001;
/// Fragment Offset bits (8-byte units, left in place) of that word.
const OFFSET_MASK: u16 = 0xfff8;

/// Parses the IPv6 packet that starts `l3` bytes into `frame`.
#[inline]
pub(super) fn parse(frame: &[u8], l3: usize) -> Result<FlowInfo, ParseError> {
    let avail = frame.get(l3..).unwrap_or_default();
    if avail.len() < HLEN {
        return Err(ParseError::TruncatedIpv6Header);
    }
    // HLEN is Ipv6Packet's minimum size, so new() is Some.
    let ip = Ipv6Packet::new(avail).ok_or(ParseError::TruncatedIpv6Header)?;
    if ip.get_version() != 6 {
        return Err(ParseError::Ipv6VersionMismatch);
    }
    let end = HLEN + usize::from(ip.get_payload_length());
    if end > avail.len() {
        return Err(ParseError::Ipv6PayloadLengthPastFrame);
    }
    // In bounds: end <= avail.len() was checked above. Ending the slice at
    // `end` is what drops Ethernet padding.
    let packet = &avail[..end];

    let src = IpAddr::V6(ip.get_source());
    let dst = IpAddr::V6(ip.get_destination());
    // l3 is ETH_HLEN, so it fits in a u16.
    let l3_offset = l3 as u16;

    let mut next = ip.get_next_header().0;
    // Offset of the header `next` names, from the start of the IPv6 header.
    let mut off = HLEN;
    let mut walked = 0;
    let mut seen_fragment = false;
    let mut fragment = Fragment::None;
    while matches!(next, HOP_BY_HOP | ROUTING | FRAGMENT | AUTH | DEST_OPTS) {
        walked += 1;
        if walked > MAX_IPV6_EXT_HEADERS {
            return Err(ParseError::Ipv6TooManyExtensionHeaders);
        }
        // In bounds: off <= end is kept by every step of the loop.
        let rest = &packet[off..];
        let fixed = if next == FRAGMENT { FRAGMENT_HLEN } else { 2 };
        if rest.len() < fixed {
            return Err(ParseError::Ipv6TruncatedExtensionHeader);
        }
        let len = match next {
            FRAGMENT => FRAGMENT_HLEN,
            // RFC 4302: Payload Len counts 4-byte words, minus 2.
            AUTH => (usize::from(rest[1]) + 2) * 4,
            // RFC 8200: Hdr Ext Len counts 8-byte units beyond the first.
            _ => (usize::from(rest[1]) + 1) * 8,
        };
        if rest.len() < len {
            return Err(ParseError::Ipv6TruncatedExtensionHeader);
        }

        if next == FRAGMENT {
            if seen_fragment {
                return Err(ParseError::Ipv6RepeatedFragmentHeader);
            }
            seen_fragment = true;
            // FRAGMENT_HLEN bytes are present (checked above), which is
            // FragmentPacket's minimum size: new() is Some.
            let frag = FragmentPacket::new(rest).ok_or(ParseError::Ipv6TruncatedExtensionHeader)?;
            let word = frag.get_fragment_offset_with_flags();
            let id = frag.get_id();
            if word & OFFSET_MASK != 0 {
                return Ok(FlowInfo {
                    src,
                    dst,
                    proto: frag.get_next_header().0,
                    sport: 0,
                    dport: 0,
                    icmp_type: 0,
                    icmp_code: 0,
                    tcp_flags: 0,
                    // The offset's 13 bits sit above 3 flag bits, so
                    // masking leaves it in bytes.
                    fragment: Fragment::Later {
                        id,
                        offset: word & OFFSET_MASK,
                    },
                    l3_offset,
                    l4_offset: 0,
                    l4_len: 0,
                });
            }
            if word & MORE_FRAGMENTS != 0 {
                // The fragmentable part is what follows this header; fits:
                // at most the 16-bit Payload Length.
                fragment = Fragment::First {
                    id,
                    len: (end - off - FRAGMENT_HLEN) as u16,
                };
            }
        }
        next = rest[0];
        off += len;
    }

    // In bounds: off <= end (every header was checked to fit before `off`
    // moved past it).
    let segment = &packet[off..];
    let l4 = l4::parse(next, segment)?;
    Ok(FlowInfo {
        src,
        dst,
        proto: next,
        sport: l4.sport,
        dport: l4.dport,
        icmp_type: l4.icmp_type,
        icmp_code: l4.icmp_code,
        tcp_flags: l4.tcp_flags,
        fragment,
        l3_offset,
        // Fits: at most 14 + 40 + 8 * 2048 (asserted in mod.rs).
        l4_offset: (l3 + off) as u16,
        // Fits: at most the 16-bit Payload Length.
        l4_len: (end - off) as u16,
    })
}
