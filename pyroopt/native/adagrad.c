/* Adagrad (torch.optim.Adagrad) over many tensors in one pass, with torch's numerics.
 *
 * For every element, with g negated first under `maximize`, tensor k's -clr in
 * `neg_lrs[k]`, and sum set to the initial accumulator value on its first step:
 *
 *     g   = fma(weight_decay, param, g)      if weight_decay != 0
 *     sum = fma(g, g, sum)                   (addcmul_ with value 1)
 *     param = param + (neg_lr * g) / (sqrt(sum) + eps)   (addcdiv_)
 *
 * operation for operation as torch's single-tensor loop in the tensor's precision.
 */
#include <math.h>
#include <stdint.h>

#include "parallel.h"
#include "prefetch.h"
#include "signbit.h"
#include "vsqrt.h"

#define DEFINE_ADAGRAD(SUFFIX, T, FMA, SQRT)                                           \
    static inline __attribute__((always_inline)) void adagrad_body_##SUFFIX(           \
        T *restrict param, const T *restrict grad, T *restrict sum, int64_t n,         \
        pyroopt_mask_##SUFFIX flip, T wd, T eps, T neg_lr, T initial,                  \
        vsqrt_##SUFFIX root,                                                           \
        const int decay, const int fresh) {                                            \
        T std[PYROOPT_SQRT_BLOCK];                                                     \
        for (int64_t lo = 0; lo < n; lo += PYROOPT_SQRT_BLOCK) {                       \
            int64_t m = n - lo < PYROOPT_SQRT_BLOCK ? n - lo : PYROOPT_SQRT_BLOCK;     \
            T *p = param + lo, *s = sum + lo;                                          \
            const T *gr = grad + lo;                                                   \
            if (PYROOPT_AHEAD_FITS(lo, n, T)) {                                        \
                PYROOPT_PREFETCH_AHEAD(gr, 0);                                         \
                PYROOPT_PREFETCH_AHEAD(s, 1);                                          \
                PYROOPT_PREFETCH_AHEAD(p, 1);                                          \
            }                                                                          \
            for (int64_t i = 0; i < m; ++i) {                                          \
                T g = pyroopt_flip_##SUFFIX(gr[i], flip);                              \
                if (decay) g = FMA(wd, p[i], g);                                       \
                std[i] = s[i] = FMA(g, g, fresh ? initial : s[i]);                     \
            }                                                                          \
            block_sqrt_##SUFFIX(root, std, m);                                         \
            for (int64_t i = 0; i < m; ++i) {                                          \
                T g = pyroopt_flip_##SUFFIX(gr[i], flip);                              \
                if (decay) g = FMA(wd, p[i], g);                                       \
                p[i] = p[i] + (neg_lr * g) / (std[i] + eps);                           \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
                                                                                       \
    PYROOPT_VECTOR_CLONES                                                              \
    static void adagrad_range_##SUFFIX(T *restrict param, const T *restrict grad,      \
                                       T *restrict sum, int64_t n,                     \
                                       pyroopt_mask_##SUFFIX flip, T wd, T eps,        \
                                       T neg_lr, T initial, vsqrt_##SUFFIX root,       \
                                       int decay,                                      \
                                       int fresh) {                                    \
        if (decay) {                                                                   \
            if (fresh)                                                                 \
                adagrad_body_##SUFFIX(param, grad, sum, n, flip, wd, eps, neg_lr,      \
                                      initial, root, 1, 1);                            \
            else                                                                       \
                adagrad_body_##SUFFIX(param, grad, sum, n, flip, wd, eps, neg_lr,      \
                                      initial, root, 1, 0);                            \
        } else if (fresh) {                                                            \
            adagrad_body_##SUFFIX(param, grad, sum, n, flip, wd, eps, neg_lr,          \
                                  initial, root, 0, 1);                                \
        } else {                                                                       \
            adagrad_body_##SUFFIX(param, grad, sum, n, flip, wd, eps, neg_lr,          \
                                  initial, root, 0, 0);                                \
        }                                                                              \
    }                                                                                  \
                                                                                       \
    typedef struct {                                                                   \
        T *const *params;                                                              \
        const T *const *grads;                                                         \
        T *const *sums;                                                                \
        const unsigned char *fresh;                                                    \
        const double *neg_lrs;                                                         \
        pyroopt_mask_##SUFFIX flip;                                                    \
        T wd, eps, initial;                                                            \
        vsqrt_##SUFFIX root;                                                           \
        int decay;                                                                     \
    } adagrad_args_##SUFFIX;                                                           \
                                                                                       \
    static void adagrad_piece_##SUFFIX(const void *ctx, int64_t k, int64_t lo,         \
                                       int64_t hi) {                                   \
        const adagrad_args_##SUFFIX *a = ctx;                                          \
        adagrad_range_##SUFFIX(a->params[k] + lo, a->grads[k] + lo, a->sums[k] + lo,   \
                               hi - lo, a->flip, a->wd, a->eps,                        \
                               (T)a->neg_lrs[k], a->initial, a->root, a->decay,        \
                               a->fresh[k]);                                           \
    }                                                                                  \
                                                                                       \
    int pyroopt_adagrad_##SUFFIX(int64_t n_tensors, T *const *params,                  \
                                 const T *const *grads, T *const *sums,                \
                                 const int64_t *numels, const unsigned char *fresh,    \
                                 const double *neg_lrs, double initial, double eps,    \
                                 double weight_decay, int maximize, void *root,        \
                                 int n_threads,                                        \
                                 int64_t min_per_thread) {                             \
        adagrad_args_##SUFFIX a = {params,                                             \
                                   grads,                                              \
                                   sums,                                               \
                                   fresh,                                              \
                                   neg_lrs,                                            \
                                   maximize ? PYROOPT_SIGN_BIT_##SUFFIX : 0,           \
                                   (T)weight_decay,                                    \
                                   (T)eps,                                             \
                                   (T)initial,                                         \
                                   (vsqrt_##SUFFIX)root,                               \
                                   weight_decay != 0};                                 \
        return pyroopt_parallel(n_tensors, numels, n_threads, min_per_thread,          \
                                adagrad_piece_##SUFFIX, &a);                           \
    }

DEFINE_ADAGRAD(f32, float, fmaf, sqrtf)
DEFINE_ADAGRAD(f64, double, fma, sqrt)
