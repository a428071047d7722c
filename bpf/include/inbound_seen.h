/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Rate limit for connectionless inbound reports: a flow (addresses, ports,
 * protocol) is reported at most once per `report_interval_ns`, so steady
 * UDP or ping traffic does not flood inbound_flows. LRU so an endless
 * stream of new flows evicts the oldest instead of failing inserts.
 */
#ifndef XPF_INBOUND_SEEN_H
#define XPF_INBOUND_SEEN_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "xpf_abi.h"

#define XPF_INBOUND_SEEN_MAX 65536

/* Set by userspace in rodata before load; one second unless told. */
const volatile __u64 report_interval_ns = 1000000000ULL;

/* The event's flow fields; no ifindex: one flow, one report. */
struct xpf_inbound_seen_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 family;
	__u8 proto;
	__u8 pad[2];
};

/* key: the flow; value: bpf_ktime_get_ns() of its last report. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XPF_INBOUND_SEEN_MAX);
	__type(key, struct xpf_inbound_seen_key);
	__type(value, __u64);
} inbound_seen SEC(".maps");

static __always_inline void inbound_seen_key_of(const struct xpf_flow_event *ev,
						struct xpf_inbound_seen_key *key)
{
	__builtin_memcpy(key->saddr, ev->saddr, sizeof(key->saddr));
	__builtin_memcpy(key->daddr, ev->daddr, sizeof(key->daddr));
	key->sport = ev->sport;
	key->dport = ev->dport;
	key->family = ev->family;
	key->proto = ev->proto;
}

/* Whether the flow was reported less than an interval before `now`. */
static __always_inline int inbound_seen_recently(const struct xpf_inbound_seen_key *key, __u64 now)
{
	__u64 *last = bpf_map_lookup_elem(&inbound_seen, key);

	return last && now - *last < report_interval_ns;
}

/* Call only once the report is on the ring: a lost report is retried. */
static __always_inline void inbound_mark_seen(const struct xpf_inbound_seen_key *key, __u64 now)
{
	bpf_map_update_elem(&inbound_seen, key, &now, BPF_ANY);
}

#endif /* XPF_INBOUND_SEEN_H */
