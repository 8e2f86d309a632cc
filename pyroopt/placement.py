"""Placement: which bucket each parameter lives in, and the plan of a call.

An optimizer asks its :class:`Placement` for a :class:`Plan` for the parameters a call
passes; making one takes in new parameters (with any state waiting for their name),
retires those that left Pyro's param store, moves those whose dtype, device or memory
changed, and splits off the stepped part of a bucket whose steps move its
hyperparameters. Buckets receive their members through :meth:`Bucket.add` /
:meth:`Bucket.remove` and their state through ``load_state_dict``; nothing else here
writes a bucket.

A parameter joins an existing bucket only while that bucket is *open*: its
hyperparameters (and, under a schedule, its schedule) have not moved since it was made,
so joining it is the same as pyro.optim giving the parameter an optimizer of its own.
Each member keeps its own step count and state, so a bucket that has stepped stays
open to parameters that appear later (``Adam`` with one new site per step keeps one
bucket), until a step or a schedule moves its hyperparameters (:meth:`close`).

What a bucket carries beside its optimizer, and how a parameter's saved entry reads, is
the :class:`Schedules` object's: nothing for :class:`pyroopt.PyroOptim`, a learning-rate
schedule per cohort for :class:`pyroopt.PyroLRScheduler`.

Example::

    >>> import pyro, torch
    >>> pyro.clear_param_store()
    >>> a = pyro.param("a", torch.zeros(2)).unconstrained()
    >>> b = pyro.param("b", torch.zeros(3)).unconstrained()
    >>> placement = Placement(torch.optim.Adam, lambda name: {"lr": 0.1})
    >>> plan, steady = placement.plan([b, a])
    >>> [slot.name for slot in plan.slots], len(plan.steps), steady
    (['a', 'b'], 1, False)
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import pyro
from torch import Tensor

from pyroopt import state_checks
from pyroopt._compat import moved_in_store
from pyroopt.bucket import Bucket, Group
from pyroopt.engine import bucket_key, full_group, make_bucket
from pyroopt.params import ParamTable, Slot


class Schedules:
    """What buckets carry beside their optimizer: here, nothing.

    :class:`pyroopt.lr_scheduler.CohortSchedules` gives every bucket a learning-rate
    schedule and every saved entry the form ``{"scheduler": ..., "optimizer": ...}``.
    """

    #: hyperparameters a saved group may hold beyond the optimizer's own
    group_keys_added: frozenset[str] = frozenset()

    def check_entry(self, name: Any, entry: Any, where: str) -> None:
        """Raise unless ``entry`` is a well-formed saved state of parameter ``name``."""
        state_checks.check_param_state(name, entry, where)

    def optimizer_state(self, entry: Mapping[str, Any]) -> Mapping[str, Any]:
        """The optimizer's part of a saved entry."""
        return entry

    def entry(self, bucket: Bucket, param: Tensor) -> Any:
        """``param``'s saved entry, as ``get_state`` gives it."""
        return bucket.state_dict(param)

    def cohort(self, entry: Any) -> Hashable:
        """Which parameters may share a bucket, beside sharing hyperparameters."""
        return None

    def attach(self, bucket: Bucket, entry: Any) -> bool:
        """Give a new ``bucket`` what it carries (from ``entry``, a saved one, if given);
        whether parameters that appear later may join it."""
        return True

    def copy(self, source: Bucket, target: Bucket) -> None:
        """Give ``target``, split off ``source``, a copy of what ``source`` carries."""

    def keep_only(self, buckets: list[Bucket]) -> None:
        """Let go of what buckets other than ``buckets`` carried."""

    def view(self, optim: Any, slot: Slot) -> Any:
        """What ``optim.optim_objs[param]`` answers for one parameter."""
        from pyroopt.views import ParamOptimizerView

        return ParamOptimizerView(optim, slot)


class Plan(NamedTuple):
    """How one call's parameters are stepped: which buckets step which parameters."""

    ids: frozenset[int]
    given: list[Tensor]  # the parameters of the last call it held for, in that call's order
    layout: int
    slots: list[Slot]  # in table order
    clipped: list[Slot]  # the slots with per-parameter clip arguments
    steps: list[tuple[Bucket, list[Tensor]]]
    params: list[Tensor]  # of ``slots``, with their data pointers at the end of the last call
    pointers: list[int]


class Placement:
    """The parameters an optimizer has seen, the buckets they live in, and the state
    waiting for parameters not seen yet.

    :param constructor: the torch optimizer class (or callable) of every bucket.
    :param optim_args_for: the hyperparameters for a parameter name (``None``: unnamed).
    :param clip_args_for: ``(param, name) -> per-parameter clip arguments`` (default:
        none).
    :param schedules: what buckets carry beside their optimizer (:class:`Schedules`).
    """

    def __init__(
        self,
        constructor: Callable[..., Any],
        optim_args_for: Callable[[str | None], dict[str, Any]],
        clip_args_for: Callable[[Tensor, str | None], dict[str, float]] | None = None,
        schedules: Schedules | None = None,
    ) -> None:
        self.constructor = constructor
        self.optim_args_for = optim_args_for
        self.clip_args_for = clip_args_for or _no_clipping
        self.schedules = schedules or Schedules()
        self.table = ParamTable()
        self.buckets: list[Bucket] = []  # in creation order, which is stepping order
        self._open: dict[Hashable, Bucket] = {}  # buckets new parameters may join, by key
        #: saved entries waiting for the next new tensor of their name
        self.waiting: dict[str, Any] = {}
        #: where each name's loaded state came from (a file, or "state_dict"), for errors
        self._origins: dict[str, str] = {}
        self._layout = 0  # bumped whenever a parameter joins, leaves or changes bucket
        self._plan: Plan | None = None
        #: parameters in the table after the last look for stale ones (_retire_stale)
        self._table_at_last_look = 0

    def rekey(self) -> None:
        """Index everything anew after a copy (``copy.deepcopy``, pickle): tables are
        indexed by ``id``, which a copy does not keep."""
        self.table.rekey()
        for bucket in self.buckets:
            bucket.rekey()
        self._plan = None

    # -- plans --------------------------------------------------------------------------
    def plan(self, params: list[Tensor]) -> tuple[Plan, bool]:
        """The plan for a call passing ``params``, and whether it is *steady*: the last
        call's plan, every parameter still in the storage it had at the end of that
        call (its buckets may then skip checks that storage is unchanged)."""
        plan = self._plan
        # The same tensors as the last call in the same order (SVI's set of the same
        # parameters iterates alike every step): no set of ids to build and compare.
        repeated = plan is not None and _same_tensors(params, plan.given)
        ids = plan.ids if repeated else frozenset(map(id, params))  # type: ignore[union-attr]
        steady = (
            plan is not None
            and (repeated or plan.ids == ids)
            and plan.layout == self._layout
            # new storage (``Module.to``, ``param.data = ...``): dtype or device may differ
            and list(map(Tensor.data_ptr, plan.params)) == plan.pointers
        )
        if plan is None or not steady:
            plan = self._plan = self._make_plan(params, ids)
        elif not repeated:
            plan = self._plan = plan._replace(given=params)
        return plan, steady

    def stepped(self, plan: Plan, steady: bool) -> None:
        """Record the end of a step by ``plan``: buckets whose step moved their
        hyperparameters close, and a first step's seating gives new pointers."""
        for bucket, _ in plan.steps:
            # ClippedAdam's ``lrd``, fused SGD's shared first step: a parameter that
            # joins now would start from moved hyperparameters
            if bucket.advances_group():
                self.close(bucket)
        if not steady:
            self._plan = plan._replace(pointers=list(map(Tensor.data_ptr, plan.params)))

    def _make_plan(self, params: list[Tensor], ids: frozenset[int]) -> Plan:
        """Which buckets step which parameters, taking in new parameters, retiring those
        that left the param store or whose name now holds another tensor, and moving
        those whose dtype or device changed, or whose memory overlaps another's."""
        if len(ids) != len(params):
            params = list({id(p): p for p in params}.values())  # each parameter steps once
        table = self.table
        new, reshaped = [], []
        for p in params:
            slot = table.get(p)
            if slot is None:
                _check_new_param(p)
                new.append(p)
            elif p.shape != slot.bucket.shape_of(p):
                self._check_reshaped(slot)
                reshaped.append(slot)
        # Every check passed: from here on the call changes things.
        for slot in reshaped:
            self._rehome(slot)
        if new:
            store = pyro.get_param_store()
            named = sorted(
                ((store.param_name(p), i, p) for i, p in enumerate(new)),
                key=lambda item: (item[0] is None, item[0] or "", item[1]),
            )
            known = sum(name is not None and table.named(name) is not None for name, _, _ in named)
            if self._stale_possible(store, len(named) - known):
                self._retire_stale(ids)
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
        return Plan(ids, params, self._layout, stepped, clipped, steps, planned, pointers)

    # -- members ------------------------------------------------------------------------
    def close(self, bucket: Bucket) -> None:
        """Let no parameter join ``bucket`` any more (its hyperparameters moved)."""
        self._open = {k: b for k, b in self._open.items() if b is not bucket}

    def close_all(self) -> None:
        """Close every bucket (a schedule stepped: new parameters start a cohort)."""
        self._open = {}

    def entry(self, slot: Slot) -> Any:
        """``slot``'s saved entry, as ``get_state`` gives it."""
        return self.schedules.entry(slot.bucket, slot.param)

    def _stale_possible(self, store: Any, joining: int) -> bool:
        """Whether to look for stale parameters (:meth:`_retire_stale`) before ``joining``
        new ones take names of their own. A look costs time in the size of the table,
        so it is taken where a parameter must have left the store, and otherwise once
        the table has doubled since the last look: a new site every step then costs a
        constant time per step on average, and stale parameters are retired by the time
        the table holds twice what it held after the last look (16 at the least).

        A parameter must have left when the table would name more parameters than the
        store holds (``clear_param_store``, ``del store[name]``). A name that already
        holds another tensor needs no look: its new tensor retires the old one when it
        is discovered (:meth:`_discover`).
        """
        private = getattr(store, "_params", None)
        if not isinstance(private, dict):
            return True  # another store: look every time
        named = len(self.table.named_params()) + joining
        return named > len(private) or len(self.table) >= 2 * max(self._table_at_last_look, 8)

    def _retire_stale(self, keep: frozenset[int]) -> None:
        """Forget parameters that left Pyro's param store (and are not being stepped).

        A name that now holds another tensor (``clear_param_store``, ``param_store.load``
        or ``del store[name]``, then ``pyro.param(name, ...)``) retires its old tensor,
        which leaves its bucket and buffers, so memory and cost follow the live
        parameters and not everything ever seen.
        """
        table = self.table
        # mostly in C: about 0.05 us a parameter
        moved = moved_in_store(pyro.get_param_store(), table.named_params())
        slots = [table.by_name(name) for name in moved]
        stale = [slot for slot in slots if id(slot.param) not in keep]
        for slot in sorted(stale, key=_slot_order):
            self._retire(slot)
        self._table_at_last_look = len(table)

    def _retire(self, slot: Slot) -> None:
        self._layout += 1
        self.table.remove(slot)
        slot.bucket.remove(slot.param)
        self._drop_empty_buckets()

    def _rehome(self, slot: Slot, *, alone: bool = False, sparse: bool = False) -> None:
        """Move ``slot`` with its state (cast as torch casts loaded state) to the bucket
        its tensor's dtype and device call for; to a bucket of its own (``alone``); or to
        one of torch's own optimizer, which steps ``sparse`` gradients."""
        state = self.entry(slot)
        self._layout += 1
        slot.bucket.remove(slot.param)
        slot.bucket = self._place(
            slot.param, slot.name, state, sort_key=slot.sort_key, alone=alone, sparse=sparse
        )
        self._drop_empty_buckets()

    def hand_to_torch(self, params: list[Tensor]) -> None:
        """Move ``params`` (with sparse gradients) to one torch optimizer of their kind,
        whose own implementation then steps them (torch's SGD and Adagrad take sparse
        gradients; the others raise torch's error). The next plan is made anew."""
        for p in params:
            self._rehome(self.table.by_id[id(p)], sparse=True)
        self._plan = None

    def _check_reshaped(self, slot: Slot) -> None:
        """Raise unless ``slot``'s parameter, which changed shape, may go on as pyro.optim
        lets it: without state of the old shape (never stepped, or a stateless rule such
        as SGD without momentum, whose torch optimizer steps any shape)."""
        p = slot.param
        old = slot.bucket.shape_of(p)
        state = slot.bucket.state_dict(p)["state"].get(0, {})
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
            old = self.table.named(name)
            if old is not None and id(old.param) in stepping:
                self.table.unname(old)
            elif old is not None:  # the name holds a new tensor: the old one is gone
                self._retire(old)
        waiting = self.waiting.get(name) if name is not None else None
        slot = Slot(p, name, None, self.clip_args_for(p, name))
        self.table.add(slot)
        try:
            slot.bucket = self._place(p, name, waiting, sort_key=slot.sort_key, stepping=stepping)
        except BaseException:
            self.table.remove(slot)
            raise
        if waiting is not None:
            del self.waiting[name]  # type: ignore[arg-type]
        return slot

    def _place(
        self,
        p: Tensor,
        name: str | None,
        entry: Any,
        *,
        sort_key: Any = None,
        alone: bool = False,
        sparse: bool = False,
        stepping: frozenset[int] | None = None,
    ) -> Bucket:
        """Put ``p`` in the open bucket its hyperparameters (or its saved ``entry``'s)
        call for, or in a new one; ``alone`` makes a bucket that no other parameter
        joins; ``sparse`` one that runs torch's own optimizer.

        A parameter discovered in a call (``stepping``: the ids it steps) joins the open
        bucket only if that call steps all of the bucket's members: joining lays the
        bucket's buffers out anew, which costs what a step of all of them costs. A new
        site on every step, beside parameters that never step again (or not with it),
        gets a new bucket instead of re-laying out ever more members each step.
        """
        group = full_group(self.constructor, self.optim_args_for(name), p)
        saved_group = None
        if entry is not None:
            try:
                saved_group = self._saved_group(name, group, self.schedules.optimizer_state(entry))
            except ValueError as e:
                raise ValueError(f"{self.origin(name)}{e}") from None
            group.update(saved_group)
        key = (bucket_key(self.constructor, group, p), self.schedules.cohort(entry), sparse)
        bucket = None if alone else self._open.get(key)
        if (
            bucket is not None
            and stepping is not None
            and not all(id(member) in stepping for member in bucket.params)
        ):
            bucket = None
        created = bucket is None or not bucket.params
        if created:
            bucket = make_bucket(self.constructor, group, p, sparse=sparse)
        assert bucket is not None
        self._layout += 1
        bucket.add(p, sort_key)
        try:
            joinable = self.schedules.attach(bucket, entry) if created else True
            if created and saved_group is not None:
                bucket.restore_group(saved_group)  # a schedule's first step moved lr
            if entry is not None:
                bucket.load_state_dict(p, self.schedules.optimizer_state(entry))
        except ValueError as e:
            bucket.remove(p)
            raise ValueError(f"{self.origin(name)}optimizer state of {name!r}: {e}") from None
        except Exception:
            bucket.remove(p)
            raise
        if created:
            self.buckets.append(bucket)
            if joinable and not alone:
                self._open[key] = bucket
        return bucket

    def origin(self, name: str | None) -> str:
        """``"FILE: "`` for a name whose state came from a file (or ``set_state``)."""
        origin = self._origins.get(name) if name is not None else None
        return f"{origin}: " if origin else ""

    def _saved_group(self, name: str | None, group: Group, state: Mapping[str, Any]) -> Group:
        """The hyperparameters in a saved per-parameter state, checked against ``group``.

        Saved values win, as in torch's ``load_state_dict`` (a schedule or ClippedAdam's
        ``lrd`` may have moved ``lr``); keys the file lacks keep their defaults.
        """
        saved = {k: v for k, v in state["param_groups"][0].items() if k != "params"}
        foreign = sorted(set(saved) - set(group) - self.schedules.group_keys_added)
        if foreign:
            raise ValueError(
                f"the saved state of {name!r} has hyperparameters {foreign} that "
                f"{getattr(self.constructor, '__name__', 'this optimizer')} does "
                "not take: it was saved by a different optimizer"
            )
        return saved

    def _split(self, bucket: Bucket, params: list[Tensor]) -> Bucket:
        """Move ``params`` out of ``bucket`` into a new, closed bucket with the same
        hyperparameters: needed before a step that changes the hyperparameters of only
        the parameters it steps (ClippedAdam's ``lrd``), as pyro.optim decays each
        parameter's lr on its own."""
        self._layout += 1
        group = dict(bucket.current_group())
        moved = make_bucket(self.constructor, group, params[0])
        for p in params:
            state = bucket.state_dict(p)
            bucket.remove(p)
            slot = self.table.by_id[id(p)]
            moved.add(p, slot.sort_key)
            moved.load_state_dict(p, state)
            slot.bucket = moved
        self.schedules.copy(bucket, moved)
        moved.restore_group(group)
        self.buckets.insert(self.buckets.index(bucket) + 1, moved)
        return moved

    def _drop_empty_buckets(self) -> None:
        self.buckets = [b for b in self.buckets if b.params]
        self._open = {k: b for k, b in self._open.items() if b.params}
        self.schedules.keep_only(self.buckets)

    # -- saved state --------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Every named parameter's entry, and the entries still waiting for theirs."""
        state: dict[str, Any] = dict(self.waiting)
        for slot in self.table:
            if slot.name is not None:
                state[slot.name] = self.entry(slot)
        return state

    def set_state(self, state_dict: Mapping[str, Any], where: str) -> None:
        """Every entry waits for its name's next new tensor (after ``param_store.load``,
        say). A parameter already seen whose tensor is still the param store's takes its
        entry now; one whose name now holds another tensor is retired, and the new
        tensor takes the entry when it first appears. All or nothing: if any entry cannot
        be applied, every parameter already moved goes back to its bucket and state, and
        nothing is left waiting. ``where`` names the source in errors."""
        for name, entry in state_dict.items():
            self.schedules.check_entry(name, entry, where)
        previous = dict(self._origins)
        self._origins.update(dict.fromkeys(state_dict, where))
        store = pyro.get_param_store()
        live: list[Slot] = []
        stale: list[Slot] = []
        for name in state_dict:
            slot = self.table.named(name)
            if slot is not None:
                current = store.param_name(slot.param) == name
                (live if current else stale).append(slot)
        try:
            self.apply_now(live, state_dict)
        except BaseException:
            self._origins = previous
            raise
        for slot in stale:
            self._retire(slot)
        self.waiting.update(state_dict)

    def apply_now(self, slots: list[Slot], state_dict: Mapping[str, Any]) -> None:
        """Load each slot's entry of ``state_dict`` (under its name), moving it to the
        bucket of the entry's hyperparameters; on any failure undo them all."""
        undo: list[tuple[Slot, Bucket, Any]] = []
        try:
            for slot in slots:
                p, old = slot.param, slot.bucket
                undo.append((slot, old, old.state_dict(p)))
                self._layout += 1
                old.remove(p)
                entry = state_dict[slot.name]  # type: ignore[index]
                slot.bucket = self._place(p, slot.name, entry, sort_key=slot.sort_key)
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


def _no_clipping(param: Tensor, name: str | None) -> dict[str, float]:
    return {}


def _same_tensors(a: list[Tensor], b: list[Tensor]) -> bool:
    """Whether ``a`` and ``b`` hold the same tensor objects in the same order (in C)."""
    return len(a) == len(b) and all(map(operator.is_, a, b))


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


def _slot_order(slot: Slot) -> Any:
    return slot.sort_key


__all__ = ["Placement", "Plan", "Schedules"]
