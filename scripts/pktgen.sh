#!/usr/bin/env bash
# Sends UDP load from one xpf endpoint with the kernel's pktgen
# (/proc/net/pktgen), with the options of the kernel's samples/pktgen
# scripts. Falls back to pointing at `xpf gen` on kernels without pktgen.
# `-h` tells everything.
set -euo pipefail

prog=${0##*/}
PGDIR=/proc/net/pktgen

usage() {
	cat <<EOF
Usage: $prog -i DEV -m DST_MAC -d DST_IP[-DST_IP_MAX] [options]

Drives the kernel's packet generator (pktgen, /proc/net/pktgen) to send UDP
from one of xpf's endpoints through the filter, for xpf's benchmarks.

Run it inside the sending endpoint's network namespace (by default named
after the endpoint), on its eth0, with the endpoint's gateway as destination
MAC: the MAC of the host-side veth, which the endpoint holds as the static
neighbour entry of 169.254.1.1. Every frame then enters xpf's XDP program on
the host side, exactly as the endpoint's own traffic does:

  gw=\$(ip netns exec frontend ip neigh show 169.254.1.1 dev eth0 | awk '{print \$5}')
  ip netns exec frontend $0 -i eth0 -m "\$gw" -s 198.18.10.2 \\
      -d 198.19.0.1-198.19.255.254 -p 9 -P 1024-65535 -t 1 -n 0

Options (those of the kernel's samples/pktgen scripts where they exist):
  -i DEV        device to send on (required; eth0 inside an endpoint)
  -m DST_MAC    destination MAC, aa:bb:cc:dd:ee:ff (required; the gateway's)
  -d DST        destination address, or range START-END (required); a range is
                walked at random (flag IPDST_RND)
  -s SRC        source address or range START-END (default: the device's own
                address, which is what xpf's anti-spoofing lets through)
  -p PORT       UDP destination port or range MIN-MAX (default 9)
  -P PORT       UDP source port or range MIN-MAX (default 9)
  -x SIZE       frame size in bytes without the 4-byte FCS, as pktgen's
                pkt_size counts it (default 60: a 64-byte frame on the wire)
  -t THREADS    pktgen threads, one per CPU from -f on (default 1)
  -f FIRST      first CPU (pktgen thread kpktgend_FIRST) to use (default 0)
  -n COUNT      packets per thread, 0 = until Ctrl-C (default 10000000)
  -b BURST      packets per transmit call (default 1; always 1 on a veth,
                which cannot share an skb between transmits)
  -c CLONE      clone_skb: send each skb CLONE more times (default 0; always 0
                on a veth)
  -w DELAY      delay between packets in nanoseconds (default 0: full speed)
  -6            IPv6: addresses are IPv6 (a destination range is random within
                START..END bitwise, as pktgen does; a source range uses START)
  -D            dry run: print the pktgen commands instead of running them
  -h            this help

Ctrl-C stops every thread. At the end each thread device's result lines are
printed ("Result: OK: ..." and the pps line), then the total pps.

Needs root and a kernel with pktgen (CONFIG_NET_PKTGEN; the script runs
\`modprobe pktgen\` unless XPF_PKTGEN_NO_MODPROBE=1). Without pktgen it
prints the equivalent \`xpf gen\` command (xpf's own AF_XDP generator) and
exits 2.

Exit status: 0 when the run ended, 1 on a usage or setup error, 2 when this
kernel has no pktgen.
EOF
}

die() {
	echo "$prog: $*" >&2
	exit 1
}

warn() {
	echo "$prog: $*" >&2
}

is_uint() {
	[[ $1 =~ ^[0-9]+$ ]]
}

is_ipv4() {
	local IFS=. o
	[[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || return 1
	# shellcheck disable=SC2086 # split on dots on purpose
	for o in $1; do
		[ "$((10#$o))" -le 255 ] || return 1
	done
}

is_ipv6() {
	[[ $1 == *:* && $1 =~ ^[0-9a-fA-F:.]+$ ]]
}

ipv4_to_int() {
	local IFS=. a b c d
	read -r a b c d <<<"$1"
	echo $(((10#$a << 24) | (10#$b << 16) | (10#$c << 8) | 10#$d))
}

# split_range VALUE: prints "MIN MAX"; a single value is both.
split_range() {
	case $1 in
	*-*) echo "${1%%-*} ${1#*-}" ;;
	*) echo "$1 $1" ;;
	esac
}

# check_addr_range WHAT MIN MAX
check_addr_range() {
	local what=$1 lo=$2 hi=$3 shown=$2
	[ "$lo" = "$hi" ] || shown="$lo-$hi"
	if [ "$IP6" = yes ]; then
		if ! is_ipv6 "$lo" || ! is_ipv6 "$hi"; then
			die "$what: '$shown' is not an IPv6 address or range (with -6)"
		fi
	else
		if ! is_ipv4 "$lo" || ! is_ipv4 "$hi"; then
			die "$what: '$shown' is not an IPv4 address or range (IPv6 needs -6)"
		fi
		[ "$(ipv4_to_int "$lo")" -le "$(ipv4_to_int "$hi")" ] || die "$what: $lo is above $hi"
	fi
}

# check_port_range WHAT MIN MAX
check_port_range() {
	local what=$1 lo=$2 hi=$3 shown=$2
	[ "$lo" = "$hi" ] || shown="$lo-$hi"
	if ! is_uint "$lo" || ! is_uint "$hi"; then
		die "$what: '$shown' is not a port or range MIN-MAX"
	fi
	[ "$((10#$hi))" -le 65535 ] || die "$what: $hi is above 65535"
	[ "$((10#$lo))" -le "$((10#$hi))" ] || die "$what: $lo is above $hi"
}

# is_veth DEV: whether DEV is a veth, by its link kind.
is_veth() {
	if command -v ip >/dev/null 2>&1; then
		ip -d -j link show dev "$1" 2>/dev/null | grep -q '"info_kind":"veth"'
	elif command -v ethtool >/dev/null 2>&1; then
		ethtool -i "$1" 2>/dev/null | grep -qx 'driver: veth'
	else
		return 1
	fi
}

DEV=""
DST_MAC=""
DST=""
SRC=""
UDP_DST=9
UDP_SRC=9
SIZE=60
THREADS=1
FIRST=0
COUNT=10000000
BURST=1
CLONE=0
DELAY=0
IP6=no
DRY_RUN=no

while getopts ":i:m:d:s:p:P:x:t:f:n:b:c:w:6Dh" opt; do
	case $opt in
	i) DEV=$OPTARG ;;
	m) DST_MAC=$OPTARG ;;
	d) DST=$OPTARG ;;
	s) SRC=$OPTARG ;;
	p) UDP_DST=$OPTARG ;;
	P) UDP_SRC=$OPTARG ;;
	x) SIZE=$OPTARG ;;
	t) THREADS=$OPTARG ;;
	f) FIRST=$OPTARG ;;
	n) COUNT=$OPTARG ;;
	b) BURST=$OPTARG ;;
	c) CLONE=$OPTARG ;;
	w) DELAY=$OPTARG ;;
	6) IP6=yes ;;
	D) DRY_RUN=yes ;;
	h)
		usage
		exit 0
		;;
	:) die "-$OPTARG needs a value (-h for help)" ;;
	*) die "unknown option -$OPTARG (-h for help)" ;;
	esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || die "unexpected argument '$1' (-h for help)"

[ -n "$DEV" ] || die "-i DEV is required (-h for help)"
[ -n "$DST_MAC" ] || die "-m DST_MAC is required (-h for help)"
[ -n "$DST" ] || die "-d DST is required (-h for help)"
[[ $DEV =~ ^[A-Za-z0-9_.:-]{1,15}$ ]] || die "-i: '$DEV' is not an interface name"
[[ $DST_MAC =~ ^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$ ]] || die "-m: '$DST_MAC' is not a MAC address aa:bb:cc:dd:ee:ff"

read -r DST_MIN DST_MAX < <(split_range "$DST")
check_addr_range -d "$DST_MIN" "$DST_MAX"
if [ -n "$SRC" ]; then
	read -r SRC_MIN SRC_MAX < <(split_range "$SRC")
	check_addr_range -s "$SRC_MIN" "$SRC_MAX"
fi
read -r UDP_DST_MIN UDP_DST_MAX < <(split_range "$UDP_DST")
check_port_range -p "$UDP_DST_MIN" "$UDP_DST_MAX"
read -r UDP_SRC_MIN UDP_SRC_MAX < <(split_range "$UDP_SRC")
check_port_range -P "$UDP_SRC_MIN" "$UDP_SRC_MAX"

for opt_var in x:SIZE t:THREADS f:FIRST n:COUNT b:BURST c:CLONE w:DELAY; do
	v=${opt_var#*:}
	is_uint "${!v}" || die "-${opt_var%%:*}: '${!v}' is not a whole number"
	printf -v "$v" '%d' "$((10#${!v}))" # no octal surprises from leading zeros
done
min_size=42
[ "$IP6" = yes ] && min_size=62
if [ "$SIZE" -lt "$min_size" ] || [ "$SIZE" -gt 9216 ]; then
	die "-x: frame size $SIZE is outside $min_size..9216"
fi
[ "$THREADS" -ge 1 ] || die "-t: at least one thread"
[ "$BURST" -ge 1 ] || die "-b: burst is at least 1"
cpus=$(nproc)
[ $((FIRST + THREADS)) -le "$cpus" ] ||
	die "-f $FIRST -t $THREADS: this machine has CPUs 0..$((cpus - 1)) (one pktgen thread each)"
LAST=$((FIRST + THREADS - 1))

# No pktgen: say so, and give the same traffic as an `xpf gen` command.
if [ "$DRY_RUN" = no ] && [ ! -d "$PGDIR" ]; then
	if [ "${XPF_PKTGEN_NO_MODPROBE:-}" != 1 ] && command -v modprobe >/dev/null 2>&1; then
		modprobe pktgen 2>/dev/null || true
	fi
fi
if [ "$DRY_RUN" = no ] && [ ! -d "$PGDIR" ]; then
	# xpf gen puts its own header (sequence number, send time) in every
	# payload, so its smallest frame is larger than pktgen's.
	gen_min=66
	[ "$IP6" = no ] || gen_min=86
	gen="xpf gen --dev $DEV --dst-mac $DST_MAC"
	[ -z "$SRC" ] || gen+=" --src $SRC"
	gen+=" --dst $DST --sport $UDP_SRC --dport $UDP_DST"
	[ "$SIZE" -lt "$gen_min" ] || gen+=" --size $SIZE"
	rate=0
	[ "$DELAY" -eq 0 ] || rate=$((THREADS * 1000000000 / DELAY))
	gen+=" --rate $rate"
	[ "$COUNT" -eq 0 ] || gen+=" --count $((COUNT * THREADS))"
	notes=("--rate is frames per second (-w $DELAY ns over $THREADS thread(s)); 0 = as fast as it can.")
	[ "$SIZE" -ge "$gen_min" ] ||
		notes+=("--size is left out: xpf gen's smallest frame is $gen_min bytes (its payload header).")
	[ "$COUNT" -ne 0 ] || notes+=("Without --count it stops after 10 s (--duration SECS), or on Ctrl-C.")
	[ -n "$SRC" ] || notes+=("Without --src it sends from $DEV's own address, as pktgen does.")
	cat >&2 <<EOF
$prog: this kernel has no pktgen: $PGDIR does not exist and \`modprobe pktgen\`
did not provide it (the kernel is built without CONFIG_NET_PKTGEN, or its
module is not installed). Nothing was sent.

Use xpf's built-in AF_XDP generator instead, in the same namespace; the same
traffic is:

  $gen

EOF
	printf '%s\n' "${notes[@]}" >&2
	exit 2
fi

if [ "$DRY_RUN" = no ]; then
	[ "$(id -u)" -eq 0 ] || die "pktgen needs root"
	[ -e "/sys/class/net/$DEV" ] ||
		die "no device $DEV in this network namespace (run inside the endpoint's: ip netns exec NS $0 ...)"
fi

if is_veth "$DEV"; then
	if [ "$BURST" -gt 1 ]; then
		warn "$DEV is a veth, which lacks IFF_TX_SKB_SHARING: pktgen cannot burst on it; using -b 1 instead of $BURST"
		BURST=1
	fi
	if [ "$CLONE" -gt 0 ]; then
		warn "$DEV is a veth, which lacks IFF_TX_SKB_SHARING: pktgen cannot clone skbs on it; using -c 0 instead of $CLONE"
		CLONE=0
	fi
fi

# pg_write FILE CMD: one pktgen command; device and thread files must answer
# "Result: OK:".
pg_write() {
	local file=$1 cmd=$2
	if [ "$DRY_RUN" = yes ]; then
		echo "echo '$cmd' > $file"
		return 0
	fi
	if ! printf '%s\n' "$cmd" 2>/dev/null >"$file"; then
		die "pktgen refused '$cmd' ($file): $(grep -m1 '^Result:' "$file" 2>/dev/null || echo 'write failed')"
	fi
	if [[ $file != */pgctrl ]] && ! grep -q '^Result: OK:' "$file"; then
		die "pktgen refused '$cmd' ($file): $(grep -m1 '^Result:' "$file" || true)"
	fi
}

pg_write "$PGDIR/pgctrl" reset
for ((t = FIRST; t <= LAST; t++)); do
	thread="$PGDIR/kpktgend_$t"
	pgdev="$PGDIR/$DEV@$t"
	pg_write "$thread" rem_device_all
	pg_write "$thread" "add_device $DEV@$t"

	pg_write "$pgdev" "flag QUEUE_MAP_CPU"
	pg_write "$pgdev" "count $COUNT"
	pg_write "$pgdev" "clone_skb $CLONE"
	pg_write "$pgdev" "pkt_size $SIZE"
	pg_write "$pgdev" "delay $DELAY"
	pg_write "$pgdev" "burst $BURST"
	pg_write "$pgdev" "dst_mac $DST_MAC"
	if [ "$IP6" = yes ]; then
		if [ "$DST_MIN" = "$DST_MAX" ]; then
			pg_write "$pgdev" "dst6 $DST_MIN"
		else
			pg_write "$pgdev" "dst6_min $DST_MIN"
			pg_write "$pgdev" "dst6_max $DST_MAX"
		fi
		if [ -n "$SRC" ]; then
			[ "$SRC_MIN" = "$SRC_MAX" ] || [ "$t" -ne "$FIRST" ] ||
				warn "pktgen has no IPv6 source range; sending from $SRC_MIN"
			pg_write "$pgdev" "src6 $SRC_MIN"
		fi
	else
		pg_write "$pgdev" "dst_min $DST_MIN"
		pg_write "$pgdev" "dst_max $DST_MAX"
		[ "$DST_MIN" = "$DST_MAX" ] || pg_write "$pgdev" "flag IPDST_RND"
		if [ -n "$SRC" ]; then
			pg_write "$pgdev" "src_min $SRC_MIN"
			pg_write "$pgdev" "src_max $SRC_MAX"
			[ "$SRC_MIN" = "$SRC_MAX" ] || pg_write "$pgdev" "flag IPSRC_RND"
		fi
	fi
	pg_write "$pgdev" "udp_dst_min $UDP_DST_MIN"
	pg_write "$pgdev" "udp_dst_max $UDP_DST_MAX"
	[ "$UDP_DST_MIN" = "$UDP_DST_MAX" ] || pg_write "$pgdev" "flag UDPDST_RND"
	pg_write "$pgdev" "udp_src_min $UDP_SRC_MIN"
	pg_write "$pgdev" "udp_src_max $UDP_SRC_MAX"
	[ "$UDP_SRC_MIN" = "$UDP_SRC_MAX" ] || pg_write "$pgdev" "flag UDPSRC_RND"
done

if [ "$DRY_RUN" = yes ]; then
	echo "echo 'start' > $PGDIR/pgctrl"
	exit 0
fi

print_results() {
	local t dev pps total=0
	for ((t = FIRST; t <= LAST; t++)); do
		dev="$DEV@$t"
		echo "Device: $dev"
		grep -A2 '^Result:' "$PGDIR/$dev" || true
		pps=$(grep -oE '[0-9]+pps' "$PGDIR/$dev" | head -n1 || true)
		pps=${pps%pps}
		total=$((total + ${pps:-0}))
	done
	echo "Total: $total pps over $THREADS thread(s)"
}

stopping=no
on_signal() {
	stopping=yes
	warn "stopping"
	printf 'stop\n' 2>/dev/null >"$PGDIR/pgctrl" || true
}
trap on_signal INT TERM

# "start" blocks until every thread is done. It runs in a background
# subshell, which ignores SIGINT, so that the trap above can write "stop"
# while it waits.
warn "sending on $DEV from pktgen thread(s) $FIRST..$LAST; Ctrl-C stops"
(printf 'start\n' >"$PGDIR/pgctrl") &
start_pid=$!
rc=0
wait "$start_pid" || rc=$?
while [ "$rc" -gt 128 ] && kill -0 "$start_pid" 2>/dev/null; do
	rc=0
	wait "$start_pid" || rc=$?
done
trap - INT TERM
[ "$rc" -eq 0 ] || [ "$stopping" = yes ] || warn "starting pktgen failed (status $rc)"

print_results
