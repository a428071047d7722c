/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Where a frame's AF_XDP socket sits in the XSKMAP. One XDP program serves
 * every endpoint's host-side veth, so each interface owns a contiguous run
 * of slots: `if_slots` maps its ifindex to the first one, and the receive
 * queue index picks the slot inside the run. Userspace hands out the bases
 * (Programs::set_interface_slots) and fills `xsks` (Programs::register_xsk).
 */
#ifndef XPF_XSK_SLOTS_H
#define XPF_XSK_SLOTS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "xpf_abi.h"

/* key: ifindex of a host-side veth; value: its first slot in `xsks`. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XPF_MAX_INTERFACES);
	__type(key, __u32);
	__type(value, __u32);
} if_slots SEC(".maps");

/* key: slot (base + rx queue); value: AF_XDP socket fd (set from userspace). */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, XPF_MAX_XSK_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/*
 * The XSKMAP slot for a frame received on `ifindex`, queue `queue`, or -1
 * when the interface has no slots or the queue falls outside the map. The
 * two comparisons also keep `base + queue` from wrapping.
 */
static __always_inline int xsk_slot_for(__u32 ifindex, __u32 queue, __u32 *slot)
{
	__u32 *base = bpf_map_lookup_elem(&if_slots, &ifindex);

	if (!base)
		return -1;
	if (*base >= XPF_MAX_XSK_SLOTS || queue >= XPF_MAX_XSK_SLOTS - *base)
		return -1;
	*slot = *base + queue;
	return 0;
}

#endif /* XPF_XSK_SLOTS_H */
