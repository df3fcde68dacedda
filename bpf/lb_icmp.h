/* ICMP and ICMPv6 errors about tracked connections, as IPVS's ip_vs_in_icmp / ip_vs_in_icmp_v6
 * (public side: to the connection's real server) and ip_vs_out_icmp / ip_vs_out_icmp_v6 (NAT,
 * private side: from a real server to the client).  Without them a router's "fragmentation
 * needed" or Packet Too Big about a real server's reply reaches only the director's kernel and
 * Path MTU discovery breaks for the real server's clients.
 *
 * Entered only from the branch where lb_parse said XDP_PASS for an ICMP packet, so TCP and UDP
 * pay nothing.  Each helper returns an XDP action; everything it does not relay is XDP_PASS,
 * untouched (echo, neighbour discovery, errors about unknown or expired flows, errors quoting
 * a later fragment, truncated quotes).  An error quoting a first fragment (whose ports are there)
 * is relayed as one quoting a whole packet, as IPVS does.
 *
 * As IPVS: the error counts in the connection's stats (inpkts/inbytes toward the real server,
 * outpkts/outbytes toward the client) and changes neither its state nor its timer.  NAT rewrites
 * the outer and the quoted addresses and the quoted port, never the quoted TCP/UDP checksum.
 * Unlike IPVS, the ICMP checksum is not verified: it is updated incrementally, so a corrupt
 * message stays corrupt and its receiver drops it. */
#ifndef LB_ICMP_H
#define LB_ICMP_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_csum.h"
#include "lb_stats.h"
#include "lb_clock.h"
#include "lb_conntrack.h"
#include "lb_embryo.h"
#include "lb_forward.h"

static __always_inline int lb_is_icmp(struct lb_pkt *pkt)
{
    return pkt->proto == IPPROTO_ICMP || pkt->proto == IPPROTO_ICMPV6;
}

static __always_inline int lb_addr_eq(const __be32 *a, const __be32 *b)
{
    return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

/* An error whose quote is an IPIP or IPv6-in-IPv6 header (a packet lb tunneled, maybe) goes on
 * in lb_xdp_icmp_tunnel (lb_icmp_tunnel below), a program of its own: lb_xdp_private has no
 * verifier budget left for it.  XDP_PASS when it is not (or the slot is empty, counted). */
static __always_inline int lb_icmp_tunnel_call(struct xdp_md *ctx, struct lb_pkt *pkt)
{
    void *data_end = (void *)(long)ctx->data_end;
    struct lb_icmphdr *ic = pkt->icmp;
    /* an IPv4 quote of an IPIP packet with the inner ports is 48 bytes or more: 40 are there */
    if (!ic || (void *)(ic + 1) + sizeof(struct ipv6hdr) > data_end)
        return XDP_PASS;
    __u8 nh = pkt->ip4 ? ((struct iphdr *)(ic + 1))->protocol : ((struct ipv6hdr *)(ic + 1))->nexthdr;
    if (nh == IPPROTO_IPIP || nh == IPPROTO_IPV6) {
        lb_icmp_progs.call(ctx, LB_ICMP_TUNNEL);
        lb_count(LB_CNT_TAIL_CALL);
    }
    return XDP_PASS;
}

/* NAT toward the real server (IPVS ip_vs_nat_icmp, inout 0): outer destination VIP -> real,
 * quoted source VIP:vport -> real:rport */
static __always_inline void lb_icmp_nat_in(struct lb_pkt *pkt, struct lb_icmp_err *e, const __u8 *addr,
                                           __be16 port)
{
    __u16 *sum = (__u16 *)&e->icmp->check;
    if (pkt->ip6 && e->ip6) {
        /* the ICMPv6 checksum covers the outer addresses through its pseudo header */
        lb_csum_set_addr6(pkt->ip6->daddr.in6_u.u6_addr32, (const __be32 *)addr, sum);
        lb_csum_set_addr6(e->ip6->saddr.in6_u.u6_addr32, (const __be32 *)addr, sum);
    } else if (pkt->ip4 && e->ip4) {
        __be32 a = *(const __be32 *)addr;
        __be32 old = pkt->ip4->daddr;
        pkt->ip4->daddr = a;
        lb_csum_replace4((__u16 *)&pkt->ip4->check, old, a);
        lb_csum_set_quoted_addr4(e->ip4, &e->ip4->saddr, a, sum);
    }
    __be16 old_port = *e->sport_p;
    *e->sport_p = port;
    lb_csum_replace2(sum, old_port, port);
}

/* NAT toward the client (IPVS ip_vs_nat_icmp, inout 1): outer source -> VIP, quoted destination
 * real:rport -> VIP:vport */
static __always_inline void lb_icmp_nat_out(struct lb_pkt *pkt, struct lb_icmp_err *e, const __u8 *addr,
                                            __be16 port)
{
    __u16 *sum = (__u16 *)&e->icmp->check;
    if (pkt->ip6 && e->ip6) {
        lb_csum_set_addr6(pkt->ip6->saddr.in6_u.u6_addr32, (const __be32 *)addr, sum);
        lb_csum_set_addr6(e->ip6->daddr.in6_u.u6_addr32, (const __be32 *)addr, sum);
    } else if (pkt->ip4 && e->ip4) {
        __be32 a = *(const __be32 *)addr;
        __be32 old = pkt->ip4->saddr;
        pkt->ip4->saddr = a;
        lb_csum_replace4((__u16 *)&pkt->ip4->check, old, a);
        lb_csum_set_quoted_addr4(e->ip4, &e->ip4->daddr, a, sum);
    }
    __be16 old_port = *e->dport_p;
    *e->dport_p = port;
    lb_csum_replace2(sum, old_port, port);
}

/* Public side: an error about a packet our real server sent the client (quoted VIP:vport ->
 * client:cport, the reply direction of the connection's key), addressed to that VIP, goes to
 * the real server: DR and tunnel as the connection's packets go, NAT rewritten. */
static __always_inline int lb_icmp_public(struct xdp_md *ctx, struct lb_pkt *pkt)
{
    struct lb_icmp_err e = {};
    if (lb_parse_icmp_err(ctx, pkt, &e) != LB_CONTINUE)
        return lb_icmp_tunnel_call(ctx, pkt);
    if (!lb_addr_eq(e.saddr, pkt->daddr))
        return XDP_PASS;
    struct lb_conn_key key = {};
    __builtin_memcpy(key.saddr, e.daddr, 16);
    __builtin_memcpy(key.daddr, e.saddr, 16);
    key.sport = *e.dport_p;
    key.dport = *e.sport_p;
    key.proto = e.proto;
    key.family = pkt->family;
    int embryo;
    struct lb_conn *c = lb_conn_find(&key, &embryo);
    if (!c || lb_conn_expired(c, lb_now()))
        return XDP_PASS;
    __u32 svc_id = c->svc, real_id = c->real;
    struct lb_real *r = lb_reals.lookup(&real_id);
    if (!r || r->svc != svc_id || r->family == 0)
        return XDP_PASS;          /* its real server has left: the director's kernel may have it */
    lb_stats_in(svc_id, real_id, pkt->len, 0);
    /* not lb_forward_to_real: its NAT branch reads the ports, and an ICMP packet has none */
    if (r->fwd == LB_FWD_DR)
        return lb_xmit(ctx, pkt->eth, r->mac, r->src_mac, r->ifindex);
    if (r->fwd == LB_FWD_TUNNEL)
        return lb_tunnel_xmit(ctx, pkt, r);
    if (r->fwd != LB_FWD_NAT)
        return XDP_PASS;
    lb_icmp_nat_in(pkt, &e, r->addr, r->port ? r->port : *e.sport_p);   /* port 0 keeps the packet's */
    return lb_xmit(ctx, pkt->eth, r->mac, r->src_mac, r->ifindex);
}

/* Private side (NAT): a real server's (or a router's on its way) error about a packet the
 * director sent it (quoted client:cport -> real:rport, the key of the NAT reverse entry's
 * reply), addressed to that client, goes to the client from the VIP. */
static __always_inline int lb_icmp_private(struct xdp_md *ctx, struct lb_pkt *pkt)
{
    struct lb_icmp_err e = {};
    if (lb_parse_icmp_err(ctx, pkt, &e) != LB_CONTINUE)
        return lb_icmp_tunnel_call(ctx, pkt);
    if (!lb_addr_eq(e.saddr, pkt->daddr))
        return XDP_PASS;
    struct lb_conn_key rk = {};
    __builtin_memcpy(rk.saddr, e.daddr, 16);
    __builtin_memcpy(rk.daddr, e.saddr, 16);
    rk.sport = *e.dport_p;
    rk.dport = *e.sport_p;
    rk.proto = e.proto;
    rk.family = pkt->family;
    rk.dir = 1;
    int embryo;
    struct lb_conn *rev = lb_conn_find(&rk, &embryo);
    if (!rev || !(rev->flags & LB_CONN_F_OUT))
        return XDP_PASS;
    struct lb_conn_key key = {};
    __builtin_memcpy(key.saddr, e.saddr, 16);
    __builtin_memcpy(key.daddr, rev->vaddr, 16);
    key.sport = *e.sport_p;
    key.dport = rev->vport;
    key.proto = e.proto;
    key.family = pkt->family;
    struct lb_conn *c = lb_conn_find(&key, &embryo);
    if (!c || c->real != rev->real || lb_conn_expired(c, lb_now()))
        return XDP_PASS;
    lb_stats_out(rev->svc, c->real, pkt->len);
    lb_icmp_nat_out(pkt, &e, c->vaddr, c->vport);
    return lb_xmit(ctx, pkt->eth, c->client_mac, c->local_mac, c->client_ifindex);
}

/* An ICMP error about a packet lb tunneled to a real server (the quote: our outer header, from
 * our tunnel source to the real server, then the client's packet), from a router on the way or
 * the real server, relayed to the client as IPVS's ip_vs_in_icmp relays one about its IPIP
 * packets: the same type and code, from the VIP, quoting the client's packet (its IP header, and
 * IPv6's extension headers, and 8 bytes); a "fragmentation needed" or Packet Too Big carries the
 * MTU less the outer header (the reported MTU, or the egress link's when none or a larger one is
 * reported), so the client's path MTU discovery learns what fits through the tunnel; without
 * that the client keeps sending what the tunnel drops.  IPVS relays IPv4's only; IPv6's is
 * relayed the same way (an MTU not below 1280, as the kernel's ip6_tunnel reports), but not a
 * parameter problem (its pointer is into the outer header).  Not relayed, passed untouched to
 * the director's kernel: a "fragmentation needed" about a client's packet without DF (IPVS
 * ignores it: the client does no path MTU discovery), an error about an unknown or expired
 * connection, a real server that is not this connection's tunnel end, an error not addressed to
 * the tunnel's source.  Unlike IPVS the director's own route to the real server does not learn
 * the MTU (lb's tunnel checks the egress link's): each client is told in turn.  Answers share
 * the too-big answers' rate limit.  Counted in the connection's outgoing stats, as IPVS does. */
static __always_inline int lb_icmp_tunnel(struct xdp_md *ctx)
{
    struct lb_pkt pkt = {};
    __u32 counter = LB_CNT_MAX;
    if (lb_parse(ctx, &pkt, &counter) == LB_CONTINUE)
        return XDP_PASS;
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct lb_icmphdr *ic = pkt.icmp;
    if (!ic || (void *)(ic + 1) > data_end || lb_icmp_err_type(&pkt, ic) != LB_CONTINUE)
        return XDP_PASS;
    __u8 type = ic->type, code = ic->code;
    __be32 rest = ic->rest;
    __be32 osrc[4] = {}, odst[4] = {};
    void *inner;
    if (pkt.ip4) {
        struct iphdr *o = (void *)(ic + 1);
        if ((void *)(o + 1) > data_end || o->version != 4 || o->ihl < 5 || o->protocol != IPPROTO_IPIP ||
            (o->frag_off & bpf_htons(0x1fff)))
            return XDP_PASS;
        osrc[0] = o->saddr;
        odst[0] = o->daddr;
        inner = (void *)o + o->ihl * 4;
    } else {
        struct ipv6hdr *o = (void *)(ic + 1);
        if ((void *)(o + 1) > data_end || o->version != 6 || o->nexthdr != IPPROTO_IPV6 ||
            type == 4)            /* parameter problem */
            return XDP_PASS;
        __builtin_memcpy(osrc, &o->saddr, 16);
        __builtin_memcpy(odst, &o->daddr, 16);
        inner = o + 1;
    }
    struct lb_icmp_err e = {};
    if (lb_parse_quote(inner, data_end, pkt.ip6 != 0, &e) != LB_CONTINUE || !lb_addr_eq(osrc, pkt.daddr))
        return XDP_PASS;
    struct lb_conn_key key = {};
    __builtin_memcpy(key.saddr, e.saddr, 16);
    __builtin_memcpy(key.daddr, e.daddr, 16);
    key.sport = *e.sport_p;
    key.dport = *e.dport_p;
    key.proto = e.proto;
    key.family = pkt.family;
    int embryo;
    struct lb_conn *c = lb_conn_find(&key, &embryo);
    if (!c || lb_conn_expired(c, lb_now()))
        return XDP_PASS;
    __u32 svc_id = c->svc, real_id = c->real, ifindex = c->client_ifindex;
    struct lb_real *r = lb_reals.lookup(&real_id);
    if (!r || r->svc != svc_id || !r->family || r->fwd != LB_FWD_TUNNEL ||
        !lb_addr_eq((const __be32 *)r->addr, odst) || !lb_addr_eq((const __be32 *)r->tun_src, osrc))
        return XDP_PASS;
    __u32 mtu = 0, q;
    if (pkt.ip4) {
        if (type == LB_ICMP_DEST_UNREACH && code == 4) {          /* fragmentation needed */
            if (!e.ip4 || !(e.ip4->frag_off & bpf_htons(0x4000)))
                return XDP_PASS;
            mtu = bpf_ntohl(rest) & 0xffff;
            if (!mtu || (r->mtu && mtu > r->mtu))
                mtu = r->mtu;
            if (mtu > 68 + sizeof(struct iphdr))
                mtu -= sizeof(struct iphdr);
            rest = bpf_htonl(mtu);
        }
        if (!e.ip4)
            return XDP_PASS;
        q = (e.ip4->ihl * 4 + 8) & (LB_QUOTE_MAX - 4);           /* a multiple of 4, <= 68 */
    } else {
        if (type == 2) {                                          /* Packet Too Big */
            mtu = bpf_ntohl(rest);
            if (!mtu || (r->mtu && mtu > r->mtu))
                mtu = r->mtu;
            mtu = mtu > 1280 + sizeof(struct ipv6hdr) ? mtu - sizeof(struct ipv6hdr) : 1280;
            rest = bpf_htonl(mtu);
        }
        q = (void *)e.sport_p - inner;    /* the quote's headers; + 8 below (a multiple of 8) */
        asm volatile("" : "+r"(q));       /* a scalar before any arithmetic: else clang may
                                           * subtract the pointer from a scalar, refused */
        q += 8;
        if (q > LB_QUOTE_MAX)
            return XDP_PASS;
        q &= 2 * LB_QUOTE_MAX - 4;
    }
    if (!lb_icmp_allow()) {
        lb_count(LB_CNT_ICMP_LIMITED);
        return XDP_DROP;
    }
    __u8 cmac[ETH_ALEN], lmac[ETH_ALEN];
    __builtin_memcpy(cmac, c->client_mac, ETH_ALEN);
    __builtin_memcpy(lmac, c->local_mac, ETH_ALEN);
    __be32 client[4], vip[4];
    __builtin_memcpy(client, e.saddr, 16);
    __builtin_memcpy(vip, e.daddr, 16);
    /* the frame in place: [Ethernet][IP][ICMP][the quote], the head cut to the quote's start, the
     * tail to its end */
    int ip_hdr = pkt.ip4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
    int hdrs = sizeof(struct ethhdr) + ip_hdr + 8;
    int at = inner - data;                /* where the quote starts */
    asm volatile("" : "+r"(at));
    if (bpf_xdp_adjust_head(ctx, at - hdrs))
        goto fail;
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    if (bpf_xdp_adjust_tail(ctx, (int)(hdrs + q) - (int)(data_end - data)))
        goto fail;
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        goto fail;
    eth->h_proto = pkt.ip4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
    if (lb_icmp_answer(eth + 1, data_end, pkt.ip6 != 0, type, code, rest, q, vip, client) != LB_CONTINUE)
        goto fail;
    lb_count(LB_CNT_TUNNEL_ERROR);
    lb_stats_out(svc_id, real_id, ip_hdr + 8 + q);
    return lb_xmit(ctx, eth, cmac, lmac, ifindex);
fail:
    lb_count(LB_CNT_XMIT_FAILED);
    return XDP_DROP;
}

#endif
