/* Incremental checksum updates (RFC 1624).  Prefixed: the kernel headers bcc pulls in already
 * define csum_replace4 and friends. */
#ifndef LB_CSUM_H
#define LB_CSUM_H

#include "lb_parse.h"

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
static __always_inline void lb_l4csum_fix_udp(struct lb_pkt *pkt)
{
    if (pkt->proto == IPPROTO_UDP && pkt->l4csum && *pkt->l4csum == 0)
        *pkt->l4csum = 0xffff;
}

/* Rewrite one IPv4 address and one port, fixing the IP and L4 checksums. */
static __always_inline void lb_rewrite4(struct lb_pkt *pkt, __be32 *addr_p, __be32 new_addr,
                                        __be16 *port_p, __be16 new_port)
{
    __be32 old_addr = *addr_p;
    __be16 old_port = *port_p;

    *addr_p = new_addr;
    *port_p = new_port;
    lb_csum_replace4((__u16 *)&pkt->ip4->check, old_addr, new_addr);
    if (pkt->l4csum) {
        lb_csum_replace4((__u16 *)pkt->l4csum, old_addr, new_addr);   /* pseudo header */
        lb_csum_replace2((__u16 *)pkt->l4csum, old_port, new_port);
        lb_l4csum_fix_udp(pkt);
    }
}

/* Rewrite one IPv6 address (addr_p: 4 words in the packet) and one port.  IPv6 has no header
 * checksum; the L4 checksum covers both through the pseudo header. */
static __always_inline void lb_rewrite6(struct lb_pkt *pkt, __be32 *addr_p, const __be32 *new_addr,
                                        __be16 *port_p, __be16 new_port)
{
    __be16 old_port = *port_p;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        __be32 old = addr_p[i], nw = new_addr[i];
        addr_p[i] = nw;
        if (pkt->l4csum)
            lb_csum_replace4((__u16 *)pkt->l4csum, old, nw);
    }
    *port_p = new_port;
    if (pkt->l4csum) {
        lb_csum_replace2((__u16 *)pkt->l4csum, old_port, new_port);
        lb_l4csum_fix_udp(pkt);
    }
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
