/* SGD with momentum over many tensors in one pass over memory, with torch's numerics.
 *
 * For every element, with g negated first under `maximize`:
 *
 *     g   = fma(weight_decay, param, g)            if weight_decay != 0
 *     buf = g                                      on a tensor's first step (`fresh`)
 *     buf = fma(1 - dampening, g, buf * momentum)  after
 *     g   = nesterov ? fma(momentum, buf, g) : buf  if momentum != 0
 *     param = fma(-lr, g, param)
 *
 * which is torch.optim.SGD's single-tensor update operation for operation in the
 * tensor's own precision: `add(x, alpha=a)` on the CPU is one fused multiply-add
 * (torch's vectorized fmadd, and its scalar tail alike), the other operations single
 * roundings. Each option is a loop of its own, so the loops vectorize.
 */
#include <math.h>
#include <stdint.h>

#include "parallel.h"
#include "signbit.h"

#define DEFINE_SGD(SUFFIX, T, FMA)                                                     \
    static inline __attribute__((always_inline)) void sgd_body_##SUFFIX(               \
        T *restrict param, const T *restrict grad, T *restrict buf, int64_t n,         \
        pyroopt_mask_##SUFFIX flip, T weight_decay, T momentum, T keep, T neg_lr,      \
        const int decay,                                                               \
        const int with_momentum, const int fresh, const int nesterov) {                \
        for (int64_t i = 0; i < n; ++i) {                                              \
            T g = pyroopt_flip_##SUFFIX(grad[i], flip);                                \
            if (decay) g = FMA(weight_decay, param[i], g);                             \
            if (with_momentum) {                                                       \
                T b = fresh ? g : FMA(keep, g, buf[i] * momentum);                     \
                buf[i] = b;                                                            \
                g = nesterov ? FMA(momentum, b, g) : b;                                \
            }                                                                          \
            param[i] = FMA(neg_lr, g, param[i]);                                       \
        }                                                                              \
    }                                                                                  \
                                                                                       \
    PYROOPT_VECTOR_CLONES                                                              \
    static void sgd_range_##SUFFIX(T *restrict param, const T *restrict grad,          \
                                   T *restrict buf, int64_t n,                         \
                                   pyroopt_mask_##SUFFIX flip, T wd,                   \
                                   T momentum, T keep, T neg_lr, int decay,            \
                                   int with_momentum, int fresh, int nesterov) {       \
        if (!with_momentum) {                                                          \
            if (decay)                                                                 \
                sgd_body_##SUFFIX(param, grad, buf, n, flip, wd, momentum, keep,       \
                                  neg_lr, 1, 0, 0, 0);                                 \
            else                                                                       \
                sgd_body_##SUFFIX(param, grad, buf, n, flip, wd, momentum, keep,       \
                                  neg_lr, 0, 0, 0, 0);                                 \
            return;                                                                    \
        }                                                                              \
        int which = (decay ? 4 : 0) | (fresh ? 2 : 0) | (nesterov ? 1 : 0);            \
        switch (which) {                                                               \
            case 0: sgd_body_##SUFFIX(param, grad, buf, n, flip, wd, momentum,         \
                                      keep, neg_lr, 0, 1, 0, 0); break;                \
            case 1: sgd_body_##SUFFIX(param, grad, buf, n, flip, wd, momentum,         \
                                      keep, neg_lr, 0, 1, 0, 1); break;                \
            case 2: sgd_body_##SUFFIX(param, grad, buf, n, flip, wd, momentum,         \
                                      keep, neg_lr, 0, 1, 1, 0); break;                \
            case 3: sgd_body_##SUFFIX(param, grad, buf, n, flip, wd, momentum,         \
                                      keep, neg_lr, 0, 1, 1, 1); break;                \
            case 4: sgd_body_##SUFFIX(param, grad, buf, n, flip, wd, momentum,         \
                                      keep, neg_lr, 1, 1, 0, 0); break;                \
            case 5: sgd_body_##SUFFIX(param, grad, buf, n, flip, wd, momentum,         \
                                      keep, neg_lr, 1, 1, 0, 1); break;                \
            case 6: sgd_body_##SUFFIX(param, grad, buf, n, flip, wd, momentum,         \
                                      keep, neg_lr, 1, 1, 1, 0); break;                \
            default: sgd_body_##SUFFIX(param, grad, buf, n, flip, wd, momentum,        \
                                       keep, neg_lr, 1, 1, 1, 1); break;               \
        }                                                                              \
    }                                                                                  \
                                                                                       \
    typedef struct {                                                                   \
        T *const *params;                                                              \
        const T *const *grads;                                                         \
        T *const *bufs;                                                                \
        const unsigned char *fresh;                                                    \
        pyroopt_mask_##SUFFIX flip;                                                    \
        T weight_decay, momentum, keep, neg_lr;                                        \
        int decay, with_momentum, nesterov;                                            \
    } sgd_args_##SUFFIX;                                                               \
                                                                                       \
    static void sgd_piece_##SUFFIX(const void *ctx, int64_t k, int64_t lo,             \
                                   int64_t hi) {                                       \
        const sgd_args_##SUFFIX *a = ctx;                                              \
        sgd_range_##SUFFIX(a->params[k] + lo, a->grads[k] + lo,                        \
                           a->with_momentum ? a->bufs[k] + lo : 0, hi - lo,            \
                           a->flip, a->weight_decay, a->momentum, a->keep,             \
                           a->neg_lr, a->decay, a->with_momentum, a->fresh[k],         \
                           a->nesterov);                                               \
    }                                                                                  \
                                                                                       \
    int pyroopt_sgd_##SUFFIX(int64_t n_tensors, T *const *params,                      \
                             const T *const *grads, T *const *bufs,                    \
                             const int64_t *numels, const unsigned char *fresh,        \
                             double lr, double weight_decay, double momentum,          \
                             double keep, int nesterov, int maximize, int n_threads,   \
                             int64_t min_per_thread) {                                 \
        sgd_args_##SUFFIX a = {params,                                                 \
                               grads,                                                  \
                               bufs,                                                   \
                               fresh,                                                  \
                               maximize ? PYROOPT_SIGN_BIT_##SUFFIX : 0,               \
                               (T)weight_decay,                                        \
                               (T)momentum,                                            \
                               (T)keep,                                                \
                               (T)(-lr),                                               \
                               weight_decay != 0,                                      \
                               momentum != 0,                                          \
                               nesterov};                                              \
        return pyroopt_parallel(n_tensors, numels, n_threads, min_per_thread,          \
                                sgd_piece_##SUFFIX, &a);                               \
    }

DEFINE_SGD(f32, float, fmaf)
DEFINE_SGD(f64, double, fma)
