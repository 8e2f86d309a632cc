/* RMSprop over many tensors in one pass over memory, with torch's numerics.
 *
 * For every element, with g negated first under `maximize` and w = 1 - alpha:
 *
 *     g   = g.add(param, alpha=weight_decay)              if weight_decay != 0
 *     v   = (v * alpha).addcmul(g, g, value=w)
 *     m   = m.lerp(g, w)                                  centered
 *     d   = sqrt(centered ? v.addcmul(m, m, value=-1) : v) + eps
 *     buf = (buf * momentum).addcdiv(g, d);  param = param.add(buf, alpha=-lr)
 *                                                         momentum > 0
 *     param = param.addcdiv(g, d, value=-lr)              otherwise
 *
 * which is torch.optim.RMSprop's single-tensor update operation for operation in the
 * tensor's own precision, with torch's roundings (torch_ops.h).
 */
#include "rule.h"

/* A call's arguments, and what every element of it shares, in the element type. */
typedef struct {
    const pyroopt_rmsprop_args *args;
    bits_t flip; /* SIGN_BIT under `maximize` */
    scalar_t weight_decay, alpha, one_minus_alpha, eps, momentum, neg_lr;
    scalar_t minus_one; /* -1, which the compiler must not see (torch_ops.h) */
    torch_lerp_weight lerp_weight; /* 1 - alpha */
    vsqrt_fn root;
} rmsprop_call;

static inline __attribute__((always_inline)) void rmsprop_body(
    scalar_t *restrict param, const scalar_t *restrict grad, scalar_t *restrict square_avg,
    scalar_t *restrict grad_avg, scalar_t *restrict momentum_buffer, int64_t n,
    const rmsprop_call *c, const int decay, const int centered, const int with_momentum) {
    const bits_t flip = c->flip;
    const scalar_t wd = c->weight_decay, alpha = c->alpha, w = c->one_minus_alpha;
    const scalar_t eps = c->eps, momentum = c->momentum, neg_lr = c->neg_lr;
    const scalar_t minus_one = c->minus_one;
    const torch_lerp_weight lerp_w = c->lerp_weight;
    const root_plan roots = root_plan_for(c->root);
    const int64_t block = roots.block;
    scalar_t d[PYROOPT_SQRT_BLOCK];
    for (int64_t lo = 0; lo < n; lo += block) {
        const int64_t len = block_length(lo, n, block);
        scalar_t *p = param + lo, *v = square_avg + lo, *a = centered ? grad_avg + lo : 0;
        scalar_t *b = with_momentum ? momentum_buffer + lo : 0;
        const scalar_t *gr = grad + lo;
        prefetch_ahead(lo, n, block, gr, v, a, b, p);
        for (int64_t i = 0; i < len; ++i) {
            scalar_t g = torch_neg_if(gr[i], flip);
            if (decay) g = torch_add_alpha(g, p[i], wd);
            const scalar_t vi = torch_addcmul(v[i] * alpha, g, g, w);
            v[i] = vi;
            if (centered) {
                const scalar_t mi = torch_lerp(a[i], g, lerp_w);
                a[i] = mi;
                d[i] = torch_addcmul(vi, mi, mi, minus_one);
            } else {
                d[i] = vi;
            }
        }
        block_sqrt(&roots, d, len);
        for (int64_t i = 0; i < len; ++i) {
            scalar_t g = torch_neg_if(gr[i], flip);
            if (decay) g = torch_add_alpha(g, p[i], wd);
            const scalar_t di = d[i] + eps;
            if (with_momentum) {
                const scalar_t bi = b[i] * momentum + g / di; /* addcdiv, value 1 */
                b[i] = bi;
                p[i] = torch_add_alpha(p[i], bi, neg_lr);
            } else {
                p[i] = torch_addcdiv(p[i], g, di, neg_lr);
            }
        }
    }
}

/* The body compiled once per option, so that each vectorizes without branches. */
PYROOPT_VECTOR_CLONES
static void TYPED(rmsprop_range)(scalar_t *restrict p, const scalar_t *restrict g,
                                 scalar_t *restrict v, scalar_t *restrict a,
                                 scalar_t *restrict b, int64_t n, const rmsprop_call *c,
                                 int decay, int centered, int with_momentum) {
    switch ((decay ? 4 : 0) | (centered ? 2 : 0) | (with_momentum ? 1 : 0)) {
    case 0: rmsprop_body(p, g, v, a, b, n, c, 0, 0, 0); break;
    case 1: rmsprop_body(p, g, v, a, b, n, c, 0, 0, 1); break;
    case 2: rmsprop_body(p, g, v, a, b, n, c, 0, 1, 0); break;
    case 3: rmsprop_body(p, g, v, a, b, n, c, 0, 1, 1); break;
    case 4: rmsprop_body(p, g, v, a, b, n, c, 1, 0, 0); break;
    case 5: rmsprop_body(p, g, v, a, b, n, c, 1, 0, 1); break;
    case 6: rmsprop_body(p, g, v, a, b, n, c, 1, 1, 0); break;
    default: rmsprop_body(p, g, v, a, b, n, c, 1, 1, 1); break;
    }
}

static void rmsprop_piece(const void *ctx, int64_t k, int64_t lo, int64_t hi) {
    const rmsprop_call *c = ctx;
    const pyroopt_rmsprop_args *a = c->args;
    const int with_momentum = a->momentum > 0;
    scalar_t *const *grad_avgs = (scalar_t *const *)a->grad_avgs;
    scalar_t *const *bufs = (scalar_t *const *)a->momentum_buffers;
    TYPED(rmsprop_range)(((scalar_t *const *)a->params)[k] + lo,
                         ((const scalar_t *const *)a->grads)[k] + lo,
                         ((scalar_t *const *)a->square_avgs)[k] + lo,
                         a->centered ? grad_avgs[k] + lo : 0, with_momentum ? bufs[k] + lo : 0,
                         hi - lo, c, a->weight_decay != 0, a->centered,
                         with_momentum);
}

int TYPED(pyroopt_rmsprop)(const pyroopt_rmsprop_args *a) {
    const scalar_t w = (scalar_t)(1 - a->alpha);
    rmsprop_call call = {a, a->maximize ? SIGN_BIT : 0, (scalar_t)a->weight_decay,
                         (scalar_t)a->alpha, w, (scalar_t)a->eps, (scalar_t)a->momentum,
                         (scalar_t)(-a->lr), (scalar_t)-1, torch_lerp_weight_of(w),
                         (vsqrt_fn)a->root};
    return pyroopt_parallel(a->n_tensors, a->numels, a->n_threads, a->min_per_thread,
                            rmsprop_piece, &call);
}
