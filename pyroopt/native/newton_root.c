/* See newton_root.h. */
#include "newton_root.h"

#include <string.h>

#include "parallel.h"
#include "vsqrt.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define NEWTON_ROOT_BLOCK 4096
/* MXCSR with its flag bits masked off: round to nearest, no flush to zero, no
 * denormals as zero, all exceptions masked (the power-on default) */
#define DEFAULT_MODE 0x1F80u
#define MODE_BITS 0xFFC0u

static int newton_on = 0;

/* Whether the Newton root takes a: +-0, or FLT_MIN..0x1.ffep127 (false for NaN). */
#define NEWTON_TAKES(a) (((a) >= 0x1p-126f && (a) <= 0x1.ffep127f) || (a) == 0.0f)

/* NEWTON_TAKES, lane by lane: all ones where it holds. */
static inline __attribute__((target("avx"))) __m256 newton_takes(__m256 a) {
    __m256 normal = _mm256_and_ps(_mm256_cmp_ps(a, _mm256_set1_ps(0x1p-126f), _CMP_GE_OQ),
                                  _mm256_cmp_ps(a, _mm256_set1_ps(0x1.ffep127f), _CMP_LE_OQ));
    return _mm256_or_ps(normal, _mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_EQ_OQ));
}

/* The Newton step of newton_root.h, eight lanes. */
static inline __attribute__((target("avx"))) __m256 newton_step(__m256 a) {
    const __m256 half = _mm256_set1_ps(0.5f);
    __m256 y = _mm256_rsqrt_ps(a);
    __m256 s = _mm256_mul_ps(a, y);
    __m256 h = _mm256_mul_ps(y, half);
    __m256 e = _mm256_sub_ps(half, _mm256_mul_ps(s, h));
    __m256 s1 = _mm256_add_ps(_mm256_mul_ps(s, e), s);
    __m256 h1 = _mm256_add_ps(_mm256_mul_ps(h, e), h);
    __m256 r = _mm256_sub_ps(a, _mm256_mul_ps(s1, s1));
    return _mm256_add_ps(_mm256_mul_ps(r, h1), s1);
}

/* newton_step, where a zero keeps its value (and sign). */
static inline __attribute__((target("avx"))) __m256 newton_step_zeros(__m256 a) {
    __m256 zero = _mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_EQ_OQ);
    return _mm256_or_ps(_mm256_andnot_ps(zero, newton_step(a)), _mm256_and_ps(zero, a));
}

/* The mask of lanes [0, left) of a vector: the 8 entries from offset 8 - left. */
static const int32_t LANES[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/* 1 if every x[0..n) is one the Newton root takes, and then they are replaced by their
 * roots; else 0. First the cheap question: are all of them normal and at most
 * 0x1.ffep127 (smallest, largest, any NaN)? Only if not, lane by lane, which also lets
 * zeros through. A last partial vector is read and written lane by lane (masked), its
 * other lanes standing in as ones. */
static __attribute__((target("avx"))) int newton_roots(float *x, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t whole = n & ~(int64_t)7;
    __m256i last = _mm256_loadu_si256((const __m256i *)(LANES + 8 - (n - whole)));
    __m256 in_last = _mm256_castsi256_ps(last);
    __m256 tail = _mm256_or_ps(_mm256_and_ps(in_last, _mm256_maskload_ps(x + whole, last)),
                               _mm256_andnot_ps(in_last, one));
    __m256 lo = tail, hi = tail, nan = _mm256_cmp_ps(tail, tail, _CMP_UNORD_Q);
#pragma GCC unroll 4
    for (int64_t i = 0; i < whole; i += 8) {
        __m256 a = _mm256_loadu_ps(x + i);
        lo = _mm256_min_ps(lo, a);
        hi = _mm256_max_ps(hi, a);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    }
    __m256 normal = _mm256_and_ps(_mm256_cmp_ps(lo, _mm256_set1_ps(0x1p-126f), _CMP_GE_OQ),
                                  _mm256_cmp_ps(hi, _mm256_set1_ps(0x1.ffep127f), _CMP_LE_OQ));
    if (_mm256_movemask_ps(nan) != 0) return 0;
    if (_mm256_movemask_ps(normal) == 0xFF) {
#pragma GCC unroll 4
        for (int64_t i = 0; i < whole; i += 8)
            _mm256_storeu_ps(x + i, newton_step(_mm256_loadu_ps(x + i)));
        if (whole < n) _mm256_maskstore_ps(x + whole, last, newton_step(tail));
        return 1;
    }
    __m256 taken = newton_takes(tail);
    for (int64_t i = 0; i < whole; i += 8)
        taken = _mm256_and_ps(taken, newton_takes(_mm256_loadu_ps(x + i)));
    if (_mm256_movemask_ps(taken) != 0xFF) return 0;
    for (int64_t i = 0; i < whole; i += 8)
        _mm256_storeu_ps(x + i, newton_step_zeros(_mm256_loadu_ps(x + i)));
    if (whole < n) _mm256_maskstore_ps(x + whole, last, newton_step_zeros(tail));
    return 1;
}

static int default_mode(void) { return (_mm_getcsr() & MODE_BITS) == DEFAULT_MODE; }

void pyroopt_use_newton_root(int on) { newton_on = on && __builtin_cpu_supports("avx"); }

int pyroopt_newton_root_on(void) { return newton_on; }

int pyroopt_newton_root_f32(float *x, int64_t n) {
    return newton_on && default_mode() && newton_roots(x, n);
}

typedef struct {
    vsqrt_f32 fn;
    uint32_t lo;
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
    if (!newton_roots(ours, n)) { /* a block at the edge of the range: keep what it takes */
        int taken = 0;
        for (int i = 0; i < n; ++i)
            if (NEWTON_TAKES(in[i])) in[taken++] = in[i];
        n = taken;
        memcpy(ours, in, (size_t)n * sizeof(float));
        if (n == 0 || !newton_roots(ours, n)) return;
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
    check_job job = {fn, lo, -1};
    int64_t count = (int64_t)hi - lo + 1;
    pyroopt_parallel(1, &count, n_threads, NEWTON_ROOT_BLOCK * 64, check_part, &job);
    return job.first;
}

#else /* not x86-64: no estimate instruction to reproduce */

void pyroopt_use_newton_root(int on) { (void)on; }

int pyroopt_newton_root_on(void) { return 0; }

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
