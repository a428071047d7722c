//! Frame parsing: the bytes of an Ethernet frame an endpoint sends, turned into
//! the flow facts the policy engine and conntrack key on ([`FlowInfo`]).
//!
//! This module owns the wire formats xpf reads (Ethernet II, IPv4 with options,
//! IPv6 with its extension headers, and the first bytes of TCP, UDP, SCTP, ICMP
//! and ICMPv6), the table of reasons a frame is refused ([`ParseError`]), and a
//! frame writer for tests, benchmarks and the traffic generator ([`build`]).
//!
//! Invariants [`parse`] keeps, for every input:
//!
//! - It never panics and never allocates. It is called once per frame on the
//!   datapath; a refused frame is an `Err` whose [`ParseError::code`] indexes a
//!   counter array, never a heap-allocated message.
//! - It never guesses. Every length it follows (IHL, total length, payload
//!   length, extension header lengths, TCP data offset) is checked against the
//!   bytes actually present before anything behind it is read; anything it
//!   cannot read in full is a drop with a named reason.
//! - Bounds are checked explicitly, in this module, *before* a pnet view is
//!   made. pnet's `new()` only checks a header's minimum size, so the parsers
//!   call nothing but the views' fixed-offset accessors (or read a fixed
//!   offset directly where pnet's accessor is slow) that lie inside bytes
//!   already checked, and never the variable-length ones (`payload()`,
//!   `get_options()`, ...). After these checks no accessor panics.
//! - Upper-layer bounds are taken against the IP packet (its total length or
//!   payload length), not the frame: bytes after the IP packet (Ethernet
//!   padding) are ignored, and a header that runs into them is truncated.
//! - Every offset it reports fits in a `u16`: a frame carries one IPv4 header
//!   of at most 60 bytes, or at most [`MAX_IPV6_EXT_HEADERS`] extension headers
//!   of at most 2048 bytes each (checked at compile time below).

pub mod build;
pub mod edit;
mod error;
pub mod icmp_error;
mod ipv4;
mod ipv6;
mod l4;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

use pnet_packet::ethernet::{EtherTypes, EthernetPacket};

pub use error::ParseError;

/// Length of an Ethernet II header (no 802.1Q tag: tagged frames are refused).
pub const ETH_HLEN: usize = 14;

/// Most IPv6 extension headers [`parse`] walks before it refuses the packet
/// with [`ParseError::Ipv6TooManyExtensionHeaders`]. Legitimate traffic uses a
/// handful at most (RFC 8200 section 4.1 orders six kinds, Destination Options
/// twice); the limit bounds the work an endpoint can make one frame cost.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

// The largest IPv6 extension header is (255 + 1) * 8 = 2048 bytes, so the
// furthest upper-layer offset parse can report stays inside a u16.
const _: () = assert!(ETH_HLEN + 40 + MAX_IPV6_EXT_HEADERS * 2048 <= u16::MAX as usize);

/// An IP protocol number (the IPv4 Protocol / IPv6 Next Header value of the
/// upper layer). Numbers without a constant here are kept as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct L4Proto(pub u8);

impl L4Proto {
    pub const ICMP: L4Proto = L4Proto(1);
    pub const TCP: L4Proto = L4Proto(6);
    pub const UDP: L4Proto = L4Proto(17);
    pub const ESP: L4Proto = L4Proto(50);
    pub const AH: L4Proto = L4Proto(51);
    pub const ICMPV6: L4Proto = L4Proto(58);
    pub const NO_NEXT_HEADER: L4Proto = L4Proto(59);
    pub const SCTP: L4Proto = L4Proto(132);

    /// Whether [`parse`] reads source and destination ports for this protocol.
    pub fn has_ports(self) -> bool {
        matches!(self, L4Proto::TCP | L4Proto::UDP | L4Proto::SCTP)
    }

    /// Lower-case name of the protocols xpf policy names, for logs and CLI output.
    pub fn name(self) -> Option<&'static str> {
        match self {
            L4Proto::ICMP => Some("icmp"),
            L4Proto::TCP => Some("tcp"),
            L4Proto::UDP => Some("udp"),
            L4Proto::ESP => Some("esp"),
            L4Proto::AH => Some("ah"),
            L4Proto::ICMPV6 => Some("icmpv6"),
            L4Proto::NO_NEXT_HEADER => Some("ipv6-nonxt"),
            L4Proto::SCTP => Some("sctp"),
            _ => None,
        }
    }
}

impl From<u8> for L4Proto {
    fn from(n: u8) -> Self {
        L4Proto(n)
    }
}

impl From<L4Proto> for u8 {
    fn from(p: L4Proto) -> Self {
        p.0
    }
}

/// Bits of [`FlowInfo::tcp_flags`] (RFC 9293 section 3.1, RFC 3168).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Where a packet sits in a fragmented datagram.
///
/// Only the first fragment carries the upper-layer header, so later fragments
/// have no ports; the caller ties them to the first fragment's verdict by
/// `(src, dst, proto, id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// A whole datagram. Includes IPv6 "atomic fragments" (a Fragment header
    /// with offset 0 and M clear, RFC 6946), which are complete packets.
    None,
    /// Offset 0 with more fragments to come: the upper-layer header was read.
    /// `id` is the IPv4 Identification (widened) or the IPv6 Fragment header's
    /// Identification; `len` is how many bytes of the fragmentable part
    /// (the IPv4 payload, or what follows the IPv6 Fragment header) this
    /// fragment carries, so a later fragment that overlaps it can be told.
    First { id: u32, len: u16 },
    /// Offset not 0: no upper-layer header in this packet, ports are 0 and
    /// `l4_offset` is 0. `offset` is the Fragment Offset in bytes.
    Later { id: u32, offset: u16 },
}

/// What policy and conntrack need to know about one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number of the upper layer: the IPv4 Protocol field, or for
    /// IPv6 the Next Header value that ended the extension header walk. For an
    /// IPv6 [`Fragment::Later`] it is the Fragment header's Next Header, which
    /// may name an extension header of the fragmentable part rather than the
    /// upper layer. See [`L4Proto`] for the usual values.
    pub proto: u8,
    /// TCP, UDP or SCTP source port. For ICMP / ICMPv6 echo request and reply
    /// (types 8 / 0 and 128 / 129) the echo Identifier, so conntrack can key an
    /// echo exchange like a port pair; 0 for every other ICMP type and for
    /// protocols without ports.
    pub sport: u16,
    /// TCP, UDP or SCTP destination port; 0 for ICMP, ICMPv6 and protocols
    /// without ports (the ICMP type is in `icmp_type`).
    pub dport: u16,
    /// ICMP / ICMPv6 type; 0 for other protocols (check `proto` first: 0 is
    /// also ICMP echo reply).
    pub icmp_type: u8,
    /// ICMP / ICMPv6 code; 0 for other protocols.
    pub icmp_code: u8,
    /// TCP flags byte (CWR ECE URG ACK PSH RST SYN FIN, high bit first); 0 for
    /// other protocols.
    pub tcp_flags: u8,
    pub fragment: Fragment,
    /// Offset of the IP header in the frame (always [`ETH_HLEN`] today).
    pub l3_offset: u16,
    /// Offset in the frame where the upper-layer header named by `proto`
    /// starts, after IPv4 options and IPv6 extension headers. 0 only for
    /// [`Fragment::Later`], which carries no upper-layer header. It is set for
    /// protocols whose header is not read (ESP, GRE, No Next Header, ...).
    pub l4_offset: u16,
    /// Bytes from `l4_offset` to the end of the IP packet: the upper-layer
    /// header and its payload, Ethernet padding excluded. 0 when `l4_offset`
    /// is 0.
    pub l4_len: u16,
}

impl FlowInfo {
    /// `proto` as a typed protocol number.
    pub fn l4_proto(&self) -> L4Proto {
        L4Proto(self.proto)
    }

    /// What a policy's port match is checked against: the destination
    /// port, or for ICMP and ICMPv6 the type.
    #[inline]
    pub fn policy_port(&self) -> u16 {
        match L4Proto(self.proto) {
            L4Proto::ICMP | L4Proto::ICMPV6 => u16::from(self.icmp_type),
            _ => self.dport,
        }
    }
}

/// Reads the flow facts of one Ethernet frame.
///
/// Accepts untagged Ethernet II frames carrying IPv4 or IPv6; see
/// [`ParseError`] for every reason a frame is refused. Header checksums are
/// not verified: the kernel on the far side of the veth does that, and a bad
/// checksum does not change what the frame claims to be.
#[inline]
pub fn parse(frame: &[u8]) -> Result<FlowInfo, ParseError> {
    if frame.len() < ETH_HLEN {
        return Err(ParseError::TruncatedEthernet);
    }
    // ETH_HLEN is EthernetPacket's minimum size, so new() is Some and the
    // ethertype accessor reads inside the bytes checked above.
    let eth = EthernetPacket::new(frame).ok_or(ParseError::TruncatedEthernet)?;
    match eth.get_ethertype() {
        EtherTypes::Ipv4 => ipv4::parse(frame, ETH_HLEN),
        EtherTypes::Ipv6 => ipv6::parse(frame, ETH_HLEN),
        // 0x9100 is the pre-802.1ad QinQ tag some switches still emit.
        EtherTypes::Vlan | EtherTypes::PBridge | EtherTypes::QinQ => Err(ParseError::VlanTagged),
        _ => Err(ParseError::NotIp),
    }
}
