/* Forwarding: DR rewrites MACs only; NAT rewrites the destination (requests) or the source
 * (replies) with incremental checksums.  Next hops were resolved by the control plane. */
#ifndef LB_FORWARD_H
#define LB_FORWARD_H

static __always_inline int lb_xmit(struct xdp_md *ctx, struct ethhdr *eth, const __u8 *dst,
                                   const __u8 *src, __u32 ifindex)
{
    __builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
    __builtin_memcpy(eth->h_source, src, ETH_ALEN);
    if (ifindex == ctx->ingress_ifindex)
        return XDP_TX;
    return bpf_redirect(ifindex, 0);
}

/* NAT: the destination (requests) or the source (replies) to addr:port, either family.  The
 * pointer tests, not pkt->family, choose the branch: the verifier then knows which header it is. */
static __always_inline void lb_nat_daddr(struct lb_pkt *pkt, const __u8 *addr, __be16 port)
{
    if (pkt->ip6)
        lb_rewrite6(pkt, pkt->ip6->daddr.in6_u.u6_addr32, (const __be32 *)addr, pkt->dport_p, port);
    else if (pkt->ip4)
        lb_rewrite4(pkt, &pkt->ip4->daddr, *(const __be32 *)addr, pkt->dport_p, port);
}

static __always_inline void lb_nat_saddr(struct lb_pkt *pkt, const __u8 *addr, __be16 port)
{
    if (pkt->ip6)
        lb_rewrite6(pkt, pkt->ip6->saddr.in6_u.u6_addr32, (const __be32 *)addr, pkt->sport_p, port);
    else if (pkt->ip4)
        lb_rewrite4(pkt, &pkt->ip4->saddr, *(const __be32 *)addr, pkt->sport_p, port);
}

/* Tunnel (IPVS ip_vs_tunnel_xmit): the packet, untouched, inside an outer IPv4 header (IPIP) or
 * an outer IPv6 header (IPv6-in-IPv6) from r->tun_src to the real server, which decapsulates it
 * (`lb decap`, or the kernel's ipip/ip6_tunnel) and answers the client directly, as with DR.
 * A VLAN tag that came in is not sent on.  After bpf_xdp_adjust_head every packet pointer is
 * stale: only the new Ethernet header is used. */
static __always_inline __u16 lb_ip4_csum(struct iphdr *ip)
{
    __u16 *w = (__u16 *)ip;
    __u32 sum = 0;
#pragma unroll
    for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
        sum += w[i];
    return ~lb_csum_fold(sum);
}

static __always_inline int lb_tunnel_xmit(struct xdp_md *ctx, struct lb_pkt *pkt, struct lb_real *r)
{
    void *data = (void *)(long)ctx->data;
    int l2;
    if (pkt->ip6) {
        l2 = (void *)pkt->ip6 - data;
        __u32 vtc = *(__be32 *)pkt->ip6 & bpf_htonl(0x0ff00000);   /* inner traffic class */
        __u16 plen = pkt->len;                                     /* inner header + payload */
        if (bpf_xdp_adjust_head(ctx, l2 - (int)sizeof(struct ethhdr) - (int)sizeof(struct ipv6hdr)))
            return XDP_DROP;
        data = (void *)(long)ctx->data;
        void *data_end = (void *)(long)ctx->data_end;
        struct ethhdr *eth = data;
        struct ipv6hdr *o = (void *)(eth + 1);
        if ((void *)(o + 1) > data_end)
            return XDP_DROP;
        eth->h_proto = bpf_htons(ETH_P_IPV6);
        *(__be32 *)o = bpf_htonl(0x60000000) | vtc;
        o->payload_len = bpf_htons(plen);
        o->nexthdr = IPPROTO_IPV6;
        o->hop_limit = 64;
        __builtin_memcpy(&o->saddr, r->tun_src, 16);
        __builtin_memcpy(&o->daddr, r->addr, 16);
        return lb_xmit(ctx, eth, r->mac, r->src_mac, r->ifindex);
    }
    if (!pkt->ip4)
        return XDP_DROP;
    l2 = (void *)pkt->ip4 - data;
    __u8 tos = pkt->ip4->tos;
    __be16 df = pkt->ip4->frag_off & bpf_htons(0x4000);               /* IP_DF, as IPVS copies it */
    __u16 len = pkt->len;
    if (bpf_xdp_adjust_head(ctx, l2 - (int)sizeof(struct ethhdr) - (int)sizeof(struct iphdr)))
        return XDP_DROP;
    data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *o = (void *)(eth + 1);
    if ((void *)(o + 1) > data_end)
        return XDP_DROP;
    eth->h_proto = bpf_htons(ETH_P_IP);
    o->version = 4;
    o->ihl = 5;
    o->tos = tos;
    o->tot_len = bpf_htons(len + sizeof(struct iphdr));
    o->id = 0;
    o->frag_off = df;
    o->ttl = 64;
    o->protocol = IPPROTO_IPIP;
    o->check = 0;
    o->saddr = *(__be32 *)r->tun_src;
    o->daddr = *(__be32 *)r->addr;
    o->check = lb_ip4_csum(o);
    return lb_xmit(ctx, eth, r->mac, r->src_mac, r->ifindex);
}

static __always_inline int lb_forward_to_real(struct xdp_md *ctx, struct lb_pkt *pkt,
                                              struct lb_real *r)
{
    if (r->fwd == LB_FWD_NAT)
        lb_nat_daddr(pkt, r->addr, r->port ? r->port : *pkt->dport_p);   /* port 0 keeps the packet's */
    else if (r->fwd == LB_FWD_TUNNEL)
        return lb_tunnel_xmit(ctx, pkt, r);
    else if (r->fwd != LB_FWD_DR)
        return XDP_DROP;          /* the control plane never programs other methods */
    return lb_xmit(ctx, pkt->eth, r->mac, r->src_mac, r->ifindex);
}

/* NAT reply: source back to the VIP:port the client used, out the way its packets came in */
static __always_inline int lb_forward_to_client(struct xdp_md *ctx, struct lb_pkt *pkt,
                                                struct lb_conn *c)
{
    lb_nat_saddr(pkt, c->vaddr, c->vport);
    return lb_xmit(ctx, pkt->eth, c->client_mac, c->local_mac, c->client_ifindex);
}

#endif
