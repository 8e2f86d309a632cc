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
hooks (global and local, each fired once per step), ``zero_grad``, sparse gradients
(SGD and Adagrad step them with torch's own implementation) and
:meth:`state_dict` / :meth:`load_state_dict` in torch's own format (a state dict of
``torch.optim.Adam`` loads here and the other way round; its tensors are copies).
``tests/test_torch_conformance.py`` runs the behaviours torch's own optimizer suite
checks, on the configurations of torch's ``optim_db``.

``optimizer.state`` is a ``dict`` that behaves as torch's ``defaultdict(dict)``: it has
an entry for each parameter with state (and for any key looked up or set), and each
parameter's dict is the optimizer's own:

- ``state[p]`` is the same dict from step to step, and a dict held across steps sees
  them;
- its tensors are the memory the optimizer updates, so an edit in place
  (``state[p]["exp_avg"].mul_(0.5)``, ``state[p]["step"] += 1`` on a tensor step) is
  what the next step uses;
- an entry set or replaced (``state[p]["exp_avg"] = t``, as Lightning's device moves
  do), a dict assigned (``state[p] = {...}``) or removed (``del state[p]``: the next step
  starts ``p`` afresh, as torch's class does) is taken in at the next step. Where
  pyroopt's own update runs ``p`` (no ``foreach``/``fused``/``differentiable``), the
  values are copied into the optimizer's memory and the dict then holds its tensors
  again: ``state[p]`` after ``state[p] = d`` is a dict with ``d``'s entries, not ``d``.

Parameters given a new dtype or device after the optimizer was made need a new
optimizer (torch recommends the same order: move the model first).

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

import types
from collections import defaultdict, deque
from collections.abc import Callable
from itertools import repeat
from typing import Any, ClassVar

import torch
from pyro.optim.adagrad_rmsprop import AdagradRMSProp as _PyroAdagradRMSProp
from pyro.optim.clipped_adam import ClippedAdam as _PyroClippedAdam
from torch import Tensor
from torch.optim import Optimizer

from pyroopt import optimizers as _optimizers
from pyroopt._compat import get_scalar_dtype
from pyroopt.bucket import Bucket, SparseGradients, one_param_state
from pyroopt.engine import make_bucket
from pyroopt.kernels import IMPLEMENTATION_ARGS
from pyroopt.registry import group_rule, rule_for
from pyroopt.rule_bucket import RuleBucket
from pyroopt.torch_bucket import TorchBucket

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


def _without_step_hooks(optimizer: Optimizer) -> None:
    """Let ``optimizer.step`` skip torch's step hooks.

    torch wraps the ``step`` of every optimizer class so that it runs the global hooks
    (``torch.optim.optimizer.register_optimizer_step_pre_hook`` and ``_post_hook``) and
    the instance's own. A torch optimizer that a bucket runs inside one of ours is an
    implementation detail: the hooks fire once, around our own ``step``.
    """
    step = type(optimizer).step
    unwrapped = getattr(step, "__wrapped__", None)
    if getattr(step, "hooked", False) and unwrapped is not None:
        optimizer.step = types.MethodType(unwrapped, optimizer)  # type: ignore[method-assign]


def _live_views(bucket: RuleBucket, param: Tensor) -> dict[str, Tensor]:
    """The tensors that hold ``param``'s state in ``bucket`` (views of its flat buffers),
    which its steps update in place."""
    return bucket.live_state(param)


class _GroupPlan:
    """The buckets of one param group: one per (device, dtype), in parameter order."""

    def __init__(
        self, constructor: type[Optimizer], group: Group, where: dict[int, Bucket]
    ) -> None:
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
        #: the optimizer's map from id(param) to its bucket, kept current here
        self.where = where
        #: set when a step replaced a bucket (see :meth:`_hand_to_torch`)
        self.replaced = False
        by_kind: dict[tuple[torch.device, torch.dtype], Bucket] = {}
        for p in self.params_list:
            key = (p.device, p.dtype)
            bucket = by_kind.get(key)
            if bucket is None:
                hyper = _hyper(group)
                bucket = make_bucket(constructor, hyper, p)
                copy: Group | None = hyper
                if isinstance(bucket, RuleBucket) and not (self.advancing and self.buckets):
                    bucket.follow(group)  # reads lr etc. from the user's dict, live
                    copy = None
                by_kind[key] = bucket
                self.buckets.append(bucket)
                self.copies.append(copy)
            bucket.add(p)
        for bucket in self.buckets:
            if isinstance(bucket, TorchBucket):
                assert bucket.optimizer is not None
                _without_step_hooks(bucket.optimizer)
            for p in bucket.params:
                where[id(p)] = bucket

    def current(self, optimizer_groups: list[Group], index: int) -> bool:
        """Whether this plan still describes the group the user holds."""
        group = self.group
        return (
            optimizer_groups[index] is group
            and group["params"] is self.params_list
            and len(self.params_list) == self.count
        )

    def step(self, scaling: dict[str, Any]) -> None:
        """Step every bucket; ``scaling`` holds ``torch.amp.GradScaler``'s ``grad_scale``
        and ``found_inf`` for a torch optimizer that takes them (``fused=True``)."""
        group = self.group
        if not self.buckets and self.advancing:
            assert self.rule is not None
            self.rule.advance_group(group)  # an empty group still decays its lr
        for i, copy in enumerate(self.copies):
            bucket = self.buckets[i]
            if copy is not None:
                copy.clear()
                copy.update(_hyper(group))
            if isinstance(bucket, RuleBucket):  # small ones step on one thread: see rule_bucket
                try:
                    bucket.step(bucket.params)
                except SparseGradients:  # raised before the bucket changed anything
                    bucket = self._hand_to_torch(i)
                else:
                    if self.advancing and i == 0 and copy is not None:
                        group.update(copy)
                    continue
            assert isinstance(bucket, TorchBucket) and bucket.optimizer is not None
            inner = bucket.optimizer.param_groups[0]
            inner.update(copy if copy is not None else _hyper(group))
            _step_with(bucket, scaling)
            if self.advancing and i == 0:
                group.update(_hyper(inner))

    def _hand_to_torch(self, index: int) -> TorchBucket:
        """Replace rule bucket ``index`` by one optimizer of the torch class over the same
        parameters and state: torch's SGD and Adagrad step sparse gradients, which
        pyroopt's rules do not. The replacement lasts as long as the plan."""
        old = self.buckets[index]
        new = make_bucket(old.constructor, _hyper(self.group), old.params[0], sparse=True)
        assert isinstance(new, TorchBucket)
        for p in old.params:
            saved = old.state_dict(p)
            new.add(p)
            new.load_state_dict(p, saved)
            self.where[id(p)] = new
        assert new.optimizer is not None
        _without_step_hooks(new.optimizer)
        self.buckets[index] = new
        self.replaced = True
        return new

    def states(self) -> dict[Tensor, dict[str, Any]]:
        """Every parameter's state (empty ones left out), as copies."""
        out: dict[Tensor, dict[str, Any]] = {}
        for bucket in self.buckets:
            for p in bucket.params:
                state = bucket.state_dict(p)["state"].get(0, {})
                if state:
                    out[p] = dict(state)
        return out


def _step_with(bucket: TorchBucket, scaling: dict[str, Any]) -> None:
    """Step ``bucket``'s torch optimizer with ``scaling`` set on it as attributes, where
    torch's own step reads them (``GradScaler.step`` sets them on ours)."""
    optimizer = bucket.optimizer
    assert optimizer is not None
    for name, value in scaling.items():
        setattr(optimizer, name, value)
    try:
        bucket.step(bucket.params)
    finally:
        for name in scaling:
            optimizer.__dict__.pop(name, None)


#: what ``torch.amp.GradScaler.step`` sets on an optimizer whose fused step unscales
AMP_SCALING = ("grad_scale", "found_inf")


def _structure(constructor: type[Optimizer], group: Group) -> tuple[Any, ...]:
    """What decides the kind of bucket and its state keys; a change means a rebuild."""
    rule = rule_for(constructor)
    return (
        tuple(group.get(k) for k in IMPLEMENTATION_ARGS),
        isinstance(group.get("lr"), Tensor),
        rule.supports(_hyper(group)) if rule is not None else None,
        rule.state_keys(group) if rule is not None else None,
    )


# -- optimizer.state ------------------------------------------------------------------


class _ParamState(dict[Any, Any]):
    """``optimizer.state[p]`` for a parameter that a pyroopt rule steps: its tensors are
    the bucket's own memory (so edits made in place reach it at once), and an entry set,
    replaced or deleted here is taken into the bucket at the next step."""

    __slots__ = ("_owner", "_param")

    def __init__(self, owner: _EngineState, param: Tensor, entries: Any = ()) -> None:
        super().__init__(entries)
        self._owner = owner
        self._param = param

    def _edited(self) -> None:
        self._owner._dirty[id(self._param)] = self._param

    def __setitem__(self, key: Any, value: Any) -> None:
        if dict.get(self, key, self) is not value:
            super().__setitem__(key, value)
            self._edited()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._edited()

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._edited()

    def __ior__(self, other: Any) -> _ParamState:  # type: ignore[misc]
        self.update(other)
        return self

    def pop(self, *args: Any) -> Any:
        value = super().pop(*args)
        self._edited()
        return value

    def popitem(self) -> tuple[Any, Any]:
        item = super().popitem()
        self._edited()
        return item

    def clear(self) -> None:
        super().clear()
        self._edited()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))  # a copy or a pickle is a plain dict


class _EngineState(dict[Any, Any]):
    """``optimizer.state``: a ``dict`` that behaves like torch's ``defaultdict(dict)``.

    It holds an entry for every parameter with state (and for any key looked up or set,
    as torch's does). A parameter's dict is the same object from step to step, and its
    tensors are those the optimizer updates: see the module's docstring for which edits
    reach the optimizer.
    """

    def __init__(self, owner: _EngineOptimizer) -> None:
        super().__init__()
        self._owner = owner
        #: parameters whose dict was edited since the engine last took it in, by id
        self._dirty: dict[int, Tensor] = {}

    def _bucket(self, key: Any) -> Bucket | None:
        return self._owner._where.get(id(key)) if isinstance(key, Tensor) else None

    def __missing__(self, key: Any) -> Any:
        value: dict[Any, Any] = {} if self._bucket(key) is None else _ParamState(self, key)
        dict.__setitem__(self, key, value)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        bucket = self._bucket(key)
        if bucket is None:
            dict.__setitem__(self, key, value)
            return
        if not isinstance(value, dict):
            raise TypeError(f"the state of a parameter is a dict, got {type(value).__name__}")
        if isinstance(bucket, TorchBucket):  # torch's optimizer keeps this very dict
            assert bucket.optimizer is not None
            bucket.optimizer.state[key] = value
            dict.__setitem__(self, key, value)
            return
        dict.__setitem__(self, key, _ParamState(self, key, value))
        self._dirty[id(key)] = key

    def __delitem__(self, key: Any) -> None:
        dict.__delitem__(self, key)
        if self._bucket(key) is not None:
            self._dirty.pop(id(key), None)
            self._owner._reset(key)

    def pop(self, key: Any, *default: Any) -> Any:
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        value = dict.__getitem__(self, key)
        del self[key]
        return value

    def popitem(self) -> tuple[Any, Any]:
        if not self:
            raise KeyError("popitem(): optimizer state is empty")
        key = next(reversed(self.keys()))
        return key, self.pop(key)

    def clear(self) -> None:
        for key in list(self):
            del self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other: Any) -> _EngineState:  # type: ignore[misc]
        self.update(other)
        return self

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = {} if default is None and self._bucket(key) is not None else default
        return dict.__getitem__(self, key)

    def __reduce__(self) -> tuple[Any, ...]:
        plain = {k: dict(v) if isinstance(v, _ParamState) else v for k, v in self.items()}
        return (defaultdict, (dict, plain))  # a copy or a pickle is torch's type


class _TorchMirror:
    """Keeps ``optimizer.state[p]`` the very dict that the torch optimizer of a
    :class:`~pyroopt.torch_bucket.TorchBucket` keeps for ``p``."""

    def __init__(self, state: _EngineState, bucket: TorchBucket) -> None:
        assert bucket.optimizer is not None
        self.state = state
        self.inner = bucket.optimizer.state
        self.params = list(bucket.params)
        self.after_step()

    def before_step(self) -> None:
        """A dict looked up or set before the optimizer had one for ``p``: it gets it."""
        inner, state = self.inner, self.state
        for p in self.params:
            ours = dict.get(state, p)
            if ours is not None and inner.get(p) is not ours:
                inner[p] = ours

    def after_step(self) -> None:
        inner, state = self.inner, self.state
        for p in self.params:
            theirs = inner.get(p)
            if theirs is None:
                continue
            ours = dict.get(state, p)
            if ours is None:
                if theirs:
                    dict.__setitem__(state, p, theirs)
            elif ours is not theirs:  # keep the dict the user may hold
                dict.clear(ours)
                dict.update(ours, theirs)
                inner[p] = ours

    def take(self, param: Tensor) -> None:
        """Nothing to take in: the torch optimizer reads the dict itself."""

    def forget(self, param: Tensor) -> None:
        """No state for ``param`` until a step makes it (torch's class may have made some
        when it was built)."""
        self.inner.pop(param, None)
        dict.pop(self.state, param, None)


class _RuleMirror:
    """Keeps ``optimizer.state[p]`` of each parameter of a :class:`~pyroopt.rule_bucket.RuleBucket`
    a dict of the bucket's own tensors.

    The state tensors are views of the bucket's flat buffers (or, before its first step,
    its loose tensors); a new layout gives new views, and the dicts then point at those.
    A tensor ``step`` is a view of one buffer of step counts per bucket, written after
    every step (the bucket counts in Python ints), and read back when an edit in place
    changed it (its version counter tells).
    """

    def __init__(self, state: _EngineState, bucket: RuleBucket) -> None:
        self.state = state
        self.bucket = bucket
        self.params = list(bucket.params)
        rule = bucket.rule
        self.int_step = rule.saves_step and not rule.step_as_tensor
        self.step_buffer: Tensor | None = None
        self.step_views: list[Tensor] = []
        if rule.saves_step and rule.step_as_tensor:
            self.step_buffer = torch.zeros(len(self.params), dtype=get_scalar_dtype())
            self.step_views = list(self.step_buffer.unbind())
        self.step_version = -1
        #: whether each parameter's dict is complete (its state exists, or it stepped)
        self.made = [False] * len(self.params)
        #: the indices of the parameters whose dict waits for their first step
        self.waiting: list[int] = []
        #: for an int ``step``: the dicts that hold one, and their rows (rebuilt when stale)
        self.step_dicts: list[dict[str, Any]] = []
        self.step_rows: list[int] = []
        self.step_targets_stale = True
        self.token: Tensor | None = None
        self.adopt_all()

    def _token(self) -> Tensor | None:
        """A tensor of the current layout: when it changes, every view has changed."""
        if not self.params:
            return None
        return next(iter(_live_views(self.bucket, self.params[0]).values()), None)

    def _live(self, i: int) -> dict[str, Any]:
        p = self.params[i]
        saved = self.bucket.state_dict(p)["state"].get(0, {})  # which entries, which step
        if not saved:
            return {}
        views = _live_views(self.bucket, p)
        live: dict[str, Any] = {}
        for key, value in saved.items():
            if key in views:
                live[key] = views[key]
            elif key == "step" and self.step_buffer is not None:
                live[key] = self.step_views[i]
            else:
                live[key] = value
        return live

    def _adopt(self, i: int) -> None:
        p, state = self.params[i], self.state
        live = self._live(i)
        ours = dict.get(state, p)
        if isinstance(ours, _ParamState):
            dict.clear(ours)
            dict.update(ours, live)
        elif live or ours is not None:
            dict.__setitem__(state, p, _ParamState(state, p, live))
        self.made[i] = bool(live) or self.bucket.steps[i] > 0
        self.step_targets_stale = True

    def adopt_all(self) -> None:
        self._write_steps()
        for i in range(len(self.params)):
            self._adopt(i)
        self.waiting = [i for i, made in enumerate(self.made) if not made]
        self.token = self._token()

    def forget(self, param: Tensor) -> None:
        """No state for ``param`` until its next step (its bucket state is new)."""
        i = self.bucket.index[id(param)]
        dict.pop(self.state, param, None)
        self.made[i] = False
        self.waiting.append(i)
        self.step_targets_stale = True

    def _write_steps(self) -> None:
        steps = self.bucket.steps
        if self.step_buffer is not None:
            buffer = self.step_buffer
            if steps and steps.count(steps[0]) == len(steps):  # C-level: this is hot
                buffer.fill_(steps[0])
            elif steps:
                buffer.copy_(torch.tensor(steps, dtype=buffer.dtype))
            self.step_version = buffer._version
        elif self.int_step:
            if self.step_targets_stale:
                self._find_step_targets()
            rows = self.step_rows
            values = steps if len(rows) == len(steps) else [steps[i] for i in rows]
            # one C-level loop: a dict write per parameter is this mirror's main cost
            deque(map(dict.__setitem__, self.step_dicts, repeat("step"), values), maxlen=0)

    def _find_step_targets(self) -> None:
        self.step_dicts, self.step_rows = [], []
        for i, (p, made) in enumerate(zip(self.params, self.made, strict=True)):
            ours = dict.get(self.state, p) if made else None
            if ours is not None and "step" in ours:
                self.step_dicts.append(ours)
                self.step_rows.append(i)
        self.step_targets_stale = False

    def before_step(self) -> None:
        """Take in steps edited in place."""
        buffer = self.step_buffer
        if buffer is None or buffer._version == self.step_version:
            return
        counts, steps = buffer.tolist(), self.bucket.steps
        for i, p in enumerate(self.params):
            if self.made[i] and int(counts[i]) != steps[i]:
                self.take(p)
        self.step_version = buffer._version

    def take(self, param: Tensor) -> None:
        """Load ``param``'s dict into the bucket, then point the dict at the bucket's
        tensors again (raises ``ValueError`` naming what a dict lacks)."""
        i = self.bucket.index[id(param)]
        ours = dict.get(self.state, param)
        hyper = _hyper(self.bucket.current_group())
        self.bucket.load_state_dict(param, one_param_state(dict(ours or {}), hyper))
        if self.step_buffer is not None:  # this count only: others may wait to be taken
            self.step_views[i].fill_(self.bucket.steps[i])
        self._adopt(i)

    def after_step(self) -> None:
        moved = self._token() is not self.token
        self._write_steps()
        if moved:
            self.adopt_all()
        elif self.waiting:
            steps = self.bucket.steps
            for i in self.waiting:
                if steps[i] > 0:
                    self._adopt(i)
            self.waiting = [i for i in self.waiting if not self.made[i]]


_Mirror = _TorchMirror | _RuleMirror


class _EngineOptimizer(Optimizer):
    """A torch optimizer class whose :meth:`step` runs on pyroopt's buckets."""

    #: the class whose numbers and state format this one has (what the engine runs)
    _constructor: ClassVar[type[Optimizer]]

    # -- the engine's bookkeeping ----------------------------------------------------
    def _engine_reset(self) -> None:
        self._plans: list[_GroupPlan] = []
        self._where: dict[int, Bucket] = {}
        self._groups_list: list[Group] = self.param_groups
        self._mirrors: list[_Mirror] = []
        self._mirror_of: dict[int, _Mirror] = {}
        self.state = _EngineState(self)  # type: ignore[assignment]

    def _plan(self, index: int, states: dict[Tensor, dict[str, Any]]) -> _GroupPlan:
        plan = _GroupPlan(self._constructor, self.param_groups[index], self._where)
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

    def _remirror(self) -> None:
        """Point ``optimizer.state``'s dicts at the current buckets (after a rebuild)."""
        state = self.state
        assert isinstance(state, _EngineState)
        self._mirrors = []
        self._mirror_of = {}
        for plan in self._plans:
            plan.replaced = False
            for bucket in plan.buckets:
                mirror: _Mirror
                if isinstance(bucket, TorchBucket):
                    mirror = _TorchMirror(state, bucket)
                else:
                    assert isinstance(bucket, RuleBucket)
                    mirror = _RuleMirror(state, bucket)
                self._mirrors.append(mirror)
                self._mirror_of.update(dict.fromkeys(map(id, bucket.params), mirror))

    def _take_edits(self) -> None:
        """Load what was edited in ``optimizer.state`` into the buckets."""
        state = self.state
        if not isinstance(state, _EngineState):
            return
        dirty = state._dirty
        while dirty:
            key, p = next(iter(dirty.items()))
            mirror = self._mirror_of.get(key)
            if mirror is not None:
                mirror.take(p)  # if it raises, this dict and the rest wait for the next try
            del dirty[key]
        for mirror in self._mirrors:
            mirror.before_step()

    def _refresh(self) -> None:
        """Follow the user's edits of ``param_groups`` (new lists, new parameters,
        a new implementation choice) by rebuilding what changed; state carries over."""
        self._take_edits()
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
        self._remirror()

    def _reset(self, param: Tensor) -> None:
        """Forget ``param``'s state (``del optimizer.state[param]``): its next step starts
        it afresh, as torch's class does."""
        bucket = self._where[id(param)]
        bucket.load_state_dict(param, one_param_state({}, _hyper(bucket.current_group())))
        self._mirror_of[id(param)].forget(param)

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
        scaling = self._amp_scaling()
        for plan in self._plans:
            plan.step(scaling)
        if any(plan.replaced for plan in self._plans):
            self._remirror()
        else:
            for mirror in self._mirrors:
                mirror.after_step()
        return loss

    def _amp_scaling(self) -> dict[str, Any]:
        """``GradScaler``'s attributes for this step, checked: only torch's fused
        implementation unscales gradients, so a group that runs anything else refuses
        them (torch's class fails there too), before any parameter changes."""
        scaling = {name: getattr(self, name) for name in AMP_SCALING if hasattr(self, name)}
        if any(v is not None for v in scaling.values()):
            for plan in self._plans:
                if any(not isinstance(b, TorchBucket) for b in plan.buckets) or not plan.group.get(
                    "fused"
                ):
                    raise RuntimeError(
                        f"{type(self).__name__}.step() was given grad_scale/found_inf "
                        "(torch.amp.GradScaler), which only fused=True applies; a param "
                        f"group has fused={plan.group.get('fused')!r}"
                    )
        return scaling

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict (hooks included); its tensors are copies, which later steps
        and edits of ``optimizer.state`` leave as they are."""
        out = super().state_dict()
        out["state"] = {key: _copied(value) for key, value in out["state"].items()}
        return out

    def __getstate__(self) -> dict[str, Any]:
        self._take_edits()
        state: defaultdict[Any, Any] = defaultdict(dict)
        for plan in self._plans:
            state.update(plan.states())
        state.update(self._other_entries(self.state))
        return {"defaults": self.defaults, "state": state, "param_groups": self.param_groups}

    def _other_entries(self, state: dict[Any, Any]) -> dict[Any, Any]:
        """The entries of ``state`` whose keys are not parameters of this optimizer."""
        ours = {id(p) for group in self.param_groups for p in group["params"]}
        return {k: v for k, v in state.items() if not (isinstance(k, Tensor) and id(k) in ours)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # load_state_dict ends here with torch's cast state and new group dicts; so
        # does unpickling. The torch class's own fix-ups run first.
        super().__setstate__(state)
        loaded = dict(self.state.items()) if not isinstance(self.state, _EngineState) else {}
        others = self._other_entries(loaded)
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
                        assert isinstance(bucket, RuleBucket)
                        bucket.follow(group)
                hyper = _hyper(group)
                for p in plan.params_list:
                    if loaded.get(p):
                        self._where[id(p)].load_state_dict(p, one_param_state(loaded[p], hyper))
            self._plans = reusable
        else:
            for plan in old:
                self._forget(plan)
            self._engine_reset()
            self._plans = [self._plan(i, loaded) for i in range(len(self.param_groups))]
        dict.update(self.state, others)
        self._remirror()

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


def _copied(value: Any) -> Any:
    """A parameter's state with its tensors copied (other values as they are)."""
    if not isinstance(value, dict):
        return value
    return {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in value.items()}


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
