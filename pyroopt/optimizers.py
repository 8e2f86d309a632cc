"""Pyro's own optimizers as torch optimizers on pyroopt's kernels.

:class:`ClippedAdam`, :class:`AdagradRMSProp` and :class:`DCTAdam` take the arguments
of the pyro-ppl classes of the same names and compute the same numbers, but update all
tensors of a param group together. Inside :class:`pyroopt.PyroOptim` the engine runs
the first two on flat buffers over every parameter of a bucket.

Example::

    >>> import torch
    >>> from pyroopt.optimizers import ClippedAdam
    >>> w = torch.zeros(3, requires_grad=True)
    >>> optimizer = ClippedAdam([w], lr=0.1, clip_norm=1.0, lrd=0.5)
    >>> w.grad = torch.tensor([5.0, -0.5, 0.0])
    >>> optimizer.step()
    >>> w.detach(), optimizer.param_groups[0]["lr"]
    (tensor([-0.0500,  0.0500,  0.0000]), 0.05)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from pyro.ops.tensor_utils import dct, idct, next_fast_len
from torch import Tensor
from torch.optim import Optimizer

from pyroopt._compat import get_scalar_dtype
from pyroopt.kernels._coef import per_param
from pyroopt.kernels.adagrad_rmsprop import AdagradRMSPropRule
from pyroopt.kernels.base import Batch, UpdateRule
from pyroopt.kernels.clipped_adam import ClippedAdamRule

Params = Iterable[Tensor] | Iterable[dict[str, Any]]


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"invalid {name}: {value!r}; {allowed}")


def _check_betas(betas: Any) -> None:
    _require(
        isinstance(betas, (tuple, list))
        and len(betas) == 2
        and all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas),
        "betas",
        betas,
        "expected two numbers in [0, 1)",
    )


def _check_lr(lr: Any) -> None:
    """A number >= 0, or a one-element tensor >= 0 (as pyro's and torch's classes take)."""
    if isinstance(lr, Tensor):
        _require(lr.numel() == 1, "lr", lr, "a tensor lr must have one element")
        _require(bool(lr >= 0), "lr", lr, "expected a number >= 0")
        return
    _check_non_negative(lr=lr)


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        _require(
            isinstance(value, (int, float)) and value >= 0.0, name, value, "expected a number >= 0"
        )


class SparseGradientError(ValueError, RuntimeError):
    """An optimizer that does not step sparse gradients was given one.

    A ``RuntimeError``, as torch's optimizers (and so pyro.optim) raise it, and a
    ``ValueError``, as pyroopt raises for bad input: either ``except`` catches it.
    """


class RuleOptimizer(Optimizer):
    """A torch optimizer whose update is a pyroopt :class:`~pyroopt.kernels.base.UpdateRule`.

    Each call of :meth:`step` first lets the rule change each group (e.g. decay ``lr``),
    then updates every parameter of the group that has a gradient in one rule call.
    """

    rule: UpdateRule

    def _new_state(self, p: Tensor, group: Mapping[str, Any]) -> dict[str, Any]:
        step: Any = 0
        if self.rule.step_as_tensor:
            step = torch.tensor(0.0, dtype=get_scalar_dtype())
        return {"step": step, **self.rule.initial_state(p, group)}

    def _state(self, p: Tensor, group: Mapping[str, Any]) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state.update(self._new_state(p, group))
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns ``closure()``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self.rule.advance_group(group)
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(params, group)
        return loss

    def _update(self, params: list[Tensor], group: dict[str, Any]) -> None:
        grads = [p.grad for p in params]
        for p, g in zip(params, grads, strict=True):
            if g.is_sparse:  # type: ignore[union-attr]
                raise SparseGradientError(
                    f"{type(self).__name__} does not support sparse gradients (parameter of "
                    f"shape {tuple(p.shape)})"
                )
        states = [self._state(p, group) for p in params]
        for state in states:
            state["step"] += 1
        steps = [int(state["step"]) for state in states]
        # complex tensors as pairs of reals, as torch's optimizers take them, unless the
        # rule is pyro's own and takes them as they are (AdagradRMSProp)
        view = _real if self.rule.complex_as_real else _same
        lists = {k: [view(state[k]) for state in states] for k in self.rule.state_keys(group)}
        batch = Batch(
            [view(p) for p in params],
            [view(g) for g in grads],  # type: ignore[arg-type]
            lists,
            steps,
        )
        self.rule.update(batch, group, per_param)


def _same(t: Tensor) -> Tensor:
    return t


def _real(t: Tensor) -> Tensor:
    """Complex tensors are updated as pairs of reals, as torch's optimizers do."""
    return torch.view_as_real(t) if t.is_complex() else t


class ClippedAdam(RuleOptimizer):
    r"""Adam with elementwise gradient clamping and learning-rate decay (pyro's ClippedAdam).

    .. math::

        g &\leftarrow \operatorname{clamp}(g, -c, c) + \lambda\theta, \quad
        m \leftarrow \beta_1 m + (1-\beta_1) g, \quad
        v \leftarrow \beta_2 v + (1-\beta_2) r^2, \\
        \theta &\leftarrow \theta - \mathrm{lr}\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
            \,\frac{m}{\sqrt v + \epsilon}, \qquad \mathrm{lr} \leftarrow \mathrm{lr}
            \cdot \mathrm{lrd} \text{ on every call}

    :param lr: learning rate :math:`\mathrm{lr}` (default 1e-3); a one-element tensor
        is multiplied by ``lrd`` in place, as pyro's class does.
    :param betas: decay rates :math:`(\beta_1, \beta_2)` of the running averages of the
        gradient and of its square, each in [0, 1) (default (0.9, 0.999)).
    :param eps: :math:`\epsilon`, added to :math:`\sqrt v` (default 1e-8).
    :param weight_decay: :math:`\lambda`, an L2 penalty added to the clamped gradient.
    :param clip_norm: :math:`c`, the bound on each gradient *element* (default 10.0); it
        is not a norm, whatever its name says.
    :param lrd: factor applied to ``lr`` at every call of :meth:`step`, before the
        update, whether or not a parameter has a gradient (default 1.0).
    :param centered_variance: use :math:`r = g - m` (the centered variance of
        Rengaraj et al., 2023) instead of :math:`r = g` in :math:`v` (default False).
    """

    rule = ClippedAdamRule()

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        clip_norm: float = 10.0,
        lrd: float = 1.0,
        centered_variance: bool = False,
    ) -> None:
        _check_lr(lr)
        _check_non_negative(eps=eps, weight_decay=weight_decay, clip_norm=clip_norm, lrd=lrd)
        _check_betas(betas)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            clip_norm=clip_norm,
            lrd=lrd,
            centered_variance=centered_variance,
        )
        super().__init__(params, defaults)


class AdagradRMSProp(RuleOptimizer):
    r"""Adagrad's step-size schedule with an RMSprop-style average (pyro's AdagradRMSProp).

    .. math::

        s \leftarrow \begin{cases} g^2 & t = 1\\ (1-\tau)s + \tau g^2 & t>1\end{cases},
        \qquad \theta \leftarrow \theta - \eta\,t^{-1/2+\delta}\,\frac{g}{1+\sqrt s}

    :param eta: :math:`\eta`, the overall step size (default 1.0).
    :param delta: :math:`\delta`, which slows the :math:`t^{-1/2}` decay of the step
        size (default 1e-16).
    :param t: :math:`\tau` in [0, 1], the weight of the newest squared gradient in the
        running average :math:`s` (default 0.1).
    """

    rule = AdagradRMSPropRule()

    def __init__(self, params: Params, eta: float = 1.0, delta: float = 1.0e-16, t: float = 0.1):
        _check_non_negative(eta=eta, delta=delta)
        _require(
            isinstance(t, (int, float)) and 0.0 <= t <= 1.0, "t", t, "expected a number in [0, 1]"
        )
        super().__init__(params, dict(eta=eta, delta=delta, t=t))
        # pyro creates every parameter's state up front; keep its state dicts identical
        for group in self.param_groups:
            for p in group["params"]:
                self._state(p, group)


class DCTAdam(RuleOptimizer):
    r"""ClippedAdam with moments in the frequency domain along a time dimension (pyro's DCTAdam).

    A parameter without a ``_pyro_dct_dim`` attribute is updated exactly as by
    :class:`ClippedAdam` (without weight decay). For one with ``p._pyro_dct_dim = d``
    (a negative dimension of length :math:`T`), the clamped gradient is extended by its
    discrete cosine transform along :math:`d` (padded to a fast length), the Adam
    moments are kept for both halves, and the update :math:`m / (\sqrt v + \epsilon)`
    is mapped back by adding the time half to the inverse transform of the frequency
    half. This smooths updates of time-series parameters.

    With ``subsample_aware=True`` and ``p._pyro_subsample = {dim: indices}`` (set by
    subsampled ``pyro.plate``), only the elements in the subsample update their moments
    and step counts, which are then kept per element. Such a parameter cannot also have
    a ``_pyro_dct_dim`` (``ValueError``).

    :param lr: learning rate (default 1e-3), multiplied by ``lrd`` on every call.
    :param betas: Adam's :math:`(\beta_1, \beta_2)`, each in [0, 1).
    :param eps: added to :math:`\sqrt v` (default 1e-8).
    :param clip_norm: bound on each gradient element (default 10.0).
    :param lrd: learning-rate decay per call of :meth:`step` (default 1.0).
    :param subsample_aware: update statistics only where the subsample is (default False).
    """

    rule = ClippedAdamRule()

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        clip_norm: float = 10.0,
        lrd: float = 1.0,
        subsample_aware: bool = False,
    ) -> None:
        _check_non_negative(lr=lr, eps=eps, clip_norm=clip_norm, lrd=lrd)
        _check_betas(betas)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            clip_norm=clip_norm,
            lrd=lrd,
            subsample_aware=subsample_aware,
        )
        super().__init__(params, defaults)

    def _update(self, params: list[Tensor], group: dict[str, Any]) -> None:
        plain = []
        for p in params:
            subsample = getattr(p, "_pyro_subsample", {})
            if subsample and group["subsample_aware"]:
                if getattr(p, "_pyro_dct_dim", None) is not None:
                    raise ValueError(
                        "DCTAdam(subsample_aware=True) cannot update a parameter that has both "
                        f"_pyro_subsample and _pyro_dct_dim (shape {tuple(p.shape)}): the "
                        "transform needs the whole time dimension (pyro-ppl fails here too)"
                    )
                self._step_subsample(p, group, subsample)
            elif getattr(p, "_pyro_dct_dim", None) is not None:
                self._step_dct(p, group)
            else:
                plain.append(p)
        if plain:
            super()._update(plain, {**group, "weight_decay": 0.0, "centered_variance": False})

    def _moments(self, state: dict[str, Any], grad: Tensor, group: Mapping[str, Any]) -> Tensor:
        """Advance Adam's moments with ``grad``; return :math:`m/(\\sqrt v+\\epsilon)`."""
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        return exp_avg / exp_avg_sq.sqrt().add_(group["eps"])

    def _step_dct(self, p: Tensor, group: Mapping[str, Any]) -> None:
        dim = p._pyro_dct_dim  # type: ignore[attr-defined]
        duration = p.size(dim)
        grad = _with_frequencies(p.grad.clamp(-group["clip_norm"], group["clip_norm"]), dim)  # type: ignore[union-attr]
        state = self.state[p]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(grad), exp_avg_sq=torch.zeros_like(grad))
        state["step"] += 1
        beta1, beta2 = group["betas"]
        t = state["step"]
        step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        update = _from_frequencies(self._moments(state, grad, group), dim, duration)
        p.add_(update.mul_(-step_size))

    def _step_subsample(self, p: Tensor, group: Mapping[str, Any], subsample: dict) -> None:
        mask = _subsample_mask(p, subsample)
        grad = p.grad.masked_select(mask).clamp_(-group["clip_norm"], group["clip_norm"])  # type: ignore[union-attr]
        state = self.state[p]
        if not state:
            state.update(
                step=torch.zeros_like(p),
                exp_avg=torch.zeros_like(p),
                exp_avg_sq=torch.zeros_like(p),
            )
        beta1, beta2 = group["betas"]
        step = state["step"].masked_select(mask).add_(1)
        state["step"].masked_scatter_(mask, step)
        exp_avg = state["exp_avg"].masked_select(mask).mul_(beta1).add_(grad, alpha=1 - beta1)
        state["exp_avg"].masked_scatter_(mask, exp_avg)
        exp_avg_sq = state["exp_avg_sq"].masked_select(mask).mul_(beta2)
        exp_avg_sq.addcmul_(grad, grad, value=1 - beta2)
        state["exp_avg_sq"].masked_scatter_(mask, exp_avg_sq)
        direction = exp_avg.div_(exp_avg_sq.sqrt_().add_(group["eps"]))
        step_size = (1 - beta2**step).sqrt_().div_(1 - beta1**step).mul_(group["lr"])
        p.masked_scatter_(mask, p.masked_select(mask).sub_(direction.mul_(step_size)))


def _with_frequencies(x: Tensor, dim: int) -> Tensor:
    """``x`` and its DCT along ``dim`` (zero-padded to a fast length), concatenated."""
    duration = x.size(dim)
    padded = next_fast_len(duration)
    freq = x
    if padded != duration:
        pad = [0, 0] * (-1 - dim) + [0, padded - duration]
        freq = torch.nn.functional.pad(x, pad)
    return torch.cat([x, dct(freq, dim)], dim=dim)


def _from_frequencies(x: Tensor, dim: int, duration: int) -> Tensor:
    """Inverse of :func:`_with_frequencies`: time half plus inverse DCT of the rest."""
    time, freq = x.split([duration, x.size(dim) - duration], dim=dim)
    return idct(freq, dim).narrow(dim, 0, duration).add_(time)


def _subsample_mask(x: Tensor, subsample: Mapping[int, Tensor]) -> Tensor:
    """Boolean mask of the elements of ``x`` whose index along every subsampled
    dimension ``d`` is in ``subsample[d]``."""
    mask = torch.ones_like(x, dtype=torch.bool)
    for dim, indices in subsample.items():
        keep = torch.zeros(x.size(dim), dtype=torch.bool, device=x.device)
        keep[indices] = True
        shape = [1] * x.dim()
        shape[dim] = -1
        mask &= keep.view(shape)
    return mask
