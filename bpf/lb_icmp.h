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
    if (lb_parse_icmp_err(ctx, pkt, &e) != LB_CONTINUE || !lb_addr_eq(e.saddr, pkt->daddr))
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
    if (lb_parse_icmp_err(ctx, pkt, &e) != LB_CONTINUE || !lb_addr_eq(e.saddr, pkt->daddr))
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

#endif
