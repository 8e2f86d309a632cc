"""PyroLRScheduler: torch's learning-rate schedules for parameters discovered as SVI runs.

pyro.optim gives every parameter an optimizer and a scheduler of its own, created when
the parameter first appears, so a parameter first seen at epoch k runs its schedule
from epoch 0. pyroopt keeps exactly that, with one scheduler per *cohort*: the
parameters of one bucket, all first seen in the same epoch. ``SequentialLR`` and
``ChainedScheduler``, which pyro.optim wraps but cannot build, take their children as
``(scheduler, kwargs)`` pairs and are built on each cohort's optimizer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import pyro.optim
import torch
from torch.optim import lr_scheduler as torch_schedulers

from pyroopt import checkpoint
from pyroopt.engine import Bucket, PerParamBucket, freeze
from pyroopt.optim import ArgsSpec, PyroOptim, _ParamOptimizerView
from pyroopt.params import Slot

#: Schedulers built from child schedules rather than wrapping an optimizer directly.
COMPOSITE = ("SequentialLR", "ChainedScheduler")

#: pyroopt's scheduler factories (``pyroopt.StepLR`` ...) -> torch's scheduler classes
FACTORY_CLASSES: dict[Callable[..., Any], type] = {}


def scheduler_class(spec: Any) -> type:
    """The torch scheduler class of ``spec``: the class itself or a pyroopt factory."""
    cls = FACTORY_CLASSES.get(spec, spec)
    if not (isinstance(cls, type) and _is_scheduler_class(cls)):
        raise TypeError(
            "expected a torch.optim.lr_scheduler class or a pyroopt scheduler factory "
            f"(e.g. pyroopt.LinearLR), got {spec!r}"
        )
    return cls


def _is_scheduler_class(cls: type) -> bool:
    return issubclass(cls, torch_schedulers.LRScheduler) or issubclass(
        cls, torch_schedulers.ReduceLROnPlateau
    )


def _check_kwargs(cls: type, kwargs: Mapping[str, Any], where: str) -> None:
    accepted = [n for n in inspect.signature(cls).parameters if n != "optimizer"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"{where}: {cls.__name__} does not take {unknown}; it takes {accepted}")


class PyroLRScheduler(PyroOptim, pyro.optim.PyroLRScheduler):
    """A drop-in :class:`pyro.optim.PyroLRScheduler` stepping all parameters together.

    An instance is a :class:`pyro.optim.PyroLRScheduler` and a
    :class:`pyroopt.PyroOptim`; every method comes from pyroopt.

    :param scheduler_constructor: a :mod:`torch.optim.lr_scheduler` class.
    :param optim_args: ``{"optimizer": torch optimizer class, "optim_args": dict or
        callable (as for :class:`PyroOptim`), **scheduler_kwargs}``. For
        ``SequentialLR`` / ``ChainedScheduler``, ``schedulers`` is a list of
        ``(scheduler class or pyroopt factory, kwargs)`` pairs.
    :param clip_args: as for :class:`PyroOptim`.
    :param track_grad_norms: as for :class:`PyroOptim`.
    :param skip_nonfinite: as for :class:`PyroOptim`.

    Call it like an optimizer on each SVI step; call :meth:`step` once per epoch (with
    the metric for ``ReduceLROnPlateau``).

    Example::

        >>> import pyro, torch, pyroopt
        >>> pyro.clear_param_store()
        >>> x = pyro.param("x", torch.ones(2)).unconstrained()
        >>> schedule = pyroopt.StepLR(
        ...     {"optimizer": torch.optim.SGD, "optim_args": {"lr": 1.0}, "step_size": 2,
        ...      "gamma": 0.5})
        >>> for epoch in range(4):
        ...     x.grad = torch.zeros(2)
        ...     schedule([x])
        ...     schedule.step()
        >>> schedule.get_last_lr()
        {'x': 0.25}
    """

    def __init__(
        self,
        scheduler_constructor: Any,
        optim_args: Mapping[str, Any],
        clip_args: ArgsSpec | None = None,
        *,
        track_grad_norms: bool = False,
        skip_nonfinite: bool = False,
    ) -> None:
        cls = scheduler_class(scheduler_constructor)
        if not isinstance(optim_args, Mapping):
            raise TypeError(
                "optim_args of a scheduler must be a dict {'optimizer': torch optimizer class, "
                f"'optim_args': ..., **scheduler_kwargs}}, got {type(optim_args).__name__}"
            )
        missing = [k for k in ("optimizer", "optim_args") if k not in optim_args]
        if missing:
            raise ValueError(
                f"optim_args of {cls.__name__} lacks {missing}: give "
                "{'optimizer': e.g. torch.optim.Adam, 'optim_args': {'lr': ...}, "
                "**scheduler_kwargs}"
            )
        kwargs = {k: v for k, v in optim_args.items() if k not in ("optimizer", "optim_args")}
        _check_kwargs(cls, kwargs, "optim_args")
        if cls.__name__ in COMPOSITE:
            kwargs["schedulers"] = self._children(cls, kwargs.get("schedulers"))
        super().__init__(
            optim_args["optimizer"],
            optim_args["optim_args"],
            clip_args,
            track_grad_norms=track_grad_norms,
            skip_nonfinite=skip_nonfinite,
        )
        self.pt_scheduler_constructor = cls
        self.kwargs = kwargs  # as pyro.optim names it: the scheduler's own arguments
        self._epoch = 0
        self._schedulers: dict[Bucket, Any] = {}

    @staticmethod
    def _children(cls: type, children: Any) -> list[tuple[type, dict[str, Any]]]:
        if not isinstance(children, (list, tuple)) or not children:
            raise ValueError(
                f"{cls.__name__} needs 'schedulers': a list of (scheduler, kwargs) pairs, "
                f"e.g. [(pyroopt.LinearLR, {{'start_factor': 0.1}}), ...]; got {children!r}"
            )
        out = []
        for child in children:
            if not (isinstance(child, (tuple, list)) and len(child) == 2):
                raise ValueError(
                    f"each of {cls.__name__}'s schedulers must be a (scheduler, kwargs) "
                    f"pair; got {child!r}"
                )
            child_cls, child_kwargs = scheduler_class(child[0]), dict(child[1])
            _check_kwargs(child_cls, child_kwargs, f"{cls.__name__} child")
            out.append((child_cls, child_kwargs))
        return out

    # -- schedules per cohort ---------------------------------------------------------
    def _build(self, target: torch.optim.Optimizer) -> Any:
        kwargs = dict(self.kwargs)
        if self.pt_scheduler_constructor.__name__ in COMPOSITE:
            kwargs["schedulers"] = [cls(target, **kw) for cls, kw in kwargs["schedulers"]]
            if self.pt_scheduler_constructor is torch_schedulers.ChainedScheduler:
                kwargs["optimizer"] = target
                return self.pt_scheduler_constructor(**kwargs)
        return self.pt_scheduler_constructor(target, **kwargs)

    # Schedules keep their own entries in the groups they drive.
    _group_keys_added = frozenset(
        {"initial_lr", "max_lr", "min_lr", "base_lr", "base_momentum", "max_momentum"}
    )

    def _optimizer_state(self, state: Mapping[str, Any]) -> Mapping[str, Any]:
        return state["optimizer"]

    def _cohort(self, state: Any) -> Hashable:
        # Parameters share a schedule only if they would have run it in step: the same
        # epoch of first appearance, or the same saved schedule state.
        cohort = ("epoch", self._epoch) if state is None else ("saved", freeze(state["scheduler"]))
        return cohort

    def _attach(self, bucket: Bucket, state: Any) -> None:
        if isinstance(bucket, PerParamBucket):
            # one optimizer per parameter: its bucket must stay a bucket of one
            bucket.fresh = False
        scheduler = self._build(bucket.schedule_target())
        if state is not None:
            scheduler.load_state_dict(state["scheduler"])
        self._schedulers[bucket] = scheduler

    def _copy_attachment(self, source: Bucket, target: Bucket) -> None:
        scheduler = self._build(target.schedule_target())
        scheduler.load_state_dict(self._schedulers[source].state_dict())
        self._schedulers[target] = scheduler

    def _drop_empty_buckets(self) -> None:
        super()._drop_empty_buckets()
        self._schedulers = {b: s for b, s in self._schedulers.items() if b.params}

    # -- public API -------------------------------------------------------------------
    def step(self, *args: Any, **kwargs: Any) -> None:
        """Advance the schedule of every parameter seen so far by one epoch.

        ``ReduceLROnPlateau`` takes the metric (``step(loss)``); other schedules take
        no argument. Runs under the optimizer's lock, so calls from other threads (of
        the optimizer or of this method) run one after another. All schedules advance,
        or none: if one raises (say ``OneCycleLR`` stepped past ``total_steps``), every
        schedule and learning rate is put back as it was before the error propagates.
        """
        self._check_step_args(args, kwargs)
        with self._lock:
            schedulers = list(self._schedulers.values())
            saved = [_snapshot(scheduler) for scheduler in schedulers]
            try:
                for scheduler in schedulers:
                    scheduler.step(*args, **kwargs)
            except BaseException:
                for scheduler, snapshot in zip(schedulers, saved, strict=True):
                    _restore(scheduler, snapshot)
                raise
            for bucket in self._buckets:
                bucket.fresh = False
            self._epoch += 1

    def _check_step_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise ``TypeError`` unless :meth:`step` can take these arguments."""
        plateau = issubclass(self.pt_scheduler_constructor, torch_schedulers.ReduceLROnPlateau)
        if not plateau:
            if args or kwargs:
                raise TypeError(
                    f"{self.pt_scheduler_constructor.__name__}.step() takes no argument "
                    "(only ReduceLROnPlateau takes a metric); got "
                    f"args={args!r} kwargs={kwargs!r}"
                )
            return
        if len(args) + len(kwargs) != 1 or (kwargs and "metrics" not in kwargs):
            raise TypeError(
                "ReduceLROnPlateau.step() needs the metric, e.g. step(loss); got "
                f"args={args!r} kwargs={kwargs!r}"
            )
        metric = args[0] if args else kwargs["metrics"]
        try:
            float(metric.detach() if isinstance(metric, torch.Tensor) else metric)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"ReduceLROnPlateau.step() needs a number (or a one-element tensor) as the "
                f"metric, got {metric!r}"
            ) from None

    def get_last_lr(self) -> dict[str, float]:
        """The learning rate each parameter seen so far will use next, by name."""
        return self.learning_rates()

    def get_state(self) -> dict[str, Any]:
        """``{param_name: {"scheduler": ..., "optimizer": ...}}``, as pyro.optim gives it."""
        return super().get_state()

    def _param_state(self, slot: Any) -> Any:
        return {
            "scheduler": self._schedulers[slot.bucket].state_dict(),
            "optimizer": slot.bucket.state_dict(slot.param),
        }

    def _check_state(self, name: Any, state: Any, where: str) -> None:
        checkpoint.check_scheduler_state(name, state, where)

    def _view(self, slot: Any) -> Any:
        return _ParamSchedulerView(self._schedulers[slot.bucket], self, slot)


def _snapshot(scheduler: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What :meth:`PyroLRScheduler.step` restores if a schedule raises: the scheduler's
    state and the hyperparameters of the groups it drives."""
    return scheduler.state_dict(), [dict(g) for g in scheduler.optimizer.param_groups]


def _restore(scheduler: Any, snapshot: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    state, groups = snapshot
    scheduler.load_state_dict(state)
    for group, saved in zip(scheduler.optimizer.param_groups, groups, strict=True):
        group.clear()  # the same dict: buckets read their hyperparameters from it
        group.update(saved)


class _ParamSchedulerView:
    """One parameter's scheduler, as pyro.optim users reach into ``optim_objs[p]``."""

    def __init__(self, scheduler: Any, optim: PyroOptim, slot: Slot) -> None:
        self._scheduler = scheduler
        self.optimizer = _ParamOptimizerView(optim, slot)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = self._scheduler.state_dict()
        return state

    def get_last_lr(self) -> list[float]:
        return [float(self.optimizer.param_groups[0]["lr"])]
