"""Buckets: parameters that share an algorithm, its hyperparameters, device and dtype.

A bucket steps all of its parameters in one pass while each parameter keeps its own
step count and state, and it speaks pyro.optim's per-parameter state format::

    {"state": {0: {"step": ..., "exp_avg": ..., ...}},  # empty before the first step
     "param_groups": [{"lr": ..., ..., "params": [0]}]}

Three kinds, fastest first (:func:`make_bucket` picks):

- :class:`RuleBucket` runs an update rule pyroopt owns (:mod:`pyroopt.kernels`) on one
  flat buffer per state over the whole bucket. Gradients are gathered with
  ``torch.cat``; parameters live in a flat buffer of their own where that is safe
  (:mod:`pyroopt.seating`), so the update needs no scatter. The update is the rule's
  one-pass C loop (:mod:`pyroopt.native`) where it runs, else its chain of torch ops;
  both compute torch's single-tensor numbers bit for bit, and every element's value
  is independent of where its parameter sits in a buffer.
- :class:`TorchBucket` holds one torch optimizer over all the bucket's parameters,
  with the implementation torch picks by default for them (``foreach`` on CUDA, the
  single-tensor loop on CPU), which is the one a per-parameter optimizer picks too;
  ``fused=True`` or ``foreach=True`` runs only when the user asks for it.
- :class:`PerParamBucket` holds one optimizer per parameter, exactly as pyro.optim
  does; it serves constructors pyroopt knows nothing about.
"""

from __future__ import annotations

import bisect
import inspect
import operator
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from itertools import compress, count
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from pyroopt import dispatch
from pyroopt._compat import get_scalar_dtype
from pyroopt.dispatch import Implementation
from pyroopt.flat import FlatLayout, Target, torch_alignment
from pyroopt.interrupts import DeferInterrupts
from pyroopt.kernels import IMPLEMENTATION_ARGS, UpdateRule
from pyroopt.kernels._coef import per_param
from pyroopt.kernels.base import Batch
from pyroopt.native import _entry
from pyroopt.optimizers import SparseGradientError
from pyroopt.registry import group_rule, rule_for
from pyroopt.seating import FlatValues
from pyroopt.serial import SerialIfSmall

Group = dict[str, Any]
_IS_SPARSE = operator.attrgetter("is_sparse")

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
ParamState = dict[str, Any]

#: torch optimizers whose own implementation steps sparse gradients: a rule bucket hands
#: parameters with sparse gradients over to one of those (see :class:`SparseGradients`)
TAKES_SPARSE: frozenset[Any] = frozenset((torch.optim.SGD, torch.optim.Adagrad))


def freeze(value: Any) -> Hashable:
    """A hashable stand-in for a hyperparameter value, equal for equal values."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Tensor):
        return ("tensor", id(value))
    try:
        hash(value)
    except TypeError:
        return ("object", id(value))
    return value


def hyperparameters(optimizer: Optimizer, index: int = 0) -> Group:
    """The hyperparameters of one param group, without its parameters."""
    return {k: v for k, v in optimizer.param_groups[index].items() if k not in ("params",)}


def one_param_state(state: ParamState, group: Group) -> dict[str, Any]:
    """pyro.optim's per-parameter state dict: a one-parameter torch optimizer's."""
    return {
        "state": {0: state} if state else {},
        "param_groups": [{**group, "params": [0]}],
    }


def _snapshot(state: Mapping[str, Any]) -> ParamState:
    return {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in state.items()}


class SparseGradients(Exception):
    """A bucket cannot step these parameters' sparse gradients; it changed nothing."""

    def __init__(self, params: list[Tensor]) -> None:
        super().__init__(f"{len(params)} parameters have sparse gradients")
        self.params = params


class Bucket(ABC):
    """Parameters stepped together; the state API speaks per parameter."""

    def __init__(
        self, constructor: Callable[..., Optimizer], group: Group, implementation: Implementation
    ) -> None:
        self.constructor = constructor
        #: what steps the bucket, and why (:mod:`pyroopt.dispatch` chose it)
        self.implementation = implementation
        #: hyperparameters as the user asked for them (what the state format records)
        self.group = group
        self.params: list[Tensor] = []
        #: id(param) -> position in ``params``
        self.index: dict[int, int] = {}
        #: the sort key of each of ``params``, ascending (see :meth:`add`)
        self.sort_keys: list[Any] = []
        #: the shape each of ``params`` had when it joined: its state's shape
        self.shapes: list[torch.Size] = []
        #: the dtype and device every member has (set by the first)
        self.dtype: torch.dtype | None = None
        self.device: torch.device | None = None

    def add(self, param: Tensor, sort_key: Any = None) -> int:
        """Make ``param`` a member; its position in ``params``.

        Members are kept in ascending ``sort_key`` order (the optimizer passes one
        derived from the parameter's name), so that buffers and state are laid out the
        same whatever order parameters arrive in. Without a key it goes last.
        """
        if not self.params:
            self.dtype, self.device = param.dtype, param.device
        if sort_key is None or not self.sort_keys or self.sort_keys[-1] < sort_key:
            position = len(self.params)
        else:
            position = bisect.bisect(self.sort_keys, sort_key)
        self.sort_keys.insert(position, sort_key if sort_key is not None else (2, position))
        self.shapes.insert(position, param.shape)
        self.params.insert(position, param)
        if position == len(self.params) - 1:
            self.index[id(param)] = position
        else:
            self.index = {id(p): i for i, p in enumerate(self.params)}
        return position

    def remove(self, param: Tensor) -> None:
        position = self.index.pop(id(param))
        self.params.pop(position)
        self.sort_keys.pop(position)
        self.shapes.pop(position)
        self.index = {id(p): i for i, p in enumerate(self.params)}

    def shape_of(self, param: Tensor) -> torch.Size:
        """The shape ``param`` had when it joined (its state's shape)."""
        return self.shapes[self.index[id(param)]]

    def rekey(self) -> None:
        """Index the members anew after they were copied (``copy.deepcopy``, pickle):
        the index is by ``id``, which a copy does not keep."""
        self.index = {id(p): i for i, p in enumerate(self.params)}

    def label(self, param: Tensor) -> str:
        """How errors name ``param``: its Pyro name, from the sort key the optimizer gave."""
        key = self.sort_keys[self.index[id(param)]]
        if isinstance(key, tuple) and len(key) == 2 and key[0] == 0:
            return repr(key[1])
        return f"an unnamed parameter of shape {tuple(param.shape)}"

    def check(self, params: list[Tensor], *, gather: bool = True, steady: bool = False) -> None:
        """Raise before anything changes unless ``params`` (members, in bucket order)
        can be stepped; the optimizer checks every bucket of a call before it clips or
        steps any. ``gather``: the gradients will not change before the step (no
        clipping), so a bucket may already copy them. ``steady``: no member has been
        given new storage since the end of the bucket's last step (the optimizer's plan
        knows)."""
        live = [p for p in params if p.grad is not None]
        self.check_inputs(live, [p.grad for p in live])  # type: ignore[misc]

    def check_inputs(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """Raise before anything changes unless every parameter still has the shape its
        state was made for and every gradient matches its parameter in shape, dtype,
        device and layout (pyro.optim's torch optimizers refuse such a step too)."""
        shapes, index = self.shapes, self.index
        for p, g in zip(params, grads, strict=True):
            made_for = shapes[index[id(p)]]
            if p.shape != made_for:
                raise RuntimeError(
                    f"parameter {self.label(p)} has shape {tuple(p.shape)}, but its optimizer "
                    f"state was made for shape {tuple(made_for)}; give the new tensor a new "
                    "name, or set its state anew (set_state), before stepping it"
                )
            if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                raise ValueError(
                    f"the gradient of parameter {self.label(p)} is a {tuple(g.shape)} "
                    f"{g.dtype} tensor on {g.device}; the parameter is a {tuple(p.shape)} "
                    f"{p.dtype} tensor on {p.device}, and a gradient must match it"
                )

    def order(self, params: list[Tensor]) -> list[Tensor]:
        """``params`` (all members) in bucket order, so results never depend on set order."""
        if len(params) == len(self.params):
            return self.params
        index = self.index
        return sorted(params, key=lambda p: index[id(p)])

    def describe(self) -> str:
        """What steps the bucket, and why (:meth:`pyroopt.PyroOptim.implementations`)."""
        return str(self.implementation)

    def check_step_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise ``TypeError`` unless ``step`` takes these extra arguments."""
        _closure_only(self.constructor, args, kwargs)

    @abstractmethod
    def step(self, params: list[Tensor], *args: Any, steady: bool = False, **kwargs: Any) -> None:
        """Step ``params`` (members of this bucket, in bucket order) that have a gradient;
        ``args`` and ``kwargs`` go to the optimizer's ``step``, ``steady`` as for
        :meth:`check`."""

    @abstractmethod
    def state_dict(self, param: Tensor) -> dict[str, Any]:
        """A snapshot of ``param``'s state in pyro.optim's per-parameter format."""

    @abstractmethod
    def load_state_dict(self, param: Tensor, state_dict: Mapping[str, Any]) -> None:
        """Set ``param``'s state from pyro.optim's per-parameter format."""

    def lr(self, param: Tensor) -> float:
        return float(self.current_group()["lr"])

    def current_group(self) -> Group:
        """The hyperparameters as they are now (a schedule or ``lrd`` may move ``lr``)."""
        return self.group

    def advances_group(self) -> bool:
        """Whether each step changes the hyperparameters of the parameters it steps.

        Then a call that passes only some of the bucket's parameters must first split
        them off into a bucket of their own, or the others would change with them.
        """
        rule = group_rule(self.constructor)
        return rule is not None and rule.advances_group(self.current_group())

    def schedule_target(self) -> Optimizer:
        """The torch optimizer whose ``param_groups`` a learning-rate schedule drives."""
        raise NotImplementedError

    def restore_group(self, group: Mapping[str, Any]) -> None:
        """Set the hyperparameters to ``group`` (e.g. after a schedule's first step)."""
        target = self.schedule_target().param_groups[0]
        target.update({k: v for k, v in group.items() if k not in ("params", *IMPLEMENTATION_ARGS)})


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
        closure = _closure_only(self.constructor, args, kwargs)
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
            state.update(_snapshot(self.live_state(param)))
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


def _closure_only(
    constructor: Callable[..., Optimizer], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[], Any] | None:
    """The ``closure`` of ``step(closure)``, the one argument a torch optimizer takes."""
    if not kwargs and len(args) <= 1:
        closure = args[0] if args else None
    elif not args and set(kwargs) == {"closure"}:
        closure = kwargs["closure"]
    else:
        raise TypeError(
            f"{getattr(constructor, '__name__', constructor)}.step() takes only a closure; "
            f"got args={args!r} kwargs={kwargs!r}"
        )
    if closure is not None and not callable(closure):
        raise TypeError(f"closure must be callable, got {closure!r}")
    return closure


class TorchBucket(Bucket):
    """One torch optimizer over the whole bucket, with torch's default implementation."""

    def __init__(
        self, constructor: Callable[..., Optimizer], group: Group, implementation: Implementation
    ):
        super().__init__(constructor, group, implementation)
        self.optimizer: Optimizer | None = None
        # Whether the optimizer makes its state when constructed rather than on its
        # first step (torch 2.4's Adagrad), so a parameter that joins needs it made.
        self._eager_state = False

    def _run_args(self) -> Group:
        return self.group

    def add(self, param: Tensor, sort_key: Any = None) -> int:
        position = super().add(param, sort_key)
        if self.optimizer is None:
            self.optimizer = construct(self.constructor, [param], self._run_args())
            self.optimizer.param_groups[0]["params"] = self.params
            self._eager_state = bool(self.optimizer.state)
        elif self._eager_state:  # the state its own optimizer would have made for it
            alone = construct(self.constructor, [param], self._run_args())
            self.optimizer.state[param] = alone.state[param]
        # The optimizer's group holds this very list, so it has seen the insertion.
        return position

    def remove(self, param: Tensor) -> None:
        assert self.optimizer is not None
        self.optimizer.state.pop(param, None)
        super().remove(param)
        self.optimizer.param_groups[0]["params"] = self.params

    def step(self, params: list[Tensor], *args: Any, steady: bool = False, **kwargs: Any) -> None:
        assert self.optimizer is not None
        group = self.optimizer.param_groups[0]
        group["params"] = params
        try:
            self.optimizer.step(*args, **kwargs)
        finally:
            group["params"] = self.params

    def _public_group(self) -> Group:
        assert self.optimizer is not None
        return hyperparameters(self.optimizer)

    def state_dict(self, param: Tensor) -> dict[str, Any]:
        assert self.optimizer is not None
        return one_param_state(_snapshot(self.optimizer.state.get(param, {})), self._public_group())

    def load_state_dict(self, param: Tensor, state_dict: Mapping[str, Any]) -> None:
        assert self.optimizer is not None
        saved = state_dict["state"].get(0, {})
        if not hasattr(param, "_pyro_dct_dim"):  # DCTAdam keeps wider moments for those
            check_shapes(param, {k: v for k, v in saved.items() if k in PARAM_SHAPED_STATE})
        # A one-parameter optimizer of the same kind applies torch's own casting rules.
        scratch = construct(self.constructor, [param], self._run_args())
        scratch.load_state_dict(_with_group(state_dict, self._run_args()))
        self.optimizer.state[param] = scratch.state[param]

    def current_group(self) -> Group:
        return self._public_group()

    def advances_group(self) -> bool:
        """Also true where torch's step treats the group as one: its fused SGD decides
        "first step" for the whole group (all momentum buffers absent or none), and its
        foreach SGD with momentum updates the buffers with ``_foreach_mul_`` and
        ``_foreach_add_`` only when none is missing, else one tensor at a time (other
        roundings in float16 and bfloat16 on the CPU). So a parameter may join only
        before the first step, and leaves with any that step apart."""
        group = self.group
        foreach_momentum = (
            self.constructor is torch.optim.SGD
            and bool(group.get("foreach"))
            and group.get("momentum", 0) != 0
        )
        return super().advances_group() or bool(group.get("fused")) or foreach_momentum

    def schedule_target(self) -> Optimizer:
        assert self.optimizer is not None
        return self.optimizer


class PerParamBucket(Bucket):
    """One optimizer per parameter, as pyro.optim builds them, for unknown constructors."""

    def __init__(
        self, constructor: Callable[..., Optimizer], group: Group, implementation: Implementation
    ):
        super().__init__(constructor, group, implementation)
        self.optimizers: dict[int, Optimizer] = {}  # by id(param)

    def add(self, param: Tensor, sort_key: Any = None) -> int:
        position = super().add(param, sort_key)
        self.optimizers[id(param)] = construct(self.constructor, [param], self.group)
        return position

    def remove(self, param: Tensor) -> None:
        super().remove(param)
        del self.optimizers[id(param)]

    def rekey(self) -> None:
        super().rekey()
        self.optimizers = {
            id(optimizer.param_groups[0]["params"][0]): optimizer
            for optimizer in self.optimizers.values()
        }

    def check_step_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Any: an optimizer pyroopt does not know may take arguments of its own."""

    def check(self, params: list[Tensor], *, gather: bool = True, steady: bool = False) -> None:
        """Nothing: an optimizer pyroopt does not know checks its own inputs."""

    def step(self, params: list[Tensor], *args: Any, steady: bool = False, **kwargs: Any) -> None:
        for p in params:
            self.optimizers[id(p)].step(*args, **kwargs)

    def state_dict(self, param: Tensor) -> dict[str, Any]:
        optimizer = self.optimizers[id(param)]
        state = optimizer.state_dict()
        return one_param_state(_snapshot(state["state"].get(0, {})), hyperparameters(optimizer))

    def load_state_dict(self, param: Tensor, state_dict: Mapping[str, Any]) -> None:
        self.optimizers[id(param)].load_state_dict(dict(state_dict))

    def lr(self, param: Tensor) -> float:
        return float(self.optimizers[id(param)].param_groups[0]["lr"])

    def advances_group(self) -> bool:
        return False  # each parameter has an optimizer of its own

    def schedule_target(self) -> Optimizer:
        if len(self.optimizers) != 1:
            raise RuntimeError("a schedule drives a bucket of one parameter's optimizer")
        return next(iter(self.optimizers.values()))


#: State entries that torch's optimizers (and pyro's) keep in the parameter's shape.
PARAM_SHAPED_STATE = frozenset(
    {
        "exp_avg",
        "exp_avg_sq",
        "max_exp_avg_sq",
        "exp_inf",
        "momentum_buffer",
        "square_avg",
        "grad_avg",
        "acc_delta",
        "prev",
        "step_size",
        "sum",
        "ax",
    }
)


def check_shapes(param: Tensor, state: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless every tensor in ``state`` has ``param``'s shape."""
    for key, value in state.items():
        shape = tuple(value.shape) if isinstance(value, Tensor) else None
        if shape != tuple(param.shape):
            raise ValueError(
                f"saved {key!r} has shape {shape}, but the parameter has shape "
                f"{tuple(param.shape)} (did the model change?)"
            )


def construct(
    constructor: Callable[..., Optimizer], params: list[Tensor], group: Mapping[str, Any]
) -> Optimizer:
    """``constructor(params, **group)``, with entries it does not take (such as a
    schedule's ``initial_lr``) set on its param group afterwards."""
    try:
        accepted = inspect.signature(constructor).parameters
    except (TypeError, ValueError):
        return constructor(params, **group)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return constructor(params, **group)
    optimizer = constructor(params, **{k: v for k, v in group.items() if k in accepted})
    optimizer.param_groups[0].update({k: v for k, v in group.items() if k not in accepted})
    return optimizer


def _with_group(state_dict: Mapping[str, Any], group: Group) -> dict[str, Any]:
    """``state_dict`` with its one param group's hyperparameters replaced by ``group``."""
    return {
        "state": state_dict["state"],
        "param_groups": [{**group, "params": [0]}],
    }


# -- choosing a bucket ------------------------------------------------------------------


def make_bucket(
    constructor: Callable[..., Optimizer], group: Group, param: Tensor, *, sparse: bool = False
) -> Bucket:
    """The fastest bucket that computes what ``constructor(**group)`` computes for
    ``param`` (``sparse``: for its sparse gradients), as :func:`pyroopt.dispatch.choose`
    decides."""
    chosen = dispatch.choose(constructor, group, param, sparse=sparse)
    if chosen.kind in ("native", "chain"):
        rule = rule_for(constructor)
        assert rule is not None
        return RuleBucket(constructor, group, rule, chosen)
    if chosen.kind == "torch":
        return TorchBucket(constructor, group, chosen)
    return PerParamBucket(constructor, group, chosen)


def full_group(
    constructor: Callable[..., Optimizer], args: Mapping[str, Any], param: Tensor
) -> Group:
    """Every hyperparameter ``constructor`` would hold for ``args`` (defaults filled in).

    Raises ``TypeError`` naming an argument the constructor does not take, and whatever
    the constructor raises for a bad value.
    """
    try:
        accepted = inspect.signature(constructor).parameters
    except (TypeError, ValueError):
        accepted = None
    if accepted is not None and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()
    ):
        unknown = sorted(set(args) - set(accepted))
        if unknown:
            allowed = [n for n in accepted if n != "params"]
            name = getattr(constructor, "__name__", repr(constructor))
            raise TypeError(f"optim_args: {name} does not take {unknown}; it takes {allowed}")
    defaults = _rule_defaults(constructor, args)
    if defaults is not None:
        return defaults
    return hyperparameters(constructor([param], **args))


#: the parameter list torch's ``Optimizer.__init__`` refuses after it set ``defaults``
_EMPTY = "optimizer got an empty parameter list"


def _rule_defaults(constructor: Callable[..., Optimizer], args: Mapping[str, Any]) -> Group | None:
    """The hyperparameters of ``constructor(params, **args)``'s one group, read without
    building an optimizer, for the classes pyroopt steps with its own rules.

    Building any torch optimizer imports ``torch._dynamo`` (``add_param_group`` is
    wrapped by ``torch._disable_dynamo``): one to four seconds at a program's first
    step, which pyroopt's own rules never need. The class's ``__init__`` runs with an
    empty parameter list instead: it checks every argument as usual and hands its
    defaults to ``Optimizer.__init__``, which keeps them and then refuses the empty
    list before adding a group; a one-parameter group is exactly those defaults. Where
    that does not hold (another torch, ``foreach``/``fused``, whose checks follow
    ``Optimizer.__init__``), ``None``: the caller builds the optimizer.
    """
    if rule_for(constructor) is None or any(args.get(k) is not None for k in ("foreach", "fused")):
        return None
    cls: Any = constructor  # a class: only classes have rules
    probe = cls.__new__(cls)
    try:
        cls.__init__(probe, [], **args)
    except ValueError as refused:
        defaults = getattr(probe, "defaults", None)
        if str(refused) == _EMPTY and isinstance(defaults, dict):
            return dict(defaults)
    return None


def bucket_key(constructor: Any, group: Group, param: Tensor) -> Hashable:
    return (constructor, freeze(group), param.device, param.dtype)


__all__ = [
    "IMPLEMENTATION_ARGS",
    "Bucket",
    "PerParamBucket",
    "RuleBucket",
    "TorchBucket",
    "bucket_key",
    "full_group",
    "make_bucket",
]
