/* Defensive parsing: Ethernet (+ one 802.1Q/802.1ad tag), IPv4 (with options), TCP/UDP.
 * Anything we do not understand goes back to the kernel untouched (XDP_PASS). */
#ifndef LB_PARSE_H
#define LB_PARSE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/in.h>

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

struct lb_vlan_hdr {
    __be16 tci;
    __be16 proto;
};

struct lb_pkt {
    struct ethhdr *eth;
    struct iphdr *ip4;
    __be16 *sport_p;              /* points into the L4 header */
    __be16 *dport_p;
    __sum16 *l4csum;              /* NULL: no checksum to fix (UDP with checksum 0) */
    __u32 len;                    /* IP total length, for byte counters */
    __u8 proto;
    __u8 tcp_flags;               /* TCP: the byte holding FIN SYN RST PSH ACK URG */
};

#define LB_TCP_FIN 0x01
#define LB_TCP_SYN 0x02
#define LB_TCP_RST 0x04
#define LB_TCP_ACK 0x10

/* Returns LB_CONTINUE with pkt filled, or XDP_PASS. */
static __always_inline int lb_parse(struct xdp_md *ctx, struct lb_pkt *pkt, __u32 *counter)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    void *cur = data;
    __be16 proto;

    if ((void *)(eth + 1) > data_end)
        return XDP_PASS;
    pkt->eth = eth;
    proto = eth->h_proto;
    cur = eth + 1;
    if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
        struct lb_vlan_hdr *vh = cur;
        if ((void *)(vh + 1) > data_end)
            return XDP_PASS;
        proto = vh->proto;
        cur = vh + 1;
    }
    if (proto != bpf_htons(ETH_P_IP))
        return XDP_PASS;            /* ARP, IPv6 (not forwarded yet), anything else */

    struct iphdr *ip = cur;
    if ((void *)(ip + 1) > data_end)
        return XDP_PASS;
    if (ip->version != 4 || ip->ihl < 5)
        return XDP_PASS;
    __u32 ihl = ip->ihl * 4;
    if (cur + ihl > data_end)
        return XDP_PASS;
    pkt->ip4 = ip;
    pkt->len = bpf_ntohs(ip->tot_len);   /* IPVS counts IP bytes, not frames */
    pkt->proto = ip->protocol;
    if (ip->frag_off & bpf_htons(0x3fff)) {
        /* Fragments carry no (or partial) ports; leave them to the kernel. */
        *counter = LB_CNT_FRAGMENT;
        return XDP_PASS;
    }
    cur += ihl;
    if (ip->protocol == IPPROTO_TCP) {
        struct tcphdr *th = cur;
        if ((void *)(th + 1) > data_end)
            return XDP_PASS;
        pkt->sport_p = &th->source;
        pkt->dport_p = &th->dest;
        pkt->l4csum = &th->check;
        pkt->tcp_flags = ((__u8 *)th)[13];
    } else if (ip->protocol == IPPROTO_UDP) {
        struct udphdr *uh = cur;
        if ((void *)(uh + 1) > data_end)
            return XDP_PASS;
        pkt->sport_p = &uh->source;
        pkt->dport_p = &uh->dest;
        pkt->l4csum = uh->check ? &uh->check : 0;
    } else {
        return XDP_PASS;
    }
    return LB_CONTINUE;
}

#endif
