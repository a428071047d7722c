//! `wire::parse` on arbitrary bytes: it must never panic, and what it
//! returns must keep the promises documented on `wire::FlowInfo`. The ICMP
//! error reader runs on every `Ok` too, since it follows `parse`'s offsets.

use xpf::wire::{self, icmp_error, FlowInfo, Fragment, L4Proto, ETH_HLEN};

fn check(frame: &[u8], flow: &FlowInfo) {
    assert_eq!(usize::from(flow.l3_offset), ETH_HLEN, "{flow:?}");
    assert_eq!(flow.src.is_ipv4(), flow.dst.is_ipv4(), "{flow:?}");

    // l4_offset is 0 exactly for later fragments, which carry no upper
    // layer: no length, no ports, no flags.
    let later = matches!(flow.fragment, Fragment::Later { .. });
    assert_eq!(flow.l4_offset == 0, later, "{flow:?}");
    if later {
        assert_eq!(flow.l4_len, 0, "{flow:?}");
        assert_eq!(
            (flow.sport, flow.dport, flow.tcp_flags),
            (0, 0, 0),
            "{flow:?}"
        );
    } else {
        let ip_hlen = if flow.src.is_ipv4() { 20 } else { 40 };
        assert!(
            usize::from(flow.l4_offset) >= ETH_HLEN + ip_hlen,
            "{flow:?}"
        );
        assert!(
            usize::from(flow.l4_offset) + usize::from(flow.l4_len) <= frame.len(),
            "upper layer past the frame's {} bytes: {flow:?}",
            frame.len()
        );
    }

    // Ports only where FlowInfo says there are any.
    let proto = flow.l4_proto();
    let icmp = matches!(proto, L4Proto::ICMP | L4Proto::ICMPV6);
    let echo = match proto {
        L4Proto::ICMP => matches!(flow.icmp_type, 0 | 8),
        L4Proto::ICMPV6 => matches!(flow.icmp_type, 128 | 129),
        _ => false,
    };
    if !proto.has_ports() {
        assert_eq!(flow.dport, 0, "{flow:?}");
        if !echo {
            assert_eq!(flow.sport, 0, "{flow:?}");
        }
    }
    if !icmp {
        assert_eq!((flow.icmp_type, flow.icmp_code), (0, 0), "{flow:?}");
    }
    if proto != L4Proto::TCP {
        assert_eq!(flow.tcp_flags, 0, "{flow:?}");
    }

    if let Some(q) = icmp_error::quoted(frame, flow) {
        assert_eq!(q.src.is_ipv4(), q.dst.is_ipv4(), "{q:?}");
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(flow) = wire::parse(data) {
            check(data, &flow);
        }
    });
}
