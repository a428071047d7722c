/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The one ABI shared by xpf's BPF programs and its Rust userspace.
 * Rust reads these layouts through the skeleton's generated types; never
 * mirror them by hand. Enum values are stable: append, never reorder.
 */
#ifndef XPF_ABI_H
#define XPF_ABI_H

/* AF_XDP socket slots in the XSKMAP: interface ifindex -> first slot, plus
 * the receive queue index. Userspace hands out the bases. */
#define XPF_MAX_XSK_SLOTS 1024
#define XPF_MAX_INTERFACES 256
/* Flows the hybrid datapath's verdict cache holds (LRU beyond that). */
#define XPF_FLOW_CACHE_MAX 131072

/* Per-CPU counters kept by the XDP redirect program, indexed by this enum. */
enum xpf_xdp_counter {
	XPF_XDP_REDIRECTED = 0, /* frame handed to the AF_XDP socket of its queue */
	XPF_XDP_NO_SOCKET = 1,  /* no socket registered for the queue: dropped (fail-closed) */
	XPF_XDP_PASSED_NEIGH = 2, /* ARP / IPv6 ND / MLD passed to the kernel */
	XPF_XDP_FAIL_OPEN = 3,  /* no socket, passed because fail_open is configured */
	XPF_XDP_CACHE_REDIRECTED = 4, /* served from the verdict cache: to a local endpoint */
	XPF_XDP_CACHE_PASSED = 5,     /* served from the verdict cache: into the host stack */
	XPF_XDP_CACHE_MISS = 6,       /* cacheable frame, no entry: to the socket */
	XPF_XDP_CACHE_STALE = 7,      /* entry of an older generation: to the socket */
	XPF_XDP_CACHE_BYPASS = 8,     /* not cacheable (SYN/FIN/RST, fragment, ...): to the socket */
	XPF_XDP_CACHE_NO_PORT = 9,    /* redirect target not in cache_ports: to the socket */
	XPF_XDP_COUNTER_MAX,
};

/*
 * Why a worker dropped a frame an endpoint sent. Counted per endpoint and
 * per reason by the workers; named by `xpf run`'s final counters.
 */
enum xpf_drop_reason {
	XPF_DROP_POLICY_DENIED = 0,  /* an egress deny rule matched */
	XPF_DROP_POLICY_DEFAULT = 1, /* egress is default-deny and no rule allows */
	XPF_DROP_SPOOFED_SOURCE = 2, /* source address is not one of the sender's */
	XPF_DROP_VLAN_TAGGED = 3,    /* 802.1Q/802.1ad tag on an endpoint frame */
	XPF_DROP_NOT_IP = 4,         /* EtherType neither IPv4 nor IPv6 (nor ARP) */
	XPF_DROP_MALFORMED = 5,      /* headers the parser cannot fully read */
	XPF_DROP_FRAG_NO_FIRST = 6,  /* later fragment with no first fragment seen */
	XPF_DROP_FRAG_DENIED = 7,    /* later fragment of a denied datagram */
	XPF_DROP_TX_FULL = 8,        /* no room on the transmit ring */
	XPF_DROP_HANDOFF_FULL = 9,   /* the owning worker's queue was full */
	XPF_DROP_FRAG_CONFLICT = 10, /* fragments of one datagram disagree or overlap */
	XPF_DROP_FRAG_TABLE_FULL = 11, /* sender's share of the fragment table is full */
	XPF_DROP_CT_FULL = 12,       /* sender's conntrack share holds only assured flows */
	XPF_DROP_REASON_MAX,
};

/*
 * A flow towards an endpoint seen by the TC egress program on its host-side
 * veth, reported on the `inbound_flows` ring buffer so conntrack knows the
 * endpoint's answers are replies. Addresses in network order (IPv4 in the
 * first 4 bytes, rest zero); ports in host order. For ICMP echo both ports
 * carry the echo identifier; other ICMP has zero ports.
 */
struct xpf_flow_event {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 ifindex;
	__u16 sport;
	__u16 dport;
	__u8 family; /* 4 or 6 */
	__u8 proto;
	__u8 tcp_flags;
	__u8 pad;
};

/* Per-CPU counters kept by the inbound TC program, indexed by this enum. */
enum xpf_tc_counter {
	XPF_TC_REPORTED = 0,           /* flow event submitted on inbound_flows */
	XPF_TC_RING_FULL = 1,          /* inbound_flows had no room: event lost */
	XPF_TC_SKIPPED_DUPLICATE = 2,  /* flow already reported within the interval */
	XPF_TC_COUNTER_MAX,
};

/*
 * The verdict cache (flow_cache.h). A flow as the XDP program on its
 * sender's host-side veth sees it: addresses in network order (IPv4 in the
 * first 4 bytes, rest zero), ports in host order; for ICMP / ICMPv6 echo,
 * sport is the identifier and dport the type.
 */
struct xpf_flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 ifindex; /* the sender's host-side veth */
	__u16 sport;
	__u16 dport;
	__u8 family; /* 4 or 6 */
	__u8 proto;
	__u8 pad[2];
};

/* What a cache hit does. */
enum xpf_cache_action {
	XPF_CACHE_REDIRECT = 1, /* rewrite the MACs, redirect to out_ifindex (a local endpoint) */
	XPF_CACHE_PASS = 2,     /* into the host stack, which delivers or routes it */
};

struct xpf_flow_verdict {
	__u64 generation;   /* cache_generation when the worker decided the flow */
	__u64 last_seen_ns; /* bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC_COARSE) of the last frame served, ~1 s steps */
	__u32 out_ifindex;  /* XPF_CACHE_REDIRECT: the destination's host-side veth */
	__u16 endpoint;     /* the sender's endpoint index (cache_served) */
	__u8 action;        /* enum xpf_cache_action */
	__u8 pad;
	__u8 dst_mac[6];    /* XPF_CACHE_REDIRECT: written into the frame */
	__u8 src_mac[6];
	__u8 pad2[4];
};

/* Per endpoint, summed over CPUs by userspace. */
struct xpf_cache_served {
	__u64 packets;
	__u64 bytes;
};

/*
 * The sizes above as an enum, so they reach Rust through BTF (a #define does
 * not): userspace validates slots and interfaces against the same numbers.
 */
enum xpf_abi_limit {
	XPF_LIMIT_XSK_SLOTS = XPF_MAX_XSK_SLOTS,
	XPF_LIMIT_INTERFACES = XPF_MAX_INTERFACES,
	XPF_LIMIT_FLOW_CACHE = XPF_FLOW_CACHE_MAX,
};

#endif /* XPF_ABI_H */
