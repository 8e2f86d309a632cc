/* Adam, AdamW and Pyro's ClippedAdam over many tensors in one pass over memory, with
 * torch's numerics.
 *
 * Adam, per element of tensor k at its step count t_k, with g negated first under
 * `maximize`, w1 = 1 - beta1, w2 = 1 - beta2, and s_k = -lr / (1 - beta1^t_k),
 * c_k = (1 - beta2^t_k) ** 0.5 computed in double (coefficients.h):
 *
 *     param = param * (1 - lr * wd)                     decoupled weight decay
 *     g     = g.add(param, alpha=wd)                    L2 weight decay
 *     m     = m.lerp(g, w1)
 *     v     = (v * beta2).addcmul(g, g, value=w2)
 *     vmax  = maximum(vmax, v);  v' = vmax             amsgrad (else v' = v)
 *     param = param.addcdiv(m, sqrt(v') / c_k + eps, value=s_k)
 *
 * ClippedAdam, with s_k = -(lr * sqrt(1 - beta2^t_k) / (1 - beta1^t_k)):
 *
 *     grad  = clamp(grad, -clip, clip)                  written back, as pyro does
 *     g     = grad.add(param, alpha=wd)                 if wd != 0
 *     m     = (m * beta1).add(g, alpha=w1)
 *     r     = centered_variance ? g - m : g
 *     v     = (v * beta2).addcmul(r, r, value=w2)
 *     param = param.addcdiv(m, sqrt(v) + eps, value=s_k)
 *
 * which is torch.optim.Adam's single-tensor update (pyro's ClippedAdam.step) operation
 * for operation, with torch's roundings (torch_ops.h).
 */
#include "rule.h"

/* -- Adam and AdamW ------------------------------------------------------------------ */

/* A call's arguments, and what every element of it shares, in the element type. */
typedef struct {
    const pyroopt_adam_args *args;
    bits_t flip; /* SIGN_BIT under `maximize` */
    scalar_t weight_decay, shrink, beta2, one_minus_beta2, eps;
    torch_lerp_weight one_minus_beta1;
    vsqrt_fn root;
} adam_call;

/* decay: 0 none, 1 L2 (added to g), 2 decoupled (param shrunk by 1 - lr wd) */
static inline __attribute__((always_inline)) void adam_body(
    scalar_t *restrict param, const scalar_t *restrict grad, scalar_t *restrict exp_avg,
    scalar_t *restrict exp_avg_sq, scalar_t *restrict max_exp_avg_sq, int64_t n,
    const adam_call *c, scalar_t step_size, scalar_t bias_correction2_sqrt,
    const int decay, const int amsgrad) {
    const bits_t flip = c->flip;
    const scalar_t wd = c->weight_decay, shrink = c->shrink, beta2 = c->beta2;
    const scalar_t w2 = c->one_minus_beta2, eps = c->eps;
    const torch_lerp_weight w1 = c->one_minus_beta1;
    const root_plan roots = root_plan_for(c->root);
    const int64_t block = roots.block;
    scalar_t d[PYROOPT_SQRT_BLOCK];
    for (int64_t lo = 0; lo < n; lo += block) {
        const int64_t len = block_length(lo, n, block);
        scalar_t *p = param + lo, *m = exp_avg + lo, *v = exp_avg_sq + lo;
        scalar_t *x = amsgrad ? max_exp_avg_sq + lo : 0;
        const scalar_t *gr = grad + lo;
        prefetch_ahead(lo, n, block, gr, m, v, x, p);
        for (int64_t i = 0; i < len; ++i) {
            scalar_t g = torch_neg_if(gr[i], flip);
            if (decay == 1) g = torch_add_alpha(g, p[i], wd);
            m[i] = torch_lerp(m[i], g, w1);
            const scalar_t vi = torch_addcmul(v[i] * beta2, g, g, w2);
            v[i] = vi;
            if (amsgrad) {
                const scalar_t xi = torch_maximum(x[i], vi);
                x[i] = xi;
                d[i] = xi;
            } else {
                d[i] = vi;
            }
        }
        block_sqrt(&roots, d, len);
        for (int64_t i = 0; i < len; ++i) {
            scalar_t pi = p[i];
            if (decay == 2) pi = pi * shrink;
            p[i] = torch_addcdiv(pi, m[i], d[i] / bias_correction2_sqrt + eps, step_size);
        }
    }
}

/* The body compiled once per option, so that each vectorizes without branches. */
PYROOPT_VECTOR_CLONES
static void TYPED(adam_range)(scalar_t *restrict p, const scalar_t *restrict g,
                              scalar_t *restrict m, scalar_t *restrict v,
                              scalar_t *restrict vmax, int64_t n, const adam_call *c,
                              scalar_t step_size, scalar_t bc2_sqrt, int decay, int amsgrad) {
    switch (decay * 2 + (amsgrad ? 1 : 0)) {
    case 0: adam_body(p, g, m, v, vmax, n, c, step_size, bc2_sqrt, 0, 0); break;
    case 1: adam_body(p, g, m, v, vmax, n, c, step_size, bc2_sqrt, 0, 1); break;
    case 2: adam_body(p, g, m, v, vmax, n, c, step_size, bc2_sqrt, 1, 0); break;
    case 3: adam_body(p, g, m, v, vmax, n, c, step_size, bc2_sqrt, 1, 1); break;
    case 4: adam_body(p, g, m, v, vmax, n, c, step_size, bc2_sqrt, 2, 0); break;
    default: adam_body(p, g, m, v, vmax, n, c, step_size, bc2_sqrt, 2, 1); break;
    }
}

static void adam_piece(const void *ctx, int64_t k, int64_t lo, int64_t hi) {
    const adam_call *c = ctx;
    const pyroopt_adam_args *a = c->args;
    double step_size, bc2_sqrt;
    pyroopt_adam_coefficients(a->lr, a->beta1, a->beta2, (double)a->steps[k], &step_size,
                              &bc2_sqrt);
    scalar_t *const *max_exp_avg_sqs = (scalar_t *const *)a->max_exp_avg_sqs;
    TYPED(adam_range)(((scalar_t *const *)a->params)[k] + lo,
                      ((const scalar_t *const *)a->grads)[k] + lo,
                      ((scalar_t *const *)a->exp_avgs)[k] + lo,
                      ((scalar_t *const *)a->exp_avg_sqs)[k] + lo,
                      a->amsgrad ? max_exp_avg_sqs[k] + lo : 0, hi - lo, c,
                      (scalar_t)step_size, (scalar_t)bc2_sqrt, a->decay, a->amsgrad);
}

int TYPED(pyroopt_adam)(const pyroopt_adam_args *a) {
    adam_call call = {a, a->maximize ? SIGN_BIT : 0, (scalar_t)a->weight_decay,
                      (scalar_t)(1 - a->lr * a->weight_decay), (scalar_t)a->beta2,
                      (scalar_t)(1 - a->beta2), (scalar_t)a->eps,
                      torch_lerp_weight_of((scalar_t)(1 - a->beta1)), (vsqrt_fn)a->root};
    return pyroopt_parallel(a->n_tensors, a->numels, a->n_threads, a->min_per_thread,
                            adam_piece, &call);
}

/* -- pyro's ClippedAdam -------------------------------------------------------------- */

typedef struct {
    const pyroopt_clipped_adam_args *args;
    scalar_t lo_clip, hi_clip, weight_decay, beta1, one_minus_beta1, beta2, one_minus_beta2,
        eps;
    vsqrt_fn root;
} clipped_adam_call;

static inline __attribute__((always_inline)) void clipped_adam_body(
    scalar_t *restrict param, scalar_t *restrict grad, scalar_t *restrict exp_avg,
    scalar_t *restrict exp_avg_sq, int64_t n, const clipped_adam_call *c,
    scalar_t step_size, const int decay, const int centered) {
    const scalar_t lo_clip = c->lo_clip, hi_clip = c->hi_clip, wd = c->weight_decay;
    const scalar_t beta1 = c->beta1, w1 = c->one_minus_beta1, beta2 = c->beta2;
    const scalar_t w2 = c->one_minus_beta2, eps = c->eps;
    const root_plan roots = root_plan_for(c->root);
    const int64_t block = roots.block;
    scalar_t d[PYROOPT_SQRT_BLOCK];
    for (int64_t lo = 0; lo < n; lo += block) {
        const int64_t len = block_length(lo, n, block);
        scalar_t *p = param + lo, *gr = grad + lo, *m = exp_avg + lo, *v = exp_avg_sq + lo;
        prefetch_ahead(lo, n, block, gr, m, v, p, 0); /* gr: written back only where clamped */
        int clamped = 0;
        for (int64_t i = 0; i < len; ++i) {
            scalar_t g = torch_clamp(gr[i], lo_clip, hi_clip);
            clamped |= g != gr[i];
            if (decay) g = torch_add_alpha(g, p[i], wd);
            const scalar_t mi = torch_add_alpha(m[i] * beta1, g, w1);
            m[i] = mi;
            const scalar_t r = centered ? g - mi : g;
            const scalar_t vi = torch_addcmul(v[i] * beta2, r, r, w2);
            v[i] = vi;
            d[i] = vi;
        }
        /* the clamped gradients are written back (as pyro's clamp_ does) only where one
         * changed: a block left as it was is never written to memory */
        if (clamped)
            for (int64_t i = 0; i < len; ++i) gr[i] = torch_clamp(gr[i], lo_clip, hi_clip);
        block_sqrt(&roots, d, len);
        for (int64_t i = 0; i < len; ++i)
            p[i] = torch_addcdiv(p[i], m[i], d[i] + eps, step_size);
    }
}

PYROOPT_VECTOR_CLONES
static void TYPED(clipped_adam_range)(scalar_t *restrict p, scalar_t *restrict g,
                                      scalar_t *restrict m, scalar_t *restrict v, int64_t n,
                                      const clipped_adam_call *c, scalar_t step_size,
                                      int decay, int centered) {
    switch ((decay ? 2 : 0) | (centered ? 1 : 0)) {
    case 0: clipped_adam_body(p, g, m, v, n, c, step_size, 0, 0); break;
    case 1: clipped_adam_body(p, g, m, v, n, c, step_size, 0, 1); break;
    case 2: clipped_adam_body(p, g, m, v, n, c, step_size, 1, 0); break;
    default: clipped_adam_body(p, g, m, v, n, c, step_size, 1, 1); break;
    }
}

static void clipped_adam_piece(const void *ctx, int64_t k, int64_t lo, int64_t hi) {
    const clipped_adam_call *c = ctx;
    const pyroopt_clipped_adam_args *a = c->args;
    double step_size =
        pyroopt_clipped_adam_neg_step_size(a->lr, a->beta1, a->beta2, (double)a->steps[k]);
    TYPED(clipped_adam_range)(((scalar_t *const *)a->params)[k] + lo,
                              ((scalar_t *const *)a->grads)[k] + lo,
                              ((scalar_t *const *)a->exp_avgs)[k] + lo,
                              ((scalar_t *const *)a->exp_avg_sqs)[k] + lo, hi - lo,
                              c, (scalar_t)step_size, a->weight_decay != 0,
                              a->centered_variance);
}

int TYPED(pyroopt_clipped_adam)(const pyroopt_clipped_adam_args *a) {
    clipped_adam_call call = {a, (scalar_t)(-a->clip_norm), (scalar_t)a->clip_norm,
                              (scalar_t)a->weight_decay, (scalar_t)a->beta1,
                              (scalar_t)(1 - a->beta1), (scalar_t)a->beta2,
                              (scalar_t)(1 - a->beta2), (scalar_t)a->eps, (vsqrt_fn)a->root};
    return pyroopt_parallel(a->n_tensors, a->numels, a->n_threads, a->min_per_thread,
                            clipped_adam_piece, &call);
}
