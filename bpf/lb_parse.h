/* Defensive parsing: Ethernet (+ one 802.1Q/802.1ad tag), IPv4 (with options) or IPv6 (with
 * hop-by-hop, routing and destination options headers), TCP/UDP.  Anything we do not understand
 * (ARP, ICMPv6 neighbour discovery, other extension headers) goes back to the kernel untouched
 * (XDP_PASS); TCP/UDP fragments, IPv4 or IPv6, follow their datagram (lb_frag.h).  ICMP
 * and ICMPv6 are XDP_PASS too, with pkt->proto and pkt->icmp set: lb_icmp.h looks at them
 * (lb_parse_icmp_err below) only on that branch. */
#ifndef LB_PARSE_H
#define LB_PARSE_H

/* uapi/ headers only: the kernel-internal linux/ip.h and friends pull in most of the kernel
 * (skbuff.h, ...), a second and a half of every compile, for the same structs */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/in.h>
#include "lb_consts.h"

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

struct lb_vlan_hdr {
    __be16 tci;
    __be16 proto;
};

struct lb_pkt {
    struct ethhdr *eth;
    struct iphdr *ip4;            /* exactly one of ip4 and ip6 is set */
    struct ipv6hdr *ip6;
    union {
        __be16 *sport_p;          /* points into the L4 header */
        void *icmp;               /* ICMP/ICMPv6 (lb_parse said XDP_PASS): its header, unchecked */
    };
    __be16 *dport_p;
    __sum16 *l4csum;              /* NULL: no checksum to fix (UDP with checksum 0) */
    __be32 saddr[4];              /* copies of the addresses, 16 bytes for both families (IPv4 */
    __be32 daddr[4];              /* in word 0, the rest 0): keys and hashes need no branch */
    __u32 len;                    /* IP total length, for byte counters */
    __u16 l4off;                  /* TCP/UDP: where the L4 header starts in the frame ... */
    __u16 l4len;                  /* ... and the segment's length by the IP header (lb_csum.h) */
    __u8 proto;
    __u8 tcp_flags;               /* TCP: the byte holding FIN SYN RST PSH ACK URG */
    __u8 family;                  /* LB_AF_INET or LB_AF_INET6 */
    __u8 frag;                    /* LB_FRAG_FIRST or LB_FRAG_LATER (lb_frag.h), else 0 */
    __be32 frag_id;               /* IPv6 fragments: the fragment header's identification */
};

struct lb_ipv6_frag {             /* the IPv6 fragment header */
    __u8 nexthdr;
    __u8 reserved;
    __be16 frag_off;              /* the offset in 8-byte units, 2 bits reserved, M */
    __be32 id;
};

/* IPv6 extension headers walked before the transport header; more is passed to the kernel */
#ifndef LB_IPV6_EXT_MAX
#define LB_IPV6_EXT_MAX 4
#endif

struct lb_ipv6_opt {              /* hop-by-hop, routing and destination options share this start */
    __u8 nexthdr;
    __u8 hdrlen;                  /* in 8-byte units, not counting the first 8 bytes */
    __u8 type;                    /* a routing header's: its type ... */
    __u8 segments_left;           /* ... and the hops still to go (every header is 8 bytes or more) */
};

/* Step *cur over up to LB_IPV6_EXT_MAX hop-by-hop / routing / destination options headers
 * (those IPVS's ipv6_find_hdr steps over too), *nh following; with frag (a constant at each
 * call: an ICMP error's quote) also over the fragment header of a first fragment (offset 0: its
 * ports follow), as ipv6_find_hdr does.  LB_CONTINUE, or XDP_PASS when a header runs past the
 * packet, when a routing header has segments left (the destination address is a hop on the
 * packet's way, not the final one its checksum covers, and the kernel routes it on), or (frag)
 * when a fragment header is a later fragment's.  (Gathered as data and tested once after the
 * loop: a branch in it takes the verifier past its budget.) */
static __always_inline int lb_ipv6_skip_ext_frag(void **cur, void *data_end, __u8 *nh, int frag)
{
    __u8 hops_left = 0;
#pragma unroll
    for (int i = 0; i < LB_IPV6_EXT_MAX; i++) {
        if (*nh != IPPROTO_HOPOPTS && *nh != IPPROTO_ROUTING && *nh != IPPROTO_DSTOPTS &&
            (!frag || *nh != IPPROTO_FRAGMENT))
            break;
        struct lb_ipv6_opt *oh = *cur;
        if ((void *)(oh + 1) > data_end)
            return XDP_PASS;
        hops_left |= oh->segments_left & -(__u8)(*nh == IPPROTO_ROUTING);
        __u32 units = oh->hdrlen;
        if (frag) {
            /* a fragment header is 8 bytes (its second byte is reserved), and its offset
             * (bytes 2-3 but for the 2 reserved bits and M) must be 0.  Its test as data too
             * (x ^ 44 is 0 only for it): a compare would split the verifier's walk in two at
             * each header, through everything after. */
            __u32 x = *nh ^ IPPROTO_FRAGMENT;
            asm volatile("" : "+r"(x));
            __u32 is_frag = -((x - 1) >> 31);   /* all ones for a fragment header, else 0 */
            hops_left |= (oh->type | (oh->segments_left & 0xf8)) & is_frag;
            units &= ~is_frag;
        }
        *nh = oh->nexthdr;
        *cur += (units + 1) * 8;
    }
    return hops_left ? XDP_PASS : LB_CONTINUE;
}

static __always_inline int lb_ipv6_skip_ext(void **cur, void *data_end, __u8 *nh)
{
    return lb_ipv6_skip_ext_frag(cur, data_end, nh, 0);
}

#define LB_TCP_FIN 0x01
#define LB_TCP_SYN 0x02
#define LB_TCP_RST 0x04
#define LB_TCP_ACK 0x10

/* TCP or UDP at cur (l3: the IP header): ports, checksum and flags into pkt.  LB_CONTINUE or
 * XDP_PASS. */
static __always_inline int lb_parse_l4(void *data, void *l3, void *cur, void *data_end, struct lb_pkt *pkt,
                                       __u8 l4proto)
{
    pkt->proto = l4proto;
    pkt->l4off = cur - data;
    pkt->l4len = pkt->len - (__u32)(cur - l3);
    if (l4proto == IPPROTO_TCP) {
        struct tcphdr *th = cur;
        if ((void *)(th + 1) > data_end)
            return XDP_PASS;
        pkt->sport_p = &th->source;
        pkt->dport_p = &th->dest;
        pkt->l4csum = &th->check;
        pkt->tcp_flags = ((__u8 *)th)[13];
    } else if (l4proto == IPPROTO_UDP) {
        struct udphdr *uh = cur;
        if ((void *)(uh + 1) > data_end)
            return XDP_PASS;
        pkt->sport_p = &uh->source;
        pkt->dport_p = &uh->dest;
        /* 0: no checksum, valid in IPv4; in IPv6 (a datagram, not a fragment) lb_csum_complete
         * gives it one before it is forwarded */
        pkt->l4csum = uh->check || (pkt->family == LB_AF_INET6 && !pkt->frag) ? &uh->check : 0;
    } else {
        if (l4proto == IPPROTO_ICMP || l4proto == IPPROTO_ICMPV6)
            pkt->icmp = cur;      /* for lb_icmp.h; the caller sees XDP_PASS as before */
        return XDP_PASS;
    }
    return LB_CONTINUE;
}


/* IPv6 at cur: the fixed header, then up to LB_IPV6_EXT_MAX extension headers IPVS's own
 * ipv6_find_hdr would step over too, then a fragment header whose datagram is TCP or UDP (as
 * IPv4's, lb_frag.h: the first fragment parsed on to its ports, a later one XDP_PASS with
 * pkt->frag set); anything else is the kernel's. */
static __always_inline int lb_parse6(void *data, void *cur, void *data_end, struct lb_pkt *pkt, __u32 *counter,
                                     int frag_deep)
{
    struct ipv6hdr *ip6 = cur;
    if ((void *)(ip6 + 1) > data_end)
        return XDP_PASS;
    if (ip6->version != 6)
        return XDP_PASS;
    pkt->ip6 = ip6;
    pkt->family = LB_AF_INET6;
    __builtin_memcpy(pkt->saddr, &ip6->saddr, 16);
    __builtin_memcpy(pkt->daddr, &ip6->daddr, 16);
    pkt->len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
    __u8 nh = ip6->nexthdr;
    cur = ip6 + 1;
    if (lb_ipv6_skip_ext(&cur, data_end, &nh) != LB_CONTINUE)
        return XDP_PASS;
    if (nh == IPPROTO_FRAGMENT) {
        struct lb_ipv6_frag *fh = cur;
        *counter = LB_CNT_FRAGMENT;
        if ((void *)(fh + 1) > data_end)
            return XDP_PASS;
        nh = fh->nexthdr;
        if (nh != IPPROTO_TCP && nh != IPPROTO_UDP)
            return XDP_PASS;
        /* every IPv6 fragment, the first too, goes on in lb_xdp_frag6_* (lb_frag.h), which
         * parses it again, the first on to its ports (frag_deep): parsed here, its path through
         * lb_xdp_public took the verifier past its million instructions */
        *counter = LB_CNT_MAX;            /* counted where it is forwarded or passed */
        pkt->frag_id = fh->id;
        pkt->proto = nh;
        pkt->frag = fh->frag_off & bpf_htons(0xfff8) ? LB_FRAG_LATER : LB_FRAG_FIRST;
        if (!frag_deep || pkt->frag == LB_FRAG_LATER)
            return XDP_PASS;
        cur = fh + 1;                     /* (a first fragment, or an atomic one: M clear) */
    }
    return lb_parse_l4(data, ip6, cur, data_end, pkt, nh);
}

/* The EtherType after eth and one 802.1Q/802.1ad tag, *cur just past them; 0 when the tag is
 * cut short.  eth is checked by the caller. */
static __always_inline __be16 lb_eth_proto(struct ethhdr *eth, void *data_end, void **cur)
{
    __be16 proto = eth->h_proto;
    *cur = eth + 1;
    if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
        struct lb_vlan_hdr *vh = *cur;
        if ((void *)(vh + 1) > data_end)
            return 0;
        proto = vh->proto;
        *cur = vh + 1;
    }
    return proto;
}

/* Returns LB_CONTINUE with pkt filled, or XDP_PASS (frag_deep: an IPv6 first fragment parsed
 * on to its ports, for lb_xdp_frag6_* alone). */
static __always_inline int lb_parse_frag(struct xdp_md *ctx, struct lb_pkt *pkt, __u32 *counter, int frag_deep)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    void *cur = data;
    __be16 proto;

    if ((void *)(eth + 1) > data_end)
        return XDP_PASS;
    pkt->eth = eth;
    proto = lb_eth_proto(eth, data_end, &cur);
    if (proto == bpf_htons(ETH_P_IPV6))
        return lb_parse6(data, cur, data_end, pkt, counter, frag_deep);
    if (proto != bpf_htons(ETH_P_IP))
        return XDP_PASS;            /* ARP, anything else */

    struct iphdr *ip = cur;
    if ((void *)(ip + 1) > data_end)
        return XDP_PASS;
    if (ip->version != 4 || ip->ihl < 5)
        return XDP_PASS;
    __u32 ihl = ip->ihl * 4;
    if (cur + ihl > data_end)
        return XDP_PASS;
    pkt->ip4 = ip;
    pkt->family = LB_AF_INET;
    pkt->saddr[0] = ip->saddr;
    pkt->daddr[0] = ip->daddr;
    pkt->len = bpf_ntohs(ip->tot_len);   /* IPVS counts IP bytes, not frames */
    if (ip->frag_off & bpf_htons(0x3fff)) {
        /* A TCP or UDP fragment follows its datagram (lb_frag.h): the first carries the ports and
         * goes the way of any packet of its flow, the rest (no L4 header: XDP_PASS here, with
         * pkt->frag set) the way the first went.  Other fragments are the kernel's. */
        *counter = LB_CNT_FRAGMENT;
        if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
            return XDP_PASS;
        if (ip->frag_off & bpf_htons(0x1fff)) {
            *counter = LB_CNT_MAX;        /* counted where it is forwarded or passed */
            pkt->frag = LB_FRAG_LATER;
            pkt->proto = ip->protocol;
            return XDP_PASS;
        }
        pkt->frag = LB_FRAG_FIRST;
    }
    return lb_parse_l4(data, ip, cur + ihl, data_end, pkt, ip->protocol);
}

static __always_inline int lb_parse(struct xdp_md *ctx, struct lb_pkt *pkt, __u32 *counter)
{
    return lb_parse_frag(ctx, pkt, counter, 0);
}

/* What the kernel drops before IPVS would see it, so that no connection is made for it: an IP
 * length past the frame or short of the L4 header (ip_rcv, ipv6_rcv; IPVS for TCP's), a martian source (0/8,
 * 127/8, multicast, class E and broadcast; ::, ::1, ff00::/8: ip_route_input, ipv6_rcv).  Asked
 * only before a new connection (an established flow's packets never came from such a source,
 * and its entry's lookup is the hot path). */
static __always_inline int lb_not_routable(struct xdp_md *ctx, struct lb_pkt *pkt)
{
    /* l4len: the IP length less the headers (wrapped past 64K when it is shorter than them);
     * TCP's header is 20 bytes (IPVS's tcp_conn_schedule drops a segment without them), UDP's 8 */
    __u32 frame = ctx->data_end - ctx->data;
    __u32 least = pkt->proto == IPPROTO_TCP ? 20 : 8;
    if (pkt->l4len < least || pkt->l4off + pkt->l4len > frame)
        return 1;
    __be32 *s = pkt->saddr;
    if (pkt->family == LB_AF_INET) {
        __u32 net = bpf_ntohl(s[0]) >> 24;
        return net == 0 || net == 127 || net >= 224;
    }
    /* IPv6: multicast, ::, ::1, and an IPv4-mapped ::ffff:0:0/96 (ip6_rcv_core drops it since
     * Linux 5.3: RFC 4291 2.5.5.2, such an address never appears on the wire) */
    return ((__u8 *)s)[0] == 0xff || ((s[0] | s[1] | s[2]) == 0 && (s[3] == 0 || s[3] == bpf_htonl(1))) ||
           ((s[0] | s[1]) == 0 && s[2] == bpf_htonl(0xffff));
}

/* ---- ICMP and ICMPv6 errors (only on the branch that lb_parse left with an ICMP pkt->proto) ---- */

#define LB_ICMP_DEST_UNREACH 3
#define LB_ICMP_SOURCE_QUENCH 4
#define LB_ICMP_TIME_EXCEEDED 11
#define LB_ICMPV6_INFOMSG_MASK 0x80   /* ICMPv6 types from 128 up are informational */

struct lb_icmphdr {               /* the first 8 bytes, the same in ICMP and ICMPv6 */
    __u8 type;
    __u8 code;
    __sum16 check;
    __be32 rest;                  /* MTU (frag needed, packet too big), pointer, unused */
};

/* An ICMP error and the packet it quotes */
struct lb_icmp_err {
    struct lb_icmphdr *icmp;
    struct iphdr *ip4;            /* the quoted IP header: exactly one of ip4 and ip6 is set */
    struct ipv6hdr *ip6;
    __be16 *sport_p;              /* its ports (8 bytes of its TCP/UDP header are present) */
    __be16 *dport_p;
    __be32 saddr[4];              /* copies of its addresses, 16 bytes as in lb_pkt */
    __be32 daddr[4];
    __u8 proto;                   /* IPPROTO_TCP or IPPROTO_UDP */
};

/* The quoted packet at cur (an IPv4 header, or IPv6 when v6) on to its ports: *e filled
 * (its icmp left as it was) and LB_CONTINUE, or XDP_PASS.  Also an IPIP quote's inner packet
 * (lb_icmp_tunnel). */
static __always_inline int lb_parse_quote(void *cur, void *data_end, int v6, struct lb_icmp_err *e)
{
    __u8 nh;
    if (!v6) {
        struct iphdr *ip = cur;
        if ((void *)(ip + 1) > data_end)
            return XDP_PASS;
        if (ip->version != 4 || ip->ihl < 5 || (ip->frag_off & bpf_htons(0x1fff)))
            return XDP_PASS;      /* a later fragment (a first one, MF alone, has its ports) */
        e->ip4 = ip;
        e->saddr[0] = ip->saddr;
        e->daddr[0] = ip->daddr;
        nh = ip->protocol;
        cur += ip->ihl * 4;
    } else {
        struct ipv6hdr *ip6 = cur;
        if ((void *)(ip6 + 1) > data_end)
            return XDP_PASS;
        if (ip6->version != 6)
            return XDP_PASS;
        e->ip6 = ip6;
        __builtin_memcpy(e->saddr, &ip6->saddr, 16);
        __builtin_memcpy(e->daddr, &ip6->daddr, 16);
        nh = ip6->nexthdr;
        cur = ip6 + 1;
        if (lb_ipv6_skip_ext_frag(&cur, data_end, &nh, 1) != LB_CONTINUE)
            return XDP_PASS;      /* also a later fragment's quote */
    }
    if (nh != IPPROTO_TCP && nh != IPPROTO_UDP)
        return XDP_PASS;          /* also more extension headers */
    __be16 *ports = cur;
    if (cur + 8 > data_end)
        return XDP_PASS;
    e->sport_p = ports;
    e->dport_p = ports + 1;
    e->proto = nh;
    return LB_CONTINUE;
}

/* The error types IPVS relays (ip_vs_in_icmp / ip_vs_out_icmp: destination unreachable, source
 * quench, time exceeded; ICMPv6: every error, types below 128): LB_CONTINUE, or XDP_PASS */
static __always_inline int lb_icmp_err_type(struct lb_pkt *pkt, struct lb_icmphdr *ic)
{
    if (pkt->ip4) {
        if (pkt->proto != IPPROTO_ICMP)
            return XDP_PASS;
        if (ic->type != LB_ICMP_DEST_UNREACH && ic->type != LB_ICMP_SOURCE_QUENCH &&
            ic->type != LB_ICMP_TIME_EXCEEDED)
            return XDP_PASS;
        return LB_CONTINUE;
    }
    if (pkt->ip6 && pkt->proto == IPPROTO_ICMPV6 && !(ic->type & LB_ICMPV6_INFOMSG_MASK))
        return LB_CONTINUE;
    return XDP_PASS;
}

/* An error of those types quoting a TCP or UDP packet of the same family, whole or the first
 * fragment of a datagram (IPv6: a fragment header of offset 0 after the extension headers), with
 * its ports: IPVS reads a first fragment's ports too, and a Packet Too Big about a real server's
 * reply in fragments (a large DNS answer over IPv6) must reach that real server.  A later
 * fragment has no ports.  LB_CONTINUE with *e filled, or XDP_PASS. */
static __always_inline int lb_parse_icmp_err(struct xdp_md *ctx, struct lb_pkt *pkt, struct lb_icmp_err *e)
{
    void *data_end = (void *)(long)ctx->data_end;
    struct lb_icmphdr *ic = pkt->icmp;
    if (!ic)                      /* another protocol (the verifier cannot tell from proto) */
        return XDP_PASS;
    if ((void *)(ic + 1) > data_end)
        return XDP_PASS;
    e->icmp = ic;
    if (lb_icmp_err_type(pkt, ic) != LB_CONTINUE)
        return XDP_PASS;
    return lb_parse_quote(ic + 1, data_end, pkt->ip6 != 0, e);
}
#endif
