//! Generated libbpf-rs skeletons for the programs in `bpf/`.
#![allow(clippy::all, missing_docs, unsafe_code)]

pub mod xsk_redirect {
    include!(concat!(env!("OUT_DIR"), "/xsk_redirect.skel.rs"));
}

pub mod inbound {
    include!(concat!(env!("OUT_DIR"), "/inbound.skel.rs"));
}

pub mod xdp_drop {
    include!(concat!(env!("OUT_DIR"), "/xdp_drop.skel.rs"));
}

pub mod bench_xdp {
    include!(concat!(env!("OUT_DIR"), "/bench_xdp.skel.rs"));
}
