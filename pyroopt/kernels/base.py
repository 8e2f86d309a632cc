"""The interface between the engine and an update rule that pyroopt owns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from pyroopt.kernels._coef import Coef, TensorList

#: Arguments that choose how torch runs an algorithm, not what it computes.
IMPLEMENTATION_ARGS = ("foreach", "fused", "capturable", "differentiable")

#: Turns one value per parameter into a coefficient for the tensors being updated.
CoefFn = Callable[[Sequence[float]], Coef]
#: Picks a native loop's C function for a dtype (``None``: it cannot run).
FunctionFor = Callable[[torch.dtype], Any]


class Batch(NamedTuple):
    """What one call of an update rule updates, as lists of tensors.

    Either one entry per parameter or a single flat buffer covering all of them.
    ``state`` maps each of the rule's state keys to such a list, and ``steps`` holds the
    step counts *after* this step (1 on a parameter's first step): one per parameter,
    or a single count standing for all of them.
    """

    params: TensorList
    grads: TensorList
    state: Mapping[str, TensorList]
    steps: Sequence[int]


class UpdateRule(ABC):
    """An optimization algorithm as a functional update over many tensors at once.

    The engine keeps, for every parameter of a bucket, the state tensors named by
    :meth:`state_keys` (zero-initialised, in the parameter's shape) and a step count.
    :meth:`update` receives a :class:`Batch` of them and ``coef``, which turns
    per-parameter values into a coefficient of the right form for the batch (see
    :mod:`pyroopt.kernels._coef`).

    A rule follows the hyperparameters, numerics and state format of the optimizer
    class it stands for (:mod:`pyroopt.registry` says which), so that state dicts
    interoperate with it.
    """

    #: whether the optimizer keeps a ``"step"`` entry in its per-parameter state
    saves_step: bool = True
    #: whether that step is a tensor (torch's optimizers) or an int (pyro's)
    step_as_tensor: bool = True
    #: whether the optimizer holds state for a parameter before its first step
    state_before_first_step: bool = False
    #: whether a complex parameter, its gradient and its state are updated as pairs of
    #: reals (``torch.view_as_real``), as torch's optimizers update them; ``False`` where
    #: the optimizer computes in complex arithmetic and :meth:`update` does the same
    complex_as_real: bool = True
    #: whether :meth:`native_update` can run (pyroopt's one-pass C loop computes this
    #: rule, bitwise equal to :meth:`update`)
    has_native: bool = False

    def supports(self, group: Mapping[str, Any]) -> bool:
        """Whether the rule computes exactly what its optimizer class would for ``group``."""
        return (
            not group.get("foreach")
            and not group.get("fused")
            and not group.get("capturable")
            and not group.get("differentiable")
            and not any(isinstance(v, Tensor) for v in group.values())
        )

    def exact_on_flat(self, param: Tensor) -> bool:
        """Whether :meth:`update` on a flat buffer, or on a slice of one, gives ``param``
        the numbers torch gives it in a tensor of its own.

        Not on the CPU in float16 and bfloat16: torch's CPU kernels compute
        ``add(other, alpha=a)`` there with a fused multiply-add in their vector body and
        with two roundings in the scalar tail that ends each thread's range (measured:
        about 1 element in 15 of such a tail differs), so an element's value depends on
        where it sits in its tensor and on the thread count. Such parameters get
        torch's numbers only stepped in their own tensors at the caller's thread count.
        """
        return param.device.type != "cpu" or param.dtype in (torch.float32, torch.float64)

    @abstractmethod
    def state_keys(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        """Names of the per-parameter state tensors, in torch's key names."""

    def initial_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        """The state tensors of ``param`` before its first step (zeros, for most rules)."""
        return {k: torch.zeros_like(param) for k in self.state_keys(group)}

    @abstractmethod
    def update(self, batch: Batch, group: Mapping[str, Any], coef: CoefFn) -> None:
        """Update the batch's parameters and state in place. Its gradients may be modified."""

    def advances_group(self, group: Mapping[str, Any]) -> bool:
        """Whether every call of ``step`` changes ``group`` (e.g. ClippedAdam's ``lrd``)."""
        return False

    def advance_group(self, group: dict[str, Any]) -> None:
        """Change ``group`` as one call of the optimizer's ``step`` does, before updating."""
        return None  # most optimizers never change their hyperparameters

    def native_update(
        self, batch: Batch, group: Mapping[str, Any], function_for: FunctionFor | None = None
    ) -> bool:
        """The same update, bitwise, in one pass of pyroopt's C loop over every tensor.

        ``batch.steps`` holds one count per tensor, or a single count standing for all.
        It writes no gradient (but ClippedAdam's, which it clamps in place as pyro does),
        and it marks every tensor it writes as modified for autograd. Returns ``False``
        (having changed nothing) where the loop cannot run (no library, CUDA, half
        precision, non-contiguous tensors); the engine then calls :meth:`update`, which
        computes the same numbers.

        ``function_for`` picks the C function per dtype: by default the loop's own,
        which the library's self-check (:mod:`pyroopt.native.selfcheck`) has passed; the
        check itself passes the unchecked one.
        """
        return False
