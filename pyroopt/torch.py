r"""torch optimizers that step through pyroopt's engine: a drop-in for ``torch.optim``.

Pyro's newer training loops skip SVI and ``pyro.optim``: they build an ELBO module,
call ``loss = elbo(data); loss.backward()`` and step a plain torch optimizer over
``elbo.parameters()`` (Pyro's ``svi_torch.py``, ``svi_lightning.py``). On the CPU,
torch's optimizers then loop over the parameters one tensor at a time. The classes
here are real :class:`torch.optim.Optimizer` subclasses (subclasses of the torch class
of the same name, with its constructor, defaults and validation), but each call of
:meth:`step` updates all parameters of a param group that share a device and dtype in
one pass of a pyroopt bucket (:mod:`pyroopt.engine`).

For every parameter :math:`\theta_i` with gradient :math:`g_i` at its own step count
:math:`t_i` the update is the torch class's, e.g. for :class:`Adam`

.. math::

    m_i \leftarrow \beta_1 m_i + (1-\beta_1) g_i, \quad
    v_i \leftarrow \beta_2 v_i + (1-\beta_2) g_i^2, \quad
    \theta_i \leftarrow \theta_i - \frac{\mathrm{lr}}{1-\beta_1^{t_i}}
        \frac{m_i}{\sqrt{v_i}/\sqrt{1-\beta_2^{t_i}} + \epsilon},

computed bit for bit as torch's default implementation computes it on that device
(on the CPU its single-tensor loop), so replacing ``torch.optim.Adam`` by
``pyroopt.torch.Adam`` changes no number. ``foreach=True`` or ``fused=True`` run
torch's own implementation of that choice for the group.

What torch users rely on works as in torch: ``param_groups`` (a scheduler's or a
user's change of ``lr``, ``betas`` or ``momentum`` takes effect at the next step),
:meth:`add_param_group`, closures, :mod:`torch.optim.lr_scheduler`, step and state-dict
hooks, ``zero_grad`` and :meth:`state_dict` / :meth:`load_state_dict` in torch's own
format (a state dict of ``torch.optim.Adam`` loads here and the other way round).

``optimizer.state[p]`` reads a *snapshot* of ``p``'s state (its tensors are copies);
assigning ``optimizer.state[p] = {...}`` sets the state. Parameters given a new dtype
or device after the optimizer was made need a new optimizer (torch recommends the
same order: move the model first).

Example::

    >>> import torch
    >>> import pyroopt.torch
    >>> w1 = torch.ones(3, requires_grad=True)
    >>> w2 = torch.ones(3, requires_grad=True)
    >>> ours = pyroopt.torch.Adam([w1], lr=0.1)
    >>> theirs = torch.optim.Adam([w2], lr=0.1)
    >>> for _ in range(3):
    ...     for w, opt in ((w1, ours), (w2, theirs)):
    ...         opt.zero_grad()
    ...         (w**2).sum().backward()
    ...         opt.step()
    >>> torch.equal(w1, w2), isinstance(ours, torch.optim.Adam)
    (True, True)
    >>> theirs.load_state_dict(ours.state_dict())
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, ClassVar

import torch
from pyro.optim.adagrad_rmsprop import AdagradRMSProp as _PyroAdagradRMSProp
from pyro.optim.clipped_adam import ClippedAdam as _PyroClippedAdam
from torch import Tensor
from torch.optim import Optimizer

from pyroopt import optimizers as _optimizers
from pyroopt.engine import (
    IMPLEMENTATION_ARGS,
    Bucket,
    PerParamBucket,
    RuleBucket,
    TorchBucket,
    make_bucket,
    one_param_state,
)
from pyroopt.registry import group_rule, rule_for

__all__ = [
    "SGD",
    "Adagrad",
    "AdagradRMSProp",
    "Adam",
    "AdamW",
    "ClippedAdam",
    "RMSprop",
    "Rprop",
]

Group = dict[str, Any]


#: entries of a param group that are not hyperparameters
_NOT_HYPER = ("params", "param_names")


def _hyper(group: Group) -> Group:
    return {k: v for k, v in group.items() if k not in _NOT_HYPER}


class _GroupPlan:
    """The buckets of one param group: one per (device, dtype), in parameter order."""

    def __init__(self, constructor: type[Optimizer], group: Group) -> None:
        self.group = group
        self.params_list: list[Tensor] = group["params"]
        self.count = len(self.params_list)
        self.structure = _structure(constructor, group)
        rule = group_rule(constructor)
        self.advancing = rule is not None and rule.advances_group(group)
        self.rule = rule
        self.buckets: list[Bucket] = []
        #: per bucket, the dict it reads its hyperparameters from (None: the user's)
        self.copies: list[Group | None] = []
        by_kind: dict[tuple[torch.device, torch.dtype], Bucket] = {}
        for p in self.params_list:
            key = (p.device, p.dtype)
            bucket = by_kind.get(key)
            if bucket is None:
                hyper = _hyper(group)
                bucket = make_bucket(constructor, hyper, p)
                copy: Group | None = hyper
                if isinstance(bucket, RuleBucket) and not (self.advancing and self.buckets):
                    bucket.group = group  # reads lr etc. from the user's dict, live
                    copy = None
                by_kind[key] = bucket
                self.buckets.append(bucket)
                self.copies.append(copy)
            bucket.add(p)

    def current(self, optimizer_groups: list[Group], index: int) -> bool:
        """Whether this plan still describes the group the user holds."""
        group = self.group
        return (
            optimizer_groups[index] is group
            and group["params"] is self.params_list
            and len(self.params_list) == self.count
        )

    def step(self, constructor: type[Optimizer]) -> None:
        group = self.group
        if not self.buckets and self.advancing:
            assert self.rule is not None
            self.rule.advance_group(group)  # an empty group still decays its lr
        for i, (bucket, copy) in enumerate(zip(self.buckets, self.copies, strict=True)):
            if copy is not None:
                copy.clear()
                copy.update(_hyper(group))
            if isinstance(bucket, TorchBucket):
                assert bucket.optimizer is not None
                inner = bucket.optimizer.param_groups[0]
                inner.update(copy if copy is not None else _hyper(group))
                bucket.step(bucket.params)
                if self.advancing and i == 0:
                    group.update(_hyper(inner))
            elif isinstance(bucket, PerParamBucket):  # not reached for these classes
                for opt in bucket.optimizers.values():
                    opt.param_groups[0].update(_hyper(group))
                bucket.step(bucket.params)
            else:  # a rule bucket (small ones step on one thread: see the engine)
                bucket.step(bucket.params)
                if self.advancing and i == 0 and copy is not None:
                    group.update(copy)

    def states(self) -> dict[Tensor, dict[str, Any]]:
        """Every parameter's state (empty ones left out), as torch's ``state[p]``."""
        out: dict[Tensor, dict[str, Any]] = {}
        for bucket in self.buckets:
            for p in bucket.params:
                state = bucket.state_dict(p)["state"].get(0, {})
                if state:
                    out[p] = dict(state)
        return out


def _structure(constructor: type[Optimizer], group: Group) -> tuple[Any, ...]:
    """What decides the kind of bucket and its state keys; a change means a rebuild."""
    rule = rule_for(constructor)
    return (
        tuple(group.get(k) for k in IMPLEMENTATION_ARGS),
        isinstance(group.get("lr"), Tensor),
        rule.supports(_hyper(group)) if rule is not None else None,
        rule.state_keys(group) if rule is not None else None,
    )


class _EngineState(MutableMapping):
    """``optimizer.state`` read from and written to the engine's buckets.

    Behaves like torch's ``defaultdict(dict)``: ``state[p]`` of a parameter without
    state is an empty dict; whatever is put into that dict is taken as ``p``'s state
    at the next step or state access (torch's own ``__init__`` methods fill state
    that way, e.g. Adagrad's ``sum``).
    """

    def __init__(self, owner: _EngineOptimizer) -> None:
        self._owner = owner
        self._other: dict[Any, Any] = {}  # keys that are not parameters of the optimizer
        self._pending: dict[Tensor, dict[str, Any]] = {}

    def _bucket(self, key: Any) -> Bucket | None:
        return self._owner._where.get(id(key)) if isinstance(key, Tensor) else None

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for p, state in pending.items():
            if state:
                self[p] = state

    def __getitem__(self, key: Any) -> Any:
        bucket = self._bucket(key)
        if bucket is None:
            return self._other.setdefault(key, {})
        if key in self._pending:
            return self._pending[key]
        state = dict(bucket.state_dict(key)["state"].get(0, {}))
        if not state:
            self._pending[key] = state
        return state

    def __setitem__(self, key: Any, value: Any) -> None:
        bucket = self._bucket(key)
        if bucket is None:
            self._other[key] = value
            return
        self._pending.pop(key, None)
        if not isinstance(value, dict):
            raise TypeError(f"the state of a parameter is a dict, got {type(value).__name__}")
        if not value:
            del self[key]
            return
        bucket.load_state_dict(key, one_param_state(value, _hyper(bucket.current_group())))

    def __delitem__(self, key: Any) -> None:
        bucket = self._bucket(key)
        if bucket is None:
            del self._other[key]
            return
        self._owner._reset(key)

    def __contains__(self, key: object) -> bool:
        bucket = self._bucket(key)
        if bucket is None:
            return key in self._other
        return bool(bucket.state_dict(key)["state"])  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        self.flush()
        for plan in self._owner._plans:
            yield from plan.states()
        yield from list(self._other)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def items(self):
        self.flush()
        pairs: list[tuple[Any, Any]] = []
        for plan in self._owner._plans:
            pairs.extend(plan.states().items())
        pairs.extend(self._other.items())
        return pairs

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.items())!r})"


class _EngineOptimizer(Optimizer):
    """A torch optimizer class whose :meth:`step` runs on pyroopt's buckets."""

    #: the class whose numbers and state format this one has (what the engine runs)
    _constructor: ClassVar[type[Optimizer]]

    # -- the engine's bookkeeping ----------------------------------------------------
    def _engine_reset(self) -> None:
        self._plans: list[_GroupPlan] = []
        self._where: dict[int, Bucket] = {}
        self._groups_list: list[Group] = self.param_groups
        self.state = _EngineState(self)  # type: ignore[assignment]

    def _plan(self, index: int, states: dict[Tensor, dict[str, Any]]) -> _GroupPlan:
        plan = _GroupPlan(self._constructor, self.param_groups[index])
        for bucket in plan.buckets:
            for p in bucket.params:
                self._where[id(p)] = bucket
        hyper = _hyper(plan.group)
        for p in plan.params_list:
            state = states.get(p)
            if state:
                self._where[id(p)].load_state_dict(p, one_param_state(state, hyper))
        return plan

    def _forget(self, plan: _GroupPlan) -> dict[Tensor, dict[str, Any]]:
        states = plan.states()
        for bucket in plan.buckets:
            for p in bucket.params:
                if self._where.get(id(p)) is bucket:
                    del self._where[id(p)]
        return states

    def _refresh(self) -> None:
        """Follow the user's edits of ``param_groups`` (new lists, new parameters,
        a new implementation choice) by rebuilding what changed; state carries over."""
        state = self.state
        if isinstance(state, _EngineState) and state._pending:
            state.flush()
        groups = self.param_groups
        plans = self._plans
        if groups is self._groups_list and len(groups) >= len(plans):
            stale = [
                i
                for i, plan in enumerate(plans)
                if not plan.current(groups, i)
                or plan.structure != _structure(self._constructor, plan.group)
            ]
            if not stale and len(groups) == len(plans):
                return
        else:
            stale = list(range(len(plans)))
        states: dict[Tensor, dict[str, Any]] = {}
        for i in stale:
            states.update(self._forget(plans[i]))
        kept = {i: plan for i, plan in enumerate(plans) if i not in stale and i < len(groups)}
        self._groups_list = groups
        self._plans = [kept[i] if i in kept else self._plan(i, states) for i in range(len(groups))]

    def _reset(self, param: Tensor) -> None:
        """Forget ``param``'s state (``del optimizer.state[param]``)."""
        for i, plan in enumerate(self._plans):
            if any(p is param for p in plan.params_list):
                states = self._forget(plan)
                states.pop(param, None)
                self._plans[i] = self._plan(i, states)
                return

    # -- torch's Optimizer API -------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (torch's checks and defaults), stepped from the next step on."""
        super().add_param_group(param_group)
        if "_plans" not in self.__dict__:
            self._engine_reset()
        self._refresh()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; returns ``closure()`` if given.

        The closure is evaluated once, with gradients enabled, before any update.
        """
        if closure is not None and not callable(closure):
            raise TypeError(f"closure must be callable, got {closure!r}")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._refresh()
        constructor = self._constructor
        for plan in self._plans:
            plan.step(constructor)
        return loss

    def __getstate__(self) -> dict[str, Any]:
        state = defaultdict(dict, self.state.items())
        return {"defaults": self.defaults, "state": state, "param_groups": self.param_groups}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # load_state_dict ends here with torch's cast state and new group dicts; so
        # does unpickling. The torch class's own fix-ups run first.
        super().__setstate__(state)
        loaded = dict(self.state.items()) if not isinstance(self.state, _EngineState) else {}
        old = self.__dict__.get("_plans", [])
        reusable = self._reusable(old, loaded)
        if reusable is not None:
            self._groups_list = self.param_groups
            self.state = _EngineState(self)  # type: ignore[assignment]
            for plan, group in zip(reusable, self.param_groups, strict=True):
                plan.group = group
                plan.params_list = group["params"]
                for bucket, copy in zip(plan.buckets, plan.copies, strict=True):
                    if copy is None:
                        bucket.group = group
                hyper = _hyper(group)
                for p in plan.params_list:
                    if loaded.get(p):
                        self._where[id(p)].load_state_dict(p, one_param_state(loaded[p], hyper))
            self._plans = reusable
            return
        for plan in old:
            self._forget(plan)
        self._engine_reset()
        self._plans = [self._plan(i, loaded) for i in range(len(self.param_groups))]

    def _reusable(
        self, old: list[_GroupPlan], loaded: dict[Tensor, dict[str, Any]]
    ) -> list[_GroupPlan] | None:
        """The current buckets, if the loaded groups hold the same parameters and no
        parameter that has state here lacks it in ``loaded`` (else: fresh buckets)."""
        groups = self.param_groups
        if len(old) != len(groups) or "_where" not in self.__dict__:
            return None
        for plan, group in zip(old, groups, strict=True):
            params = group["params"]
            if len(params) != plan.count or not all(
                a is b for a, b in zip(params, plan.params_list, strict=True)
            ):
                return None
            if plan.structure != _structure(self._constructor, group):
                return None
            for p, state in plan.states().items():
                if state and not loaded.get(p):
                    return None
        return old


class Adam(_EngineOptimizer, torch.optim.Adam):
    r"""torch's :class:`~torch.optim.Adam` (arguments, defaults, state format and
    numbers), stepping all parameters of a group together.

    .. math::

        \theta_t = \theta_{t-1} - \frac{\mathrm{lr}}{1-\beta_1^t}
            \frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t}+\epsilon}
    """

    _constructor = torch.optim.Adam


class AdamW(_EngineOptimizer, torch.optim.AdamW):
    r"""torch's :class:`~torch.optim.AdamW`: Adam with decoupled weight decay
    :math:`\theta \leftarrow (1-\mathrm{lr}\,\lambda)\theta` before the Adam step."""

    _constructor = torch.optim.AdamW


class SGD(_EngineOptimizer, torch.optim.SGD):
    r"""torch's :class:`~torch.optim.SGD` with momentum :math:`b \leftarrow \mu b +
    (1-\tau) g`, :math:`\theta \leftarrow \theta - \mathrm{lr}\, b`."""

    _constructor = torch.optim.SGD


class RMSprop(_EngineOptimizer, torch.optim.RMSprop):
    r"""torch's :class:`~torch.optim.RMSprop`: :math:`v \leftarrow \alpha v +
    (1-\alpha) g^2`, :math:`\theta \leftarrow \theta - \mathrm{lr}\, g/(\sqrt v +
    \epsilon)`."""

    _constructor = torch.optim.RMSprop


class Rprop(_EngineOptimizer, torch.optim.Rprop):
    r"""torch's :class:`~torch.optim.Rprop`: per-element step sizes grown by
    :math:`\eta_+` or shrunk by :math:`\eta_-` as the gradient's sign persists or flips."""

    _constructor = torch.optim.Rprop


class Adagrad(_EngineOptimizer, torch.optim.Adagrad):
    r"""torch's :class:`~torch.optim.Adagrad`: :math:`s \leftarrow s + g^2`,
    :math:`\theta \leftarrow \theta - \frac{\mathrm{lr}}{1+(t-1)\,\mathrm{lr\_decay}}
    \frac{g}{\sqrt s+\epsilon}`."""

    _constructor = torch.optim.Adagrad


class ClippedAdam(_EngineOptimizer, _optimizers.ClippedAdam):
    r"""pyro's :class:`~pyro.optim.clipped_adam.ClippedAdam` (see
    :class:`pyroopt.optimizers.ClippedAdam` for the math): gradients clamped to
    :math:`[-c, c]`, ``lr`` multiplied by ``lrd`` at every step."""

    _constructor = _optimizers.ClippedAdam


class AdagradRMSProp(_EngineOptimizer, _optimizers.AdagradRMSProp):
    r"""pyro's :class:`~pyro.optim.adagrad_rmsprop.AdagradRMSProp` (see
    :class:`pyroopt.optimizers.AdagradRMSProp`):
    :math:`\theta \leftarrow \theta - \eta\, t^{-1/2+\delta} g / (1+\sqrt s)`."""

    _constructor = _optimizers.AdagradRMSProp


#: the class whose numbers each of ours reproduces (what the tests compare with)
REFERENCE: dict[type[Optimizer], type[Optimizer]] = {
    Adam: torch.optim.Adam,
    AdamW: torch.optim.AdamW,
    SGD: torch.optim.SGD,
    RMSprop: torch.optim.RMSprop,
    Rprop: torch.optim.Rprop,
    Adagrad: torch.optim.Adagrad,
    ClippedAdam: _PyroClippedAdam,
    AdagradRMSProp: _PyroAdagradRMSProp,
}
