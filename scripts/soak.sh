#!/usr/bin/env bash
# The soak: `xpf run` for N minutes (default 30) in a private host namespace
# with forwarding on, frontend making allowed TCP and UDP exchanges (new
# connections, new ports, fragmented datagrams, one long-lived connection),
# backend flooding SYNs and first fragments, db sending the hostile-frame
# corpus and trying what it may not. Once a minute it prints xpf's resident
# memory, the conntrack and fragment-table sizes and every endpoint's drop
# counters. It fails if any exchange of frontend fails, anything of db's
# gets through, a table passes its bound or memory keeps growing.
#
#   scripts/soak.sh [--minutes N]
#
# Needs root; everything it creates is removed when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=30
while [ $# -gt 0 ]; do
	case "$1" in
	--minutes)
		minutes=${2:-}
		shift 2 || true
		;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
		exit 0
		;;
	*)
		echo "soak: unknown argument '$1' (see --help)" >&2
		exit 2
		;;
	esac
done
if ! [[ "$minutes" =~ ^[0-9]+$ ]] || [ "$minutes" -lt 2 ]; then
	echo "soak: --minutes must be a whole number of at least 2, not '$minutes'" >&2
	exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "soak: needs root (namespaces, XDP, AF_XDP)" >&2
	exit 1
fi
scripts/deps.sh
XPF_SOAK_MINUTES=$minutes exec cargo test --release --locked --test soak -- \
	--ignored --nocapture --test-threads 1
