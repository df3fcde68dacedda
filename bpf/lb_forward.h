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

static __always_inline int lb_forward_to_real(struct xdp_md *ctx, struct lb_pkt *pkt,
                                              struct lb_real *r)
{
    if (r->fwd == LB_FWD_NAT)
        lb_rewrite4(pkt, &pkt->ip4->daddr, *(__be32 *)r->addr, pkt->dport_p,
                    r->port ? r->port : *pkt->dport_p);   /* port 0 keeps the packet's port */
    else if (r->fwd != LB_FWD_DR)
        return XDP_DROP;          /* the control plane never programs other methods yet */
    return lb_xmit(ctx, pkt->eth, r->mac, r->src_mac, r->ifindex);
}

/* NAT reply: source back to the VIP:port the client used, out the way its packets came in */
static __always_inline int lb_forward_to_client(struct xdp_md *ctx, struct lb_pkt *pkt,
                                                struct lb_conn *c)
{
    lb_rewrite4(pkt, &pkt->ip4->saddr, *(__be32 *)c->vaddr, pkt->sport_p, c->vport);
    return lb_xmit(ctx, pkt->eth, c->client_mac, c->local_mac, c->client_ifindex);
}

#endif
