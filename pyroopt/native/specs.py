"""The arguments of every native loop, each declared once (:mod:`pyroopt.native._spec`).

Adding a rule means one C source that defines ``TYPED(pyroopt_<name>)`` over the
generated ``pyroopt_<name>_args`` (see :file:`rule.h`), and one :class:`Spec` here.

Example::

    >>> ADAM.tensors
    ('params', 'grads', 'exp_avgs', 'exp_avg_sqs', 'max_exp_avg_sqs')
"""

from __future__ import annotations

from pyroopt.native._spec import DOUBLE, FLAGS, INT, INT64S, TENSORS, Field, Spec

_PARAMS = Field("params", TENSORS, "parameters")
_GRADS = Field("grads", TENSORS, "gradients")
_STEPS = Field("steps", INT64S, "each tensor's step count after this step")
_MAXIMIZE = Field("maximize", INT, "negate the gradients first")

SGD = Spec(
    "pyroopt_sgd",
    "sgd.c",
    (
        _PARAMS,
        _GRADS,
        Field("momentum_buffers", TENSORS, "torch's momentum_buffer (read with momentum)"),
        Field("fresh", FLAGS, "first step: the buffer takes the gradient"),
        Field("lr", DOUBLE, "learning rate"),
        Field("weight_decay", DOUBLE, "L2 weight decay"),
        Field("momentum", DOUBLE, "momentum"),
        Field("dampening", DOUBLE, "dampening"),
        Field("nesterov", INT, "Nesterov momentum"),
        _MAXIMIZE,
    ),
)

ADAM = Spec(
    "pyroopt_adam",
    "adam.c",
    (
        _PARAMS,
        _GRADS,
        Field("exp_avgs", TENSORS, "first moments"),
        Field("exp_avg_sqs", TENSORS, "second moments"),
        Field("max_exp_avg_sqs", TENSORS, "their running maxima (read under amsgrad)"),
        _STEPS,
        Field("lr", DOUBLE, "learning rate"),
        Field("beta1", DOUBLE, "first moment's decay"),
        Field("beta2", DOUBLE, "second moment's decay"),
        Field("eps", DOUBLE, "added to the denominator"),
        Field("weight_decay", DOUBLE, "weight decay"),
        Field("decay", INT, "0: none, 1: L2 (added to g), 2: decoupled (AdamW)"),
        Field("amsgrad", INT, "keep the second moments' maxima"),
        _MAXIMIZE,
    ),
    root=True,
)

CLIPPED_ADAM = Spec(
    "pyroopt_clipped_adam",
    "adam.c",
    (
        _PARAMS,
        Field("grads", TENSORS, "gradients (clamped in place)"),
        Field("exp_avgs", TENSORS, "first moments"),
        Field("exp_avg_sqs", TENSORS, "second moments"),
        _STEPS,
        Field("lr", DOUBLE, "learning rate, decayed for this call"),
        Field("beta1", DOUBLE, "first moment's decay"),
        Field("beta2", DOUBLE, "second moment's decay"),
        Field("eps", DOUBLE, "added to the denominator"),
        Field("weight_decay", DOUBLE, "L2 weight decay"),
        Field("clip_norm", DOUBLE, "bound of every gradient element"),
        Field("centered_variance", INT, "second moment of g - m"),
    ),
    root=True,
)

RMSPROP = Spec(
    "pyroopt_rmsprop",
    "rmsprop.c",
    (
        _PARAMS,
        _GRADS,
        Field("square_avgs", TENSORS, "torch's square_avg"),
        Field("grad_avgs", TENSORS, "torch's grad_avg (read when centered)"),
        Field("momentum_buffers", TENSORS, "torch's momentum_buffer (read with momentum)"),
        Field("lr", DOUBLE, "learning rate"),
        Field("alpha", DOUBLE, "smoothing constant"),
        Field("eps", DOUBLE, "added to the denominator"),
        Field("weight_decay", DOUBLE, "L2 weight decay"),
        Field("momentum", DOUBLE, "momentum"),
        Field("centered", INT, "subtract the squared mean gradient"),
        _MAXIMIZE,
    ),
    root=True,
)

RPROP = Spec(
    "pyroopt_rprop",
    "rprop.c",
    (
        _PARAMS,
        _GRADS,
        Field("prevs", TENSORS, "torch's prev"),
        Field("step_sizes", TENSORS, "torch's step_size"),
        Field("fresh", FLAGS, "first step: the step size starts at lr"),
        Field("lr", DOUBLE, "learning rate"),
        Field("eta_minus", DOUBLE, "factor where the sign flipped"),
        Field("eta_plus", DOUBLE, "factor where the sign held"),
        Field("step_size_min", DOUBLE, "lower bound of a step size"),
        Field("step_size_max", DOUBLE, "upper bound of a step size"),
        _MAXIMIZE,
    ),
)

ADAGRAD = Spec(
    "pyroopt_adagrad",
    "adagrad.c",
    (
        _PARAMS,
        _GRADS,
        Field("sums", TENSORS, "torch's sum"),
        _STEPS,
        Field("lr", DOUBLE, "learning rate"),
        Field("lr_decay", DOUBLE, "learning-rate decay"),
        Field("initial_accumulator_value", DOUBLE, "the sum before the first step"),
        Field("eps", DOUBLE, "added to the denominator"),
        Field("weight_decay", DOUBLE, "L2 weight decay"),
        _MAXIMIZE,
    ),
    root=True,
)

ADAGRAD_RMSPROP = Spec(
    "pyroopt_adagrad_rmsprop",
    "adagrad_rmsprop.c",
    (
        _PARAMS,
        _GRADS,
        Field("sums", TENSORS, "pyro's sum"),
        _STEPS,
        Field("eta", DOUBLE, "step size"),
        Field("delta", DOUBLE, "exponent of the step-size schedule"),
        Field("t", DOUBLE, "weight of the newest squared gradient"),
    ),
    root=True,
)

#: every loop, in the order the build declares them
ALL = (SGD, ADAM, CLIPPED_ADAM, RMSPROP, RPROP, ADAGRAD, ADAGRAD_RMSPROP)
