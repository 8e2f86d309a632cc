"""Stepping a wrapped learning-rate schedule so that every worker decides alike.

Example (on every worker of a ``torchrun --nproc_per_node 2`` job)::

    optim = pyroopt.DistributedOptimizer(
        pyroopt.ReduceLROnPlateau({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}})
    )
    loss = svi.step(local_data)
    optim.step(loss)  # ReduceLROnPlateau sees the mean of the workers' losses
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from pyroopt.distributed.collectives import Collectives
from pyroopt.lr_scheduler import PyroLRScheduler

#: the name of ReduceLROnPlateau.step's metric argument
METRIC = "metrics"


def is_plateau(optim: Any) -> bool:
    """Whether ``optim`` is a pyroopt ``ReduceLROnPlateau`` schedule."""
    return isinstance(optim, PyroLRScheduler) and issubclass(
        optim.pt_scheduler_constructor, ReduceLROnPlateau
    )


def metric_value(metric: Any) -> float:
    """``metric`` as a Python float: a real number or a one-element tensor.

    :raises TypeError: anything else.
    """
    if isinstance(metric, torch.Tensor):
        if metric.numel() != 1 or metric.is_complex():
            raise TypeError(
                f"the ReduceLROnPlateau metric must be a real number or a one-element "
                f"tensor, got a tensor of shape {tuple(metric.shape)} and dtype {metric.dtype}"
            )
        return float(metric.detach().item())
    if isinstance(metric, bool) or not isinstance(metric, (int, float)):
        raise TypeError(
            f"the ReduceLROnPlateau metric must be a real number or a one-element tensor, "
            f"got {type(metric).__name__}: {metric!r}"
        )
    return float(metric)


def step_schedule(
    optim: Any, comm: Collectives, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> None:
    """``optim.step(*args, **kwargs)``, with a plateau metric averaged over workers.

    Arguments are checked before any collective, so a wrong call raises on every
    worker instead of leaving one waiting.

    :raises TypeError: ``optim`` has no schedule; a plateau step without exactly one
        metric, or with a metric that is not a number; a schedule without a metric
        given one.
    """
    if not isinstance(optim, PyroLRScheduler):
        raise TypeError(
            f"step() advances a learning-rate schedule, but the wrapped optimizer "
            f"{type(optim).__name__} has none: wrap a pyroopt scheduler (e.g. "
            "pyroopt.StepLR({...}) or pyroopt.ReduceLROnPlateau({...}))"
        )
    if not is_plateau(optim):
        optim.step(*args, **kwargs)  # raises TypeError when given a metric
        return
    if len(args) + len(kwargs) != 1 or (kwargs and METRIC not in kwargs):
        raise TypeError(
            "ReduceLROnPlateau.step() needs exactly the metric, e.g. step(loss) or "
            f"step(metrics=loss); got args={args!r} kwargs={dict(kwargs)!r}"
        )
    value = metric_value(args[0] if args else kwargs[METRIC])
    # a NaN on any worker makes the mean NaN on every worker: still the same decision
    optim.step(comm.mean(value, "pyroopt.metric"))
