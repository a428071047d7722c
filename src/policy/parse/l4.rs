//! The L4 part of a rule: port ranges with their protocols (port 0 or none
//! is every port, `endPort` bounds a range, named ports are refused) and
//! ICMP types by number or by Cilium's names per family.

use super::{field_err, FieldResult};
use crate::policy::model::{IcmpFamily, PortProto, PortRange};
use crate::policy::raw::{self, IntOrString};

pub(super) fn port_range(
    pp: &raw::PortProtocol,
    at: &str,
    default_proto: &str,
    allow_any: bool,
) -> FieldResult<PortRange> {
    let proto = pp.protocol.as_deref().unwrap_or(default_proto);
    let protocols = match proto {
        "TCP" => vec![PortProto::Tcp],
        "UDP" => vec![PortProto::Udp],
        "SCTP" => vec![PortProto::Sctp],
        "ANY" if allow_any => PortProto::ALL.to_vec(),
        other => {
            let known = if allow_any {
                "TCP, UDP, SCTP, ANY"
            } else {
                "TCP, UDP, SCTP"
            };
            return field_err(
                format!("{at}.protocol"),
                format!("unknown protocol `{other}` ({known})"),
            );
        }
    };
    let first = match &pp.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::Str(s)) if s.is_empty() => None,
        Some(IntOrString::Str(s)) => match s.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return field_err(
                    format!("{at}.port"),
                    format!("named port `{s}` is not supported (write the number)"),
                )
            }
        },
    };
    // Port 0, as Cilium reads it, is every port of the protocol: the same
    // as no port at all.
    let Some(first) = first.filter(|n| *n != 0) else {
        if pp.end_port.is_some() {
            return field_err(format!("{at}.endPort"), "needs a `port` above 0");
        }
        return Ok(PortRange {
            protocols,
            first: 0,
            last: u16::MAX,
        });
    };
    if !(1..=65535).contains(&first) {
        return field_err(
            format!("{at}.port"),
            format!("port {first} is out of range (1-65535)"),
        );
    }
    let last = pp.end_port.unwrap_or(first);
    if !(1..=65535).contains(&last) {
        return field_err(
            format!("{at}.endPort"),
            format!("endPort {last} is out of range (1-65535)"),
        );
    }
    if last < first {
        return field_err(
            format!("{at}.endPort"),
            format!("endPort {last} is below port {first}"),
        );
    }
    Ok(PortRange {
        protocols,
        first: first as u16,
        last: last as u16,
    })
}

pub(super) fn icmp_field(f: &raw::IcmpField, at: &str) -> FieldResult<(IcmpFamily, u8)> {
    let family = match f.family.as_deref().unwrap_or("IPv4") {
        "IPv4" => IcmpFamily::V4,
        "IPv6" => IcmpFamily::V6,
        other => {
            return field_err(
                format!("{at}.family"),
                format!("unknown ICMP family `{other}` (IPv4 or IPv6)"),
            )
        }
    };
    let t = match &f.icmp_type {
        IntOrString::Int(n) if (0..=255).contains(n) => *n as u8,
        IntOrString::Int(n) => {
            return field_err(
                format!("{at}.type"),
                format!("ICMP type {n} is out of range (0-255)"),
            )
        }
        IntOrString::Str(s) => match s.parse::<u8>().ok().or_else(|| icmp_type_name(family, s)) {
            Some(t) => t,
            None => {
                return field_err(
                    format!("{at}.type"),
                    format!("unknown ICMP type `{s}` for {family:?}"),
                )
            }
        },
    };
    Ok((family, t))
}

/// Cilium's ICMP type names.
fn icmp_type_name(family: IcmpFamily, name: &str) -> Option<u8> {
    let table: &[(&str, u8)] = match family {
        IcmpFamily::V4 => &[
            ("EchoReply", 0),
            ("DestinationUnreachable", 3),
            ("Redirect", 5),
            ("Echo", 8),
            ("EchoRequest", 8),
            ("RouterAdvertisement", 9),
            ("RouterSelection", 10),
            ("TimeExceeded", 11),
            ("ParameterProblem", 12),
            ("Timestamp", 13),
            ("TimestampReply", 14),
            ("Photuris", 40),
            ("ExtendedEchoRequest", 42),
            ("ExtendedEchoReply", 43),
        ],
        IcmpFamily::V6 => &[
            ("DestinationUnreachable", 1),
            ("PacketTooBig", 2),
            ("TimeExceeded", 3),
            ("ParameterProblem", 4),
            ("EchoRequest", 128),
            ("EchoReply", 129),
            ("MulticastListenerQuery", 130),
            ("MulticastListenerReport", 131),
            ("MulticastListenerDone", 132),
            ("RouterSolicitation", 133),
            ("RouterAdvertisement", 134),
            ("NeighborSolicitation", 135),
            ("NeighborAdvertisement", 136),
            ("RedirectMessage", 137),
            ("RouterRenumbering", 138),
            ("ICMPNodeInformationQuery", 139),
            ("ICMPNodeInformationResponse", 140),
            ("InverseNeighborDiscoverySolicitation", 141),
            ("InverseNeighborDiscoveryAdvertisement", 142),
            ("HomeAgentAddressDiscoveryRequest", 144),
            ("HomeAgentAddressDiscoveryReply", 145),
            ("MobilePrefixSolicitation", 146),
            ("MobilePrefixAdvertisement", 147),
            ("DuplicateAddressRequestCodeSuffix", 157),
            ("DuplicateAddressConfirmationCodeSuffix", 158),
            ("ExtendedEchoRequest", 160),
            ("ExtendedEchoReply", 161),
        ],
    };
    table.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
