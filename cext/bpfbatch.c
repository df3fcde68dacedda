/* Batch operations on BPF maps for big connection tables.
 *
 * Python walking a 1M-entry LRU hash with BPF_MAP_GET_NEXT_KEY costs two syscalls per entry;
 * BPF_MAP_LOOKUP_BATCH moves thousands of entries per syscall.  These helpers only move bytes:
 * the layouts are decoded in lb/dataplane/layout.py.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/bpf.h>

static long bb_sys(int cmd, union bpf_attr *attr)
{
    return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

/* Dump up to max_entries (key, value) pairs into keys/values.  Returns the count, or -errno.
 * chunk is the number of entries asked for per syscall. */
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
        if (err)
            return -err;
        in_batch = out_batch;
        first = 0;
    }
    return (long)total;
}

/* Delete count keys (packed, key_size each).  Returns the number deleted, or -errno. */
long bb_delete(int fd, unsigned key_size, const void *keys, unsigned long count)
{
    union bpf_attr attr;
    unsigned long done = 0;

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
                continue;
            }
            return -err;
        }
        done += attr.batch.count;
    }
    return (long)done;
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

/* Run prog once per packet: packets are count frames of pkt_len bytes, back to back, used in
 * turn for iterations runs.  BPF_PROG_TEST_RUN does not reset a packet between repeats, so
 * every run is its own syscall with repeat=1 and a fresh copy.  Returns the summed in-kernel
 * duration (ns) of all runs, or -errno; *last_retval gets the last XDP action. */
long long bb_test_run_loop(int prog_fd, const void *packets, unsigned pkt_len, unsigned count,
                           unsigned long iterations, unsigned *last_retval)
{
    union bpf_attr attr;
    unsigned char out[4096];
    long long total = 0;

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
