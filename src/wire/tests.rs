//! Fixtures for [`parse`](super::parse): hand-written frames, builder frames,
//! frames edited into every drop reason, and property tests that parsing never
//! panics and that builder frames round-trip with valid checksums.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pnet_packet::icmp::{self, IcmpPacket};
use pnet_packet::icmpv6::{self, Icmpv6Packet};
use pnet_packet::ipv4::{self, Ipv4Packet};
use pnet_packet::tcp::{self, TcpPacket};
use pnet_packet::udp::{self, UdpPacket};
use proptest::prelude::*;

use super::build::{self, FrameAddrs, Transport};
use super::edit::*;
use super::*;

// ---------------------------------------------------------------------------
// Helpers

/// Bytes from hex digits; whitespace is ignored so fixtures can be laid out
/// one header field group at a time.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn v4() -> FrameAddrs {
    FrameAddrs {
        src_mac: SRC_MAC,
        dst_mac: DST_MAC,
        src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
    }
}

fn v6() -> FrameAddrs {
    FrameAddrs {
        src_mac: SRC_MAC,
        dst_mac: DST_MAC,
        src: IpAddr::V6("fd00::1".parse().unwrap()),
        dst: IpAddr::V6("fd00::2".parse().unwrap()),
    }
}

fn built(addrs: &FrameAddrs, transport: Transport, payload_len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let n = build::frame(&mut buf, addrs, transport, payload_len).unwrap();
    buf.truncate(n);
    buf
}

const UDP: Transport = Transport::Udp {
    sport: 40000,
    dport: 53,
};
const TCP_SYN: Transport = Transport::Tcp {
    sport: 40001,
    dport: 443,
    flags: tcp_flags::SYN,
};

fn ones_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => unreachable!("mixed families"),
    }
    p
}

/// Checks every checksum of a built frame twice: recomputed with pnet and
/// compared with the stored field, and summed independently to all ones.
fn assert_checksums(frame: &[u8], addrs: &FrameAddrs, transport: Transport) {
    let (l4, proto) = match addrs.src {
        IpAddr::V4(_) => {
            let ip = Ipv4Packet::new(&frame[14..]).unwrap();
            assert_eq!(ipv4::checksum(&ip), ip.get_checksum(), "IPv4 header");
            assert_eq!(ones_sum(&frame[14..34]), 0xffff, "IPv4 header sum");
            (34, frame[23])
        }
        IpAddr::V6(_) => (54, frame[20]),
    };
    let seg = &frame[l4..];
    let with_pseudo = |seg: &[u8]| {
        let mut all = pseudo_header(addrs.src, addrs.dst, proto, seg.len());
        all.extend_from_slice(seg);
        ones_sum(&all)
    };
    match (transport, addrs.src, addrs.dst) {
        (Transport::Udp { .. }, IpAddr::V4(s), IpAddr::V4(d)) => {
            let p = UdpPacket::new(seg).unwrap();
            let want = match udp::ipv4_checksum(&p, &s, &d) {
                0 => 0xffff,
                c => c,
            };
            assert_eq!(p.get_checksum(), want, "UDP/IPv4");
            assert_eq!(with_pseudo(seg), 0xffff, "UDP/IPv4 sum");
        }
        (Transport::Udp { .. }, IpAddr::V6(s), IpAddr::V6(d)) => {
            let p = UdpPacket::new(seg).unwrap();
            let want = match udp::ipv6_checksum(&p, &s, &d) {
                0 => 0xffff,
                c => c,
            };
            assert_eq!(p.get_checksum(), want, "UDP/IPv6");
            assert_eq!(with_pseudo(seg), 0xffff, "UDP/IPv6 sum");
        }
        (Transport::Tcp { .. }, IpAddr::V4(s), IpAddr::V4(d)) => {
            let p = TcpPacket::new(seg).unwrap();
            assert_eq!(p.get_checksum(), tcp::ipv4_checksum(&p, &s, &d), "TCP/IPv4");
            assert_eq!(with_pseudo(seg), 0xffff, "TCP/IPv4 sum");
        }
        (Transport::Tcp { .. }, IpAddr::V6(s), IpAddr::V6(d)) => {
            let p = TcpPacket::new(seg).unwrap();
            assert_eq!(p.get_checksum(), tcp::ipv6_checksum(&p, &s, &d), "TCP/IPv6");
            assert_eq!(with_pseudo(seg), 0xffff, "TCP/IPv6 sum");
        }
        (Transport::IcmpEcho { .. }, IpAddr::V4(_), _) => {
            let p = IcmpPacket::new(seg).unwrap();
            assert_eq!(p.get_checksum(), icmp::checksum(&p), "ICMP");
            assert_eq!(ones_sum(seg), 0xffff, "ICMP sum");
        }
        (Transport::IcmpEcho { .. }, IpAddr::V6(s), IpAddr::V6(d)) => {
            let p = Icmpv6Packet::new(seg).unwrap();
            assert_eq!(p.get_checksum(), icmpv6::checksum(&p, &s, &d), "ICMPv6");
            assert_eq!(with_pseudo(seg), 0xffff, "ICMPv6 sum");
        }
        (Transport::Sctp { .. }, _, _) => {
            let mut zeroed = seg.to_vec();
            zeroed[8..12].fill(0);
            let stored = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            assert_eq!(stored, build::sctp_crc32c(&zeroed), "SCTP CRC32c");
        }
        _ => unreachable!("mixed families"),
    }
}

/// What parse must say about a frame the builder wrote.
fn assert_round_trip(frame: &[u8], addrs: &FrameAddrs, transport: Transport, payload_len: usize) {
    let flow = parse(frame).unwrap();
    let l4_offset = match addrs.src {
        IpAddr::V4(_) => 34,
        IpAddr::V6(_) => 54,
    };
    assert_eq!(flow.src, addrs.src);
    assert_eq!(flow.dst, addrs.dst);
    assert_eq!(flow.fragment, Fragment::None);
    assert_eq!(flow.l3_offset, 14);
    assert_eq!(flow.l4_offset, l4_offset);
    assert_eq!(
        usize::from(flow.l4_len),
        transport.header_len() + payload_len
    );
    let v6 = addrs.src.is_ipv6();
    let (proto, sport, dport, icmp_type, tcp_flags) = match transport {
        Transport::Udp { sport, dport } => (L4Proto::UDP, sport, dport, 0, 0),
        Transport::Tcp {
            sport,
            dport,
            flags,
        } => (L4Proto::TCP, sport, dport, 0, flags),
        Transport::Sctp { sport, dport } => (L4Proto::SCTP, sport, dport, 0, 0),
        Transport::IcmpEcho {
            request,
            identifier,
            ..
        } => match (v6, request) {
            (false, true) => (L4Proto::ICMP, identifier, 0, 8, 0),
            (false, false) => (L4Proto::ICMP, identifier, 0, 0, 0),
            (true, true) => (L4Proto::ICMPV6, identifier, 0, 128, 0),
            (true, false) => (L4Proto::ICMPV6, identifier, 0, 129, 0),
        },
    };
    assert_eq!(flow.l4_proto(), proto);
    assert_eq!((flow.sport, flow.dport), (sport, dport));
    assert_eq!((flow.icmp_type, flow.icmp_code), (icmp_type, 0));
    assert_eq!(flow.tcp_flags, tcp_flags);
}

/// What must hold of any `Ok` from any input: offsets inside the frame.
fn assert_sane(frame: &[u8], flow: &FlowInfo) {
    assert_eq!(usize::from(flow.l3_offset), ETH_HLEN);
    if flow.l4_offset == 0 {
        assert_eq!(flow.l4_len, 0);
        assert!(matches!(flow.fragment, Fragment::Later { .. }));
        assert_eq!((flow.sport, flow.dport, flow.tcp_flags), (0, 0, 0));
    } else {
        assert!(flow.l4_offset >= flow.l3_offset + 20);
        assert!(usize::from(flow.l4_offset) + usize::from(flow.l4_len) <= frame.len());
    }
    assert_eq!(flow.src.is_ipv4(), flow.dst.is_ipv4());
}

// ---------------------------------------------------------------------------
// Hand-written frames

#[test]
fn hand_written_ipv4_tcp_syn_with_options() {
    let frame = hex(concat!(
        "020000000002 020000000001 0800", // Ethernet: dst, src, IPv4
        "4500 0030 1c46 4000 4006 dca3",  // IPv4: IHL 5, len 48, DF, TTL 64, TCP
        "0a010203 5db8d822",              // 10.1.2.3 -> 93.184.216.34
        "9c40 01bb 11223344 00000000",    // TCP: 40000 -> 443, seq, ack
        "7002 faf0 63ee 0000",            // data offset 7, SYN, window, checksum
        "020405b4 0402 0101",             // MSS 1460, SACK permitted, NOP NOP
    ));
    let flow = parse(&frame).unwrap();
    assert_eq!(
        flow,
        FlowInfo {
            src: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            dst: IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)),
            proto: 6,
            sport: 40000,
            dport: 443,
            icmp_type: 0,
            icmp_code: 0,
            tcp_flags: tcp_flags::SYN,
            fragment: Fragment::None,
            l3_offset: 14,
            l4_offset: 34,
            l4_len: 28,
        }
    );
}

#[test]
fn hand_written_ipv4_with_router_alert_option() {
    let frame = hex(concat!(
        "01005e0000fb 020000000001 0800", // Ethernet: mDNS multicast
        "4600 0024 0001 0000 0111 7c16",  // IPv4: IHL 6, len 36, TTL 1, UDP
        "c0a8070a e00000fb",              // 192.168.7.10 -> 224.0.0.251
        "94040000",                       // Router Alert option
        "14e9 14e9 000c 8fb8",            // UDP: 5353 -> 5353, len 12
        "deadbeef",                       // payload
    ));
    let flow = parse(&frame).unwrap();
    assert_eq!(flow.src, IpAddr::V4(Ipv4Addr::new(192, 168, 7, 10)));
    assert_eq!(flow.dst, IpAddr::V4(Ipv4Addr::new(224, 0, 0, 251)));
    assert_eq!(flow.l4_proto(), L4Proto::UDP);
    assert_eq!((flow.sport, flow.dport), (5353, 5353));
    assert_eq!((flow.l4_offset, flow.l4_len), (38, 12));
}

#[test]
fn hand_written_icmpv6_echo_request() {
    let frame = hex(concat!(
        "020000000002 020000000001 86dd",   // Ethernet: IPv6
        "60000000 000c 3a 40",              // IPv6: payload 12, ICMPv6, hop limit 64
        "fd000000000000000000000000000001", // fd00::1
        "20010db8000000000000000000000053", // 2001:db8::53
        "80 00 3391 4242 0007",             // echo request, id 0x4242, seq 7
        "70696e67",                         // "ping"
    ));
    let flow = parse(&frame).unwrap();
    assert_eq!(flow.src, IpAddr::V6("fd00::1".parse().unwrap()));
    assert_eq!(flow.dst, IpAddr::V6("2001:db8::53".parse().unwrap()));
    assert_eq!(flow.l4_proto(), L4Proto::ICMPV6);
    assert_eq!((flow.icmp_type, flow.icmp_code), (128, 0));
    assert_eq!((flow.sport, flow.dport), (0x4242, 0));
    assert_eq!((flow.l4_offset, flow.l4_len), (54, 12));
}

// ---------------------------------------------------------------------------
// Each protocol over IPv4 and IPv6, from the builder

#[test]
fn every_protocol_over_both_families() {
    let transports = [
        UDP,
        TCP_SYN,
        Transport::Tcp {
            sport: 1,
            dport: 2,
            flags: tcp_flags::ACK | tcp_flags::PSH | tcp_flags::FIN,
        },
        Transport::Sctp {
            sport: 3868,
            dport: 3868,
        },
        Transport::IcmpEcho {
            request: true,
            identifier: 0x1234,
            sequence: 1,
        },
        Transport::IcmpEcho {
            request: false,
            identifier: 0xbeef,
            sequence: 9,
        },
    ];
    for addrs in [v4(), v6()] {
        for transport in transports {
            for payload_len in [0, 1, 17, 1400] {
                let frame = built(&addrs, transport, payload_len);
                assert_round_trip(&frame, &addrs, transport, payload_len);
                assert_checksums(&frame, &addrs, transport);
            }
        }
    }
}

#[test]
fn icmp_types_other_than_echo_have_no_identifier() {
    let echo = Transport::IcmpEcho {
        request: true,
        identifier: 77,
        sequence: 1,
    };
    // Destination unreachable, port unreachable (ICMP 3/3, ICMPv6 1/4).
    for (addrs, ty, code) in [(v4(), 3, 3), (v6(), 1, 4)] {
        let mut frame = built(&addrs, echo, 28);
        let l4 = usize::from(parse(&frame).unwrap().l4_offset);
        frame[l4] = ty;
        frame[l4 + 1] = code;
        let flow = parse(&frame).unwrap();
        assert_eq!((flow.icmp_type, flow.icmp_code), (ty, code));
        assert_eq!((flow.sport, flow.dport), (0, 0));
    }
}

#[test]
fn protocols_without_ports_are_reported_with_ports_zero() {
    // GRE over IPv4, ESP and No Next Header over IPv6: the number is kept,
    // the header is not read, and l4_offset still says where it starts.
    let mut gre = built(&v4(), UDP, 4);
    gre[23] = 47;
    fix_ipv4_checksum(&mut gre);
    let flow = parse(&gre).unwrap();
    assert_eq!((flow.proto, flow.sport, flow.dport), (47, 0, 0));
    assert_eq!((flow.l4_offset, flow.l4_len), (34, 12));

    for (proto, name) in [(50, Some("esp")), (59, Some("ipv6-nonxt")), (253, None)] {
        let mut frame = built(&v6(), UDP, 0);
        frame[20] = proto;
        let flow = parse(&frame).unwrap();
        assert_eq!((flow.proto, flow.sport, flow.dport), (proto, 0, 0));
        assert_eq!(flow.l4_proto().name(), name);
        assert!(!flow.l4_proto().has_ports());
        assert_eq!((flow.l4_offset, flow.l4_len), (54, 8));
    }
    // No Next Header with nothing after it.
    let mut bare = with_l4_len(built(&v6(), UDP, 0), 0);
    bare[20] = 59;
    assert_eq!(parse(&bare).unwrap().l4_len, 0);
}

// ---------------------------------------------------------------------------
// IPv4 options, IPv6 extension headers, fragments, padding

#[test]
fn ipv4_options_are_skipped() {
    // Largest IHL (15): 40 bytes of NOP options.
    let base = built(&v4(), TCP_SYN, 3);
    let mut frame = base[..34].to_vec();
    frame.extend_from_slice(&[1u8; 40]);
    frame.extend_from_slice(&base[34..]);
    frame[14] = 0x4f;
    let total = (frame.len() - 14) as u16;
    set_u16(&mut frame, 16, total);
    fix_ipv4_checksum(&mut frame);
    let flow = parse(&frame).unwrap();
    assert_eq!(
        (flow.sport, flow.dport, flow.tcp_flags),
        (40001, 443, tcp_flags::SYN)
    );
    assert_eq!((flow.l4_offset, flow.l4_len), (74, 23));
}

#[test]
fn ipv6_hop_by_hop_destination_options_and_first_fragment() {
    let frame = splice_v6(
        &built(&v6(), UDP, 10),
        &[
            options_ext(0, 0),
            options_ext(60, 1),
            fragment_ext(0, true, 0xdead_beef),
        ],
    );
    let flow = parse(&frame).unwrap();
    assert_eq!(
        flow.fragment,
        Fragment::First {
            id: 0xdead_beef,
            len: 18
        }
    );
    assert_eq!(flow.l4_proto(), L4Proto::UDP);
    assert_eq!((flow.sport, flow.dport), (40000, 53));
    assert_eq!(flow.l4_offset, 54 + 8 + 16 + 8);
    assert_eq!(flow.l4_len, 18);
    assert_sane(&frame, &flow);
}

#[test]
fn ipv6_routing_and_authentication_headers() {
    let frame = splice_v6(
        &built(&v6(), TCP_SYN, 0),
        &[routing_ext(4, 0, Ipv6Addr::UNSPECIFIED), auth_ext(4)],
    );
    let flow = parse(&frame).unwrap();
    assert_eq!(flow.fragment, Fragment::None);
    assert_eq!((flow.proto, flow.sport, flow.dport), (6, 40001, 443));
    assert_eq!(flow.l4_offset, 54 + 24 + 24);
}

#[test]
fn ipv6_esp_after_extension_headers_has_no_ports() {
    let mut frame = splice_v6(&built(&v6(), UDP, 8), &[options_ext(0, 0)]);
    frame[54] = 50; // Hop-by-Hop's Next Header: ESP
    let flow = parse(&frame).unwrap();
    assert_eq!((flow.proto, flow.sport, flow.dport), (50, 0, 0));
    assert_eq!(flow.l4_offset, 62);
}

#[test]
fn ipv6_extension_header_limit_is_inclusive() {
    let at_limit: Vec<Ext> = (0..MAX_IPV6_EXT_HEADERS)
        .map(|_| options_ext(60, 0))
        .collect();
    let frame = splice_v6(&built(&v6(), UDP, 0), &at_limit);
    assert_eq!(parse(&frame).unwrap().dport, 53);

    let past: Vec<Ext> = (0..=MAX_IPV6_EXT_HEADERS)
        .map(|_| options_ext(60, 0))
        .collect();
    let frame = splice_v6(&built(&v6(), UDP, 0), &past);
    assert_eq!(parse(&frame), Err(ParseError::Ipv6TooManyExtensionHeaders));
}

#[test]
fn ipv6_atomic_fragment_is_a_whole_packet() {
    let frame = splice_v6(&built(&v6(), UDP, 0), &[fragment_ext(0, false, 5)]);
    let flow = parse(&frame).unwrap();
    assert_eq!(flow.fragment, Fragment::None);
    assert_eq!(flow.dport, 53);
}

#[test]
fn ipv4_first_and_later_fragments() {
    let first = mark_v4_fragment(built(&v4(), TCP_SYN, 100), 0x4321, true, 0);
    let flow = parse(&first).unwrap();
    assert_eq!(
        flow.fragment,
        Fragment::First {
            id: 0x4321,
            len: 120
        }
    );
    assert_eq!((flow.sport, flow.dport, flow.l4_offset), (40001, 443, 34));

    // A later fragment whose data could not even hold a TCP header: it has
    // none, so that is not an error. Last fragments (MF clear) too.
    for more in [true, false] {
        let later = mark_v4_fragment(with_l4_len(built(&v4(), TCP_SYN, 0), 3), 0x4321, more, 15);
        let flow = parse(&later).unwrap();
        assert_eq!(
            flow.fragment,
            Fragment::Later {
                id: 0x4321,
                offset: 120
            }
        );
        assert_eq!(flow.proto, 6);
        assert_eq!((flow.sport, flow.dport, flow.tcp_flags), (0, 0, 0));
        assert_eq!((flow.l4_offset, flow.l4_len), (0, 0));
        assert_sane(&later, &flow);
    }

    // A first fragment too short for its TCP header is refused, not passed
    // as portless (RFC 1858 tiny fragments).
    let tiny = mark_v4_fragment(with_l4_len(built(&v4(), TCP_SYN, 0), 8), 1, true, 0);
    assert_eq!(parse(&tiny), Err(ParseError::TruncatedTcp));
}

#[test]
fn ipv6_first_and_later_fragments() {
    let first = splice_v6(
        &built(&v6(), TCP_SYN, 40),
        &[fragment_ext(0, true, 0x0102_0304)],
    );
    let flow = parse(&first).unwrap();
    assert_eq!(
        flow.fragment,
        Fragment::First {
            id: 0x0102_0304,
            len: 60
        }
    );
    assert_eq!((flow.sport, flow.dport, flow.l4_offset), (40001, 443, 62));

    for more in [true, false] {
        let later = splice_v6(
            &with_l4_len(built(&v6(), TCP_SYN, 0), 5),
            &[options_ext(0, 0), fragment_ext(7, more, 0x0102_0304)],
        );
        let flow = parse(&later).unwrap();
        assert_eq!(
            flow.fragment,
            Fragment::Later {
                id: 0x0102_0304,
                offset: 56
            }
        );
        assert_eq!(flow.proto, 6);
        assert_eq!((flow.sport, flow.dport), (0, 0));
        assert_eq!((flow.l4_offset, flow.l4_len), (0, 0));
        assert_sane(&later, &flow);
    }
}

#[test]
fn ipv6_fragmentable_part_counts_extension_headers_after_the_fragment_header() {
    // Fragment -> Destination Options -> TCP: the first fragment carries the
    // options and the TCP header, and its length is counted from the end of
    // the Fragment header, not from the TCP header.
    let first = splice_v6(
        &built(&v6(), TCP_SYN, 40),
        &[fragment_ext(0, true, 9), options_ext(60, 1)],
    );
    let flow = parse(&first).unwrap();
    assert_eq!(
        flow.fragment,
        Fragment::First {
            id: 9,
            len: 16 + 60
        }
    );
    assert_eq!((flow.proto, flow.dport), (6, 443));
}

#[test]
fn ethernet_padding_is_ignored() {
    for addrs in [v4(), v6()] {
        let mut frame = built(&addrs, UDP, 2);
        let unpadded = parse(&frame).unwrap();
        frame.resize(frame.len() + 20, 0xaa);
        assert_eq!(parse(&frame), Ok(unpadded));
    }
    // Padding never completes a header the IP length cuts short.
    for addrs in [v4(), v6()] {
        let mut frame = with_l4_len(built(&addrs, TCP_SYN, 0), 12);
        frame.resize(80, 0);
        assert_eq!(parse(&frame), Err(ParseError::TruncatedTcp));
    }
}

// ---------------------------------------------------------------------------
// Every drop reason

/// One crafted frame per way of being wrong, with the reason it must get.
fn refused_frames() -> Vec<(&'static str, Vec<u8>, ParseError)> {
    use ParseError::*;
    let udp4 = built(&v4(), UDP, 0);
    let udp6 = built(&v6(), UDP, 0);
    let edit = |frame: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
        let mut frame = frame.to_vec();
        f(&mut frame);
        frame
    };
    let with_ethertype = |t: u16| edit(&udp4, &|f| f[12..14].copy_from_slice(&t.to_be_bytes()));
    let tcp4 = built(&v4(), TCP_SYN, 0);
    let tcp6 = built(&v6(), TCP_SYN, 0);
    let echo4 = built(
        &v4(),
        Transport::IcmpEcho {
            request: true,
            identifier: 1,
            sequence: 1,
        },
        0,
    );
    let echo6 = built(
        &v6(),
        Transport::IcmpEcho {
            request: true,
            identifier: 1,
            sequence: 1,
        },
        0,
    );
    let sctp4 = built(&v4(), Transport::Sctp { sport: 1, dport: 2 }, 0);
    let sctp6 = built(&v6(), Transport::Sctp { sport: 1, dport: 2 }, 0);
    vec![
        ("empty", vec![], TruncatedEthernet),
        ("13 bytes", udp4[..13].to_vec(), TruncatedEthernet),
        ("802.1Q", with_ethertype(0x8100), VlanTagged),
        ("802.1ad", with_ethertype(0x88a8), VlanTagged),
        ("old QinQ", with_ethertype(0x9100), VlanTagged),
        ("ARP", with_ethertype(0x0806), NotIp),
        ("802.3 length", with_ethertype(0x0040), NotIp),
        ("Ethernet only", udp4[..14].to_vec(), TruncatedIpv4Header),
        ("19 IPv4 bytes", udp4[..33].to_vec(), TruncatedIpv4Header),
        (
            "IHL past frame",
            edit(&udp4[..40], &|f| f[14] = 0x4f),
            TruncatedIpv4Header,
        ),
        (
            "version 6 in IPv4",
            edit(&udp4, &|f| f[14] = 0x65),
            Ipv4VersionMismatch,
        ),
        ("IHL 4", edit(&udp4, &|f| f[14] = 0x44), Ipv4IhlTooSmall),
        ("IHL 0", edit(&udp4, &|f| f[14] = 0x40), Ipv4IhlTooSmall),
        (
            "total length + 1",
            edit(&udp4, &|f| set_u16(f, 16, 29)),
            Ipv4TotalLengthPastFrame,
        ),
        (
            "total length 0xffff",
            edit(&udp4, &|f| set_u16(f, 16, 0xffff)),
            Ipv4TotalLengthPastFrame,
        ),
        (
            "total length 19",
            edit(&udp4, &|f| set_u16(f, 16, 19)),
            Ipv4TotalLengthTooSmall,
        ),
        (
            "total length inside options",
            edit(&udp4, &|f| {
                f[14] = 0x46;
                set_u16(f, 16, 23);
            }),
            Ipv4TotalLengthTooSmall,
        ),
        ("39 IPv6 bytes", udp6[..53].to_vec(), TruncatedIpv6Header),
        (
            "version 4 in IPv6",
            edit(&udp6, &|f| f[14] = 0x40),
            Ipv6VersionMismatch,
        ),
        (
            "payload length + 1",
            edit(&udp6, &|f| set_u16(f, 18, 9)),
            Ipv6PayloadLengthPastFrame,
        ),
        (
            "nine extension headers",
            splice_v6(
                &udp6,
                &(0..9).map(|_| options_ext(60, 0)).collect::<Vec<_>>(),
            ),
            Ipv6TooManyExtensionHeaders,
        ),
        (
            "Hop-by-Hop length past packet",
            edit(&splice_v6(&udp6, &[options_ext(0, 0)]), &|f| f[55] = 2),
            Ipv6TruncatedExtensionHeader,
        ),
        (
            "Hop-by-Hop with one byte",
            edit(&with_l4_len(udp6.clone(), 1), &|f| f[20] = 0),
            Ipv6TruncatedExtensionHeader,
        ),
        (
            "Fragment header cut short",
            edit(&with_l4_len(udp6.clone(), 7), &|f| f[20] = 44),
            Ipv6TruncatedExtensionHeader,
        ),
        (
            "AH length past packet",
            edit(&splice_v6(&udp6, &[auth_ext(1)]), &|f| f[55] = 9),
            Ipv6TruncatedExtensionHeader,
        ),
        (
            "jumbogram",
            edit(&udp6[..54], &|f| {
                f[20] = 0;
                set_u16(f, 18, 0);
            }),
            Ipv6TruncatedExtensionHeader,
        ),
        (
            "two Fragment headers",
            splice_v6(
                &udp6,
                &[fragment_ext(0, false, 1), fragment_ext(0, true, 2)],
            ),
            Ipv6RepeatedFragmentHeader,
        ),
        (
            "TCP 19 bytes over IPv4",
            with_l4_len(tcp4.clone(), 19),
            TruncatedTcp,
        ),
        (
            "TCP 0 bytes over IPv6",
            with_l4_len(tcp6.clone(), 0),
            TruncatedTcp,
        ),
        (
            "TCP data offset 4",
            edit(&tcp4, &|f| f[46] = 0x40),
            TcpDataOffsetTooSmall,
        ),
        (
            "TCP data offset 0",
            edit(&tcp6, &|f| f[66] = 0x00),
            TcpDataOffsetTooSmall,
        ),
        (
            "TCP data offset 6 in 20",
            edit(&tcp4, &|f| f[46] = 0x60),
            TcpDataOffsetPastPacket,
        ),
        (
            "TCP data offset 15 in 20",
            edit(&tcp6, &|f| f[66] = 0xf0),
            TcpDataOffsetPastPacket,
        ),
        (
            "UDP 7 bytes over IPv4",
            with_l4_len(udp4.clone(), 7),
            TruncatedUdp,
        ),
        (
            "UDP 7 bytes over IPv6",
            with_l4_len(udp6.clone(), 7),
            TruncatedUdp,
        ),
        (
            "SCTP 11 bytes over IPv4",
            with_l4_len(sctp4, 11),
            TruncatedSctp,
        ),
        (
            "SCTP 4 bytes over IPv6",
            with_l4_len(sctp6, 4),
            TruncatedSctp,
        ),
        ("ICMP 7 bytes", with_l4_len(echo4, 7), TruncatedIcmp),
        ("ICMPv6 7 bytes", with_l4_len(echo6, 7), TruncatedIcmpv6),
    ]
}

#[test]
fn every_drop_reason_has_a_frame_that_triggers_it() {
    let mut seen = BTreeSet::new();
    for (name, frame, want) in refused_frames() {
        assert_eq!(parse(&frame), Err(want), "{name}");
        seen.insert(want);
    }
    let all: BTreeSet<_> = ParseError::ALL.into_iter().collect();
    assert_eq!(seen, all, "a ParseError variant has no fixture");
}

#[test]
fn drop_reason_codes_and_names_are_stable() {
    assert_eq!(ParseError::ALL.len(), ParseError::COUNT);
    let mut names = BTreeSet::new();
    for (i, e) in ParseError::ALL.into_iter().enumerate() {
        assert_eq!(usize::from(e.code()), i, "{e:?} out of code order");
        assert_eq!(ParseError::from_code(e.code()), Some(e));
        let name = e.as_str();
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{name} is not snake_case"
        );
        assert!(names.insert(name), "{name} used twice");
        assert!(!e.to_string().is_empty());
    }
    assert_eq!(ParseError::from_code(ParseError::COUNT as u8), None);
    assert_eq!(ParseError::TruncatedEthernet.as_str(), "truncated_ethernet");
}

// ---------------------------------------------------------------------------
// Properties

fn arb_addrs() -> impl Strategy<Value = FrameAddrs> {
    let v4 =
        (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(s, d)| (IpAddr::from(s), IpAddr::from(d)));
    let v6 = (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(s, d)| {
        (
            IpAddr::from(Ipv6Addr::from(s)),
            IpAddr::from(Ipv6Addr::from(d)),
        )
    });
    (any::<[u8; 6]>(), any::<[u8; 6]>(), prop_oneof![v4, v6]).prop_map(
        |(src_mac, dst_mac, (src, dst))| FrameAddrs {
            src_mac,
            dst_mac,
            src,
            dst,
        },
    )
}

fn arb_transport() -> impl Strategy<Value = Transport> {
    prop_oneof![
        (any::<u16>(), any::<u16>()).prop_map(|(sport, dport)| Transport::Udp { sport, dport }),
        (any::<u16>(), any::<u16>(), any::<u8>()).prop_map(|(sport, dport, flags)| {
            Transport::Tcp {
                sport,
                dport,
                flags,
            }
        }),
        (any::<u16>(), any::<u16>()).prop_map(|(sport, dport)| Transport::Sctp { sport, dport }),
        (any::<bool>(), any::<u16>(), any::<u16>()).prop_map(|(request, identifier, sequence)| {
            Transport::IcmpEcho {
                request,
                identifier,
                sequence,
            }
        }),
    ]
}

/// Valid frames, some with IPv6 extension headers spliced in, to mutate.
fn arb_valid_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        arb_addrs(),
        arb_transport(),
        0usize..64,
        0u8..4,
        any::<u32>(),
    )
        .prop_map(|(addrs, transport, payload_len, exts, id)| {
            let frame = built(&addrs, transport, payload_len);
            if addrs.src.is_ipv4() || exts == 0 {
                return frame;
            }
            let chain: Vec<Ext> = match exts {
                1 => vec![options_ext(0, 1)],
                2 => vec![
                    options_ext(0, 0),
                    routing_ext(4, 0, Ipv6Addr::UNSPECIFIED),
                    fragment_ext(0, true, id),
                ],
                _ => vec![auth_ext(2), options_ext(60, 0), fragment_ext(3, false, id)],
            };
            splice_v6(&frame, &chain)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_arbitrary_bytes(frame in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(flow) = parse(&frame) {
            assert_sane(&frame, &flow);
        }
    }

    /// Random bytes behind a valid Ethernet header and IP version nibble, so
    /// the IP and upper-layer code sees most of the cases.
    #[test]
    fn never_panics_on_arbitrary_ip_packets(
        v6 in any::<bool>(),
        mut body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
        if let Some(first) = body.first_mut() {
            *first = (*first & 0x0f) | if v6 { 0x60 } else { 0x40 };
        }
        frame.append(&mut body);
        if let Ok(flow) = parse(&frame) {
            assert_sane(&frame, &flow);
        }
    }

    /// Every cut of a valid frame lands inside its IP packet, so it must be
    /// refused: parse never fills in what is missing.
    #[test]
    fn truncated_valid_frames_are_refused(frame in arb_valid_frame(), cut in any::<prop::sample::Index>()) {
        prop_assert!(parse(&frame).is_ok());
        let cut = cut.index(frame.len());
        prop_assert!(parse(&frame[..cut]).is_err());
    }

    #[test]
    fn never_panics_on_mutated_valid_frames(
        mut frame in arb_valid_frame(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        for (at, value) in edits {
            let at = at.index(frame.len());
            frame[at] = value;
        }
        let cut = cut.index(frame.len() + 1);
        let frame = &frame[..cut];
        if let Ok(flow) = parse(frame) {
            assert_sane(frame, &flow);
        }
    }

    #[test]
    fn builder_frames_round_trip_with_valid_checksums(
        addrs in arb_addrs(),
        transport in arb_transport(),
        payload_len in 0usize..1500,
    ) {
        let frame = built(&addrs, transport, payload_len);
        assert_round_trip(&frame, &addrs, transport, payload_len);
        assert_checksums(&frame, &addrs, transport);
    }
}
