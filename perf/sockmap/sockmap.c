// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The app-to-sidecar hop through a sockmap instead of loopback TCP (the technique Merbridge
// uses for Istio and Linkerd), for perf/sockmap.sh to measure against the same hop through
// the TCP stack. Two programs:
//
//   rm_sockops  (cgroup sock_ops, on the cgroup the app and the proxy run in)
//     A connection established by an app to an intercepted address (`vips`) goes in `socks`
//     keyed by its own address (kind CLIENT). The proxy's side of it, accepted on the
//     proxy's outbound port (`settings`), goes in keyed by its peer's address (kind PROXY).
//     NAT REDIRECT changes where the app's SYN goes, not the app socket's own view, so the
//     two ends meet on the app's address and port, which both know.
//   rm_msg      (sk_msg, on `socks`)
//     A send on one end is queued straight onto the other end's receive queue
//     (bpf_msg_redirect_hash with BPF_F_INGRESS); when the other end is not (or no longer)
//     in the map, the bytes take the TCP path as usual.
//
// IPv4 only. Loaded and attached by perf/sockmap.sh with bpftool.

#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define KIND_CLIENT 1
#define KIND_PROXY 2

struct key {
	__u32 ip;   /* network order */
	__u32 port; /* host order */
	__u32 kind;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct key);
	__type(value, __u32);
} socks SEC(".maps");

/* [0]: the proxy's outbound listener port (host order). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} settings SEC(".maps");

/* Intercepted destination addresses (network order), value unused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} vips SEC(".maps");

/* The keys in `socks` (an sk_msg program may not look a socket up in `socks` itself: the
 * lookup takes a reference it has no helper to drop). Set with the socket's entry, cleared
 * when the socket closes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct key);
	__type(value, __u32);
} present SEC(".maps");

/* [0] sends redirected, [1] sends that found no peer and took the TCP path. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 i)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &i);
	if (n)
		*n += 1;
}

SEC("sockops")
int rm_sockops(struct bpf_sock_ops *ops)
{
	struct key k = {};
	__u32 zero = 0, *port;

	if (ops->family != AF_INET)
		return 1;
	port = bpf_map_lookup_elem(&settings, &zero);
	if (!port)
		return 1;
	switch (ops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
		__u32 dst = ops->remote_ip4;
		if (!bpf_map_lookup_elem(&vips, &dst))
			return 1;
		k.ip = ops->local_ip4;
		k.port = ops->local_port;
		k.kind = KIND_CLIENT;
		break;
	}
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (ops->local_port != *port)
			return 1;
		k.ip = ops->remote_ip4;
		k.port = bpf_ntohl(ops->remote_port);
		k.kind = KIND_PROXY;
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (ops->args[1] != BPF_TCP_CLOSE)
			return 1;
		/* Whichever of the two keys this socket had. */
		k.ip = ops->local_ip4;
		k.port = ops->local_port;
		k.kind = KIND_CLIENT;
		bpf_map_delete_elem(&present, &k);
		k.ip = ops->remote_ip4;
		k.port = bpf_ntohl(ops->remote_port);
		k.kind = KIND_PROXY;
		if (ops->local_port == *port)
			bpf_map_delete_elem(&present, &k);
		return 1;
	default:
		return 1;
	}
	if (bpf_sock_hash_update(ops, &socks, &k, BPF_NOEXIST) == 0) {
		__u32 one = 1;
		bpf_map_update_elem(&present, &k, &one, BPF_ANY);
		bpf_sock_ops_cb_flags_set(ops, BPF_SOCK_OPS_STATE_CB_FLAG);
	}
	return 1;
}

SEC("sk_msg")
int rm_msg(struct sk_msg_md *msg)
{
	struct key k = {};
	__u32 zero = 0, *port;

	/* Every context field is read once, up front: the verifier refuses a context pointer
	 * that the compiler offset for a shared load in both branches. */
	__u32 family = msg->family, lport = msg->local_port, lip = msg->local_ip4;
	__u32 rport = bpf_ntohl(msg->remote_port), rip = msg->remote_ip4;
	port = bpf_map_lookup_elem(&settings, &zero);
	if (!port || family != AF_INET)
		return SK_PASS;
	if (lport == *port) {
		/* The proxy's end: to the app socket whose own address is our peer. */
		k.ip = rip;
		k.port = rport;
		k.kind = KIND_CLIENT;
	} else {
		/* The app's end: to the proxy socket whose peer is us. */
		k.ip = lip;
		k.port = lport;
		k.kind = KIND_PROXY;
	}
	if (!bpf_map_lookup_elem(&present, &k)) {
		count(1);
		return SK_PASS;
	}
	count(0);
	return bpf_msg_redirect_hash(msg, &socks, &k, BPF_F_INGRESS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
