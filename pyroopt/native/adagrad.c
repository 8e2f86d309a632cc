/* Adagrad (torch.optim.Adagrad) over many tensors in one pass, with torch's numerics.
 *
 * For every element of tensor k at its step count t_k, with g negated first under
 * `maximize`, -clr_k = -(lr / (1 + (t_k - 1) * lr_decay)) computed in double
 * (coefficients.h), and sum set to the initial accumulator value on the first step:
 *
 *     g   = g.add(param, alpha=weight_decay)     if weight_decay != 0
 *     sum = sum.addcmul(g, g, value=1)
 *     param = param.addcdiv(g, sqrt(sum) + eps, value=-clr_k)
 *
 * operation for operation as torch's single-tensor loop in the tensor's precision.
 */
#include "rule.h"

/* A call's arguments, and what every element of it shares, in the element type. */
typedef struct {
    const pyroopt_adagrad_args *args;
    bits_t flip; /* SIGN_BIT under `maximize` */
    scalar_t weight_decay, eps, initial;
    vsqrt_fn root;
} adagrad_call;

static inline __attribute__((always_inline)) void adagrad_body(
    scalar_t *restrict param, const scalar_t *restrict grad, scalar_t *restrict sum, int64_t n,
    const adagrad_call *c, scalar_t neg_lr, const int decay, const int fresh) {
    const bits_t flip = c->flip;
    const scalar_t wd = c->weight_decay, eps = c->eps, initial = c->initial;
    const root_plan roots = root_plan_for(c->root);
    const int64_t block = roots.block;
    scalar_t std[PYROOPT_SQRT_BLOCK];
    for (int64_t lo = 0; lo < n; lo += block) {
        const int64_t len = block_length(lo, n, block);
        scalar_t *p = param + lo, *s = sum + lo;
        const scalar_t *gr = grad + lo;
        prefetch_ahead(lo, n, block, gr, s, p, 0, 0);
        for (int64_t i = 0; i < len; ++i) {
            scalar_t g = torch_neg_if(gr[i], flip);
            if (decay) g = torch_add_alpha(g, p[i], wd);
            std[i] = s[i] = torch_addcmul(fresh ? initial : s[i], g, g, (scalar_t)1);
        }
        block_sqrt(&roots, std, len);
        for (int64_t i = 0; i < len; ++i) {
            scalar_t g = torch_neg_if(gr[i], flip);
            if (decay) g = torch_add_alpha(g, p[i], wd);
            p[i] = torch_addcdiv(p[i], g, std[i] + eps, neg_lr);
        }
    }
}

/* The body compiled once per option, so that each vectorizes without branches. */
PYROOPT_VECTOR_CLONES
static void TYPED(adagrad_range)(scalar_t *restrict p, const scalar_t *restrict g,
                                 scalar_t *restrict s, int64_t n, const adagrad_call *c,
                                 scalar_t neg_lr, int decay, int fresh) {
    switch ((decay ? 2 : 0) | (fresh ? 1 : 0)) {
    case 0: adagrad_body(p, g, s, n, c, neg_lr, 0, 0); break;
    case 1: adagrad_body(p, g, s, n, c, neg_lr, 0, 1); break;
    case 2: adagrad_body(p, g, s, n, c, neg_lr, 1, 0); break;
    default: adagrad_body(p, g, s, n, c, neg_lr, 1, 1); break;
    }
}

static void adagrad_piece(const void *ctx, int64_t k, int64_t lo, int64_t hi) {
    const adagrad_call *c = ctx;
    const pyroopt_adagrad_args *a = c->args;
    const double neg_lr = pyroopt_adagrad_neg_lr(a->lr, a->lr_decay, (double)a->steps[k]);
    TYPED(adagrad_range)(((scalar_t *const *)a->params)[k] + lo,
                         ((const scalar_t *const *)a->grads)[k] + lo,
                         ((scalar_t *const *)a->sums)[k] + lo, hi - lo, c,
                         (scalar_t)neg_lr, a->weight_decay != 0, a->steps[k] == 1);
}

int TYPED(pyroopt_adagrad)(const pyroopt_adagrad_args *a) {
    adagrad_call call = {a, a->maximize ? SIGN_BIT : 0, (scalar_t)a->weight_decay,
                         (scalar_t)a->eps, (scalar_t)a->initial_accumulator_value,
                         (vsqrt_fn)a->root};
    return pyroopt_parallel(a->n_tensors, a->numels, a->n_threads, a->min_per_thread,
                            adagrad_piece, &call);
}
