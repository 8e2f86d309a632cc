/* The Newton root of newton_root.h, eight lanes (AVX) or sixteen (AVX-512F) at a time,
 * as static inline functions: the check (newton_root.c) and the loops (element.h)
 * compile the same code, and the loops' vector clones (parallel.h) take it in line,
 * without a call per block. Both forms give the same bits (tests/test_newton_root.py);
 * the loops and the check run the widest one the CPU has (newton_lanes_here).
 *
 * Each form is compiled for its own instructions whatever the file's target, so a
 * clone without them calls it rather than taking it in line, and never reaches it on
 * a CPU without them: the loops take roots in line only where the check found the CPU
 * has AVX and gives MKL's bits.
 */
#ifndef PYROOPT_NEWTON_LANES_H
#define PYROOPT_NEWTON_LANES_H

#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PYROOPT_NEWTON_LANES_BUILT 1
#include <immintrin.h>

#define NEWTON_LANES static inline __attribute__((target("avx")))

/* Whether the Newton root takes a: +-0, or FLT_MIN..0x1.ffep127 (false for NaN). */
#define NEWTON_TAKES(a) (((a) >= 0x1p-126f && (a) <= 0x1.ffep127f) || (a) == 0.0f)

/* NEWTON_TAKES, lane by lane: all ones where it holds. */
NEWTON_LANES __m256 newton_takes(__m256 a) {
    __m256 normal = _mm256_and_ps(_mm256_cmp_ps(a, _mm256_set1_ps(0x1p-126f), _CMP_GE_OQ),
                                  _mm256_cmp_ps(a, _mm256_set1_ps(0x1.ffep127f), _CMP_LE_OQ));
    return _mm256_or_ps(normal, _mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_EQ_OQ));
}

/* The Newton step of newton_root.h, eight lanes. */
NEWTON_LANES __m256 newton_step(__m256 a) {
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
NEWTON_LANES __m256 newton_step_zeros(__m256 a) {
    __m256 zero = _mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_EQ_OQ);
    return _mm256_or_ps(_mm256_andnot_ps(zero, newton_step(a)), _mm256_and_ps(zero, a));
}

/* The mask of lanes [0, left) of a vector: the 8 entries from offset 8 - left. */
static const int32_t NEWTON_LANE_MASKS[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/* -- eight lanes -------------------------------------------------------------------- */

/* 1 if every x[0..n) is one the Newton root takes, and then they are replaced by their
 * roots; else 0. First the cheap question: are all of them normal and at most
 * 0x1.ffep127 (smallest, largest, any NaN)? Only if not, lane by lane, which also lets
 * zeros through. A last partial vector is read and written lane by lane (masked), its
 * other lanes standing in as ones. */
NEWTON_LANES int newton_roots8(float *x, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t whole = n & ~(int64_t)7;
    __m256i last = _mm256_loadu_si256((const __m256i *)(NEWTON_LANE_MASKS + 8 - (n - whole)));
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

/* -- sixteen lanes, for the loops' AVX-512 clones ---------------------------------- */

#define NEWTON_LANES16 static inline __attribute__((target("avx512f")))

/* The Newton step of newton_root.h, sixteen lanes: the estimate of each half by the
 * AVX instruction (AVX-512's own estimate is another one, of 14 bits), the rest in
 * 512-bit multiplies and adds, which round lane by lane as the 256-bit ones do. The
 * loops' AVX-512 code reads and writes a block's values 64 bytes at a time; a root
 * taken 32 bytes at a time between those reads and writes made each wait for its
 * stores to reach the cache (the half-width loads cannot take a wider store's data
 * on the way). */
NEWTON_LANES16 __m512 newton_step16(__m512 a) {
    const __m512 half = _mm512_set1_ps(0.5f);
    __m256 a_low = _mm512_castps512_ps256(a);
    __m256 a_high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    __m512d y_low = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_rsqrt_ps(a_low)));
    __m256d y_high = _mm256_castps_pd(_mm256_rsqrt_ps(a_high));
    __m512 y = _mm512_castpd_ps(_mm512_insertf64x4(y_low, y_high, 1));
    __m512 s = _mm512_mul_ps(a, y);
    __m512 h = _mm512_mul_ps(y, half);
    __m512 e = _mm512_sub_ps(half, _mm512_mul_ps(s, h));
    __m512 s1 = _mm512_add_ps(_mm512_mul_ps(s, e), s);
    __m512 h1 = _mm512_add_ps(_mm512_mul_ps(h, e), h);
    __m512 r = _mm512_sub_ps(a, _mm512_mul_ps(s1, s1));
    return _mm512_add_ps(_mm512_mul_ps(r, h1), s1);
}

/* NEWTON_TAKES, lane by lane: the lanes where it holds. */
NEWTON_LANES16 __mmask16 newton_takes16(__m512 a) {
    __mmask16 normal = _mm512_cmp_ps_mask(a, _mm512_set1_ps(0x1p-126f), _CMP_GE_OQ) &
                       _mm512_cmp_ps_mask(a, _mm512_set1_ps(0x1.ffep127f), _CMP_LE_OQ);
    return normal | _mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_EQ_OQ);
}

/* newton_step16, where a zero keeps its value (and sign). */
NEWTON_LANES16 __m512 newton_step16_zeros(__m512 a) {
    __mmask16 zero = _mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_EQ_OQ);
    return _mm512_mask_blend_ps(zero, newton_step16(a), a);
}

/* newton_roots8, sixteen lanes at a time. */
NEWTON_LANES16 int newton_roots16(float *x, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t whole = n & ~(int64_t)15;
    __mmask16 last = (__mmask16)((1u << (n - whole)) - 1u);
    __m512 tail = _mm512_mask_loadu_ps(one, last, x + whole);
    __m512 lo = tail, hi = tail;
    __mmask16 nan = _mm512_cmp_ps_mask(tail, tail, _CMP_UNORD_Q);
#pragma GCC unroll 4
    for (int64_t i = 0; i < whole; i += 16) {
        __m512 a = _mm512_loadu_ps(x + i);
        lo = _mm512_min_ps(lo, a);
        hi = _mm512_max_ps(hi, a);
        nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    }
    if (nan != 0) return 0;
    __mmask16 normal = _mm512_cmp_ps_mask(lo, _mm512_set1_ps(0x1p-126f), _CMP_GE_OQ) &
                       _mm512_cmp_ps_mask(hi, _mm512_set1_ps(0x1.ffep127f), _CMP_LE_OQ);
    if (normal == 0xFFFF) {
#pragma GCC unroll 4
        for (int64_t i = 0; i < whole; i += 16)
            _mm512_storeu_ps(x + i, newton_step16(_mm512_loadu_ps(x + i)));
        if (whole < n) _mm512_mask_storeu_ps(x + whole, last, newton_step16(tail));
        return 1;
    }
    __mmask16 taken = newton_takes16(tail);
    for (int64_t i = 0; i < whole; i += 16) taken &= newton_takes16(_mm512_loadu_ps(x + i));
    if (taken != 0xFFFF) return 0;
    for (int64_t i = 0; i < whole; i += 16)
        _mm512_storeu_ps(x + i, newton_step16_zeros(_mm512_loadu_ps(x + i)));
    if (whole < n) _mm512_mask_storeu_ps(x + whole, last, newton_step16_zeros(tail));
    return 1;
}

/* The lanes the Newton root runs with on this CPU: 16 with AVX-512F, else 8. */
static inline int newton_lanes_here(void) { return __builtin_cpu_supports("avx512f") ? 16 : 8; }

/* newton_roots8 or newton_roots16, by `lanes` (newton_lanes_here): the same bits. */
static inline int newton_lanes_roots(float *x, int64_t n, int lanes) {
    return lanes == 16 ? newton_roots16(x, n) : newton_roots8(x, n);
}

#else /* not x86-64: no estimate instruction to reproduce */
#define PYROOPT_NEWTON_LANES_BUILT 0

static inline int newton_lanes_here(void) { return 0; }

static inline int newton_lanes_roots(float *x, int64_t n, int lanes) {
    (void)x;
    (void)n;
    (void)lanes;
    return 0;
}

#endif

#endif
