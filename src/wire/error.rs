//! Why [`parse`](super::parse) refused a frame: one variant per drop reason.
//!
//! The datapath counts drops per reason in a plain array indexed by
//! [`ParseError::code`], so codes are stable: append new variants at the end,
//! never reorder or reuse a number, and keep [`ParseError::ALL`] in code order.
//! The variants carry no data, so returning one on the hot path is as cheap
//! as returning a byte.

/// A drop reason: the frame could not be read in full, or is a kind xpf
/// refuses to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
#[repr(u8)]
pub enum ParseError {
    /// Shorter than the 14-byte Ethernet II header.
    #[error("frame shorter than an Ethernet header")]
    TruncatedEthernet = 0,
    /// EtherType 0x8100, 0x88a8 or 0x9100: an endpoint must not tag its own
    /// frames, and reading through the tag would let it choose what we parse.
    #[error("frame carries an 802.1Q/802.1ad VLAN tag")]
    VlanTagged = 1,
    /// Any EtherType other than IPv4 or IPv6 (ARP and neighbour discovery are
    /// handled before frames reach this parser).
    #[error("EtherType is neither IPv4 nor IPv6")]
    NotIp = 2,
    /// Fewer than 20 bytes after the Ethernet header, or fewer than IHL * 4.
    #[error("IPv4 header (with options) runs past the frame")]
    TruncatedIpv4Header = 3,
    /// EtherType says IPv4 but the version nibble is not 4.
    #[error("IPv4 EtherType but IP version is not 4")]
    Ipv4VersionMismatch = 4,
    /// IHL below 5 (a header cannot be shorter than 20 bytes).
    #[error("IPv4 IHL below 5")]
    Ipv4IhlTooSmall = 5,
    /// Total Length claims more bytes than the frame holds.
    #[error("IPv4 total length runs past the frame")]
    Ipv4TotalLengthPastFrame = 6,
    /// Total Length is shorter than the header IHL describes.
    #[error("IPv4 total length shorter than its header")]
    Ipv4TotalLengthTooSmall = 7,
    /// Fewer than 40 bytes after the Ethernet header.
    #[error("IPv6 header runs past the frame")]
    TruncatedIpv6Header = 8,
    /// EtherType says IPv6 but the version nibble is not 6.
    #[error("IPv6 EtherType but IP version is not 6")]
    Ipv6VersionMismatch = 9,
    /// Payload Length claims more bytes than the frame holds.
    #[error("IPv6 payload length runs past the frame")]
    Ipv6PayloadLengthPastFrame = 10,
    /// More than [`MAX_IPV6_EXT_HEADERS`](super::MAX_IPV6_EXT_HEADERS)
    /// extension headers before the upper layer.
    #[error("more IPv6 extension headers than the parser walks")]
    Ipv6TooManyExtensionHeaders = 11,
    /// An extension header (Hop-by-Hop, Routing, Fragment, Destination
    /// Options, AH) runs past the IPv6 payload. Jumbograms (Payload Length 0)
    /// land here too: their Hop-by-Hop header lies past a zero-length payload.
    #[error("IPv6 extension header runs past the packet")]
    Ipv6TruncatedExtensionHeader = 12,
    /// A second Fragment header: which one names the datagram is ambiguous.
    #[error("IPv6 packet has more than one Fragment header")]
    Ipv6RepeatedFragmentHeader = 13,
    /// Fewer than 20 bytes of TCP header in the IP packet.
    #[error("TCP header runs past the packet")]
    TruncatedTcp = 14,
    /// TCP Data Offset below 5.
    #[error("TCP data offset below 5")]
    TcpDataOffsetTooSmall = 15,
    /// TCP Data Offset (header with options) runs past the IP packet.
    #[error("TCP data offset runs past the packet")]
    TcpDataOffsetPastPacket = 16,
    /// Fewer than 8 bytes of UDP header in the IP packet.
    #[error("UDP header runs past the packet")]
    TruncatedUdp = 17,
    /// Fewer than 12 bytes of SCTP common header in the IP packet.
    #[error("SCTP common header runs past the packet")]
    TruncatedSctp = 18,
    /// Fewer than 8 bytes of ICMP header (type, code, checksum and the
    /// 4-byte rest of header every ICMP message has).
    #[error("ICMP header runs past the packet")]
    TruncatedIcmp = 19,
    /// Fewer than 8 bytes of ICMPv6 header (type, code, checksum and the
    /// first 4 bytes of message body every defined ICMPv6 message has).
    #[error("ICMPv6 header runs past the packet")]
    TruncatedIcmpv6 = 20,
}

impl ParseError {
    /// Number of drop reasons: the length of a per-reason counter array.
    pub const COUNT: usize = 21;

    /// Every drop reason, in code order (`ALL[e.code() as usize] == e`).
    pub const ALL: [ParseError; Self::COUNT] = [
        ParseError::TruncatedEthernet,
        ParseError::VlanTagged,
        ParseError::NotIp,
        ParseError::TruncatedIpv4Header,
        ParseError::Ipv4VersionMismatch,
        ParseError::Ipv4IhlTooSmall,
        ParseError::Ipv4TotalLengthPastFrame,
        ParseError::Ipv4TotalLengthTooSmall,
        ParseError::TruncatedIpv6Header,
        ParseError::Ipv6VersionMismatch,
        ParseError::Ipv6PayloadLengthPastFrame,
        ParseError::Ipv6TooManyExtensionHeaders,
        ParseError::Ipv6TruncatedExtensionHeader,
        ParseError::Ipv6RepeatedFragmentHeader,
        ParseError::TruncatedTcp,
        ParseError::TcpDataOffsetTooSmall,
        ParseError::TcpDataOffsetPastPacket,
        ParseError::TruncatedUdp,
        ParseError::TruncatedSctp,
        ParseError::TruncatedIcmp,
        ParseError::TruncatedIcmpv6,
    ];

    /// Stable index of this reason, `0..COUNT`, for counter arrays.
    #[inline]
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The reason for a code, if the code names one.
    pub fn from_code(code: u8) -> Option<ParseError> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// Stable snake_case name, for metrics labels and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ParseError::TruncatedEthernet => "truncated_ethernet",
            ParseError::VlanTagged => "vlan_tagged",
            ParseError::NotIp => "not_ip",
            ParseError::TruncatedIpv4Header => "truncated_ipv4_header",
            ParseError::Ipv4VersionMismatch => "ipv4_version_mismatch",
            ParseError::Ipv4IhlTooSmall => "ipv4_ihl_too_small",
            ParseError::Ipv4TotalLengthPastFrame => "ipv4_total_length_past_frame",
            ParseError::Ipv4TotalLengthTooSmall => "ipv4_total_length_too_small",
            ParseError::TruncatedIpv6Header => "truncated_ipv6_header",
            ParseError::Ipv6VersionMismatch => "ipv6_version_mismatch",
            ParseError::Ipv6PayloadLengthPastFrame => "ipv6_payload_length_past_frame",
            ParseError::Ipv6TooManyExtensionHeaders => "ipv6_too_many_extension_headers",
            ParseError::Ipv6TruncatedExtensionHeader => "ipv6_truncated_extension_header",
            ParseError::Ipv6RepeatedFragmentHeader => "ipv6_repeated_fragment_header",
            ParseError::TruncatedTcp => "truncated_tcp",
            ParseError::TcpDataOffsetTooSmall => "tcp_data_offset_too_small",
            ParseError::TcpDataOffsetPastPacket => "tcp_data_offset_past_packet",
            ParseError::TruncatedUdp => "truncated_udp",
            ParseError::TruncatedSctp => "truncated_sctp",
            ParseError::TruncatedIcmp => "truncated_icmp",
            ParseError::TruncatedIcmpv6 => "truncated_icmpv6",
        }
    }
}
