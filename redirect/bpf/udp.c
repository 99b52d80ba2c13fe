// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// ringmesh UDP interception: three TC programs (TCX links) that steer a pod's datagrams to
// its proxy with a PROXY protocol v2 header in front of the payload, and take the header off
// the proxy's replies.
//
//   udp_egress   (egress of every non-loopback interface)
//     1. A reply of the inbound relay (source port = inbound port, sent by the proxy, header
//        present): strip the header, put the header's source port (the app's port the peer
//        sent to) in the UDP header. The source address must equal the packet's own: the
//        proxy may restore a port, never forge an address.
//     2. An app's datagram to a non-excluded destination: insert a header (original source
//        and destination), address it to the interface's own address at the outbound port,
//        and redirect it to the interface's ingress (accept_local=1 lets it in).
//   udp_ingress  (ingress of every non-loopback interface)
//     A datagram for an intercepted local port: insert a header and change the destination
//     port to the inbound port. The destination address stays (it is local).
//   udp_lo       (egress of lo)
//     A reply of the outbound relay to a local app (source port = outbound port, sent by the
//     proxy, header present): strip the header and put its source (the address the app sent
//     to) in the IP and UDP headers, so a connected socket accepts it and recvfrom() names it.
//
// IPv4 only (IPv6 passes untouched: its UDP checksum is mandatory and recomputing it over a
// payload of any length is not something these programs do). Every packet these programs
// rewrite leaves with a UDP checksum of 0 (legal for IPv4) and a recomputed IP checksum.
// Fragments, IP options and GSO super-packets pass untouched, counted.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define PP2_LEN 28 /* 16 fixed + 4 + 4 + 2 + 2 for INET */
#define IP_OFF ETH_HLEN
#define UDP_OFF (ETH_HLEN + sizeof(struct iphdr))
#define PP2_OFF (UDP_OFF + sizeof(struct udphdr))
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* Settings, written by mesh-redirect (host byte order). */
struct settings {
	__u16 outbound_port;
	__u16 inbound_port;
	__u16 inbound_min; /* intercepted inbound destination ports: [min, max] */
	__u16 inbound_max;
	__u32 proxy_mark;
	__u32 proxy_uid;
	__u32 flags;
};
#define F_OUTBOUND 1
#define F_INBOUND 2
#define F_MARK 4
#define F_UID 8

struct lpm_v4 {
	__u32 prefixlen;
	__u32 addr; /* network byte order */
};

/* Counters, indexed by these; mesh-redirect show prints them by name (keep in step with
 * redirect/src/bpf.rs STATS). */
enum stat {
	S_STEERED_OUT,
	S_STEERED_IN,
	S_REPLY_OUT,
	S_REPLY_IN,
	S_PASS_PROXY,
	S_PASS_EXCLUDED,
	S_PASS_FRAGMENT,
	S_PASS_OPTIONS,
	S_PASS_GSO,
	S_PASS_BROADCAST,
	S_DROP_SPOOF,
	S_ERROR,
	S_PASS_REPLY,
	S_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u16);
	__type(value, __u8);
} out_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u16);
	__type(value, __u8);
} in_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4);
	__type(value, __u8);
} out_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, S_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* Flows whose answers must not be steered, keyed from the local side, one map each way
 * (an entry made one way is only ever read the other way, so a port reused later cannot
 * make new traffic skip the proxy by an old answer's entry): datagrams that came
 * in without being steered (to a port outside the intercepted range, or an excluded one),
 * whose answers leave as sent instead of being taken for new outbound flows; and datagrams
 * the proxy (or an app, to an excluded destination) sent out as they were, whose answers
 * come in as sent instead of being taken for inbound flows. Netfilter's conntrack does this
 * for TCP. Entries older than REPLY_WINDOW_NS are ignored; the LRU drops the oldest. */
struct flow4 {
	__be32 local_addr;
	__be32 remote_addr;
	__be16 local_port;
	__be16 remote_port;
};
#define REPLY_WINDOW_NS (30ULL * 1000000000ULL)

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow4);
	__type(value, __u64);
} unsteered_in SEC(".maps"); /* came in unsteered: their answers leave as sent */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow4);
	__type(value, __u64);
} unsteered_out SEC(".maps"); /* went out unsteered: their answers come in as sent */

/* The sysctl values install changed (name -> original value), for uninstall; the programs
 * never read it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, char[64]);
	__type(value, __s32);
} saved SEC(".maps");

static const __u8 pp2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
				 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

struct pp2_v4 {
	__u8 sig[12];
	__u8 ver_cmd; /* 0x21: version 2, PROXY */
	__u8 fam;     /* 0x12: INET, DGRAM */
	__be16 len;   /* 12 */
	__be32 src_addr;
	__be32 dst_addr;
	__be16 src_port;
	__be16 dst_port;
};

static __always_inline void count(enum stat s)
{
	__u32 k = s;
	__u64 *v = bpf_map_lookup_elem(&stats, &k);
	if (v)
		*v += 1;
}

static __always_inline struct settings *get_settings(void)
{
	__u32 k = 0;
	return bpf_map_lookup_elem(&settings, &k);
}

/* The proxy's own datagram: by socket mark or socket uid, whichever is configured. */
static __always_inline int from_proxy(struct __sk_buff *skb, const struct settings *s)
{
	if ((s->flags & F_MARK) && skb->mark == s->proxy_mark)
		return 1;
	if ((s->flags & F_UID) && bpf_get_socket_uid(skb) == s->proxy_uid)
		return 1;
	return 0;
}

static __always_inline __u16 ip_csum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;
	ip->check = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Loads the Ethernet, IPv4 and UDP headers of a plain (no options, unfragmented) IPv4 UDP
 * packet. Returns 1 when the packet is one, 0 (with the reason counted) when it is not. */
static __always_inline int load_udp4(struct __sk_buff *skb, struct ethhdr *eth, struct iphdr *ip,
				     struct udphdr *udp)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 0;
	if (bpf_skb_load_bytes(skb, IP_OFF, ip, sizeof(*ip)) < 0)
		return 0;
	if (ip->protocol != IPPROTO_UDP || ip->version != 4)
		return 0;
	if (ip->ihl != 5) {
		count(S_PASS_OPTIONS);
		return 0;
	}
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		count(S_PASS_FRAGMENT);
		return 0;
	}
	if (bpf_skb_load_bytes(skb, 0, eth, sizeof(*eth)) < 0 ||
	    bpf_skb_load_bytes(skb, UDP_OFF, udp, sizeof(*udp)) < 0)
		return 0;
	if (skb->gso_size) {
		count(S_PASS_GSO);
		return 0;
	}
	return 1;
}

/* Inserts a PROXY v2 header (src, dst) after the UDP header, rewrites the UDP header to
 * (sport, dport, csum 0) and the IP header to (saddr, daddr). Returns 0 on success. */
static __always_inline int insert(struct __sk_buff *skb, struct iphdr *ip, struct udphdr *udp,
				  __be32 src_addr, __be16 src_port, __be32 dst_addr,
				  __be16 dst_port, __be32 new_saddr, __be32 new_daddr,
				  __be16 new_dport)
{
	struct pp2_v4 h;
	__builtin_memcpy(h.sig, pp2_sig, sizeof(pp2_sig));
	h.ver_cmd = 0x21;
	h.fam = 0x12;
	h.len = bpf_htons(12);
	h.src_addr = src_addr;
	h.dst_addr = dst_addr;
	h.src_port = src_port;
	h.dst_port = dst_port;

	__u16 ulen = bpf_ntohs(udp->len);
	if (ulen < sizeof(*udp) || ulen > 0xffff - PP2_LEN)
		return -1;
	if (bpf_skb_adjust_room(skb, PP2_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return -1;
	/* The new room sits between the IP header and the old UDP header: UDP goes in front of
	 * it, and the header fills the rest (overwriting the old UDP header's bytes). */
	udp->dest = new_dport;
	udp->len = bpf_htons(ulen + PP2_LEN);
	udp->check = 0;
	ip->tot_len = bpf_htons(bpf_ntohs(ip->tot_len) + PP2_LEN);
	ip->saddr = new_saddr;
	ip->daddr = new_daddr;
	ip->check = ip_csum(ip);
	if (bpf_skb_store_bytes(skb, IP_OFF, ip, sizeof(*ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, UDP_OFF, udp, sizeof(*udp), 0) < 0 ||
	    bpf_skb_store_bytes(skb, PP2_OFF, &h, sizeof(h), 0) < 0)
		return -1;
	return 0;
}

/* Reads the PROXY v2 header after the UDP header: 1 if it is one we wrote the shape of
 * (v2, PROXY, INET, DGRAM, no TLVs). */
static __always_inline int load_pp2(struct __sk_buff *skb, struct udphdr *udp, struct pp2_v4 *h)
{
	if (bpf_ntohs(udp->len) < sizeof(*udp) + PP2_LEN)
		return 0;
	if (bpf_skb_load_bytes(skb, PP2_OFF, h, sizeof(*h)) < 0)
		return 0;
#pragma unroll
	for (int i = 0; i < (int)sizeof(pp2_sig); i++)
		if (h->sig[i] != pp2_sig[i])
			return 0;
	return h->ver_cmd == 0x21 && h->fam == 0x12 && h->len == bpf_htons(12);
}

/* Removes the PROXY v2 header after the UDP header and sets the source to (saddr, sport).
 * Returns 0 on success. */
static __always_inline int strip(struct __sk_buff *skb, struct iphdr *ip, struct udphdr *udp,
				 __be32 saddr, __be16 sport)
{
	__u16 ulen = bpf_ntohs(udp->len);
	if (bpf_skb_adjust_room(skb, -PP2_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return -1;
	/* The 28 bytes after the IP header are gone: what follows it now is the header's last
	 * 8 bytes, which the UDP header overwrites. */
	udp->source = sport;
	udp->len = bpf_htons(ulen - PP2_LEN);
	udp->check = 0;
	ip->tot_len = bpf_htons(bpf_ntohs(ip->tot_len) - PP2_LEN);
	ip->saddr = saddr;
	ip->check = ip_csum(ip);
	if (bpf_skb_store_bytes(skb, IP_OFF, ip, sizeof(*ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, UDP_OFF, udp, sizeof(*udp), 0) < 0)
		return -1;
	return 0;
}

/* Remembers that the flow (local, remote) passed unsteered; refreshed at most once a second
 * so a busy flow costs a lookup, not an update, per datagram. */
static __always_inline void remember(void *map, __be32 laddr, __be16 lport, __be32 raddr,
				     __be16 rport)
{
	struct flow4 f = {.local_addr = laddr, .remote_addr = raddr, .local_port = lport,
			  .remote_port = rport};
	__u64 now = bpf_ktime_get_ns();
	__u64 *seen = bpf_map_lookup_elem(map, &f);
	if (seen && now - *seen < 1000000000ULL)
		return;
	bpf_map_update_elem(map, &f, &now, BPF_ANY);
}

static __always_inline int remembered(void *map, __be32 laddr, __be16 lport, __be32 raddr,
				      __be16 rport)
{
	struct flow4 f = {.local_addr = laddr, .remote_addr = raddr, .local_port = lport,
			  .remote_port = rport};
	__u64 *seen = bpf_map_lookup_elem(map, &f);
	return seen && bpf_ktime_get_ns() - *seen < REPLY_WINDOW_NS;
}

static __always_inline int excluded_dst(__be32 daddr, __u16 dport)
{
	if (bpf_map_lookup_elem(&out_ports, &dport))
		return 1;
	struct lpm_v4 k = {.prefixlen = 32, .addr = daddr};
	return bpf_map_lookup_elem(&out_cidrs, &k) != 0;
}

static __always_inline int multicast_or_broadcast(__be32 daddr)
{
	__u32 a = bpf_ntohl(daddr);
	return (a >> 28) == 0xe || a == 0xffffffff;
}

SEC("classifier")
int udp_egress(struct __sk_buff *skb)
{
	struct settings *s = get_settings();
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	struct pp2_v4 h;

	if (!s || !load_udp4(skb, &eth, &ip, &udp))
		return TC_ACT_OK;
	__u16 sport = bpf_ntohs(udp.source);
	__u16 dport = bpf_ntohs(udp.dest);
	int proxy = from_proxy(skb, s);

	if (proxy && sport == s->inbound_port && load_pp2(skb, &udp, &h)) {
		if (h.src_addr != ip.saddr) {
			count(S_DROP_SPOOF);
			return TC_ACT_SHOT;
		}
		if (strip(skb, &ip, &udp, h.src_addr, h.src_port) < 0) {
			count(S_ERROR);
			return TC_ACT_SHOT;
		}
		count(S_REPLY_IN);
		return TC_ACT_OK;
	}
	if (proxy) {
		remember(&unsteered_out, ip.saddr, udp.source, ip.daddr, udp.dest);
		count(S_PASS_PROXY);
		return TC_ACT_OK;
	}
	if (!(s->flags & F_OUTBOUND))
		return TC_ACT_OK;
	if (multicast_or_broadcast(ip.daddr)) {
		count(S_PASS_BROADCAST);
		return TC_ACT_OK;
	}
	/* The answer to a datagram that came in unsteered leaves as sent. */
	if (remembered(&unsteered_in, ip.saddr, udp.source, ip.daddr, udp.dest)) {
		count(S_PASS_REPLY);
		return TC_ACT_OK;
	}
	/* A server's answer from an excluded inbound port, and anything to an excluded port or
	 * network, leaves as sent. */
	if (bpf_map_lookup_elem(&in_ports, &sport) || excluded_dst(ip.daddr, dport)) {
		remember(&unsteered_out, ip.saddr, udp.source, ip.daddr, udp.dest);
		count(S_PASS_EXCLUDED);
		return TC_ACT_OK;
	}
	if (insert(skb, &ip, &udp, ip.saddr, udp.source, ip.daddr, udp.dest, ip.saddr, ip.saddr,
		   bpf_htons(s->outbound_port)) < 0) {
		count(S_ERROR);
		return TC_ACT_SHOT;
	}
	/* Back in through this interface, addressed to it. */
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0) {
		count(S_ERROR);
		return TC_ACT_SHOT;
	}
	count(S_STEERED_OUT);
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

SEC("classifier")
int udp_ingress(struct __sk_buff *skb)
{
	struct settings *s = get_settings();
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;

	if (!s || !load_udp4(skb, &eth, &ip, &udp))
		return TC_ACT_OK;
	if (skb->pkt_type != PACKET_HOST)
		return TC_ACT_OK;
	__u16 dport = bpf_ntohs(udp.dest);
	/* Datagrams already steered to the proxy, and replies to client sockets (ports outside
	 * the intercepted range) go up as they are. */
	if (dport == s->outbound_port || dport == s->inbound_port)
		return TC_ACT_OK;
	/* The answer to what the proxy (or an app, unsteered) sent comes in as sent. */
	if (remembered(&unsteered_out, ip.daddr, udp.dest, ip.saddr, udp.source)) {
		count(S_PASS_REPLY);
		return TC_ACT_OK;
	}
	if (!(s->flags & F_INBOUND) || dport < s->inbound_min || dport > s->inbound_max ||
	    bpf_map_lookup_elem(&in_ports, &dport)) {
		/* Up to the socket as sent; remember it so its answer is not steered. */
		remember(&unsteered_in, ip.daddr, udp.dest, ip.saddr, udp.source);
		if (bpf_map_lookup_elem(&in_ports, &dport))
			count(S_PASS_EXCLUDED);
		return TC_ACT_OK;
	}
	if (insert(skb, &ip, &udp, ip.saddr, udp.source, ip.daddr, udp.dest, ip.saddr, ip.daddr,
		   bpf_htons(s->inbound_port)) < 0) {
		count(S_ERROR);
		return TC_ACT_SHOT;
	}
	count(S_STEERED_IN);
	return TC_ACT_OK;
}

SEC("classifier")
int udp_lo(struct __sk_buff *skb)
{
	struct settings *s = get_settings();
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	struct pp2_v4 h;

	if (!s || !load_udp4(skb, &eth, &ip, &udp))
		return TC_ACT_OK;
	if (bpf_ntohs(udp.source) != s->outbound_port || !from_proxy(skb, s) ||
	    !load_pp2(skb, &udp, &h))
		return TC_ACT_OK;
	if (strip(skb, &ip, &udp, h.src_addr, h.src_port) < 0) {
		count(S_ERROR);
		return TC_ACT_SHOT;
	}
	count(S_REPLY_OUT);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
