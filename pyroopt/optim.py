"""PyroOptim: pyro.optim's optimizer wrapper, with every parameter stepped together."""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import pyro
import pyro.optim
import torch
from pyro.params.param_store import (
    module_from_param_with_module_name,
    normalize_param_name,
    user_param_name,
)
from torch import Tensor

from pyroopt import checkpoint
from pyroopt.clip import (
    clip_global_norm_,
    clip_norms_,
    clip_values_,
    grad_norms,
    validate_clip_args,
)
from pyroopt.engine import Bucket, Group, bucket_key, full_group, make_bucket

ArgsSpec = dict[str, Any] | Callable[..., dict[str, Any]]


def is_scheduler(optimizer: Any) -> bool:
    """Whether ``optimizer`` is a learning-rate scheduler (it wraps an ``.optimizer``).

    Duck-typed like pyro.optim's, since torch has no public base for all schedulers.
    """
    return hasattr(optimizer, "optimizer")


def _arity(fn: Callable[..., Any], what: str) -> int:
    try:
        n = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot inspect the signature of {what} {fn!r}") from e
    if n not in (1, 2):
        raise TypeError(
            f"{what} must take one argument (the parameter name, e.g. 'loc.weight') or two "
            f"(module_name, param_name); {fn!r} takes {n}"
        )
    return n


class _Slot:
    """What the optimizer knows of one parameter."""

    __slots__ = ("bucket", "clip", "name", "param")

    def __init__(
        self, param: Tensor, name: str | None, bucket: Bucket, clip: dict[str, float]
    ) -> None:
        self.param = param
        self.name = name
        self.bucket = bucket
        self.clip = clip


def _all_finite(slots: list[_Slot]) -> bool:
    """Whether every gradient of ``slots`` is free of NaN and Inf (one sync)."""
    grads = [g for s in slots if (g := s.param.grad) is not None and g.numel()]
    if not grads:
        return True
    # The max-norm cannot overflow for finite values, and is NaN or Inf otherwise.
    norms = torch._foreach_norm(grads, float("inf"))
    return bool(torch.stack(list(norms)).isfinite().all())


class _Plan(NamedTuple):
    """How one call's parameters are stepped: see :meth:`PyroOptim._make_plan`."""

    ids: frozenset[int]
    layout: int
    slots: list[_Slot]
    clipped: list[_Slot]  # the slots with per-parameter clip arguments
    steps: list[tuple[Bucket, list[Tensor]]]


class PyroOptim(pyro.optim.PyroOptim):
    """A drop-in :class:`pyro.optim.PyroOptim` that steps all parameters together.

    Parameters are discovered lazily from the ``params`` passed to each call, exactly
    as in pyro.optim; each gets the hyperparameters ``optim_args`` gives it, and those
    that share constructor, hyperparameters, device and dtype form one bucket stepped
    in a single pass (see :mod:`pyroopt.engine`). Each parameter keeps its own step
    count and state, so the numbers are pyro.optim's.

    :param optim_constructor: a :class:`torch.optim.Optimizer` class (or any callable
        ``(params, **args) -> Optimizer``).
    :param optim_args: a dict of hyperparameters, or a callable returning one per
        parameter. A one-argument callable receives the parameter's name normalized as
        in ``nn.Module.named_parameters()`` (``"loc.weight"``); a two-argument callable
        receives ``(module_name, param_name)`` (deprecated, warns).
    :param clip_args: ``clip_norm`` and/or ``clip_value`` for each parameter's own
        gradient (norm first, then value), as a dict or a callable like ``optim_args``;
        a dict may also hold ``clip_global_norm``, the bound on the joint norm of all
        gradients of a step, applied after the per-parameter clipping.
    :param track_grad_norms: record each gradient's norm (before clipping) on every
        step for :meth:`grad_norms`; always on when clipping by norm.
    :param skip_nonfinite: when any gradient of a step holds NaN or Inf, skip the whole
        step (parameters and state stay as they are), count it in ``skipped_steps`` and
        warn once. Also accepted as ``clip_args={"skip_nonfinite": True}``. Off by
        default, which keeps pyro.optim's numbers (NaN flows into the parameters).

    Example::

        >>> import pyro, torch, pyroopt
        >>> pyro.clear_param_store()
        >>> x = pyro.param("x", torch.ones(3))
        >>> optim = pyroopt.PyroOptim(torch.optim.Adam, {"lr": 0.1})
        >>> x.unconstrained().grad = torch.ones(3)
        >>> optim([x.unconstrained()])
        >>> pyro.param("x")
        tensor([0.9000, 0.9000, 0.9000], requires_grad=True)
    """

    def __init__(
        self,
        optim_constructor: Callable[..., torch.optim.Optimizer],
        optim_args: ArgsSpec,
        clip_args: ArgsSpec | None = None,
        *,
        track_grad_norms: bool = False,
        skip_nonfinite: bool = False,
    ) -> None:
        # pyro.optim.PyroOptim.__init__ is deliberately not called: this class replaces
        # all of its behaviour and only inherits so that SVI's isinstance check passes.
        if not callable(optim_constructor):
            raise TypeError(
                f"optim_constructor must be a torch.optim.Optimizer class or a callable "
                f"returning an optimizer, got {optim_constructor!r}"
            )
        if not (callable(optim_args) or isinstance(optim_args, dict)):
            raise TypeError(
                "optim_args must be a dict of hyperparameters or a callable returning one, "
                f"got {type(optim_args).__name__}: {optim_args!r}"
            )
        if clip_args is None:
            clip_args = {}
        if not (callable(clip_args) or isinstance(clip_args, dict)):
            raise TypeError(
                "clip_args must be a dict or a callable returning one, "
                f"got {type(clip_args).__name__}: {clip_args!r}"
            )
        self.pt_optim_constructor = optim_constructor
        self._constructor = optim_constructor
        self.pt_optim_args = optim_args
        self.pt_clip_args = clip_args
        self._optim_arity = 0
        if callable(optim_args):
            self._optim_arity = self.pt_optim_args_argc = _arity(optim_args, "optim_args")
            if self._optim_arity == 2:
                warnings.warn(
                    "a two-argument optim_args callable (module_name, param_name) is "
                    "deprecated; take one argument, the normalized parameter name",
                    FutureWarning,
                    stacklevel=2,
                )
        self._clip_arity = _arity(clip_args, "clip_args") if callable(clip_args) else 0
        self._global_clip: float | None = None
        if isinstance(clip_args, dict):
            skip = clip_args.get("skip_nonfinite", False)
            if not isinstance(skip, bool):
                raise TypeError(f"clip_args['skip_nonfinite'] must be True or False, got {skip!r}")
            skip_nonfinite = skip_nonfinite or skip
            clip_args = {k: v for k, v in clip_args.items() if k != "skip_nonfinite"}
            clean = validate_clip_args(clip_args, allow_global=True, where="clip_args")
            self._global_clip = clean.pop("clip_global_norm", None)
            self._dict_clip = clean
        self.track_grad_norms = bool(track_grad_norms)
        self.skip_nonfinite = bool(skip_nonfinite)
        #: how many steps ``skip_nonfinite`` has skipped
        self.skipped_steps = 0

        # Keyed by id(param): Tensor.__hash__ is a Python call, id() is not, and the slot
        # holds the tensor, so its id cannot be reused while the entry exists.
        self._slots: dict[int, _Slot] = {}
        self._buckets: list[Bucket] = []  # in creation order, which is stepping order
        self._fresh: dict[Hashable, Bucket] = {}  # buckets new parameters may join, by key
        self._state_waiting_to_be_consumed: dict[str, Any] = {}
        self._layout = 0  # bumped whenever a parameter joins, leaves or changes bucket
        self._plan: _Plan | None = None
        self._last_norms: dict[int, Tensor] = {}
        self._last_global_norm: Tensor | None = None

    # -- stepping ---------------------------------------------------------------------
    def __call__(self, params: Iterable[Tensor], *args: Any, **kwargs: Any) -> None:
        """Step every parameter in ``params`` that has a gradient.

        Parameters seen for the first time get their optimizer state now (and any state
        waiting for their name from :meth:`set_state` / :meth:`load`). Extra arguments
        go to the underlying optimizer's ``step``.
        """
        if isinstance(params, Tensor) or not isinstance(params, Iterable):
            raise TypeError(
                f"params must be an iterable of tensors (e.g. a list or set), got "
                f"{type(params).__name__}"
            )
        params = list(params)
        ids = frozenset(map(id, params))
        plan = self._plan
        if plan is None or plan.ids != ids or plan.layout != self._layout:
            plan = self._plan = self._make_plan(params, ids)
        if args or kwargs:
            for bucket, _ in plan.steps:
                bucket.check_step_args(args, kwargs)
        if self.skip_nonfinite and not _all_finite(plan.slots):
            self._skip_step()
            return
        self._clip(plan)
        for bucket, bucket_params in plan.steps:
            bucket.step(bucket_params, *args, **kwargs)
            if bucket.fresh and bucket.advances_group():
                bucket.fresh = False  # its lr moved: a new parameter would start afresh

    def _skip_step(self) -> None:
        self.skipped_steps += 1
        if self.skipped_steps == 1:
            warnings.warn(
                "pyroopt skipped an optimizer step because a gradient held NaN or Inf "
                "(skip_nonfinite=True); parameters and optimizer state are unchanged. "
                "Further skips are counted in .skipped_steps without a warning.",
                RuntimeWarning,
                stacklevel=3,
            )

    def _make_plan(self, params: list[Tensor], ids: frozenset[int]) -> _Plan:
        """Which buckets step which parameters, for a call passing ``params``.

        SVI passes the same parameters on every step, so the plan is kept and reused
        while neither the set of parameters nor the buckets change.
        """
        if len(ids) != len(params):
            params = list({id(p): p for p in params}.values())  # each parameter steps once
        slots = self._slots
        stepped: list[_Slot] = []
        new = []
        for p in params:
            slot = slots.get(id(p))
            if slot is None:
                self._check_new_param(p)
                new.append(p)
            else:
                stepped.append(slot)
        # Every new parameter is placed only once all of them passed their checks.
        stepped.extend(self._discover(p) for p in new)
        members: dict[Bucket, list[Tensor]] = {}
        for slot in stepped:
            members.setdefault(slot.bucket, []).append(slot.param)
        for bucket, bucket_params in list(members.items()):
            if len(bucket_params) < len(bucket.params) and bucket.advances_group():
                members[self._split(bucket, bucket_params)] = members.pop(bucket)
        steps = [(b, b.order(members[b])) for b in self._buckets if b in members]
        clipped = [slot for slot in stepped if slot.clip]
        return _Plan(ids, self._layout, stepped, clipped, steps)

    @staticmethod
    def _check_new_param(p: Any) -> None:
        if not isinstance(p, Tensor):
            raise TypeError(f"params must hold tensors, got {type(p).__name__}: {p!r}")
        if not (p.is_floating_point() or p.is_complex()):
            raise TypeError(f"can only optimize floating point or complex tensors, got {p.dtype}")
        if not p.is_leaf:
            raise ValueError(
                f"can only optimize leaf tensors; got a non-leaf tensor of shape "
                f"{tuple(p.shape)} (use the unconstrained parameter, e.g. "
                f"pyro.param(name).unconstrained())"
            )

    def _discover(self, p: Tensor) -> _Slot:
        name = pyro.get_param_store().param_name(p)
        waiting = self._state_waiting_to_be_consumed.get(name) if name is not None else None
        bucket = self._place(p, name, waiting)
        if waiting is not None:
            del self._state_waiting_to_be_consumed[name]  # type: ignore[arg-type]
        slot = self._slots[id(p)] = _Slot(p, name, bucket, self._clip_args_for(p, name))
        return slot

    def _place(self, p: Tensor, name: str | None, state: Any) -> Bucket:
        """Put ``p`` in the bucket its hyperparameters (or its saved state's) call for.

        A parameter joins only a *fresh* bucket: one whose hyperparameters (and, under a
        schedule, whose schedule) have not moved since it was made, so that joining it
        is the same as pyro.optim giving the parameter an optimizer of its own.
        """
        group = full_group(self._constructor, self._optim_args_for(name), p)
        saved_group = None
        if state is not None:
            saved_group = self._saved_group(name, group, self._optimizer_state(state))
            group.update(saved_group)
        key = (bucket_key(self._constructor, group, p), self._cohort(state))
        bucket = self._fresh.get(key)
        created = bucket is None or not bucket.fresh or not bucket.params
        if created:
            bucket = make_bucket(self._constructor, group, p)
        assert bucket is not None
        self._layout += 1
        bucket.add(p)
        try:
            if created:
                self._attach(bucket, state)
                if saved_group is not None:
                    bucket.restore_group(saved_group)  # a schedule's first step moved lr
            if state is not None:
                bucket.load_state_dict(p, self._optimizer_state(state))
        except ValueError as e:
            bucket.remove(p)
            raise ValueError(f"optimizer state of {name!r}: {e}") from None
        except Exception:
            bucket.remove(p)
            raise
        if created:
            self._buckets.append(bucket)
            self._fresh[key] = bucket
        return bucket

    def _saved_group(self, name: str | None, group: Group, state: Mapping[str, Any]) -> Group:
        """The hyperparameters in a saved per-parameter state, checked against ``group``.

        Saved values win, as in torch's ``load_state_dict`` (a schedule or ClippedAdam's
        ``lrd`` may have moved ``lr``); keys the file lacks keep their defaults.
        """
        saved = {k: v for k, v in state["param_groups"][0].items() if k != "params"}
        foreign = sorted(set(saved) - set(group) - self._group_keys_added)
        if foreign:
            raise ValueError(
                f"the saved state of {name!r} has hyperparameters {foreign} that "
                f"{getattr(self.pt_optim_constructor, '__name__', 'this optimizer')} does "
                "not take: it was saved by a different optimizer"
            )
        return saved

    # Hooks that PyroLRScheduler fills in: what a saved entry holds, which parameters
    # may share a bucket, and what a new bucket needs beside its optimizer.
    def _check_state(self, name: Any, state: Any, where: str) -> None:
        checkpoint.check_param_state(name, state, where)

    #: hyperparameters a saved group may hold beyond the optimizer's own
    _group_keys_added: frozenset[str] = frozenset()

    def _optimizer_state(self, state: Mapping[str, Any]) -> Mapping[str, Any]:
        return state

    def _cohort(self, state: Any) -> Hashable:
        return None

    def _attach(self, bucket: Bucket, state: Any) -> None:
        return None

    def _copy_attachment(self, source: Bucket, target: Bucket) -> None:
        return None

    def _split(self, bucket: Bucket, params: list[Tensor]) -> Bucket:
        """Move ``params`` out of ``bucket`` into a new bucket with the same hyperparameters.

        Needed before a step that changes the hyperparameters of only the parameters it
        steps (ClippedAdam's ``lrd``): pyro.optim decays each parameter's lr on its own.
        """
        self._layout += 1
        group = dict(bucket.current_group())
        moved = make_bucket(self._constructor, group, params[0])
        for p in params:
            state = bucket.state_dict(p)
            bucket.remove(p)
            moved.add(p)
            moved.load_state_dict(p, state)
            self._slots[id(p)].bucket = moved
        self._copy_attachment(bucket, moved)
        moved.restore_group(group)
        moved.fresh = False
        self._buckets.insert(self._buckets.index(bucket) + 1, moved)
        return moved

    def _call_per_param(
        self, fn: Callable[..., Any], arity: int, name: str | None, what: str
    ) -> Any:
        if name is None:
            raise ValueError(
                f"callable {what} needs the parameter's name, but a tensor passed to the "
                "optimizer is not in Pyro's param store"
            )
        if arity == 1:
            result = fn(normalize_param_name(name))
        else:
            result = fn(module_from_param_with_module_name(name), user_param_name(name))
        if not isinstance(result, dict):
            raise TypeError(
                f"{what} must return a dict for each parameter; for {name!r} it returned "
                f"{type(result).__name__}: {result!r}"
            )
        return result

    def _optim_args_for(self, name: str | None) -> dict[str, Any]:
        if callable(self.pt_optim_args):
            return self._call_per_param(self.pt_optim_args, self._optim_arity, name, "optim_args")
        return self.pt_optim_args

    def _clip_args_for(self, p: Tensor, name: str | None) -> dict[str, float]:
        if not callable(self.pt_clip_args):
            return self._dict_clip
        result = self._call_per_param(self.pt_clip_args, self._clip_arity, name, "clip_args")
        return validate_clip_args(result, allow_global=False, where=f"clip_args for {name!r}")

    def _clip(self, plan: _Plan) -> None:
        need_norms = self.track_grad_norms
        if not (need_norms or plan.clipped or self._global_clip is not None):
            return
        stepped = plan.slots
        norm_clip: list[tuple[Tensor, float]] = []
        value_clip: list[tuple[Tensor, float]] = []
        for slot in plan.clipped:
            clip = slot.clip
            if slot.param.grad is not None:
                if "clip_norm" in clip:
                    norm_clip.append((slot.param, clip["clip_norm"]))
                if "clip_value" in clip:
                    value_clip.append((slot.param, clip["clip_value"]))
        if not (need_norms or norm_clip or value_clip or self._global_clip is not None):
            return
        with_grad = [s.param for s in stepped if s.param.grad is not None]
        if need_norms or norm_clip:
            norms = grad_norms([p.grad for p in with_grad])  # type: ignore[misc]
            self._last_norms = {id(p): n for p, n in zip(with_grad, norms, strict=True)}
        if norm_clip:
            clip_norms_(
                [p.grad for p, _ in norm_clip],  # type: ignore[misc]
                [self._last_norms[id(p)] for p, _ in norm_clip],
                [c for _, c in norm_clip],
            )
        if value_clip:
            clip_values_([p.grad for p, _ in value_clip], [c for _, c in value_clip])  # type: ignore[misc]
        if self._global_clip is not None:
            self._last_global_norm = clip_global_norm_(
                [p.grad for p in with_grad],  # type: ignore[misc]
                self._global_clip,
            )

    # -- reading ----------------------------------------------------------------------
    @property  # type: ignore[override]
    def optim_objs(self) -> Mapping[Tensor, Any]:
        """Maps each parameter seen so far to an optimizer-like view of its state."""
        return _OptimObjs(self)

    @optim_objs.setter
    def optim_objs(self, value: Any) -> None:
        raise AttributeError("optim_objs is read-only in pyroopt")

    def _view(self, slot: _Slot) -> Any:
        """What ``optim_objs[param]`` answers for one parameter."""
        return _ParamOptimizerView(slot.bucket, slot.param)

    def learning_rates(self) -> dict[str, float]:
        """The current learning rate of every parameter seen so far, by name."""
        return {
            slot.name: slot.bucket.lr(slot.param)
            for slot in self._slots.values()
            if slot.name is not None
        }

    def grad_norms(self) -> dict[str, float]:
        """Each parameter's gradient norm at the last step, before clipping, by name.

        Recorded when ``track_grad_norms=True`` or when clipping by norm.
        """
        if not self._last_norms and not (self.track_grad_norms or self._uses_norm_clip()):
            raise RuntimeError(
                "gradient norms are recorded only with track_grad_norms=True or clip_norm"
            )
        return {
            self._slots[key].name: float(n)  # type: ignore[misc]
            for key, n in self._last_norms.items()
            if self._slots[key].name is not None
        }

    def global_grad_norm(self) -> float | None:
        """The joint gradient norm of the last step before ``clip_global_norm``, if used."""
        return None if self._last_global_norm is None else float(self._last_global_norm)

    def _uses_norm_clip(self) -> bool:
        return any("clip_norm" in s.clip for s in self._slots.values())

    # -- state ------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """``{param_name: per-parameter optimizer state dict}``, as pyro.optim gives it.

        Unlike pyro.optim, the values are snapshots (later steps do not change them),
        and state loaded for parameters not seen yet is included, so saving right
        after loading loses nothing.
        """
        state: dict[str, Any] = dict(self._state_waiting_to_be_consumed)
        for slot in self._slots.values():
            if slot.name is not None:
                state[slot.name] = slot.bucket.state_dict(slot.param)
        return state

    def set_state(self, state_dict: Mapping[str, Any]) -> None:
        """Set state from :meth:`get_state` (or pyro.optim's ``get_state``).

        State for a parameter already seen is applied now; the rest waits until its
        parameter first appears.
        """
        self._set_state(state_dict, "state_dict")

    def _set_state(self, state_dict: Mapping[str, Any], where: str) -> None:
        """:meth:`set_state`, naming ``where`` the state came from in errors.

        All or nothing: if any entry cannot be applied, every parameter already moved
        goes back to its bucket and state, and nothing is left waiting.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                "state_dict must be a dict of {param_name: state}, got "
                f"{type(state_dict).__name__}"
            )
        for name, state in state_dict.items():
            self._check_state(name, state, where)
        by_name = {slot.name: slot for slot in self._slots.values() if slot.name is not None}
        undo: list[tuple[_Slot, Bucket, dict[str, Any]]] = []
        try:
            for name, state in state_dict.items():
                slot = by_name.get(name)
                if slot is None:
                    continue
                p, old = slot.param, slot.bucket
                undo.append((slot, old, old.state_dict(p)))
                self._layout += 1
                old.remove(p)
                slot.bucket = self._place(p, name, state)
        except Exception:
            for slot, old, snapshot in reversed(undo):
                if slot.bucket is not old:
                    slot.bucket.remove(slot.param)
                old.add(slot.param)
                old.load_state_dict(slot.param, snapshot)
                slot.bucket = old
            self._drop_empty_buckets()
            raise
        self._state_waiting_to_be_consumed.update(
            {name: state for name, state in state_dict.items() if name not in by_name}
        )
        self._drop_empty_buckets()

    def _drop_empty_buckets(self) -> None:
        self._buckets = [b for b in self._buckets if b.params]

    def save(self, filename: str | os.PathLike[str]) -> None:
        """Write :meth:`get_state` to ``filename`` in pyro.optim's format, atomically.

        A crash at any moment leaves the old file or the new one, never a torn one. The
        file also records pyroopt's version and checkpoint format.
        """
        checkpoint.save_state(self.get_state(), filename)

    def load(
        self,
        filename: str | os.PathLike[str],
        map_location: Any = None,
        *,
        weights_only: bool = True,
    ) -> None:
        """Read a file written by :meth:`save` or by pyro.optim and :meth:`set_state` it.

        Loads with ``torch.load(weights_only=True)``: the file cannot run code.
        ``weights_only=False`` unpickles arbitrary objects, which can run any code the
        file names: use it only for files you trust.
        """
        path = os.fspath(filename)
        state = checkpoint.load_state(path, map_location=map_location, weights_only=weights_only)
        self._set_state(state, path)


class _OptimObjs(Mapping[Tensor, Any]):
    def __init__(self, optim: PyroOptim) -> None:
        self._optim = optim

    def __getitem__(self, param: Tensor) -> Any:
        return self._optim._view(self._optim._slots[id(param)])

    def __iter__(self) -> Iterator[Tensor]:
        return (slot.param for slot in self._optim._slots.values())

    def __len__(self) -> int:
        return len(self._optim._slots)


class _ParamOptimizerView:
    """One parameter's optimizer, as pyro.optim users reach into ``optim_objs[p]``."""

    def __init__(self, bucket: Bucket, param: Tensor) -> None:
        self._bucket = bucket
        self._param = param

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
        self._bucket.load_state_dict(self._param, state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if set_to_none:
            self._param.grad = None
        elif self._param.grad is not None:
            self._param.grad.detach_().zero_()

    def step(self, *args: Any, **kwargs: Any) -> None:
        self._bucket.step([self._param], *args, **kwargs)
