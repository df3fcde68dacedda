/* lb data plane.  Programs (all XDP, loaded by lb/dataplane with bcc):
 *   lb_xdp_public   public side, attached: the HA lease, the VIP filter, an established TCP
 *                   connection's or grown UDP flow's commonest packet, IPv4 or IPv6 (lb_fast.h);
 *                   the rest on to lb_xdp_public_full
 *   lb_xdp_public_full
 *                   packets for a virtual service; established flows forwarded here,
 *                   new connections of dh, sh and mh (no fallback walk) and those a live
 *                   persistence template picks, made here
 *   lb_xdp_persist  persistent services without a usable template: on to the scheduler
 *   lb_sched_<name> a new connection's scheduler, tail-called from lb_xdp_public_full or
 *                   lb_xdp_persist (mh also from itself, to continue a long mh-fallback walk)
 *   lb_xdp_new_conn creates the connection a tail-called scheduler or a template picked and
 *                   forwards the first packet
 *   lb_xdp_private  private side: NAT replies from real servers back to clients (an established
 *                   connection's ACKs from its reverse entry alone: lb_reply.h)
 *   lb_xdp_frag6_public, lb_xdp_frag6_private
 *                   an IPv6 TCP/UDP fragment: along its flow's connection, a later one the
 *                   way its first went (lb_frag.h)
 *   lb_xdp_icmp_tunnel
 *                   an ICMP error about a packet tunneled to a real server: on to its client
 *                   (lb_icmp.h)
 *   lb_xdp_guard    [ha]: another interface holding a VIP or nat_router: only the lease's check
 * Both public and private relay ICMP/ICMPv6 errors about tracked connections (lb_icmp.h).
 * New connections start in the embryonic tables and move on once established; a pure SYN looks
 * in lb_conns only when lb_est_filter says its key may be there (lb_embryo.h).
 * Sizes and the pin directory come in as -D flags.  Each header includes what it uses; bcc
 * rewrites map calls only in the main file, so lb/dataplane inlines the headers before compiling. */
#include <uapi/linux/bpf.h>
#include "lb_consts.h"
#include "lb_structs.h"
#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_csum.h"
#include "lb_stats.h"
#include "lb_clock.h"
#include "lb_conntrack.h"
#include "lb_persist.h"
#include "lb_embryo.h"
#include "lb_sloppy.h"
#include "lb_sched.h"
#include "lb_forward.h"
#include "lb_icmp.h"
#include "lb_lease.h"
#include "lb_reply.h"
#include "lb_flow.h"
#include "lb_frag.h"
#include "lb_fast.h"

/* A port of a firewall-mark service's group: the (VIP, protocol)'s ranges, port 0 in the key */
static __always_inline int lb_classify_fwm(struct lb_pkt *pkt, struct lb_svc_key *sk, __u32 *svc_id)
{
    __u16 port = bpf_ntohs(sk->port);
    sk->port = 0;
    struct lb_port_ranges *pr = lb_fwm_ranges.lookup(sk);
    if (!pr)
        return XDP_PASS;
    for (__u32 i = 0; i < LB_FWM_RANGES; i++) {
        if (i >= pr->n)
            break;
        if (port >= pr->r[i].lo && port <= pr->r[i].hi) {
            *svc_id = pr->r[i].svc;
            return LB_CONTINUE;
        }
    }
    return XDP_PASS;
}

/* Parse, counting what the parser refuses.  LB_CONTINUE or an XDP action. */
static __always_inline int lb_parse_counted(struct xdp_md *ctx, struct lb_pkt *pkt)
{
    __u32 counter = LB_CNT_MAX;
    int act = lb_parse(ctx, pkt, &counter);
    if (act != LB_CONTINUE && counter != LB_CNT_MAX)
        lb_count(counter);
    return act;
}

/* The virtual service of a parsed packet.  LB_CONTINUE with *svc_id set, or XDP_PASS. */
static __always_inline int lb_lookup_svc(struct lb_pkt *pkt, __u32 *svc_id)
{
    struct lb_svc_key sk;
    __builtin_memcpy(sk.addr, pkt->daddr, 16);
    sk.port = *pkt->dport_p;
    sk.proto = pkt->proto;
    sk.family = pkt->family;
    __u32 *id = lb_services.lookup(&sk);
    if (id) {
        *svc_id = *id;
        return LB_CONTINUE;
    }
    /* firewall-mark services: only when some exist (one array load otherwise) */
    __u32 g = LB_G_FWM_KEYS;
    __u32 *nkeys = lb_globals.lookup(&g);
    if (!nkeys || !*nkeys)
        return XDP_PASS;          /* not a virtual service: the director's own traffic */
    return lb_classify_fwm(pkt, &sk, svc_id);
}

/* The bit of filter f (lb_vip_filter's, lb_local_filter's) for an address folded to 32 bits (its
 * four words XORed as they are): 1 set, 0 clear, `missing` when the map is (never, once loaded) */
static __always_inline int lb_filter_bit(struct lb_vip_filter *f, __u32 fold, int missing)
{
    __u32 idx = (fold * LB_VIP_HASH_MUL) >> (32 - LB_VIP_FILTER_BITS);
    if (!f)
        return missing;
    return (f->bits[(idx >> 6) & (LB_VIP_FILTER_WORDS - 1)] >> (idx & 63)) & 1;
}

static __always_inline int lb_vip_bit(__u32 fold, int missing)
{
    __u32 zero = 0;
    return lb_filter_bit(lb_vip_filter.lookup(&zero), fold, missing);
}

/* The first test of lb_xdp_public: is the destination address one a virtual service listens
 * on?  One hashed bit of lb_vip_filter (set by the control plane for every VIP and port-group
 * address), read before anything else is parsed, so the director's own traffic and whatever
 * else crosses the interface pays only this (ICMP excepted).  0: certainly not (XDP_PASS,
 * untouched). */
static __always_inline int lb_vip_maybe(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return 0;
    __be16 proto = eth->h_proto;
    void *cur = eth + 1;
    if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
        struct lb_vlan_hdr *vh = cur;
        if ((void *)(vh + 1) > data_end)
            return 0;
        proto = vh->proto;
        cur = vh + 1;
    }
    __u32 fold;
    __u8 l4;
    if (proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = cur;
        if ((void *)(ip + 1) > data_end)
            return 0;
        fold = ip->daddr;
        l4 = ip->protocol;
    } else if (proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = cur;
        if ((void *)(ip6 + 1) > data_end)
            return 0;
        __u32 *d = ip6->daddr.in6_u.u6_addr32;
        fold = d[0] ^ d[1] ^ d[2] ^ d[3];   /* as lb_vip_bit folds the 16-byte copy */
        l4 = ip6->nexthdr;
    } else {
        return 0;
    }
    /* ICMP to any address: an error about a packet lb tunneled comes to the tunnel's source, an
     * address of the director's (lb_icmp_tunnel) */
    return lb_vip_bit(fold, 1) || l4 == IPPROTO_ICMP || l4 == IPPROTO_ICMPV6;
}

/* What the scheduler programs need of a new connection's packet, into the per-CPU scratch
 * (the tail calls that follow run on this CPU, for this packet, before any other) */
static __always_inline void lb_sched_handover(lb_scratch_t *sc, __u32 svc_id, struct lb_pkt *pkt)
{
    sc->svc = svc_id;
    sc->sfold = lb_addr_fold(pkt->saddr);
    sc->dfold = lb_addr_fold(pkt->daddr);
    sc->sport = *pkt->sport_p;
    sc->family = pkt->family;
    __builtin_memcpy((void *)sc->daddr, pkt->daddr, 16);
}

/* Is the scratch this packet's hand-over?  A tail-call chain runs on one CPU for one packet,
 * so the service lb_xdp_public_full found is still there: the programs after it parse the packet
 * again (tail calls keep no locals) but need not look the service up again in lb_services
 * (a hash).  A few compares refuse a scratch some other packet left (a chain another load's
 * programs broke off while a restarted daemon rewrote lb_progs). */
static __always_inline int lb_handover_is(lb_scratch_t *sc, struct lb_pkt *pkt)
{
    return sc->sport == *pkt->sport_p && sc->family == pkt->family &&
           sc->sfold == lb_addr_fold(pkt->saddr) && sc->dfold == lb_addr_fold(pkt->daddr);
}

/* A tail call into a scheduler's program (a failed one returns; the caller counts it).  A tail
 * call whose slot is in a register is an indirect jump, through a retpoline on this kernel
 * (10-14 ns); with a constant slot the JIT patches in a direct jump.  So one call per scheduler,
 * each followed by an asm statement of its own: clang merges identical calls that differ only in
 * the slot back into one with the slot in a register, and a different statement after each
 * call keeps them apart (libbpf's bpf_tail_call_static() does it with asm bcc cannot compile).
 * bcc refuses map calls in macros, hence the list written out. */
static __always_inline void lb_tail_sched(struct xdp_md *ctx, __u32 sched)
{
    switch (sched) {
    case LB_SCHED_RR:
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_RR);
        asm volatile("/* lb_sched_rr */");
        break;
    case LB_SCHED_WRR:
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_WRR);
        asm volatile("/* lb_sched_wrr */");
        break;
    case LB_SCHED_WLC:
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_WLC);
        asm volatile("/* lb_sched_wlc */");
        break;
    case LB_SCHED_LC:
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_LC);
        asm volatile("/* lb_sched_lc */");
        break;
    case LB_SCHED_SED:
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_SED);
        asm volatile("/* lb_sched_sed */");
        break;
    case LB_SCHED_NQ:
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_NQ);
        asm volatile("/* lb_sched_nq */");
        break;
    case LB_SCHED_FO:
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_FO);
        asm volatile("/* lb_sched_fo */");
        break;
    case LB_SCHED_OVF:
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_OVF);
        asm volatile("/* lb_sched_ovf */");
        break;
    case LB_SCHED_DH:
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_DH);
        asm volatile("/* lb_sched_dh */");
        break;
    case LB_SCHED_SH:
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_SH);
        asm volatile("/* lb_sched_sh */");
        break;
    case LB_SCHED_MH:
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_MH);
        asm volatile("/* lb_sched_mh */");
        break;
    case LB_SCHED_LBLC:
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_LBLC);
        asm volatile("/* lb_sched_lblc */");
        break;
    case LB_SCHED_LBLCR:
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_LBLCR);
        asm volatile("/* lb_sched_lblcr */");
        break;
    case LB_SCHED_TWOS:
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_TWOS);
        asm volatile("/* lb_sched_twos */");
        break;
    }
}

/* A packet from the VIP it is sent to (a LAND attack's): the kernel drops one from its own
 * address (fib_validate_source: a martian source) before IPVS would see it.  Scheduled, a NAT
 * reply to it goes out from the VIP to the VIP and comes back through the upstream router as a
 * packet of the same connection, to the real server again. */
static __always_inline int lb_from_itself(struct lb_pkt *pkt)
{
    __be32 *s = pkt->saddr, *d = pkt->daddr;
    return ((s[0] ^ d[0]) | (s[1] ^ d[1]) | (s[2] ^ d[2]) | (s[3] ^ d[3])) == 0;
}

/* A packet from another address a virtual service listens on (another VIP of this director, or
 * a port group's): a martian to the kernel as the LAND packet above is (IPv4's
 * fib_validate_source refuses a local source), and scheduled, a NAT connection's replies went
 * out to the director's own VIP, and forged SYNs had the real servers talk to it.  A new
 * connection's question only: the source's bit of lb_vip_filter first (one array load; almost
 * every client's is clear), then lb_vip_addrs, exactly (a bit is shared by many addresses). */
static __always_inline int lb_from_a_vip(struct lb_pkt *pkt)
{
    __be32 *s = pkt->saddr;
    if (!lb_vip_bit(s[0] ^ s[1] ^ s[2] ^ s[3], 0))
        return 0;
    /* keyed by the 16 bytes as they are (lb_xdp_public_full has no stack to spare for a key), the
     * family in the value: an IPv4 VIP's padded bytes are also an IPv6 address */
    __u32 *fams = lb_vip_addrs.lookup((struct lb_addr16 *)pkt->saddr);
    return fams && ((*fams >> pkt->family) & 1);
}

/* A packet from one of the director's own addresses (not a VIP: an interface's, lb_local_addrs):
 * forged -- the director sends its own packets, XDP sees only what arrives -- and a martian to the
 * kernel, which drops it.  Scheduled, the real server's answer went to the director, and forged
 * SYNs had the real servers talk to it.  As lb_from_a_vip: a bit first, then exactly. */
static __always_inline int lb_from_the_director(struct lb_pkt *pkt)
{
    __be32 *s = pkt->saddr;
    __u32 zero = 0;
    if (!lb_filter_bit(lb_local_filter.lookup(&zero), s[0] ^ s[1] ^ s[2] ^ s[3], 0))
        return 0;
    __u32 *fams = lb_local_addrs.lookup((struct lb_addr16 *)pkt->saddr);
    return fams && ((*fams >> pkt->family) & 1);
}

/* ---- a new connection: its first state transition (IPVS starts every connection inactive;
 * a SYN's SYN_RECV makes it active), counted once where it lands (one atomic on the real
 * server's shared counters, not three), insert into the embryonic table (plus the NAT reverse
 * entry), forward.  lb_xdp_public_full does it for the schedulers it runs in place, lb_xdp_new_conn
 * at the end of the others' tail calls. ---- */

/* new_conn's part for persistent services: refresh the template that chose (it controls this
 * connection: not idle), or make one (in lb_persist_embryo: it moves to lb_persist when the
 * connection is established) */
static __always_inline void lb_persist_after_pick(struct lb_pkt *pkt, struct lb_svc *svc, __u32 real_id,
                                                  int from_template, __u64 now)
{
    struct lb_persist_key pk;
    lb_persist_key_of(&pk, pkt, svc);
    if (from_template) {
        int embryo;
        struct lb_persist *t = lb_persist_find(&pk, &embryo);
        if (t) {
            /* past its timeout and not yet swept (and not idle, lb_persist_gone): IPVS kept it
             * because it still controls a connection, with 60 s from then on */
            __u32 secs = t->timeout & LB_PERSIST_TIMEOUT;
            if (lb_persist_expired(t, now))
                secs = LB_TEMPLATE_LATER_S;
            t->timeout = secs;
            t->last_ns = now;
        }
        return;
    }
    struct lb_persist t = { .last_ns = now, .real = real_id, .timeout = svc->persist_timeout };
    if (lb_persist_embryo.insert(&pk, &t) == 0)
        lb_persist_count(real_id, 1);
    else if (!lb_persist_embryo.lookup(&pk))   /* not another CPU's template: refused */
        lb_count(LB_CNT_PERSIST_FULL);
}

/* A persistent service's new connection: its live template's real server, or LB_PICK_ELSEWHERE
 * (no template, one IPVS has freed, or one whose server is gone: lb_xdp_persist drops that one
 * and schedules) */
static __always_inline __u32 lb_persist_pick_in_place(struct lb_pkt *pkt, __u32 svc_id, struct lb_svc *svc,
                                                      __u64 now)
{
    struct lb_persist_key pk;
    int embryo;
    lb_persist_key_of(&pk, pkt, svc);
    struct lb_persist *t = lb_persist_find(&pk, &embryo);
    return t && !lb_persist_gone(t, now) && lb_persist_usable(t, svc_id) ? t->real : LB_PICK_ELSEWHERE;
}

/* Make the connection a scheduler (or a template) picked -- its first state, counted on its real
 * server, into the embryonic table (with the NAT reverse entry), the template's part -- and
 * forward the packet; when another CPU made the flow first, forward it along that one's pick.
 * key: the packet's (lb_conn_key_in), the caller's (lb_xdp_public_full's lookup built it: not a
 * second one on its stack, which has none to spare).  An XDP action. */
static __always_inline int lb_conn_new(struct xdp_md *ctx, struct lb_pkt *pkt, struct lb_conn_key *key,
                                       __u32 svc_id, struct lb_svc *svc, __u32 real_id, int from_template)
{
    struct lb_real *r = lb_reals.lookup(&real_id);
    /* family 0: a real server retired while its service's list, written after it (txn.py's
     * order), still names it: the SYN goes to the local stack (a RST), not to a connection whose
     * next packets would drop */
    if (!r || r->svc != svc_id || !r->family)
        return XDP_PASS;

    struct lb_conn c = {};
    c.last_ns = lb_now();
    c.real = real_id;
    c.svc = svc_id;
    c.state = LB_TCP_S_NONE;
    c.flags = LB_CONN_F_INACTIVE;
    if (svc->persist_timeout)
        c.flags |= LB_CONN_F_PERSIST;
    c.client_ifindex = ctx->ingress_ifindex;
    __builtin_memcpy(c.client_mac, pkt->eth->h_source, ETH_ALEN);
    __builtin_memcpy(c.local_mac, pkt->eth->h_dest, ETH_ALEN);
    __builtin_memcpy(c.vaddr, key->daddr, 16);
    c.vport = key->dport;
    /* its first state first (a SYN: SYN_RECV, active), then counted once, where it is */
    lb_conn_next_state(&c, lb_fsm_table(r), pkt);
    if (c.flags & LB_CONN_F_INACTIVE)
        lb_real_conns_add(real_id, 0, 1);
    else
        lb_real_conns_add(real_id, 1, 0);

    int fresh = lb_conns_embryo.insert(key, &c) == 0;
    if (!fresh) {
        /* another CPU created this flow first: follow its choice */
        lb_conn_uncount(&c);
        int embryo;
        struct lb_conn *other = lb_conn_find(key, &embryo);
        if (!other) {
            lb_count(LB_CNT_CONN_FULL);
            return XDP_DROP;
        }
        real_id = other->real;
        r = lb_reals.lookup(&real_id);
        if (!r || r->svc != svc_id) {
            lb_count(LB_CNT_BAD_REAL);
            return XDP_DROP;
        }
    } else {
        lb_ct_event(LB_CTE_EMBRYO_NEW);
        lb_overload_bind(real_id, r);
        if (svc->persist_timeout)
            lb_persist_after_pick(pkt, svc, real_id, from_template, c.last_ns);
        if (r->fwd == LB_FWD_NAT) {
            struct lb_conn_key rk;
            lb_conn_key_reverse(&rk, key, r);
            c.flags = LB_CONN_F_OUT;
            if (lb_conns_embryo.update(&rk, &c) == 0)
                lb_ct_event(LB_CTE_EMBRYO_NEW);
            else
                lb_count(LB_CNT_CONN_FULL);   /* its replies will reach the director's stack */
        }
    }
    lb_stats_in(svc_id, real_id, pkt->len, fresh);
    return lb_forward_to_real(ctx, pkt, r);
}

/* The program attached to the public side: the lease, the VIP filter and an established
 * connection's commonest packet (lb_fast.h); the rest goes on to lb_xdp_public_full, a program of
 * its own because the short way inline in it took the verifier past its million instructions. */
int lb_xdp_public(struct xdp_md *ctx)
{
    int act = lb_lease_guard(ctx);        /* [ha]: a gone daemon's addresses are not claimed */
    if (act != LB_CONTINUE)
        return act;
    if (!lb_vip_maybe(ctx))
        return XDP_PASS;          /* not addressed to a virtual service: untouched, at once */
    act = lb_fast_established(ctx);
    if (act != LB_CONTINUE)
        return act;
    lb_public_progs.call(ctx, LB_PUBLIC_FULL);
    lb_count(LB_CNT_TAIL_CALL);
    return XDP_PASS;
}

/* The public side's packets but an established connection's commonest (lb_xdp_public checked
 * the lease and the VIP filter): new connections, the rest of established ones, fragments, ICMP */
int lb_xdp_public_full(struct xdp_md *ctx)
{
    struct lb_pkt pkt = {};
    __u32 svc_id;
    int act = lb_parse_counted(ctx, &pkt);
    if (act != LB_CONTINUE) {
        if (pkt.frag == LB_FRAG_LATER || (pkt.frag == LB_FRAG_FIRST && pkt.ip6))
            return lb_frag_packet(ctx, &pkt, 0);
        return lb_is_icmp(&pkt) ? lb_icmp_public(ctx, &pkt) : act;
    }

    /* the connection first, as IPVS's ip_vs_in does: an established flow needs no service
     * lookup (its entry names the service), only a new one does */
    __u64 now = lb_now();
    struct lb_conn_key key;
    lb_conn_key_in(&key, &pkt);
    int embryo;
    struct lb_conn *c = lb_conn_find_in(&key, &pkt, &embryo);
    if (c && (lb_conn_expired(c, now) || lb_conn_reusable(c, &pkt))) {
        lb_conn_expire_in(&key, c, embryo);
        c = 0;
    }
    if (!c) {
        /* ctx anew for the new connection's branch: else clang computes &ctx->data_end once,
         * before the parse, and spills it, and the verifier refuses a load through a ctx
         * pointer moved off its start */
        asm volatile("" : "+r"(ctx));
        act = lb_lookup_svc(&pkt, &svc_id);
        if (act != LB_CONTINUE)
            return act;
        struct lb_svc *svc = lb_svc.lookup(&svc_id);
        if (!svc)
            return XDP_PASS;
        if (!lb_may_schedule(&pkt, svc)) {
            /* IPVS schedules TCP only on SYN (unless sloppy); the kernel answers the rest (RST).
             * Only a pure SYN makes a connection: SYN|ACK, SYN|RST and SYN|FIN floods make none. */
            lb_count(pkt.tcp_flags & LB_TCP_SYN ? LB_CNT_SYN_INVALID : LB_CNT_NOT_SYN);
            lb_progs_prev.call(ctx, LB_PREV_PUBLIC);     /* a resize: the old maps may hold it */
            return XDP_PASS;
        }
        if (lb_not_routable(ctx, &pkt) || lb_from_itself(&pkt) || lb_from_a_vip(&pkt) ||
            lb_from_the_director(&pkt)) {
            lb_count(LB_CNT_NOT_ROUTABLE);
            return XDP_PASS;
        }
        if (lb_defense_drop())
            return XDP_DROP;
        /* a live template's real server, or dh's, sh's, mh's pick: the connection made here (no
         * tail call, no parse again); else the tail calls (a fallback walk, a scheduler with a
         * loop, a persistent service without a usable template) */
        __u32 real_id = LB_PICK_ELSEWHERE;
        int from_template = 0;
        if (svc->persist_timeout) {
            real_id = lb_persist_pick_in_place(&pkt, svc_id, svc, now);
            from_template = real_id != LB_PICK_ELSEWHERE;
        } else if (lb_sched_in_place(svc)) {
            real_id = lb_pick_in_place(svc_id, svc, &pkt);
        }
        if (real_id == LB_PICK_ELSEWHERE) {
            __u32 zero = 0;
            lb_scratch_t *sc = lb_scratch.lookup(&zero);
            if (!sc)
                return XDP_PASS;
            lb_sched_handover(sc, svc_id, &pkt);
            if (svc->persist_timeout) {
                lb_progs.call(ctx, LB_PROG_PERSIST);
                asm volatile("/* lb_xdp_persist */");
            } else {
                lb_tail_sched(ctx, svc->sched);
            }
            lb_count(LB_CNT_TAIL_CALL);
            return XDP_PASS;
        }
        if (real_id == LB_NONE) {
            lb_count(LB_CNT_NO_REAL);   /* the local stack refuses it, as lb_sched_end says */
            return XDP_PASS;
        }
        return lb_conn_new(ctx, &pkt, &key, svc_id, svc, real_id, from_template);
    }
    return lb_conn_packet_in(ctx, &pkt, &key, c, embryo, now, 0);
}

/* ---- schedulers: the service from the scratch, pick, hand the pick to lb_xdp_new_conn ---- */

/* A scheduler program's start: the service lb_xdp_public_full classified (in the scratch: not
 * parsing again keeps each program's paths, and so the verifier's work on the loops, few),
 * and its maps */
static __always_inline int lb_sched_begin(__u32 *svc_id, struct lb_svc **svc, struct lb_svc_dests **ds,
                                          struct lb_sched_state **st, lb_scratch_t **sc)
{
    __u32 zero = 0;
    *sc = lb_scratch.lookup(&zero);
    if (!*sc)
        return XDP_PASS;
    *svc_id = (*sc)->svc;
    *svc = lb_svc.lookup(svc_id);
    *ds = lb_svc_dests.lookup(svc_id);
    *st = lb_sched_state.lookup(svc_id);
    if (!*svc || !*ds || !*st)
        return XDP_PASS;
    return LB_CONTINUE;
}

static __always_inline int lb_sched_end(struct xdp_md *ctx, __u32 svc_id, lb_scratch_t *sc,
                                        __u32 real_id)
{
    if (real_id == LB_NONE) {
        /* no usable real server: the local stack refuses the connection (RST or port
         * unreachable), as IPVS answers with ICMP port unreachable */
        lb_count(LB_CNT_NO_REAL);
        return XDP_PASS;
    }
    sc->svc = svc_id;
    sc->real = real_id;
    lb_progs.call(ctx, LB_PROG_NEW_CONN);
    lb_count(LB_CNT_TAIL_CALL);
    return XDP_PASS;
}

/* A scheduler's program: its service's maps (lb_sched_begin), pick, hand the pick over. */
#define LB_SCHED_PROG(name, pick)                                                  \
    int lb_sched_##name(struct xdp_md *ctx)                                        \
    {                                                                              \
        __u32 svc_id;                                                              \
        struct lb_svc *svc;                                                        \
        struct lb_svc_dests *ds;                                                   \
        struct lb_sched_state *st;                                                 \
        lb_scratch_t *sc;                                                          \
        int act = lb_sched_begin(&svc_id, &svc, &ds, &st, &sc);                    \
        if (act != LB_CONTINUE)                                                    \
            return act;                                                            \
        return lb_sched_end(ctx, svc_id, sc, pick);                                \
    }

LB_SCHED_PROG(rr, lb_pick_rr(svc, ds, st, sc))
LB_SCHED_PROG(wrr, lb_pick_wrr(svc, ds, st, sc))
LB_SCHED_PROG(wlc, lb_pick_wlc(svc, ds, st, sc))
LB_SCHED_PROG(lc, lb_pick_lc(svc, ds, st, sc))
LB_SCHED_PROG(sed, lb_pick_sed_nq(svc, ds, st, sc, 0))
LB_SCHED_PROG(nq, lb_pick_sed_nq(svc, ds, st, sc, 1))
LB_SCHED_PROG(fo, lb_pick_fo_ovf(svc, ds, st, sc, 0))
LB_SCHED_PROG(ovf, lb_pick_fo_ovf(svc, ds, st, sc, 1))
LB_SCHED_PROG(twos, lb_pick_twos(svc, ds, sc))

LB_SCHED_PROG(lblc, lb_pick_lblc(svc_id, svc, ds, st, sc, lb_now()))
LB_SCHED_PROG(lblcr, lb_pick_lblcr(svc_id, svc, ds, st, sc, lb_now()))
LB_SCHED_PROG(dh, lb_pick_dh(svc_id, svc, ds, sc->dfold))
LB_SCHED_PROG(sh, lb_pick_sh(svc_id, svc, ds, sc->sfold, sc->sport, sc))

/* mh: a fallback walk longer than one run's LB_MH_PROBES goes on in the next run (a tail call
 * into this same program, with the walk's place in lb_mh_walk) */
int lb_sched_mh(struct xdp_md *ctx)
{
    __u32 zero = 0, svc_id;
    struct lb_svc *svc;
    struct lb_svc_dests *ds;
    struct lb_sched_state *st;
    lb_scratch_t *sc;
    int act = lb_sched_begin(&svc_id, &svc, &ds, &st, &sc);
    if (act != LB_CONTINUE)
        return act;
    struct lb_mh_walk *w = lb_mh_walk.lookup(&zero);
    if (!w)
        return XDP_PASS;
    __u32 real = lb_pick_mh(svc_id, svc, ds, sc->sfold, sc->sport, w);
    if (real == LB_MH_CONTINUE) {
        lb_progs.call(ctx, LB_PROG_SCHED_BASE + LB_SCHED_MH);   /* constant: a direct jump */
        w->svc = 0;                   /* the chain's tail-call limit: give up the walk */
        lb_count(LB_CNT_TAIL_CALL);
        real = LB_NONE;
    }
    return lb_sched_end(ctx, svc_id, sc, real);
}

/* ---- persistent services: a live template decides, else the scheduler (and new_conn makes a
 * template of its pick) ---- */

int lb_xdp_persist(struct xdp_md *ctx)
{
    struct lb_pkt pkt = {};
    __u32 zero = 0;
    int act = lb_parse_counted(ctx, &pkt);
    if (act != LB_CONTINUE)
        return act;
    struct lb_sched_scratch *sc = lb_scratch.lookup(&zero);
    if (!sc || !lb_handover_is(sc, &pkt))
        return XDP_PASS;
    __u32 svc_id = sc->svc;
    struct lb_svc *svc = lb_svc.lookup(&svc_id);
    if (!svc)
        return XDP_PASS;
    struct lb_persist_key pk;
    int embryo;
    lb_persist_key_of(&pk, &pkt, svc);
    struct lb_persist *t = lb_persist_find(&pk, &embryo);
    if (t) {
        /* An expired template is dropped here only when the control plane's last sweep found
         * nothing live it controls (lb_persist_gone): IPVS keeps one that still controls
         * connections (60 s more), which only the sweep can tell (it counts them). */
        if (!lb_persist_gone(t, lb_now()) && lb_persist_usable(t, svc_id)) {
            sc->svc = svc_id;
            sc->real = t->real;
            sc->from_template = 1;
            lb_progs.call(ctx, LB_PROG_NEW_CONN);
            lb_count(LB_CNT_TAIL_CALL);
            return XDP_PASS;
        }
        lb_persist_drop(&pk, t, embryo);  /* freed, or its real server is gone: schedule afresh */
    }
    sc->from_template = 0;
    lb_tail_sched(ctx, svc->sched);
    lb_count(LB_CNT_TAIL_CALL);
    return XDP_PASS;
}

/* The end of a tail-called new connection's chain: the pick (a scheduler program's, or
 * lb_xdp_persist's template's) from the scratch */
int lb_xdp_new_conn(struct xdp_md *ctx)
{
    struct lb_pkt pkt = {};
    int act = lb_parse_counted(ctx, &pkt);
    if (act != LB_CONTINUE)
        return act;
    __u32 zero = 0;
    struct lb_sched_scratch *pick = lb_scratch.lookup(&zero);
    if (!pick || !lb_handover_is(pick, &pkt))
        return XDP_PASS;
    __u32 svc_id = pick->svc;
    __u32 real_id = pick->real;
    int from_template = pick->from_template;
    pick->from_template = 0;
    struct lb_svc *svc = lb_svc.lookup(&svc_id);
    if (!svc)
        return XDP_PASS;
    struct lb_conn_key key;
    lb_conn_key_in(&key, &pkt);
    return lb_conn_new(ctx, &pkt, &key, svc_id, svc, real_id, from_template);
}

/* ---- private side: NAT replies ---- */

int lb_xdp_private(struct xdp_md *ctx)
{
    int lease = lb_lease_guard(ctx);      /* [ha]: nat_router lives on this side */
    if (lease != LB_CONTINUE)
        return lease;
    struct lb_pkt pkt = {};
    __u32 counter = LB_CNT_MAX;
    int act = lb_parse(ctx, &pkt, &counter);
    if (act != LB_CONTINUE) {
        if (pkt.frag == LB_FRAG_LATER || (pkt.frag == LB_FRAG_FIRST && pkt.ip6))
            return lb_frag_packet(ctx, &pkt, 1);
        if (counter != LB_CNT_MAX)
            lb_count(counter);        /* a fragment passed, as on the public side */
        return lb_is_icmp(&pkt) ? lb_icmp_private(ctx, &pkt) : act;
    }

    return lb_reply_packet(ctx, &pkt, 0);
}

/* ---- an IPv6 TCP/UDP fragment (lb_frag.h), tail-called from lb_xdp_public_full and lb_xdp_private ---- */

int lb_xdp_frag6_public(struct xdp_md *ctx)
{
    return lb_frag6_program(ctx, 0);
}

int lb_xdp_frag6_private(struct xdp_md *ctx)
{
    return lb_frag6_program(ctx, 1);
}

/* ---- an ICMP error quoting a packet lb tunneled (lb_icmp.h), tail-called from lb_xdp_public_full and
 * lb_xdp_private ---- */

int lb_xdp_icmp_tunnel(struct xdp_md *ctx)
{
    return lb_icmp_tunnel(ctx);
}

/* ---- [ha]: an interface that holds a VIP or nat_router but no other program (nat_router on
 * the private side in direct routing): the lease's check, everything else to the kernel ---- */

int lb_xdp_guard(struct xdp_md *ctx)
{
    int lease = lb_lease_guard(ctx);
    return lease == LB_CONTINUE ? XDP_PASS : lease;
}
