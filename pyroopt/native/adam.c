/* Adam, AdamW and Pyro's ClippedAdam over many tensors in one pass over memory, with
 * torch's numerics.
 *
 * Adam, per element of tensor k, with g negated first under `maximize`, w1 = 1 - beta1,
 * w2 = 1 - beta2, and s_k = -lr / (1 - beta1^t), c_k = (1 - beta2^t) ** 0.5 computed by
 * the caller in double:
 *
 *     param = param * (1 - lr * wd)                     decoupled weight decay
 *     g     = fma(wd, param, g)                         L2 weight decay
 *     m     = lerp(m, g, w1)
 *     v     = fma(w2 * g, g, v * beta2)                 (mul_, then addcmul_)
 *     vmax  = maximum(vmax, v);  v' = vmax             amsgrad (else v' = v)
 *     param = param + (s_k * m) / (sqrt(v') / c_k + eps)
 *
 * ClippedAdam, with s_k = -(lr * sqrt(1 - beta2^t) / (1 - beta1^t)):
 *
 *     grad  = clamp(grad, -clip, clip)                  written back, as pyro does
 *     g     = fma(wd, param, grad)                      if wd != 0
 *     m     = fma(w1, g, m * beta1)                     (mul_, then add_(alpha=))
 *     r     = centered_variance ? g - m : g
 *     v     = fma(w2 * r, r, v * beta2)
 *     param = param + (s_k * m) / (sqrt(v) + eps)
 *
 * which is torch.optim.Adam's single-tensor update (pyro's ClippedAdam.step) operation
 * for operation, every scalar cast to the tensor's precision as torch's CPU kernels
 * cast it. torch fuses the multiply-adds of `add(alpha=)`, `addcmul` (value * t1
 * rounded first) and `lerp` (fma(w, end - self, self) for |w| < 0.5, else
 * fma(w - 1, end - self, end)); `addcdiv` is self + (value * t1) / t2, and a tensor
 * divided by a scalar is a true division. Signs are flipped as signbit.h says.
 */
#include <math.h>
#include <stdint.h>

#include "parallel.h"
#include "prefetch.h"
#include "signbit.h"
#include "vsqrt.h"

/* torch.clamp(g, lo, hi): the lower bound, then the upper one (so hi wins where
 * lo > hi); keeps NaN (which then counts as changed, NaN != NaN, and is written back
 * as it was) */
#define PYROOPT_CLAMP(g, lo, hi)                                                       \
    ({                                                                                 \
        __typeof__(g) above_ = (g) < (lo) ? (lo) : (g);                                \
        above_ > (hi) ? (hi) : above_;                                                 \
    })

/* torch.maximum: NaN if either is NaN */
#define PYROOPT_MAXIMUM(a, b) ((a) != (a) ? (a) : ((b) != (b) ? (b) : ((a) > (b) ? (a) : (b))))

#define DEFINE_ADAM(SUFFIX, T, FMA, ABS)                                               \
    static inline __attribute__((always_inline)) void adam_body_##SUFFIX(              \
        T *restrict param, const T *restrict grad, T *restrict ea, T *restrict eas,    \
        T *restrict mx, int64_t n, pyroopt_mask_##SUFFIX flip, T wd, T shrink, T w1,   \
        T beta2, T w2, T eps, T step, T bc2_sqrt, vsqrt_##SUFFIX root,                 \
        const int decay, const int amsgrad) {                                          \
        const int small = ABS(w1) < (T)0.5;                                            \
        const T w1_minus_one = w1 - (T)1;                                              \
        T d[PYROOPT_SQRT_BLOCK];                                                       \
        for (int64_t lo = 0; lo < n; lo += PYROOPT_SQRT_BLOCK) {                       \
            int64_t len = n - lo < PYROOPT_SQRT_BLOCK ? n - lo : PYROOPT_SQRT_BLOCK;   \
            T *p = param + lo, *m = ea + lo, *v = eas + lo, *x = amsgrad ? mx + lo : 0; \
            const T *gr = grad + lo;                                                   \
            if (PYROOPT_AHEAD_FITS(lo, n, T)) {                                        \
                PYROOPT_PREFETCH_AHEAD(gr, 0);                                         \
                PYROOPT_PREFETCH_AHEAD(m, 1);                                          \
                PYROOPT_PREFETCH_AHEAD(v, 1);                                          \
                if (amsgrad) PYROOPT_PREFETCH_AHEAD(x, 1);                             \
                PYROOPT_PREFETCH_AHEAD(p, 1);                                          \
            }                                                                          \
            for (int64_t i = 0; i < len; ++i) {                                        \
                T g = pyroopt_flip_##SUFFIX(gr[i], flip);                              \
                if (decay == 1) g = FMA(wd, p[i], g);                                  \
                T mi = m[i];                                                           \
                T diff = g - mi;                                                       \
                m[i] = small ? FMA(w1, diff, mi) : FMA(w1_minus_one, diff, g);         \
                T vi = FMA(w2 * g, g, v[i] * beta2);                                   \
                v[i] = vi;                                                             \
                if (amsgrad) {                                                         \
                    T xi = x[i];                                                       \
                    xi = PYROOPT_MAXIMUM(xi, vi);                                      \
                    x[i] = xi;                                                         \
                    d[i] = xi;                                                         \
                } else {                                                               \
                    d[i] = vi;                                                         \
                }                                                                      \
            }                                                                          \
            block_sqrt_##SUFFIX(root, d, len);                                         \
            for (int64_t i = 0; i < len; ++i) {                                        \
                T pi = p[i];                                                           \
                if (decay == 2) pi = pi * shrink;                                      \
                T di = d[i] / bc2_sqrt + eps;                                          \
                p[i] = pi + (step * m[i]) / di;                                        \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
                                                                                       \
    PYROOPT_VECTOR_CLONES                                                              \
    static void adam_range_##SUFFIX(T *restrict param, const T *restrict grad,         \
                                    T *restrict ea, T *restrict eas, T *restrict mx,   \
                                    int64_t n, pyroopt_mask_##SUFFIX flip, T wd,       \
                                    T shrink, T w1,                                    \
                                    T beta2, T w2, T eps, T step, T bc2_sqrt,          \
                                    vsqrt_##SUFFIX root, int decay, int amsgrad) {     \
        switch (decay * 2 + (amsgrad ? 1 : 0)) {                                       \
        case 0: adam_body_##SUFFIX(param, grad, ea, eas, mx, n, flip, wd, shrink,      \
                    w1, beta2, w2, eps, step, bc2_sqrt, root, 0, 0); break;            \
        case 1: adam_body_##SUFFIX(param, grad, ea, eas, mx, n, flip, wd, shrink,      \
                    w1, beta2, w2, eps, step, bc2_sqrt, root, 0, 1); break;            \
        case 2: adam_body_##SUFFIX(param, grad, ea, eas, mx, n, flip, wd, shrink,      \
                    w1, beta2, w2, eps, step, bc2_sqrt, root, 1, 0); break;            \
        case 3: adam_body_##SUFFIX(param, grad, ea, eas, mx, n, flip, wd, shrink,      \
                    w1, beta2, w2, eps, step, bc2_sqrt, root, 1, 1); break;            \
        case 4: adam_body_##SUFFIX(param, grad, ea, eas, mx, n, flip, wd, shrink,      \
                    w1, beta2, w2, eps, step, bc2_sqrt, root, 2, 0); break;            \
        default: adam_body_##SUFFIX(param, grad, ea, eas, mx, n, flip, wd,             \
                    shrink, w1, beta2, w2, eps, step, bc2_sqrt, root, 2, 1); break;    \
        }                                                                              \
    }                                                                                  \
                                                                                       \
    typedef struct {                                                                   \
        T *const *params;                                                              \
        const T *const *grads;                                                         \
        T *const *eas;                                                                 \
        T *const *eass;                                                                \
        T *const *mxs;                                                                 \
        const double *steps, *bc2_sqrts;                                               \
        pyroopt_mask_##SUFFIX flip;                                                    \
        T wd, shrink, w1, beta2, w2, eps;                                              \
        vsqrt_##SUFFIX root;                                                           \
        int decay, amsgrad;                                                            \
    } adam_args_##SUFFIX;                                                              \
                                                                                       \
    static void adam_piece_##SUFFIX(const void *ctx, int64_t k, int64_t lo,            \
                                    int64_t hi) {                                      \
        const adam_args_##SUFFIX *a = ctx;                                             \
        adam_range_##SUFFIX(a->params[k] + lo, a->grads[k] + lo, a->eas[k] + lo,       \
                            a->eass[k] + lo, a->amsgrad ? a->mxs[k] + lo : 0, hi - lo, \
                            a->flip, a->wd, a->shrink, a->w1, a->beta2, a->w2,         \
                            a->eps, (T)a->steps[k], (T)a->bc2_sqrts[k], a->root,       \
                            a->decay, a->amsgrad);                                     \
    }                                                                                  \
                                                                                       \
    /* decay: 0 none, 1 L2 (added to g), 2 decoupled (param shrunk by 1 - lr wd) */    \
    int pyroopt_adam_##SUFFIX(int64_t n_tensors, T *const *params,                     \
                              const T *const *grads, T *const *eas, T *const *eass,    \
                              T *const *mxs, const int64_t *numels,                    \
                              const double *steps, const double *bc2_sqrts,            \
                              double one_minus_beta1, double beta2,                    \
                              double one_minus_beta2, double eps, double weight_decay, \
                              double shrink, int decay, int amsgrad, int maximize,     \
                              void *root, int n_threads, int64_t min_per_thread) {     \
        adam_args_##SUFFIX a = {params,                                                \
                                grads,                                                 \
                                eas,                                                   \
                                eass,                                                  \
                                mxs,                                                   \
                                steps,                                                 \
                                bc2_sqrts,                                             \
                                maximize ? PYROOPT_SIGN_BIT_##SUFFIX : 0,              \
                                (T)weight_decay,                                       \
                                (T)shrink,                                             \
                                (T)one_minus_beta1,                                    \
                                (T)beta2,                                              \
                                (T)one_minus_beta2,                                    \
                                (T)eps,                                                \
                                (vsqrt_##SUFFIX)root,                                  \
                                decay,                                                 \
                                amsgrad};                                              \
        return pyroopt_parallel(n_tensors, numels, n_threads, min_per_thread,          \
                                adam_piece_##SUFFIX, &a);                              \
    }

#define DEFINE_CLIPPED_ADAM(SUFFIX, T, FMA)                                            \
    static inline __attribute__((always_inline)) void clipped_adam_body_##SUFFIX(      \
        T *restrict param, T *restrict grad, T *restrict ea, T *restrict eas,          \
        int64_t n, T lo_clip, T hi_clip, T wd, T beta1, T w1, T beta2, T w2, T eps,    \
        T step, vsqrt_##SUFFIX root, const int decay, const int centered) {            \
        T d[PYROOPT_SQRT_BLOCK];                                                       \
        for (int64_t lo = 0; lo < n; lo += PYROOPT_SQRT_BLOCK) {                       \
            int64_t len = n - lo < PYROOPT_SQRT_BLOCK ? n - lo : PYROOPT_SQRT_BLOCK;   \
            T *p = param + lo, *gr = grad + lo, *m = ea + lo, *v = eas + lo;           \
            if (PYROOPT_AHEAD_FITS(lo, n, T)) {                                        \
                PYROOPT_PREFETCH_AHEAD(gr, 0); /* written back only where clamped */   \
                PYROOPT_PREFETCH_AHEAD(m, 1);                                          \
                PYROOPT_PREFETCH_AHEAD(v, 1);                                          \
                PYROOPT_PREFETCH_AHEAD(p, 1);                                          \
            }                                                                          \
            int clamped = 0;                                                           \
            for (int64_t i = 0; i < len; ++i) {                                        \
                T g = PYROOPT_CLAMP(gr[i], lo_clip, hi_clip);                          \
                clamped |= g != gr[i];                                                 \
                if (decay) g = FMA(wd, p[i], g);                                       \
                T mi = FMA(w1, g, m[i] * beta1);                                       \
                m[i] = mi;                                                             \
                T r = centered ? g - mi : g;                                           \
                T vi = FMA(w2 * r, r, v[i] * beta2);                                   \
                v[i] = vi;                                                             \
                d[i] = vi;                                                             \
            }                                                                          \
            /* the clamped gradients are written back (as pyro's clamp_ does) only     \
             * where one changed: a block left as it was is never written to memory */ \
            if (clamped)                                                               \
                for (int64_t i = 0; i < len; ++i)                                      \
                    gr[i] = PYROOPT_CLAMP(gr[i], lo_clip, hi_clip);                    \
            block_sqrt_##SUFFIX(root, d, len);                                         \
            for (int64_t i = 0; i < len; ++i) p[i] = p[i] + (step * m[i]) / (d[i] + eps); \
        }                                                                              \
    }                                                                                  \
                                                                                       \
    PYROOPT_VECTOR_CLONES                                                              \
    static void clipped_adam_range_##SUFFIX(T *restrict param, T *restrict grad,       \
                                            T *restrict ea, T *restrict eas,           \
                                            int64_t n, T lo_clip, T hi_clip, T wd,     \
                                            T beta1, T w1, T beta2, T w2, T eps,       \
                                            T step, vsqrt_##SUFFIX root, int decay,    \
                                            int centered) {                            \
        switch ((decay ? 2 : 0) | (centered ? 1 : 0)) {                                \
        case 0: clipped_adam_body_##SUFFIX(param, grad, ea, eas, n, lo_clip, hi_clip,  \
                    wd, beta1, w1, beta2, w2, eps, step, root, 0, 0); break;           \
        case 1: clipped_adam_body_##SUFFIX(param, grad, ea, eas, n, lo_clip, hi_clip,  \
                    wd, beta1, w1, beta2, w2, eps, step, root, 0, 1); break;           \
        case 2: clipped_adam_body_##SUFFIX(param, grad, ea, eas, n, lo_clip, hi_clip,  \
                    wd, beta1, w1, beta2, w2, eps, step, root, 1, 0); break;           \
        default: clipped_adam_body_##SUFFIX(param, grad, ea, eas, n, lo_clip, hi_clip, \
                    wd, beta1, w1, beta2, w2, eps, step, root, 1, 1); break;           \
        }                                                                              \
    }                                                                                  \
                                                                                       \
    typedef struct {                                                                   \
        T *const *params;                                                              \
        T *const *grads;                                                               \
        T *const *eas;                                                                 \
        T *const *eass;                                                                \
        const double *steps;                                                           \
        T lo_clip, hi_clip, wd, beta1, w1, beta2, w2, eps;                             \
        vsqrt_##SUFFIX root;                                                           \
        int decay, centered;                                                           \
    } clipped_adam_args_##SUFFIX;                                                      \
                                                                                       \
    static void clipped_adam_piece_##SUFFIX(const void *ctx, int64_t k, int64_t lo,    \
                                            int64_t hi) {                              \
        const clipped_adam_args_##SUFFIX *a = ctx;                                     \
        clipped_adam_range_##SUFFIX(a->params[k] + lo, a->grads[k] + lo,               \
                                    a->eas[k] + lo, a->eass[k] + lo, hi - lo,          \
                                    a->lo_clip, a->hi_clip, a->wd, a->beta1, a->w1,    \
                                    a->beta2, a->w2, a->eps, (T)a->steps[k], a->root,  \
                                    a->decay, a->centered);                            \
    }                                                                                  \
                                                                                       \
    int pyroopt_clipped_adam_##SUFFIX(int64_t n_tensors, T *const *params,             \
                                      T *const *grads, T *const *eas, T *const *eass,  \
                                      const int64_t *numels, const double *steps,      \
                                      double clip, double beta1,                       \
                                      double one_minus_beta1, double beta2,            \
                                      double one_minus_beta2, double eps,              \
                                      double weight_decay, int centered, void *root,   \
                                      int n_threads, int64_t min_per_thread) {         \
        clipped_adam_args_##SUFFIX a = {params,                                        \
                                        grads,                                         \
                                        eas,                                           \
                                        eass,                                          \
                                        steps,                                         \
                                        (T)(-clip),                                    \
                                        (T)clip,                                       \
                                        (T)weight_decay,                               \
                                        (T)beta1,                                      \
                                        (T)one_minus_beta1,                            \
                                        (T)beta2,                                      \
                                        (T)one_minus_beta2,                            \
                                        (T)eps,                                        \
                                        (vsqrt_##SUFFIX)root,                          \
                                        weight_decay != 0,                             \
                                        centered};                                     \
        return pyroopt_parallel(n_tensors, numels, n_threads, min_per_thread,          \
                                clipped_adam_piece_##SUFFIX, &a);                      \
    }

DEFINE_ADAM(f32, float, fmaf, fabsf)
DEFINE_ADAM(f64, double, fma, fabs)
DEFINE_CLIPPED_ADAM(f32, float, fmaf)
DEFINE_CLIPPED_ADAM(f64, double, fma)
