/* lb_xdp_decap: for real servers of a tunnel-mode service (network = "tunnel").  The director
 * sends each client packet inside an outer IPv4 header (IPIP, protocol 4) or an outer IPv6 header
 * (IPv6-in-IPv6, next header 41) addressed to the real server; this program, attached to the
 * real server's interface by `lb decap attach DEV`, takes the outer header off so the kernel
 * sees the client's packet to the VIP (held on lo, as with direct routing) and answers the
 * client directly.  It does what the kernel's ipip / ip6_tunnel modules would, on kernels that
 * lack them.  Only packets to an address in lb_decap_dst are decapsulated (the server's own
 * addresses, written at attach time), and only from an address in lb_decap_src (the directors',
 * `lb decap attach --from`): a tunnel from anyone else is dropped, counted, since its inner packet
 * (any source, to the VIP) would otherwise reach the server's stack past every filter written
 * for a tunnel device.  The inner packet must be to one of the real server's VIPs (lb_decap_vip,
 * `--vip`; a key of family 0 there: any): a director only ever tunnels packets to a VIP, and one
 * to any other address (a forged director source: the server's other addresses, or, with
 * ip_forward on, any host behind it) would use the real server as a relay past the network's
 * filters; dropped, counted.  Packets not for a tunnel to us pass untouched.  ECN as the kernel's
 * ipip / ip6_tunnel (INET_ECN_decapsulate, RFC 6040 4.2): a Congestion Experienced mark a router
 * put on the outer header goes on to the inner one (ECT), or the packet is dropped (not ECT). */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>

struct lb_decap_key {
    __u8 addr[16];                /* IPv4 in the first 4 bytes */
    __u8 family;                  /* 4 or 6 */
    __u8 pad[3];
};

BPF_HASH(lb_decap_dst, struct lb_decap_key, __u32, 64);
BPF_HASH(lb_decap_src, struct lb_decap_key, __u32, 64);
BPF_HASH(lb_decap_vip, struct lb_decap_key, __u32, 256);
/* [0] = 1: no --vip, any inner destination (an array's load, not a hash lookup that misses and
 * another that hits: 60 ns a packet here; lb_decap_vip also holds the any key, for
 * attached_vips' report) */
BPF_ARRAY(lb_decap_any, __u32, 1);
/* 0: decapsulated, 1: passed (a tunnel not addressed to us), 2: dropped (not from a director),
 * 3: dropped (the inner header is not the tunnel's family, or shorter than its fixed header),
 * 4: dropped (the outer header says Congestion Experienced, the inner packet is not
 * ECN-capable: RFC 6040), 5: dropped (the inner packet is not to a VIP of lb_decap_vip) */
BPF_PERCPU_ARRAY(lb_decap_count, __u64, 6);

static __always_inline void lb_decap_counted(__u32 i)
{
    __u64 *c = lb_decap_count.lookup(&i);
    if (c)
        *c += 1;
}

int lb_xdp_decap(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct lb_decap_key k = {}, src = {};
    int outer;
    __u8 outer_ecn;
    __be16 inner_proto;

    if ((void *)(eth + 1) > data_end)
        return XDP_PASS;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5)
            return XDP_PASS;
        if (ip->protocol != IPPROTO_IPIP || (ip->frag_off & bpf_htons(0x3fff)))
            return XDP_PASS;          /* not IPIP, or a fragment: the kernel's */
        outer = ip->ihl * 4;
        outer_ecn = ip->tos & 3;
        *(__be32 *)k.addr = ip->daddr;
        k.family = 4;
        *(__be32 *)src.addr = ip->saddr;
        src.family = 4;
        inner_proto = bpf_htons(ETH_P_IP);
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > data_end || ip6->version != 6 || ip6->nexthdr != IPPROTO_IPV6)
            return XDP_PASS;
        outer = sizeof(*ip6);
        outer_ecn = (ip6->flow_lbl[0] >> 4) & 3;
        __builtin_memcpy(k.addr, &ip6->daddr, 16);
        k.family = 6;
        __builtin_memcpy(src.addr, &ip6->saddr, 16);
        src.family = 6;
        inner_proto = bpf_htons(ETH_P_IPV6);
    } else {
        return XDP_PASS;
    }
    if (!lb_decap_dst.lookup(&k)) {
        lb_decap_counted(1);
        return XDP_PASS;
    }
    if (!lb_decap_src.lookup(&src)) {
        lb_decap_counted(2);
        return XDP_DROP;
    }
    /* the inner header is the tunnel's family (IPIP: IPv4; IPv6-in-IPv6: IPv6), whole */
    __u8 *inner = (__u8 *)(eth + 1) + outer;
    struct lb_decap_key vip = {};
    if (inner_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *in4 = (void *)inner;
        if ((void *)(in4 + 1) > data_end || in4->version != 4) {
            lb_decap_counted(3);
            return XDP_DROP;
        }
        *(__be32 *)vip.addr = in4->daddr;
        vip.family = 4;
    } else {
        struct ipv6hdr *in6 = (void *)inner;
        if ((void *)(in6 + 1) > data_end || in6->version != 6) {
            lb_decap_counted(3);
            return XDP_DROP;
        }
        __builtin_memcpy(vip.addr, &in6->daddr, 16);
        vip.family = 6;
    }
    /* to a VIP of this real server (or any address: lb_decap_any) */
    __u32 zero = 0;
    __u32 *any = lb_decap_any.lookup(&zero);
    if (!(any && *any) && !lb_decap_vip.lookup(&vip)) {
        lb_decap_counted(5);
        return XDP_DROP;
    }
    /* RFC 6040 4.2: the outer Congestion Experienced onto the inner header (its ECN bits: IPv4's
     * TOS byte, inner[1], with its header checksum; IPv6's traffic class, inner[0..1]) */
    if (outer_ecn == 3) {
        if (inner_proto == bpf_htons(ETH_P_IP)) {
            struct iphdr *in = (void *)inner;
            if ((void *)(in + 1) > data_end)        /* (checked above: for the verifier) */
                return XDP_DROP;
            if ((in->tos & 3) == 0) {
                lb_decap_counted(4);
                return XDP_DROP;
            }
            if ((in->tos & 3) != 3) {
                __u16 old = *(__u16 *)in;
                in->tos |= 3;
                __u32 sum = (__u16)~in->check;
                sum += (__u16)~old;
                sum += *(__u16 *)in;
                sum = (sum & 0xffff) + (sum >> 16);
                sum = (sum & 0xffff) + (sum >> 16);
                in->check = ~(__u16)sum;
            }
        } else {
            if ((void *)(inner + 2) > data_end)
                return XDP_DROP;
            if ((inner[1] & 0x30) == 0) {
                lb_decap_counted(4);
                return XDP_DROP;
            }
            inner[1] |= 0x30;
        }
    }
    /* the Ethernet header moves forward over the outer IP header, which then goes */
    struct ethhdr copy;
    __builtin_memcpy(&copy, eth, sizeof(copy));
    if (bpf_xdp_adjust_head(ctx, outer))
        return XDP_PASS;
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_DROP;
    __builtin_memcpy(eth->h_dest, copy.h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_source, copy.h_source, ETH_ALEN);
    eth->h_proto = inner_proto;
    lb_decap_counted(0);
    return XDP_PASS;
}
