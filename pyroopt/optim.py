"""PyroOptim: pyro.optim's optimizer wrapper, with every parameter stepped together."""

from __future__ import annotations

import inspect
import operator
import os
import threading
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
from pyroopt._compat import moved_in_store
from pyroopt.clip import (
    clip_global_norm_,
    clip_norms_,
    clip_values_,
    grad_norms,
    validate_clip_args,
)
from pyroopt.engine import (
    Bucket,
    Group,
    SparseGradients,
    TorchBucket,
    bucket_key,
    full_group,
    make_bucket,
)
from pyroopt.params import ParamTable, Slot

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


def _same_tensors(a: list[Tensor], b: list[Tensor]) -> bool:
    """Whether ``a`` and ``b`` hold the same tensor objects in the same order (in C)."""
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _all_finite(slots: list[Slot]) -> bool:
    """Whether every gradient of ``slots`` is free of NaN and Inf (one sync)."""
    grads = [_values(g) for s in slots if (g := s.param.grad) is not None and g.numel()]
    grads = [g for g in grads if g.numel()]
    if not grads:
        return True
    # The max-norm cannot overflow for finite values, and is NaN or Inf otherwise.
    by_device: dict[torch.device, list[Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    return all(
        bool(torch.stack(list(torch._foreach_norm(group, float("inf")))).isfinite().all())
        for group in by_device.values()
    )


def _values(grad: Tensor) -> Tensor:
    """The stored values of a gradient: a sparse one's non-zeros, else itself."""
    return grad._values() if grad.is_sparse else grad


def _extent(t: Tensor) -> tuple[int, int, int]:
    """``(storage, first byte, end byte)`` of the memory ``t`` can reach."""
    size = t.element_size()
    reach = sum((int(n) - 1) * abs(st) for n, st in zip(t.shape, t.stride(), strict=True)) + 1
    start = int(t.storage_offset()) * size
    return t.untyped_storage().data_ptr(), start, start + reach * size


def _overlapping(params: list[Tensor]) -> set[int]:
    """The ids of ``params`` whose memory overlaps another one's (views of one tensor)."""
    spans = sorted((*_extent(p), id(p)) for p in params if p.numel())
    found: set[int] = set()
    reach_storage, reach_end, reach_id = None, 0, 0
    for storage, start, end, key in spans:
        if storage == reach_storage and start < reach_end:
            found.update((key, reach_id))
        if storage != reach_storage or end > reach_end:
            reach_storage, reach_end, reach_id = storage, end, key
    return found


class _Plan(NamedTuple):
    """How one call's parameters are stepped: see :meth:`PyroOptim._make_plan`."""

    ids: frozenset[int]
    given: list[Tensor]  # the parameters of the last call it held for, in that call's order
    layout: int
    slots: list[Slot]  # in table order
    clipped: list[Slot]  # the slots with per-parameter clip arguments
    steps: list[tuple[Bucket, list[Tensor]]]
    params: list[Tensor]  # of ``slots``, with their data pointers at the end of the last call
    pointers: list[int]


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
        receives ``(module_name, param_name)`` (pyro's older form).
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
            # pyro.optim takes a two-argument (module_name, param_name) callable without a
            # warning (scvi-tools passes one), so pyroopt does too
            self._optim_arity = self.pt_optim_args_argc = _arity(optim_args, "optim_args")
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

        self._table = ParamTable()
        self._buckets: list[Bucket] = []  # in creation order, which is stepping order
        self._fresh: dict[Hashable, Bucket] = {}  # buckets new parameters may join, by key
        self._state_waiting_to_be_consumed: dict[str, Any] = {}
        #: where each name's loaded state came from (a file, or "state_dict"), for errors
        self._state_origin: dict[str, str] = {}
        self._layout = 0  # bumped whenever a parameter joins, leaves or changes bucket
        self._plan: _Plan | None = None
        self._last_norms: dict[int, Tensor] = {}
        self._last_global_norm: Tensor | None = None
        # One call at a time: calls from several threads run as if made one by one.
        self._lock = threading.RLock()

    # -- copying ----------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """What ``copy.deepcopy`` and pickle copy: everything but the lock and the plan
        (both are made anew)."""
        with self._lock:
            state = dict(self.__dict__)
        del state["_lock"]
        state["_plan"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        # Tables are indexed by ``id``, which a copy does not keep.
        moved = self._table.rekey()
        self._last_norms = {moved[k]: n for k, n in self._last_norms.items() if k in moved}
        for bucket in self._buckets:
            bucket.rekey()

    # -- stepping ---------------------------------------------------------------------
    def __call__(self, params: Iterable[Tensor], *args: Any, **kwargs: Any) -> None:
        """Step every parameter in ``params`` that has a gradient.

        Parameters seen for the first time get their optimizer state now (and any state
        waiting for their name from :meth:`set_state` / :meth:`load`). Extra arguments
        go to the underlying optimizer's ``step``. Calls from several threads are run
        one after another.
        """
        if isinstance(params, Tensor) or not isinstance(params, Iterable):
            raise TypeError(
                f"params must be an iterable of tensors (e.g. a list or set), got "
                f"{type(params).__name__}"
            )
        params = list(params)
        with self._lock:
            self._step(params, args, kwargs)

    def _step(self, params: list[Tensor], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        plan = self._plan
        # The same tensors as the last call in the same order (SVI's set of the same
        # parameters iterates alike every step): no set of ids to build and compare.
        repeated = plan is not None and _same_tensors(params, plan.given)
        ids = plan.ids if repeated else frozenset(map(id, params))  # type: ignore[union-attr]
        # Whether the last call's plan holds, every parameter still in the storage it had
        # at the end of that call.
        unchanged = (
            plan is not None
            and (repeated or plan.ids == ids)
            and plan.layout == self._layout
            # new storage (``Module.to``, ``param.data = ...``): dtype or device may differ
            and list(map(Tensor.data_ptr, plan.params)) == plan.pointers
        )
        if plan is None or not unchanged:
            plan = self._plan = self._make_plan(params, ids)
        elif not repeated:
            plan = self._plan = plan._replace(given=params)
        clipping = bool(plan.clipped) or self._global_clip is not None
        # Check, then change: every bucket checks its inputs before any is clipped or
        # stepped. Sparse gradients that torch's own optimizer steps move their
        # parameters to one (placement only: state goes with them) and the call is
        # planned again.
        while True:
            try:
                for bucket, bucket_params in plan.steps:
                    if args or kwargs:
                        bucket.check_step_args(args, kwargs)
                    bucket.storage_unchanged = unchanged
                    bucket.check(bucket_params, gather=not clipping)
                break
            except SparseGradients as sparse:
                self._to_torch(sparse.params)
                unchanged = False
                plan = self._plan = self._make_plan(params, ids)
        if self.skip_nonfinite and not _all_finite(plan.slots):
            self._skip_step()
            return
        self._clip(plan)
        for bucket, bucket_params in plan.steps:
            bucket.step(bucket_params, *args, **kwargs)
            # New parameters may join a stepped bucket while its hyperparameters are
            # still the ones a new parameter gets (each member keeps its own step count
            # and state): not once a step moves them (ClippedAdam's ``lrd``, fused SGD's
            # shared first step); a schedule marks its own steps (PyroLRScheduler).
            if bucket.advances_group():
                bucket.fresh = False
        if not unchanged:  # a first step seats parameters in flat buffers: new pointers
            self._plan = plan._replace(pointers=list(map(Tensor.data_ptr, plan.params)))

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
        while neither the set of parameters, nor the buckets, nor any parameter's
        storage change. Making one also takes in new parameters, retires those that
        left the param store or whose name now holds another tensor, and moves those
        whose dtype or device changed, or whose memory overlaps another's.
        """
        if len(ids) != len(params):
            params = list({id(p): p for p in params}.values())  # each parameter steps once
        table = self._table
        new, reshaped = [], []
        for p in params:
            slot = table.get(p)
            if slot is None:
                self._check_new_param(p)
                new.append(p)
            elif p.shape != slot.bucket.shape_of(p):
                self._check_reshaped(slot)
                reshaped.append(slot)
        # Every check passed: from here on the call changes things.
        for slot in reshaped:
            self._rehome(slot)
        if new:
            self._retire_stale(ids)
            store = pyro.get_param_store()
            named = sorted(
                ((store.param_name(p), i, p) for i, p in enumerate(new)),
                key=lambda item: (item[0] is None, item[0] or "", item[1]),
            )
            # Every new parameter is placed only once all of them passed their checks.
            for name, _, p in named:
                self._discover(p, name, ids)
        stepped: list[Slot] = sorted(map(table.get, params), key=_slot_order)  # type: ignore[arg-type]
        for slot in stepped:
            bucket = slot.bucket
            if slot.param.dtype != bucket.dtype or slot.param.device != bucket.device:
                self._rehome(slot)
        overlapping = _overlapping([slot.param for slot in stepped])
        for slot in stepped:
            if id(slot.param) in overlapping and len(slot.bucket.params) > 1:
                self._rehome(slot, alone=True)
        members: dict[Bucket, list[Tensor]] = {}
        for slot in stepped:
            members.setdefault(slot.bucket, []).append(slot.param)
        # Buckets step in the order of their first parameter in table order.
        steps = []
        for bucket, bucket_params in members.items():
            if len(bucket_params) < len(bucket.params) and bucket.advances_group():
                bucket = self._split(bucket, bucket_params)
            steps.append((bucket, bucket.order(bucket_params)))
        clipped = [slot for slot in stepped if slot.clip]
        planned = [slot.param for slot in stepped]
        pointers = list(map(Tensor.data_ptr, planned))
        return _Plan(ids, params, self._layout, stepped, clipped, steps, planned, pointers)

    def _retire_stale(self, keep: frozenset[int]) -> None:
        """Forget parameters that left Pyro's param store (and are not being stepped).

        A name that now holds another tensor (``clear_param_store``, ``param_store.load``
        or ``del store[name]``, then ``pyro.param(name, ...)``) retires its old tensor,
        which leaves its bucket and buffers, so memory and cost follow the live
        parameters and not everything ever seen.
        """
        table = self._table
        # mostly in C: a table of thousands (a new site every step) stays cheap
        moved = moved_in_store(pyro.get_param_store(), table.named_params())
        slots = [table.by_name(name) for name in moved]
        stale = [slot for slot in slots if id(slot.param) not in keep]
        for slot in sorted(stale, key=_slot_order):
            self._retire(slot)

    def _retire(self, slot: Slot) -> None:
        self._layout += 1
        self._table.remove(slot)
        slot.bucket.remove(slot.param)
        self._last_norms.pop(id(slot.param), None)
        self._drop_empty_buckets()

    def _rehome(self, slot: Slot, *, alone: bool = False) -> None:
        """Move ``slot`` to the bucket its tensor's dtype and device call for, or to a
        bucket of its own (``alone``), with its state (cast as torch casts loaded state)."""
        state = self._param_state(slot)
        self._layout += 1
        slot.bucket.remove(slot.param)
        slot.bucket = self._place(slot.param, slot.name, state, sort_key=slot.sort_key, alone=alone)
        self._drop_empty_buckets()

    def _to_torch(self, params: list[Tensor]) -> None:
        """Hand ``params`` (with sparse gradients) to one torch optimizer of their kind,
        whose own implementation then steps them (torch's SGD and Adagrad take sparse
        gradients; the others raise torch's error)."""
        for p in params:
            slot = self._table.get(p)
            assert slot is not None
            state = self._param_state(slot)
            self._layout += 1
            slot.bucket.remove(p)
            slot.bucket = self._place(p, slot.name, state, sort_key=slot.sort_key, torch_only=True)
        self._drop_empty_buckets()

    def _param_state(self, slot: Slot) -> Any:
        """``slot``'s entry of :meth:`get_state`."""
        return slot.bucket.state_dict(slot.param)

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

    def _check_reshaped(self, slot: Slot) -> None:
        """Raise unless ``slot``'s parameter, which changed shape, may go on as pyro.optim
        lets it: without state of the old shape (never stepped, or a stateless rule such
        as SGD without momentum, whose torch optimizer steps any shape)."""
        p = slot.param
        old = slot.bucket.shape_of(p)
        state = self._param_state(slot)["state"].get(0, {})
        shaped = sorted(
            k for k, v in state.items() if isinstance(v, Tensor) and tuple(v.shape) == tuple(old)
        )
        if shaped:
            name = repr(slot.name) if slot.name is not None else "an unnamed parameter"
            raise RuntimeError(
                f"parameter {name} changed shape from {tuple(old)} to {tuple(p.shape)}, but "
                f"its optimizer state {shaped} has the old shape (pyro.optim's torch "
                "optimizer refuses such a step too); give the new tensor a new name, or "
                "set its state anew (set_state), before stepping it"
            )

    def _discover(self, p: Tensor, name: str | None, stepping: frozenset[int]) -> Slot:
        """Take in ``p``, a tensor seen for the first time, named ``name`` in the store.

        The name's old tensor, if any, is retired; if it is being stepped in this very
        call (``stepping`` holds its id), it goes on as an unnamed parameter instead.
        """
        if name is not None:
            old = self._table.named(name)
            if old is not None and id(old.param) in stepping:
                self._table.unname(old)
            elif old is not None:  # the name holds a new tensor: the old one is gone
                self._retire(old)
        waiting = self._state_waiting_to_be_consumed.get(name) if name is not None else None
        slot = Slot(p, name, None, self._clip_args_for(p, name))
        self._table.add(slot)
        try:
            slot.bucket = self._place(p, name, waiting, sort_key=slot.sort_key)
        except BaseException:
            self._table.remove(slot)
            raise
        if waiting is not None:
            del self._state_waiting_to_be_consumed[name]  # type: ignore[arg-type]
        return slot

    def _place(
        self,
        p: Tensor,
        name: str | None,
        state: Any,
        *,
        sort_key: Any = None,
        alone: bool = False,
        torch_only: bool = False,
    ) -> Bucket:
        """Put ``p`` in the bucket its hyperparameters (or its saved state's) call for.

        A parameter joins only a *fresh* bucket: one whose hyperparameters (and, under a
        schedule, whose schedule) have not moved since it was made, so that joining it
        is the same as pyro.optim giving the parameter an optimizer of its own.
        ``alone`` makes a bucket that no other parameter joins; ``torch_only`` one that
        runs torch's own optimizer (for sparse gradients).
        """
        group = full_group(self._constructor, self._optim_args_for(name), p)
        saved_group = None
        if state is not None:
            try:
                saved_group = self._saved_group(name, group, self._optimizer_state(state))
            except ValueError as e:
                raise ValueError(f"{self._origin(name)}{e}") from None
            group.update(saved_group)
        key = (bucket_key(self._constructor, group, p), self._cohort(state), torch_only)
        bucket = None if alone else self._fresh.get(key)
        created = bucket is None or not bucket.fresh or not bucket.params
        if created:
            if torch_only:
                bucket = TorchBucket(self._constructor, group)
            else:
                bucket = make_bucket(self._constructor, group, p)
        assert bucket is not None
        self._layout += 1
        bucket.add(p, sort_key)
        try:
            if created:
                self._attach(bucket, state)
                if saved_group is not None:
                    bucket.restore_group(saved_group)  # a schedule's first step moved lr
            if state is not None:
                bucket.load_state_dict(p, self._optimizer_state(state))
        except ValueError as e:
            bucket.remove(p)
            raise ValueError(f"{self._origin(name)}optimizer state of {name!r}: {e}") from None
        except Exception:
            bucket.remove(p)
            raise
        if created:
            self._buckets.append(bucket)
            if alone:
                bucket.fresh = False
            else:
                self._fresh[key] = bucket
        return bucket

    def _origin(self, name: str | None) -> str:
        """``"FILE: "`` for a name whose state came from a file (or ``set_state``)."""
        origin = self._state_origin.get(name) if name is not None else None
        return f"{origin}: " if origin else ""

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
            slot = self._table.by_id[id(p)]
            moved.add(p, slot.sort_key)
            moved.load_state_dict(p, state)
            slot.bucket = moved
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

    def _view(self, slot: Slot) -> Any:
        """What ``optim_objs[param]`` answers for one parameter."""
        return _ParamOptimizerView(self, slot)

    def learning_rates(self) -> dict[str, float]:
        """The current learning rate of every parameter seen so far, by name."""
        with self._lock:
            return {
                slot.name: slot.bucket.lr(slot.param)
                for slot in self._table
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
        slots = self._table.by_id
        return {
            slots[key].name: float(n)  # type: ignore[misc]
            for key, n in self._last_norms.items()
            if slots[key].name is not None
        }

    def global_grad_norm(self) -> float | None:
        """The joint gradient norm of the last step before ``clip_global_norm``, if used."""
        return None if self._last_global_norm is None else float(self._last_global_norm)

    def _uses_norm_clip(self) -> bool:
        return any("clip_norm" in s.clip for s in self._table.by_id.values())

    # -- state ------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """``{param_name: per-parameter optimizer state dict}``, as pyro.optim gives it.

        Unlike pyro.optim, the values are snapshots (later steps do not change them),
        and state loaded for parameters not seen yet is included, so saving right
        after loading loses nothing.
        """
        with self._lock:
            state: dict[str, Any] = dict(self._state_waiting_to_be_consumed)
            for slot in self._table:
                if slot.name is not None:
                    state[slot.name] = self._param_state(slot)
            return state

    def set_state(self, state_dict: Mapping[str, Any]) -> None:
        """Set state from :meth:`get_state` (or pyro.optim's ``get_state``).

        As in pyro.optim, each entry waits for the next new tensor of its name (the one
        ``param_store.load`` or ``pyro.param`` creates), so a checkpoint restored into an
        optimizer that has already stepped continues where it was saved, in either order
        of loading the param store and the optimizer. Unlike pyro.optim, which ignores
        it there, an entry is also applied at once to a parameter already seen whose
        tensor is still the param store's.
        """
        self._set_state(state_dict, "state_dict")

    def _set_state(self, state_dict: Mapping[str, Any], where: str) -> None:
        """:meth:`set_state`, naming ``where`` the state came from in errors.

        Like pyro.optim, every entry waits for its name's next new tensor (after
        ``param_store.load``, say). A parameter already seen whose tensor is still the
        param store's takes its entry now; one whose name now holds another tensor is
        retired, and the new tensor takes the entry when it first appears. All or
        nothing: if any entry cannot be applied, every parameter already moved goes back
        to its bucket and state, and nothing is left waiting.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                "state_dict must be a dict of {param_name: state}, got "
                f"{type(state_dict).__name__}"
            )
        with self._lock:
            for name, state in state_dict.items():
                self._check_state(name, state, where)
            previous = dict(self._state_origin)
            self._state_origin.update(dict.fromkeys(state_dict, where))
            store = pyro.get_param_store()
            live: list[Slot] = []
            stale: list[Slot] = []
            for name in state_dict:
                slot = self._table.named(name)
                if slot is not None:
                    current = store.param_name(slot.param) == name
                    (live if current else stale).append(slot)
            try:
                self._apply_now(live, state_dict)
            except BaseException:
                self._state_origin = previous
                raise
            for slot in stale:
                self._retire(slot)
            self._state_waiting_to_be_consumed.update(state_dict)

    def _apply_now(self, slots: list[Slot], state_dict: Mapping[str, Any]) -> None:
        """Load each slot's entry of ``state_dict``; on any failure undo them all."""
        undo: list[tuple[Slot, Bucket, Any]] = []
        try:
            for slot in slots:
                p, old = slot.param, slot.bucket
                undo.append((slot, old, old.state_dict(p)))
                self._layout += 1
                old.remove(p)
                state = state_dict[slot.name]  # type: ignore[index]
                slot.bucket = self._place(p, slot.name, state, sort_key=slot.sort_key)
        except Exception:
            for slot, old, snapshot in reversed(undo):
                if slot.bucket is not old:
                    slot.bucket.remove(slot.param)
                old.add(slot.param, slot.sort_key)
                old.load_state_dict(slot.param, snapshot)
                slot.bucket = old
            self._drop_empty_buckets()
            raise
        self._drop_empty_buckets()

    def _drop_empty_buckets(self) -> None:
        self._buckets = [b for b in self._buckets if b.params]
        self._fresh = {k: b for k, b in self._fresh.items() if b.params}

    def save(self, filename: str | os.PathLike[str]) -> None:
        """Write :meth:`get_state` to ``filename`` in pyro.optim's format, atomically.

        A crash at any moment leaves the old file or the new one, never a torn one. The
        file also records pyroopt's version and checkpoint format.
        """
        checkpoint.save_state(self.get_state(), filename)  # a snapshot: no lock needed

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
        slot = self._optim._table.get(param)
        if slot is None:
            raise KeyError(param)
        return self._optim._view(slot)

    def __iter__(self) -> Iterator[Tensor]:
        return (slot.param for slot in self._optim._table)

    def __len__(self) -> int:
        return len(self._optim._table)


class _ParamOptimizerView:
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
            entry: Any = dict(state_dict)
            current = optim._param_state(slot)
            if optim._optimizer_state(current) is not current:  # under a schedule: keep it
                entry = {**current, "optimizer": entry}
            optim._check_state(slot.name, entry, "load_state_dict")
            # an unnamed parameter's entry is under None, which _apply_now reads alike
            optim._apply_now([slot], {slot.name: entry})  # type: ignore[dict-item]

    def zero_grad(self, set_to_none: bool = True) -> None:
        if set_to_none:
            self._param.grad = None
        elif self._param.grad is not None:
            self._param.grad.detach_().zero_()

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Step this one parameter, as its own optimizer would: a bucket whose steps move
        its hyperparameters (ClippedAdam's ``lrd``) lets it go first, so the others'
        learning rates stay as they are."""
        with self._optim._lock:
            self._optim._step([self._param], args, kwargs)


def _slot_order(slot: Slot) -> Any:
    return slot.sort_key
