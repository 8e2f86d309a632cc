"""Rule buckets: an update rule pyroopt owns, over flat buffers that cover the bucket.

A :class:`RuleBucket` runs an update rule pyroopt owns (:mod:`pyroopt.kernels`) on one
flat buffer per state over the whole bucket. Gradients are gathered with ``torch.cat``;
parameters live in a flat buffer of their own where that is safe
(:mod:`pyroopt.seating`), so the update needs no scatter. The update is the rule's
one-pass C loop (:mod:`pyroopt.native`) where it runs, else its chain of torch ops; both
compute torch's single-tensor numbers bit for bit, and every element's value is
independent of where its parameter sits in a buffer.

A bucket of large parameters (beyond :data:`FLAT_MAX_AVG_NUMEL` and
:data:`FLAT_MAX_NUMEL`), or a step of only some of its parameters, updates them in
place, on their own tensors (the torch-op chain in pieces of about
:data:`CHAIN_PIECE_NUMEL` elements). Sparse gradients are refused before anything
changes: with :class:`~pyroopt.bucket.SparseGradients` where torch's own optimizer
steps them (:data:`TAKES_SPARSE`; the caller hands those parameters to it), else with
a :class:`~pyroopt.optimizers.SparseGradientError`.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Mapping
from itertools import compress, count
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from pyroopt._compat import get_scalar_dtype
from pyroopt.bucket import (
    PARAM_SHAPED_STATE,
    Bucket,
    Group,
    ParamState,
    SparseGradients,
    check_shapes,
    closure_only,
    one_param_state,
    snapshot,
)
from pyroopt.dispatch import Implementation
from pyroopt.flat import FlatLayout, Target, torch_alignment
from pyroopt.interrupts import DeferInterrupts
from pyroopt.kernels import UpdateRule
from pyroopt.kernels._coef import per_param
from pyroopt.kernels.base import Batch
from pyroopt.native import _entry
from pyroopt.optimizers import SparseGradientError
from pyroopt.seating import FlatValues
from pyroopt.serial import SerialIfSmall

#: Up to this many elements per parameter on average, a bucket gathers its gradients
#: into one flat buffer (a few ``torch.cat``) and runs the update there; larger
#: parameters are updated in place, where the copies would cost more than the
#: per-tensor overhead they save.
FLAT_MAX_AVG_NUMEL = 1 << 16

#: ... and up to this many elements in all: the flat gradient buffer is a second copy
#: of the bucket's gradients, so it is bounded (16 MB in float32, twice that where
#: slices are aligned apart); a larger bucket is updated in place, on the parameters'
#: own gradients, where a per-tensor cost is small beside the work.
FLAT_MAX_NUMEL = 1 << 22

#: Without a native loop an update is a chain of elementwise passes; running the chain
#: over pieces of about this many elements keeps each piece in cache between passes
#: (measured: an Adam chain over 10M float32 elements took 34 ms in one piece, 17 ms
#: in pieces of 250k).
CHAIN_PIECE_NUMEL = 1 << 18

#: torch optimizers whose own implementation steps sparse gradients: a rule bucket hands
#: parameters with sparse gradients over to one of those (see :class:`SparseGradients`)
TAKES_SPARSE: frozenset[Any] = frozenset((torch.optim.SGD, torch.optim.Adagrad))


class RuleBucket(Bucket):
    """A pyroopt update rule over flat buffers that cover every parameter of the bucket."""

    def __init__(
        self,
        constructor: Callable[..., Optimizer],
        group: Group,
        rule: UpdateRule,
        implementation: Implementation | None = None,
    ):
        if implementation is None:  # made directly, not by make_bucket: the loop where it runs
            kind = "native" if rule.has_native else "chain"
            implementation = Implementation(kind, "bucket made directly")
        super().__init__(constructor, group, implementation)
        self.rule = rule
        #: steps on which the native loop declined a batch (tensors it cannot take:
        #: non-contiguous parameters stepped one by one) and the torch-op chain ran it
        self.chain_fallbacks = 0
        self.keys = rule.state_keys(group)
        self.steps: list[int] = []
        # Every member's state while the flat buffers are out of date (members joined
        # or left), until the next layout; ``None``: a new member's initial state.
        self._loose: dict[Tensor, dict[str, Tensor] | None] = {}
        self._flat: dict[str, Tensor] = {}
        self._views: dict[str, tuple[Tensor, ...]] = {}
        self._target: GroupOptimizer | None = None
        self._scratch: tuple[Tensor, Target] | None = None  # the flat gradient buffer
        self._values: FlatValues | None = None  # while the bucket steps flat
        #: what :meth:`check` found for the coming step: "steady", "checked" or None
        self._checked: str | None = None
        #: how the last flat step split the buffers by step count, while it holds
        self._split_by_steps: _StepSplit | None = None
        # the flat values known intact at the end of the last step (None: not known)
        self._known_intact: FlatValues | None = None

    def follow(self, group: Group) -> None:
        """Read the hyperparameters from ``group`` from now on, live: the caller's own
        dict (a param group of :mod:`pyroopt.torch`), which its user may edit between
        steps."""
        self.group = group
        if self._target is not None:
            self._target.param_groups = [group]

    def describe(self) -> str:
        said = super().describe()
        if self.chain_fallbacks:
            said += (
                f" ({self.chain_fallbacks} steps by the torch-op chain: tensors the loop "
                "cannot take)"
            )
        return said

    def schedule_target(self) -> Optimizer:
        if self._target is None:
            self._target = GroupOptimizer(self.group)
        return self._target

    def rekey(self) -> None:
        """Also lay out every view of the flat buffers anew: pickle gives each tensor a
        storage of its own, so a copied view no longer shares its buffer."""
        super().rekey()
        if self._flat:
            self._views = {k: tuple(self.flat.views(buffer)) for k, buffer in self._flat.items()}
        self._scratch = self._split_by_steps = None
        if self._values is not None:
            self._values = self._known_intact = None
            self._reseat()

    # -- layout -----------------------------------------------------------------
    def add(self, param: Tensor, sort_key: Any = None) -> int:
        if len(self._loose) < len(self.params):  # state in flat buffers: index by tensor
            self._loose = {p: self.live_state(p) for p in self.params}
        position = super().add(param, sort_key)
        self.steps.insert(position, 0)
        self._split_by_steps = None
        self._loose[param] = None  # the rule's initial state, made where it will live
        return position

    def remove(self, param: Tensor) -> None:
        if len(self._loose) < len(self.params):  # state in flat buffers: index by tensor
            self._loose = {p: self.live_state(p) for p in self.params}
        del self._loose[param]
        self.steps.pop(self.index[id(param)])
        self._split_by_steps = None
        super().remove(param)

    def live_state(self, param: Tensor) -> dict[str, Tensor]:
        """``param``'s state tensors themselves (views of the flat buffers once laid
        out): an edit of one is an edit of the state."""
        if param in self._loose:
            loose = self._loose[param]
            if loose is None:  # asked for before the next layout: make it now
                loose = self._loose[param] = self.rule.initial_state(param, self.group)
            return loose
        i = self.index[id(param)]
        return {k: self._views[k][i] for k in self.keys}

    def _ensure_layout(self) -> None:
        """(Re)build the flat buffers after parameters joined or left.

        One state at a time: each old buffer (or loose tensor) is let go once its values
        are in the new one, and a new member's initial state is made one parameter at a
        time, so the peak is the state plus one buffer, not twice the state.
        """
        if not self._loose or not self.params:
            return
        first = self.params[0]
        # every slice at the alignment torch gives a tensor of its own (pyroopt.flat)
        align = torch_alignment(first.dtype)
        self.flat = layout = FlatLayout([p.shape for p in self.params], align=align)
        self.numel = layout.numel
        loose, self._loose = self._loose, {}
        # the base rule's initial state is zeros, which a new buffer already holds
        zero_start = type(self.rule).initial_state is UpdateRule.initial_state
        for k in self.keys:
            buffer = torch.zeros(layout.numel, dtype=first.dtype, device=first.device)
            views = layout.views(buffer)
            targets, sources = [], []
            with torch.no_grad():
                for p, view in zip(self.params, views, strict=True):
                    state = loose[p]
                    if state is None and zero_start:
                        continue
                    if state is None:  # a new member: its initial state, made here
                        view.copy_(self.rule.initial_state(p, self.group)[k])
                    else:  # taken out, so the old buffer goes once copied
                        targets.append(view)
                        sources.append(state.pop(k))
                if targets:
                    torch._foreach_copy_(targets, sources)
            del targets, sources
            self._flat[k], self._views[k] = buffer, tuple(views)
        self._scratch = None
        self._reseat()

    def _reseat(self) -> None:
        """Lay the flat values out anew: after a layout, or after a member was given new
        storage (its values are taken from where it now lives)."""
        _entry.forget_prepared()  # the native loops' arrays for the old buffers
        if self._flat_capable():
            self._values = FlatValues(self.params, self.flat, self._values)
        elif self._values is not None:
            self._values.release(())
            self._values = None

    def _flat_capable(self) -> bool:
        """Whether a call passing every parameter runs on flat buffers: small parameters,
        where per-tensor costs dominate."""
        return self.numel <= min(FLAT_MAX_AVG_NUMEL * len(self.params), FLAT_MAX_NUMEL)

    def _flat_scratch(self) -> tuple[Tensor, Target]:
        """The flat gradient buffer, made on first use."""
        if self._scratch is None:
            like = self.params[0]
            grad = torch.zeros(self.numel, dtype=like.dtype, device=like.device)
            self._scratch = (grad, self.flat.target(grad))
        return self._scratch

    # -- stepping ---------------------------------------------------------------
    def check(self, params: list[Tensor], *, gather: bool = True, steady: bool = False) -> None:
        """Raise before anything changes unless ``params``' gradients can be stepped.

        A steady call (every member, the flat values verified at the end of the last
        step, no storage changed since) is checked by gathering its gradients into the
        flat gradient buffer (``gather``: no clipping will change them first): a few
        ``torch.cat`` refuse a missing or sparse gradient, another shape or device, and
        a refusal changes nothing but that scratch buffer. Other calls, and steady ones
        that are clipped first, check every parameter and gradient one by one
        (:meth:`Bucket.check_inputs`). A gradient of another dtype, which only an
        assignment to ``.grad.data`` can make, is cast by the steady gather.
        """
        self._checked = None
        if gather and self._steady(params, steady) and self._gather_steady(params):
            self._checked = "gathered"
            return
        grads = [p.grad for p in params]
        live = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
        if any(g.is_sparse for _, g in live):
            self._refuse_sparse([p for p, _ in live], [g for _, g in live])
        self.check_inputs([p for p, _ in live], [g for _, g in live])
        self._checked = "checked"

    def _steady(self, params: list[Tensor], steady: bool) -> bool:
        """Whether a call passing ``params`` steps every member on flat values known
        intact at the end of the last step (``steady``: no storage changed since)."""
        values = self._values
        return (
            steady
            and values is not None
            and values is self._known_intact
            and not self._loose
            and len(params) == len(self.params)
        )

    def step(self, params: list[Tensor], *args: Any, steady: bool = False, **kwargs: Any) -> None:
        """Step ``params``, checked by :meth:`check` (again here after a closure, which
        makes new gradients). The writes (layout, values, state, step counts, the
        group's ``lr`` under ``lrd``) are one unit: an exception before the update
        leaves all of them as they were, and a Ctrl-C during it is held back until they
        are all written (:class:`~pyroopt.interrupts.DeferInterrupts`)."""
        closure = closure_only(self.constructor, args, kwargs)
        if closure is not None:
            # Once per bucket: torch optimizers evaluate the closure before updating.
            with torch.enable_grad():
                closure()
            self._checked = None  # new gradients
        if self._checked is None:
            self.check(params, steady=steady)
        gathered = self._checked == "gathered" and self._steady(params, steady)
        self._checked = None
        if gathered:  # every gradient present, in the flat gradient buffer
            live, grads = params, []
        else:
            self._known_intact = None
            live = [p for p in params if p.grad is not None]
            grads = [p.grad for p in live]
        steps, group, keys = self.steps, dict(self.group), self.keys
        try:
            with DeferInterrupts():
                self.rule.advance_group(self.group)  # even for parameters without a gradient
                self._grow_state()
                if live:
                    self._ensure_layout()
                    flat = len(live) == len(self.params) and self._values is not None
                    with SerialIfSmall(self.numel), torch.no_grad():
                        if flat:
                            self._step_flat(grads, gathered)  # type: ignore[arg-type]
                        else:
                            self._step_list(live, grads)  # type: ignore[arg-type]
                if self._target is not None:
                    self._target.step()  # tells a schedule the optimizer has stepped
        except BaseException:
            self.steps = steps
            self.group.update(group)
            self._drop_state(self.keys[len(keys) :])
            self._known_intact = None
            raise

    def _grow_state(self) -> None:
        """Make the state tensors a change of the hyperparameters calls for (SGD's
        momentum buffer, once a schedule such as ``OneCycleLR`` turns momentum on) as
        torch makes them: on each member's next step, as on its first (zeros, and
        torch's SGD clones the gradient into a new buffer, which a rule that keeps no
        step count sees as step 1). Keys never go: torch keeps a buffer it stops using."""
        grown = tuple(k for k in self.rule.state_keys(self.group) if k not in self.keys)
        if not grown:
            return
        self.keys = self.keys + grown
        for p, loose in self._loose.items():
            if loose is not None:
                loose.update({k: torch.zeros_like(p) for k in grown})
        if self._flat:
            first = self.params[0]
            for k in grown:
                buffer = torch.zeros(self.flat.numel, dtype=first.dtype, device=first.device)
                self._flat[k], self._views[k] = buffer, tuple(self.flat.views(buffer))
            _entry.forget_prepared()
        if not self.rule.saves_step:
            self.steps = [0] * len(self.steps)

    def _drop_state(self, keys: tuple[str, ...]) -> None:
        """Undo :meth:`_grow_state` for ``keys`` (a step that failed)."""
        if not keys:
            return
        self.keys = tuple(k for k in self.keys if k not in keys)
        for loose in self._loose.values():
            if loose is not None:
                for k in keys:
                    loose.pop(k, None)
        for k in keys:
            self._flat.pop(k, None)
            self._views.pop(k, None)
        _entry.forget_prepared()

    def _gather_steady(self, params: list[Tensor]) -> bool:
        """Copy the gradients of a steady flat step into the flat gradient buffer;
        whether every one was there to copy. The 0-dim ones, which ``cat`` does not
        copy, are checked here; a run whose total differs makes ``cat`` resize its
        output (a warning, turned into the refusal it is)."""
        grads = [p.grad for p in params]
        for i in self.flat.scalars:
            grad = grads[i]
            if grad is None or grad.is_sparse or grad.shape != self.shapes[i]:
                return False
        _, target = self._flat_scratch()
        try:
            # no_grad: gradients of create_graph=True require grad
            with SerialIfSmall(self.numel), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)
                self.flat.gather(grads, target)  # type: ignore[arg-type]
        except (TypeError, NotImplementedError, RuntimeError, UserWarning):
            self._scratch = None  # a resized output no longer views the buffer
            return False
        return True

    def _refuse_sparse(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """Raise for sparse gradients, before anything changed: :class:`SparseGradients`
        where torch's own optimizer steps them, else a :class:`SparseGradientError`."""
        if self.constructor in TAKES_SPARSE:
            raise SparseGradients([p for p, g in zip(params, grads, strict=True) if g.is_sparse])
        raise SparseGradientError(
            f"{self.constructor.__name__} does not support sparse gradients; "
            "use pyroopt.SparseAdam for parameters with sparse gradients"
        )

    def _step_flat(self, grads: list[Tensor], gathered: bool) -> None:
        """One update of the flat buffers; ``gathered``: the gradients are in the flat
        gradient buffer already (:meth:`_gather_steady`)."""
        # Known intact at the end of the last step, and no storage changed since: the
        # check (a data pointer per parameter) is not needed.
        if self._values is not self._known_intact and not self._values.intact():  # type: ignore[union-attr]
            self._reseat()  # a parameter was given new storage: take its values
        values = self._values
        assert values is not None
        grad, grad_target = self._flat_scratch()
        if not gathered:
            self.flat.gather(grads, grad_target)
        # the buffers split by step count (see _StepSplit), made anew only when needed
        buffer = values.loaded()
        split = self._split_by_steps
        if split is None or not split.holds(self.steps, buffer, grad, values):
            split = self._split_by_steps = _StepSplit(self, buffer, grad, grad_target, values)
        steps = list(map(_PLUS_ONE, self.steps))  # every count advances: the split holds
        if split.starts is None:  # one tensor per parameter
            batch = split.batch._replace(steps=steps)
        else:
            batch = split.batch._replace(steps=[steps[i] for i in split.starts])
        if not self._native(batch):
            self.rule.update(batch, self.group, per_param)
        values.stored()
        self.steps = split.steps = steps
        self._known_intact = values

    def _span(self, first: int, stop: int) -> slice:
        """The slice of the flat buffers that members ``first`` to ``stop - 1`` cover
        (the gaps between them included: they hold zeros that nothing reads)."""
        flat = self.flat
        return slice(flat.offsets[first], flat.offsets[stop - 1] + flat.numels[stop - 1])

    def _step_list(self, live: list[Tensor], grads: list[Tensor]) -> None:
        rows = [self.index[id(p)] for p in live]
        steps = list(self.steps)
        for i in rows:
            steps[i] += 1
        batch = Batch(
            live,
            grads,
            {k: [self._views[k][i] for i in rows] for k in self.keys},
            [steps[i] for i in rows],
        )
        if not self._native(batch):
            for piece in _pieces(batch, CHAIN_PIECE_NUMEL):
                self.rule.update(piece, self.group, per_param)
        self.steps = steps

    def _native(self, batch: Batch) -> bool:
        """Run the rule's native loop where it was chosen; ``False`` (nothing changed)
        if it cannot run this batch (counted in :attr:`chain_fallbacks`)."""
        if self.implementation.kind != "native":
            return False
        if self.rule.native_update(batch, self.group):
            return True
        self.chain_fallbacks += 1
        return False

    # -- state ------------------------------------------------------------------
    def state_dict(self, param: Tensor) -> dict[str, Any]:
        step = self.steps[self.index[id(param)]]
        state: ParamState = {}
        if step > 0 or self.rule.state_before_first_step:
            if self.rule.saves_step:
                state["step"] = (
                    torch.tensor(float(step), dtype=get_scalar_dtype())
                    if self.rule.step_as_tensor
                    else step
                )
            state.update(snapshot(self.live_state(param)))
        return one_param_state(state, self.group)

    def load_state_dict(self, param: Tensor, state_dict: Mapping[str, Any]) -> None:
        # A state tensor saved as None is one not made yet: torch before 2.0 saved SGD's
        # momentum buffer as None while momentum was 0, and makes it on the next step.
        saved = {
            k: v
            for k, v in state_dict["state"].get(0, {}).items()
            if not (v is None and k in PARAM_SHAPED_STATE)
        }
        i = self.index[id(param)]
        self._split_by_steps = None  # the counts change in place
        if not saved:  # never stepped: state and count as for a new parameter
            initial = self.rule.initial_state(param, self.group)
            with torch.no_grad():
                for key, view in self.live_state(param).items():
                    view.copy_(initial[key])
            self.steps[i] = 0
            return
        missing = [k for k in self.keys if k not in saved]
        if missing:
            raise ValueError(
                f"optimizer state for a parameter of shape {tuple(param.shape)} lacks "
                f"{missing}; it holds {sorted(saved)}"
            )
        check_shapes(param, {k: saved[k] for k in self.keys})
        # torch's SGD keeps no step count: holding a momentum buffer means "stepped".
        step = int(float(saved["step"])) if self.rule.saves_step else 1
        views = self.live_state(param)
        with torch.no_grad():
            for k in self.keys:
                views[k].copy_(saved[k])
        self.steps[i] = step


_Item = tuple[Tensor, Tensor, dict[str, Tensor], int]


def _pieces(whole: Batch, size: int) -> list[Batch]:
    """Split an update into pieces of about ``size`` elements.

    Small tensors are batched together; a large contiguous tensor is cut into flat
    slices (the rules are elementwise, and each slice keeps its parameter's step).
    """
    params, grads, state, steps = whole
    if sum(p.numel() for p in params) <= size:
        return [whole]
    items: list[_Item] = []
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        own = {k: state[k][i] for k in state}
        tensors = [p, g, *own.values()]
        if p.numel() <= size or not all(t.is_contiguous() for t in tensors):
            items.append((p, g, own, steps[i]))
            continue
        for start in range(0, p.numel(), size):
            cut = slice(start, start + size)
            items.append(
                (
                    p.view(-1)[cut],
                    g.view(-1)[cut],
                    {k: t.view(-1)[cut] for k, t in own.items()},
                    steps[i],
                )
            )
    pieces: list[Batch] = []
    batch: list[_Item] = []
    filled = 0
    for item in items:
        if batch and filled + item[0].numel() > size:
            pieces.append(_transpose(batch))
            batch, filled = [], 0
        batch.append(item)
        filled += item[0].numel()
    pieces.append(_transpose(batch))
    return pieces


def _equal_runs(values: list[int]) -> list[tuple[int, int]]:
    """``(first, stop)`` of each run of equal neighbours in ``values``.

    >>> _equal_runs([3, 3, 1, 1, 1, 2])
    [(0, 2), (2, 5), (5, 6)]
    """
    # where a value differs from the one before it, found in C (a step's hot path)
    starts = [0, *compress(count(1), map(operator.ne, values[1:], values))]
    return list(zip(starts, [*starts[1:], len(values)], strict=True))


_PLUS_ONE = (1).__add__


class _StepSplit:
    """How a flat step of a rule bucket splits its buffers by step count, kept while
    the counts, buffers and layout it was made for stay (a flat step advances every
    count by one, which keeps the split; joins, leaves and loads make a new one).

    All members at one count (the usual case): the whole flat buffers, one count.
    Otherwise each run of neighbours that share a count (parameters that joined
    together) is one slice, or, where runs are short (one new parameter per step),
    each parameter's own slice with its own count.
    """

    def __init__(
        self, bucket: RuleBucket, buffer: Tensor, grad: Tensor, target: Target, values: FlatValues
    ) -> None:
        self.steps, self.buffer, self.grad, self.values = bucket.steps, buffer, grad, values
        flat, keys = bucket._flat, bucket.keys
        runs = _equal_runs(bucket.steps)
        #: the member that stands for each slice's count; ``None``: one per member
        self.starts: list[int] | None = [a for a, _ in runs]
        # Tuples of the bucket's own buffers (and views of them), fixed while the split
        # holds: the native entry reads their pointers once (_entry._prepared).
        if len(runs) == 1:
            self.batch = Batch((buffer,), (grad,), {k: (flat[k],) for k in keys}, [])
        elif len(runs) * 4 <= len(bucket.steps):
            cuts = [bucket._span(a, b) for a, b in runs]
            self.batch = Batch(
                tuple(buffer[c] for c in cuts),
                tuple(grad[c] for c in cuts),
                {k: tuple(flat[k][c] for c in cuts) for k in keys},
                [],
            )
        else:
            self.starts = None
            self.batch = Batch(values.views, target.views, bucket._views, [])

    def holds(self, steps: list[int], buffer: Tensor, grad: Tensor, values: FlatValues) -> bool:
        """Whether the split was made for these counts (the very list: each flat step
        hands the split its new one) and buffers."""
        return (
            steps is self.steps
            and buffer is self.buffer
            and grad is self.grad
            and values is self.values
        )


def _transpose(items: list[_Item]) -> Batch:
    return Batch(
        [item[0] for item in items],
        [item[1] for item in items],
        {k: [item[2][k] for item in items] for k in items[0][2]},
        [item[3] for item in items],
    )


class GroupOptimizer(Optimizer):
    """A torch optimizer in name only, over one hyperparameter dict of a bucket.

    torch's learning-rate schedulers accept only :class:`~torch.optim.Optimizer`
    instances and act on their ``param_groups``; this one's single group *is* the
    bucket's, so a schedule moves the bucket's ``lr`` (or momentum) directly. Its
    :meth:`step` does nothing: the bucket calls it so that the schedule knows the
    optimizer has stepped.
    """

    def __init__(self, group: Group) -> None:
        super().__init__([torch.zeros(0)], dict(group))
        self.param_groups = [group]

    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        return None


__all__ = ["RuleBucket"]
