/* Every map of lb.c, declared here and nowhere else.  Each is pinned under LB_PIN_DIR so that
 * `lb list` reads it without the daemon and a restarted daemon adopts it with every connection;
 * the one exception, lb_mh_inner, is a type template (below).  Only lb/dataplane/ writes them.
 * BPF_TABLE_PINNED and friends come from bcc's helpers.h, which bcc includes in every program. */
#ifndef LB_MAPS_H
#define LB_MAPS_H

#include "lb_structs.h"

#define LB_PIN(name) LB_PIN_DIR "/" #name

BPF_TABLE_PINNED("hash", struct lb_svc_key, __u32, lb_services, LB_MAX_SERVICES, LB_PIN(lb_services));
/* firewall-mark services: port ranges per (VIP, protocol) (key port 0), and mark -> service id
 * (read by `lb list` and a restarting daemon); allocated as used */
BPF_TABLE_PINNED("hash", struct lb_svc_key, struct lb_port_ranges, lb_fwm_ranges, LB_MAX_SERVICES,
                 LB_PIN(lb_fwm_ranges), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", __u32, __u32, lb_fwm_services, LB_MAX_SERVICES, LB_PIN(lb_fwm_services),
                 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", __u32, __u32, lb_globals, LB_GLOBALS, LB_PIN(lb_globals));
BPF_TABLE_PINNED("array", __u32, struct lb_svc, lb_svc, LB_MAX_SERVICES, LB_PIN(lb_svc));
BPF_TABLE_PINNED("array", __u32, struct lb_sched_state, lb_sched_state, LB_MAX_SERVICES, LB_PIN(lb_sched_state));
/* one value per service holding its whole list: schedulers read it with one lookup */
BPF_TABLE_PINNED("array", __u32, struct lb_svc_dests, lb_svc_dests, LB_MAX_SERVICES, LB_PIN(lb_svc_dests));
BPF_TABLE_PINNED("array", __u32, struct lb_real, lb_reals, LB_MAX_REALS, LB_PIN(lb_reals));
/* BPF's counts and the schedulers' offsets (struct lb_real_conns); mapped by the control plane */
BPF_TABLE_PINNED("array", __u32, struct lb_real_conns, lb_real_conns, LB_MAX_REALS, LB_PIN(lb_real_conns),
                 BPF_F_MMAPABLE);
/* IPVS's OVERLOAD flag of servers with a u_threshold: set when a connection binds, cleared
 * when one unbinds (BPF, or the control plane's sweep) */
BPF_TABLE_PINNED("array", __u32, __u32, lb_real_overload, LB_MAX_REALS, LB_PIN(lb_real_overload));
/* what the control plane's expiry sweep took away from lb_real_conns (it cannot add atomically) */
BPF_TABLE_PINNED("array", __u32, struct lb_real_counts, lb_real_swept, LB_MAX_REALS, LB_PIN(lb_real_swept));
/* quiesce_server: the connections a real server had when a server joined its service, which
 * the schedulers leave out (written by the control plane; lb list and thresholds ignore it;
 * the schedulers read it summed with lb_real_swept in lb_real_conns' sched_off) */
BPF_TABLE_PINNED("array", __u32, struct lb_real_counts, lb_real_base, LB_MAX_REALS, LB_PIN(lb_real_base));
/* established (and closing) connections, one table per family (lb_conns4: a 16-byte key): only a
 * connection that got past its first packets (lb_embryo.h) comes here, so a flood of new sources
 * never evicts one.  "lb_conns" means both (lb_conntrack.h's lb_conns_* helpers; the control
 * plane's lb/dataplane/maps.py ConnTables) */
BPF_TABLE_PINNED("lru_hash", struct lb_conn_key4, struct lb_conn, lb_conns4, LB_CONN4_TABLE_SIZE, LB_PIN(lb_conns4));
BPF_TABLE_PINNED("lru_hash", struct lb_conn_key, struct lb_conn, lb_conns6, LB_CONN6_TABLE_SIZE, LB_PIN(lb_conns6));
/* embryonic connections (TCP before ESTABLISHED, UDP's first packet) and their NAT reverse
 * entries: an LRU of their own, where a flood can only evict its own kind */
BPF_TABLE_PINNED("lru_hash", struct lb_conn_key, struct lb_conn, lb_conns_embryo, LB_EMBRYO_TABLE_SIZE,
                 LB_PIN(lb_conns_embryo));
/* persistence templates: not preallocated, so services without persistence cost nothing; a
 * template comes here when the connection that made it is established (lb_embryo.h) */
BPF_TABLE_PINNED("hash", struct lb_persist_key, struct lb_persist, lb_persist, LB_PERSIST_TABLE_SIZE,
                 LB_PIN(lb_persist), BPF_F_NO_PREALLOC);
/* templates made by embryonic connections, until one of them is established */
BPF_TABLE_PINNED("lru_hash", struct lb_persist_key, struct lb_persist, lb_persist_embryo, LB_EMBRYO_TABLE_SIZE,
                 LB_PIN(lb_persist_embryo));
BPF_TABLE_PINNED("array", __u32, __u32, lb_tcp_fsm, LB_FSM_SIZE, LB_PIN(lb_tcp_fsm));
/* secure_tcp's state tables (IPVS tcp_states_dos), used while LB_DEF_SECURE_TCP is set */
BPF_TABLE_PINNED("array", __u32, __u32, lb_tcp_fsm_secure, LB_FSM_SIZE, LB_PIN(lb_tcp_fsm_secure));
BPF_TABLE_PINNED("array", __u32, __u32, lb_timeouts, LB_TIMEOUTS, LB_PIN(lb_timeouts));
BPF_TABLE_PINNED("percpu_array", __u32, struct lb_stats, lb_svc_stats, LB_MAX_SERVICES, LB_PIN(lb_svc_stats));
BPF_TABLE_PINNED("percpu_array", __u32, struct lb_stats, lb_real_stats, LB_MAX_REALS, LB_PIN(lb_real_stats));
/* per-second rates, smoothed as IPVS's estimator does: written every 2 s by the control plane */
BPF_TABLE_PINNED("array", __u32, struct lb_rates, lb_svc_rates, LB_MAX_SERVICES, LB_PIN(lb_svc_rates));
BPF_TABLE_PINNED("array", __u32, struct lb_rates, lb_real_rates, LB_MAX_REALS, LB_PIN(lb_real_rates));
BPF_TABLE_PINNED("percpu_array", __u32, __u64, lb_counters, LB_COUNTERS, LB_PIN(lb_counters));
BPF_TABLE_PINNED("percpu_array", __u32, __u64, lb_ct_events, LB_CTE_MAX, LB_PIN(lb_ct_events));
/* the addresses of every virtual service, hashed to a bit: the first test of lb_xdp_public */
BPF_TABLE_PINNED("array", __u32, struct lb_vip_filter, lb_vip_filter, 1, LB_PIN(lb_vip_filter));
/* ... and those addresses exactly, the value a bit (1 << LB_AF_*) per family holding it, for the
 * rare new connection whose source's bit is set: one from a VIP of this director's is the
 * kernel's to drop (lb.c lb_from_a_vip) */
BPF_TABLE_PINNED("hash", struct lb_addr16, __u32, lb_vip_addrs, LB_VIP_ADDRS, LB_PIN(lb_vip_addrs),
                 BPF_F_NO_PREALLOC);
/* The director's own addresses (every interface's, as the engine reads them), hashed to a bit as
 * in lb_vip_filter, and exactly, the value a bit per family: a new connection from one is a forged
 * source, a martian to the kernel (lb.c lb_from_the_director).  Apart from lb_vip_filter, which
 * every packet's destination is tested against. */
BPF_TABLE_PINNED("array", __u32, struct lb_vip_filter, lb_local_filter, 1, LB_PIN(lb_local_filter));
BPF_TABLE_PINNED("hash", struct lb_addr16, __u32, lb_local_addrs, LB_LOCAL_ADDRS, LB_PIN(lb_local_addrs),
                 BPF_F_NO_PREALLOC);
/* may a SYN's key be in lb_conns (lb_embryo.h): the control plane's census and two BPF bitmaps,
 * interleaved word by word; the control plane writes its words through a shared mapping */
BPF_TABLE_PINNED("array", __u32, struct lb_est_word, lb_est_filter, LB_EST_FILTER_WORDS, LB_PIN(lb_est_filter),
                 BPF_F_MMAPABLE);
/* the tunnel's too-big answers: one token bucket for the whole director (as the kernel's
 * icmp_global_allow) */
BPF_TABLE_PINNED("array", __u32, struct lb_icmp_bucket, lb_icmp_bucket, 1, LB_PIN(lb_icmp_bucket));
/* IPv4 datagrams in fragments whose first fragment was forwarded: its ports, for the rest (lb_frag.h) */
BPF_TABLE_PINNED("lru_hash", struct lb_frag_key4, struct lb_frag, lb_frags4, LB_FRAG_TABLE_SIZE, LB_PIN(lb_frags4));
/* ... IPv6's, and where their keys are built (per-CPU scratch) */
BPF_TABLE_PINNED("lru_hash", struct lb_frag_key6, struct lb_frag, lb_frags6, LB_FRAG_TABLE_SIZE, LB_PIN(lb_frags6));
BPF_TABLE_PINNED("percpu_array", __u32, struct lb_frag6_note, lb_frag6_scratch, 1, LB_PIN(lb_frag6_scratch));
/* ... and their programs' (LB_FRAG6_*) */
BPF_TABLE_PINNED("prog", __u32, __u32, lb_frag6_progs, LB_FRAG6_PROGS, LB_PIN(lb_frag6_progs));
/* ... and an ICMP error's about the tunnel's own packets (LB_ICMP_TUNNEL) */
BPF_TABLE_PINNED("prog", __u32, __u32, lb_icmp_progs, LB_ICMP_PROGS, LB_PIN(lb_icmp_progs));
/* ... and the public side's full program, after lb_xdp_public's short way (LB_PUBLIC_FULL) */
BPF_TABLE_PINNED("prog", __u32, __u32, lb_public_progs, LB_PUBLIC_PROGS, LB_PIN(lb_public_progs));
/* a partial checksum's segment, a chunk at a time (lb_csum.h; per-CPU scratch, one packet at a time) */
BPF_TABLE_PINNED("percpu_array", __u32, struct lb_csum_buf, lb_csum_buf, 1, LB_PIN(lb_csum_buf));

/* Pinned: the kernel empties a program array when its last user reference goes, and a
 * killed daemon must leave new connections working. */
BPF_TABLE_PINNED("prog", __u32, __u32, lb_progs, LB_PROG_MAX, LB_PIN(lb_progs));
/* While a restart moves the maps into new [tables] sizes (lb/dataplane/resize.py), the programs
 * it replaced, by side (LB_PREV_*): a packet of a connection only their maps hold yet goes to
 * them.  Not pinned: empty once the daemon that set it is gone. */
BPF_TABLE("prog", __u32, __u32, lb_progs_prev, LB_PREV_MAX);
/* The interfaces lb attaches to and its real servers' next hops, key and value their ifindex
 * (lb/dataplane/xdp.py writes each at its attach or its first resolution, in the daemon's
 * namespace): a redirect through this devmap finds the device at once, where bpf_redirect()
 * has the kernel look its ifindex up for every packet.  Not pinned: each load's programs get
 * theirs filled by the daemon that loaded them. */
BPF_DEVMAP(lb_tx_ports, LB_TX_PORTS);
BPF_TABLE_PINNED("percpu_array", __u32, struct lb_sched_scratch, lb_scratch, 1, LB_PIN(lb_scratch));
/* each CPU's last read of the coarse clock, with its jiffy (lb_clock.h) */
BPF_TABLE_PINNED("percpu_array", __u32, struct lb_clock, lb_clock, 1, LB_PIN(lb_clock));

/* lblc / lblcr: (service, destination address) -> real server / server set; not preallocated,
 * so services with other schedulers cost nothing; the control plane expires entries */
BPF_TABLE_PINNED("hash", struct lb_lblc_key, struct lb_lblc, lb_lblc, LB_LBLC_TABLE_SIZE,
                 LB_PIN(lb_lblc), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct lb_lblc_key, struct lb_lblcr, lb_lblcr, LB_LBLC_TABLE_SIZE,
                 LB_PIN(lb_lblcr), BPF_F_NO_PREALLOC);

/* dh / sh bucket tables by service id: an array, not a hash, so the verifier inlines the lookup
 * into a load and dh's and sh's SYNs (picked in lb_xdp_public_full) pay no hash lookup for their
 * bucket (40-60 ns here); LB_MAX_SERVICES KiB, an entry read only while lb_svc names dh or sh */
BPF_TABLE_PINNED("array", __u32, struct lb_sched_buckets, lb_sched_buckets, LB_MAX_SERVICES,
                 LB_PIN(lb_sched_buckets));
/* mh: each mh service's table is an array map of its own (mh_size slots of real ids, a prime),
 * built by the control plane (lb.sched.model.mh_table, lb/dataplane/mhtable.py) and reached
 * through lb_mh_tables by service id: services without mh have none and pay nothing.
 * BPF_F_INNER_MAP lets every table have its own size.  lb_mh_inner is not pinned: it only
 * gives lb_mh_tables its inner map type, which the kernel copies when it creates lb_mh_tables;
 * nothing reads or writes it, and an adopted lb_mh_tables does not need it. */
BPF_F_TABLE("array", __u32, __u32, lb_mh_inner, 1, BPF_F_INNER_MAP);
BPF_TABLE_PINNED("array_of_maps$lb_mh_inner", int, int, lb_mh_tables, LB_MAX_SERVICES,
                 LB_PIN(lb_mh_tables));
/* mh: the control plane's dest->last_weight per service (BPF never reads it) */
BPF_TABLE_PINNED("hash", __u32, struct lb_mh_last, lb_mh_last, LB_MAX_SERVICES, LB_PIN(lb_mh_last),
                 BPF_F_NO_PREALLOC);
/* mh-fallback's walk between lb_sched_mh and its own tail call (per-CPU, one packet at a
 * time).  Pinned like lb_scratch, which programs of two loads share while a restarted daemon
 * rewrites lb_progs: a walk that crosses into the new lb_sched_mh goes on where it was rather
 * than starting over. */
BPF_TABLE_PINNED("percpu_array", __u32, struct lb_mh_walk, lb_mh_walk, 1, LB_PIN(lb_mh_walk));

/* ---- HA lease (lb_lease.h): the daemon's lease and the addresses it covers, written by the
 * control plane with [ha] (absent or 0: no lease) ---- */
BPF_TABLE_PINNED("array", __u32, struct lb_lease, lb_lease, 1, LB_PIN(lb_lease));
BPF_TABLE_PINNED("hash", struct lb_addr_key, __u32, lb_lease_addrs, LB_LEASE_ADDRS, LB_PIN(lb_lease_addrs),
                 BPF_F_NO_PREALLOC);

#endif
