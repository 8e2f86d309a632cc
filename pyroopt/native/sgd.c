/* SGD with momentum over many tensors in one pass over memory, with torch's numerics.
 *
 * For every element, with g negated first under `maximize`:
 *
 *     g   = g.add(param, alpha=weight_decay)           if weight_decay != 0
 *     buf = g                                          on a tensor's first step (`fresh`)
 *     buf = (buf * momentum).add(g, alpha=1 - dampening)   after
 *     g   = nesterov ? g.add(buf, alpha=momentum) : buf    if momentum != 0
 *     param = param.add(g, alpha=-lr)
 *
 * which is torch.optim.SGD's single-tensor update operation for operation in the
 * tensor's own precision (torch_ops.h). Each option is a loop of its own, so the loops
 * vectorize.
 */
#include "rule.h"

/* A call's arguments, and what every element of it shares, in the element type. */
typedef struct {
    const pyroopt_sgd_args *args;
    bits_t flip; /* SIGN_BIT under `maximize` */
    scalar_t weight_decay, momentum, keep, neg_lr;
} sgd_call;

static inline __attribute__((always_inline)) void sgd_body(
    scalar_t *restrict param, const scalar_t *restrict grad, scalar_t *restrict buf, int64_t n,
    const sgd_call *c, const int decay, const int with_momentum, const int fresh,
    const int nesterov) {
    const bits_t flip = c->flip;
    const scalar_t wd = c->weight_decay, momentum = c->momentum, keep = c->keep;
    const scalar_t neg_lr = c->neg_lr;
    for (int64_t i = 0; i < n; ++i) {
        scalar_t g = torch_neg_if(grad[i], flip);
        if (decay) g = torch_add_alpha(g, param[i], wd);
        if (with_momentum) {
            const scalar_t b = fresh ? g : torch_add_alpha(buf[i] * momentum, g, keep);
            buf[i] = b;
            g = nesterov ? torch_add_alpha(g, b, momentum) : b;
        }
        param[i] = torch_add_alpha(param[i], g, neg_lr);
    }
}

/* The body compiled once per option, so that each vectorizes without branches. */
PYROOPT_VECTOR_CLONES
static void TYPED(sgd_range)(scalar_t *restrict p, const scalar_t *restrict g,
                             scalar_t *restrict b, int64_t n, const sgd_call *c, int decay,
                             int with_momentum, int fresh, int nesterov) {
    if (!with_momentum) {
        if (decay)
            sgd_body(p, g, b, n, c, 1, 0, 0, 0);
        else
            sgd_body(p, g, b, n, c, 0, 0, 0, 0);
        return;
    }
    switch ((decay ? 4 : 0) | (fresh ? 2 : 0) | (nesterov ? 1 : 0)) {
    case 0: sgd_body(p, g, b, n, c, 0, 1, 0, 0); break;
    case 1: sgd_body(p, g, b, n, c, 0, 1, 0, 1); break;
    case 2: sgd_body(p, g, b, n, c, 0, 1, 1, 0); break;
    case 3: sgd_body(p, g, b, n, c, 0, 1, 1, 1); break;
    case 4: sgd_body(p, g, b, n, c, 1, 1, 0, 0); break;
    case 5: sgd_body(p, g, b, n, c, 1, 1, 0, 1); break;
    case 6: sgd_body(p, g, b, n, c, 1, 1, 1, 0); break;
    default: sgd_body(p, g, b, n, c, 1, 1, 1, 1); break;
    }
}

static void sgd_piece(const void *ctx, int64_t k, int64_t lo, int64_t hi) {
    const sgd_call *c = ctx;
    const pyroopt_sgd_args *a = c->args;
    const int with_momentum = a->momentum != 0;
    scalar_t *const *bufs = (scalar_t *const *)a->momentum_buffers;
    TYPED(sgd_range)(((scalar_t *const *)a->params)[k] + lo,
                     ((const scalar_t *const *)a->grads)[k] + lo,
                     with_momentum ? bufs[k] + lo : 0, hi - lo, c,
                     a->weight_decay != 0, with_momentum, a->fresh[k], a->nesterov);
}

int TYPED(pyroopt_sgd)(const pyroopt_sgd_args *a) {
    sgd_call call = {a, a->maximize ? SIGN_BIT : 0, (scalar_t)a->weight_decay,
                     (scalar_t)a->momentum, (scalar_t)(1 - a->dampening), (scalar_t)(-a->lr)};
    return pyroopt_parallel(a->n_tensors, a->numels, a->n_threads, a->min_per_thread,
                            sgd_piece, &call);
}
