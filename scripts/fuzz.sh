#!/usr/bin/env bash
# Runs one fuzz target of fuzz/ under AFL++ (cargo-afl, stable toolchain)
# for a number of seconds, then prints what it found.
#
#   scripts/fuzz.sh TARGET SECONDS     e.g. scripts/fuzz.sh parse 60
#
# Targets:
#   parse    xpf::wire::parse on arbitrary bytes, with FlowInfo's invariants
#   filter   Filter::decide over frame sequences in the example world
#   policy   policy documents and xpf.yaml from arbitrary YAML, then Engine::new
#
# It installs cargo-afl and builds AFL++ if they are missing, builds the
# targets instrumented, writes the seed corpora (fuzz/seeds, from
# xpf::wire::build and examples/), and fuzzes into fuzz/out/TARGET. A
# previous run's queue joins the seeds; a previous run with crashes is kept
# as fuzz/out/TARGET.<time>. Exits 1 if the run found a crash; each crash
# replays with `fuzz/target/release/TARGET < FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

case "${1:-}" in
-h | --help)
	usage
	exit 0
	;;
esac
if [ $# -ne 2 ]; then
	usage >&2
	exit 2
fi
target=$1
seconds=$2
case "$target" in
parse | filter | policy) ;;
*)
	echo "fuzz: unknown target '$target' (parse, filter, policy)" >&2
	exit 2
	;;
esac
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
	echo "fuzz: SECONDS must be a positive whole number, not '$seconds'" >&2
	exit 2
fi

# cargo-afl of the same version as the afl crate the targets link, so the
# AFL++ runtime it builds is the one the crate expects.
afl_version=$(awk '/^name = "afl"$/ { getline; gsub(/"/, "", $3); print $3 }' fuzz/Cargo.lock)
if [ "$(cargo afl --version 2>/dev/null | awk '{ print $2 }')" != "$afl_version" ]; then
	cargo install --locked --force cargo-afl --version "=$afl_version"
fi
# AFL++ is built once per Rust toolchain; `config --build` refuses to build
# it twice, which is not an error here.
if ! out=$(cargo afl config --build 2>&1) && ! grep -q "already built" <<<"$out"; then
	echo "$out" >&2
	exit 1
fi

(cd fuzz && cargo afl build --release --locked --quiet --bin "$target" --bin seeds)

out_dir=fuzz/out/$target
seeds=fuzz/seeds/$target
# Only this target's seeds are replaced, so two targets can run at once.
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
fuzz/target/release/seeds "$fresh"
rm -rf "$seeds"
mkdir -p fuzz/seeds
mv "$fresh/$target" "$seeds"
if [ -d "$out_dir/default/queue" ]; then
	# Named by checksum: queue names hold ':' and ',', which some tools
	# choke on, and a seed AFL queued again is copied once.
	for f in "$out_dir"/default/queue/id:*; do
		[ -f "$f" ] && cp "$f" "$seeds/prev-$(cksum <"$f" | awk '{ print $1 }')"
	done
fi
if compgen -G "$out_dir/default/crashes/id:*" >/dev/null; then
	kept=$out_dir.$(date +%Y%m%d-%H%M%S)
	mv "$out_dir" "$kept"
	echo "fuzz: the previous run's crashes are kept in $kept"
fi
rm -rf "$out_dir"
mkdir -p "$out_dir"

dict=()
[ -f "fuzz/dict/$target.dict" ] && dict=(-x "fuzz/dict/$target.dict")

# Headless and polite: no UI, no CPU pinning (another fuzzer or a build may
# hold the cores), no checks of the CPU governor or of where cores go.
AFL_NO_UI=1 \
	AFL_NO_AFFINITY=1 \
	AFL_SKIP_CPUFREQ=1 \
	AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
	cargo afl fuzz -i "$seeds" -o "$out_dir" -V "$seconds" "${dict[@]}" \
	-- "fuzz/target/release/$target"

stats=$out_dir/default/fuzzer_stats
stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
crashes=("$out_dir"/default/crashes/id:*)
hangs=("$out_dir"/default/hangs/id:*)
[ -e "${crashes[0]}" ] || crashes=()
[ -e "${hangs[0]}" ] || hangs=()

echo
echo "fuzz $target: $(stat run_time) s"
echo "  executions  $(stat execs_done) ($(stat execs_per_sec) exec/s)"
echo "  coverage    $(stat edges_found) of $(stat total_edges) edges ($(stat bitmap_cvg)), corpus $(stat corpus_count)"
echo "  stability   $(stat stability)"
echo "  crashes     ${#crashes[@]}"
echo "  hangs       ${#hangs[@]}"
for f in ${hangs[@]+"${hangs[@]}"}; do
	echo "    hang: $f"
done
for f in ${crashes[@]+"${crashes[@]}"}; do
	echo "    crash: $f"
	# The panic message, for the report (none for a crash that is a signal).
	msg=$(RUST_BACKTRACE=0 "fuzz/target/release/$target" <"$f" 2>&1 || true)
	grep -m 1 -A 1 "panicked" <<<"$msg" | sed 's/^/      /' || true
done
[ ${#crashes[@]} -eq 0 ]
