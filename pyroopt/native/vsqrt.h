/* The square roots of the native loops, as torch takes them; see below. */
#ifndef PYROOPT_VSQRT_H
#define PYROOPT_VSQRT_H

#include <math.h>
#include <stdint.h>

#include "newton_root.h"

/* torch takes the square root of a float32/float64 CPU tensor with MKL's vector
 * library (vmsSqrt/vmdSqrt, high-accuracy mode: within 1 ulp, not always correctly
 * rounded) where it was built with MKL. The caller passes that function (NULL: torch
 * uses the correctly rounded sqrt, as libm does), and the loop runs in blocks: the
 * values under the root for a block, its roots in one call, then the rest. A float32
 * block's roots are computed in line instead where MKL's were checked to be the
 * Newton root's (newton_root.h). */
typedef void (*vsqrt_f32)(int n, const float *a, float *r, long long mode);
typedef void (*vsqrt_f64)(int n, const double *a, double *r, long long mode);
#define PYROOPT_VML_MODE (0x2LL | 0x00140000LL | 0x100LL) /* VML_HA | FTZDAZ_OFF | ERRMODE_IGNORE */
/* Elements per block: every stream's block stays in L1, and a call costs about 25 ns
 * against 0.45 ns per float32 root (measured). 256 ran Adam on 10 x 1M float32
 * elements 10-20% faster than 512, 1024 or 4096 (the streams then spill to L2), and
 * no slower than 128 or 192. */
#define PYROOPT_SQRT_BLOCK 256
#define DEFINE_BLOCK_SQRT(SUFFIX, T, SQRT, IN_LINE)                                    \
    static inline void block_sqrt_##SUFFIX(vsqrt_##SUFFIX fn, T *x, int64_t n) {       \
        if (fn) {                                                                      \
            if (!IN_LINE(x, n)) fn((int)n, x, x, PYROOPT_VML_MODE);                    \
        } else {                                                                       \
            for (int64_t i = 0; i < n; ++i) x[i] = SQRT(x[i]);                         \
        }                                                                              \
    }
#define PYROOPT_NO_IN_LINE_ROOT(x, n) 0
DEFINE_BLOCK_SQRT(f32, float, sqrtf, pyroopt_newton_root_f32)
DEFINE_BLOCK_SQRT(f64, double, sqrt, PYROOPT_NO_IN_LINE_ROOT)

#endif
