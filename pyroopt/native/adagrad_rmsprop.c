/* Pyro's AdagradRMSProp over many tensors in one pass, with pyro's numerics.
 *
 * For every element of tensor k at its step count t_k, with
 * -lr_k = -(eta * t_k ** (-0.5 + delta)) computed in double (coefficients.h):
 *
 *     s = g * g                            on a tensor's first step
 *     s = s * (1 - tau) + (tau * g) * g    after (pyro's `*=` and `+=`, unfused)
 *     param = param.addcdiv(g, sqrt(s) + 1, value=-lr_k)
 *
 * operation for operation as pyro.optim.AdagradRMSProp in the tensor's precision.
 */
#include "rule.h"

/* A call's arguments, and what every element of it shares, in the element type. */
typedef struct {
    const pyroopt_adagrad_rmsprop_args *args;
    scalar_t keep, tau; /* 1 - t, t */
    vsqrt_fn root;
} adagrad_rmsprop_call;

static inline __attribute__((always_inline)) void adagrad_rmsprop_body(
    scalar_t *restrict param, const scalar_t *restrict grad, scalar_t *restrict sum, int64_t n,
    const adagrad_rmsprop_call *c, scalar_t neg_lr, const int fresh) {
    const scalar_t keep = c->keep, tau = c->tau;
    const root_plan roots = root_plan_for(c->root);
    const int64_t block = roots.block;
    scalar_t std[PYROOPT_SQRT_BLOCK];
    for (int64_t lo = 0; lo < n; lo += block) {
        const int64_t len = block_length(lo, n, block);
        scalar_t *p = param + lo, *s = sum + lo;
        const scalar_t *gr = grad + lo;
        prefetch_ahead(lo, n, block, gr, s, p, 0, 0);
        for (int64_t i = 0; i < len; ++i) {
            const scalar_t g = gr[i];
            std[i] = s[i] = fresh ? g * g : s[i] * keep + (tau * g) * g;
        }
        block_sqrt(&roots, std, len);
        for (int64_t i = 0; i < len; ++i)
            p[i] = torch_addcdiv(p[i], gr[i], std[i] + (scalar_t)1, neg_lr);
    }
}

/* The body compiled once per option, so that each vectorizes without branches. */
PYROOPT_VECTOR_CLONES
static void TYPED(adagrad_rmsprop_range)(scalar_t *restrict p, const scalar_t *restrict g,
                                         scalar_t *restrict s, int64_t n,
                                         const adagrad_rmsprop_call *c, scalar_t neg_lr,
                                         int fresh) {
    if (fresh)
        adagrad_rmsprop_body(p, g, s, n, c, neg_lr, 1);
    else
        adagrad_rmsprop_body(p, g, s, n, c, neg_lr, 0);
}

static void adagrad_rmsprop_piece(const void *ctx, int64_t k, int64_t lo, int64_t hi) {
    const adagrad_rmsprop_call *c = ctx;
    const pyroopt_adagrad_rmsprop_args *a = c->args;
    const double neg_lr = pyroopt_adagrad_rmsprop_neg_lr(a->eta, a->delta, (double)a->steps[k]);
    TYPED(adagrad_rmsprop_range)(((scalar_t *const *)a->params)[k] + lo,
                                 ((const scalar_t *const *)a->grads)[k] + lo,
                                 ((scalar_t *const *)a->sums)[k] + lo, hi - lo,
                                 c, (scalar_t)neg_lr, a->steps[k] == 1);
}

int TYPED(pyroopt_adagrad_rmsprop)(const pyroopt_adagrad_rmsprop_args *a) {
    adagrad_rmsprop_call call = {a, (scalar_t)(1.0 - a->t), (scalar_t)a->t, (vsqrt_fn)a->root};
    return pyroopt_parallel(a->n_tensors, a->numels, a->n_threads, a->min_per_thread,
                            adagrad_rmsprop_piece, &call);
}
