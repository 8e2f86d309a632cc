/* RMSprop over many tensors in one pass over memory, with torch's numerics.
 *
 * For every element, with g negated first under `maximize` and w = 1 - alpha:
 *
 *     g   = fma(weight_decay, param, g)                  if weight_decay != 0
 *     v   = fma(w * g, g, v * alpha)                     (mul_, then addcmul_)
 *     m   = lerp(m, g, w)                                centered
 *     d   = sqrt(centered ? fma(-1 * m, m, v) : v) + eps
 *     buf = buf * momentum + g / d;  param = fma(-lr, buf, param)   momentum > 0
 *     param = param + (-lr * g) / d                                  otherwise
 *
 * which is torch.optim.RMSprop's single-tensor update operation for operation in the
 * tensor's own precision. On the CPU torch fuses the multiply-add of `add(alpha=)`,
 * `addcmul` (value * t1 rounded first) and `lerp` (fma(w, end - self, self) for
 * |w| < 0.5, else fma(w - 1, end - self, end)); `addcdiv` is self + (value * t1) / t2.
 * Signs are flipped, and -1 multiplied, as signbit.h says.
 */
#include <math.h>
#include <stdint.h>

#include "parallel.h"
#include "prefetch.h"
#include "signbit.h"
#include "vsqrt.h"

#define DEFINE_RMSPROP(SUFFIX, T, FMA, ABS, SQRT)                                      \
    static inline __attribute__((always_inline)) void rmsprop_body_##SUFFIX(           \
        T *restrict param, const T *restrict grad, T *restrict sq, T *restrict avg,    \
        T *restrict buf, int64_t n, pyroopt_mask_##SUFFIX flip, T wd, T alpha, T w,    \
        T eps, T momentum, T neg_lr, T minus_one, vsqrt_##SUFFIX root,                 \
        const int decay, const int centered, const int with_momentum) {                \
        const int small = ABS(w) < (T)0.5;                                             \
        const T w_minus_one = w - (T)1;                                                \
        T d[PYROOPT_SQRT_BLOCK];                                                       \
        for (int64_t lo = 0; lo < n; lo += PYROOPT_SQRT_BLOCK) {                       \
            int64_t m = n - lo < PYROOPT_SQRT_BLOCK ? n - lo : PYROOPT_SQRT_BLOCK;     \
            T *p = param + lo, *v = sq + lo, *a = centered ? avg + lo : 0;             \
            T *b = with_momentum ? buf + lo : 0;                                       \
            const T *gr = grad + lo;                                                   \
            if (PYROOPT_AHEAD_FITS(lo, n, T)) {                                        \
                PYROOPT_PREFETCH_AHEAD(gr, 0);                                         \
                PYROOPT_PREFETCH_AHEAD(v, 1);                                          \
                if (centered) PYROOPT_PREFETCH_AHEAD(a, 1);                            \
                if (with_momentum) PYROOPT_PREFETCH_AHEAD(b, 1);                       \
                PYROOPT_PREFETCH_AHEAD(p, 1);                                          \
            }                                                                          \
            for (int64_t i = 0; i < m; ++i) {                                          \
                T g = pyroopt_flip_##SUFFIX(gr[i], flip);                              \
                if (decay) g = FMA(wd, p[i], g);                                       \
                T vi = FMA(w * g, g, v[i] * alpha);                                    \
                v[i] = vi;                                                             \
                if (centered) {                                                        \
                    T mi = a[i];                                                       \
                    T diff = g - mi;                                                   \
                    mi = small ? FMA(w, diff, mi) : FMA(w_minus_one, diff, g);         \
                    a[i] = mi;                                                         \
                    d[i] = FMA(minus_one * mi, mi, vi);                                \
                } else {                                                               \
                    d[i] = vi;                                                         \
                }                                                                      \
            }                                                                          \
            block_sqrt_##SUFFIX(root, d, m);                                           \
            for (int64_t i = 0; i < m; ++i) {                                          \
                T g = pyroopt_flip_##SUFFIX(gr[i], flip);                              \
                if (decay) g = FMA(wd, p[i], g);                                       \
                T di = d[i] + eps;                                                     \
                if (with_momentum) {                                                   \
                    T bi = b[i] * momentum + g / di;                                   \
                    b[i] = bi;                                                         \
                    p[i] = FMA(neg_lr, bi, p[i]);                                      \
                } else {                                                               \
                    p[i] = p[i] + (neg_lr * g) / di;                                   \
                }                                                                      \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
                                                                                       \
    PYROOPT_VECTOR_CLONES                                                              \
    static void rmsprop_range_##SUFFIX(T *restrict param, const T *restrict grad,      \
                                       T *restrict sq, T *restrict avg,                \
                                       T *restrict buf, int64_t n,                     \
                                       pyroopt_mask_##SUFFIX flip, T wd, T alpha, T w, \
                                       T eps, T momentum, T neg_lr, T minus_one,       \
                                       vsqrt_##SUFFIX root, int decay, int centered,   \
                                       int with_momentum) {                            \
        switch ((decay ? 4 : 0) | (centered ? 2 : 0) | (with_momentum ? 1 : 0)) {      \
        case 0: rmsprop_body_##SUFFIX(param, grad, sq, avg, buf, n, flip, wd, alpha,   \
                      w, eps, momentum, neg_lr, minus_one, root, 0, 0, 0); break;      \
        case 1: rmsprop_body_##SUFFIX(param, grad, sq, avg, buf, n, flip, wd, alpha,   \
                      w, eps, momentum, neg_lr, minus_one, root, 0, 0, 1); break;      \
        case 2: rmsprop_body_##SUFFIX(param, grad, sq, avg, buf, n, flip, wd, alpha,   \
                      w, eps, momentum, neg_lr, minus_one, root, 0, 1, 0); break;      \
        case 3: rmsprop_body_##SUFFIX(param, grad, sq, avg, buf, n, flip, wd, alpha,   \
                      w, eps, momentum, neg_lr, minus_one, root, 0, 1, 1); break;      \
        case 4: rmsprop_body_##SUFFIX(param, grad, sq, avg, buf, n, flip, wd, alpha,   \
                      w, eps, momentum, neg_lr, minus_one, root, 1, 0, 0); break;      \
        case 5: rmsprop_body_##SUFFIX(param, grad, sq, avg, buf, n, flip, wd, alpha,   \
                      w, eps, momentum, neg_lr, minus_one, root, 1, 0, 1); break;      \
        case 6: rmsprop_body_##SUFFIX(param, grad, sq, avg, buf, n, flip, wd, alpha,   \
                      w, eps, momentum, neg_lr, minus_one, root, 1, 1, 0); break;      \
        default: rmsprop_body_##SUFFIX(param, grad, sq, avg, buf, n, flip, wd, alpha,  \
                      w, eps, momentum, neg_lr, minus_one, root, 1, 1, 1); break;      \
        }                                                                              \
    }                                                                                  \
                                                                                       \
    typedef struct {                                                                   \
        T *const *params;                                                              \
        const T *const *grads;                                                         \
        T *const *sqs;                                                                 \
        T *const *avgs;                                                                \
        T *const *bufs;                                                                \
        pyroopt_mask_##SUFFIX flip;                                                    \
        T wd, alpha, w, eps, momentum, neg_lr, minus_one;                              \
        vsqrt_##SUFFIX root;                                                           \
        int decay, centered, with_momentum;                                            \
    } rmsprop_args_##SUFFIX;                                                           \
                                                                                       \
    static void rmsprop_piece_##SUFFIX(const void *ctx, int64_t k, int64_t lo,         \
                                       int64_t hi) {                                   \
        const rmsprop_args_##SUFFIX *a = ctx;                                          \
        rmsprop_range_##SUFFIX(a->params[k] + lo, a->grads[k] + lo, a->sqs[k] + lo,    \
                               a->centered ? a->avgs[k] + lo : 0,                      \
                               a->with_momentum ? a->bufs[k] + lo : 0, hi - lo,        \
                               a->flip, a->wd, a->alpha, a->w, a->eps, a->momentum,    \
                               a->neg_lr, a->minus_one, a->root, a->decay,             \
                               a->centered, a->with_momentum);                         \
    }                                                                                  \
                                                                                       \
    int pyroopt_rmsprop_##SUFFIX(int64_t n_tensors, T *const *params,                  \
                                 const T *const *grads, T *const *sqs,                 \
                                 T *const *avgs, T *const *bufs,                       \
                                 const int64_t *numels, double lr, double alpha,       \
                                 double one_minus_alpha, double eps,                   \
                                 double weight_decay, double momentum, int centered,   \
                                 int maximize, void *root, int n_threads,              \
                                 int64_t min_per_thread) {                             \
        rmsprop_args_##SUFFIX a = {params,                                             \
                                   grads,                                              \
                                   sqs,                                                \
                                   avgs,                                               \
                                   bufs,                                               \
                                   maximize ? PYROOPT_SIGN_BIT_##SUFFIX : 0,           \
                                   (T)weight_decay,                                    \
                                   (T)alpha,                                           \
                                   (T)one_minus_alpha,                                 \
                                   (T)eps,                                             \
                                   (T)momentum,                                        \
                                   (T)(-lr),                                           \
                                   (T)-1,                                              \
                                   (vsqrt_##SUFFIX)root,                               \
                                   weight_decay != 0,                                  \
                                   centered,                                           \
                                   momentum > 0};                                      \
        return pyroopt_parallel(n_tensors, numels, n_threads, min_per_thread,          \
                                rmsprop_piece_##SUFFIX, &a);                           \
    }

DEFINE_RMSPROP(f32, float, fmaf, fabsf, sqrtf)
DEFINE_RMSPROP(f64, double, fma, fabs, sqrt)
