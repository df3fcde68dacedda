"""cffi build script for lb._bpfbatch (batch dump/delete/update of BPF maps, and the
BPF_PROG_TEST_RUN loops the benchmarks and the packet fuzzer use).

Run by the package install (setup.py's cffi_modules); lb/dataplane/bpfsys.py is the
pure-Python fallback and the test oracle.
"""
from pathlib import Path

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef(
    """
    long bb_dump(int fd, unsigned key_size, unsigned value_size,
                 void *keys, void *values, unsigned long max_entries, unsigned chunk);
    long bb_delete(int fd, unsigned key_size, const void *keys, unsigned long count);
    long bb_update(int fd, unsigned key_size, unsigned value_size,
                   const void *keys, const void *values, unsigned long count);
    long bb_lookup(int fd, unsigned key_size, unsigned value_size, const void *keys, void *values,
                   unsigned char *found, unsigned long count);
    long long bb_test_run_loop(int prog_fd, const void *packets, unsigned pkt_len, unsigned count,
                               unsigned long iterations, unsigned *last_retval);
    void bb_test_run_each(int prog_fd, const void *packets, const unsigned *lens, unsigned count,
                          void *out, unsigned out_cap, unsigned *out_lens, unsigned *retvals, int *errs);
    long bb_test_run_repeat(int prog_fd, const void *packet, unsigned pkt_len, unsigned repeat,
                            unsigned *avg_ns, unsigned *retval);
    void bb_est_census(const void *keys, unsigned long n, unsigned bits, uint64_t *words);
    void bb_widen_conn_keys4(const void *keys4, void *keys, unsigned long n);
    unsigned long bb_sweep_scan(const void *keys, const void *values, unsigned long n, unsigned long long now_ns,
                                uint32_t *census, unsigned long nreals, int persist, unsigned bits,
                                uint64_t *words, uint32_t *look);
    unsigned long bb_sweep_controlling(const void *keys, const void *values, unsigned long n,
                                       unsigned long long now_ns, const void *tkeys, const uint32_t *treal,
                                       unsigned long nt, const uint8_t *masks, const uint8_t *rest,
                                       const uint8_t *persistent, unsigned long nsvc, int64_t *left,
                                       uint32_t *slots, unsigned long nslots);
    unsigned long bb_sweep_recount(const void *conns, const void *swept, int by_index, const uint32_t *census,
                                   const uint32_t *persist, unsigned long nreals, const uint32_t *rids,
                                   unsigned long n, uint32_t *out_rid, int64_t *out_d);
    unsigned bb_sizeof_real_conns(void);
    unsigned bb_sizeof_real_counts(void);
    unsigned bb_sizeof_conn_key(void);
    unsigned bb_sizeof_conn(void);
    unsigned bb_sizeof_real(void);
    unsigned bb_sizeof_persist_key(void);
    long bb_format_conns(const void *keys, const void *values, unsigned long n,
                         const void *reals, unsigned long nreals, unsigned long long now_ns,
                         char *dest_cache, unsigned long *pos, char *out, unsigned long cap);
    unsigned long bb_estimate(const uint32_t *ids, unsigned long n, const void *values, unsigned vsize,
                              int by_id, unsigned long nvalues, const unsigned char *found, unsigned ncpu,
                              unsigned slot, uint64_t *last, int64_t *avg, uint8_t *flags, unsigned long cap,
                              unsigned long long dt_ns, int restart, const uint64_t *pinned,
                              const unsigned char *pinned_found, uint32_t *out_ids, uint64_t *out_rates);
    """
)
HERE = Path(__file__).resolve().parent
# bpfbatch.c includes the data plane's bpf/lb_structs.h: found next to cext/ (a checkout, or an
# sdist that carries bpf/ as it must for the programs anyway)
INCLUDE_DIRS = [str(HERE.parent / "bpf")]
_src = (HERE / "bpfbatch.c").read_text()
ffibuilder.set_source("lb._bpfbatch", _src, include_dirs=INCLUDE_DIRS)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
