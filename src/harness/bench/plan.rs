//! What the datapath benchmark measures: the run kinds, the points of the
//! parameter space (ipcache size, rules, flows, frame size, workers, rate,
//! ipcache churn) around the middle one, the addresses and port the
//! traffic uses, and the control-plane load the API kinds apply.

use std::net::Ipv6Addr;

/// Where the ipcache entries (and so the traffic's destinations) live.
pub(super) const DST_BASE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 0);
pub(super) const DST_ROUTE: &str = "2001:db8:1000::/36";
pub(super) const SRC6: &str = "2001:db8:10::2";
/// The port every rule allows.
pub(super) const PORT: u16 = 9;
/// CPUs: the worker(s) first, the generator and the sink on the last one.
pub(super) const GEN_CPU: &str = "1";
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
        }
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
}

pub(super) const MID: Point = Point {
    ipcache: 100_000,
    rules: 1_000,
    flows: 1_000,
    size: MIN_FRAME,
    workers: 1,
    rate: 0,
    churn: 0,
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
