/* Incremental checksum updates (RFC 1624).  Prefixed: the kernel headers bcc pulls in already
 * define csum_replace4 and friends. */
#ifndef LB_CSUM_H
#define LB_CSUM_H

#include "lb_parse.h"
#include "lb_maps.h"

static __always_inline __u16 lb_csum_fold(__u32 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)sum;
}

/* HC' = ~(~HC + ~m + m'), on 16-bit words in packet order */
static __always_inline void lb_csum_replace4(__u16 *sum, __u32 from, __u32 to)
{
    __u32 s = (__u16)~*sum;
    s += (~from & 0xffff) + (~from >> 16);
    s += (to & 0xffff) + (to >> 16);
    *sum = ~lb_csum_fold(s);
}

static __always_inline void lb_csum_replace2(__u16 *sum, __u16 from, __u16 to)
{
    __u32 s = (__u16)~*sum;
    s += (__u16)~from;
    s += to;
    *sum = ~lb_csum_fold(s);
}

/* UDP: 0 means "no checksum", so a computed 0 is sent as 0xffff (RFC 768) */
static __always_inline void lb_l4csum_fix_udp(__u16 *l4csum, __u8 proto)
{
    if (proto == IPPROTO_UDP && *l4csum == 0)
        *l4csum = 0xffff;
}

/* Rewrite one IPv4 address and one port, fixing the IP header's checksum at ipcsum and the L4
 * one at l4csum (0: none to fix, as an IPv4 UDP datagram's 0).  Pointers, not struct lb_pkt:
 * the short way (lb_fast.h), which parses no lb_pkt, rewrites with it too. */
static __always_inline void lb_rewrite4_at(__u16 *ipcsum, __u16 *l4csum, __u8 proto, __be32 *addr_p,
                                           __be32 new_addr, __be16 *port_p, __be16 new_port)
{
    __be32 old_addr = *addr_p;
    __be16 old_port = *port_p;

    *addr_p = new_addr;
    *port_p = new_port;
    lb_csum_replace4(ipcsum, old_addr, new_addr);
    if (l4csum) {
        lb_csum_replace4(l4csum, old_addr, new_addr);   /* pseudo header */
        lb_csum_replace2(l4csum, old_port, new_port);
        lb_l4csum_fix_udp(l4csum, proto);
    }
}

static __always_inline void lb_rewrite4(struct lb_pkt *pkt, __be32 *addr_p, __be32 new_addr,
                                        __be16 *port_p, __be16 new_port)
{
    lb_rewrite4_at((__u16 *)&pkt->ip4->check, (__u16 *)pkt->l4csum, pkt->proto, addr_p, new_addr,
                   port_p, new_port);
}

/* Rewrite one IPv6 address (addr_p: 4 words in the packet) and one port.  IPv6 has no header
 * checksum; the L4 checksum at l4csum (0: none) covers both through the pseudo header. */
static __always_inline void lb_rewrite6_at(__u16 *l4csum, __u8 proto, __be32 *addr_p, const __be32 *new_addr,
                                           __be16 *port_p, __be16 new_port)
{
    __be16 old_port = *port_p;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        __be32 old = addr_p[i], nw = new_addr[i];
        addr_p[i] = nw;
        if (l4csum)
            lb_csum_replace4(l4csum, old, nw);
    }
    *port_p = new_port;
    if (l4csum) {
        lb_csum_replace2(l4csum, old_port, new_port);
        lb_l4csum_fix_udp(l4csum, proto);
    }
}

static __always_inline void lb_rewrite6(struct lb_pkt *pkt, __be32 *addr_p, const __be32 *new_addr,
                                        __be16 *port_p, __be16 new_port)
{
    lb_rewrite6_at((__u16 *)pkt->l4csum, pkt->proto, addr_p, new_addr, port_p, new_port);
}

/* ---- partial checksums ----
 * A sender whose stack leaves the TCP/UDP checksum to the device (tx checksum offload: the
 * kernel's CHECKSUM_PARTIAL) puts only the pseudo header's sum in the field, folded and not
 * complemented, and the device completes it on the way out.  On a veth that never happens: the
 * peer's native XDP program gets the frame as it is, and a frame lb redirects or sends back
 * (XDP_TX) leaves its skb, and with it the note that the sum is partial, behind, so it arrives
 * with the pseudo header's sum as its checksum and the receiver drops it.  (A NIC never hands
 * XDP such a frame.)  So before lb forwards a segment it compares the field with the pseudo
 * header's sum and, when they are equal, completes the checksum as the device would
 * (skb_checksum_help): the segment's sum, the field as it is included, complemented.  A full
 * checksum that happens to equal the pseudo header's sum (1 in 65,536) comes out the same: the
 * segment then sums to the data's sum plus exactly that. */
static __always_inline __u16 lb_csum_fold64(__u64 s)
{
    s = (s & 0xffffffff) + (s >> 32);
    s = (s & 0xffffffff) + (s >> 32);
    return lb_csum_fold((__u32)s);
}

/* The pseudo header's sum, folded and not complemented: what a sender with tx offload leaves in
 * the L4 checksum field.  s and d: the addresses' words (one for IPv4, four for IPv6: v6). */
static __always_inline __u16 lb_csum_pseudo_of(const __be32 *s, const __be32 *d, int v6, __u8 proto,
                                               __u32 l4len)
{
    __u64 sum = (__u64)s[0] + d[0] + bpf_htons((__u16)proto) + bpf_htons((__u16)l4len);
    if (v6)
        sum += (__u64)s[1] + s[2] + s[3] + d[1] + d[2] + d[3];
    return lb_csum_fold64(sum);
}

static __always_inline __u16 lb_csum_pseudo(struct lb_pkt *pkt, __u32 l4len)
{
    return lb_csum_pseudo_of(pkt->saddr, pkt->daddr, pkt->family != LB_AF_INET, pkt->proto, l4len);
}


/* n bytes of the frame at off into the sum, through the per-CPU buffer: offsets the verifier
 * need not bound (a helper's argument), so every length is one walk of this code, where
 * packet pointers at variable offsets would make the verifier walk each split of the length
 * apart.  0 past the frame's end. */
static __always_inline int lb_csum_add(struct xdp_md *ctx, __u8 *buf, __u32 off, __u32 n, __u64 *sum)
{
    if (bpf_xdp_load_bytes(ctx, off, buf, n))
        return 0;
    *sum = bpf_csum_diff(0, 0, (__be32 *)buf, n, (__u32)*sum);
    return 1;
}

/* Complete a partial checksum.  1 if it was one and is now whole, 0 if it was not (or was a
 * whole one that looked partial), -1 if the segment runs past the frame or over LB_CSUM_CHUNKS
 * chunks (left as it is).
 *
 * An IPv6 UDP datagram without a checksum (0, which RFC 8200 has its receiver discard; Linux
 * does unless a tunnel's socket allows it) is given a whole one the same way, the pseudo
 * header's sum added to the segment's: 2, or -2 when it cannot be (left 0).  IPVS's NAT gives
 * it one (udp_dnat_handler and udp_snat_handler compute the sum in full when the field is 0),
 * and a datagram lb forwards by any method gets one here.  lb_parse_l4 points l4csum at such a
 * field (an IPv4 datagram's 0, valid there, it leaves alone). */
static __always_inline int lb_csum_complete(struct xdp_md *ctx, struct lb_pkt *pkt)
{
    if (!pkt->l4csum || pkt->frag)
        return 0;                 /* UDP without a checksum; a fragment (whose sum is whole: the
                                   * offload never fragments, and l4len is its own length) */
    __u32 len = pkt->l4len;
    __u16 pseudo = lb_csum_pseudo(pkt, len);
    int none = *pkt->l4csum == 0 && pkt->proto == IPPROTO_UDP;
    if (*pkt->l4csum != pseudo && !none)
        return 0;
    __u32 zero = 0;
    struct lb_csum_buf *cb = lb_csum_buf.lookup(&zero);
    if (!cb || len > LB_CSUM_CHUNK * LB_CSUM_CHUNKS)
        return none ? -2 : -1;
    __u8 *buf = cb->b;
    __u32 at = pkt->l4off;        /* the segment's first byte */
    __u64 sum = none ? pseudo : 0;
    __u32 done = 0;
    for (int i = 0; i < LB_CSUM_CHUNKS; i++) {
        if (done + LB_CSUM_CHUNK > len)   /* not len - done: the verifier must see it cannot wrap */
            break;
        if (!lb_csum_add(ctx, buf, at + done, LB_CSUM_CHUNK, &sum))
            return none ? -2 : -1;
        done += LB_CSUM_CHUNK;
    }
#pragma unroll
    for (__u32 n = LB_CSUM_CHUNK / 2; n >= 4; n /= 2) {
        if (done + n <= len) {
            if (!lb_csum_add(ctx, buf, at + done, n, &sum))
                return none ? -2 : -1;
            done += n;
        }
    }
    /* the last 0-3 bytes, as a 16-bit word and a byte in packet order (the odd byte padded
     * with a zero, as csum_partial does).  Constant sizes: a size argument the verifier must
     * know exactly would make it tell every length apart. */
    if (done + 2 <= len) {
        if (bpf_xdp_load_bytes(ctx, at + done, buf, 2))
            return none ? -2 : -1;
        sum += *(__u16 *)buf;
        done += 2;
    }
    if (done < len) {
        if (bpf_xdp_load_bytes(ctx, at + done, buf, 1))
            return none ? -2 : -1;
        sum += buf[0];
    }
    __u16 full = ~lb_csum_fold64(sum);
    if (pkt->proto == IPPROTO_UDP && full == 0)
        full = 0xffff;            /* RFC 768: 0 means "no checksum" */
    if (full == *pkt->l4csum)
        return 0;                 /* it was whole: one that only looked partial (never 0) */
    *pkt->l4csum = full;
    return none ? 2 : 1;
}

/* Write a 16-byte (IPv6) address into the packet, folding the change into one checksum (an
 * L4 or ICMPv6 checksum that covers it, directly or through the pseudo header) */
static __always_inline void lb_csum_set_addr6(__be32 *addr_p, const __be32 *new_addr, __u16 *sum)
{
#pragma unroll
    for (int i = 0; i < 4; i++) {
        __be32 old = addr_p[i], nw = new_addr[i];
        addr_p[i] = nw;
        lb_csum_replace4(sum, old, nw);
    }
}

/* Write an address of an IPv4 header that an ICMP error quotes: its own header checksum and
 * the ICMP checksum (which covers the whole quoted header, that checksum included) follow */
static __always_inline void lb_csum_set_quoted_addr4(struct iphdr *ip, __be32 *addr_p, __be32 new_addr,
                                                     __u16 *icmp_sum)
{
    __be32 old = *addr_p;
    __u16 old_check = (__u16)ip->check;
    *addr_p = new_addr;
    lb_csum_replace4((__u16 *)&ip->check, old, new_addr);
    lb_csum_replace4(icmp_sum, old, new_addr);
    lb_csum_replace2(icmp_sum, old_check, (__u16)ip->check);
}

#endif
