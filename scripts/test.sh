#!/usr/bin/env bash
# Installs what the build needs (when missing), builds, and runs every test:
# formatting and lints, unit and property tests, end-to-end CLI tests, the
# root-only datapath tests (real traffic between namespaces, the hostile-frame
# corpus end to end), and a compile check of the benchmarks and fuzz targets.
# Run as root on a fresh machine; CI calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh

export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo build (benches compile too)"
cargo build --all-targets --locked
echo "== cargo check of the fuzz targets (fuzz/, run by scripts/fuzz.sh)"
cargo check --locked --all-targets --manifest-path fuzz/Cargo.toml
echo "== cargo test"
if [ "$(id -u)" -ne 0 ]; then
	echo "(not root: the datapath tests will print 'skipped: needs root')"
fi
# Namespaces, and xpf instances' pins (bpffs) and state (/run/xpf).
leftovers() {
	ip netns list 2>/dev/null | sort || true
	ls -d /sys/fs/bpf/xpf/* /run/xpf/* 2>/dev/null | sort || true
}
before=$(leftovers)
cargo test --locked --all-targets
echo "== nothing left behind"
after=$(leftovers)
left=$(comm -13 <(echo "$before") <(echo "$after"))
if [ -n "$left" ]; then
	echo "test namespaces, pins or instance state left behind:" >&2
	echo "$left" >&2
	exit 1
fi
echo "ok: every test passed and nothing was left behind"
