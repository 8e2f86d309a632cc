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
 * Newton root's (newton_root.h). The loops' `block_sqrt` is in element.h. */
typedef void (*vsqrt_f32)(int n, const float *a, float *r, long long mode);
typedef void (*vsqrt_f64)(int n, const double *a, double *r, long long mode);
#define PYROOPT_VML_MODE (0x2LL | 0x00140000LL | 0x100LL) /* VML_HA | FTZDAZ_OFF | ERRMODE_IGNORE */
/* Elements per block where each block's roots are one call of torch's root: every
 * stream's block stays in L1, and a call costs about 25 ns against 0.45 ns per float32
 * root (measured). 256 ran Adam on 10 x 1M float32 elements 10-20% faster than 512,
 * 1024 or 4096 (the streams then spill to L2), and no slower than 128 or 192 (Xeon).
 * With the roots in line, blocks are shorter (element.h). */
#ifndef PYROOPT_SQRT_BLOCK /* -D overrides it, to measure another */
#define PYROOPT_SQRT_BLOCK 256
#endif

#endif
