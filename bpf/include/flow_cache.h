/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The verdict cache of the hybrid datapath: flows the workers have decided
 * and allow, served in the kernel without a trip through AF_XDP.
 *
 * Userspace owns every entry. A worker writes one after it passed a frame
 * of an established flow whose frames this header can read exactly as the
 * worker's parser does; conntrack stays the truth and deletes the entry when
 * the flow closes or expires. This side only reads entries and stamps the
 * time a flow was last served, so conntrack's idle timers stay right.
 *
 * Coherence: every entry carries the generation it was decided under, and
 * userspace moves `cache_generation` on after every change of policy,
 * ipcache, identities or endpoints. An entry of another generation is never
 * used: the frame goes to the worker, which decides it afresh.
 *
 * What is served (xpf_cache_key_of): untagged Ethernet; IPv4 without
 * options or IPv6 with no extension header; not a fragment; lengths that
 * stay inside the frame; TCP without SYN, FIN or RST, UDP, or ICMP / ICMPv6
 * echo. Everything else (SYN/FIN/RST, fragments, ICMP errors, options,
 * extension headers, anything malformed) always goes to the worker.
 */
#ifndef XPF_FLOW_CACHE_H
#define XPF_FLOW_CACHE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xpf_abi.h"

/* key: a flow as its sender's veth sees it; value: what to do with it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XPF_FLOW_CACHE_MAX);
	__type(key, struct xpf_flow_key);
	__type(value, struct xpf_flow_verdict);
} flow_cache SEC(".maps");

/* [0]: the generation entries must carry to be used. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} cache_generation SEC(".maps");

/* The endpoints' host-side veths a cached frame may be redirected to. Not
 * pinned: libbpf 1.5 cannot reuse a pinned devmap (the kernel adds
 * BPF_F_RDONLY_PROG to its flags, which libbpf then finds mismatched), so
 * each process fills its own before attaching. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, XPF_MAX_INTERFACES);
	__type(key, __u32);
	__type(value, __u32);
} cache_ports SEC(".maps");

/* Per sending endpoint (xpf_flow_verdict.endpoint): frames and bytes served. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XPF_MAX_INTERFACES);
	__type(key, __u32);
	__type(value, struct xpf_cache_served);
} cache_served SEC(".maps");

#define XPF_IPV4_MF 0x2000
#define XPF_IPV4_OFFSET 0x1fff
#define XPF_TCP_NO_CACHE (0x01 | 0x02 | 0x04) /* FIN, SYN, RST */
#define XPF_LAST_SEEN_STEP_NS 1000000000ULL   /* rewrite last_seen at most once a second */

/*
 * Reads the upper-layer header at `l4` (`len` bytes of IP payload, already
 * checked to lie inside the frame) into the key's ports; 0 when the frame
 * may be served from the cache, -1 when it must go to the worker.
 */
static __always_inline int xpf_cache_l4(__u8 *l4, __u32 len, void *data_end, __u8 proto,
					__u8 family, struct xpf_flow_key *k)
{
	if (proto == IPPROTO_TCP) {
		/* Ports, then the data offset and flags at bytes 12-13. */
		if (len < 20 || (void *)(l4 + 20) > data_end)
			return -1;
		if ((l4[12] >> 4) < 5 || (__u32)(l4[12] >> 4) * 4 > len)
			return -1;
		if (l4[13] & XPF_TCP_NO_CACHE)
			return -1;
	} else if (proto == IPPROTO_UDP) {
		if (len < 8 || (void *)(l4 + 8) > data_end)
			return -1;
	} else if ((proto == IPPROTO_ICMP && family == 4) ||
		   (proto == IPPROTO_ICMPV6 && family == 6)) {
		if (len < 8 || (void *)(l4 + 8) > data_end)
			return -1;
		/* Echo only, keyed by identifier and type: the policy matches
		 * the type, so a request entry never serves a reply. */
		if (family == 4 ? (l4[0] != 8 && l4[0] != 0) : (l4[0] != 128 && l4[0] != 129))
			return -1;
		k->sport = ((__u16)l4[4] << 8) | l4[5];
		k->dport = l4[0];
		return 0;
	} else {
		return -1;
	}
	k->sport = ((__u16)l4[0] << 8) | l4[1];
	k->dport = ((__u16)l4[2] << 8) | l4[3];
	return 0;
}

/*
 * The cache key of a frame received on `ifindex`, with the checks the
 * worker's parser makes on the same bytes (src/wire): 0 when the frame may
 * be served from the cache, -1 when it goes to the worker.
 */
static __always_inline int xpf_cache_key_of(void *data, void *data_end, __u32 ifindex,
					    struct xpf_flow_key *k)
{
	struct ethhdr *eth = data;
	__u8 *l3 = (void *)(eth + 1);

	if ((void *)l3 > data_end)
		return -1;
	k->ifindex = ifindex;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)l3;
		__u32 total;

		if ((void *)(ip + 1) > data_end)
			return -1;
		/* No options: the worker's parser skips them, the cache does not
		 * have to. */
		if (ip->version != 4 || ip->ihl != 5)
			return -1;
		if (ip->frag_off & bpf_htons(XPF_IPV4_MF | XPF_IPV4_OFFSET))
			return -1;
		total = bpf_ntohs(ip->tot_len);
		if (total < sizeof(*ip) || (void *)(l3 + total) > data_end)
			return -1;
		k->family = 4;
		k->proto = ip->protocol;
		__builtin_memcpy(k->saddr, &ip->saddr, 4);
		__builtin_memcpy(k->daddr, &ip->daddr, 4);
		return xpf_cache_l4(l3 + sizeof(*ip), total - sizeof(*ip), data_end, ip->protocol, 4,
				    k);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)l3;
		__u32 payload;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		if (ip6->version != 6)
			return -1;
		payload = bpf_ntohs(ip6->payload_len);
		if ((void *)(ip6 + 1) + payload > data_end)
			return -1;
		k->family = 6;
		k->proto = ip6->nexthdr;
		__builtin_memcpy(k->saddr, &ip6->saddr, 16);
		__builtin_memcpy(k->daddr, &ip6->daddr, 16);
		/* Any extension header (a fragment header included) sends the
		 * frame to the worker: only the upper-layer protocols are
		 * accepted in xpf_cache_l4. */
		return xpf_cache_l4((void *)(ip6 + 1), payload, data_end, ip6->nexthdr, 6, k);
	}
	return -1;
}

/* The generation cached entries must carry, or 0 when it cannot be read
 * (never a valid generation: nothing is served then). */
static __always_inline __u64 xpf_cache_generation(void)
{
	__u32 zero = 0;
	__u64 *g = bpf_map_lookup_elem(&cache_generation, &zero);

	return g ? *g : 0;
}

static __always_inline void xpf_cache_count(const struct xpf_flow_verdict *v, __u64 bytes)
{
	__u32 ep = v->endpoint;
	struct xpf_cache_served *s = bpf_map_lookup_elem(&cache_served, &ep);

	if (s) {
		s->packets += 1;
		s->bytes += bytes;
	}
}

#endif /* XPF_FLOW_CACHE_H */
