/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Reads the flow a packet belongs to into a struct xpf_flow_event:
 * Ethernet, then IPv4 (options skipped via IHL) or the fixed IPv6 header,
 * then the ports of TCP/UDP/SCTP or the identifier of an ICMP echo request.
 *
 * Headers are copied with bpf_skb_load_bytes rather than read in place:
 * a forwarded GRO packet may carry its transport header in a page fragment,
 * and an observer that never drops must not pull or unclone the skb to reach
 * it. Each copy's return value is the bounds check; a packet too short for a
 * header is not reported.
 */
#ifndef XPF_FLOW_PARSE_H
#define XPF_FLOW_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xpf_abi.h"

/* What the caller should do with the event xpf_parse_flow filled. */
enum xpf_parse_result {
	XPF_PARSE_SKIP = 0,         /* nothing to report */
	XPF_PARSE_ALWAYS = 1,       /* a new TCP connection: report every time */
	XPF_PARSE_RATE_LIMITED = 2, /* connectionless: report once per interval */
};

#define XPF_IP_OFFSET 0x1fff  /* fragment offset bits of iphdr.frag_off */
#define XPF_TCP_FLAGS_AT 13   /* byte offset of the flags in the TCP header */
#define XPF_TCP_SYN 0x02
#define XPF_TCP_ACK 0x10
#define XPF_ICMP_ECHO_REQUEST 8
#define XPF_ICMPV6_ECHO_REQUEST 128

/* The first four bytes of TCP, UDP and SCTP alike. */
struct xpf_l4_ports {
	__be16 source;
	__be16 dest;
};

/* ICMP and ICMPv6 echo share this layout. */
struct xpf_icmp_echo {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be16 id;
	__be16 sequence;
};

static __always_inline int xpf_parse_l4(struct __sk_buff *skb, __u32 off, struct xpf_flow_event *ev)
{
	struct xpf_l4_ports ports;
	struct xpf_icmp_echo echo;
	__u8 flags;

	switch (ev->proto) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(skb, off, &ports, sizeof(ports)) < 0 ||
		    bpf_skb_load_bytes(skb, off + XPF_TCP_FLAGS_AT, &flags, sizeof(flags)) < 0)
			return XPF_PARSE_SKIP;
		/* Only the opening SYN: everything else belongs to a flow
		 * conntrack already knows (or never will). */
		if ((flags & (XPF_TCP_SYN | XPF_TCP_ACK)) != XPF_TCP_SYN)
			return XPF_PARSE_SKIP;
		ev->sport = bpf_ntohs(ports.source);
		ev->dport = bpf_ntohs(ports.dest);
		ev->tcp_flags = flags;
		return XPF_PARSE_ALWAYS;
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(skb, off, &ports, sizeof(ports)) < 0)
			return XPF_PARSE_SKIP;
		ev->sport = bpf_ntohs(ports.source);
		ev->dport = bpf_ntohs(ports.dest);
		return XPF_PARSE_RATE_LIMITED;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if (bpf_skb_load_bytes(skb, off, &echo, sizeof(echo)) < 0)
			return XPF_PARSE_SKIP;
		/* Replies and errors never open a flow. */
		if (echo.type != (ev->proto == IPPROTO_ICMP ? XPF_ICMP_ECHO_REQUEST
							    : XPF_ICMPV6_ECHO_REQUEST))
			return XPF_PARSE_SKIP;
		ev->sport = bpf_ntohs(echo.id);
		ev->dport = ev->sport;
		return XPF_PARSE_RATE_LIMITED;
	default:
		/* Unknown transport (or an IPv6 extension header): addresses
		 * and protocol only. */
		return XPF_PARSE_RATE_LIMITED;
	}
}

/*
 * Fills `ev` (zeroed by the caller) from the packet; ifindex is the caller's.
 * Returns an enum xpf_parse_result.
 */
static __always_inline int xpf_parse_flow(struct __sk_buff *skb, struct xpf_flow_event *ev)
{
	struct ethhdr eth;
	struct iphdr ip4;
	struct ipv6hdr ip6;
	__u32 off = sizeof(eth);

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return XPF_PARSE_SKIP;

	if (eth.h_proto == bpf_htons(ETH_P_IP)) {
		if (bpf_skb_load_bytes(skb, off, &ip4, sizeof(ip4)) < 0)
			return XPF_PARSE_SKIP;
		if (ip4.ihl < 5)
			return XPF_PARSE_SKIP;
		/* Later fragments carry no transport header; the first one
		 * (offset 0) was reported for the whole datagram. */
		if (ip4.frag_off & bpf_htons(XPF_IP_OFFSET))
			return XPF_PARSE_SKIP;
		ev->family = 4;
		ev->proto = ip4.protocol;
		__builtin_memcpy(ev->saddr, &ip4.saddr, sizeof(ip4.saddr));
		__builtin_memcpy(ev->daddr, &ip4.daddr, sizeof(ip4.daddr));
		return xpf_parse_l4(skb, off + ip4.ihl * 4, ev);
	}
	if (eth.h_proto == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return XPF_PARSE_SKIP;
		ev->family = 6;
		ev->proto = ip6.nexthdr;
		__builtin_memcpy(ev->saddr, &ip6.saddr, sizeof(ip6.saddr));
		__builtin_memcpy(ev->daddr, &ip6.daddr, sizeof(ip6.daddr));
		return xpf_parse_l4(skb, off + sizeof(ip6), ev);
	}
	return XPF_PARSE_SKIP;
}

#endif /* XPF_FLOW_PARSE_H */
