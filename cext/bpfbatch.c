/* Batch operations on BPF maps for big connection tables.
 *
 * Python walking a 1M-entry LRU hash with BPF_MAP_GET_NEXT_KEY costs two syscalls per entry;
 * BPF_MAP_LOOKUP_BATCH moves thousands of entries per syscall.  These helpers only move bytes:
 * the layouts are decoded in lb/dataplane/layout.py.  bb_format_conns and bb_sweep_scan read
 * lb_conns and lb_reals entries through the data plane's own structs (bpf/lb_structs.h;
 * cext/build_bpfbatch.py puts bpf/ on the include path).
 */
#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <arpa/inet.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/bpf.h>
#include <netinet/in.h>

#include "lb_structs.h"

static long bb_sys(int cmd, union bpf_attr *attr)
{
    return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

/* Dump up to max_entries (key, value) pairs into keys/values (a table holding more: what
 * fits, whole buckets).  Returns the count, or -errno.  chunk is the number of entries asked
 * for per syscall. */
long bb_dump(int fd, unsigned key_size, unsigned value_size,
             void *keys, void *values, unsigned long max_entries, unsigned chunk)
{
    union bpf_attr attr;
    unsigned long total = 0;
    unsigned long long in_batch = 0, out_batch = 0;
    int first = 1;

    if (chunk == 0)
        chunk = 4096;
    while (total < max_entries) {
        unsigned want = chunk;
        if (want > max_entries - total)
            want = (unsigned)(max_entries - total);
        memset(&attr, 0, sizeof(attr));
        attr.batch.map_fd = fd;
        attr.batch.in_batch = first ? 0 : (unsigned long long)(unsigned long)&in_batch;
        attr.batch.out_batch = (unsigned long long)(unsigned long)&out_batch;
        attr.batch.keys = (unsigned long long)(unsigned long)((char *)keys + total * key_size);
        attr.batch.values = (unsigned long long)(unsigned long)((char *)values + total * value_size);
        attr.batch.count = want;
        long rc = bb_sys(BPF_MAP_LOOKUP_BATCH, &attr);
        int err = rc < 0 ? errno : 0;
        total += attr.batch.count;
        if (err == ENOENT)
            break;              /* end of map: count holds the last partial batch */
        /* the next bucket holds more entries than the room left (a hash the data path filled
         * behind the walk while it emptied the buckets already read: more entries than
         * max_entries come by): the buffer is full, the dump is what fits */
        if (err == ENOSPC && want < chunk)
            break;
        if (err)
            return -err;
        in_batch = out_batch;
        first = 0;
    }
    return (long)total;
}

/* Delete count keys (packed, key_size each).  Returns the number deleted (keys that were not
 * there are skipped and not counted, as bpfsys.delete says False for them), or -errno. */
long bb_delete(int fd, unsigned key_size, const void *keys, unsigned long count)
{
    union bpf_attr attr;
    unsigned long done = 0, missing = 0;

    while (done < count) {
        memset(&attr, 0, sizeof(attr));
        attr.batch.map_fd = fd;
        attr.batch.keys = (unsigned long long)(unsigned long)((const char *)keys + done * key_size);
        attr.batch.count = (unsigned)(count - done);
        long rc = bb_sys(BPF_MAP_DELETE_BATCH, &attr);
        if (rc < 0) {
            int err = errno;
            done += attr.batch.count;
            if (err == ENOENT) {
                /* A key vanished under us (LRU eviction or the data path): skip it. */
                done += 1;
                missing += 1;
                continue;
            }
            return -err;
        }
        done += attr.batch.count;
    }
    return (long)(done - missing);
}

/* Insert or replace count (key, value) pairs.  Returns the number written, or -errno. */
long bb_update(int fd, unsigned key_size, unsigned value_size,
               const void *keys, const void *values, unsigned long count)
{
    union bpf_attr attr;
    unsigned long done = 0;

    while (done < count) {
        memset(&attr, 0, sizeof(attr));
        attr.batch.map_fd = fd;
        attr.batch.keys = (unsigned long long)(unsigned long)((const char *)keys + done * key_size);
        attr.batch.values = (unsigned long long)(unsigned long)((const char *)values + done * value_size);
        attr.batch.count = (unsigned)(count - done);
        long rc = bb_sys(BPF_MAP_UPDATE_BATCH, &attr);
        done += attr.batch.count;
        if (rc < 0)
            return -errno;
    }
    return (long)done;
}

/* Look up count keys one by one (there is no batch lookup by key): values[i] and found[i] = 1,
 * or found[i] = 0 when the key is absent.  Returns count, or -errno.  The undo log of an apply
 * reads what it is about to overwrite through this (lb/dataplane/txn.py). */
long bb_lookup(int fd, unsigned key_size, unsigned value_size, const void *keys, void *values,
               unsigned char *found, unsigned long count)
{
    union bpf_attr attr;

    for (unsigned long i = 0; i < count; i++) {
        memset(&attr, 0, sizeof(attr));
        attr.map_fd = fd;
        attr.key = (unsigned long long)(unsigned long)((const char *)keys + i * key_size);
        attr.value = (unsigned long long)(unsigned long)((char *)values + i * value_size);
        if (bb_sys(BPF_MAP_LOOKUP_ELEM, &attr) == 0) {
            found[i] = 1;
        } else if (errno == ENOENT) {
            found[i] = 0;
        } else {
            return -errno;
        }
    }
    return (long)count;
}

/* Run prog once per packet: packets are count frames of pkt_len bytes, back to back, used in
 * turn for iterations runs.  BPF_PROG_TEST_RUN does not reset a packet between repeats, so
 * every run is its own syscall with repeat=1 and a fresh copy.  Returns the summed in-kernel
 * duration (ns) of all runs, or -errno; *last_retval gets the last XDP action (0 before any).
 * No packets (count or pkt_len 0) is -EINVAL, before any run (i % count divided by zero). */
long long bb_test_run_loop(int prog_fd, const void *packets, unsigned pkt_len, unsigned count,
                           unsigned long iterations, unsigned *last_retval)
{
    union bpf_attr attr;
    unsigned char out[4096];
    long long total = 0;

    *last_retval = 0;
    if (count == 0 || pkt_len == 0)
        return -EINVAL;

    for (unsigned long i = 0; i < iterations; i++) {
        memset(&attr, 0, sizeof(attr));
        attr.test.prog_fd = prog_fd;
        attr.test.data_in = (unsigned long long)(unsigned long)((const char *)packets + (i % count) * pkt_len);
        attr.test.data_size_in = pkt_len;
        attr.test.data_out = (unsigned long long)(unsigned long)out;
        attr.test.data_size_out = sizeof(out);
        attr.test.repeat = 1;
        if (bb_sys(BPF_PROG_TEST_RUN, &attr) < 0)
            return -errno;
        total += attr.test.duration;
        *last_retval = attr.test.retval;
    }
    return total;
}

/* Run prog once on each of count packets of lengths lens[i] (back to back in packets), each
 * from its own copy: its output into out (a slot of out_cap bytes per packet), out_lens[i] its
 * length, retvals[i] the XDP action, errs[i] 0 or the errno of a run the kernel refused.  The
 * packet fuzzer's loop (tests/test_fuzz_packets.py): 100,000 packets through three programs
 * in seconds, where a Python call per run would take minutes. */
void bb_test_run_each(int prog_fd, const void *packets, const unsigned *lens, unsigned count,
                      void *out, unsigned out_cap, unsigned *out_lens, unsigned *retvals, int *errs)
{
    union bpf_attr attr;
    const char *p = packets;

    for (unsigned i = 0; i < count; i++) {
        memset(&attr, 0, sizeof(attr));
        attr.test.prog_fd = prog_fd;
        attr.test.data_in = (unsigned long long)(unsigned long)p;
        attr.test.data_size_in = lens[i];
        attr.test.data_out = (unsigned long long)(unsigned long)((char *)out + (unsigned long)i * out_cap);
        attr.test.data_size_out = out_cap;
        attr.test.repeat = 1;
        errs[i] = bb_sys(BPF_PROG_TEST_RUN, &attr) < 0 ? errno : 0;
        out_lens[i] = attr.test.data_size_out;
        retvals[i] = attr.test.retval;
        p += lens[i];
    }
}

/* One BPF_PROG_TEST_RUN of prog over one packet, repeated `repeat` times in the kernel (the packet
 * is NOT reset between repeats: for programs that put back what they change, e.g. the bench's
 * two-CPU driver).  *avg_ns gets the kernel's mean duration of a run, *retval the last action.
 * Returns 0 or -errno.  Called from several threads at once (cffi drops the GIL). */
long bb_test_run_repeat(int prog_fd, const void *packet, unsigned pkt_len, unsigned repeat,
                        unsigned *avg_ns, unsigned *retval)
{
    union bpf_attr attr;
    unsigned char out[4096];

    memset(&attr, 0, sizeof(attr));
    attr.test.prog_fd = prog_fd;
    attr.test.data_in = (unsigned long long)(unsigned long)packet;
    attr.test.data_size_in = pkt_len;
    attr.test.data_out = (unsigned long long)(unsigned long)out;
    attr.test.data_size_out = sizeof(out);
    attr.test.repeat = repeat;
    if (bb_sys(BPF_PROG_TEST_RUN, &attr) < 0)
        return -errno;
    *avg_ns = attr.test.duration;
    *retval = attr.test.retval;
    return 0;
}

/* ---- `lb list -c`: the ipvsadm -L -c -n lines of a dumped lb_conns, formatted in C ----
 *
 * Python objects per connection (tuples, ip_address, ConnRow, %-formatting) cost ~10 us each:
 * 11 s for a 1M-entry table.  Here the dumped keys/values and the dumped lb_reals array are
 * decoded and printed straight into a caller buffer, as struct lb_conn_key, lb_conn and lb_real.
 * Python checks that the maps' sizes are these (lb/dataplane/reader.py: a module built from
 * an older header) and tests/test_conn_listing_fast.py compares the output byte for byte with
 * the pure-Python formatter (lb/listing.py). */

/* The established filter's census (bpf/lb_embryo.h lb_est_bit; lb/dataplane/layout.py
 * est_filter_bit is the same in Python): the bits of n connection keys ORed into words, a bitmap
 * of 1 << bits.  In C because the sweep rebuilds it from every key of lb_conns every 5 s. */
_Static_assert(sizeof(struct lb_conn_key) == 40, "lb_est_bit hashes 10 words");
void bb_est_census(const void *keys, unsigned long n, unsigned bits, uint64_t *words)
{
    const unsigned char *k = keys;
    for (unsigned long i = 0; i < n; i++, k += sizeof(struct lb_conn_key)) {
        uint32_t w[10];
        memcpy(w, k, sizeof(w));
        uint32_t h = w[0] ^ w[1] ^ w[2] ^ w[3];
        h = (h * LB_EST_HASH_MUL) ^ w[4] ^ w[5] ^ w[6] ^ w[7];
        h = (h * LB_EST_HASH_MUL) ^ w[8];
        h = (h * LB_EST_HASH_MUL) ^ w[9];
        uint32_t b = (uint32_t)(h * LB_EST_HASH_MUL) >> (32 - bits);
        words[b >> 6] |= 1ULL << (b & 63);
    }
}

/* The expiry sweep's pass over a dumped connection table (lb/dataplane/conntable.py
 * ConnTable.sweep; 1M entries a pass every 5 s, ~3 s of a core in Python): each client entry
 * (not LB_CONN_F_OUT) counted for its real server and class into census[real * 2 + inactive]
 * (real ids below nreals; others are no real server's); the indices of the entries the sweep
 * must look at itself written to look -- those whose timeout has passed as lb_conn_expired
 * reckons it (a signed 64-bit difference: layout.elapsed_ns), and, when persist, the client
 * entries with LB_CONN_F_PERSIST (their templates' census); with words, the live client
 * entries' keys (struct lb_conn_key) ORed into the established filter's census bitmap, as
 * bb_est_census.  Returns the count written to look (at most n). */
unsigned long bb_sweep_scan(const void *keys, const void *values, unsigned long n, unsigned long long now_ns,
                            uint32_t *census, unsigned long nreals, int persist, unsigned bits,
                            uint64_t *words, uint32_t *look)
{
    const unsigned char *k = keys, *v = values;
    unsigned long m = 0;
    for (unsigned long i = 0; i < n; i++, k += sizeof(struct lb_conn_key), v += sizeof(struct lb_conn)) {
        struct lb_conn c;
        memcpy(&c, v, sizeof(c));
        int out = (c.flags & LB_CONN_F_OUT) != 0;
        if (!out && c.real < nreals)
            census[(unsigned long)c.real * 2 + ((c.flags & LB_CONN_F_INACTIVE) ? 1 : 0)]++;
        /* expired: elapsed > timeout (a stamp ahead of the clock is a negative elapsed: live) */
        int expired = (int64_t)(now_ns - c.last_ns) > (int64_t)((uint64_t)c.timeout * 1000000000ULL);
        if (expired || (persist && !out && (c.flags & LB_CONN_F_PERSIST))) {
            look[m++] = (uint32_t)i;
            if (expired)
                continue;
        }
        if (words && !out)
            bb_est_census(k, 1, bits, words);
    }
    return m;
}

/* The sweep's recount (lb/dataplane/conntable.py sweep_scan): for each of the n real ids, S0 --
 * what BPF counted (lb_real_conns) less what the control plane took off (lb_real_swept), read
 * before the dumps, as a signed 32-bit difference -- less W, the tables' census (census: active
 * and inactive per id, as bb_sweep_scan counts them; persist: templates per id).  conns and swept
 * hold the arrays whole, indexed by id, when by_index, else the ids' values in rids' order.
 * Writes the ids whose (active, inactive, persist) difference is not 0 to out_rid and the three
 * differences to out_d; returns how many.  In C because at 64,000 real servers the same pass in
 * Python held the interpreter ~0.2 s a sweep, which an apply running beside the scan waited on. */
unsigned long bb_sweep_recount(const void *conns, const void *swept, int by_index, const uint32_t *census,
                               const uint32_t *persist, unsigned long nreals, const uint32_t *rids,
                               unsigned long n, uint32_t *out_rid, int64_t *out_d)
{
    unsigned long m = 0;
    for (unsigned long j = 0; j < n; j++) {
        uint32_t r = rids[j];
        unsigned long at = by_index ? r : j;
        struct lb_real_conns c;
        struct lb_real_counts s;
        memcpy(&c, (const char *)conns + at * sizeof(c), sizeof(c));
        memcpy(&s, (const char *)swept + at * sizeof(s), sizeof(s));
        uint32_t w0 = 0, w1 = 0, w2 = 0;
        if (r < nreals) {
            w0 = census[2 * (unsigned long)r];
            w1 = census[2 * (unsigned long)r + 1];
            w2 = persist[r];
        }
        int64_t d0 = (int64_t)(int32_t)(c.active - s.active) - w0;
        int64_t d1 = (int64_t)(int32_t)(c.inactive - s.inactive) - w1;
        int64_t d2 = (int64_t)(int32_t)(c.persist - s.persist) - w2;
        if (d0 || d1 || d2) {
            out_rid[m] = r;
            out_d[3 * m] = d0;
            out_d[3 * m + 1] = d1;
            out_d[3 * m + 2] = d2;
            m++;
        }
    }
    return m;
}

unsigned bb_sizeof_real_conns(void) { return sizeof(struct lb_real_conns); }
unsigned bb_sizeof_real_counts(void) { return sizeof(struct lb_real_counts); }

/* The sweep's question for each template (ConnTable.sweep, ip_vs_conn_expire): the latest
 * moment, in ns from now, one of the connections it controls runs out (negative: already ran
 * out).  nt templates, keys tkeys (struct lb_persist_key each) and real ids treal; left[t] is
 * raised to each such connection's timeout - elapsed (the caller starts it at INT64_MIN:
 * controls none).  A connection is a client entry (not LB_CONN_F_OUT) flagged LB_CONN_F_PERSIST
 * of a service svc < nsvc with persistent[svc]; its template's key is its client address ANDed
 * with masks[svc] (16 bytes) and rest[svc] after it (the key's other 24 bytes), as
 * bpf/lb_persist.h lb_persist_key_from makes it, and its real id the template's.  slots (nslots,
 * a power of two > nt, zeroed by the caller) is the index of tkeys this builds.  In C because with
 * templates every persistent connection is mapped at each sweep: ~1.8 s of a core at 1M in
 * Python.  Returns the connections mapped to a template. */
_Static_assert(sizeof(struct lb_persist_key) == 40, "the template key hashes 5 words");
static uint64_t bb_tkey_hash(const void *key)
{
    uint64_t w[5], h = 0;
    memcpy(w, key, sizeof(w));
    for (int i = 0; i < 5; i++)
        h = (h ^ w[i]) * 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 29);
}

unsigned long bb_sweep_controlling(const void *keys, const void *values, unsigned long n, unsigned long long now_ns,
                                   const void *tkeys, const uint32_t *treal, unsigned long nt,
                                   const uint8_t *masks, const uint8_t *rest, const uint8_t *persistent,
                                   unsigned long nsvc, int64_t *left, uint32_t *slots, unsigned long nslots)
{
    const unsigned char *k = keys, *v = values, *tk = tkeys;
    unsigned long mapped = 0, mask = nslots - 1;
    if (nslots == 0 || (nslots & mask) || nslots <= nt)
        return 0;
    for (unsigned long t = 0; t < nt; t++) {
        unsigned long s = bb_tkey_hash(tk + t * sizeof(struct lb_persist_key)) & mask;
        while (slots[s])
            s = (s + 1) & mask;
        slots[s] = (uint32_t)(t + 1);
    }
    for (unsigned long i = 0; i < n; i++, k += sizeof(struct lb_conn_key), v += sizeof(struct lb_conn)) {
        struct lb_conn c;
        memcpy(&c, v, sizeof(c));
        if ((c.flags & LB_CONN_F_OUT) || !(c.flags & LB_CONN_F_PERSIST) || c.svc >= nsvc || !persistent[c.svc])
            continue;
        unsigned char pk[sizeof(struct lb_persist_key)];
        for (int b = 0; b < 16; b++)
            pk[b] = k[b] & masks[(unsigned long)c.svc * 16 + b];
        memcpy(pk + 16, rest + (unsigned long)c.svc * (sizeof(pk) - 16), sizeof(pk) - 16);
        int64_t l = (int64_t)((uint64_t)c.timeout * 1000000000ULL) - (int64_t)(now_ns - c.last_ns);
        int hit = 0;
        /* every template with this key and the connection's real: one of each table */
        for (unsigned long s = bb_tkey_hash(pk) & mask; slots[s]; s = (s + 1) & mask) {
            unsigned long t = slots[s] - 1;
            if (treal[t] == c.real && !memcmp(tk + t * sizeof(pk), pk, sizeof(pk))) {
                if (l > left[t])
                    left[t] = l;
                hit = 1;
            }
        }
        mapped += hit;
    }
    return mapped;
}

/* lb_conns is two tables (bpf/lb_conntrack.h): n keys of lb_conns4 (struct lb_conn_key4) written
 * out as the struct lb_conn_key every reader of lb_conns takes (lb/dataplane/maps.py ConnTables) */
void bb_widen_conn_keys4(const void *keys4, void *keys, unsigned long n)
{
    const struct lb_conn_key4 *s = keys4;
    struct lb_conn_key *d = keys;
    for (unsigned long i = 0; i < n; i++, s++, d++) {
        memset(d, 0, sizeof(*d));
        memcpy(d->saddr, &s->saddr, 4);
        memcpy(d->daddr, &s->daddr, 4);
        d->sport = s->sport;
        d->dport = s->dport;
        d->proto = s->proto;
        d->family = LB_AF_INET;
        d->dir = s->dir;
    }
}

unsigned bb_sizeof_conn_key(void) { return sizeof(struct lb_conn_key); }
unsigned bb_sizeof_conn(void) { return sizeof(struct lb_conn); }
unsigned bb_sizeof_real(void) { return sizeof(struct lb_real); }
unsigned bb_sizeof_persist_key(void) { return sizeof(struct lb_persist_key); }

/* ipvsadm's names of the LB_TCP_S_* states (layout.TCP_STATES reads the same names) */
static const char *const bb_tcp_states[LB_TCP_S_LAST] = {
    [LB_TCP_S_NONE] = "NONE", [LB_TCP_S_ESTABLISHED] = "ESTABLISHED",
    [LB_TCP_S_SYN_SENT] = "SYN_SENT", [LB_TCP_S_SYN_RECV] = "SYN_RECV",
    [LB_TCP_S_FIN_WAIT] = "FIN_WAIT", [LB_TCP_S_TIME_WAIT] = "TIME_WAIT",
    [LB_TCP_S_CLOSE] = "CLOSE", [LB_TCP_S_CLOSE_WAIT] = "CLOSE_WAIT",
    [LB_TCP_S_LAST_ACK] = "LAST_ACK", [LB_TCP_S_LISTEN] = "LISTEN",
    [LB_TCP_S_SYNACK] = "SYNACK",
};

/* v in decimal at p; returns the end */
static char *bb_dec(char *p, unsigned long long v)
{
    char t[24];
    int n = 0;
    do {
        t[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = t[--n];
    return p;
}

/* "addr:" of addr:port as ipvsadm -n prints it: a.b.c.d: or [v6]: (glibc inet_ntop, as
 * listing.py's _inet_ntop6 emulates).  family LB_AF_INET is IPv4, anything else IPv6.
 * Returns the end (a 0 written there); dst holds at least 64 bytes. */
static char *bb_addr(char *dst, const uint8_t *addr, unsigned family)
{
    char *p = dst;
    if (family == LB_AF_INET) {
        for (int i = 0; i < 4; i++) {
            p = bb_dec(p, addr[i]);
            *p++ = i < 3 ? '.' : ':';
        }
    } else {
        *p++ = '[';
        inet_ntop(AF_INET6, addr, p, INET6_ADDRSTRLEN);
        p += strlen(p);
        *p++ = ']';
        *p++ = ':';
    }
    *p = 0;
    return p;
}

/* addr:port as ipvsadm -n prints it (bb_addr, then the port).  Returns the length. */
static int bb_addrport(char *dst, const uint8_t *addr, uint16_t port_be, unsigned family)
{
    char *p = bb_dec(bb_addr(dst, addr, family), ntohs(port_be));
    *p = 0;
    return (int)(p - dst);
}

/* printf's %-<width>s */
static char *bb_field(char *p, const char *s, int len, int width)
{
    memcpy(p, s, (size_t)len);
    p += len;
    while (len++ < width)
        *p++ = ' ';
    return p;
}

#define BB_LINE_MAX 256             /* longest line: three [v6]:port of 54 chars and fields */
#define BB_DEST_SLOT 64             /* dest_cache: one "addr:" per real id, 0 = not yet */

/* Format entries [*pos, n) into out (cap bytes) until it would overflow; *pos advances.
 * Entries with dir != 0 (NAT reverse entries) and expired ones are skipped as
 * reader.read_connections does.  dest_cache (nreals * 64 bytes, zeroed by the caller, kept
 * across calls) holds each real server's formatted "addr:" once; the port is each connection's
 * (a real server of port 0 gets the one the connection came to).  The line is printf's
 * "%-3s %-6s %-11s %-18s %-18s %s\n" (lb/listing.py format_connections), built by hand: the
 * printf family costs more than everything else here.  Returns the bytes written, or -1 when
 * an entry names a real id outside reals[0..nreals) (*pos then points at it). */
long bb_format_conns(const void *keys, const void *values, unsigned long n,
                     const void *reals, unsigned long nreals, unsigned long long now_ns,
                     char *dest_cache, unsigned long *pos, char *out, unsigned long cap)
{
    const struct lb_conn_key *ks = keys;
    const struct lb_conn *vs = values;
    const struct lb_real *rs = reals;
    unsigned long i = *pos;
    char *p = out, *end = out + cap;
    char src[BB_DEST_SLOT], vip[BB_DEST_SLOT];

    for (; i < n && end - p >= BB_LINE_MAX; i++) {
        const struct lb_conn_key *k = &ks[i];
        const struct lb_conn *c = &vs[i];
        if (k->dir != 0)
            continue;
        /* as IPVS prints a timer, the whole seconds left: (timeout - age) // 10^9; gone once the
         * age is past the timeout, as the data path's lb_conn_expired has it; a stamp ahead of
         * the clock (written from the precise one) has its whole timeout left */
        long long age = (long long)(now_ns - c->last_ns);
        long long tmo_ns = (long long)c->timeout * 1000000000LL;
        if (age > tmo_ns)
            continue;
        long long left = age <= 0 ? (long long)c->timeout : (tmo_ns - age) / 1000000000LL;
        if (c->real >= nreals) {
            *pos = i;
            return -1;
        }
        const struct lb_real *r = &rs[c->real];
        char *dst = dest_cache + (unsigned long)c->real * BB_DEST_SLOT;
        if (!dst[0])
            /* a removed real server keeps its address, family 0: the connection's family */
            bb_addr(dst, r->addr, r->family ? r->family : k->family);
        /* port 0 (a firewall-mark service's real server): the connection's own, as the data
         * path forwards it (IPVS: dest->port ?: vport) */
        uint16_t dport = r->port ? r->port : k->dport;
        const char *proto = k->proto == IPPROTO_TCP ? "TCP" : k->proto == IPPROTO_UDP ? "UDP" : "?";
        const char *state = k->proto != IPPROTO_TCP ? "UDP"
            : c->state < LB_TCP_S_LAST ? bb_tcp_states[c->state] : "ERR!";
        char expire[48], *e = expire;
        unsigned long long mins = (unsigned long long)left / 60, secs = (unsigned long long)left % 60;
        if (mins < 10)
            *e++ = '0';
        e = bb_dec(e, mins);
        *e++ = ':';
        *e++ = (char)('0' + secs / 10);
        *e++ = (char)('0' + secs % 10);
        int ls = bb_addrport(src, k->saddr, k->sport, k->family);
        int lv = bb_addrport(vip, k->daddr, k->dport, k->family);
        p = bb_field(p, proto, (int)strlen(proto), 3);
        *p++ = ' ';
        p = bb_field(p, expire, (int)(e - expire), 6);
        *p++ = ' ';
        p = bb_field(p, state, (int)strlen(state), 11);
        *p++ = ' ';
        p = bb_field(p, src, ls, 18);
        *p++ = ' ';
        p = bb_field(p, vip, lv, 18);
        *p++ = ' ';
        p = bb_field(p, dst, (int)strlen(dst), 0);
        p = bb_dec(p, ntohs(dport));
        *p++ = '\n';
    }
    *pos = i;
    return (long)(p - out);
}

/* One pass of IPVS's rate estimator (ip_vs_est.c) over the stats of n ids (lb/dataplane/rates.py
 * RateEstimator: its Python pass is the fallback and the test oracle).  In C because a pass over
 * 1000 services of 64 servers took 0.4 s of a core every 2 s in Python with every counter moving.
 *
 * The values: each id's per-CPU struct lb_stats (ncpu slots of slot bytes), at values + id * vsize
 * when by_id (a whole array read: nvalues entries; an id beyond them reads as absent), else at
 * values + k * vsize for the k-th id, present where found[k].  The state, indexed by id below
 * cap: last[5 * id] the summed counters of the last pass, avg[5 * id] the smoothed rates in fixed
 * point (conns and packets x 2^10, bytes x 2^5), flags[id] BB_EST_*.  Each id: a new one (or
 * restart, or counters that went backwards) takes its counters and no rate -- the averages from
 * pinned[5 * k] (rates as shown) where pinned_found[k] says so and it is new; an id settled at 0
 * whose counters stood still is left alone; else its rates over dt_ns smoothed as avg +=
 * (rate - avg) >> 2, written to out (rounded as ip_vs_read_estimator).  Then every id in the state
 * not among the n is dropped, its rates written as 0.  Returns the number of (out_ids[i],
 * out_rates[5 * i]) written: at most n plus the ids the state held. */
#define BB_EST_VALID 1
#define BB_EST_SETTLED 2          /* every average 0: so is what is shown */
#define BB_EST_SEEN 4             /* among this pass's ids */
static const unsigned bb_est_shift[5] = {10, 10, 10, 5, 5};

unsigned long bb_estimate(const uint32_t *ids, unsigned long n, const void *values, unsigned vsize,
                          int by_id, unsigned long nvalues, const unsigned char *found, unsigned ncpu,
                          unsigned slot, uint64_t *last, int64_t *avg, uint8_t *flags, unsigned long cap,
                          unsigned long long dt_ns, int restart, const uint64_t *pinned,
                          const unsigned char *pinned_found, uint32_t *out_ids, uint64_t *out_rates)
{
    unsigned long m = 0;
    for (unsigned long k = 0; k < n; k++) {
        uint32_t id = ids[k];
        if (id >= cap)
            continue;             /* (the caller sizes the state for every id) */
        const unsigned char *v = 0;
        if (by_id ? id < nvalues : found[k])
            v = (const unsigned char *)values + (by_id ? id : k) * (unsigned long)vsize;
        uint64_t cur[5] = {0, 0, 0, 0, 0};
        for (unsigned c = 0; v && c < ncpu; c++) {
            struct lb_stats s;
            memcpy(&s, v + (unsigned long)c * slot, sizeof(s));
            cur[0] += s.conns;
            cur[1] += s.inpkts;
            cur[2] += s.outpkts;
            cur[3] += s.inbytes;
            cur[4] += s.outbytes;
        }
        uint64_t *l = last + 5 * (unsigned long)id;
        int64_t *a = avg + 5 * (unsigned long)id;
        uint8_t f = flags[id];
        int back = 0, moved = 0;
        for (int j = 0; j < 5; j++) {
            back |= cur[j] < l[j];
            moved |= cur[j] != l[j];
        }
        if ((f & BB_EST_VALID) && (f & BB_EST_SETTLED) && !restart && !moved) {
            flags[id] = f | BB_EST_SEEN;          /* idle, shown 0: stays so */
            continue;
        }
        if (!(f & BB_EST_VALID) || restart || back) {
            for (int j = 0; j < 5; j++) {
                l[j] = cur[j];
                a[j] = (!(f & BB_EST_VALID) && pinned && pinned_found[k])
                           ? (int64_t)(pinned[5 * k + j] << bb_est_shift[j]) : 0;
            }
            flags[id] = BB_EST_VALID | BB_EST_SEEN;
            continue;
        }
        int settled = 1;
        uint64_t *o = out_rates + 5 * m;
        for (int j = 0; j < 5; j++) {
            unsigned __int128 r = ((unsigned __int128)(cur[j] - l[j]) << bb_est_shift[j]) * 1000000000u / dt_ns;
            int64_t rate = r > (1ULL << 62) ? (int64_t)(1ULL << 62) : (int64_t)r;
            a[j] += (rate - a[j]) >> 2;           /* an arithmetic shift, as Python's */
            l[j] = cur[j];
            settled &= a[j] == 0;
            unsigned s = bb_est_shift[j];
            o[j] = a[j] > 0 ? (uint64_t)(a[j] + (1LL << (s - 1)) - 1) >> s : 0;
        }
        flags[id] = BB_EST_VALID | BB_EST_SEEN | (settled ? BB_EST_SETTLED : 0);
        out_ids[m++] = id;
    }
    for (unsigned long id = 0; id < cap; id++) {
        if ((flags[id] & (BB_EST_VALID | BB_EST_SEEN)) == BB_EST_VALID) {
            flags[id] = 0;                        /* no longer in use: its rates to 0 */
            memset(out_rates + 5 * m, 0, 5 * sizeof(uint64_t));
            out_ids[m++] = (uint32_t)id;
        } else {
            flags[id] &= (uint8_t)~BB_EST_SEEN;
        }
    }
    return m;
}
