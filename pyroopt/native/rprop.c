/* Rprop over many tensors in one pass over memory, with torch's numerics.
 *
 * For every element, with g negated first under `maximize`, and step = lr on a
 * tensor's first step (`fresh`, where prev is still 0):
 *
 *     s  = g * prev
 *     f  = eta_plus if s > 0, eta_minus if s < 0, else 1   (NaN s counts as 0)
 *     step = clamp(step * f, step_min, step_max)           (NaN stays NaN)
 *     g  = 0 if s < 0
 *     param = param.addcmul(sign(g), step, value=-1)       (sign(NaN) = 0)
 *     prev = g
 *
 * which is torch.optim.Rprop's single-tensor update, operation for operation in the
 * tensor's own precision, so results are bitwise equal to torch's.
 */
#include "rule.h"

/* A call's arguments, and what every element of it shares, in the element type. */
typedef struct {
    const pyroopt_rprop_args *args;
    bits_t flip; /* SIGN_BIT under `maximize` */
    scalar_t lr, eta_minus, eta_plus, step_min, step_max;
    scalar_t minus_one; /* -1, which the compiler must not see (torch_ops.h) */
} rprop_call;

PYROOPT_VECTOR_CLONES
static void TYPED(rprop_range)(scalar_t *restrict param, const scalar_t *restrict grad,
                               scalar_t *restrict prev, scalar_t *restrict step, int64_t n,
                               int fresh, const rprop_call *c) {
    const bits_t flip = c->flip;
    const scalar_t lr = c->lr, eta_minus = c->eta_minus, eta_plus = c->eta_plus;
    const scalar_t step_min = c->step_min, step_max = c->step_max, minus_one = c->minus_one;
    for (int64_t i = 0; i < n; ++i) {
        scalar_t g = torch_neg_if(grad[i], flip);
        const scalar_t s = g * prev[i];
        const scalar_t f = s > 0 ? eta_plus : (s < 0 ? eta_minus : (scalar_t)1);
        const scalar_t st = torch_clamp((fresh ? lr : step[i]) * f, step_min, step_max);
        g = s < 0 ? (scalar_t)0 : g;
        /* addcmul(sign(g), step, value=-1): the product is exact (the sign is -1, 0 or
         * 1), so it rounds as torch's fused one; a NaN step keeps its sign (torch_ops.h) */
        param[i] = param[i] + (minus_one * torch_sign(g)) * st;
        prev[i] = g;
        step[i] = st;
    }
}

static void rprop_piece(const void *ctx, int64_t k, int64_t lo, int64_t hi) {
    const rprop_call *c = ctx;
    const pyroopt_rprop_args *a = c->args;
    TYPED(rprop_range)(((scalar_t *const *)a->params)[k] + lo,
                       ((const scalar_t *const *)a->grads)[k] + lo,
                       ((scalar_t *const *)a->prevs)[k] + lo,
                       ((scalar_t *const *)a->step_sizes)[k] + lo, hi - lo, a->fresh[k],
                       c);
}

int TYPED(pyroopt_rprop)(const pyroopt_rprop_args *a) {
    rprop_call call = {a, a->maximize ? SIGN_BIT : 0, (scalar_t)a->lr, (scalar_t)a->eta_minus,
                       (scalar_t)a->eta_plus, (scalar_t)a->step_size_min,
                       (scalar_t)a->step_size_max, (scalar_t)-1};
    return pyroopt_parallel(a->n_tensors, a->numels, a->n_threads, a->min_per_thread,
                            rprop_piece, &call);
}
