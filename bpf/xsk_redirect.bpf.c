// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * XDP entry on every endpoint's host-side veth (one program, attached to
 * each): every frame the endpoint sends goes to the AF_XDP socket of its
 * interface and receive queue (see xsk_slots.h), except ARP, and the
 * neighbour discovery and MLD that cannot leave the link, which the
 * kernel answers. Without a socket -- interface unknown, queue out
 * of range or slot empty -- the frame is dropped and counted (fail-closed)
 * unless userspace set fail_open before load.
 *
 * In the hybrid datapath (cache_enabled), a frame of a flow the workers
 * have already decided is served from the verdict cache first
 * (flow_cache.h): redirected to a local endpoint's veth or passed into the
 * host stack without leaving the kernel. Misses, stale entries and frames
 * the cache never serves go to the socket as above.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xpf_abi.h"
#include "xsk_slots.h"
#include "flow_cache.h"

/* Set by userspace in rodata before load. */
const volatile __u8 fail_open = 0;
const volatile __u8 cache_enabled = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XPF_XDP_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} xdp_counters SEC(".maps");

/* Keep the ABI enums in the skeleton's BTF so Rust can name their values. */
enum xpf_xdp_counter xpf_abi_xdp_counter_unused;
enum xpf_abi_limit xpf_abi_limit_unused;
/* Counted by the workers, declared here so both sides share one table. */
enum xpf_drop_reason xpf_abi_drop_reason_unused;
enum xpf_cache_action xpf_abi_cache_action_unused;
struct xpf_flow_key xpf_abi_flow_key_unused;
struct xpf_flow_verdict xpf_abi_flow_verdict_unused;
struct xpf_cache_served xpf_abi_cache_served_unused;

static __always_inline void count(enum xpf_xdp_counter c)
{
	__u32 key = c;
	__u64 *v = bpf_map_lookup_elem(&xdp_counters, &key);

	if (v)
		*v += 1;
}

#define XPF_ND_HOP_LIMIT 255  /* RFC 4861: ND is never forwarded */
#define XPF_MLD_HOP_LIMIT 1   /* RFC 3810: MLD stays on the link */

/* Neighbour discovery: router/neighbour solicitation and advertisement,
 * redirect (RFC 4861). */
static __always_inline int is_nd(__u8 type)
{
	return type >= 133 && type <= 137;
}

/* MLD query/report/done and MLDv2 report (RFC 2710, 3810). */
static __always_inline int is_mld(__u8 type)
{
	return (type >= 130 && type <= 132) || type == 143;
}

static __always_inline int is_link_local(const struct in6_addr *a)
{
	return a->s6_addr[0] == 0xfe && (a->s6_addr[1] & 0xc0) == 0x80;
}

static __always_inline int is_unspecified(const struct in6_addr *a)
{
	return (a->s6_addr32[0] | a->s6_addr32[1] | a->s6_addr32[2] | a->s6_addr32[3]) == 0;
}

/* ff02::/16: link-scope multicast (all-nodes, all-routers, solicited-node,
 * MLDv2 routers); never routed off the link. */
static __always_inline int is_link_multicast(const struct in6_addr *a)
{
	return a->s6_addr[0] == 0xff && (a->s6_addr[1] & 0x0f) == 0x02;
}

/*
 * ARP, and IPv6 neighbour discovery and MLD between the endpoint and its
 * gateway, go to the kernel: the link's own housekeeping with the host. A
 * frame counts as such only when the kernel cannot forward it anywhere:
 * ND with hop limit 255 to a link-local or link-scope multicast address,
 * MLD with hop limit 1 from a link-local (or, for reports before an address
 * exists, the unspecified) source to link-scope multicast. Everything else
 * of those types goes to the worker and is judged like any other ICMPv6.
 * ND must follow the fixed header (RFC 4861); MLD sits behind a Hop-by-Hop
 * header with Router Alert (RFC 2710, 3810), whose length is read to find
 * it.
 */
static __always_inline int is_link_housekeeping(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6;
	__u8 *l4;

	if ((void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return 1;
	if (eth->h_proto != bpf_htons(ETH_P_IPV6))
		return 0;
	ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end)
		return 0;
	l4 = (void *)(ip6 + 1);
	if (ip6->nexthdr == IPPROTO_HOPOPTS) {
		/* Hop-by-Hop: next header, then length in 8-octet units
		 * beyond the first 8. */
		if ((void *)(l4 + 2) > data_end || l4[0] != IPPROTO_ICMPV6)
			return 0;
		l4 += 8 + l4[1] * 8;
	} else if (ip6->nexthdr != IPPROTO_ICMPV6) {
		return 0;
	}
	if ((void *)(l4 + 1) > data_end)
		return 0;
	if (is_nd(*l4))
		return ip6->nexthdr == IPPROTO_ICMPV6 && ip6->hop_limit == XPF_ND_HOP_LIMIT &&
		       (is_link_local(&ip6->daddr) || is_link_multicast(&ip6->daddr));
	if (is_mld(*l4))
		return ip6->hop_limit == XPF_MLD_HOP_LIMIT && is_link_multicast(&ip6->daddr) &&
		       (is_link_local(&ip6->saddr) || is_unspecified(&ip6->saddr));
	return 0;
}

static __always_inline int no_socket(void)
{
	if (fail_open) {
		count(XPF_XDP_FAIL_OPEN);
		return XDP_PASS;
	}
	count(XPF_XDP_NO_SOCKET);
	return XDP_DROP;
}

/*
 * Serves the frame from the verdict cache: XDP_REDIRECT or XDP_PASS on a
 * hit, -1 when the frame must go to the socket.
 */
static __always_inline int serve_cached(struct xdp_md *ctx, void *data, void *data_end)
{
	struct xpf_flow_key key = {};
	struct xpf_flow_verdict *v;
	struct ethhdr *eth = data;
	__u64 generation, now;

	if (xpf_cache_key_of(data, data_end, ctx->ingress_ifindex, &key) < 0) {
		count(XPF_XDP_CACHE_BYPASS);
		return -1;
	}
	v = bpf_map_lookup_elem(&flow_cache, &key);
	if (!v) {
		count(XPF_XDP_CACHE_MISS);
		return -1;
	}
	generation = xpf_cache_generation();
	if (generation == 0 || v->generation != generation) {
		count(XPF_XDP_CACHE_STALE);
		return -1;
	}
	if (v->action == XPF_CACHE_PASS) {
		count(XPF_XDP_CACHE_PASSED);
	} else if (v->action == XPF_CACHE_REDIRECT) {
		if ((void *)(eth + 1) > data_end)
			return -1;
		/* A port that is gone leaves the frame to the worker. */
		if (bpf_redirect_map(&cache_ports, v->out_ifindex, XDP_ABORTED) != XDP_REDIRECT) {
			count(XPF_XDP_CACHE_NO_PORT);
			return -1;
		}
		__builtin_memcpy(eth->h_dest, v->dst_mac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, v->src_mac, ETH_ALEN);
		count(XPF_XDP_CACHE_REDIRECTED);
	} else {
		return -1;
	}
	/* The coarse clock: CLOCK_MONOTONIC at tick resolution, without a
	 * clock read per frame (a conntrack timer counts seconds). */
	now = bpf_ktime_get_coarse_ns();
	if (now - v->last_seen_ns >= XPF_LAST_SEEN_STEP_NS)
		v->last_seen_ns = now;
	xpf_cache_count(v, data_end - data);
	return v->action == XPF_CACHE_PASS ? XDP_PASS : XDP_REDIRECT;
}

SEC("xdp")
int xpf_xsk_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 slot;

	if (is_link_housekeeping(data, data_end)) {
		count(XPF_XDP_PASSED_NEIGH);
		return XDP_PASS;
	}
	if (cache_enabled) {
		int served = serve_cached(ctx, data, data_end);

		if (served >= 0)
			return served;
	}
	if (xsk_slot_for(ctx->ingress_ifindex, ctx->rx_queue_index, &slot) < 0)
		return no_socket();
	/* An empty slot makes the helper return the flags' action (0, i.e.
	 * XDP_ABORTED); it is never returned as such but counted below. */
	if (bpf_redirect_map(&xsks, slot, XDP_ABORTED) != XDP_REDIRECT)
		return no_socket();
	count(XPF_XDP_REDIRECTED);
	return XDP_REDIRECT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
