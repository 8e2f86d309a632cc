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
from collections.abc import Hashable, Mapping
from typing import Any

import pyro.optim
import torch
from torch.optim import lr_scheduler as torch_schedulers

from pyroopt import state_checks
from pyroopt.bucket import Bucket
from pyroopt.engine import freeze
from pyroopt.optim import PyroOptim
from pyroopt.param_args import ArgsSpec
from pyroopt.params import Slot
from pyroopt.placement import Schedules
from pyroopt.torch_bucket import PerParamBucket
from pyroopt.views import ParamSchedulerView

#: Schedulers built from child schedules rather than wrapping an optimizer directly.
COMPOSITE = ("SequentialLR", "ChainedScheduler")


def is_scheduler(optimizer: Any) -> bool:
    """Whether ``optimizer`` is a learning-rate scheduler (it wraps an ``.optimizer``).

    Duck-typed like pyro.optim's, since torch has no public base for all schedulers.
    """
    return hasattr(optimizer, "optimizer")


def scheduler_class(spec: Any) -> type:
    """The torch scheduler class of ``spec``: the class itself or a pyroopt factory."""
    from pyroopt.factories import FACTORY_CLASSES  # the factories build schedulers of this module

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
        self.pt_scheduler_constructor = cls
        self.kwargs = kwargs  # as pyro.optim names it: the scheduler's own arguments
        self._schedules = CohortSchedules(cls, kwargs)
        super().__init__(
            optim_args["optimizer"],
            optim_args["optim_args"],
            clip_args,
            track_grad_norms=track_grad_norms,
            skip_nonfinite=skip_nonfinite,
            schedules=self._schedules,
        )

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
            schedulers = list(self._schedules.by_bucket.values())
            saved = [_snapshot(scheduler) for scheduler in schedulers]
            try:
                for scheduler in schedulers:
                    scheduler.step(*args, **kwargs)
            except BaseException:
                for scheduler, snapshot in zip(schedulers, saved, strict=True):
                    _restore(scheduler, snapshot)
                raise
            self._placement.close_all()  # parameters that appear now start a new cohort
            self._schedules.epoch += 1

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


class CohortSchedules(Schedules):
    """A schedule per bucket, for the parameters of one *cohort*: those first seen in
    the same epoch (or restored from the same saved schedule state), which would have
    run their schedules in step under pyro.optim. A saved entry is
    ``{"scheduler": ..., "optimizer": ...}``, as pyro.optim saves it."""

    # Schedules keep their own entries in the groups they drive.
    group_keys_added = frozenset(
        {"initial_lr", "max_lr", "min_lr", "base_lr", "base_momentum", "max_momentum"}
    )

    def __init__(self, cls: type, kwargs: Mapping[str, Any]) -> None:
        self.cls = cls
        self.kwargs = kwargs
        #: epochs stepped so far (:meth:`PyroLRScheduler.step`)
        self.epoch = 0
        self.by_bucket: dict[Bucket, Any] = {}

    def build(self, target: torch.optim.Optimizer) -> Any:
        """The schedule over ``target``, a bucket's optimizer."""
        kwargs = dict(self.kwargs)
        if self.cls.__name__ in COMPOSITE:
            kwargs["schedulers"] = [cls(target, **kw) for cls, kw in kwargs["schedulers"]]
            if self.cls is torch_schedulers.ChainedScheduler:
                kwargs["optimizer"] = target
                return self.cls(**kwargs)
        return self.cls(target, **kwargs)

    def check_entry(self, name: Any, entry: Any, where: str) -> None:
        state_checks.check_scheduler_state(name, entry, where)

    def optimizer_state(self, entry: Mapping[str, Any]) -> Mapping[str, Any]:
        return entry["optimizer"]

    def entry(self, bucket: Bucket, param: Any) -> Any:
        return {
            "scheduler": self.by_bucket[bucket].state_dict(),
            "optimizer": bucket.state_dict(param),
        }

    def cohort(self, entry: Any) -> Hashable:
        if entry is None:
            return ("epoch", self.epoch)
        return ("saved", freeze(entry["scheduler"]))

    def attach(self, bucket: Bucket, entry: Any) -> bool:
        scheduler = self.build(bucket.schedule_target())
        if entry is not None:
            scheduler.load_state_dict(entry["scheduler"])
        self.by_bucket[bucket] = scheduler
        # one optimizer per parameter: a schedule drives one, so no other may join
        return not isinstance(bucket, PerParamBucket)

    def copy(self, source: Bucket, target: Bucket) -> None:
        scheduler = self.build(target.schedule_target())
        scheduler.load_state_dict(self.by_bucket[source].state_dict())
        self.by_bucket[target] = scheduler

    def keep_only(self, buckets: list[Bucket]) -> None:
        alive = set(buckets)
        self.by_bucket = {b: s for b, s in self.by_bucket.items() if b in alive}

    def view(self, optim: Any, slot: Slot) -> Any:
        return ParamSchedulerView(self.by_bucket[slot.bucket], optim, slot)


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
