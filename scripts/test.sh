#!/usr/bin/env bash
# Installs what the build needs (when missing), builds, and runs every test:
# formatting and lints, unit and property tests, end-to-end CLI tests, and a
# compile check of the benchmarks. Run as root on a fresh machine; CI calls it.
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
echo "== cargo test"
cargo test --locked --all-targets
