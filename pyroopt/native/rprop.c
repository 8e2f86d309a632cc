/* Rprop over many tensors in one pass over memory, with torch's numerics.
 *
 * For every element, with g negated first under `maximize`, and step = lr on a
 * tensor's first step (`fresh`, where prev is still 0):
 *
 *     s  = g * prev
 *     f  = eta_plus if s > 0, eta_minus if s < 0, else 1   (NaN s counts as 0)
 *     step = clamp(step * f, step_min, step_max)           (NaN stays NaN)
 *     g  = 0 if s < 0
 *     param = param + (-1 * sign(g)) * step                (sign(NaN) = 0)
 *     prev = g
 *
 * which is torch.optim.Rprop's single-tensor update, operation for operation in the
 * tensor's own precision, so results are bitwise equal to torch's.
 *
 * The elements of all tensors are split over up to `n_threads` threads by
 * pyroopt_parallel (parallel.h). No Python or torch headers: the library is loaded
 * with ctypes and handed data pointers.
 */
#include <stdint.h>

#include "parallel.h"
#include "signbit.h"

#define DEFINE_RPROP(SUFFIX, T)                                                        \
    PYROOPT_VECTOR_CLONES                                                              \
    static void rprop_range_##SUFFIX(T *restrict param, const T *restrict grad,        \
                                     T *restrict prev, T *restrict step, int64_t n,    \
                                     int fresh, T lr, T eta_minus, T eta_plus,         \
                                     T step_min, T step_max,                           \
                                     pyroopt_mask_##SUFFIX flip, T minus_one) {        \
        for (int64_t i = 0; i < n; ++i) {                                              \
            T g = pyroopt_flip_##SUFFIX(grad[i], flip);                                \
            T s = g * prev[i];                                                         \
            T f = s > 0 ? eta_plus : (s < 0 ? eta_minus : (T)1);                       \
            T st = (fresh ? lr : step[i]) * f;                                         \
            st = st < step_min ? step_min : st;                                        \
            st = st > step_max ? step_max : st;                                        \
            g = s < 0 ? (T)0 : g;                                                      \
            T sign_g = g > 0 ? (T)1 : (g < 0 ? (T)-1 : (T)0);                          \
            /* addcmul(sign, step, value=-1): a NaN step keeps its sign (signbit.h) */ \
            param[i] = param[i] + (minus_one * sign_g) * st;                           \
            prev[i] = g;                                                               \
            step[i] = st;                                                              \
        }                                                                              \
    }                                                                                  \
                                                                                       \
    typedef struct {                                                                   \
        T *const *params;                                                              \
        const T *const *grads;                                                         \
        T *const *prevs;                                                               \
        T *const *steps;                                                               \
        const unsigned char *fresh;                                                    \
        T lr, eta_minus, eta_plus, step_min, step_max, minus_one;                      \
        pyroopt_mask_##SUFFIX flip;                                                    \
    } rprop_args_##SUFFIX;                                                             \
                                                                                       \
    static void rprop_piece_##SUFFIX(const void *ctx, int64_t k, int64_t lo,           \
                                     int64_t hi) {                                     \
        const rprop_args_##SUFFIX *a = ctx;                                            \
        rprop_range_##SUFFIX(a->params[k] + lo, a->grads[k] + lo, a->prevs[k] + lo,    \
                             a->steps[k] + lo, hi - lo, a->fresh[k], a->lr,            \
                             a->eta_minus, a->eta_plus, a->step_min, a->step_max,      \
                             a->flip, a->minus_one);                                   \
    }                                                                                  \
                                                                                       \
    int pyroopt_rprop_##SUFFIX(int64_t n_tensors, T *const *params,                    \
                               const T *const *grads, T *const *prevs,                 \
                               T *const *steps, const int64_t *numels,                 \
                               const unsigned char *fresh, double lr,                  \
                               double eta_minus, double eta_plus, double step_min,     \
                               double step_max, int maximize, int n_threads,           \
                               int64_t min_per_thread) {                               \
        rprop_args_##SUFFIX a = {params,                                               \
                                 grads,                                                \
                                 prevs,                                                \
                                 steps,                                                \
                                 fresh,                                                \
                                 (T)lr,                                                \
                                 (T)eta_minus,                                         \
                                 (T)eta_plus,                                          \
                                 (T)step_min,                                          \
                                 (T)step_max,                                          \
                                 (T)-1,                                                \
                                 maximize ? PYROOPT_SIGN_BIT_##SUFFIX : 0};            \
        return pyroopt_parallel(n_tensors, numels, n_threads, min_per_thread,          \
                                rprop_piece_##SUFFIX, &a);                             \
    }

DEFINE_RPROP(f32, float)
DEFINE_RPROP(f64, double)
