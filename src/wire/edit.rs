//! Edits to frames [`build`](super::build) wrote: what an unusual or hostile
//! sender does to a valid frame (IPv4 options and fragments, IPv6 extension
//! headers and fragments, cut headers). For the parser's tests, the
//! hostile-frame corpus ([`crate::hostile`]) and the fuzzers' seeds; never on
//! the datapath.
//!
//! Every function takes an untagged Ethernet II frame with a 20-byte IPv4
//! header or an IPv6 header without extension headers, as `build` writes
//! them, unless it says otherwise, and panics on anything shorter: these
//! are fixtures, not parsers.

use std::net::Ipv6Addr;

/// Writes `v` big-endian at `at`.
pub fn set_u16(frame: &mut [u8], at: usize, v: u16) {
    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Rewrites the IPv4 header checksum of an IPv4 frame whose header is all
/// there (a no-op for anything else), so an edited fixture differs from a
/// valid frame only in the field under test, and a host on the path does
/// not drop it for its checksum alone.
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    if frame.get(12..14) != Some(&[0x08, 0x00]) || frame.get(14).is_none_or(|b| b >> 4 != 4) {
        return;
    }
    let hlen = usize::from(frame[14] & 0xf) * 4;
    if hlen < 20 || frame.len() < 14 + hlen {
        return;
    }
    set_u16(frame, 24, 0);
    let mut sum: u32 = frame[14..14 + hlen]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    set_u16(frame, 24, !(sum as u16));
}

/// Cuts the upper layer to `n` bytes and makes the IP length field agree.
pub fn with_l4_len(mut frame: Vec<u8>, n: usize) -> Vec<u8> {
    if frame[12..14] == [0x08, 0x00] {
        frame.truncate(34 + n);
        set_u16(&mut frame, 16, (20 + n) as u16);
        fix_ipv4_checksum(&mut frame);
    } else {
        frame.truncate(54 + n);
        set_u16(&mut frame, 18, n as u16);
    }
    frame
}

/// Marks an IPv4 frame as a fragment of datagram `id` at `offset_units`
/// (8-byte units), its bytes unchanged.
pub fn mark_v4_fragment(mut frame: Vec<u8>, id: u16, more: bool, offset_units: u16) -> Vec<u8> {
    set_u16(&mut frame, 18, id);
    set_u16(&mut frame, 20, (u16::from(more) << 13) | offset_units);
    fix_ipv4_checksum(&mut frame);
    frame
}

/// Bytes `[off, off + len)` of the IPv4 datagram in `full` as fragment of
/// datagram `id` (Don't Fragment cleared).
pub fn cut_v4_fragment(full: &[u8], id: u16, off: usize, len: usize, more: bool) -> Vec<u8> {
    let data = &full[34..];
    let mut f = full[..34].to_vec();
    f.extend_from_slice(&data[off.min(data.len())..(off + len).min(data.len())]);
    let total = (f.len() - 14) as u16;
    set_u16(&mut f, 16, total);
    mark_v4_fragment(f, id, more, (off / 8) as u16)
}

/// Inserts `options` (padded with zeros to whole words) after the IPv4
/// header and makes IHL and Total Length agree.
pub fn ipv4_options(frame: &mut Vec<u8>, options: &[u8]) {
    let mut opts = options.to_vec();
    opts.resize(options.len().div_ceil(4) * 4, 0);
    frame.splice(34..34, opts.iter().copied());
    frame[14] = 0x40 | (5 + opts.len() / 4) as u8;
    let total = (frame.len() - 14) as u16;
    set_u16(frame, 16, total);
    fix_ipv4_checksum(frame);
}

/// An IPv6 extension header to splice in: its own Next Header value
/// (`kind`) and bytes, byte 0 filled in by the splicer.
#[derive(Clone, Debug)]
pub struct Ext {
    pub kind: u8,
    pub bytes: Vec<u8>,
}

/// Hop-by-Hop (0) or Destination Options (60) of `(len8 + 1) * 8` bytes,
/// filled with one PadN option.
pub fn options_ext(kind: u8, len8: u8) -> Ext {
    let len = (usize::from(len8) + 1) * 8;
    let mut bytes = vec![0u8; len];
    bytes[1] = len8;
    bytes[2] = 1; // PadN
    bytes[3] = (len - 4) as u8;
    Ext { kind, bytes }
}

/// A Routing header of `routing_type` (0: the deprecated source route, 4:
/// segment routing) with one address and `segments_left`.
pub fn routing_ext(routing_type: u8, segments_left: u8, segment: Ipv6Addr) -> Ext {
    let mut bytes = vec![0u8; 24];
    bytes[1] = 2;
    bytes[2] = routing_type;
    bytes[3] = segments_left;
    bytes[8..24].copy_from_slice(&segment.octets());
    Ext { kind: 43, bytes }
}

pub fn fragment_ext(offset_units: u16, more: bool, id: u32) -> Ext {
    let mut bytes = vec![0u8; 8];
    bytes[2..4].copy_from_slice(&((offset_units << 3) | u16::from(more)).to_be_bytes());
    bytes[4..8].copy_from_slice(&id.to_be_bytes());
    Ext { kind: 44, bytes }
}

/// AH with Payload Len `n`: (n + 2) * 4 bytes.
pub fn auth_ext(n: u8) -> Ext {
    let mut bytes = vec![0u8; (usize::from(n) + 2) * 4];
    bytes[1] = n;
    Ext { kind: 51, bytes }
}

/// `exts` chained between the IPv6 header and the upper layer, Payload
/// Length fixed.
pub fn splice_v6(frame: &[u8], exts: &[Ext]) -> Vec<u8> {
    let upper = frame[20];
    let mut out = frame[..54].to_vec();
    if let Some(first) = exts.first() {
        out[20] = first.kind;
    }
    for (i, ext) in exts.iter().enumerate() {
        let at = out.len();
        out.extend_from_slice(&ext.bytes);
        out[at] = exts.get(i + 1).map_or(upper, |e| e.kind);
    }
    out.extend_from_slice(&frame[54..]);
    let payload = (out.len() - 54) as u16;
    set_u16(&mut out, 18, payload);
    out
}

/// Bytes `[off, off + len)` of an IPv6 datagram's fragmentable part, as a
/// fragment of datagram `id`: the part is `inner` headers, then the upper
/// layer of `full`.
pub fn cut_v6_fragment(
    full: &[u8],
    inner: &[&Ext],
    id: u32,
    off: usize,
    len: usize,
    more: bool,
) -> Vec<u8> {
    let upper = full[20];
    let mut part = Vec::new();
    for (i, e) in inner.iter().enumerate() {
        let at = part.len();
        part.extend_from_slice(&e.bytes);
        part[at] = inner.get(i + 1).map_or(upper, |n| n.kind);
    }
    part.extend_from_slice(&full[54..]);
    let mut f = full[..54].to_vec();
    f[20] = 44;
    let mut fh = fragment_ext((off / 8) as u16, more, id).bytes;
    fh[0] = inner.first().map_or(upper, |e| e.kind);
    f.extend_from_slice(&fh);
    f.extend_from_slice(&part[off.min(part.len())..(off + len).min(part.len())]);
    let payload = (f.len() - 54) as u16;
    set_u16(&mut f, 18, payload);
    f
}
