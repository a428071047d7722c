//! What the datapath benchmark measures: the run kinds, the points of the
//! parameter space (ipcache size, rules, flows, frame size, workers, rate,
//! ipcache churn, destination) around the middle one, the addresses and
//! port the traffic uses, and the control-plane load the API kinds apply.

use std::net::Ipv6Addr;

pub(super) use crate::harness::report::Destination;

/// Where the ipcache entries (and so the traffic's destinations) live.
pub(super) const DST_BASE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 0);
pub(super) const DST_ROUTE: &str = "2001:db8:1000::/36";
pub(super) const SRC6: &str = "2001:db8:10::2";
/// The destination endpoint (`dst`), where the sink of the endpoint to
/// endpoint runs counts.
pub(super) const DST4: &str = "198.18.20.2";
pub(super) const DST6: &str = "2001:db8:20::2";
/// The port every rule allows.
pub(super) const PORT: u16 = 9;
/// CPUs: the worker(s) first, the generator and the sink on the last one.
pub(super) const GEN_CPU: &str = "1";
/// The datapath's CPU: xpf's (first) worker, and the NAPI threads of the
/// kinds that run threaded NAPI ([`Kind::threaded_napi`]).
pub(super) const DATAPATH_CPU: usize = 0;
/// The fixed moderate rate CPU per packet is compared at besides
/// saturation: well below every kind's ceiling, so nothing is lost.
pub(super) const MODERATE_PPS: u64 = 40_000;
pub(super) const MIN_FRAME: u64 = 86;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Kind {
    XdpDrop,
    RxDrop,
    Fwd,
    Nft,
    Xpf,
    /// xpf while a client applies [`RELOADS_PER_SEC`] reloads and
    /// [`UPSERTS_PER_SEC`] ipcache upserts through the API.
    XpfUpdates,
    /// xpf with a monitor of every event attached through the API.
    XpfMonitor,
    /// XDP rewrites the Ethernet header and redirects to the destination
    /// endpoint's veth (endpoint to endpoint only).
    XdpRedirect,
    /// XDP passes every frame to the host stack (to the outside only).
    XdpPass,
    /// xpf with `datapath: {mode: hybrid}`.
    XpfHybrid,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::XdpDrop => "xdp-drop",
            Kind::RxDrop => "afxdp-rxdrop",
            Kind::Fwd => "afxdp-fwd",
            Kind::Nft => "kernel-nft",
            Kind::Xpf => "xpf",
            Kind::XpfUpdates => "xpf-updates",
            Kind::XpfMonitor => "xpf-monitor",
            Kind::XdpRedirect => "xdp-redirect",
            Kind::XdpPass => "xdp-pass",
            Kind::XpfHybrid => "xpf-hybrid",
        }
    }

    /// Whether the run polls the NAPI of the sending endpoint's host-side
    /// veth (and, endpoint to endpoint, of the destination's `eth0`, with
    /// GRO on) in threads pinned to [`DATAPATH_CPU`]: the in-kernel
    /// ceilings and the hybrid datapath, whose fast path is in-kernel.
    /// Every other kind leaves NAPI as it is: softirq on the CPU that
    /// raised it, which for the sending veth is the generator's.
    pub(super) fn threaded_napi(self) -> bool {
        matches!(self, Kind::XdpRedirect | Kind::XdpPass | Kind::XpfHybrid)
    }
}

/// Policy reloads a second the `xpf-updates` client asks for.
pub(super) const RELOADS_PER_SEC: u64 = 10;
/// Ipcache upserts a second the `xpf-updates` client asks for.
pub(super) const UPSERTS_PER_SEC: u64 = 10_000;
/// Where the API's runtime ipcache entries go: a /64 the traffic never
/// uses (and not the one `xpf run --ipcache-churn` slides through).
pub(super) const RUNTIME_BASE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0xfffe, 0, 0, 0, 0);
/// Runtime entries present at once: each upsert past this many deletes
/// the oldest, so the table size stays flat.
pub(super) const RUNTIME_WINDOW: u64 = 1024;

/// The `i`th runtime ipcache entry's prefix.
pub(super) fn runtime_prefix(i: u64) -> String {
    format!(
        "{}/128",
        Ipv6Addr::from(u128::from(RUNTIME_BASE) + u128::from(i))
    )
}

/// One point of the parameter space.
#[derive(Clone, Copy, Debug)]
pub(super) struct Point {
    pub(super) ipcache: u64,
    pub(super) rules: u64,
    pub(super) flows: u64,
    pub(super) size: u64,
    pub(super) workers: u64,
    pub(super) rate: u64,
    pub(super) churn: u64,
    pub(super) to: Destination,
}

pub(super) const MID: Point = Point {
    ipcache: 100_000,
    rules: 1_000,
    flows: 1_000,
    size: MIN_FRAME,
    workers: 1,
    rate: 0,
    churn: 0,
    to: Destination::Outside,
};

/// [`MID`], endpoint to endpoint.
pub(super) const MID_E2E: Point = Point {
    to: Destination::Endpoint,
    ..MID
};

pub(super) fn short(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// The `i`th ipcache entry's (and destination's) address.
pub(super) fn dst_addr(i: u64) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(DST_BASE) + 1 + u128::from(i))
}
