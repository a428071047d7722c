#!/usr/bin/env bash
# Runs xpf's main job on the built-in example (examples/xpf.yaml): derives
# identities and the ipcache, checks a set of packets against the policies
# (printing each verdict and why), then `xpf demo`: the example's endpoints
# in private namespaces, the filter running, real TCP and UDP between every
# pair, expected against observed verdicts, drop counters, teardown.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
cargo build --release --locked --quiet
xpf=target/release/xpf
cfg=examples/xpf.yaml

echo "== identities"
"$xpf" identity list --config "$cfg"
echo
echo "== ipcache"
"$xpf" ipcache list --config "$cfg"
echo
echo "== verdicts (expected in brackets)"
fail=0
check() {
	local expect=$1
	shift
	local out verdict
	out=$("$xpf" policy check --config "$cfg" --output json "$@")
	verdict=$(printf '%s\n' "$out" | sed -n 's/.*"verdict": "\([a-z]*\)".*/\1/p')
	reason=$(printf '%s\n' "$out" | sed -n 's/.*"reason": "\(.*\)",*$/\1/p')
	printf '%-8s [%-7s] %-52s %s\n' "$verdict" "$expect" "$*" "$reason"
	[ "$verdict" = "$expect" ] || fail=1
}
check allowed --from frontend --to 198.18.10.3 --port 8080
check allowed --from frontend --to 2001:db8:10::3 --port 8080
check denied --from frontend --to 198.18.10.3 --port 22
check allowed --from frontend --to 198.18.10.3 --proto icmp --icmp-type 8
check allowed --from frontend --to 2001:db8:10::3 --proto icmpv6 --icmp-type 128
check denied --from frontend --to 198.18.10.4 --port 5432
check allowed --from frontend --to 198.19.7.7 --port 443
check denied --from frontend --to 198.19.99.7 --port 443
check denied --from frontend --to 198.19.7.7 --port 80
check allowed --from backend --to 198.18.10.4 --port 5432
check allowed --from backend --to 2001:db8:10::4 --port 5432
check denied --from backend --to 198.18.10.4 --port 5433
check allowed --from backend --to 198.19.200.9 --port 873
check allowed --from backend --to 198.18.0.1 --port 53 --proto udp
check denied --from backend --to 198.19.200.9 --port 443
check denied --from db --to 198.18.10.3 --port 8080
check denied --from db --to 198.19.7.7 --port 443
echo
if [ "$fail" -ne 0 ]; then
	echo "demo: a verdict differed from the expected one" >&2
	exit 1
fi
echo "demo: every verdict as expected. Compiled tables: $xpf policy compile --config $cfg"
echo
if [ "$(id -u)" -ne 0 ]; then
	echo "demo: the traffic part (xpf demo) needs root for namespaces and XDP; rerun as root" >&2
	exit 1
fi
echo "== xpf demo: real traffic through the filter"
"$xpf" demo --config "$cfg"
