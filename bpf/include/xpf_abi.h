/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The one ABI shared by xpf's BPF programs and its Rust userspace.
 * Rust reads these layouts through the skeleton's generated types; never
 * mirror them by hand. Enum values are stable: append, never reorder.
 */
#ifndef XPF_ABI_H
#define XPF_ABI_H

/* Per-CPU counters kept by the XDP redirect program, indexed by this enum. */
enum xpf_xdp_counter {
	XPF_XDP_REDIRECTED = 0, /* frame handed to the AF_XDP socket of its queue */
	XPF_XDP_NO_SOCKET = 1,  /* no socket registered for the queue: dropped (fail-closed) */
	XPF_XDP_PASSED_NEIGH = 2, /* ARP / IPv6 neighbour discovery passed to the kernel */
	XPF_XDP_FAIL_OPEN = 3,  /* no socket, passed because fail_open is configured */
	XPF_XDP_COUNTER_MAX,
};

#endif /* XPF_ABI_H */
