// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * TC (tcx) egress on an endpoint's host-side veth, i.e. traffic on its way
 * *towards* the endpoint from the host stack. The egress filter only sees
 * what endpoints send; without this program userspace conntrack would take
 * an endpoint's answer to a connection opened towards it for a new egress
 * flow and judge it by egress policy. So every flow opened towards an
 * endpoint is reported on `inbound_flows`, and conntrack creates its entry
 * before the answer arrives (as Cilium creates the CT entry on the
 * to-container path).
 *
 * Observer only: every packet continues (TCX_NEXT), reported or not.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "xpf_abi.h"
#include "flow_parse.h"
#include "inbound_seen.h"

/* TCX_NEXT from linux/bpf.h (6.6+); the build's UAPI headers may predate it. */
#define XPF_TCX_NEXT -1

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} inbound_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XPF_TC_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} tc_counters SEC(".maps");

/* Keep the ABI types in the skeleton's BTF so Rust can use them. */
enum xpf_tc_counter xpf_abi_tc_counter_unused;
struct xpf_flow_event xpf_abi_flow_event_unused;

static __always_inline void count(enum xpf_tc_counter c)
{
	__u32 key = c;
	__u64 *v = bpf_map_lookup_elem(&tc_counters, &key);

	if (v)
		*v += 1;
}

SEC("tcx/egress")
int xpf_inbound(struct __sk_buff *skb)
{
	struct xpf_flow_event ev = {};
	struct xpf_inbound_seen_key key = {};
	struct xpf_flow_event *out;
	__u64 now = 0;
	int kind;

	kind = xpf_parse_flow(skb, &ev);
	if (kind == XPF_PARSE_SKIP)
		return XPF_TCX_NEXT;
	ev.ifindex = skb->ifindex;

	if (kind == XPF_PARSE_RATE_LIMITED) {
		inbound_seen_key_of(&ev, &key);
		now = bpf_ktime_get_ns();
		if (inbound_seen_recently(&key, now)) {
			count(XPF_TC_SKIPPED_DUPLICATE);
			return XPF_TCX_NEXT;
		}
	}

	out = bpf_ringbuf_reserve(&inbound_flows, sizeof(*out), 0);
	if (!out) {
		count(XPF_TC_RING_FULL);
		return XPF_TCX_NEXT;
	}
	*out = ev;
	/* Workers poll the ring at the start of every batch; nobody sleeps on
	 * it, so skip the wake-up. */
	bpf_ringbuf_submit(out, BPF_RB_NO_WAKEUP);
	count(XPF_TC_REPORTED);

	if (kind == XPF_PARSE_RATE_LIMITED)
		inbound_mark_seen(&key, now);
	return XPF_TCX_NEXT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
