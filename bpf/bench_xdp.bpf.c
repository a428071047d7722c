// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Benchmark baselines for the hybrid datapath (`xpf bench datapath`): the
 * in-kernel ceilings it is compared with, on the endpoint's host-side veth.
 *
 *  xpf_bench_redirect  run kind "xdp-redirect": what xpf's worker does to
 *                      a frame for another local endpoint (Ethernet
 *                      destination = that endpoint's eth0, source = its
 *                      host-side veth), then bpf_redirect_map into its
 *                      host-side veth (tx_port[0]). No parsing, no policy:
 *                      the ceiling of an XDP fast path endpoint to endpoint.
 *  xpf_bench_pass      run kind "xdp-pass": count and XDP_PASS into the host
 *                      stack, which routes the frame on: the ceiling of an
 *                      XDP fast path towards the outside.
 *
 * Both count what they see (bench_counters, per CPU).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

/* Set by userspace in rodata before load (xpf_bench_redirect only). */
const volatile __u8 dst_mac[ETH_ALEN] = {};
const volatile __u8 src_mac[ETH_ALEN] = {};

/* The counters, by index. */
enum bench_counter {
	BENCH_REDIRECTED = 0, /* handed to bpf_redirect_map */
	BENCH_PASSED = 1, /* XDP_PASS */
	BENCH_SHORT = 2, /* shorter than an Ethernet header: dropped */
	BENCH_COUNTER_MAX = 3,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BENCH_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} bench_counters SEC(".maps");

/* Where xpf_bench_redirect sends: key 0, the target's ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} tx_port SEC(".maps");

/* Keep the enum in the skeleton's BTF so Rust can name its values. */
enum bench_counter bench_counter_unused;

static __always_inline void count(enum bench_counter c)
{
	__u32 key = c;
	__u64 *v = bpf_map_lookup_elem(&bench_counters, &key);

	if (v)
		*v += 1;
}

SEC("xdp")
int xpf_bench_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *eth = data;
	int i;

	if (data + ETH_HLEN > data_end) {
		count(BENCH_SHORT);
		return XDP_DROP;
	}
#pragma unroll
	for (i = 0; i < ETH_ALEN; i++) {
		eth[i] = dst_mac[i];
		eth[ETH_ALEN + i] = src_mac[i];
	}
	count(BENCH_REDIRECTED);
	return bpf_redirect_map(&tx_port, 0, XDP_DROP);
}

SEC("xdp")
int xpf_bench_pass(struct xdp_md *ctx)
{
	count(BENCH_PASSED);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
