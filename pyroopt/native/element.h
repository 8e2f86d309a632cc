/* The element type of the rule being compiled, and what depends on it.
 *
 * Every rule source (sgd.c, adam.c, ...) is written once over `scalar_t` and compiled
 * twice: the build generates, per source and dtype, a file of two lines
 * (pyroopt/native/_spec.py), `#define PYROOPT_DOUBLE 0` (float32) or `1` (float64)
 * and `#include "adam.c"`. Its exported names carry the dtype's suffix through
 * TYPED: TYPED(pyroopt_adam) is pyroopt_adam_f32 or pyroopt_adam_f64. Compiler errors
 * and debuggers see the rule source's own lines.
 */
#ifndef PYROOPT_ELEMENT_H
#define PYROOPT_ELEMENT_H

#include <math.h>
#include <stdint.h>

#include "newton_lanes.h"
#include "newton_root.h"
#include "vsqrt.h"

#ifndef PYROOPT_DOUBLE
#error "compile a rule source through the file the build generates for each dtype"
#endif

#define PYROOPT_PASTE(name, suffix) name##_##suffix
#define PYROOPT_WITH_SUFFIX(name, suffix) PYROOPT_PASTE(name, suffix)
#define TYPED(name) PYROOPT_WITH_SUFFIX(name, PYROOPT_SUFFIX)

#if PYROOPT_DOUBLE
#define PYROOPT_SUFFIX f64
typedef double scalar_t;
typedef uint64_t bits_t; /* the bits of a scalar_t */
typedef vsqrt_f64 vsqrt_fn;
static inline scalar_t fused_multiply_add(scalar_t a, scalar_t b, scalar_t c) {
    return fma(a, b, c);
}
static inline scalar_t absolute(scalar_t x) { return fabs(x); }
static inline scalar_t correct_root(scalar_t x) { return sqrt(x); }
/* no in-line root for float64: MKL's is called */
static inline int in_line_here(void) { return 0; }
static inline int in_line_roots(scalar_t *x, int64_t n, int lanes) {
    return (void)x, (void)n, (void)lanes, 0;
}
#else
#define PYROOPT_SUFFIX f32
typedef float scalar_t;
typedef uint32_t bits_t;
typedef vsqrt_f32 vsqrt_fn;
static inline scalar_t fused_multiply_add(scalar_t a, scalar_t b, scalar_t c) {
    return fmaf(a, b, c);
}
static inline scalar_t absolute(scalar_t x) { return fabsf(x); }
static inline scalar_t correct_root(scalar_t x) { return sqrtf(x); }
static inline int in_line_here(void) { return pyroopt_newton_root_usable(); }
static inline int in_line_roots(scalar_t *x, int64_t n, int lanes) {
    return newton_lanes_roots(x, n, lanes);
}
#endif

/* The sign bit of a scalar_t, as an XOR mask. */
#define SIGN_BIT ((bits_t)1 << (8 * sizeof(bits_t) - 1))

/* Whether a piece of a loop takes its roots in line (the Newton root, float32 only),
 * and in how many lanes: where torch's root `fn` is MKL's and the Newton root is usable
 * on this thread; else 0. Asked once per piece; nothing inside a loop changes it. */
static inline int in_line_piece(vsqrt_fn fn) { return fn ? in_line_here() : 0; }

/* Elements per block of the blocked loops: PYROOPT_SQRT_BLOCK where each block's roots
 * are a call of torch's root, PYROOPT_IN_LINE_BLOCK where the loop computes float32
 * roots in line. Without a call to pay for, smaller blocks keep every stream in L1
 * (measured on an AMD EPYC with the in-line root on, 10 x 1M float32 elements, 2
 * threads, against torch's fused optimizer on one flat tensor of the same elements,
 * medians of 31 rounds, two runs: Adam 0.85-0.87 with 64-element blocks, 0.99-1.05 with
 * 128, 1.32-1.33 with 256; Adagrad 0.86-0.90, 1.04-1.06, 1.21-1.27; prefetch distances
 * from 640 to 6144 bytes mattered less). Where the Newton root is off (every float64
 * loop, and float32 where MKL's root is not the Newton root's, as on the Xeon where
 * 256 was chosen), blocks stay at 256. Blocks change no value: each root is
 * elementwise. */
#ifndef PYROOPT_IN_LINE_BLOCK /* -D overrides it, to measure another */
#define PYROOPT_IN_LINE_BLOCK 64
#endif
_Static_assert(PYROOPT_IN_LINE_BLOCK <= PYROOPT_SQRT_BLOCK, "a block must fit its buffer");

/* How a piece of a blocked loop takes its square roots: torch's root `fn` (NULL: the
 * correctly rounded root), whether and in how many lanes in line (in_line_piece), and
 * the elements per block that go with that. Made once per piece (root_plan_for). */
typedef struct {
    vsqrt_fn fn;
    int in_line;
    int64_t block;
} root_plan;

static inline root_plan root_plan_for(vsqrt_fn fn) {
    const int in_line = in_line_piece(fn);
    root_plan plan = {fn, in_line, in_line ? PYROOPT_IN_LINE_BLOCK : PYROOPT_SQRT_BLOCK};
    return plan;
}

/* The square roots of x[0..n) in place, as torch takes them (vsqrt.h): with the plan's
 * `fn`, torch's own vector root (or, where the plan takes them in line, the Newton root,
 * for every block it takes); without, the correctly rounded root. */
static inline void block_sqrt(const root_plan *roots, scalar_t *x, int64_t n) {
    if (!roots->fn) {
        for (int64_t i = 0; i < n; ++i) x[i] = correct_root(x[i]);
    } else if (!(roots->in_line && in_line_roots(x, n, roots->in_line))) {
        roots->fn((int)n, x, x, PYROOPT_VML_MODE);
    }
}

/* The length of the block of at most `block` elements that starts at `lo` of an array
 * of `n`. */
static inline int64_t block_length(int64_t lo, int64_t n, int64_t block) {
    return n - lo < block ? n - lo : block;
}

#endif
