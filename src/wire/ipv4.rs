//! IPv4: the header (options skipped, never interpreted), total length and
//! fragmentation, then the upper-layer header via [`l4`](super::l4).
//!
//! Checks run in header order so the first field that is wrong names the drop:
//! 20 bytes present, version 4, IHL >= 5, IHL * 4 bytes present, and
//! IHL * 4 <= Total Length <= bytes present. Once they pass, every fixed
//! header field (through `Ipv4Packet` or at its offset) lies inside the first
//! 20 checked bytes and the upper layer is exactly `[IHL * 4, Total Length)`,
//! so nothing below can panic.
//! The header checksum is not verified (see [`parse`](super::parse)).

use std::net::{IpAddr, Ipv4Addr};

use pnet_packet::ipv4::Ipv4Packet;

use super::{l4, FlowInfo, Fragment, ParseError};

/// Length of an IPv4 header without options (IHL 5).
const MIN_HLEN: usize = 20;
/// More Fragments flag in the flags / fragment offset word (bytes 6..8).
const MORE_FRAGMENTS: u16 = 0x2000;
/// Fragment Offset bits of that word.
const FRAGMENT_OFFSET: u16 = 0x1fff;

/// Parses the IPv4 packet that starts `l3` bytes into `frame`.
#[inline]
pub(super) fn parse(frame: &[u8], l3: usize) -> Result<FlowInfo, ParseError> {
    let avail = frame.get(l3..).unwrap_or_default();
    if avail.len() < MIN_HLEN {
        return Err(ParseError::TruncatedIpv4Header);
    }
    // MIN_HLEN is Ipv4Packet's minimum size, so new() is Some.
    let ip = Ipv4Packet::new(avail).ok_or(ParseError::TruncatedIpv4Header)?;
    if ip.get_version() != 4 {
        return Err(ParseError::Ipv4VersionMismatch);
    }
    let hlen = usize::from(ip.get_header_length()) * 4;
    if hlen < MIN_HLEN {
        return Err(ParseError::Ipv4IhlTooSmall);
    }
    if hlen > avail.len() {
        return Err(ParseError::TruncatedIpv4Header);
    }
    let total = usize::from(ip.get_total_length());
    if total > avail.len() {
        return Err(ParseError::Ipv4TotalLengthPastFrame);
    }
    if total < hlen {
        return Err(ParseError::Ipv4TotalLengthTooSmall);
    }

    let proto = ip.get_next_level_protocol().0;
    // Addresses, Identification and the flags/fragment offset word are read
    // at their fixed RFC 791 offsets, inside the MIN_HLEN bytes checked above,
    // rather than through `Ipv4Packet`: pnet's accessors for these four are
    // not inlined and were about half of this function's instructions
    // (callgrind, release build).
    let src = IpAddr::V4(Ipv4Addr::new(avail[12], avail[13], avail[14], avail[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(avail[16], avail[17], avail[18], avail[19]));
    let id = u32::from(u16::from_be_bytes([avail[4], avail[5]]));
    let flags_offset = u16::from_be_bytes([avail[6], avail[7]]);
    // l3 is ETH_HLEN and hlen at most 60, so both fit in a u16.
    let l3_offset = l3 as u16;

    if flags_offset & FRAGMENT_OFFSET != 0 {
        return Ok(FlowInfo {
            src,
            dst,
            proto,
            sport: 0,
            dport: 0,
            icmp_type: 0,
            icmp_code: 0,
            tcp_flags: 0,
            // Offset units are 8 bytes; 13 bits of them fit a u16.
            fragment: Fragment::Later {
                id,
                offset: (flags_offset & FRAGMENT_OFFSET) << 3,
            },
            l3_offset,
            l4_offset: 0,
            l4_len: 0,
        });
    }
    let fragment = if flags_offset & MORE_FRAGMENTS != 0 {
        // total - hlen: at most 65535 - 20.
        Fragment::First {
            id,
            len: (total - hlen) as u16,
        }
    } else {
        Fragment::None
    };

    // In bounds: hlen <= total <= avail.len() was checked above. Ending the
    // slice at `total` is what drops Ethernet padding.
    let segment = &avail[hlen..total];
    let l4 = l4::parse(proto, segment)?;
    Ok(FlowInfo {
        src,
        dst,
        proto,
        sport: l4.sport,
        dport: l4.dport,
        icmp_type: l4.icmp_type,
        icmp_code: l4.icmp_code,
        tcp_flags: l4.tcp_flags,
        fragment,
        l3_offset,
        l4_offset: (l3 + hlen) as u16,
        // At most 65535 - 20: total is a u16.
        l4_len: (total - hlen) as u16,
    })
}
