/* See newton_root.h. */
#include "newton_root.h"

#include <string.h>

#include "newton_lanes.h"
#include "parallel.h"
#include "vsqrt.h"

#if PYROOPT_NEWTON_LANES_BUILT

#define NEWTON_ROOT_BLOCK 4096
/* MXCSR with its flag bits masked off: round to nearest, no flush to zero, no
 * denormals as zero, all exceptions masked (the power-on default) */
#define DEFAULT_MODE 0x1F80u
#define MODE_BITS 0xFFC0u

static int newton_on = 0;

static int default_mode(void) { return (_mm_getcsr() & MODE_BITS) == DEFAULT_MODE; }

void pyroopt_use_newton_root(int on) { newton_on = on && __builtin_cpu_supports("avx"); }

int pyroopt_newton_root_usable(void) {
    return newton_on && default_mode() ? newton_lanes_here() : 0;
}

int pyroopt_newton_root_f32(float *x, int64_t n) {
    int lanes = pyroopt_newton_root_usable();
    return lanes && newton_lanes_roots(x, n, lanes);
}

int pyroopt_newton_root_lanes(void) { return newton_lanes_here(); }

int pyroopt_newton_root_in_lanes(float *x, int64_t n, int lanes) {
    return newton_lanes_roots(x, n, lanes);
}

typedef struct {
    vsqrt_f32 fn;
    uint32_t lo;
    int lanes; /* newton_lanes_here(): the form the loops run */
    int64_t first; /* smallest differing pattern so far, or -1 */
} check_job;

/* Lowers job->first to `pattern` unless a smaller one is there already. */
static void note_difference(check_job *job, int64_t pattern) {
    int64_t seen = __atomic_load_n(&job->first, __ATOMIC_RELAXED);
    while ((seen < 0 || pattern < seen) &&
           !__atomic_compare_exchange_n(&job->first, &seen, pattern, 0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
    }
}

/* Compares fn's roots of in[0..n) with the Newton roots of those the Newton root takes. */
static void check_block(check_job *job, float *in, int n) {
    float theirs[NEWTON_ROOT_BLOCK], ours[NEWTON_ROOT_BLOCK];
    memcpy(ours, in, (size_t)n * sizeof(float));
    if (!newton_lanes_roots(ours, n, job->lanes)) {
        /* a block at the edge of the range: keep what it takes */
        int taken = 0;
        for (int i = 0; i < n; ++i)
            if (NEWTON_TAKES(in[i])) in[taken++] = in[i];
        n = taken;
        memcpy(ours, in, (size_t)n * sizeof(float));
        if (n == 0 || !newton_lanes_roots(ours, n, job->lanes)) return;
    }
    job->fn(n, in, theirs, PYROOPT_VML_MODE);
    if (memcmp(ours, theirs, (size_t)n * sizeof(float)) == 0) return;
    for (int i = 0; i < n; ++i) {
        if (memcmp(ours + i, theirs + i, sizeof(float)) != 0) {
            uint32_t bits;
            memcpy(&bits, in + i, sizeof bits);
            note_difference(job, bits);
            return;
        }
    }
}

/* Patterns lo + [begin, end) of the check, in blocks, under the default mode. */
static void check_part(const void *ctx, int64_t k, int64_t begin, int64_t end) {
    (void)k;
    check_job *job = (check_job *)ctx;
    unsigned int mode = _mm_getcsr();
    _mm_setcsr(DEFAULT_MODE);
    union {
        uint32_t bits[NEWTON_ROOT_BLOCK];
        float values[NEWTON_ROOT_BLOCK];
    } in;
    for (int64_t at = begin; at < end; at += NEWTON_ROOT_BLOCK) {
        int n = (int)(end - at < NEWTON_ROOT_BLOCK ? end - at : NEWTON_ROOT_BLOCK);
        uint32_t first = (uint32_t)(job->lo + at); /* a local: the stores cannot alias it */
        for (int i = 0; i < n; ++i) in.bits[i] = first + (uint32_t)i;
        check_block(job, in.values, n);
    }
    _mm_setcsr(mode);
}

int64_t pyroopt_newton_root_check(vsqrt_f32 fn, uint32_t lo, uint32_t hi, int n_threads) {
    if (!__builtin_cpu_supports("avx")) return -2;
    check_job job = {fn, lo, newton_lanes_here(), -1};
    int64_t count = (int64_t)hi - lo + 1;
    pyroopt_parallel(1, &count, n_threads, NEWTON_ROOT_BLOCK * 64, check_part, &job);
    return job.first;
}

#else /* not x86-64: no estimate instruction to reproduce */

void pyroopt_use_newton_root(int on) { (void)on; }

int pyroopt_newton_root_usable(void) { return 0; }

int pyroopt_newton_root_lanes(void) { return 0; }

int pyroopt_newton_root_in_lanes(float *x, int64_t n, int lanes) {
    (void)x;
    (void)n;
    (void)lanes;
    return 0;
}

int pyroopt_newton_root_f32(float *x, int64_t n) {
    (void)x;
    (void)n;
    return 0;
}

int64_t pyroopt_newton_root_check(vsqrt_f32 fn, uint32_t lo, uint32_t hi, int n_threads) {
    (void)fn;
    (void)lo;
    (void)hi;
    (void)n_threads;
    return -2;
}

#endif
