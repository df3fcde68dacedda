/* Constants shared by the data plane and the control plane: lb/dataplane/layout.py reads every
 * integer #define and enum of this file at import, so Python never repeats a number.  Keep each
 * value a plain integer expression of numbers and earlier names.  Every size is a -D flag set
 * from the config; the defaults here only serve a bare compile (and Python's view of the sizes
 * the config does not set).  No includes: user space (cext/) includes this file too. */
#ifndef LB_CONSTS_H
#define LB_CONSTS_H

#ifndef LB_MAX_SERVICES
#define LB_MAX_SERVICES 256
#endif
#ifndef LB_MAX_REALS
#define LB_MAX_REALS 4096
#endif
#ifndef LB_MAX_SVC_REALS          /* real servers per virtual service: bounds every scheduler loop */
#define LB_MAX_SVC_REALS 64
#endif
#ifndef LB_CONN4_TABLE_SIZE       /* established IPv4 connections (lb_conns4): [tables] connections */
#define LB_CONN4_TABLE_SIZE 65536
#endif
#ifndef LB_CONN6_TABLE_SIZE       /* established IPv6 connections (lb_conns6): connections_ipv6 */
#define LB_CONN6_TABLE_SIZE 16384
#endif
#ifndef LB_PERSIST_TABLE_SIZE     /* persistence templates (allocated as used) */
#define LB_PERSIST_TABLE_SIZE 16384
#endif
#ifndef LB_EMBRYO_TABLE_SIZE      /* embryonic connections and templates (lb_embryo.h): their own */
#define LB_EMBRYO_TABLE_SIZE 16384  /* LRU tables, so a flood of new sources evicts only its like */
#endif
#ifndef LB_FWM_RANGES            /* port ranges of firewall-mark services per (VIP, protocol) */
#define LB_FWM_RANGES 16
#endif
#ifndef LB_LBLC_TABLE_SIZE       /* lblc / lblcr entries, all services together (allocated as used) */
#define LB_LBLC_TABLE_SIZE 16384
#endif
#ifndef LB_LBLCR_SET_SIZE        /* members of an lblcr server set (even: keeps lb_lblcr 8-aligned) */
#define LB_LBLCR_SET_SIZE 8
#endif
#ifndef LB_PIN_DIR
#define LB_PIN_DIR "/sys/fs/bpf/lb/default"
#endif
#ifndef LB_TOUCH_NS              /* a packet refreshes its entry's timestamp once it is this old */
#define LB_TOUCH_NS 250000000ULL /* (or when the state changed): see lb_conn_touch */
#endif

/* ip_vs_conn_expire: a persistence template whose timer runs out while it still controls
 * connections lives 60 s more, and 60 s is its timeout from then on */
#define LB_TEMPLATE_LATER_S 60

/* lb_persist.timeout: the template's timeout in seconds (the low bits, LB_PERSIST_TIMEOUT; a
 * persistence timeout is at most 2147483 s), and LB_PERSIST_F_IDLE: the control plane's last
 * sweep found no live connection it controls (a new connection through it clears it; only
 * lb_persist's are marked, not lb_persist_embryo's: an LRU rewrite may evict).  Past its
 * timeout, an idle template is one IPVS freed (nothing it controlled was left when its timer ran
 * out): the data path takes it for absent.  Without the flag (its connections live, or made
 * since the sweep, or an older lb's or a synced template no sweep has looked at yet) it is kept,
 * as IPVS keeps one that still controls connections. */
#define LB_PERSIST_TIMEOUT 0x7fffffff
#define LB_PERSIST_F_IDLE 0x80000000U

/* "keep going": helpers return this or an XDP action */
#define LB_CONTINUE (-1)
#define LB_NONE 0xffffffffU
/* scheduler cursor "at the list head", like IPVS's &svc->destinations */
#define LB_POS_HEAD 0xffffffffU

#define LB_AF_INET 4
#define LB_AF_INET6 6

/* Forwarding methods, numbered as IPVS's IP_VS_CONN_F_* */
#define LB_FWD_NAT 0
#define LB_FWD_LOCAL 1
#define LB_FWD_TUNNEL 2
#define LB_FWD_DR 3

/* Schedulers: lb_svc.sched, and the tail-call slot LB_PROG_SCHED_BASE + id of the program
 * lb_sched_<name> (lb.c).  layout.SCHEDULERS is this list, LB_SCHED_<NAME> read as "<name>".
 * Ids are stored in lb_svc of pinned maps: append, never renumber. */
enum lb_sched_id {
    LB_SCHED_RR = 0,
    LB_SCHED_WRR = 1,
    LB_SCHED_WLC = 2,
    LB_SCHED_LC = 3,
    LB_SCHED_SED = 4,
    LB_SCHED_NQ = 5,
    LB_SCHED_FO = 6,
    LB_SCHED_OVF = 7,
    LB_SCHED_DH = 8,
    LB_SCHED_SH = 9,
    LB_SCHED_MH = 10,
    LB_SCHED_LBLC = 11,
    LB_SCHED_LBLCR = 12,
    LB_SCHED_TWOS = 13,
};

/* dh / sh bucket tables (lb_sched_buckets): 256 list positions per service, computed by the
 * control plane (lb.sched.model.dh_table / sh_table), as IPVS's IP_VS_DH/SH_TAB_BITS */
#define LB_SCHED_HASH_BITS 8
#define LB_SCHED_BUCKETS (1 << LB_SCHED_HASH_BITS)

/* lblcr_expiration while lb_globals[LB_G_LBLCR_EXPIRATION] is 0: IPVS's default, one day */
#define LB_LBLCR_EXPIRATION_DEFAULT 86400

/* lb_svc.flags: IPVS's IP_VS_SVC_F_SCHED1/2 (sh-fallback/sh-port, mh-fallback/mh-port) */
#define LB_SVC_F_SCHED_FALLBACK 0x1
#define LB_SVC_F_SCHED_PORT 0x2
/* lb_svc.flags: sloppy (lb_sloppy.h): a TCP packet without a connection entry is scheduled
 * even without SYN, as IPVS's sloppy_tcp (active-active directors behind ECMP) */
#define LB_SVC_F_SLOPPY 0x4

/* Tail-call slots in lb_progs: a new connection goes public -> (persist ->) scheduler ->
 * new_conn, so each scheduler's loop is verified on its own (inlined, the loops' exits multiply
 * the paths the verifier must walk through the forwarding code). */
#define LB_PROG_NEW_CONN 0
#define LB_PROG_SCHED_BASE 1
#define LB_PROG_MAX 16
#define LB_PROG_PERSIST (LB_PROG_MAX - 1)   /* persistent services: template lookup first */

/* lb_frag6_progs' slots: an IPv6 fragment's programs (lb_frag.h), a prog array of their own --
 * lb_progs is full, and its size is pinned: a restart adopts a running lb's */
#define LB_FRAG6_PUBLIC 0
#define LB_FRAG6_PRIVATE 1
#define LB_FRAG6_PROGS 2

/* lb_icmp_progs' slot: an ICMP error quoting a tunnel packet (lb_icmp.h), a prog array of its
 * own as lb_frag6_progs (a restart adopts a running lb's pinned arrays as they are) */
#define LB_ICMP_TUNNEL 0
#define LB_ICMP_PROGS 1

/* lb_public_progs' slot: lb_xdp_public_full, after lb_xdp_public's short way (lb_fast.h), a prog
 * array of its own as lb_frag6_progs */
#define LB_PUBLIC_FULL 0
#define LB_PUBLIC_PROGS 1

/* lb_progs_prev's slots: the replaced lb_xdp_public and lb_xdp_private during a resize */
#define LB_PREV_PUBLIC 0
#define LB_PREV_PRIVATE 1
#define LB_PREV_MAX 2
/* lb_tx_ports' size: ifindexes below it (an interface with a bigger one is redirected to
 * without it: bpf_redirect, counted as LB_CNT_TX_UNMAPPED) */
#define LB_TX_PORTS 4096

/* Real server flags */
#define LB_REAL_F_OVERLOAD 0x1   /* skipped by every scheduler (IPVS IP_VS_DEST_F_OVERLOAD) */
#define LB_REAL_F_NO_NEXTHOP 0x2 /* MAC not resolved yet: skipped by every scheduler */
#define LB_REAL_F_DRAINING 0x4  /* removed from the config, kept (weight 0) until idle: its
                                  * persistence templates are invalid (IPVS: not AVAILABLE) */
#define LB_REAL_F_SKIP (LB_REAL_F_OVERLOAD | LB_REAL_F_NO_NEXTHOP)


/* lb_globals: one u32 each, written by the control plane */
#define LB_G_FWM_KEYS 0          /* entries in lb_fwm_ranges: 0 = no firewall-mark service */
#define LB_G_EXPIRE_NODEST 1     /* expire_nodest_conn: 0 drop, 1 expire and reschedule */
#define LB_G_LBLCR_EXPIRATION 2  /* lblcr_expiration, seconds: a set unchanged this long shrinks */
#define LB_G_EST_WRITE 3         /* which of lb_est_filter's two BPF bitmaps promotions mark (bit 0) */
#define LB_G_DEFENSE 4           /* LB_DEF_* bits: the defenses engaged now (lb/dataplane/defense.py) */
#define LB_G_DROP_RATE 5         /* drop_packet: 1 in this many new connections' packets dropped (0: off) */
#define LB_G_ICMP_INTERVAL 6     /* too-big answers: ns between two at the steady rate (0: the default,
                                  * LB_ICMP_INTERVAL_DEFAULT; LB_NONE: no answers) */
#define LB_G_ICMP_BURST 7        /* ... and how many may go at once (0: LB_ICMP_BURST_DEFAULT) */
#define LB_GLOBALS 8

/* lb_globals[LB_G_DEFENSE] */
#define LB_DEF_SECURE_TCP 0x1    /* secure_tcp: the state tables of lb_tcp_fsm_secure (IPVS tcp_states_dos) */

/* the kernel's icmp_msgs_per_sec (1000) and icmp_msgs_burst (50) */
#define LB_ICMP_INTERVAL_DEFAULT 1000000
#define LB_ICMP_BURST_DEFAULT 50

/* The VIP filter (lb_vip_filter): one bit per hash of a destination address, set for every
 * address a service or port group listens on; lb_xdp_public passes a packet whose bit is clear
 * before it looks at anything else.  hash = lb_addr_fold(daddr) * LB_VIP_HASH_MUL >> (32 - bits) */
#define LB_VIP_FILTER_BITS 12
#define LB_VIP_FILTER_WORDS ((1 << LB_VIP_FILTER_BITS) / 64)
#define LB_VIP_HASH_MUL 0x9E3779B1
/* lb_vip_addrs: the same addresses exactly (a new connection's source bit set in lb_vip_filter is
 * looked up there, lb.c lb_from_a_vip): one VIP per service, plus the port groups' addresses, at
 * most one (VIP, protocol) per service (the control plane's fit check) */
#define LB_VIP_ADDRS (2 * LB_MAX_SERVICES)
/* lb_local_addrs: the director's own addresses, up to this many (the engine logs those left out) */
#define LB_LOCAL_ADDRS 1024

/* The established filter (lb_est_filter, lb_embryo.h): may a pure SYN's key have an entry in
 * lb_conns?  Bits per bitmap: a -D flag, 8 per lb_conns entry (lb/dataplane/program.py).
 * Bitmaps: LB_EST_CENSUS, the control plane's (every client -> VIP key in lb_conns at its last
 * sweep, and what it imported since), and two that promotions mark, LB_EST_MARKS +
 * lb_globals[LB_G_EST_WRITE]; a bit clear in all three: certainly not in lb_conns.  The three
 * are interleaved word by word (struct lb_est_word: w[bitmap]), so a SYN reads one cache line. */
#ifndef LB_EST_FILTER_BITS
#define LB_EST_FILTER_BITS 19
#endif
#define LB_EST_FILTER_WORDS ((1 << LB_EST_FILTER_BITS) / 64)
#define LB_EST_HASH_MUL 0x9E3779B1
#define LB_EST_CENSUS 0
#define LB_EST_MARKS 1
#define LB_EST_BITMAPS 3

/* Connection flags */
#define LB_CONN_F_INACTIVE 0x1   /* counted in InActConn (IPVS IP_VS_CONN_F_INACTIVE) */
#define LB_CONN_F_OUT 0x2        /* reverse entry of a NAT connection: reply -> client */
#define LB_CONN_F_PERSIST 0x4    /* controlled by a persistence template (keeps it alive) */
#define LB_CONN_F_EST_REPLY 0x8  /* reverse entry whose connection is ESTABLISHED: a reply's ACK */
                                 /* needs only this entry (lb_reply.h) */

/* IPVS TCP states, same numbering as IP_VS_TCP_S_* */
#define LB_TCP_S_NONE 0
#define LB_TCP_S_ESTABLISHED 1
#define LB_TCP_S_SYN_SENT 2
#define LB_TCP_S_SYN_RECV 3
#define LB_TCP_S_FIN_WAIT 4
#define LB_TCP_S_TIME_WAIT 5
#define LB_TCP_S_CLOSE 6
#define LB_TCP_S_CLOSE_WAIT 7
#define LB_TCP_S_LAST_ACK 8
#define LB_TCP_S_LISTEN 9
#define LB_TCP_S_SYNACK 10
#define LB_TCP_S_LAST 11
#define LB_UDP_S_NORMAL 11       /* index of the UDP timeout in lb_timeouts */
#define LB_TIMEOUTS 12

/* State tables (IPVS tcp_states): table * 4 + event, then * LB_TCP_S_LAST + state */
#define LB_FSM_INPUT 0
#define LB_FSM_OUTPUT 1
#define LB_FSM_INPUT_ONLY 2
#define LB_EV_SYN 0
#define LB_EV_FIN 1
#define LB_EV_ACK 2
#define LB_EV_RST 3
#define LB_FSM_SIZE (3 * 4 * LB_TCP_S_LAST)

/* Fragments (lb_frag.h): datagrams whose first fragment lb forwarded, remembered this long for
 * the rest (the kernel's ipfrag_time is 30 s; a datagram's fragments come within ms) */
#ifndef LB_FRAG_TABLE_SIZE
#define LB_FRAG_TABLE_SIZE 8192
#endif
#define LB_FRAG_TIMEOUT_NS 2000000000ULL
#define LB_FRAG_FIRST 1           /* lb_pkt.frag: offset 0, more fragments */
#define LB_FRAG_LATER 2           /* ... an offset: no L4 header */

/* A partial checksum's completion (lb_csum.h): bpf_csum_diff sums at most 512 bytes a call;
 * 8 of them, more than native XDP on a veth takes in one frame */
#define LB_CSUM_CHUNK 512
#define LB_CSUM_CHUNKS 8

/* Per-CPU counters of exceptional events (lb_counters); normal traffic is counted in the
 * service and real server stats only, to keep the per-packet path short */
#define LB_CNT_NO_REAL 0         /* new connection, no usable real server: to the local stack */
#define LB_CNT_NOT_SYN 1         /* TCP packet without connection and without SYN: passed */
#define LB_CNT_FRAGMENT 2        /* a fragment not TCP/UDP (IPv6: an extension header after the
                                  * fragment header), one after the first whose first was not
                                  * forwarded, or an IPv6 first one of no connection: passed */
#define LB_CNT_BAD_REAL 3        /* connection points at a real server that is gone: dropped */
#define LB_CNT_CONN_FULL 4       /* a connection table insert failed: the packet dropped (or a
                                  * NAT reply entry not made or not promoted: replies reach the
                                  * director's stack) */
#define LB_CNT_TAIL_CALL 5       /* a tail call failed (program missing): passed */
#define LB_CNT_TOO_BIG 6         /* tunnel: too big once encapsulated: answered "fragmentation
                                  * needed" / Packet Too Big, or dropped (IPv4 without DF) */
#define LB_CNT_SYN_INVALID 7     /* SYN with ACK, RST or FIN and no connection: passed, nothing made */
#define LB_CNT_DROP_PACKET 8     /* drop_packet defense: a new connection's packet dropped */
#define LB_CNT_PERSIST_FULL 9    /* lb_persist full: a template stays embryonic (evictable); or
                                  * its embryonic insert failed: the client has no template */
#define LB_CNT_ICMP_LIMITED 10   /* too big, over the answers' rate limit: dropped unanswered */
#define LB_CNT_TOO_BIG_UNANSWERED 11  /* too big and not answered: an ICMP error (never an ICMP
                                  * error about one), or headers longer than the quote holds */
#define LB_CNT_XMIT_FAILED 12    /* a packet could not be rebuilt (head/tail adjustment, bounds): dropped */
#define LB_CNT_LEASE_LAPSED 13   /* [ha], the daemon's lease ran out: a neighbour request for, or
                                  * a packet to, a VIP or nat_router dropped (lb_lease.h) */
#define LB_CNT_CSUM_COMPLETED 14 /* a partial checksum (the sender's tx offload, on a veth) completed
                                  * before forwarding (lb_csum.h) */
#define LB_CNT_CSUM_UNCOMPLETED 15  /* ... one in a segment past the frame's end or over 4 KiB: sent
                                  * as it is, which its receiver drops */
#define LB_CNT_TX_UNMAPPED 16  /* redirected to an interface not in lb_tx_ports: bpf_redirect,
                                  * whose ifindex the kernel looks up per packet (not a drop) */
#define LB_CNT_NOT_ROUTABLE 17   /* what the kernel drops before IPVS would see it (a length past
                                  * the frame or short of its headers, a martian source: among
                                  * them a VIP of this director's, the packet's own or another,
                                  * and any of the director's own addresses):
                                  * passed to it, nothing made, no real server sees it */
#define LB_CNT_FRAG_FORWARDED 18 /* a fragment after the first, forwarded as its first went
                                  * (lb_frag.h); LB_CNT_FRAGMENT counts those passed */
#define LB_CNT_UDP6_CSUM_FILLED 19 /* an IPv6 UDP datagram without a checksum (0) given a whole one
                                  * before it is forwarded, as IPVS's NAT does (lb_csum.h) */
#define LB_CNT_TUNNEL_ERROR 20  /* an ICMP error about a packet lb tunneled to a real server
                                  * relayed to its client (lb_icmp.h: lb_icmp_tunnel) */
#define LB_CNT_MAX 21
#define LB_COUNTERS 32           /* lb_counters' size: room to add counters without new pins */

/* Per-CPU tallies of the embryonic table's entries (lb_ct_events; a NAT connection has two, its
 * reverse entry's), which the control plane polls to estimate the table's fill between its
 * censuses (lb/dataplane/defense.py) */
#define LB_CTE_EMBRYO_NEW 0      /* entries made */
#define LB_CTE_EMBRYO_PROMOTED 1 /* ... moved to lb_conns (established) */
#define LB_CTE_EMBRYO_GONE 2     /* ... deleted by the data path (expired, reused) */
#define LB_CTE_MAX 4

/* ---- HA lease (lb_lease.h) ---- */
/* addresses the lease covers (lb_lease_addrs): the VIPs -- one per service, plus those of
 * firewall-mark services' port groups, at most one (VIP, protocol) per service -- and nat_router */
#define LB_LEASE_ADDRS (2 * LB_MAX_SERVICES + 1)
#define LB_LEASE_VIP 1           /* lb_lease_addrs value: what the address is (for `lb status`) */
#define LB_LEASE_ROUTER 2

#endif
