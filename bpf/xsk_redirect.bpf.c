// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * XDP entry on an endpoint's host-side veth: every frame the endpoint sends
 * goes to the AF_XDP socket of its receive queue, except neighbour discovery,
 * which the kernel answers. Without a socket the frame is dropped and counted
 * (fail-closed) unless userspace set fail_open before load.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xpf_abi.h"

#define XPF_MAX_QUEUES 64

/* Set by userspace in rodata before load. */
const volatile __u8 fail_open = 0;

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, XPF_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XPF_XDP_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} xdp_counters SEC(".maps");

/* Keeps the enum in the skeleton's BTF so Rust can name its values. */
enum xpf_xdp_counter xpf_abi_xdp_counter_unused;

static __always_inline void count(enum xpf_xdp_counter c)
{
	__u32 key = c;
	__u64 *v = bpf_map_lookup_elem(&xdp_counters, &key);

	if (v)
		*v += 1;
}

/* ARP and IPv6 neighbour discovery (ICMPv6 133..137 right after the fixed
 * header, as RFC 4861 requires) go to the kernel so the host answers them. */
static __always_inline int is_neighbour_discovery(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6;
	__u8 *icmp6_type;

	if ((void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return 1;
	if (eth->h_proto != bpf_htons(ETH_P_IPV6))
		return 0;
	ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_ICMPV6)
		return 0;
	icmp6_type = (void *)(ip6 + 1);
	if ((void *)(icmp6_type + 1) > data_end)
		return 0;
	return *icmp6_type >= 133 && *icmp6_type <= 137;
}

SEC("xdp")
int xpf_xsk_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int action;

	if (is_neighbour_discovery(data, data_end)) {
		count(XPF_XDP_PASSED_NEIGH);
		return XDP_PASS;
	}
	action = bpf_redirect_map(&xsks, ctx->rx_queue_index, fail_open ? XDP_PASS : XDP_DROP);
	if (action == XDP_REDIRECT)
		count(XPF_XDP_REDIRECTED);
	else if (fail_open)
		count(XPF_XDP_FAIL_OPEN);
	else
		count(XPF_XDP_NO_SOCKET);
	return action;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
