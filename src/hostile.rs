//! The hostile-frame corpus: what an endpoint that crafts its own frames
//! may send, and what must become of each frame. The filter tests run every
//! case against [`crate::filter::Filter`] without root; the datapath tests
//! send the bypass-prone ones from inside an endpoint namespace and look at
//! what reaches the destination; the fuzzers start from these frames.
//!
//! The world is the one the datapath tests build (`tests/common/lab.rs`):
//!
//! | endpoint | IPv4 | IPv6 | egress |
//! |---|---|---|---|
//! | frontend | 198.18.10.2 | 2001:db8:10::2 | backend TCP/UDP 8080; 198.19.0.0/16 and 2001:db8:99::/48, any port |
//! | backend | 198.18.10.3 | 2001:db8:10::3 | db TCP 5432 |
//! | db | 198.18.10.4 | 2001:db8:10::4 | nothing (default deny) |
//!
//! with the host at 198.18.0.1 / 2001:db8::1. Frames that must arrive end
//! with a [tag](TAG) naming their case, so a capture at the destination can
//! tell what got through.

use std::net::IpAddr;

use crate::filter::DropReason;
use crate::wire::build::{self, FrameAddrs};
use crate::wire::edit::{
    cut_v4_fragment, cut_v6_fragment, fix_ipv4_checksum, fragment_ext, ipv4_options, options_ext,
    routing_ext, set_u16, splice_v6, Ext,
};
use crate::wire::tcp_flags::{ACK, SYN};
use crate::wire::ParseError;

pub const FRONTEND: &str = "frontend";
pub const BACKEND: &str = "backend";
pub const DB: &str = "db";

pub const FRONTEND4: &str = "198.18.10.2";
pub const BACKEND4: &str = "198.18.10.3";
pub const DB4: &str = "198.18.10.4";
pub const FRONTEND6: &str = "2001:db8:10::2";
pub const BACKEND6: &str = "2001:db8:10::3";
pub const DB6: &str = "2001:db8:10::4";
pub const HOST4: &str = "198.18.0.1";
pub const HOST6: &str = "2001:db8::1";
pub const WORLD4: &str = "198.19.1.1";
pub const WORLD6: &str = "2001:db8:99::1";

/// The first bytes of the 8-byte tag a tagged frame ends with; the last
/// four are the case index (big-endian u16) and two zero bytes.
pub const TAG: [u8; 4] = *b"XPFH";

/// What must become of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Passed on to its destination.
    Deliver,
    /// Dropped with this reason.
    Drop(DropReason),
    /// Dropped as malformed, counted under this parser reason.
    Malformed(ParseError),
}

/// One hostile case: frames one endpoint sends, in order.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    /// The endpoint whose veth the frames arrive on.
    pub sender: &'static str,
    pub frames: Vec<Vec<u8>>,
    /// One per frame.
    pub expect: Vec<Expect>,
    /// Worth sending end to end: the kernel could act on the frame if the
    /// filter let it by (forwarding, ND, reassembly, broadcast).
    pub end_to_end: bool,
}

impl Case {
    /// Tagged frames that must reach `dst` (an address of the destination
    /// endpoint).
    pub fn arrivals_at(&self, dst: &[IpAddr]) -> usize {
        self.frames
            .iter()
            .zip(&self.expect)
            .filter(|(f, e)| **e == Expect::Deliver && tag_of(f).is_some())
            .filter(|(f, _)| ip_dst(f).is_some_and(|d| dst.contains(&d)))
            .count()
    }
}

/// The case index a frame's tag names, if it ends with one.
pub fn tag_of(frame: &[u8]) -> Option<u16> {
    let t = frame.get(frame.len().checked_sub(8)?..)?;
    (t[..4] == TAG && t[6..8] == [0, 0]).then(|| u16::from_be_bytes([t[4], t[5]]))
}

fn ip_dst(frame: &[u8]) -> Option<IpAddr> {
    match (frame.get(12..14)?, frame.get(14)? >> 4) {
        ([0x08, 0x00], 4) => {
            let b: [u8; 4] = frame.get(30..34)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        ([0x86, 0xdd], 6) => {
            let b: [u8; 16] = frame.get(38..54)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// Builds the corpus. `gateway` is the destination MAC of every frame (the
/// host side of the sender's veth), `own` the sender's MAC.
pub fn corpus(own: [u8; 6], gateway: [u8; 6]) -> Vec<Case> {
    let mut c = Corpus {
        own,
        gateway,
        cases: Vec::new(),
    };
    c.malformed();
    c.fragments();
    c.spoofing_and_link();
    c.addressing();
    c.icmp();
    c.cases
}

struct Corpus {
    own: [u8; 6],
    gateway: [u8; 6],
    cases: Vec<Case>,
}

use DropReason as R;
use Expect::{Deliver, Malformed};

impl Corpus {
    fn addrs(&self, src: &str, dst: &str) -> FrameAddrs {
        FrameAddrs {
            src_mac: self.own,
            dst_mac: self.gateway,
            src: src.parse().expect("corpus address"),
            dst: dst.parse().expect("corpus address"),
        }
    }

    fn tcp(&self, src: &str, dst: &str, dport: u16, flags: u8, payload: usize) -> Vec<u8> {
        let mut buf = vec![0; 2048];
        let n = build::tcp(
            &mut buf,
            &self.addrs(src, dst),
            40000,
            dport,
            flags,
            payload,
        )
        .expect("corpus frame");
        buf.truncate(n);
        buf
    }

    fn udp(&self, src: &str, dst: &str, dport: u16, payload: usize) -> Vec<u8> {
        let mut buf = vec![0; 2048];
        let n = build::udp(&mut buf, &self.addrs(src, dst), 40000, dport, payload)
            .expect("corpus frame");
        buf.truncate(n);
        buf
    }

    fn ping(&self, src: &str, dst: &str, payload: usize) -> Vec<u8> {
        let mut buf = vec![0; 2048];
        let n = build::icmp_echo(&mut buf, &self.addrs(src, dst), true, 0x4242, 1, payload)
            .expect("corpus frame");
        buf.truncate(n);
        buf
    }

    /// Adds a case; with `end_to_end`, every frame that carries at least
    /// 8 payload bytes past its headers is tagged first.
    fn add(
        &mut self,
        name: &'static str,
        sender: &'static str,
        frames: Vec<(Vec<u8>, Expect)>,
        end_to_end: bool,
    ) {
        let index = self.cases.len() as u16;
        let (frames, expect) = frames
            .into_iter()
            .map(|(mut f, e)| {
                if end_to_end {
                    let at = f.len() - 8;
                    f[at..at + 4].copy_from_slice(&TAG);
                    f[at + 4..at + 6].copy_from_slice(&index.to_be_bytes());
                    f[at + 6..].fill(0);
                }
                fix_ipv4_checksum(&mut f);
                (f, e)
            })
            .unzip();
        self.cases.push(Case {
            name,
            sender,
            frames,
            expect,
            end_to_end,
        });
    }

    fn malformed(&mut self) {
        let ok4 = self.tcp(FRONTEND4, BACKEND4, 8080, SYN, 16);
        let ok6 = self.tcp(FRONTEND6, BACKEND6, 8080, SYN, 16);
        let mut cases: Vec<(&'static str, Vec<u8>, ParseError)> = Vec::new();
        cases.push((
            "truncated ethernet header",
            ok4[..10].to_vec(),
            ParseError::TruncatedEthernet,
        ));
        cases.push((
            "truncated IPv4 header",
            ok4[..14 + 12].to_vec(),
            ParseError::TruncatedIpv4Header,
        ));
        let mut f = ok4.clone();
        f[14] = 0x44;
        cases.push(("IPv4 IHL 4", f, ParseError::Ipv4IhlTooSmall));
        let mut f = ok4.clone();
        f[14] = 0x4f;
        f.truncate(14 + 40);
        set_u16(&mut f, 16, 40);
        cases.push((
            "IPv4 IHL past the packet",
            f,
            ParseError::TruncatedIpv4Header,
        ));
        let mut f = ok4.clone();
        f[14] = 0x65;
        cases.push((
            "IPv4 header with version 6",
            f,
            ParseError::Ipv4VersionMismatch,
        ));
        let mut f = ok4.clone();
        set_u16(&mut f, 16, 1500);
        cases.push((
            "IPv4 total length past the frame",
            f,
            ParseError::Ipv4TotalLengthPastFrame,
        ));
        let mut f = ok4.clone();
        set_u16(&mut f, 16, 12);
        cases.push((
            "IPv4 total length below the header",
            f,
            ParseError::Ipv4TotalLengthTooSmall,
        ));
        let mut f = ok4.clone();
        f[14 + 20 + 12] = 0x40;
        cases.push(("TCP data offset 4", f, ParseError::TcpDataOffsetTooSmall));
        let mut f = ok4.clone();
        f[14 + 20 + 12] = 0xf0;
        cases.push((
            "TCP data offset past the packet",
            f,
            ParseError::TcpDataOffsetPastPacket,
        ));
        let mut f = ok4.clone();
        set_u16(&mut f, 16, 20 + 12);
        f.truncate(14 + 32);
        cases.push((
            "TCP header cut by the total length",
            f,
            ParseError::TruncatedTcp,
        ));
        let mut f = self.udp(FRONTEND4, BACKEND4, 8080, 0);
        set_u16(&mut f, 16, 20 + 4);
        f.truncate(14 + 24);
        cases.push(("truncated UDP header", f, ParseError::TruncatedUdp));
        cases.push((
            "truncated IPv6 header",
            ok6[..14 + 30].to_vec(),
            ParseError::TruncatedIpv6Header,
        ));
        let mut f = ok6.clone();
        f[14] = 0x40;
        cases.push((
            "IPv6 header with version 4",
            f,
            ParseError::Ipv6VersionMismatch,
        ));
        let mut f = ok6.clone();
        set_u16(&mut f, 18, 1400);
        cases.push((
            "IPv6 payload length past the frame",
            f,
            ParseError::Ipv6PayloadLengthPastFrame,
        ));
        // Destination options claiming 1608 bytes in a 60-byte payload.
        let mut long = options_ext(60, 0);
        long.bytes[1] = 200;
        let f = splice_v6(&ok6, &[long]);
        cases.push((
            "IPv6 extension header past the packet",
            f,
            ParseError::Ipv6TruncatedExtensionHeader,
        ));
        let chain: Vec<Ext> = (0..9).map(|_| options_ext(60, 0)).collect();
        cases.push((
            "nine IPv6 extension headers",
            splice_v6(&ok6, &chain),
            ParseError::Ipv6TooManyExtensionHeaders,
        ));
        cases.push((
            "two IPv6 fragment headers",
            splice_v6(&ok6, &[fragment_ext(0, true, 7), fragment_ext(0, true, 8)]),
            ParseError::Ipv6RepeatedFragmentHeader,
        ));
        // RFC 1858: a first fragment too short for the TCP header.
        let tiny = cut_v4_fragment(&ok4, 0x77, 0, 8, true);
        cases.push(("IPv4 tiny first fragment", tiny, ParseError::TruncatedTcp));
        for (name, f, e) in cases {
            self.add(name, FRONTEND, vec![(f, Malformed(e))], false);
        }
    }

    fn fragments(&mut self) {
        // The datagrams are 8 + 40 + 64 bytes of TCP: first fragments carry
        // 48 bytes, later ones the rest from byte 48.
        let allowed4 = self.tcp(FRONTEND4, BACKEND4, 8080, ACK, 64);
        let denied4 = self.tcp(FRONTEND4, BACKEND4, 22, ACK, 64);
        let allowed6 = self.tcp(FRONTEND6, BACKEND6, 8080, ACK, 64);
        let denied6 = self.tcp(FRONTEND6, BACKEND6, 22, ACK, 64);

        self.add(
            "IPv4 fragments of an allowed datagram",
            FRONTEND,
            vec![
                (cut_v4_fragment(&allowed4, 1, 0, 48, true), Deliver),
                (cut_v4_fragment(&allowed4, 1, 48, 36, false), Deliver),
            ],
            true,
        );
        self.add(
            "IPv4 later fragment with no first",
            FRONTEND,
            vec![(
                cut_v4_fragment(&allowed4, 2, 48, 36, false),
                Expect::Drop(R::FragmentNoFirst),
            )],
            true,
        );
        self.add(
            "IPv4 later fragment of a denied datagram",
            FRONTEND,
            vec![
                (
                    cut_v4_fragment(&denied4, 3, 0, 48, true),
                    Expect::Drop(R::PolicyDefault),
                ),
                (
                    cut_v4_fragment(&denied4, 3, 48, 36, false),
                    Expect::Drop(R::FragmentDenied),
                ),
            ],
            true,
        );
        // A denied first fragment sent again as an allowed one: which one a
        // receiver keeps is up to it, so neither may count.
        self.add(
            "IPv4 first fragment rewritten from denied to allowed",
            FRONTEND,
            vec![
                (
                    cut_v4_fragment(&denied4, 4, 0, 48, true),
                    Expect::Drop(R::PolicyDefault),
                ),
                (
                    cut_v4_fragment(&allowed4, 4, 0, 48, true),
                    Expect::Drop(R::FragmentConflict),
                ),
                (
                    cut_v4_fragment(&allowed4, 4, 48, 36, false),
                    Expect::Drop(R::FragmentConflict),
                ),
            ],
            true,
        );
        self.add(
            "IPv4 first fragment rewritten from allowed to denied",
            FRONTEND,
            vec![
                (cut_v4_fragment(&allowed4, 5, 0, 48, true), Deliver),
                (
                    cut_v4_fragment(&denied4, 5, 0, 48, true),
                    Expect::Drop(R::FragmentConflict),
                ),
                (
                    cut_v4_fragment(&allowed4, 5, 48, 36, false),
                    Expect::Drop(R::FragmentConflict),
                ),
            ],
            true,
        );
        // RFC 1858 / 3128: a fragment at offset 8 rewrites the TCP header
        // the first fragment carried (flags, or the ports at offset 0).
        self.add(
            "IPv4 fragment overlapping the TCP header",
            FRONTEND,
            vec![
                (cut_v4_fragment(&allowed4, 6, 0, 48, true), Deliver),
                (
                    cut_v4_fragment(&denied4, 6, 8, 40, true),
                    Expect::Drop(R::FragmentConflict),
                ),
                (
                    cut_v4_fragment(&allowed4, 6, 48, 36, false),
                    Expect::Drop(R::FragmentConflict),
                ),
            ],
            true,
        );
        self.add(
            "IPv6 fragments of an allowed datagram",
            FRONTEND,
            vec![
                (cut_v6_fragment(&allowed6, &[], 1, 0, 48, true), Deliver),
                (cut_v6_fragment(&allowed6, &[], 1, 48, 36, false), Deliver),
            ],
            true,
        );
        self.add(
            "IPv6 first fragment rewritten from denied to allowed",
            FRONTEND,
            vec![
                (
                    cut_v6_fragment(&denied6, &[], 2, 0, 48, true),
                    Expect::Drop(R::PolicyDefault),
                ),
                (
                    cut_v6_fragment(&allowed6, &[], 2, 0, 48, true),
                    Expect::Drop(R::FragmentConflict),
                ),
                (
                    cut_v6_fragment(&allowed6, &[], 2, 48, 36, false),
                    Expect::Drop(R::FragmentConflict),
                ),
            ],
            true,
        );
        // RFC 5722: overlapping IPv6 fragments drop the whole datagram.
        self.add(
            "IPv6 fragment overlapping the first",
            FRONTEND,
            vec![
                (cut_v6_fragment(&allowed6, &[], 3, 0, 48, true), Deliver),
                (
                    cut_v6_fragment(&denied6, &[], 3, 16, 32, true),
                    Expect::Drop(R::FragmentConflict),
                ),
                (
                    cut_v6_fragment(&allowed6, &[], 3, 48, 36, false),
                    Expect::Drop(R::FragmentConflict),
                ),
            ],
            true,
        );
        // Fragment -> Destination Options -> TCP (RFC 8200 allows options
        // in the fragmentable part): the later fragment's Next Header is 60,
        // the first's upper layer TCP, and both belong to one datagram.
        let opts = options_ext(60, 0);
        self.add(
            "IPv6 fragment, destination options, TCP",
            FRONTEND,
            vec![
                (
                    cut_v6_fragment(&allowed6, &[&opts], 4, 0, 56, true),
                    Deliver,
                ),
                (
                    cut_v6_fragment(&allowed6, &[&opts], 4, 56, 36, false),
                    Deliver,
                ),
            ],
            true,
        );
    }

    fn spoofing_and_link(&mut self) {
        let to_backend = self.tcp(DB4, BACKEND4, 8080, SYN, 16);
        let mut spoofed = self.tcp(FRONTEND4, BACKEND4, 8080, SYN, 16);
        self.add(
            "IPv4 source of another endpoint",
            DB,
            vec![(spoofed.clone(), Expect::Drop(R::SpoofedSource))],
            true,
        );
        self.add(
            "IPv6 source of another endpoint",
            DB,
            vec![(
                self.tcp(FRONTEND6, BACKEND6, 8080, SYN, 16),
                Expect::Drop(R::SpoofedSource),
            )],
            true,
        );
        self.add(
            "IPv4 source of the host",
            DB,
            vec![(
                self.tcp(HOST4, BACKEND4, 8080, SYN, 16),
                Expect::Drop(R::SpoofedSource),
            )],
            true,
        );
        // A forged source MAC changes nothing: xpf writes both MACs.
        spoofed[6..12].copy_from_slice(&[0x02, 0xde, 0xad, 0xbe, 0xef, 0x01]);
        self.add(
            "forged source MAC on an allowed flow",
            FRONTEND,
            vec![(spoofed, Deliver)],
            true,
        );
        for (name, ethertype) in [
            ("802.1Q tag", [0x81, 0x00]),
            ("802.1ad tag", [0x88, 0xa8]),
            ("old QinQ tag 0x9100", [0x91, 0x00]),
        ] {
            let mut f = to_backend.clone();
            f.splice(12..12, ethertype.iter().copied().chain([0x00, 0x0a]));
            self.add(name, DB, vec![(f, Expect::Drop(R::VlanTagged))], false);
        }
        for (name, ethertype) in [
            ("LLDP EtherType", [0x88, 0xcc]),
            ("PPPoE EtherType", [0x88, 0x64]),
            ("IPX EtherType", [0x81, 0x37]),
        ] {
            let mut f = to_backend.clone();
            f[12..14].copy_from_slice(&ethertype);
            self.add(name, DB, vec![(f, Expect::Drop(R::NotIp))], false);
        }
    }

    fn addressing(&mut self) {
        self.add(
            "TCP a default-deny endpoint sends",
            DB,
            vec![(
                self.tcp(DB4, BACKEND4, 8080, SYN, 16),
                Expect::Drop(R::PolicyDefault),
            )],
            true,
        );
        self.add(
            "IPv4 limited broadcast",
            DB,
            vec![(
                self.udp(DB4, "255.255.255.255", 8080, 16),
                Expect::Drop(R::PolicyDefault),
            )],
            true,
        );
        self.add(
            "IPv4 multicast",
            DB,
            vec![(
                self.udp(DB4, "224.0.0.251", 5353, 16),
                Expect::Drop(R::PolicyDefault),
            )],
            true,
        );
        self.add(
            "IPv6 all-nodes multicast UDP",
            DB,
            vec![(
                self.udp(DB6, "ff02::1", 8080, 16),
                Expect::Drop(R::PolicyDefault),
            )],
            true,
        );
        // Options are skipped, never followed: the packet is judged by the
        // destination in its header.
        let mut opts = self.tcp(FRONTEND4, BACKEND4, 8080, SYN, 16);
        ipv4_options(&mut opts, &[1, 1, 1, 0]);
        self.add(
            "IPv4 options (NOP, end)",
            FRONTEND,
            vec![(opts, Deliver)],
            true,
        );
        // Loose source route through the host to backend: judged by the
        // header's destination (the host), which db may not reach.
        let mut lsrr = self.tcp(DB4, HOST4, 8080, SYN, 16);
        let be: std::net::Ipv4Addr = BACKEND4.parse().expect("corpus address");
        let mut option = vec![131, 7, 4];
        option.extend_from_slice(&be.octets());
        option.push(0);
        ipv4_options(&mut lsrr, &option);
        self.add(
            "IPv4 loose source route to backend",
            DB,
            vec![(lsrr, Expect::Drop(R::PolicyDefault))],
            true,
        );
        // A routing header naming backend as the next segment.
        let routed = splice_v6(
            &self.tcp(DB6, HOST6, 8080, SYN, 16),
            &[routing_ext(0, 1, BACKEND6.parse().expect("corpus address"))],
        );
        self.add(
            "IPv6 routing header to backend",
            DB,
            vec![(routed, Expect::Drop(R::PolicyDefault))],
            true,
        );
    }

    fn icmp(&mut self) {
        // Neighbour discovery and MLD aimed at another endpoint's global
        // address: the kernel would forward them if the XDP program passed
        // them as link housekeeping (finding 1 of the hostile review).
        for (name, ty, hops) in [
            ("neighbour advertisement to backend", 136, 255),
            ("neighbour solicitation to backend", 135, 255),
            ("router advertisement to backend", 134, 255),
            ("MLD report to backend", 143, 1),
            ("neighbour advertisement to backend, hop limit 64", 136, 64),
        ] {
            let mut f = self.ping(DB6, BACKEND6, 32);
            f[14 + 7] = hops;
            f[14 + 40] = ty;
            self.add(name, DB, vec![(f, Expect::Drop(R::PolicyDefault))], true);
        }
        let mut mld = self.ping(DB6, BACKEND6, 32);
        mld[14 + 7] = 1;
        mld[14 + 40] = 131;
        let mld = splice_v6(&mld, &[options_ext(0, 0)]);
        self.add(
            "MLD behind hop-by-hop to backend",
            DB,
            vec![(mld, Expect::Drop(R::PolicyDefault))],
            true,
        );

        // ICMP errors quoting a flow that does not exist are new flows to
        // policy, never "related".
        let quoted = self.udp(BACKEND4, DB4, 5432, 0);
        let mut err = self.ping(DB4, BACKEND4, 28);
        err[14 + 20] = 3; // destination unreachable
        err[14 + 21] = 3; // port unreachable
        err[14 + 24..14 + 28].fill(0);
        err[14 + 28..14 + 56].copy_from_slice(&quoted[14..42]);
        self.add(
            "ICMP port unreachable for no flow",
            DB,
            vec![(err, Expect::Drop(R::PolicyDefault))],
            true,
        );
        let quoted6 = self.udp(BACKEND6, DB6, 5432, 0);
        let mut err6 = self.ping(DB6, BACKEND6, 48);
        err6[14 + 40] = 2; // packet too big
        err6[14 + 41] = 0;
        err6[14 + 44..14 + 48].copy_from_slice(&1280u32.to_be_bytes());
        err6[14 + 48..14 + 96].copy_from_slice(&quoted6[14..62]);
        self.add(
            "ICMPv6 packet too big for no flow",
            DB,
            vec![(err6, Expect::Drop(R::PolicyDefault))],
            true,
        );
    }
}

/// A TCP segment from `src` to `dst` with `payload` zero bytes and
/// placeholder MACs (the datapath writes both on every frame it passes).
pub fn tcp_frame(
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: usize,
) -> Vec<u8> {
    let c = Corpus {
        own: [2, 0, 0, 0, 0, 1],
        gateway: [2, 0, 0, 0, 0, 2],
        cases: Vec::new(),
    };
    let mut buf = vec![0; 2048];
    let n = build::tcp(&mut buf, &c.addrs(src, dst), sport, dport, flags, payload)
        .expect("valid addresses of one family");
    buf.truncate(n);
    buf
}

/// The first and last fragment of a TCP datagram (ACK, 64 bytes of data)
/// from `src` to `dst`, datagram id 1, with placeholder MACs.
pub fn fragmented_tcp(src: &str, dst: &str, dport: u16) -> (Vec<u8>, Vec<u8>) {
    let c = Corpus {
        own: [2, 0, 0, 0, 0, 1],
        gateway: [2, 0, 0, 0, 0, 2],
        cases: Vec::new(),
    };
    let full = c.tcp(src, dst, dport, ACK, 64);
    if full[12..14] == [0x08, 0x00] {
        (
            cut_v4_fragment(&full, 1, 0, 48, true),
            cut_v4_fragment(&full, 1, 48, 36, false),
        )
    } else {
        (
            cut_v6_fragment(&full, &[], 1, 0, 48, true),
            cut_v6_fragment(&full, &[], 1, 48, 36, false),
        )
    }
}

/// `frame` (an IPv4 fragment) as a fragment of datagram `id`.
pub fn with_fragment_id(frame: &[u8], id: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    set_u16(&mut f, 18, id);
    fix_ipv4_checksum(&mut f);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_has_one_expectation_per_frame_and_tags_name_their_case() {
        let cases = corpus([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        assert!(cases.len() > 40);
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(c.frames.len(), c.expect.len(), "{}", c.name);
            for f in &c.frames {
                assert_eq!(tag_of(f), c.end_to_end.then_some(i as u16), "{}", c.name);
            }
        }
    }
}
