#!/usr/bin/env bash
# Installs the system packages xpf builds against, only when one is missing.
# Idempotent and quiet; safe to run on every test or demo invocation.
set -euo pipefail

# protobuf-compiler and libprotobuf-dev build the etcd client (its build.rs runs
# protoc); etcd-server and etcd-client (etcdctl) run the cluster-mode tests.
pkgs=(clang llvm libelf-dev libbpf-dev zlib1g-dev m4 pkg-config iproute2 nftables fonts-dejavu-core
	protobuf-compiler libprotobuf-dev etcd-server etcd-client)

missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done

if [ "${#missing[@]}" -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing system packages: ${missing[*]} (run as root, or install them)" >&2
		exit 1
	fi
	echo "deps: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
	echo "deps: cargo not found; install a Rust toolchain (rustup) first" >&2
	exit 1
fi
