"""PyroOptim: pyro.optim's optimizer wrapper, with every parameter stepped together.

A call goes down three layers: :mod:`pyroopt.placement` plans which buckets step which
parameters (taking in new ones), :mod:`pyroopt.clip` clips the gradients, and each
bucket (:mod:`pyroopt.bucket`) checks its inputs and then steps, as
:mod:`pyroopt.dispatch` chose to step it. Every bucket checks before any clips or
steps, so a refused call changes nothing.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyro.optim
import torch
from torch import Tensor

from pyroopt import checkpoint
from pyroopt.bucket import SparseGradients
from pyroopt.clip import all_finite, clip_step_
from pyroopt.param_args import ArgsSpec, ClipArgs, PerParamArgs
from pyroopt.params import Slot
from pyroopt.placement import Placement, Schedules
from pyroopt.views import OptimObjs


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
    :param schedules: what every bucket carries beside its optimizer
        (:class:`pyroopt.placement.Schedules`); :class:`pyroopt.PyroLRScheduler` passes
        its learning-rate schedules.

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
        schedules: Schedules | None = None,
    ) -> None:
        # pyro.optim.PyroOptim.__init__ is deliberately not called: this class replaces
        # all of its behaviour and only inherits so that SVI's isinstance check passes.
        if not callable(optim_constructor):
            raise TypeError(
                f"optim_constructor must be a torch.optim.Optimizer class or a callable "
                f"returning an optimizer, got {optim_constructor!r}"
            )
        args = PerParamArgs(optim_args, "optim_args")
        clips = ClipArgs(clip_args, skip_nonfinite)
        # pyro.optim's attribute names, which user code reads
        self.pt_optim_constructor = optim_constructor
        self.pt_optim_args = optim_args
        self.pt_clip_args = clip_args if clip_args is not None else {}
        if args.arity:
            self.pt_optim_args_argc = args.arity
        self._clips = clips
        self.track_grad_norms = bool(track_grad_norms)
        self.skip_nonfinite = clips.skip_nonfinite
        #: how many steps ``skip_nonfinite`` has skipped
        self.skipped_steps = 0
        self._placement = Placement(optim_constructor, args, clips.for_param, schedules)
        self._last_norms: dict[Slot, Tensor] = {}
        self._last_global_norm: Tensor | None = None
        # One call at a time: calls from several threads run as if made one by one.
        self._lock = threading.RLock()

    # -- copying ----------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """What ``copy.deepcopy`` and pickle copy: everything but the lock."""
        with self._lock:
            state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._placement.rekey()

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
        placement, clips = self._placement, self._clips
        plan, steady = placement.plan(params)
        clipping = bool(plan.clipped) or clips.global_norm is not None
        # Check, then change: every bucket checks its inputs before any is clipped or
        # stepped. Sparse gradients that only torch's own optimizer steps move their
        # parameters to one (with their state) and the call is planned again.
        while True:
            try:
                for bucket, bucket_params in plan.steps:
                    if args or kwargs:
                        bucket.check_step_args(args, kwargs)
                    bucket.check(bucket_params, gather=not clipping, steady=steady)
                break
            except SparseGradients as sparse:
                placement.hand_to_torch(sparse.params)
                plan, steady = placement.plan(params)
        if self.skip_nonfinite and not all_finite([s.param.grad for s in plan.slots]):
            self._skip_step()
            return
        norms, joint = clip_step_(
            plan.slots,
            plan.clipped,
            track_norms=self.track_grad_norms,
            global_norm=clips.global_norm,
        )
        if norms is not None:
            self._last_norms = norms
        if joint is not None:
            self._last_global_norm = joint
        for bucket, bucket_params in plan.steps:
            bucket.step(bucket_params, *args, steady=steady, **kwargs)
        placement.stepped(plan, steady)

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

    # -- reading ----------------------------------------------------------------------
    @property  # type: ignore[override]
    def optim_objs(self) -> Mapping[Tensor, Any]:
        """Maps each parameter seen so far to an optimizer-like view of its state."""
        return OptimObjs(self)

    @optim_objs.setter
    def optim_objs(self, value: Any) -> None:
        raise AttributeError("optim_objs is read-only in pyroopt")

    def learning_rates(self) -> dict[str, float]:
        """The current learning rate of every parameter seen so far, by name."""
        with self._lock:
            return {
                slot.name: slot.bucket.lr(slot.param)
                for slot in self._placement.table
                if slot.name is not None
            }

    def implementations(self) -> dict[str, str]:
        """What steps each parameter seen so far, by name, and why: one of
        :data:`pyroopt.dispatch.KINDS` and its reason (see :mod:`pyroopt.dispatch`),
        e.g. ``{"loc": "native: pyroopt_adam_f32 (avx512 clone)"}``."""
        with self._lock:
            table = self._placement.table
            return {s.name: s.bucket.describe() for s in table if s.name is not None}

    def grad_norms(self) -> dict[str, float]:
        """Each parameter's gradient norm at the last step, before clipping, by name.

        Recorded when ``track_grad_norms=True`` or when clipping by norm.
        """
        table = self._placement.table
        if not self._last_norms and not (
            self.track_grad_norms or any("clip_norm" in s.clip for s in table)
        ):
            raise RuntimeError(
                "gradient norms are recorded only with track_grad_norms=True or clip_norm"
            )
        return {
            name: float(n)
            for seen, n in self._last_norms.items()
            if (name := seen.name) is not None and table.get(seen.param) is seen
        }

    def global_grad_norm(self) -> float | None:
        """The joint gradient norm of the last step before ``clip_global_norm``, if used."""
        return None if self._last_global_norm is None else float(self._last_global_norm)

    # -- state ------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """``{param_name: per-parameter optimizer state dict}``, as pyro.optim gives it.

        Unlike pyro.optim, the values are snapshots (later steps do not change them),
        and state loaded for parameters not seen yet is included, so saving right
        after loading loses nothing.
        """
        with self._lock:
            return self._placement.get_state()

    def set_state(self, state_dict: Mapping[str, Any]) -> None:
        """Set state from :meth:`get_state` (or pyro.optim's ``get_state``).

        As in pyro.optim, each entry waits for the next new tensor of its name (the one
        ``param_store.load`` or ``pyro.param`` creates), so a checkpoint restored into an
        optimizer that has already stepped continues where it was saved, in either order
        of loading the param store and the optimizer. Unlike pyro.optim, which ignores
        it there, an entry is also applied at once to a parameter already seen whose
        tensor is still the param store's. All or nothing: if any entry cannot be
        applied, nothing changes.
        """
        self._set_state(state_dict, "state_dict")

    def _set_state(self, state_dict: Mapping[str, Any], where: str) -> None:
        """:meth:`set_state`, naming ``where`` the state came from in errors."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                "state_dict must be a dict of {param_name: state}, got "
                f"{type(state_dict).__name__}"
            )
        with self._lock:
            self._placement.set_state(state_dict, where)

    def _check_state(self, name: Any, state: Any, where: str) -> None:
        """Raise unless ``state`` is a well-formed saved entry of parameter ``name``."""
        self._placement.schedules.check_entry(name, state, where)

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
        """Read a file written by :meth:`save` or by pyro.optim and :meth:`set_state` it;
        every error, even one only applying the state finds, names the file.

        Loads with ``torch.load(weights_only=True)``: the file cannot run code.
        ``weights_only=False`` unpickles arbitrary objects, which can run any code the
        file names: use it only for files you trust.
        """
        path = os.fspath(filename)
        state = checkpoint.load_state(path, map_location=map_location, weights_only=weights_only)
        checkpoint.apply_state(self, state, path)


#: the other public names of pyro.optim.optim, here as there: the factories of Pyro's
#: own optimizers and ``is_scheduler`` (defined elsewhere in pyroopt, which imports this
#: module first)
_PYRO_OPTIM_NAMES = {
    "AdagradRMSProp": "pyroopt.factories",
    "ClippedAdam": "pyroopt.factories",
    "DCTAdam": "pyroopt.factories",
    "is_scheduler": "pyroopt.lr_scheduler",
}


def __getattr__(name: str) -> Any:
    """``from pyroopt.optim import ClippedAdam`` as ``from pyro.optim.optim import
    ClippedAdam``: the factory that ``pyroopt.ClippedAdam`` is."""
    module = _PYRO_OPTIM_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
