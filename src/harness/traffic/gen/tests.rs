use std::collections::HashSet;

use super::*;
use crate::wire;

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn spec(src: &str, dst: &str, sport: &str, dport: &str, flows: u32, size: usize) -> GenSpec {
    GenSpec {
        src_mac: SRC_MAC,
        dst_mac: DST_MAC,
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        sport: sport.parse().unwrap(),
        dport: dport.parse().unwrap(),
        flows,
        size,
    }
}

/// RFC 1071, the plain way: 16-bit big-endian words, odd byte padded.
fn ones_complement_sum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u64;
    for c in chunks {
        for w in c.chunks(2) {
            let hi = u64::from(w[0]) << 8;
            let lo = w.get(1).copied().map_or(0, u64::from);
            sum += hi | lo;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Checks the IPv4 header checksum and the UDP checksum of `frame`
/// independently of the builder, and returns what `wire::parse` read.
fn check_frame(frame: &[u8]) -> wire::FlowInfo {
    let info = wire::parse(frame).expect("generated frame parses");
    assert_eq!(info.proto, 17);
    let l3 = &frame[info.l3_offset as usize..];
    let l4 = &frame[info.l4_offset as usize..][..info.l4_len as usize];
    let udp_len = (l4.len() as u16).to_be_bytes();
    let pseudo: Vec<u8> = match info.src {
        IpAddr::V4(_) => {
            assert_eq!(
                ones_complement_sum(&[&l3[..20]]),
                0xffff,
                "IPv4 header checksum"
            );
            // Cross-check with pnet's own function.
            let ip = pnet_packet::ipv4::Ipv4Packet::new(l3).unwrap();
            assert_eq!(pnet_packet::ipv4::checksum(&ip), ip.get_checksum());
            [&l3[12..20], &[0, 17], &udp_len[..]].concat()
        }
        IpAddr::V6(_) => [&l3[8..40], &[0, 0], &udp_len[..], &[0, 0, 0, 17]].concat(),
    };
    let stored = u16::from_be_bytes([l4[6], l4[7]]);
    assert_ne!(stored, 0, "UDP checksum present");
    assert_eq!(
        ones_complement_sum(&[&pseudo, l4]),
        0xffff,
        "UDP checksum verifies"
    );
    let udp = pnet_packet::udp::UdpPacket::new(l4).unwrap();
    let pnet_sum = match (info.src, info.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => pnet_packet::udp::ipv4_checksum(&udp, &s, &d),
        (IpAddr::V6(s), IpAddr::V6(d)) => pnet_packet::udp::ipv6_checksum(&udp, &s, &d),
        _ => unreachable!(),
    };
    assert_eq!(if pnet_sum == 0 { 0xffff } else { pnet_sum }, stored);
    info
}

#[test]
fn parses_ranges_and_refuses_bad_ones() {
    let r: AddrRange = "198.18.10.2-198.18.10.9".parse().unwrap();
    assert_eq!(r.addresses(), 8);
    assert_eq!(r.nth(7), Some("198.18.10.9".parse().unwrap()));
    assert_eq!(r.nth(8), None);
    assert_eq!(r.to_string(), "198.18.10.2-198.18.10.9");
    let r: AddrRange = "198.19.0.0/16".parse().unwrap();
    assert_eq!(r.addresses(), 65536);
    assert_eq!(r.last(), "198.19.255.255".parse::<IpAddr>().unwrap());
    let r: AddrRange = "2001:db8::1".parse().unwrap();
    assert_eq!((r.addresses(), r.is_ipv4()), (1, false));
    let r: AddrRange = "2001:db8::/32".parse().unwrap();
    assert_eq!(r.addresses(), 1 << 96);
    assert_eq!("::/0".parse::<AddrRange>().unwrap().addresses(), u128::MAX);

    assert!(matches!(
        "198.19.0.5/16".parse::<AddrRange>(),
        Err(RangeError::HostBits { .. })
    ));
    assert!(matches!(
        "198.18.0.1-2001:db8::1".parse::<AddrRange>(),
        Err(RangeError::MixedFamilies(_))
    ));
    assert!(matches!(
        "198.18.0.9-198.18.0.1".parse::<AddrRange>(),
        Err(RangeError::Reversed(_))
    ));
    assert!(matches!(
        "198.18.0".parse::<AddrRange>(),
        Err(RangeError::Address(_))
    ));

    let p: PortRange = "1000-1999".parse().unwrap();
    assert_eq!(
        (p.ports(), p.nth(999), p.nth(1000)),
        (1000, Some(1999), None)
    );
    assert_eq!("53".parse::<PortRange>().unwrap().ports(), 1);
    assert_eq!("0-65535".parse::<PortRange>().unwrap().ports(), 65536);
    assert!(matches!(
        "9-1".parse::<PortRange>(),
        Err(RangeError::ReversedPorts(_))
    ));
    assert!(matches!(
        "65536".parse::<PortRange>(),
        Err(RangeError::Port(_))
    ));
}

#[test]
fn spread_is_a_bijection() {
    for sizes in [
        [1, 1, 1, 1],
        [2, 2, 2, 2],
        [4, 6, 1, 3],
        [3, 5, 7, 2],
        [6, 4, 10, 15],
        [1, 12, 1, 8],
    ] {
        let total: u128 = sizes.iter().product();
        let mut seen = HashSet::new();
        for i in 0..total {
            let t = spread(i, sizes);
            for k in 0..4 {
                assert!(t[k] < sizes[k], "{sizes:?} {i} -> {t:?}");
            }
            assert!(seen.insert(t), "{sizes:?}: {i} -> {t:?} repeats");
        }
    }
}

#[test]
fn few_flows_walk_every_range_at_once() {
    let s = spec(
        "198.18.1.1-198.18.1.8",
        "198.18.2.1",
        "1000-1999",
        "9000-9002",
        3,
        66,
    );
    let tuples: Vec<FlowTuple> = (0..3).map(|f| s.tuple(f)).collect();
    let dports: Vec<u16> = tuples.iter().map(|t| t.dport).collect();
    let sports: Vec<u16> = tuples.iter().map(|t| t.sport).collect();
    assert_eq!(dports, [9000, 9001, 9002]);
    assert_eq!(sports, [1000, 1001, 1002]);
    // 8 sources and 3 ports: 24 flows use every pairing once, and each
    // source exactly 3 times.
    let s = GenSpec { flows: 24, ..s };
    let mut per_src = std::collections::HashMap::new();
    for f in 0..24 {
        *per_src.entry(s.tuple(f).src).or_insert(0) += 1;
    }
    assert_eq!(per_src.len(), 8);
    assert!(per_src.values().all(|&n| n == 3));
}

#[test]
fn every_frame_is_valid_sized_inside_the_ranges_and_flows_are_distinct() {
    let cases = [
        spec(
            "198.18.1.1-198.18.1.8",
            "198.19.0.0/16",
            "1000-1999",
            "53",
            64,
            66,
        ),
        spec(
            "198.18.1.1",
            "198.18.2.1",
            "1000-1001",
            "9000-9002",
            6,
            60 + 400,
        ),
        spec(
            "2001:db8:1::1-2001:db8:1::ff",
            "2001:db8:2::/64",
            "7",
            "1-65535",
            100,
            86,
        ),
        spec("2001:db8::1", "2001:db8::2", "9", "9", 1, 1514),
        spec("198.18.0.1", "198.18.0.2", "9", "9", 1, 67),
    ];
    for s in cases {
        let f = FrameFactory::new(&s).unwrap();
        let mut buf = vec![0xa5u8; 2048];
        let mut tuples = HashSet::new();
        for flow in 0..s.flows {
            for (seq, ts) in [
                (0u64, 0u64),
                (1, 1),
                (u64::MAX, u64::MAX),
                (0x1_0000, 12345),
            ] {
                buf.fill(0xa5);
                let seq = seq.wrapping_add(u64::from(flow));
                let n = f.write(&mut buf, flow, seq, ts);
                assert_eq!(n, s.size);
                assert!(buf[n..].iter().all(|&b| b == 0xa5), "wrote past the frame");
                let frame = &buf[..n];
                let info = check_frame(frame);
                assert_eq!(&frame[0..6], &DST_MAC);
                assert_eq!(&frame[6..12], &SRC_MAC);
                assert!(s.src.contains(info.src), "{} in {}", info.src, s.src);
                assert!(s.dst.contains(info.dst), "{} in {}", info.dst, s.dst);
                assert!(s.sport.contains(info.sport));
                assert!(s.dport.contains(info.dport));
                let t = s.tuple(flow);
                assert_eq!(
                    (info.src, info.dst, info.sport, info.dport),
                    (t.src, t.dst, t.sport, t.dport)
                );
                let payload = &frame[info.l4_offset as usize + 8..];
                assert_eq!(
                    PayloadHeader::read(payload),
                    Some(PayloadHeader {
                        seq,
                        ts_ns: ts,
                        flow
                    })
                );
                assert!(payload[PAYLOAD_HEADER_LEN..].iter().all(|&b| b == 0));
                tuples.insert((info.src, info.dst, info.sport, info.dport));
            }
        }
        assert_eq!(tuples.len(), s.flows as usize, "distinct tuples");
    }
}

#[test]
fn refuses_bad_specs_naming_the_option() {
    let ok = spec("198.18.0.1", "198.18.0.2-198.18.0.3", "9", "9-10", 4, 66);
    assert!(FrameFactory::new(&ok).is_ok());
    let e = FrameFactory::new(&GenSpec {
        flows: 5,
        ..ok.clone()
    })
    .err()
    .unwrap();
    assert_eq!(
        e,
        SpecError::TooManyFlows {
            flows: 5,
            combinations: 4
        }
    );
    assert!(e.to_string().starts_with("--flows 5 "), "{e}");
    let e = GenSpec {
        size: 65,
        ..ok.clone()
    }
    .validate()
    .unwrap_err();
    assert!(e.to_string().starts_with("--size 65 is too small"), "{e}");
    assert!(e.to_string().contains("66"), "{e}");
    let v6 = GenSpec {
        src: "2001:db8::1".parse().unwrap(),
        dst: "2001:db8::2".parse().unwrap(),
        ..ok.clone()
    };
    let e = GenSpec { size: 85, ..v6 }.validate().unwrap_err();
    assert!(e.to_string().contains("86"), "{e}");
    let e = GenSpec {
        dst: "2001:db8::2".parse().unwrap(),
        ..ok.clone()
    }
    .validate()
    .unwrap_err();
    assert!(e.to_string().starts_with("--src"), "{e}");
    let e = GenSpec {
        flows: 0,
        ..ok.clone()
    }
    .validate()
    .unwrap_err();
    assert_eq!(e, SpecError::NoFlows);
    let e = GenSpec {
        dst: "198.18.0.0/15".parse().unwrap(),
        sport: "1-65535".parse().unwrap(),
        flows: MAX_FLOWS + 1,
        ..ok.clone()
    }
    .validate()
    .unwrap_err();
    assert!(matches!(e, SpecError::FlowLimit { .. }));
    let e = GenSpec { size: 70_000, ..ok }.validate().unwrap_err();
    assert!(
        e.to_string().starts_with("--size 70000 is too large"),
        "{e}"
    );
}

/// Not a timed assertion (see STYLE.md): prints the per-frame cost of
/// `write` for a look with
/// `cargo test --release --lib write_cost -- --nocapture`.
#[test]
fn write_cost() {
    for (src, dst, size) in [
        ("198.18.1.1-198.18.1.8", "198.18.2.1", 66),
        ("2001:db8:1::1-2001:db8:1::8", "2001:db8:2::1", 86),
        ("198.18.1.1-198.18.1.8", "198.18.2.1", 1514),
    ] {
        let s = spec(src, dst, "1000-1999", "9000-9002", 64, size);
        let f = FrameFactory::new(&s).unwrap();
        let mut buf = [0u8; 2048];
        let n = 1_000_000u64;
        let t = std::time::Instant::now();
        for i in 0..n {
            f.write(&mut buf, (i % 64) as u32, i, i * 3);
            std::hint::black_box(&mut buf);
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        eprintln!("FrameFactory::write, {size}-byte frame to {dst}: {ns:.1} ns");
    }
}
