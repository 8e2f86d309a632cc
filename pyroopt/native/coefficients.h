/* Each rule's per-tensor coefficients, from the tensor's step count, in double, as torch
 * (or pyro) computes them in Python floats before it calls its tensor operations.
 *
 * Python's float `**` is libm's `pow` for these operands (positive finite bases and
 * exponents; CPython handles only zeros, ones, infinities and NaN itself, where `pow`
 * gives the same), and `math.sqrt` is `sqrt`; every other operation is one IEEE double
 * operation in the order Python evaluates it. So these give the bits of the Python
 * expressions quoted below (tests/test_native_spec.py compares them over many steps and
 * coefficients; pyroopt/kernels holds the same expressions in Python, for the chains
 * of torch ops).
 */
#ifndef PYROOPT_COEFFICIENTS_H
#define PYROOPT_COEFFICIENTS_H

/* torch.optim.Adam at step t: `-(lr / (1 - beta1 ** t))` and `(1 - beta2 ** t) ** 0.5`
 * (a power, not math.sqrt) */
void pyroopt_adam_coefficients(double lr, double beta1, double beta2, double t,
                               double *neg_step_size, double *bias_correction2_sqrt);

/* pyro's ClippedAdam at step t: `-(lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t))` */
double pyroopt_clipped_adam_neg_step_size(double lr, double beta1, double beta2, double t);

/* torch.optim.Adagrad at step t: `-(lr / (1 + (t - 1) * lr_decay))` */
double pyroopt_adagrad_neg_lr(double lr, double lr_decay, double t);

/* pyro's AdagradRMSProp at step t: `-(eta * t ** (-0.5 + delta))` */
double pyroopt_adagrad_rmsprop_neg_lr(double eta, double delta, double t);

#endif
