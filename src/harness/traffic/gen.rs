//! The generator's frame factory: address and port ranges, the flows spread
//! over them, and complete UDP frames written from per-flow templates.
//!
//! Invariants:
//!
//! - Flow `i` always maps to the same 5-tuple ([`GenSpec::tuple`]), distinct
//!   flows to distinct tuples, and every tuple lies inside the ranges.
//! - Every frame [`FrameFactory::write`] produces is exactly
//!   [`GenSpec::size`] bytes (Ethernet without FCS), parses with
//!   [`crate::wire::parse`], and carries a valid IPv4 header checksum and a
//!   valid UDP checksum (IPv4 and IPv6).
//! - Per frame, `write` copies a precomputed header, writes the
//!   [`PayloadHeader`] and zero padding, and patches the UDP checksum from
//!   the template's partial sum (RFC 1624 style): no allocation, no branch
//!   on the flow's shape.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

use super::payload::{PayloadHeader, MAGIC, PAYLOAD_HEADER_LEN};
use crate::wire::build::{self, FrameAddrs};
use crate::wire::ETH_HLEN;

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
/// The smallest Ethernet frame without FCS.
const ETH_MIN_FRAME: usize = 60;
/// Headers up to the UDP payload, the larger (IPv6) case.
const MAX_HEADER: usize = ETH_HLEN + IPV6_HLEN + UDP_HLEN;

/// Most flows a [`FrameFactory`] holds templates for (64 bytes each).
pub const MAX_FLOWS: u32 = 1 << 20;

/// Why an address or port range did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("`{0}` is not an IPv4 or IPv6 address, `A-B` range or CIDR prefix")]
    Address(String),
    #[error("`{text}` has host bits set; the prefix is {network}")]
    HostBits { text: String, network: IpNet },
    #[error("`{0}` mixes IPv4 and IPv6")]
    MixedFamilies(String),
    #[error("`{0}` runs backwards: the first address is above the last")]
    Reversed(String),
    #[error("`{0}` is not a port (0-65535) or `A-B` port range")]
    Port(String),
    #[error("`{0}` runs backwards: the first port is above the last")]
    ReversedPorts(String),
}

/// An inclusive range of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrRange {
    first: IpAddr,
    last: IpAddr,
}

impl AddrRange {
    /// The range `first..=last`; both of one family, `first <= last`.
    pub fn new(first: IpAddr, last: IpAddr) -> Result<Self, RangeError> {
        let text = || format!("{first}-{last}");
        if first.is_ipv4() != last.is_ipv4() {
            return Err(RangeError::MixedFamilies(text()));
        }
        if to_u128(first) > to_u128(last) {
            return Err(RangeError::Reversed(text()));
        }
        Ok(Self { first, last })
    }

    /// One address.
    pub fn single(addr: IpAddr) -> Self {
        Self {
            first: addr,
            last: addr,
        }
    }

    pub fn first(&self) -> IpAddr {
        self.first
    }

    pub fn last(&self) -> IpAddr {
        self.last
    }

    pub fn is_ipv4(&self) -> bool {
        self.first.is_ipv4()
    }

    /// How many addresses the range holds, saturating at `u128::MAX` (only
    /// `::/0` holds more).
    pub fn addresses(&self) -> u128 {
        (to_u128(self.last) - to_u128(self.first)).saturating_add(1)
    }

    /// The `i`th address from the first, if the range has one.
    pub fn nth(&self, i: u128) -> Option<IpAddr> {
        if i >= self.addresses() {
            return None;
        }
        let v = to_u128(self.first) + i;
        Some(match self.first {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
        })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.is_ipv4()
            && (to_u128(self.first)..=to_u128(self.last)).contains(&to_u128(addr))
    }
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

/// `198.18.10.2`, `198.18.10.2-198.18.10.9`, or a CIDR prefix such as
/// `198.19.0.0/16`, which stands for every address in it (network and
/// broadcast addresses included).
impl FromStr for AddrRange {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Self, RangeError> {
        let s = s.trim();
        let bad = || RangeError::Address(s.to_string());
        if s.contains('/') {
            let net: IpNet = s.parse().map_err(|_| bad())?;
            if net.addr() != net.network() {
                return Err(RangeError::HostBits {
                    text: s.into(),
                    network: net.trunc(),
                });
            }
            return Ok(Self {
                first: net.network(),
                last: net.broadcast(),
            });
        }
        match s.split_once('-') {
            None => s.parse().map(Self::single).map_err(|_| bad()),
            Some((a, b)) => {
                let a: IpAddr = a.trim().parse().map_err(|_| bad())?;
                let b: IpAddr = b.trim().parse().map_err(|_| bad())?;
                if a.is_ipv4() != b.is_ipv4() {
                    return Err(RangeError::MixedFamilies(s.into()));
                }
                if to_u128(a) > to_u128(b) {
                    return Err(RangeError::Reversed(s.into()));
                }
                Ok(Self { first: a, last: b })
            }
        }
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// An inclusive range of UDP ports: `53` or `1000-1999`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// The range `first..=last`, or `None` if it runs backwards.
    pub fn new(first: u16, last: u16) -> Option<Self> {
        (first <= last).then_some(Self { first, last })
    }

    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    pub fn first(&self) -> u16 {
        self.first
    }

    pub fn last(&self) -> u16 {
        self.last
    }

    /// How many ports the range holds (1 to 65536).
    pub fn ports(&self) -> u32 {
        u32::from(self.last - self.first) + 1
    }

    /// The `i`th port from the first, if the range has one.
    pub fn nth(&self, i: u32) -> Option<u16> {
        (i < self.ports()).then(|| self.first + i as u16)
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Self, RangeError> {
        let s = s.trim();
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| RangeError::Port(s.into()))
        };
        match s.split_once('-') {
            None => port(s).map(Self::single),
            Some((a, b)) => {
                Self::new(port(a)?, port(b)?).ok_or_else(|| RangeError::ReversedPorts(s.into()))
            }
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Why a [`GenSpec`] cannot be turned into frames. Messages name the
/// `xpf gen` option at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("--src {src} and --dst {dst} are of different address families")]
    MixedFamilies { src: AddrRange, dst: AddrRange },
    #[error("--flows must be at least 1")]
    NoFlows,
    #[error(
        "--flows {flows} is more than the {combinations} distinct (source, destination, \
         source port, destination port) combinations that --src, --dst, --sport and --dport allow"
    )]
    TooManyFlows { flows: u32, combinations: u128 },
    #[error("--flows {flows} is more than the {max} flows xpf gen keeps templates for")]
    FlowLimit { flows: u32, max: u32 },
    #[error(
        "--size {size} is too small: {family} frames need at least {min} bytes \
         (Ethernet, IP and UDP headers and the {PAYLOAD_HEADER_LEN}-byte payload header, \
         and never under the {ETH_MIN_FRAME}-byte Ethernet minimum)"
    )]
    SizeTooSmall {
        size: usize,
        min: usize,
        family: &'static str,
    },
    #[error("--size {size} is too large: {family} frames hold at most {max} bytes")]
    SizeTooLarge {
        size: usize,
        max: usize,
        family: &'static str,
    },
}

/// One flow's addresses and ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// What to generate: UDP frames of `size` bytes in `flows` flows spread
/// over the ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: AddrRange,
    pub dst: AddrRange,
    pub sport: PortRange,
    pub dport: PortRange,
    pub flows: u32,
    /// The whole Ethernet frame without FCS, at least
    /// [`GenSpec::min_size`].
    pub size: usize,
}

impl GenSpec {
    /// Headers before the UDP payload: Ethernet, IP, UDP.
    pub fn header_len(ipv4: bool) -> usize {
        ETH_HLEN + if ipv4 { IPV4_HLEN } else { IPV6_HLEN } + UDP_HLEN
    }

    /// The smallest frame of a family: the headers and the payload header,
    /// and never below 60 bytes. 66 for IPv4, 86 for IPv6.
    pub fn min_size(ipv4: bool) -> usize {
        (Self::header_len(ipv4) + PAYLOAD_HEADER_LEN).max(ETH_MIN_FRAME)
    }

    /// The largest frame of a family: the IP length fields are 16 bits.
    pub fn max_size(ipv4: bool) -> usize {
        if ipv4 {
            ETH_HLEN + u16::MAX as usize
        } else {
            ETH_HLEN + IPV6_HLEN + u16::MAX as usize
        }
    }

    /// How many distinct tuples the ranges allow, saturating.
    pub fn combinations(&self) -> u128 {
        self.src
            .addresses()
            .saturating_mul(self.dst.addresses())
            .saturating_mul(self.sport.ports().into())
            .saturating_mul(self.dport.ports().into())
    }

    /// Checks everything [`FrameFactory::new`] relies on.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.src.is_ipv4() != self.dst.is_ipv4() {
            return Err(SpecError::MixedFamilies {
                src: self.src,
                dst: self.dst,
            });
        }
        let ipv4 = self.src.is_ipv4();
        let family = if ipv4 { "IPv4" } else { "IPv6" };
        if self.size < Self::min_size(ipv4) {
            return Err(SpecError::SizeTooSmall {
                size: self.size,
                min: Self::min_size(ipv4),
                family,
            });
        }
        if self.size > Self::max_size(ipv4) {
            return Err(SpecError::SizeTooLarge {
                size: self.size,
                max: Self::max_size(ipv4),
                family,
            });
        }
        if self.flows == 0 {
            return Err(SpecError::NoFlows);
        }
        if u128::from(self.flows) > self.combinations() {
            return Err(SpecError::TooManyFlows {
                flows: self.flows,
                combinations: self.combinations(),
            });
        }
        if self.flows > MAX_FLOWS {
            return Err(SpecError::FlowLimit {
                flows: self.flows,
                max: MAX_FLOWS,
            });
        }
        Ok(())
    }

    /// The tuple of flow `flow`.
    ///
    /// The flow index is spread over the four ranges (source, destination,
    /// source port, destination port) so that every range is walked at once
    /// rather than one after the other: with 3 destination ports and 1000
    /// source ports, flows 0, 1, 2 use three different ports of each. Distinct
    /// flows below [`GenSpec::combinations`] always get distinct tuples.
    /// Call it only on a spec that [`validate`](Self::validate)s and for
    /// `flow < flows`.
    pub fn tuple(&self, flow: u32) -> FlowTuple {
        // Only the first 2^32 values of a range can ever be reached by a
        // u32 flow index; capping keeps the products inside u128.
        let cap = |n: u128| n.min(1 << 32);
        let sizes = [
            cap(self.src.addresses()),
            cap(self.dst.addresses()),
            self.sport.ports().into(),
            self.dport.ports().into(),
        ];
        let [s, d, sp, dp] = spread(flow.into(), sizes);
        FlowTuple {
            src: self.src.nth(s).expect("index below the range size"),
            dst: self.dst.nth(d).expect("index below the range size"),
            sport: self
                .sport
                .nth(sp as u32)
                .expect("index below the range size"),
            dport: self
                .dport
                .nth(dp as u32)
                .expect("index below the range size"),
        }
    }
}

/// Maps `i < product(sizes)` to one index per dimension, bijectively.
///
/// Dimension by dimension, with `n` the size of the current one and `r` the
/// product of the rest: the index here is `i mod n`, and what goes on to the
/// rest is `(i + i / lcm(n, r)) mod r`. Over one block of `lcm(n, r)`
/// consecutive `i` the pairs `(i mod n, i mod r)` are distinct (Chinese
/// remainder theorem) and all have `(i mod r) - (i mod n)` in one residue
/// class mod `gcd(n, r)`; the `+ i / lcm` shift moves each of the `gcd`
/// blocks to another class, so all `n * r` pairs come out once. Within the
/// first block both indices simply count up, which is what spreads small
/// flow counts over every dimension.
fn spread(mut i: u128, sizes: [u128; 4]) -> [u128; 4] {
    let mut out = [0u128; 4];
    for k in 0..4 {
        let n = sizes[k];
        let rest: u128 = sizes[k + 1..].iter().product();
        out[k] = i % n;
        let block = n / gcd(n, rest) * rest;
        i = (i + i / block) % rest;
    }
    out
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One flow's frame up to the UDP payload, and the UDP checksum's partial
/// sum over everything but the varying payload header fields. One cache
/// line each.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Template {
    header: [u8; MAX_HEADER],
    /// Ones' complement sum of the pseudo-header, the UDP header, the magic
    /// and the zero padding.
    partial_sum: u16,
}

/// Writes the frames of a [`GenSpec`].
pub struct FrameFactory {
    templates: Vec<Template>,
    size: usize,
    header_len: usize,
    /// Offset of the UDP checksum field in the frame.
    checksum_at: usize,
}

impl FrameFactory {
    /// Validates `spec` and precomputes one template per flow.
    pub fn new(spec: &GenSpec) -> Result<Self, SpecError> {
        spec.validate()?;
        let ipv4 = spec.src.is_ipv4();
        let header_len = GenSpec::header_len(ipv4);
        let checksum_at = header_len - 2;
        let mut scratch = vec![0u8; spec.size];
        let mut templates = Vec::with_capacity(spec.flows as usize);
        for flow in 0..spec.flows {
            let t = spec.tuple(flow);
            let addrs = FrameAddrs {
                src_mac: spec.src_mac,
                dst_mac: spec.dst_mac,
                src: t.src,
                dst: t.dst,
            };
            let n = build::udp(
                &mut scratch,
                &addrs,
                t.sport,
                t.dport,
                spec.size - header_len,
            )
            .expect("validate() checked families and sizes");
            debug_assert_eq!(n, spec.size);
            let mut header = [0u8; MAX_HEADER];
            header[..header_len].copy_from_slice(&scratch[..header_len]);
            // The builder summed an all-zero payload: its checksum is the
            // complement of the sum of everything else. Add the magic, the
            // one payload field that never changes.
            let zero_payload_sum =
                !u16::from_be_bytes([scratch[checksum_at], scratch[checksum_at + 1]]);
            let magic = u64::from(u16::from_be_bytes([MAGIC[0], MAGIC[1]]))
                + u64::from(u16::from_be_bytes([MAGIC[2], MAGIC[3]]));
            templates.push(Template {
                header,
                partial_sum: fold(u64::from(zero_payload_sum) + magic),
            });
        }
        Ok(Self {
            templates,
            size: spec.size,
            header_len,
            checksum_at,
        })
    }

    /// Frame size in bytes (Ethernet without FCS).
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn flows(&self) -> u32 {
        self.templates.len() as u32
    }

    /// Offset of the [`PayloadHeader`] in every frame.
    pub fn payload_offset(&self) -> usize {
        self.header_len
    }

    /// Writes flow `flow`'s frame with sequence number `seq` and send time
    /// `ts_ns` at the start of `buf`, and returns its length ([`size`]).
    ///
    /// # Panics
    ///
    /// If `flow` is not below [`flows`] or `buf` is shorter than [`size`].
    ///
    /// [`size`]: Self::size
    /// [`flows`]: Self::flows
    #[inline]
    pub fn write(&self, buf: &mut [u8], flow: u32, seq: u64, ts_ns: u64) -> usize {
        let t = &self.templates[flow as usize];
        let frame = &mut buf[..self.size];
        let (header, payload) = frame.split_at_mut(self.header_len);
        header.copy_from_slice(&t.header[..self.header_len]);
        let (fields, padding) = payload.split_at_mut(PAYLOAD_HEADER_LEN);
        let fields: &mut [u8; PAYLOAD_HEADER_LEN] =
            fields.try_into().expect("split at PAYLOAD_HEADER_LEN");
        PayloadHeader { seq, ts_ns, flow }.write(fields);
        padding.fill(0);
        // Sums of 32-bit halves fold to the same ones' complement sum as the
        // 16-bit words they hold (2^16 = 1 mod 0xffff), and every field
        // starts at an even offset of the datagram.
        let sum = u64::from(t.partial_sum)
            + (seq >> 32)
            + (seq & 0xffff_ffff)
            + (ts_ns >> 32)
            + (ts_ns & 0xffff_ffff)
            + u64::from(flow);
        let checksum = match !fold(sum) {
            // RFC 768: a computed 0 goes out as all ones.
            0 => 0xffff,
            c => c,
        };
        header[self.checksum_at..self.checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
        self.size
    }
}

/// Folds a sum of 16-bit words into 16 bits with end-around carry.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests;
