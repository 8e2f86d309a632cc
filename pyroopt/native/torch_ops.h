/* torch's elementwise CPU operations as the native loops compute them: one function per
 * operation, in the element type of the rule being compiled (element.h), with torch's
 * roundings.
 *
 * torch's vectorized CPU kernels, and their scalar tails alike, fuse the multiply-add
 * of `add(other, alpha=a)`, of `addcmul` (value * t1 rounded first, then one fused
 * multiply-add) and of `lerp` (one of two forms, by the weight); `addcdiv` is not
 * fused: self + (value * t1) / t2. A tensor divided by a scalar is a true division.
 * Every scalar is cast to the tensor's precision first, as torch's CPU kernels cast
 * it. The library is compiled with -ffp-contract=off, so the compiler fuses nothing
 * else.
 *
 * Signs: torch negates a gradient under `maximize` with `-grad` (the sign bit flipped, a
 * NaN's too), and computes `addcmul(value=-1)` as a multiplication by -1 (which keeps a
 * NaN's sign: x86 returns the NaN operand as it is). A C compiler is free to turn one
 * into the other (it folds `x * -1` into `-x`, `(-a) * (-b)` into `a * b`, and a negated
 * operand of fma into fnmadd), because C leaves the sign of a NaN result unspecified;
 * each such fold gives some NaN the other sign bit than torch. So the loops flip a sign
 * with an integer XOR by a mask (torch_neg_if), and multiply by -1 with a -1 the caller
 * passes: values the compiler cannot see, so it keeps both operations as they are, in
 * vector code too.
 */
#ifndef PYROOPT_TORCH_OPS_H
#define PYROOPT_TORCH_OPS_H

#include <string.h>

#include "element.h"

#define PYROOPT_INLINE static inline __attribute__((always_inline))

/* torch's `-x` where `mask` is SIGN_BIT, `x` where it is 0 */
PYROOPT_INLINE scalar_t torch_neg_if(scalar_t x, bits_t mask) {
    bits_t bits;
    memcpy(&bits, &x, sizeof bits);
    bits ^= mask;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* self.add(other, alpha=alpha): one fused multiply-add */
PYROOPT_INLINE scalar_t torch_add_alpha(scalar_t self, scalar_t other, scalar_t alpha) {
    return fused_multiply_add(alpha, other, self);
}

/* self.addcmul(t1, t2, value=value): value * t1 rounded, then fused with t2 and self */
PYROOPT_INLINE scalar_t torch_addcmul(scalar_t self, scalar_t t1, scalar_t t2, scalar_t value) {
    return fused_multiply_add(value * t1, t2, self);
}

/* self.addcdiv(t1, t2, value=value): no fused multiply-add */
PYROOPT_INLINE scalar_t torch_addcdiv(scalar_t self, scalar_t t1, scalar_t t2, scalar_t value) {
    return self + (value * t1) / t2;
}

/* A weight of torch.lerp, with what its two forms need, computed once per call. */
typedef struct {
    scalar_t weight, weight_minus_one;
    int small; /* |weight| < 0.5 */
} torch_lerp_weight;

PYROOPT_INLINE torch_lerp_weight torch_lerp_weight_of(scalar_t weight) {
    torch_lerp_weight w = {weight, weight - (scalar_t)1, absolute(weight) < (scalar_t)0.5};
    return w;
}

/* self.lerp(end, weight): fma(w, end - self, self) for |w| < 0.5, else
 * fma(w - 1, end - self, end) */
PYROOPT_INLINE scalar_t torch_lerp(scalar_t self, scalar_t end, torch_lerp_weight w) {
    scalar_t diff = end - self;
    return w.small ? fused_multiply_add(w.weight, diff, self)
                   : fused_multiply_add(w.weight_minus_one, diff, end);
}

/* torch.clamp(x, lo, hi): the lower bound, then the upper one (so hi wins where
 * lo > hi); NaN stays NaN */
PYROOPT_INLINE scalar_t torch_clamp(scalar_t x, scalar_t lo, scalar_t hi) {
    scalar_t above = x < lo ? lo : x;
    return above > hi ? hi : above;
}

/* torch.maximum(a, b): NaN if either is NaN */
PYROOPT_INLINE scalar_t torch_maximum(scalar_t a, scalar_t b) {
    return a != a ? a : (b != b ? b : (a > b ? a : b));
}

/* torch.sign(x): -1, 0 or 1; 0 for NaN ("neither > 0 nor < 0") */
PYROOPT_INLINE scalar_t torch_sign(scalar_t x) {
    return x > 0 ? (scalar_t)1 : (x < 0 ? (scalar_t)-1 : (scalar_t)0);
}

#endif
