/* Map keys and values.  Addresses are 16 bytes for both families (IPv4 in the first 4 bytes);
 * ports are in network byte order.  Every layout is explicit (pad fields, no implicit padding).
 * lb/dataplane/layout.py describes the structs the control plane reads or writes field by field
 * and tests/test_layout.py holds both to the same sizes and offsets; cext/bpfbatch.c includes
 * this file.  User space can include it: it needs only linux/types.h and lb_consts.h. */
#ifndef LB_STRUCTS_H
#define LB_STRUCTS_H

#include <linux/types.h>
#include "lb_consts.h"

struct lb_svc_key {               /* lb_services key: (vip, vport, proto) */
    __u8 addr[16];
    __be16 port;
    __u8 proto;
    __u8 family;
};

struct lb_svc {                   /* lb_svc value, index = service id */
    __u8 addr[16];
    __be16 port;
    __u8 proto;
    __u8 family;
    __u32 sched;                  /* LB_SCHED_* */
    __u32 nreals;                 /* entries used in lb_svc_dests for this service */
    __u32 flags;                  /* LB_SVC_F_*: scheduler flags (sh-port, mh-fallback, ...) */
    __u32 wrr_mw;                 /* wrr: max weight - (gcd - 1), computed by the control plane */
    __u32 wrr_di;                 /* wrr: gcd of the positive weights */
    __u32 persist_timeout;        /* seconds; 0: not persistent (no templates) */
    __u32 fwmark;                 /* firewall-mark service: its mark (addr/port/proto are 0) */
    __u32 mh_size;                /* mh: Maglev table size (prime) */
    __be32 persist_mask[4];       /* IPv4 netmask (word 0) or IPv6 prefix as a 16-byte mask */
};

/* lb_fwm_ranges value (key: lb_svc_key with port 0): the port ranges of one (VIP, protocol)
 * that belong to firewall-mark services, consulted only when the exact lookup misses */
struct lb_port_range {
    __u16 lo;                     /* host byte order, inclusive */
    __u16 hi;
    __u32 svc;
};

struct lb_port_ranges {
    __u32 n;
    __u32 pad;
    struct lb_port_range r[LB_FWM_RANGES];
};

struct lb_sched_state {           /* lb_sched_state value, index = service id; written by BPF */
    __u32 cl;                     /* cursor: position of the last pick, or LB_POS_HEAD */
    __s32 cw;                     /* wrr current weight */
};

struct lb_dest {                  /* one position in a service's real server list */
    __u32 real;                   /* real id */
    __u32 weight;                 /* the real server's weight (stored here only: the pick
                                   * loops read one slot per server) */
    __u32 flags;                  /* copy of lb_real.flags */
};

struct lb_svc_dests {             /* lb_svc_dests value, index = service id; IPVS list order */
    struct lb_dest d[LB_MAX_SVC_REALS];
};

struct lb_real {                  /* lb_reals value, index = real id (one per service and server) */
    __u8 addr[16];
    __be16 port;
    __u8 family;
    __u8 fwd;                     /* LB_FWD_* */
    __u32 flags;                  /* LB_REAL_F_* */
    __u32 ifindex;                /* egress interface toward the real server */
    __u8 mac[6];                  /* the real server's (or next hop's) MAC */
    __u8 src_mac[6];              /* our MAC on ifindex */
    __u32 svc;                    /* owning service id */
    __u32 u_threshold;            /* IPVS upper connection threshold (0: none) */
    __u32 l_threshold;            /* lower threshold (0: 3/4 of the upper) */
    __u32 pos;                    /* its position in lb_svc_dests (where OVERLOAD is set) */
    __u8 tun_src[16];             /* tunnel: the outer source, our address toward the server */
    __u32 mtu;                    /* tunnel: the egress link's MTU (0: not checked) */
};

struct lb_real_counts {           /* a real server's connection counts */
    __u32 active;
    __u32 inactive;
    __u32 persist;                /* persistence templates pointing here (PersistConn) */
    __u32 pad;
};

/* lb_real_conns value, index = real id: BPF's counts, changed only by BPF, atomically, and
 * beside them what the schedulers take off those counts (lb_real_swept + lb_real_base, whose
 * sum the control plane writes in place through a shared mapping of the array: a whole-value
 * update would lose a count BPF made meanwhile), so an lc-family pick loop reads one entry per
 * real server */
struct lb_real_conns {
    __u32 active;
    __u32 inactive;
    __u32 persist;                /* persistence templates pointing here (PersistConn) */
    __u32 pad;
    struct lb_real_counts sched_off;   /* active, inactive (persist, pad: 0) */
};

struct lb_persist_key {           /* IPVS template: <proto, client & netmask, vip, vport> */
    __u8 caddr[16];
    __u8 vaddr[16];
    __be16 vport;
    __u8 proto;
    __u8 family;
    __u32 fwmark;                 /* firewall-mark services: <client & netmask, fwmark> */
};

struct lb_persist {
    __u64 last_ns;                /* last new connection or packet through it */
    __u32 real;
    __u32 timeout;                /* seconds: the service's persistence timeout (or 60 s, kept
                                   * past it), | LB_PERSIST_F_IDLE (lb_consts.h) */
};

struct lb_conn_key {
    __u8 saddr[16];
    __u8 daddr[16];
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 family;
    __u8 dir;                     /* 0: client -> vip (in); 1: real -> client (NAT out) */
    __u8 pad;
};

/* lb_conns4 key: an IPv4 connection in 16 bytes (lb_conns6 keeps lb_conn_key's 40), so an
 * established IPv4 entry's element is 128 bytes instead of 152: two cache lines, not three */
struct lb_conn_key4 {
    __be32 saddr;
    __be32 daddr;
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 dir;                     /* as lb_conn_key's */
    __u8 pad[2];
};

struct lb_conn {
    __u64 last_ns;                /* bpf_ktime_get_coarse_ns() of the last packet (CLOCK_MONOTONIC) */
    __u32 real;                   /* real id */
    __u32 svc;                    /* service id */
    __u32 timeout;                /* seconds, set on each state change as IPVS does */
    __u32 client_ifindex;         /* where the client's packets come in (NAT replies leave there) */
    __u8 state;                   /* LB_TCP_S_* or LB_UDP_S_NORMAL */
    __u8 flags;                   /* LB_CONN_F_* */
    __u8 pad[2];
    __u8 client_mac[6];           /* previous hop toward the client */
    __u8 local_mac[6];            /* our MAC on client_ifindex */
    __u8 vaddr[16];               /* the VIP and port the client used (firewall-mark services */
    __be16 vport;                 /* have many): NAT replies are rewritten back to them */
    __u8 pad2[6];                 /* to the u64 alignment: 64 bytes */
};

struct lb_clock {                 /* lb_clock value (per-CPU): the last coarse clock read */
    __u64 jiffies;                /* bpf_jiffies64() when it was read */
    __u64 now_ns;                 /* bpf_ktime_get_coarse_ns() then */
};

struct lb_stats {                 /* per-CPU, per service and per real server */
    __u64 conns;
    __u64 inpkts;
    __u64 outpkts;
    __u64 inbytes;
    __u64 outbytes;
};

/* smoothed rates written by the control plane's estimator (IPVS ip_vs_est.c), read by
 * `lb list --rate`; the BPF programs never touch them */
struct lb_rates {
    __u64 cps;
    __u64 inpps;
    __u64 outpps;
    __u64 inbps;
    __u64 outbps;
};

struct lb_sched_scratch {         /* per-CPU: scheduler loop state, then the hand-over to new_conn */
    __u32 svc;                    /* the pick: service id ... */
    __u32 real;                   /* ... and real id */
    __u32 n;                      /* loop state below; kept in map memory (volatile) because the */
    __u32 start;                  /* verifier does not track it there, so each loop iteration is */
    __u32 first;                  /* one state instead of one per range of every live register */
    __u32 maxw;
    __u64 loh;
    __u64 lw;
    __u32 from_template;          /* the pick came from a persistence template */
    /* the new connection's packet as lb_xdp_public_full classified it, for the scheduler programs
     * (dh, sh, mh hash and lblc/lblcr key on its addresses): they need not parse it again */
    __u32 sfold;                  /* lb_addr_fold() of the source address ... */
    __u32 dfold;                  /* ... and of the destination address */
    __be16 sport;
    __u8 family;
    __u8 pad;
    __u8 daddr[16];
};

/* lblc / lblcr tables (IPVS svc->sched_data): one entry per (service, destination address),
 * allocated as used, only by services with those schedulers */
struct lb_lblc_key {
    __u32 svc;
    __u8 family;
    __u8 pad[3];
    __u8 addr[16];                /* the packet's destination address (the VIP, or any address
                                   * of a firewall-mark service's group) */
};

struct lb_lblc {                  /* lblc: ip_vs_lblc_entry */
    __u64 lastuse_ns;             /* last lookup (CLOCK_MONOTONIC, as lb_conn.last_ns) */
    __u32 real;                   /* the cached real server */
    __u32 pad;
};

struct lb_lblcr {                 /* lblcr: ip_vs_lblcr_entry with its ip_vs_dest_set */
    __u64 lastuse_ns;
    __u64 lastmod_ns;             /* the set's last change */
    __u32 n;                      /* members used in real[] */
    __u32 pad;
    __u32 real[LB_LBLCR_SET_SIZE];  /* newest first, as list_add_rcu keeps the kernel's set */
};

/* dh / sh (lb_sched_buckets value, key = service id): read only while lb_svc names dh or sh (the
 * control plane writes it first); another scheduler's entry is stale or zero, and never read */
struct lb_sched_buckets {
    __u32 pos[LB_SCHED_BUCKETS];  /* list position in lb_svc_dests, or LB_NONE */
};

/* mh (lb_mh_last value, key = service id): the control plane's memory of each dest's
 * last_weight (the latest non-zero weight, which the table is built from), by list position */
struct lb_mh_last {
    __u32 w[LB_MAX_SVC_REALS];
};

/* lb_est_filter value (LB_EST_FILTER_WORDS entries, index = word): word `index` of each bitmap of
 * the established filter (lb_embryo.h), w[LB_EST_CENSUS] and w[LB_EST_MARKS + 0/1], side by side
 * in 32 bytes -- one cache line holds all a SYN reads.  BPF sets bits in the marks words
 * (atomically); the control plane writes the census words and clears a marks word in place, one
 * 8-byte store each, through a shared mapping of the array (BPF_F_MMAPABLE): a whole-value update
 * would overwrite the marks BPF sets meanwhile. */
struct lb_est_word {
    __u64 w[4];                   /* LB_EST_BITMAPS, and a pad to 32 bytes */
};

/* lb_vip_filter value (one entry): a bit per hash of every address a virtual service listens on
 * (LB_VIP_FILTER_BITS, LB_VIP_HASH_MUL), written by the control plane */
struct lb_vip_filter {
    __u64 bits[LB_VIP_FILTER_WORDS];
};

/* lb_csum_buf value (per-CPU): a partial checksum's segment, a chunk at a time (lb_csum.h) */
struct lb_csum_buf {
    __u8 b[LB_CSUM_CHUNK];
};

/* lb_icmp_bucket value (one entry): the too-big answers' token bucket, kept as the time the
 * bucket would be full again (GCRA: each answer moves it on by the interval) */
struct lb_icmp_bucket {
    __u64 tat_ns;
};

/* lb_frags4 key: an IPv4 datagram in fragments, as its fragments all say it (dir 0: a client's
 * packet, 1: a NAT reply; the addresses before any rewrite) */
struct lb_frag_key4 {
    __be32 saddr;
    __be32 daddr;
    __be16 id;
    __u8 proto;
    __u8 dir;
};

/* lb_frags6 key: an IPv6 datagram in fragments (the fragment header's identification) */
struct lb_frag_key6 {
    __be32 saddr[4];
    __be32 daddr[4];
    __be32 id;
    __u8 proto;
    __u8 dir;
    __u16 pad;
};

/* lb_frags4 / lb_frags6 value: the ports its first fragment carried (before any rewrite), and when it was
 * forwarded (lb_frag.h) */
struct lb_frag {
    __be16 sport;
    __be16 dport;
    __u32 pad;
    __u64 ns;
};

/* lb_frag6_scratch (per-CPU): an IPv6 first fragment's entry, or a later one's key, built off
 * the stack (lb_xdp_public_full's is near the verifier's 512 bytes) */
struct lb_frag6_note {
    struct lb_frag_key6 key;
    struct lb_frag frag;
};

/* mh (lb_mh_walk, per-CPU): where an mh-fallback walk longer than one run goes on */
struct lb_mh_walk {
    __u32 svc;                    /* service id + 1 while a walk is under way, else 0 */
    __u32 base;                   /* source port (mh-port) + client address: the hashed value */
    __u32 ihash;                  /* the first slot: probes start from it */
    __u32 next;                   /* the next probe */
};

/* ---- HA lease (lb_lease.h) ---- */
struct lb_lease {                 /* lb_lease value, the one entry; written by the control plane */
    __u64 expires_ns;             /* bpf_ktime_get_coarse_ns() until which this director claims its
                                   * addresses; 0: no lease (no [ha]: always) */
};

struct lb_addr_key {              /* lb_lease_addrs key: an address of this director's */
    __u8 addr[16];
    __u8 family;
    __u8 pad[3];
};

struct lb_addr16 {                /* lb_vip_addrs key: an address, 16 bytes (IPv4 in the first 4, the
                                   * rest 0: lb_pkt's saddr as it is, no copy on the stack) */
    __u8 addr[16];
};

#endif
