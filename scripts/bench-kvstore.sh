#!/usr/bin/env bash
# The cluster-mode benchmark (issue 12): starts a private etcd on Unix
# sockets in a temporary directory, builds xpf, and runs
# `xpf bench kvstore` against it: the initial sync of 100k remote ipcache
# entries, event-to-enforcement with real packets through a real
# `xpf run`, and identity allocation with two hosts racing. Writes the
# JSON report to bench/results/kvstore.json and prints the summary. The
# etcd and its directory are removed when it ends, whatever happened; the
# bench itself removes its namespaces and its xpf run.
#
#   scripts/bench-kvstore.sh                    everything (needs root)
#   scripts/bench-kvstore.sh --skip-latency     without the root part
#   scripts/bench-kvstore.sh --entries 20000 --events 20 --allocations 100
#
# Other arguments go to `xpf bench kvstore` (see its --help); --etcd and
# --output are this script's.
set -euo pipefail
cd "$(dirname "$0")/.."

for a in "$@"; do
	case "$a" in
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
		exit 0
		;;
	--etcd | --etcd=* | --output | --output=*)
		echo "bench-kvstore: $a is set by this script" >&2
		exit 2
		;;
	esac
done
skip_latency=no
for a in "$@"; do
	[ "$a" = --skip-latency ] && skip_latency=yes
done
if [ "$skip_latency" = no ] && [ "$(id -u)" -ne 0 ]; then
	echo "bench-kvstore: the latency part needs root (namespaces, XDP, AF_XDP); or --skip-latency" >&2
	exit 1
fi
scripts/deps.sh

out=bench/results/kvstore.json
dir=$(mktemp -d "${TMPDIR:-/tmp}/xpf-bench-etcd.XXXXXX")
etcd_pid=
stop_etcd() {
	if [ -n "$etcd_pid" ]; then
		kill "$etcd_pid" 2>/dev/null || true
		wait "$etcd_pid" 2>/dev/null || true
	fi
	rm -rf "$dir" "$out.tmp"
}
trap stop_etcd EXIT
trap 'exit 130' INT TERM

# etcd 3.4 turns unix://localhost:2379 into a socket file of that name in
# its working directory. Its own session: a Ctrl-C reaches xpf, which
# then takes its keys out of this etcd before the trap stops it.
(
	cd "$dir"
	exec setsid etcd --name bench --data-dir "$dir/data" \
		--listen-client-urls unix://localhost:2379 \
		--advertise-client-urls unix://localhost:2379 \
		--listen-peer-urls unix://localhost:2380 \
		--initial-advertise-peer-urls unix://localhost:2380 \
		--initial-cluster bench=unix://localhost:2380 \
		>"$dir/etcd.log" 2>&1
) &
etcd_pid=$!
endpoint="unix://$dir/localhost:2379"
for _ in $(seq 100); do
	if [ -S "$dir/localhost:2379" ] &&
		ETCDCTL_API=3 etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1; then
		break
	fi
	if ! kill -0 "$etcd_pid" 2>/dev/null; then
		echo "bench-kvstore: etcd exited:" >&2
		cat "$dir/etcd.log" >&2
		exit 1
	fi
	sleep 0.1
done
ETCDCTL_API=3 etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 || {
	echo "bench-kvstore: etcd did not answer on $endpoint in 10 s" >&2
	exit 1
}
echo "bench-kvstore: $(etcd --version | head -1) on $endpoint" >&2

cargo build --release --locked --quiet
mkdir -p bench/results
target/release/xpf bench kvstore --etcd "$endpoint" --output json "$@" >"$out.tmp"
mv "$out.tmp" "$out"
echo "bench-kvstore: wrote $out" >&2
