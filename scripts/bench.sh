#!/usr/bin/env bash
# The packet-rate benchmark: builds xpf, then `xpf bench datapath` builds its
# own namespaces (a private host, the sending endpoint, a destination endpoint,
# an outside with the sink), measures xdp-drop, xdp-redirect, xdp-pass,
# afxdp-rxdrop, afxdp-fwd, kernel-nft, xpf and xpf-hybrid with the same
# generator and frame mix, endpoint to endpoint and to the outside, with the
# CPU each costs per packet, and writes bench/results/latest.json, latest.md
# and PNG plots. Everything it creates is removed when it ends.
#
#   scripts/bench.sh            full: adds the 40 kpps CPU comparisons and the
#                               sweeps (ipcache, rules, flows, sizes, workers)
#   scripts/bench.sh --quick    the middle point of each kind, both paths at
#                               saturation (a few minutes)
#   scripts/bench.sh --seconds 10 --out /tmp/results
#
# Needs root. On a host with kernel pktgen, scripts/pktgen.sh drives it
# against the same topology; see README.md, "Benchmarks".
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	echo "bench: needs root (namespaces, XDP, AF_XDP, nftables)" >&2
	exit 1
fi
scripts/deps.sh
cargo build --release --locked --quiet
exec target/release/xpf bench datapath "$@"
