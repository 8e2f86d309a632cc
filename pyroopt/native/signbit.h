/* Sign flips and sign-keeping multiplications of the native loops, as torch does them,
 * NaN included.
 *
 * torch negates a gradient under `maximize` with `-grad` (neg: the sign bit flipped, a
 * NaN's too), and computes `addcmul(value=-1)` as a multiplication by -1 (which keeps a
 * NaN's sign: x86 returns the NaN operand as it is). A C compiler is free to turn one
 * into the other (it folds `x * -1` into `-x`, `(-a) * (-b)` into `a * b`, and a negated
 * operand of fma into fnmadd), because C leaves the sign of a NaN result unspecified;
 * each such fold gives some NaN the other sign bit than torch. So the loops flip a sign
 * with an integer XOR by a mask, and multiply by -1 with a -1 the caller passes: values
 * the compiler cannot see, so it keeps both operations as they are, in vector code too.
 */
#ifndef PYROOPT_SIGNBIT_H
#define PYROOPT_SIGNBIT_H

#include <stdint.h>
#include <string.h>

/* XOR masks: the sign bit, or 0 (no flip) */
typedef uint32_t pyroopt_mask_f32;
typedef uint64_t pyroopt_mask_f64;
#define PYROOPT_SIGN_BIT_f32 ((pyroopt_mask_f32)1 << 31)
#define PYROOPT_SIGN_BIT_f64 ((pyroopt_mask_f64)1 << 63)

/* torch's `-x` where `mask` is the sign bit, `x` where it is 0 */
static inline __attribute__((always_inline)) float pyroopt_flip_f32(float x,
                                                                    pyroopt_mask_f32 mask) {
    pyroopt_mask_f32 bits;
    memcpy(&bits, &x, sizeof bits);
    bits ^= mask;
    memcpy(&x, &bits, sizeof x);
    return x;
}

static inline __attribute__((always_inline)) double pyroopt_flip_f64(double x,
                                                                     pyroopt_mask_f64 mask) {
    pyroopt_mask_f64 bits;
    memcpy(&bits, &x, sizeof bits);
    bits ^= mask;
    memcpy(&x, &bits, sizeof x);
    return x;
}

#endif
