/* Pyro's AdagradRMSProp over many tensors in one pass, with pyro's numerics.
 *
 * For every element, with tensor k's -eta * t^(-1/2 + delta) in `neg_lrs[k]`:
 *
 *     s = g * g                            on a tensor's first step (`fresh`)
 *     s = s * (1 - tau) + (tau * g) * g    after (pyro's `*=` and `+=`, unfused)
 *     param = param + (neg_lr * g) / (sqrt(s) + 1)      (addcdiv_)
 *
 * operation for operation as pyro.optim.AdagradRMSProp in the tensor's precision.
 */
#include <math.h>
#include <stdint.h>

#include "parallel.h"
#include "prefetch.h"
#include "vsqrt.h"

#define DEFINE_ADAGRAD_RMSPROP(SUFFIX, T, SQRT)                                         \
    static inline __attribute__((always_inline)) void agrms_body_##SUFFIX(            \
        T *restrict param, const T *restrict grad, T *restrict sum, int64_t n,        \
        T keep, T tau, T neg_lr, vsqrt_##SUFFIX root, const int fresh) {               \
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
                T g = gr[i];                                                           \
                std[i] = s[i] = fresh ? g * g : s[i] * keep + (tau * g) * g;           \
            }                                                                          \
            block_sqrt_##SUFFIX(root, std, m);                                         \
            for (int64_t i = 0; i < m; ++i)                                            \
                p[i] = p[i] + (neg_lr * gr[i]) / (std[i] + (T)1);                      \
        }                                                                              \
    }                                                                                  \
                                                                                       \
    PYROOPT_VECTOR_CLONES                                                              \
    static void agrms_range_##SUFFIX(T *restrict param, const T *restrict grad,        \
                                     T *restrict sum, int64_t n, T keep, T tau,        \
                                     T neg_lr, vsqrt_##SUFFIX root, int fresh) {                            \
        if (fresh)                                                                     \
            agrms_body_##SUFFIX(param, grad, sum, n, keep, tau, neg_lr, root, 1);            \
        else                                                                           \
            agrms_body_##SUFFIX(param, grad, sum, n, keep, tau, neg_lr, root, 0);            \
    }                                                                                  \
                                                                                       \
    typedef struct {                                                                   \
        T *const *params;                                                              \
        const T *const *grads;                                                         \
        T *const *sums;                                                                \
        const unsigned char *fresh;                                                    \
        const double *neg_lrs;                                                         \
        T keep, tau;                                                                   \
        vsqrt_##SUFFIX root;                                                                   \
    } agrms_args_##SUFFIX;                                                             \
                                                                                       \
    static void agrms_piece_##SUFFIX(const void *ctx, int64_t k, int64_t lo,           \
                                     int64_t hi) {                                     \
        const agrms_args_##SUFFIX *a = ctx;                                            \
        agrms_range_##SUFFIX(a->params[k] + lo, a->grads[k] + lo, a->sums[k] + lo,     \
                             hi - lo, a->keep, a->tau, (T)a->neg_lrs[k], a->root,      \
                             a->fresh[k]); \
    }                                                                                  \
                                                                                       \
    int pyroopt_adagrad_rmsprop_##SUFFIX(int64_t n_tensors, T *const *params,          \
                                         const T *const *grads, T *const *sums,        \
                                         const int64_t *numels,                        \
                                         const unsigned char *fresh,                   \
                                         const double *neg_lrs, double keep,           \
                                         double tau, void *root, int n_threads,                    \
                                         int64_t min_per_thread) {                     \
        agrms_args_##SUFFIX a = {params, grads, sums, fresh, neg_lrs, (T)keep, (T)tau,  \
                                 (vsqrt_##SUFFIX)root}; \
        return pyroopt_parallel(n_tensors, numels, n_threads, min_per_thread,          \
                                agrms_piece_##SUFFIX, &a);                             \
    }

DEFINE_ADAGRAD_RMSPROP(f32, float, sqrtf)
DEFINE_ADAGRAD_RMSPROP(f64, double, sqrt)
