r"""Higher-order optimizers: they differentiate the loss themselves.

A :class:`MultiOptimizer` takes the loss, not gradients: it calls
:func:`torch.autograd.grad` as often as it needs (a Newton step needs second
derivatives), so its interface differs from :class:`~pyroopt.PyroOptim`'s::

    optim.step(loss, params)              # update params in place
    new_values = optim.get_step(loss, params)  # differentiable updated values

where ``params`` maps each parameter's name to its *unconstrained* tensor, e.g.
``{name: pyro.param(name).unconstrained()}``: constrained parameters are stepped in
the unconstrained space Pyro optimizes them in.

The same classes as ``pyro.optim.multi``, with the same numbers:

- :class:`PyroMultiOptimizer` drives a :class:`pyro.optim.PyroOptim` (pyroopt's or
  pyro's) from a loss; :class:`TorchMultiOptimizer` builds one from a torch optimizer.
- :class:`MixedMultiOptimizer` gives each group of names its own optimizer.
- :class:`Newton` takes batched Newton steps, optionally within a trust region; unlike
  pyro's (trailing dimension 1, 2 or 3 only) it handles any trailing dimension ``D``.
- :func:`newton_step` is the Newton step of one tensor, as ``pyro.ops.newton.newton_step``.

Example::

    >>> import pyro, torch
    >>> from pyroopt.multi import Newton
    >>> pyro.clear_param_store()
    >>> loc = pyro.param("loc", torch.zeros(2, 4))
    >>> target = torch.tensor([1.0, -2.0, 0.5, 3.0])
    >>> loss = ((loc - target) ** 2).sum()
    >>> Newton().step(loss, {"loc": loc.unconstrained()})
    >>> pyro.param("loc")
    tensor([[ 1.0000, -2.0000,  0.5000,  3.0000],
            [ 1.0000, -2.0000,  0.5000,  3.0000]], requires_grad=True)
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyro.optim
import pyro.optim.multi
import torch
from torch import Tensor

from pyroopt.optim import ArgsSpec, PyroOptim

__all__ = [
    "MixedMultiOptimizer",
    "MultiOptimizer",
    "Newton",
    "PyroMultiOptimizer",
    "TorchMultiOptimizer",
    "newton_step",
]

#: The smallest curvature (D = 1) and trust-region regularizer (D >= 2) a Newton step
#: uses, as in ``pyro.ops.newton``.
MIN_CURVATURE = 1e-8

#: What applies a prepared update (see :meth:`MultiOptimizer._prepare_step`).
Update = Callable[[], None]


# -- input checks -----------------------------------------------------------------------
def _check_loss(loss: Any) -> Tensor:
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss must be a scalar tensor, got {type(loss).__name__}: {loss!r}")
    if loss.dim() != 0:
        raise ValueError(f"loss must be a scalar tensor, got shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        raise ValueError(
            "loss does not require grad: compute it from the parameters being optimized"
        )
    return loss


def _check_params(params: Any) -> dict[str, Tensor]:
    """``params`` as a dict of ``{name: unconstrained tensor}``, each entry checked."""
    if not isinstance(params, Mapping):
        raise TypeError(
            "params must be a dict of {name: unconstrained tensor}, got "
            f"{type(params).__name__}: {params!r}"
        )
    for name, value in params.items():
        if not isinstance(name, str):
            raise TypeError(f"params must be keyed by parameter name (str), got key {name!r}")
        if not isinstance(value, Tensor):
            raise TypeError(
                f"params[{name!r}] must be a tensor, got {type(value).__name__}: {value!r}"
            )
        if not value.is_floating_point():
            raise TypeError(f"params[{name!r}] must be a floating point tensor, got {value.dtype}")
        if not value.requires_grad:
            raise ValueError(
                f"params[{name!r}] does not require grad; pass the tensor the loss was "
                f"computed from, e.g. pyro.param({name!r}).unconstrained()"
            )
        _check_unconstrained(name, value)
    return dict(params)


def _check_unconstrained(name: str, value: Tensor) -> None:
    """Reject a param-store parameter's constrained value: it is not what gets updated."""
    ref = getattr(value, "unconstrained", None)
    unconstrained = ref() if callable(ref) else None
    if unconstrained is not None and unconstrained is not value:
        raise ValueError(
            f"params[{name!r}] is the constrained value of a constrained parameter; "
            f"optimizers step the unconstrained one: pass pyro.param({name!r}).unconstrained()"
        )


def _check_trust_radius(radius: Any, name: object) -> float:
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real):
        raise TypeError(
            f"the trust radius of {name!r} must be a positive number, got "
            f"{type(radius).__name__}: {radius!r}"
        )
    value = float(radius)
    if not value > 0:  # also rejects NaN
        raise ValueError(f"the trust radius of {name!r} must be > 0, got {radius!r}")
    return value


def _check_x(x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}: {x!r}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got {x.dtype}")
    if not x.requires_grad:
        raise ValueError("x does not require grad: the loss must be computed from x")
    return x


# -- derivatives ------------------------------------------------------------------------
def _gradients(loss: Tensor, params: dict[str, Tensor], *, create_graph: bool) -> list[Tensor]:
    """``d loss / d value`` for each value of ``params``, in order; the graph is kept."""
    if not params:
        return []
    grads = torch.autograd.grad(
        loss,
        list(params.values()),
        retain_graph=True,
        create_graph=create_graph,
        allow_unused=True,
    )
    unused = [name for name, g in zip(params, grads, strict=True) if g is None]
    if unused:
        raise ValueError(f"loss does not depend on params {unused}: nothing to optimize them by")
    return list(grads)


def _as_vectors(x: Tensor, g: Tensor) -> Tensor:
    """``g`` with a trailing dimension: a 0-dim parameter is one variable of size 1."""
    return g if x.dim() else g.reshape(1)


def _hessian_blocks(x: Tensor, g: Tensor) -> Tensor:
    r"""The ``D x D`` Hessian block of each batch element, shape ``batch + (D, D)``.

    Column ``i`` is :math:`\partial (\sum_b g_{b,i}) / \partial x`: one backward pass per
    component. It is the block :math:`\partial^2 L / \partial x_b^2` when the loss is a
    sum of independent terms over the batch; otherwise cross-batch terms are summed in.
    The graph is kept, so the blocks are differentiable.
    """
    gv = _as_vectors(x, g)
    if not g.requires_grad:  # the loss is linear in x
        return gv.new_zeros(gv.shape + gv.shape[-1:])
    columns = [
        torch.autograd.grad(
            gv[..., i].sum(), x, create_graph=True, allow_unused=True, materialize_grads=True
        )[0].reshape(gv.shape)
        for i in range(gv.shape[-1])
    ]
    return torch.stack(columns, dim=-1)


# -- Newton steps -----------------------------------------------------------------------
def _step_1d(g: Tensor, h: Tensor, trust_radius: float | None) -> tuple[Tensor, Tensor]:
    """pyro's rule for D = 1: curvature floored at 1e-8, NaN steps zeroed, step clamped.

    Returns the step and the floored curvature, shape ``batch + (1, 1)``.
    """
    curvature = h.clamp(min=MIN_CURVATURE)
    dx = -g * curvature[..., 0].reciprocal()
    dx = torch.where(torch.isnan(dx), torch.zeros_like(dx), dx)
    if trust_radius is not None:
        dx = dx.clamp(min=-trust_radius, max=trust_radius)
    return dx, curvature


def _regularize(h: Tensor, g: Tensor, trust_radius: float) -> Tensor:
    r"""The shifted Hessian :math:`H + \lambda I` of a trust region of radius :math:`r`.

    With :math:`\lambda = \max(\lVert g\rVert/r - \lambda_{\min}(H), 10^{-8})` its smallest
    eigenvalue is at least :math:`\lVert g\rVert / r`, so the Newton step it gives is no
    longer than :math:`r`.
    """
    min_eig = torch.linalg.eigvalsh(h)[..., 0]
    lam = (torch.linalg.vector_norm(g, dim=-1) / trust_radius - min_eig).clamp(min=MIN_CURVATURE)
    eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
    return h + lam[..., None, None] * eye


def _step_nd(g: Tensor, h: Tensor, trust_radius: float | None, name: str) -> tuple[Tensor, Tensor]:
    """The step ``-H^{-1} g`` for D >= 2 (with ``H`` regularized under a trust radius)."""
    if trust_radius is not None:
        h = _regularize(h, g, trust_radius)
    solution, info = torch.linalg.solve_ex(h, g.unsqueeze(-1))
    singular = int((info != 0).sum())
    if singular:
        hint = (
            "the gradient is zero at a point of negative curvature"
            if trust_radius is not None
            else f"give it a trust radius, e.g. Newton(trust_radii={{{name!r}: 1.0}})"
        )
        raise ValueError(
            f"the Hessian of {name!r} is singular in {singular} of {info.numel()} batch "
            f"element(s), so its Newton step is undefined: {hint}"
        )
    dx = -solution.squeeze(-1)
    if not bool(torch.isfinite(dx).all()):
        raise ValueError(
            f"the Newton step of {name!r} is not finite (non-finite loss derivatives, or a "
            "nearly singular Hessian)"
        )
    return dx, h


def _newton_update(
    x: Tensor, g: Tensor, trust_radius: float | None, name: str
) -> tuple[Tensor, Tensor]:
    """``x`` after one Newton step (differentiable; ``x`` itself enters detached), and
    the Hessian blocks the step used (floored or regularized), ``batch + (D, D)``."""
    gv = _as_vectors(x, g)
    if gv.shape[-1] == 0:  # nothing to step
        return x.detach().clone(), gv.new_zeros((*gv.shape, 0))
    h = _hessian_blocks(x, g)
    if h.shape[-1] == 1:
        dx, h_used = _step_1d(gv, h, trust_radius)
    else:
        dx, h_used = _step_nd(gv, h, trust_radius, name)
    return x.detach() + dx.reshape(x.shape), h_used


def newton_step(
    loss: Tensor, x: Tensor, trust_radius: float | None = None
) -> tuple[Tensor, Tensor]:
    r"""One Newton step of the batched variable ``x`` towards a minimum of ``loss``.

    ``x`` has shape ``batch_shape + (D,)`` for any ``D >= 1``; each batch element ``b``
    is a ``D``-vector with gradient :math:`g_b` and Hessian block :math:`H_b` (the loss
    is taken to be a sum of independent terms over the batch). For ``D >= 2``:

    .. math::

        x_b' = x_b - (H_b + \lambda_b I)^{-1} g_b, \qquad
        \lambda_b = \begin{cases} 0 & \text{no trust radius} \\
            \max\bigl(\lVert g_b\rVert / r - \lambda_{\min}(H_b),\ 10^{-8}\bigr)
            & \text{trust radius } r \end{cases}

    so within a trust region the step is a Newton step of a Hessian shifted until its
    smallest eigenvalue is at least :math:`\lVert g_b\rVert / r`, which is positive
    definite and makes :math:`\lVert x_b' - x_b\rVert \le r`, even where :math:`H_b` is
    not positive definite. Without a trust radius an indefinite :math:`H_b` gives the
    step to its stationary point (a saddle or maximum), as in pyro. For ``D = 1``, as in
    pyro, the curvature is floored instead:
    :math:`x_b' = x_b + \operatorname{clamp}(-g_b / \max(H_b, 10^{-8}), -r, r)`, a NaN
    step is replaced by 0, and a non-positive curvature without a trust radius gives a
    step of :math:`10^8 |g_b|` downhill. A 0-dim ``x`` is one variable with ``D = 1``.

    The numbers are ``pyro.ops.newton.newton_step``'s for ``D <= 3``. The differences:
    pyro returns NaN (with a warning) where its closed-form 3x3 eigenvalues fail (a
    Hessian that is a multiple of the identity, with a trust radius) or where the
    Hessian is singular; here the first works and the second raises ``ValueError``.

    The result is differentiable with respect to whatever the loss depends on besides
    ``x`` (and the gradient of ``loss`` must itself be differentiable): ``x`` enters
    only through the gradient and Hessian, since the input value is detached. At a
    minimum this is the implicit-function derivative of the minimizer. Detach the
    result between steps of an optimization loop.

    :param loss: a scalar tensor, twice differentiable in ``x``.
    :param x: the variable, a tensor of shape ``batch_shape + (D,)`` requiring grad.
    :param trust_radius: optional radius ``r > 0`` of the trust region.
    :return: ``(x_new, cov)``: the updated value, shaped like ``x``, and the inverse of
        the (regularized) Hessian, shape ``batch_shape + (D, D)``, the covariance of a
        Laplace approximation when ``loss`` is a negative log density.
    :raises ValueError: if the Hessian is singular or the step is not finite (D >= 2).

    Example::

        >>> import torch
        >>> x = torch.zeros(3, requires_grad=True)
        >>> a = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
        >>> loss = 0.5 * x @ a @ x - torch.tensor([1.0, 1.0, 1.0]) @ x
        >>> x_new, cov = newton_step(loss, x)
        >>> x_new
        tensor([0.3333, 0.3333, 1.0000], grad_fn=<AddBackward0>)
    """
    _check_loss(loss)
    _check_x(x)
    radius = None if trust_radius is None else _check_trust_radius(trust_radius, "x")
    (g,) = _gradients(loss, {"x": x}, create_graph=True)
    x_new, h_used = _newton_update(x, g, radius, "x")
    return x_new, torch.linalg.inv(h_used)


# -- optimizers -------------------------------------------------------------------------
def _write(params: dict[str, Tensor], values: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(values[name])


class MultiOptimizer(pyro.optim.multi.MultiOptimizer):
    """Base of optimizers that differentiate the loss themselves.

    Every class here is also an instance of the pyro.optim class it stands for (code
    that checks ``isinstance(x, pyro.optim.multi.Newton)`` treats pyroopt's alike); it
    replaces all of that class's behaviour and calls none of it.

    Subclasses implement :meth:`get_step`; :meth:`step` then writes its values in place.
    A subclass that cannot give differentiable values may override :meth:`step` instead.

    Typical use, one step of maximum a posteriori estimation::

        tr = poutine.trace(model).get_trace(*args)
        loss = -tr.log_prob_sum()
        params = {name: site["value"].unconstrained()
                  for name, site in tr.nodes.items() if site["type"] == "param"}
        optim.step(loss, params)
    """

    def step(self, loss: Tensor, params: Mapping[str, Tensor]) -> None:
        """Update ``params`` in place by one step on ``loss``.

        The new values are detached from the graph, written under ``torch.no_grad()``.

        :param loss: a scalar tensor computed from ``params``, to be minimized.
        :param params: ``{name: unconstrained tensor}`` to update.
        """
        self._prepare_step(loss, params)()

    def get_step(self, loss: Tensor, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The values ``params`` would take after one step, still differentiable.

        :param loss: a scalar tensor computed from ``params``, to be minimized.
        :param params: ``{name: unconstrained tensor}``.
        :return: ``{name: updated unconstrained tensor}``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement get_step")

    def _prepare_step(self, loss: Tensor, params: Mapping[str, Tensor]) -> Update:
        """Compute a step at the current values; return what writes it.

        :class:`MixedMultiOptimizer` prepares every part before any part writes, so that
        every part differentiates the loss at the same point.
        """
        checked = _check_params(params)
        if type(self).step is not MultiOptimizer.step:  # a subclass with its own step
            return functools.partial(self.step, loss, checked)
        updated = self.get_step(loss, checked)
        missing = sorted(set(checked) - set(updated))
        if missing:
            raise RuntimeError(f"{type(self).__name__}.get_step gave no value for {missing}")
        values = {name: updated[name].detach() for name in checked}
        return functools.partial(_write, checked, values)


class PyroMultiOptimizer(MultiOptimizer, pyro.optim.multi.PyroMultiOptimizer):
    """A :class:`pyro.optim.PyroOptim` (pyroopt's or pyro's) driven by a loss.

    :meth:`step` computes the gradients of ``loss`` with :func:`torch.autograd.grad`,
    hands them to the wrapped optimizer as ``.grad`` and steps it; each parameter's
    ``.grad`` is then put back as it was. The update goes through a torch optimizer in
    place, so there is no differentiable :meth:`get_step`.

    :param optim: the optimizer, e.g. ``pyroopt.Adam({"lr": 0.05})``.

    Example::

        >>> import pyro, torch, pyroopt
        >>> pyro.clear_param_store()
        >>> x = pyro.param("x", torch.zeros(2))
        >>> optim = PyroMultiOptimizer(pyroopt.SGD({"lr": 0.25}))
        >>> optim.step(((x - 1.0) ** 2).sum(), {"x": x.unconstrained()})
        >>> pyro.param("x")
        tensor([0.5000, 0.5000], requires_grad=True)
    """

    def __init__(self, optim: pyro.optim.PyroOptim) -> None:
        if not isinstance(optim, pyro.optim.PyroOptim):
            raise TypeError(
                "optim must be a PyroOptim (pyroopt's or pyro.optim's, e.g. "
                f"pyroopt.Adam({{'lr': 0.01}})), got {type(optim).__name__}: {optim!r}"
            )
        self.optim = optim

    def get_step(self, loss: Tensor, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Not available: raises ``NotImplementedError``, because the update goes through
        a torch optimizer in place; call :meth:`step` instead, or use an optimizer with a
        differentiable step such as :class:`Newton`.

        :param loss: a scalar tensor computed from ``params``, to be minimized.
        :param params: ``{name: unconstrained tensor}``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} steps a torch optimizer in place, so it has no "
            "differentiable get_step; call step(), or use a differentiable optimizer "
            "such as Newton"
        )

    def _prepare_step(self, loss: Tensor, params: Mapping[str, Tensor]) -> Update:
        checked = _check_params(params)
        _check_loss(loss)
        grads = _gradients(loss, checked, create_graph=False)
        return functools.partial(self._apply, list(checked.values()), grads)

    def _apply(self, values: list[Tensor], grads: list[Tensor]) -> None:
        saved = [value.grad for value in values]
        try:
            for value, g in zip(values, grads, strict=True):
                value.grad = g
            self.optim(values)
        finally:
            for value, old in zip(values, saved, strict=True):
                value.grad = old


class TorchMultiOptimizer(PyroMultiOptimizer, pyro.optim.multi.TorchMultiOptimizer):
    """A torch optimizer driven by a loss: :class:`PyroMultiOptimizer` of a pyroopt
    :class:`~pyroopt.PyroOptim` built from ``optim_constructor`` and ``optim_args``.

    :param optim_constructor: a :class:`torch.optim.Optimizer` class, e.g.
        ``torch.optim.Adam``.
    :param optim_args: its hyperparameters, as a dict or a per-parameter callable (see
        :class:`~pyroopt.PyroOptim`).
    """

    def __init__(
        self, optim_constructor: Callable[..., torch.optim.Optimizer], optim_args: ArgsSpec
    ) -> None:
        super().__init__(PyroOptim(optim_constructor, optim_args))


def _is_multi_optimizer(optim: object) -> bool:
    return isinstance(optim, (MultiOptimizer, pyro.optim.multi.MultiOptimizer))


def _prepare(optim: Any, loss: Tensor, params: dict[str, Tensor]) -> Update:
    """Prepare ``optim``'s step; one of pyro.optim.multi's optimizers steps when applied."""
    if isinstance(optim, MultiOptimizer):
        return optim._prepare_step(loss, params)
    return functools.partial(optim.step, loss, params)


def _apply_all(updates: list[Update]) -> None:
    for update in updates:
        update()


class MixedMultiOptimizer(MultiOptimizer, pyro.optim.multi.MixedMultiOptimizer):
    """Different optimizers for different parameters.

    Every part computes its step at the current values before any part writes, so a
    step does not depend on the order of the parts even when the loss couples their
    parameters (pyro.optim.multi's version steps the parts one after the other, and
    autograd then fails if a later part needs a value an earlier part changed). Parts
    that only define ``step`` (such as pyro.optim.multi's ``PyroMultiOptimizer``) step
    in their turn, after the parts before them.

    :param parts: a list of ``(names, optim)`` pairs: ``names`` a list of parameter
        names, ``optim`` a :class:`MultiOptimizer` (pyroopt's or ``pyro.optim.multi``'s)
        or a :class:`pyro.optim.PyroOptim` (pyroopt's or pyro's, wrapped in a
        :class:`PyroMultiOptimizer`).
    :raises ValueError: if a name is in two parts. At each step, a name in ``params``
        that no part covers raises ``ValueError`` (pyro ignores it); a part's name
        absent from ``params`` is skipped.

    Example::

        >>> import pyro, torch, pyroopt
        >>> pyro.clear_param_store()
        >>> a = pyro.param("a", torch.zeros(3))
        >>> b = pyro.param("b", torch.zeros(2))
        >>> optim = MixedMultiOptimizer(
        ...     [(["a"], Newton()), (["b"], pyroopt.SGD({"lr": 0.25}))]
        ... )
        >>> loss = ((a - 2.0) ** 2).sum() + ((b - 1.0) ** 2).sum()
        >>> optim.step(loss, {"a": a.unconstrained(), "b": b.unconstrained()})
        >>> pyro.param("a"), pyro.param("b")
        (tensor([2., 2., 2.], requires_grad=True), tensor([0.5000, 0.5000], requires_grad=True))
    """

    def __init__(self, parts: Iterable[tuple[Iterable[str], Any]]) -> None:
        if isinstance(parts, (str, Mapping)) or not isinstance(parts, Iterable):
            raise TypeError(
                f"parts must be a list of (names, optimizer) pairs, got {type(parts).__name__}"
            )
        self.parts: list[tuple[list[str], Any]] = []
        self._owner: dict[str, int] = {}
        for index, part in enumerate(parts):
            names, optim = self._check_part(index, part)
            for name in names:
                if name in self._owner:
                    raise ValueError(
                        f"parameter {name!r} is in part {self._owner[name]} and in part "
                        f"{index} of MixedMultiOptimizer; each name may have one optimizer"
                    )
                self._owner[name] = index
            self.parts.append((names, optim))

    @staticmethod
    def _check_part(index: int, part: Any) -> tuple[list[str], Any]:
        if not isinstance(part, (tuple, list)) or len(part) != 2:
            raise TypeError(f"parts[{index}] must be a (names, optimizer) pair, got {part!r}")
        names, optim = part
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise TypeError(
                f"parts[{index}] names must be a list of parameter names, got {names!r}"
            )
        names = list(names)
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise TypeError(f"parts[{index}] names must be strings, got {bad!r}")
        if isinstance(optim, pyro.optim.PyroOptim):
            optim = PyroMultiOptimizer(optim)
        elif not _is_multi_optimizer(optim):
            raise TypeError(
                f"parts[{index}] optimizer must be a MultiOptimizer or a PyroOptim, got "
                f"{type(optim).__name__}: {optim!r}"
            )
        return names, optim

    def _split(self, params: Mapping[str, Tensor]) -> list[tuple[Any, dict[str, Tensor]]]:
        """Each part with the entries of ``params`` it covers; uncovered names raise."""
        checked = _check_params(params)
        uncovered = [name for name in checked if name not in self._owner]
        if uncovered:
            raise ValueError(
                f"params {uncovered} are in no part of this MixedMultiOptimizer; covered "
                f"names are {sorted(self._owner)}"
            )
        split = []
        for names, optim in self.parts:
            sub = {name: checked[name] for name in names if name in checked}
            if sub:
                split.append((optim, sub))
        return split

    def get_step(self, loss: Tensor, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Every part's :meth:`~MultiOptimizer.get_step`, merged."""
        updated: dict[str, Tensor] = {}
        for optim, sub in self._split(params):
            updated.update(optim.get_step(loss, sub))
        return updated

    def _prepare_step(self, loss: Tensor, params: Mapping[str, Tensor]) -> Update:
        updates = [_prepare(optim, loss, sub) for optim, sub in self._split(params)]
        return functools.partial(_apply_all, updates)


class Newton(MultiOptimizer, pyro.optim.multi.Newton):
    r"""Batched Newton steps, optionally within a trust region per parameter.

    Each parameter of shape ``batch_shape + (D,)``, any ``D >= 1``, is a batch of
    independent ``D``-vectors, each updated by the Newton step of its gradient and
    ``D x D`` Hessian block (computed with ``D`` extra backward passes):

    .. math::

        x_b' = x_b - (H_b + \lambda_b I)^{-1} g_b

    with :math:`\lambda_b = 0` without a trust radius, and with a trust radius ``r``
    :math:`\lambda_b = \max(\lVert g_b\rVert / r - \lambda_{\min}(H_b), 10^{-8})`, so that
    the step is no longer than ``r`` and goes downhill even where :math:`H_b` is not
    positive definite. ``D = 1`` follows pyro's rule (curvature floored at
    :math:`10^{-8}`, step clamped to ``[-r, r]``). See :func:`newton_step` for the
    details, the treatment of indefinite and singular Hessians, and how this differs
    from pyro for ``D <= 3`` (it does not, except where pyro returns NaN).

    :meth:`get_step` is differentiable with respect to what the loss depends on besides
    the parameters themselves; :meth:`step` writes detached values.

    :param trust_radii: ``{name: radius}``; a name not in it (or with radius ``None``)
        takes unregularized Newton steps. The radii are read at each step, so they may be
        changed between steps.

    Example::

        >>> import pyro, torch
        >>> from torch.distributions import constraints
        >>> pyro.clear_param_store()
        >>> scale = pyro.param("scale", torch.ones(2), constraint=constraints.positive)
        >>> loss = ((scale.log() - torch.tensor([0.5, -1.0])) ** 2).sum()  # quadratic in log
        >>> Newton(trust_radii={"scale": 10.0}).step(loss, {"scale": scale.unconstrained()})
        >>> pyro.param("scale").log()
        tensor([ 0.5000, -1.0000], grad_fn=<LogBackward0>)
    """

    def __init__(self, trust_radii: Mapping[str, float | None] | None = None) -> None:
        if trust_radii is None:
            trust_radii = {}
        if not isinstance(trust_radii, Mapping):
            raise TypeError(
                "trust_radii must be a dict of {parameter name: radius}, got "
                f"{type(trust_radii).__name__}: {trust_radii!r}"
            )
        bad = [name for name in trust_radii if not isinstance(name, str)]
        if bad:
            raise TypeError(f"trust_radii must be keyed by parameter name (str), got {bad!r}")
        self.trust_radii: dict[str, float | None] = {
            name: self._check(name, radius) for name, radius in trust_radii.items()
        }

    @staticmethod
    def _check(name: str, radius: Any) -> float | None:
        return None if radius is None else _check_trust_radius(radius, name)

    def get_step(self, loss: Tensor, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """One Newton step of every parameter; see :class:`MultiOptimizer`."""
        checked = _check_params(params)
        _check_loss(loss)
        grads = _gradients(loss, checked, create_graph=True)
        updated = {}
        for (name, x), g in zip(checked.items(), grads, strict=True):
            updated[name], _ = _newton_update(
                x, g, self._check(name, self.trust_radii.get(name)), name
            )
        return updated
