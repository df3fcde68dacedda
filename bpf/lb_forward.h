/* Forwarding: DR rewrites MACs only; NAT rewrites the destination (requests) or the source
 * (replies) with incremental checksums; tunnel puts an outer IP header in front.  Next hops
 * were resolved by the control plane. */
#ifndef LB_FORWARD_H
#define LB_FORWARD_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_csum.h"
#include "lb_stats.h"
#include "lb_clock.h"

static __always_inline int lb_xmit(struct xdp_md *ctx, struct ethhdr *eth, const __u8 *dst,
                                   const __u8 *src, __u32 ifindex)
{
    __builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
    __builtin_memcpy(eth->h_source, src, ETH_ALEN);
    if (ifindex == ctx->ingress_ifindex)
        return XDP_TX;
    /* flags 0: XDP_ABORTED for an interface lb_tx_ports does not hold */
    if (lb_tx_ports.redirect_map(ifindex, 0) == XDP_REDIRECT)
        return XDP_REDIRECT;
    lb_count(LB_CNT_TX_UNMAPPED);
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

/* A new outer/answer IP header: TTL (hop limit) 64, no options, IPv4 with its id and checksum */
static __always_inline void lb_ip4_hdr(struct iphdr *o, __u8 tos, __u16 tot_len, __be16 frag_off, __be16 id,
                                       __u8 proto, __be32 saddr, __be32 daddr)
{
    o->version = 4;
    o->ihl = 5;
    o->tos = tos;
    o->tot_len = bpf_htons(tot_len);
    o->id = id;
    o->frag_off = frag_off;
    o->ttl = 64;
    o->protocol = proto;
    o->check = 0;
    o->saddr = saddr;
    o->daddr = daddr;
    o->check = lb_ip4_csum(o);
}

static __always_inline void lb_ip6_hdr(struct ipv6hdr *o, __be32 vtc_flow, __u16 payload_len, __u8 nexthdr,
                                       const void *saddr, const void *daddr)
{
    *(__be32 *)o = vtc_flow;
    o->payload_len = bpf_htons(payload_len);
    o->nexthdr = nexthdr;
    o->hop_limit = 64;
    __builtin_memcpy(&o->saddr, saddr, 16);
    __builtin_memcpy(&o->daddr, daddr, 16);
}

/* Tunnel: a packet that would not fit r->mtu once encapsulated is answered as IPVS's
 * ip_vs_tunnel_xmit answers it (icmp_send / icmpv6_send): "fragmentation needed" (IPv4 with DF)
 * or Packet Too Big (IPv6) from the VIP to the client, quoting the packet's IP header and the
 * first 8 bytes after it, back out where it came in; IPv4 without DF is dropped (the director
 * cannot fragment in XDP).  The frame is rebuilt in place: the head grows by the new headers,
 * the tail shrinks to the quote. */
#define LB_QUOTE_MAX 128          /* the quoted bytes: IP header (+ IPv6 extension headers) + 8 */
/* an answer never exceeds the smallest datagram every host must take (RFC 1812 4.3.2.3: 576;
 * RFC 4443 2.4(c): 1280) */
_Static_assert(sizeof(struct iphdr) + 8 + LB_QUOTE_MAX <= 576, "too-big answer over 576 bytes");
_Static_assert(sizeof(struct ipv6hdr) + 8 + LB_QUOTE_MAX <= 1280, "too-big answer over 1280 bytes");

/* The answers' rate limit, one token bucket for the director as the kernel's icmp_global_allow
 * (icmp_msgs_per_sec, icmp_msgs_burst): without it spoofed large packets would make the director
 * answer each one, a reflector.  GCRA: tat is when the bucket is full again; each answer moves it
 * on by the interval, and an answer is allowed while tat is at most burst - 1 intervals ahead.
 * Unlocked: two CPUs may both take the last token. */
static __always_inline int lb_icmp_allow(void)
{
    __u32 zero = 0, gi = LB_G_ICMP_INTERVAL, gb = LB_G_ICMP_BURST;
    __u32 *iv = lb_globals.lookup(&gi);
    __u32 *bu = lb_globals.lookup(&gb);
    struct lb_icmp_bucket *b = lb_icmp_bucket.lookup(&zero);
    if (!iv || !bu || !b || *iv == LB_NONE)
        return 0;
    __u64 interval = *iv ? *iv : LB_ICMP_INTERVAL_DEFAULT;
    __u64 burst = *bu ? *bu : LB_ICMP_BURST_DEFAULT;
    __u64 now = bpf_ktime_get_ns();
    __u64 tat = b->tat_ns;
    if (tat < now)
        tat = now;
    if (tat - now > (burst - 1) * interval)
        return 0;
    b->tat_ns = tat + interval;
    return 1;
}

/* Whether a packet too big for the tunnel gets an answer: never an ICMP error about an ICMP
 * error (RFC 1122 3.2.2, RFC 4443 2.4(e); the tunnel carries ICMP only as relayed errors), not
 * when `may` is 0 (IPv4 without DF: IPVS would fragment, XDP cannot), and only within the rate
 * limit.  Either way the packet is dropped, counted. */
static __always_inline int lb_too_big_answer(struct xdp_md *ctx, struct lb_pkt *pkt, int may)
{
    if (pkt->proto == IPPROTO_ICMP || pkt->proto == IPPROTO_ICMPV6) {
        lb_count(LB_CNT_TOO_BIG_UNANSWERED);
        return 0;
    }
    /* "too big" by an IP length past the frame: a packet the kernel's ip_rcv / ipv6_rcv drops,
     * which IPVS never answers (else a 60-byte frame claiming 64 KiB draws an answer) */
    void *l3 = pkt->ip4 ? (void *)pkt->ip4 : (void *)pkt->ip6;
    if ((__u64)(l3 - (void *)(long)ctx->data) + pkt->len > (__u64)(ctx->data_end - ctx->data)) {
        lb_count(LB_CNT_TOO_BIG_UNANSWERED);
        return 0;
    }
    if (!may)
        return 0;
    if (!lb_icmp_allow()) {
        lb_count(LB_CNT_ICMP_LIMITED);
        return 0;
    }
    return 1;
}

/* One's complement sum (unfolded) of len bytes at p (len a multiple of 4, at most 8 +
 * LB_QUOTE_MAX), each word bounds-checked: the verifier cannot size a helper's access by a
 * length the packet itself decided.  LB_CONTINUE, or XDP_DROP past the end. */
static __always_inline int lb_csum_words(__u8 *p, __u32 len, void *data_end, __u32 *sum)
{
#pragma unroll
    for (int i = 0; i < (8 + LB_QUOTE_MAX) / 4; i++) {
        if ((__u32)i * 4 >= len)
            break;
        __u16 *w = (__u16 *)(p + i * 4);
        if ((void *)(w + 2) > data_end)
            return XDP_DROP;
        *sum += w[0];
        *sum += w[1];
    }
    return LB_CONTINUE;
}

/* Turn the frame into [Ethernet back to the client][its VLAN tag, if it came with one][an IP
 * header of ip_hdr bytes][an 8-byte ICMP header][the first quote bytes of the packet's IP header
 * and what follows], in place: the head grows, the tail is cut.  l2: where the packet's IP header
 * is (14, or 18 behind a tag: the answer goes back on the client's VLAN, as the kernel's
 * icmp_send would send it from the VLAN device).  Returns where the new IP header goes (the
 * Ethernet header and tag written, the IP and ICMP headers within the packet), or NULL. */
static __always_inline void *lb_reframe_reply(struct xdp_md *ctx, int l2, int ip_hdr, __u32 quote,
                                             const __u8 *cmac, const __u8 *lmac, __be16 proto)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    __be16 tpid = 0, tci = 0;
    int tag = 0;
    if (l2 > (int)sizeof(struct ethhdr)) {
        struct lb_vlan_hdr *in = data + sizeof(struct ethhdr);
        if ((void *)(in + 1) > data_end)
            return 0;
        tpid = ((struct ethhdr *)data)->h_proto;
        tci = in->tci;
        tag = sizeof(*in);
    }
    int hdrs = sizeof(struct ethhdr) + tag + ip_hdr + 8;
    if (bpf_xdp_adjust_head(ctx, l2 - hdrs))
        return 0;
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    if (bpf_xdp_adjust_tail(ctx, (int)(hdrs + quote) - (int)(data_end - data)))
        return 0;
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if (data + sizeof(struct ethhdr) + ip_hdr + 8 > data_end)
        return 0;
    __builtin_memcpy(eth->h_dest, cmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, lmac, ETH_ALEN);
    if (!tag) {
        eth->h_proto = proto;
        return eth + 1;
    }
    struct lb_vlan_hdr *vh = (void *)(eth + 1);
    if (data + sizeof(struct ethhdr) + sizeof(*vh) + ip_hdr + 8 > data_end)
        return 0;
    eth->h_proto = tpid;
    vh->tci = tci;
    vh->proto = proto;
    return vh + 1;
}

/* An ICMP answer's IP and ICMP headers in front of a quote of `quote` bytes already in place
 * (iph: where the IP header goes, the ICMP header and the quote after it), from src to dst: type,
 * code, the header's second word, the checksum over the ICMP message (and IPv6's pseudo header).
 * LB_CONTINUE, or XDP_DROP when the quote is not within the packet.  The too-big answers and the
 * relayed tunnel errors (lb_icmp_tunnel) share it; v6 is a constant where it is inlined. */
static __always_inline int lb_icmp_answer(void *iph, void *data_end, int v6, __u8 type, __u8 code,
                                          __be32 rest, __u32 quote, const __be32 *src, const __be32 *dst)
{
    __u8 *icmp = iph + (v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
    if ((void *)(icmp + 8) > data_end)
        return XDP_DROP;
    icmp[0] = type;
    icmp[1] = code;
    *(__u16 *)(icmp + 2) = 0;
    *(__be32 *)(icmp + 4) = rest;
    __u32 sum = 0;
    if (lb_csum_words(icmp, 8 + quote, data_end, &sum) != LB_CONTINUE)
        return XDP_DROP;
    if (!v6) {
        lb_ip4_hdr(iph, 0, sizeof(struct iphdr) + 8 + quote, 0, 0, IPPROTO_ICMP, src[0], dst[0]);
    } else {
        struct ipv6hdr *o = iph;
        lb_ip6_hdr(o, bpf_htonl(0x60000000), 8 + quote, IPPROTO_ICMPV6, src, dst);
        __u16 *a = (__u16 *)&o->saddr;   /* the pseudo header: both addresses, length, next header */
#pragma unroll
        for (int i = 0; i < 16; i++)
            sum += a[i];
        sum += bpf_htons(8 + quote) + bpf_htons(IPPROTO_ICMPV6);
    }
    *(__u16 *)(icmp + 2) = ~lb_csum_fold(sum);
    return LB_CONTINUE;
}

static __always_inline int lb_too_big4(struct xdp_md *ctx, struct lb_pkt *pkt, __u32 mtu)
{
    struct iphdr *ip = pkt->ip4;
    if (!lb_too_big_answer(ctx, pkt, ip->frag_off & bpf_htons(0x4000)))
        return XDP_DROP;
    void *data = (void *)(long)ctx->data;
    int l2 = (void *)ip - data;
    __u32 quote = (ip->ihl * 4 + 8) & (LB_QUOTE_MAX - 4);   /* a multiple of 4, <= 68 */
    __u8 cmac[ETH_ALEN], lmac[ETH_ALEN];
    __builtin_memcpy(cmac, pkt->eth->h_source, ETH_ALEN);
    __builtin_memcpy(lmac, pkt->eth->h_dest, ETH_ALEN);
    __be32 vip = ip->daddr, client = ip->saddr;
    struct iphdr *o = lb_reframe_reply(ctx, l2, sizeof(*o), quote, cmac, lmac, bpf_htons(ETH_P_IP));
    if (!o) {
        lb_count(LB_CNT_XMIT_FAILED);
        return XDP_DROP;
    }
    if (lb_icmp_answer(o, (void *)(long)ctx->data_end, 0, 3, 4,   /* fragmentation needed */
                       bpf_htonl(mtu & 0xffff), quote, &vip, &client) != LB_CONTINUE) {
        lb_count(LB_CNT_XMIT_FAILED);
        return XDP_DROP;
    }
    return XDP_TX;
}

static __always_inline int lb_too_big6(struct xdp_md *ctx, struct lb_pkt *pkt, __u32 mtu)
{
    struct ipv6hdr *ip = pkt->ip6;
    if (!lb_too_big_answer(ctx, pkt, 1))
        return XDP_DROP;
    void *data = (void *)(long)ctx->data;
    int l2 = (void *)ip - data;
    /* the IPv6 header, its extension headers and 8 bytes of the transport header (a multiple
     * of 8); longer extension headers than the quote holds: no answer (l4off, not sport_p: a
     * later fragment's program reaches here on a path it never takes, without a sport_p) */
    __u32 quote = pkt->l4off - l2 + 8;
    if (quote > LB_QUOTE_MAX) {
        lb_count(LB_CNT_TOO_BIG_UNANSWERED);
        return XDP_DROP;
    }
    quote &= 2 * LB_QUOTE_MAX - 4;   /* no change (a multiple of 8, at most 128): for the verifier */
    __u8 cmac[ETH_ALEN], lmac[ETH_ALEN];
    __builtin_memcpy(cmac, pkt->eth->h_source, ETH_ALEN);
    __builtin_memcpy(lmac, pkt->eth->h_dest, ETH_ALEN);
    __u32 vip[4], client[4];
    __builtin_memcpy(vip, pkt->daddr, 16);
    __builtin_memcpy(client, pkt->saddr, 16);
    struct ipv6hdr *o = lb_reframe_reply(ctx, l2, sizeof(*o), quote, cmac, lmac, bpf_htons(ETH_P_IPV6));
    if (!o) {
        lb_count(LB_CNT_XMIT_FAILED);
        return XDP_DROP;
    }
    if (lb_icmp_answer(o, (void *)(long)ctx->data_end, 1, 2, 0,   /* Packet Too Big */
                       bpf_htonl(mtu), quote, vip, client) != LB_CONTINUE) {
        lb_count(LB_CNT_XMIT_FAILED);
        return XDP_DROP;
    }
    return XDP_TX;
}

static __always_inline int lb_tunnel_xmit(struct xdp_md *ctx, struct lb_pkt *pkt, struct lb_real *r)
{
    void *data = (void *)(long)ctx->data;
    int l2;
    if (pkt->ip6) {
        if (r->mtu && pkt->len + sizeof(struct ipv6hdr) > r->mtu) {
            lb_count(LB_CNT_TOO_BIG);
            return lb_too_big6(ctx, pkt, r->mtu - sizeof(struct ipv6hdr));
        }
        l2 = (void *)pkt->ip6 - data;
        __u32 vtc = *(__be32 *)pkt->ip6 & bpf_htonl(0x0ff00000);   /* inner traffic class */
        __u16 plen = pkt->len;                                     /* inner header + payload */
        if (bpf_xdp_adjust_head(ctx, l2 - (int)sizeof(struct ethhdr) - (int)sizeof(struct ipv6hdr))) {
            lb_count(LB_CNT_XMIT_FAILED);
            return XDP_DROP;
        }
        data = (void *)(long)ctx->data;
        void *data_end = (void *)(long)ctx->data_end;
        struct ethhdr *eth = data;
        struct ipv6hdr *o = (void *)(eth + 1);
        if ((void *)(o + 1) > data_end) {
            lb_count(LB_CNT_XMIT_FAILED);
            return XDP_DROP;
        }
        eth->h_proto = bpf_htons(ETH_P_IPV6);
        lb_ip6_hdr(o, bpf_htonl(0x60000000) | vtc, plen, IPPROTO_IPV6, r->tun_src, r->addr);
        return lb_xmit(ctx, eth, r->mac, r->src_mac, r->ifindex);
    }
    if (!pkt->ip4) {
        lb_count(LB_CNT_XMIT_FAILED);
        return XDP_DROP;
    }
    if (r->mtu && pkt->len + sizeof(struct iphdr) > r->mtu) {
        lb_count(LB_CNT_TOO_BIG);
        return lb_too_big4(ctx, pkt, r->mtu - sizeof(struct iphdr));
    }
    l2 = (void *)pkt->ip4 - data;
    __u8 tos = pkt->ip4->tos;
    __be16 df = pkt->ip4->frag_off & bpf_htons(0x4000);               /* IP_DF, as IPVS copies it */
    /* without DF the outer packet may be fragmented on the way: it needs an id of its own
     * (RFC 6864), where IPVS's ip_select_ident picks one; the inner packet's is one already,
     * told apart by the offset for each fragment of one datagram (lb_frag.h) */
    __be16 id = df ? 0 : pkt->ip4->id ^ (pkt->ip4->frag_off & bpf_htons(0x1fff));
    __u16 len = pkt->len;
    if (bpf_xdp_adjust_head(ctx, l2 - (int)sizeof(struct ethhdr) - (int)sizeof(struct iphdr))) {
        lb_count(LB_CNT_XMIT_FAILED);
        return XDP_DROP;
    }
    data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *o = (void *)(eth + 1);
    if ((void *)(o + 1) > data_end) {
        lb_count(LB_CNT_XMIT_FAILED);
        return XDP_DROP;
    }
    eth->h_proto = bpf_htons(ETH_P_IP);
    lb_ip4_hdr(o, tos, len + sizeof(*o), df, id, IPPROTO_IPIP, *(__be32 *)r->tun_src, *(__be32 *)r->addr);
    return lb_xmit(ctx, eth, r->mac, r->src_mac, r->ifindex);
}

/* A partial checksum (tx offload on a veth: lb_csum.h) completed before the frame leaves its
 * skb behind, and before NAT's incremental updates or a tunnel's header: counted, and one too
 * long to complete counted apart (sent as it is).  Only in the packets lb forwards: one it
 * passes keeps its skb, and the kernel, which may route it on, completes the sum itself.  An
 * IPv6 UDP datagram without a checksum gets one too (lb_csum_complete), counted apart. */
static __always_inline void lb_csum_finish(struct xdp_md *ctx, struct lb_pkt *pkt)
{
    int done = lb_csum_complete(ctx, pkt);
    if (done == 1)
        lb_count(LB_CNT_CSUM_COMPLETED);
    else if (done == 2)
        lb_count(LB_CNT_UDP6_CSUM_FILLED);
    else if (done == -1)
        lb_count(LB_CNT_CSUM_UNCOMPLETED);
    else if (done == -2)
        pkt->l4csum = 0;          /* no checksum still: NAT's updates leave its 0 alone */
}

/* lb_frags4's key of an IPv4 fragment (lb_frag.h) */
static __always_inline void lb_frag_key_of(struct lb_frag_key4 *fk, struct lb_pkt *pkt, __u8 dir)
{
    fk->saddr = pkt->saddr[0];
    fk->daddr = pkt->daddr[0];
    fk->id = pkt->ip4 ? pkt->ip4->id : 0;
    fk->proto = pkt->proto;
    fk->dir = dir;
}

/* lb_frags6's key of an IPv6 fragment, built in this CPU's lb_frag6_scratch (off the stack:
 * lb_xdp_public_full's is near the verifier's 512 bytes); 0 if the scratch is missing */
static __always_inline struct lb_frag6_note *lb_frag6_key(struct lb_pkt *pkt, __u8 dir)
{
    __u32 zero = 0;
    struct lb_frag6_note *n = lb_frag6_scratch.lookup(&zero);
    if (!n)
        return 0;
    __builtin_memcpy(n->key.saddr, pkt->saddr, 16);
    __builtin_memcpy(n->key.daddr, pkt->daddr, 16);
    n->key.id = pkt->frag_id;
    n->key.proto = pkt->proto;
    n->key.dir = dir;
    n->key.pad = 0;
    return n;
}

/* An IPv6 first fragment on its way (lb_xdp_frag6_*): its datagram's ports, for the fragments
 * after it; the entry built in lb_frag6_scratch, off the stack */
static __always_inline void lb_frag_note6(struct lb_pkt *pkt, __u8 dir)
{
    struct lb_frag6_note *n = lb_frag6_key(pkt, dir);
    if (!n)
        return;
    n->frag.sport = *pkt->sport_p;
    n->frag.dport = *pkt->dport_p;
    n->frag.pad = 0;
    n->frag.ns = lb_now();
    lb_frags6.update(&n->key, &n->frag);
}

/* A first fragment on its way: its datagram's ports, for the fragments after it (lb_frag.h);
 * before any rewrite, as those fragments say the addresses */
static __always_inline void lb_frag_note(struct lb_pkt *pkt, __u8 dir)
{
    /* IPv4's: an IPv6 first fragment comes this way from lb_xdp_frag6_*, noted there
     * (lb_frag_note6, lb_flow.h) */
    if (__builtin_expect(pkt->frag != LB_FRAG_FIRST, 1) || !pkt->ip4)
        return;
    struct lb_frag_key4 fk;
    lb_frag_key_of(&fk, pkt, dir);
    struct lb_frag f = { .sport = *pkt->sport_p, .dport = *pkt->dport_p, .ns = lb_now() };
    lb_frags4.update(&fk, &f);
}

static __always_inline int lb_forward_to_real(struct xdp_md *ctx, struct lb_pkt *pkt,
                                              struct lb_real *r)
{
    lb_frag_note(pkt, 0);
    lb_csum_finish(ctx, pkt);     /* first: NAT's updates and a tunnel's outer header need it whole */
    if (r->fwd == LB_FWD_DR)      /* the common case first */
        return lb_xmit(ctx, pkt->eth, r->mac, r->src_mac, r->ifindex);
    if (r->fwd == LB_FWD_NAT) {
        lb_nat_daddr(pkt, r->addr, r->port ? r->port : *pkt->dport_p);   /* port 0 keeps the packet's */
        return lb_xmit(ctx, pkt->eth, r->mac, r->src_mac, r->ifindex);
    }
    if (__builtin_expect(r->fwd == LB_FWD_TUNNEL, 0))
        return lb_tunnel_xmit(ctx, pkt, r);
    lb_count(LB_CNT_XMIT_FAILED);  /* the control plane never programs other methods */
    return XDP_DROP;
}

/* NAT reply: source back to the VIP:port the client used, out the way its packets came in */
static __always_inline int lb_forward_to_client(struct xdp_md *ctx, struct lb_pkt *pkt,
                                                struct lb_conn *c)
{
    lb_frag_note(pkt, 1);
    lb_csum_finish(ctx, pkt);
    lb_nat_saddr(pkt, c->vaddr, c->vport);
    return lb_xmit(ctx, pkt->eth, c->client_mac, c->local_mac, c->client_ifindex);
}

#endif
