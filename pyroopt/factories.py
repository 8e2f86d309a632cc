"""One factory per torch optimizer: ``pyroopt.Adam({"lr": 0.01})`` and so on.

Each returns a :class:`~pyroopt.optim.PyroOptim` around the torch class of the same
name, taking ``(optim_args, clip_args=None)`` exactly like pyro.optim's factories, and
pyroopt's options ``skip_nonfinite`` and ``track_grad_norms`` as keywords (see
:class:`~pyroopt.optim.PyroOptim`).
``torch.optim.LBFGS`` has none: it needs a closure that re-evaluates the loss, which
SVI's step does not provide (as in pyro.optim).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import lr_scheduler as torch_schedulers

from pyroopt import optimizers
from pyroopt.lr_scheduler import PyroLRScheduler
from pyroopt.optim import ArgsSpec, PyroOptim


def _torch_optimizer(name: str) -> type[torch.optim.Optimizer]:
    cls = getattr(torch.optim, name, None)
    if cls is None:
        raise NotImplementedError(
            f"torch {torch.__version__} has no torch.optim.{name}; upgrade torch to use it"
        )
    return cls


def Adadelta(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """Adadelta (Zeiler, 2012).

    Wraps :class:`torch.optim.Adadelta` with :class:`~pyroopt.optim.PyroOptim` for every
    parameter.

    Example: ``svi = SVI(model, guide, pyroopt.Adadelta({"lr": 0.01}), Trace_ELBO())``
    """
    return PyroOptim(
        _torch_optimizer("Adadelta"),
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def Adafactor(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """Adafactor (Shazeer & Stern, 2018).

    Wraps :class:`torch.optim.Adafactor` with :class:`~pyroopt.optim.PyroOptim` for every
    parameter.

    Example: ``svi = SVI(model, guide, pyroopt.Adafactor({"lr": 0.01}), Trace_ELBO())``
    """
    return PyroOptim(
        _torch_optimizer("Adafactor"),
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def Adagrad(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """Adagrad (Duchi et al., 2011).

    Wraps :class:`torch.optim.Adagrad` with :class:`~pyroopt.optim.PyroOptim` for every
    parameter.

    Example: ``svi = SVI(model, guide, pyroopt.Adagrad({"lr": 0.01}), Trace_ELBO())``
    """
    return PyroOptim(
        _torch_optimizer("Adagrad"),
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def Adam(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """Adam (Kingma & Ba, 2015).

    Wraps :class:`torch.optim.Adam` with :class:`~pyroopt.optim.PyroOptim` for every
    parameter.

    Example: ``svi = SVI(model, guide, pyroopt.Adam({"lr": 0.01}), Trace_ELBO())``
    """
    return PyroOptim(
        _torch_optimizer("Adam"),
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def AdamW(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """AdamW, Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    Wraps :class:`torch.optim.AdamW` with :class:`~pyroopt.optim.PyroOptim` for every
    parameter.

    Example: ``svi = SVI(model, guide, pyroopt.AdamW({"lr": 0.01}), Trace_ELBO())``
    """
    return PyroOptim(
        _torch_optimizer("AdamW"),
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def Adamax(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """Adamax, Adam under the infinity norm (Kingma & Ba, 2015).

    Wraps :class:`torch.optim.Adamax` with :class:`~pyroopt.optim.PyroOptim` for every
    parameter.

    Example: ``svi = SVI(model, guide, pyroopt.Adamax({"lr": 0.01}), Trace_ELBO())``
    """
    return PyroOptim(
        _torch_optimizer("Adamax"),
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def ASGD(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """Averaged stochastic gradient descent (Polyak & Juditsky, 1992).

    Wraps :class:`torch.optim.ASGD` with :class:`~pyroopt.optim.PyroOptim` for every
    parameter.

    Example: ``svi = SVI(model, guide, pyroopt.ASGD({"lr": 0.01}), Trace_ELBO())``
    """
    return PyroOptim(
        _torch_optimizer("ASGD"),
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def Muon(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """Muon, momentum orthogonalized by Newton-Schulz (2-D parameters only).

    Wraps :class:`torch.optim.Muon` with :class:`~pyroopt.optim.PyroOptim` for every
    parameter.

    Example: ``svi = SVI(model, guide, pyroopt.Muon({"lr": 0.01}), Trace_ELBO())``
    """
    return PyroOptim(
        _torch_optimizer("Muon"),
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def NAdam(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """NAdam, Adam with Nesterov momentum (Dozat, 2016).

    Wraps :class:`torch.optim.NAdam` with :class:`~pyroopt.optim.PyroOptim` for every
    parameter.

    Example: ``svi = SVI(model, guide, pyroopt.NAdam({"lr": 0.01}), Trace_ELBO())``
    """
    return PyroOptim(
        _torch_optimizer("NAdam"),
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def RAdam(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """RAdam, rectified Adam (Liu et al., 2020).

    Wraps :class:`torch.optim.RAdam` with :class:`~pyroopt.optim.PyroOptim` for every
    parameter.

    Example: ``svi = SVI(model, guide, pyroopt.RAdam({"lr": 0.01}), Trace_ELBO())``
    """
    return PyroOptim(
        _torch_optimizer("RAdam"),
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def RMSprop(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """RMSprop (Hinton, 2012).

    Wraps :class:`torch.optim.RMSprop` with :class:`~pyroopt.optim.PyroOptim` for every
    parameter.

    Example: ``svi = SVI(model, guide, pyroopt.RMSprop({"lr": 0.01}), Trace_ELBO())``
    """
    return PyroOptim(
        _torch_optimizer("RMSprop"),
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def Rprop(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """Rprop, resilient backpropagation (Riedmiller & Braun, 1993).

    Wraps :class:`torch.optim.Rprop` with :class:`~pyroopt.optim.PyroOptim` for every
    parameter.

    Example: ``svi = SVI(model, guide, pyroopt.Rprop({"lr": 0.01}), Trace_ELBO())``
    """
    return PyroOptim(
        _torch_optimizer("Rprop"),
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def SGD(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """Stochastic gradient descent with optional momentum.

    Wraps :class:`torch.optim.SGD` with :class:`~pyroopt.optim.PyroOptim` for every
    parameter.

    Example: ``svi = SVI(model, guide, pyroopt.SGD({"lr": 0.01}), Trace_ELBO())``
    """
    return PyroOptim(
        _torch_optimizer("SGD"),
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def SparseAdam(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """Adam for sparse gradients (e.g. ``nn.Embedding(sparse=True)``).

    Wraps :class:`torch.optim.SparseAdam` with :class:`~pyroopt.optim.PyroOptim` for every
    parameter.

    Example: ``svi = SVI(model, guide, pyroopt.SparseAdam({"lr": 0.01}), Trace_ELBO())``
    """
    return PyroOptim(
        _torch_optimizer("SparseAdam"),
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


# Pyro's own optimizers, on pyroopt's kernels (same arguments and numbers as pyro-ppl's).


def ClippedAdam(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """Adam with elementwise gradient clamping and lr decay, for every parameter.

    Wraps :class:`pyroopt.optimizers.ClippedAdam` (pyro's ClippedAdam, on flat buffers).
    Example: ``pyroopt.ClippedAdam({"lr": 0.01, "clip_norm": 10.0, "lrd": 0.999})``
    """
    return PyroOptim(
        optimizers.ClippedAdam,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def AdagradRMSProp(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """Pyro's Adagrad/RMSprop hybrid (ADVI's step-size schedule), for every parameter.

    Wraps :class:`pyroopt.optimizers.AdagradRMSProp`.
    Example: ``pyroopt.AdagradRMSProp({"eta": 1.0, "t": 0.1})``
    """
    return PyroOptim(
        optimizers.AdagradRMSProp,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def DCTAdam(
    optim_args: ArgsSpec,
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroOptim:
    """ClippedAdam with frequency-domain moments for time-series parameters.

    Wraps :class:`pyroopt.optimizers.DCTAdam`.
    Example: ``pyroopt.DCTAdam({"lr": 0.01, "subsample_aware": True})``
    """
    return PyroOptim(
        optimizers.DCTAdam,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


# One factory per torch learning-rate scheduler, e.g.
# pyroopt.StepLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.01}, "step_size": 10}).
# SequentialLR and ChainedScheduler take "schedulers": [(pyroopt.LinearLR, {...}), ...].


def LambdaLR(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: lr = initial lr times ``lr_lambda(epoch)``.

    Wraps :class:`torch.optim.lr_scheduler.LambdaLR`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.LambdaLR,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def MultiplicativeLR(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: lr multiplied by ``lr_lambda(epoch)`` every epoch.

    Wraps :class:`torch.optim.lr_scheduler.MultiplicativeLR`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.MultiplicativeLR,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def StepLR(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: lr multiplied by ``gamma`` every ``step_size`` epochs.

    Wraps :class:`torch.optim.lr_scheduler.StepLR`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.StepLR,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def MultiStepLR(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: lr multiplied by ``gamma`` at each of the ``milestones``.

    Wraps :class:`torch.optim.lr_scheduler.MultiStepLR`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.MultiStepLR,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def ConstantLR(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: lr scaled by ``factor`` until ``total_iters``, then the initial lr.

    Wraps :class:`torch.optim.lr_scheduler.ConstantLR`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.ConstantLR,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def LinearLR(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: lr scaled linearly from ``start_factor`` to ``end_factor``.

    Wraps :class:`torch.optim.lr_scheduler.LinearLR`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.LinearLR,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def ExponentialLR(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: lr multiplied by ``gamma`` every epoch.

    Wraps :class:`torch.optim.lr_scheduler.ExponentialLR`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.ExponentialLR,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def PolynomialLR(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: lr decayed by a polynomial of degree ``power`` over ``total_iters``.

    Wraps :class:`torch.optim.lr_scheduler.PolynomialLR`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.PolynomialLR,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def CosineAnnealingLR(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: lr annealed along a cosine to ``eta_min`` over ``T_max`` epochs.

    Wraps :class:`torch.optim.lr_scheduler.CosineAnnealingLR`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.CosineAnnealingLR,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def CosineAnnealingWarmRestarts(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: cosine annealing restarted every ``T_0`` (times ``T_mult``).

    Wraps :class:`torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.CosineAnnealingWarmRestarts,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def CyclicLR(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: lr (and momentum) cycled between ``base_lr`` and ``max_lr``.

    Wraps :class:`torch.optim.lr_scheduler.CyclicLR`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.CyclicLR,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def OneCycleLR(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: the one-cycle policy: warm up to ``max_lr``, then anneal far below.

    Wraps :class:`torch.optim.lr_scheduler.OneCycleLR`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.OneCycleLR,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def ReduceLROnPlateau(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: lr multiplied by ``factor`` when the metric given to ``step`` stalls.

    Wraps :class:`torch.optim.lr_scheduler.ReduceLROnPlateau`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.ReduceLROnPlateau,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def SequentialLR(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: child schedules one after another, switching at ``milestones``.

    Wraps :class:`torch.optim.lr_scheduler.SequentialLR`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.SequentialLR,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def ChainedScheduler(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: child schedules applied together, each on the lr the last left.

    Wraps :class:`torch.optim.lr_scheduler.ChainedScheduler`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`.
    """
    return PyroLRScheduler(
        torch_schedulers.ChainedScheduler,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def LRScheduler(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: torch's scheduler base class, as ``pyro.optim.LRScheduler``.

    Wraps :class:`torch.optim.lr_scheduler.LRScheduler`
    with :class:`~pyroopt.lr_scheduler.PyroLRScheduler`. The base class defines no
    schedule (its ``get_lr`` raises), so this factory only serves code that names it.
    """
    return PyroLRScheduler(
        torch_schedulers.LRScheduler,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


def _LRScheduler(
    optim_args: dict[str, Any],
    clip_args: ArgsSpec | None = None,
    *,
    skip_nonfinite: bool = False,
    track_grad_norms: bool = False,
) -> PyroLRScheduler:
    """Schedule: torch's old name of its scheduler base class, as ``pyro.optim._LRScheduler``.

    Wraps :class:`torch.optim.lr_scheduler._LRScheduler` (a subclass of
    :class:`~torch.optim.lr_scheduler.LRScheduler` that adds nothing) with
    :class:`~pyroopt.lr_scheduler.PyroLRScheduler`, for code that names it.
    """
    return PyroLRScheduler(
        torch_schedulers._LRScheduler,
        optim_args,
        clip_args,
        skip_nonfinite=skip_nonfinite,
        track_grad_norms=track_grad_norms,
    )


#: pyroopt's scheduler factories (``pyroopt.StepLR`` ...) -> torch's scheduler classes
FACTORY_CLASSES: dict[Callable[..., Any], type] = {
    LambdaLR: torch_schedulers.LambdaLR,
    MultiplicativeLR: torch_schedulers.MultiplicativeLR,
    StepLR: torch_schedulers.StepLR,
    MultiStepLR: torch_schedulers.MultiStepLR,
    ConstantLR: torch_schedulers.ConstantLR,
    LinearLR: torch_schedulers.LinearLR,
    ExponentialLR: torch_schedulers.ExponentialLR,
    PolynomialLR: torch_schedulers.PolynomialLR,
    CosineAnnealingLR: torch_schedulers.CosineAnnealingLR,
    CosineAnnealingWarmRestarts: torch_schedulers.CosineAnnealingWarmRestarts,
    CyclicLR: torch_schedulers.CyclicLR,
    OneCycleLR: torch_schedulers.OneCycleLR,
    ReduceLROnPlateau: torch_schedulers.ReduceLROnPlateau,
    SequentialLR: torch_schedulers.SequentialLR,
    ChainedScheduler: torch_schedulers.ChainedScheduler,
    LRScheduler: torch_schedulers.LRScheduler,
    _LRScheduler: torch_schedulers._LRScheduler,
}
