"""``optim_objs``: pyro.optim's map from each parameter to its own optimizer, as views.

pyro.optim holds one torch optimizer per parameter, and users reach into it
(``optim.optim_objs[p].param_groups[0]["lr"]``, ``.state_dict()``). pyroopt steps
parameters in buckets; these views answer the same questions for one parameter from
its bucket, and ``load_state_dict`` moves the parameter to a bucket of the loaded
hyperparameters, as its own optimizer would take them.

Example::

    >>> import pyro, torch, pyroopt
    >>> pyro.clear_param_store()
    >>> x = pyro.param("x", torch.ones(2)).unconstrained()
    >>> optim = pyroopt.Adam({"lr": 0.1})
    >>> x.grad = torch.ones(2)
    >>> optim([x])
    >>> optim.optim_objs[x].param_groups[0]["lr"]
    0.1
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from pyroopt.bucket import Bucket
from pyroopt.params import Slot

if TYPE_CHECKING:
    from pyroopt.optim import PyroOptim


class OptimObjs(Mapping[Tensor, Any]):
    """Maps each parameter an optimizer has seen to a view of its optimizer."""

    def __init__(self, optim: PyroOptim) -> None:
        self._optim = optim

    def __getitem__(self, param: Tensor) -> Any:
        placement = self._optim._placement
        slot = placement.table.get(param)
        if slot is None:
            raise KeyError(param)
        return placement.schedules.view(self._optim, slot)

    def __iter__(self) -> Iterator[Tensor]:
        return (slot.param for slot in self._optim._placement.table)

    def __len__(self) -> int:
        return len(self._optim._placement.table)


class ParamOptimizerView:
    """One parameter's optimizer, as pyro.optim users reach into ``optim_objs[p]``."""

    def __init__(self, optim: PyroOptim, slot: Slot) -> None:
        self._optim = optim
        self._slot = slot
        self._param = slot.param

    @property
    def _bucket(self) -> Bucket:
        return self._slot.bucket

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        group = self._bucket.state_dict(self._param)["param_groups"][0]
        return [{**group, "params": [self._param]}]

    @property
    def state(self) -> dict[Tensor, Any]:
        return {self._param: self._bucket.state_dict(self._param)["state"].get(0, {})}

    def state_dict(self) -> dict[str, Any]:
        return self._bucket.state_dict(self._param)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load one parameter's state with every hyperparameter it carries, as its own
        torch optimizer would (the parameter moves to a bucket of those hyperparameters)."""
        optim, slot = self._optim, self._slot
        with optim._lock:
            placement = optim._placement
            entry: Any = dict(state_dict)
            current = placement.entry(slot)
            if placement.schedules.optimizer_state(current) is not current:
                entry = {**current, "optimizer": entry}  # under a schedule: keep it
            placement.schedules.check_entry(slot.name, entry, "load_state_dict")
            # an unnamed parameter's entry is under None, which apply_now reads alike
            placement.apply_now([slot], {slot.name: entry})  # type: ignore[dict-item]

    def zero_grad(self, set_to_none: bool = True) -> None:
        if set_to_none:
            self._param.grad = None
        elif self._param.grad is not None:
            self._param.grad.detach_().zero_()

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Step this one parameter, as its own optimizer would: a bucket whose steps move
        its hyperparameters (ClippedAdam's ``lrd``) lets it go first, so the others'
        learning rates stay as they are."""
        self._optim([self._param], *args, **kwargs)


class ParamSchedulerView:
    """One parameter's scheduler, as pyro.optim users reach into ``optim_objs[p]``."""

    def __init__(self, scheduler: Any, optim: PyroOptim, slot: Slot) -> None:
        self._scheduler = scheduler
        self.optimizer = ParamOptimizerView(optim, slot)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = self._scheduler.state_dict()
        return state

    def get_last_lr(self) -> list[float]:
        return [float(self.optimizer.param_groups[0]["lr"])]


__all__ = ["OptimObjs", "ParamOptimizerView", "ParamSchedulerView"]
