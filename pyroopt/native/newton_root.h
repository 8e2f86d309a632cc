/* MKL's float32 square root, computed in line where it was checked to give MKL's bits.
 *
 * torch takes the root of a float32 CPU tensor with MKL's vmsSqrt in high-accuracy
 * mode (vsqrt.h), which picks a kernel for the CPU at hand. Its kernel for CPUs it
 * does not tune for (the one it runs on AMD's EPYC, for one) takes the hardware's
 * estimate of 1/sqrt(a) and corrects it with one Newton step, every operation a
 * float32 multiply or add (no fused multiply-adds), four lanes at a time:
 *
 *     y  = rsqrt_estimate(a)          the CPU's RSQRTPS, 12 bits
 *     s  = a * y,  h = y * 0.5        s ~ sqrt(a), h ~ 1 / (2 sqrt(a))
 *     e  = 0.5 - s * h
 *     s' = s * e + s,  h' = h * e + h
 *     r  = a - s' * s'
 *     root = r * h' + s'
 *
 * for every a from FLT_MIN to 0x1.ffep127 (above, the products could overflow, and
 * MKL takes another way for those, for zero, subnormals, infinities, NaN and negative
 * numbers). That is within 1 ulp, and not correctly rounded: about a fifth of the
 * roots differ from sqrtf's. pyroopt does the same operations eight lanes at a time
 * (the AVX form of the same estimate instruction), or sixteen on CPUs with AVX-512F
 * (two AVX estimates, the rest in 512-bit operations: newton_lanes.h), so where MKL
 * runs that kernel they give its bits for every input, without the call (measured:
 * 0.45 ns per root in eight lanes, and 25 ns per call).
 *
 * Whether MKL runs that kernel here is not known from outside, so the Newton root is
 * only used after pyroopt_newton_root_check has compared it, in the form the loops run
 * on this CPU, with the root torch calls on every float32 in that range and found no
 * difference (it returns -2 where the CPU has no AVX, which every form needs; the
 * caller keeps the verdict: see _newton_root.py). Until pyroopt_use_newton_root(1),
 * and for a block holding a value outside the range or with a non-default
 * floating-point mode (flush to zero, denormals as zero, another rounding: MKL sets
 * its own), the loops call torch's root.
 */
#ifndef PYROOPT_NEWTON_ROOT_H
#define PYROOPT_NEWTON_ROOT_H

#include <stdint.h>

/* Turn the Newton root on (1) or off (0) for the loops of this process. */
void pyroopt_use_newton_root(int on);

/* Whether the calling thread may take roots in line now: the lanes to take them with
 * (newton_lanes.h) where the Newton root is on and the floating-point mode is the
 * default one, else 0. A loop asks once per piece it runs (nothing inside a loop
 * changes the mode), then calls newton_lanes_roots for each block. */
int pyroopt_newton_root_usable(void);

/* The roots of x[0..n) in place, if the Newton root is usable and may take all of
 * them: 1; else 0, and x is untouched. */
int pyroopt_newton_root_f32(float *x, int64_t n);

/* The widest form of the Newton root this CPU runs: 16 lanes (AVX-512F), 8 (AVX), or
 * 0 where none is built. The loops and the check use that one. */
int pyroopt_newton_root_lanes(void);

/* The Newton root of x[0..n) in place in the form of `lanes` (8, or 16 where
 * pyroopt_newton_root_lanes says so), whatever the verdict and the floating-point
 * mode: 1, or 0 and x untouched if it does not take them all. For tests: every
 * form gives the same bits. */
int pyroopt_newton_root_in_lanes(float *x, int64_t n, int lanes);

/* Compares the Newton root with fn (vmsSqrt's signature, called in its
 * high-accuracy mode) on every float32 whose bit pattern lies in [lo, hi] and which
 * the Newton root takes (zero and FLT_MIN to 0x1.ffep127), under the default
 * floating-point mode, split over up to n_threads threads. Returns the smallest bit
 * pattern where they differ, or -1 if none does. */
int64_t pyroopt_newton_root_check(void (*fn)(int, const float *, float *, long long),
                                  uint32_t lo, uint32_t hi, int n_threads);

#endif
