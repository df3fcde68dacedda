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

static __always_inline int lb_forward_to_real(struct xdp_md *ctx, struct lb_pkt *pkt,
                                              struct lb_real *r)
{
    if (r->fwd == LB_FWD_NAT)
        lb_nat_daddr(pkt, r->addr, r->port ? r->port : *pkt->dport_p);   /* port 0 keeps the packet's */
    else if (r->fwd != LB_FWD_DR)
        return XDP_DROP;          /* the control plane never programs other methods yet */
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
