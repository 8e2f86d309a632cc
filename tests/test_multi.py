"""pyroopt.multi against pyro.optim.multi and pyro.ops.newton: same numbers, any D."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.ops.newton
import pyro.optim
import pyro.optim.multi
import pytest
import torch
from torch import Tensor
from torch.distributions import constraints
from torch.testing import assert_close

import pyroopt
from pyroopt.multi import (
    MixedMultiOptimizer,
    MultiOptimizer,
    Newton,
    PyroMultiOptimizer,
    TorchMultiOptimizer,
    newton_step,
)

# float64 throughout: the same formulas, evaluated by different kernels, agree to
# rounding; an exact Newton step lands on the minimum to rounding.
TOL = {"rtol": 1e-10, "atol": 1e-12}

# -- the bivariate Gaussian MAP problem (pyro's tests/optim/test_multi.py setting) -------
LOC = torch.tensor([-0.5, 0.5], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.09], [0.09, 0.1]], dtype=torch.float64)


def gaussian_map() -> tuple[Tensor, dict[str, Tensor]]:
    """Negative log density of x (2,), y (3, 2) and z (4, 2) > -1 under N(LOC, COV)."""
    x = pyro.param("x", lambda: torch.randn(2))
    y = pyro.param("y", lambda: torch.randn(3, 2))
    z = pyro.param("z", lambda: torch.randn(4, 2).abs(), constraint=constraints.greater_than(-1.0))
    prior = dist.MultivariateNormal(LOC, COV)
    loss = -(prior.log_prob(x).sum() + prior.log_prob(y).sum() + prior.log_prob(z).sum())
    return loss, {name: pyro.param(name).unconstrained() for name in "xyz"}


def run_map(optim: Any, steps: int) -> list[dict[str, Tensor]]:
    """Steps ``optim`` on the MAP problem from a fixed start; the values after each step."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    trajectory = []
    for _ in range(steps):
        loss, params = gaussian_map()
        optim.step(loss, params)
        trajectory.append({name: pyro.param(name).detach().clone() for name in "xyz"})
    return trajectory


FACTORIES: dict[str, Callable[[], object]] = {
    "pyro_multi_over_pyroopt_adam": lambda: PyroMultiOptimizer(pyroopt.Adam({"lr": 0.05})),
    "pyro_multi_over_pyro_adam": lambda: PyroMultiOptimizer(pyro.optim.Adam({"lr": 0.05})),
    "torch_multi_adam": lambda: TorchMultiOptimizer(torch.optim.Adam, {"lr": 0.05}),
    "newton": lambda: Newton(trust_radii={"z": 0.2}),
    "mixed_adam_newton": lambda: MixedMultiOptimizer(
        [(["y"], pyroopt.Adam({"lr": 0.05})), (["x", "z"], Newton())]
    ),
    "mixed_pyro_multi_newton_trust": lambda: MixedMultiOptimizer(
        [
            (["y"], PyroMultiOptimizer(pyro.optim.Adam({"lr": 0.05}))),
            (["x", "z"], Newton({"z": 0.2})),
        ]
    ),
}

# The same optimizers built from pyro.optim.multi, for trajectory comparisons.
PYRO_FACTORIES: dict[str, Callable[[], object]] = {
    "pyro_multi_over_pyroopt_adam": lambda: pyro.optim.multi.PyroMultiOptimizer(
        pyro.optim.Adam({"lr": 0.05})
    ),
    "pyro_multi_over_pyro_adam": lambda: pyro.optim.multi.PyroMultiOptimizer(
        pyro.optim.Adam({"lr": 0.05})
    ),
    "torch_multi_adam": lambda: pyro.optim.multi.TorchMultiOptimizer(
        torch.optim.Adam, {"lr": 0.05}
    ),
    "newton": lambda: pyro.optim.multi.Newton(trust_radii={"z": 0.2}),
    "mixed_adam_newton": lambda: pyro.optim.multi.MixedMultiOptimizer(
        [(["y"], pyro.optim.Adam({"lr": 0.05})), (["x", "z"], pyro.optim.multi.Newton())]
    ),
    "mixed_pyro_multi_newton_trust": lambda: pyro.optim.multi.MixedMultiOptimizer(
        [
            (["y"], pyro.optim.multi.PyroMultiOptimizer(pyro.optim.Adam({"lr": 0.05}))),
            (["x", "z"], pyro.optim.multi.Newton({"z": 0.2})),
        ]
    ),
}


@pytest.mark.parametrize("factory", list(FACTORIES))
def test_converges_to_gaussian_map(factory):
    final = run_map(FACTORIES[factory](), steps=200)[-1]
    for name, value in final.items():
        assert_close(value, LOC.expand(value.shape), rtol=0, atol=1e-2, msg=name)


@pytest.mark.parametrize("factory", list(FACTORIES))
def test_same_trajectory_as_pyro(factory):
    expected = run_map(PYRO_FACTORIES[factory](), steps=25)
    actual = run_map(FACTORIES[factory](), steps=25)
    for step, (want, got) in enumerate(zip(expected, actual, strict=True)):
        for name in "xyz":
            # Newton solves with other linear-algebra calls than pyro.ops.newton: equal to
            # rounding (the README states the bound), not bit for bit.
            assert_close(got[name], want[name], **TOL, msg=f"{name} at step {step}")


# -- Newton: exact on quadratics, in any dimension ----------------------------------------
def random_spd(shape: tuple[int, ...], d: int) -> Tensor:
    a = torch.randn(*shape, d, d)
    return a @ a.transpose(-1, -2) + 0.5 * torch.eye(d)


def random_symmetric(shape: tuple[int, ...], d: int) -> Tensor:
    a = torch.randn(*shape, d, d)
    return a + a.transpose(-1, -2)


def quadratic(x: Tensor, a: Tensor, m: Tensor) -> Tensor:
    """Sum over the batch of 0.5 (x - m)^T A (x - m)."""
    r = (x - m).unsqueeze(-1)
    return 0.5 * (r.transpose(-1, -2) @ a @ r).sum()


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_newton_reaches_minimum_of_quadratic_in_one_step(d, batch):
    a, m = random_spd(batch, d), torch.randn(*batch, d)
    x = pyro.param("x", torch.randn(*batch, d))
    Newton().step(quadratic(x, a, m), {"x": x.unconstrained()})
    assert_close(pyro.param("x").detach(), m, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d", [2, 4, 6])
def test_newton_step_covariance_is_inverse_hessian(d):
    a, m = random_spd((3,), d), torch.randn(3, d)
    x = torch.randn(3, d, requires_grad=True)
    x_new, cov = newton_step(quadratic(x, a, m), x)
    assert_close(x_new.detach(), m, rtol=1e-10, atol=1e-10)
    assert_close(cov.detach(), torch.linalg.inv(a), **TOL)


def smooth_loss(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """A non-quadratic loss whose Hessian blocks are ``a`` plus a diagonal term."""
    quad = 0.5 * (x.unsqueeze(-2) @ a @ x.unsqueeze(-1)).sum()
    return quad - (b * x).sum() + 0.1 * x.pow(4).sum() + torch.cos(x).sum()


def both_newton_steps(loss_fn, x0, radius, upstream):
    """pyro's and pyroopt's ``newton_step``: values, covariances, and the gradients of a
    function of the updated value with respect to the ``upstream`` tensors and ``x``
    (which enters the update only through its gradient and Hessian, as in pyro)."""
    out = []
    for step in (pyro.ops.newton.newton_step, newton_step):
        ups = [u.clone().requires_grad_() for u in upstream]
        x = x0.clone().requires_grad_()
        x_new, cov = step(loss_fn(x, *ups), x, radius)
        weights = torch.linspace(1.0, 2.0, x_new.numel()).reshape(x_new.shape)
        grads = torch.autograd.grad((weights * x_new).sum(), [*ups, x])
        out.append([x_new.detach(), cov.detach(), *grads])
    return out


@pytest.mark.parametrize("radius", [None, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("kind", ["positive_definite", "indefinite"])
@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_newton_step_matches_pyro(d, batch, kind, radius):
    a = random_spd(batch, d) if kind == "positive_definite" else random_symmetric(batch, d)
    b, x0 = torch.randn(*batch, d), torch.randn(*batch, d)
    expected, actual = both_newton_steps(smooth_loss, x0, radius, [a, b])
    for what, want, got in zip(
        ["x_new", "cov", "d/da", "d/db", "d/dx"], expected, actual, strict=True
    ):
        assert_close(got, want, rtol=1e-9, atol=1e-12, msg=what)


@pytest.mark.parametrize("radius", [0.05, 1.0])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_newton_step_matches_pyro_inside_trust_region_at_negative_curvature(d, radius):
    # Every Hessian block is negative definite: pyro's D = 1 rule clamps a step of the
    # floored curvature, D = 2, 3 shift the Hessian until it is positive definite.
    a = -random_spd((4,), d)
    b, x0 = torch.randn(4, d), torch.zeros(4, d)

    def loss(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return 0.5 * (x.unsqueeze(-2) @ a @ x.unsqueeze(-1)).sum() - (b * x).sum()

    expected, actual = both_newton_steps(loss, x0, radius, [a, b])
    for what, want, got in zip(
        ["x_new", "cov", "d/da", "d/db", "d/dx"], expected, actual, strict=True
    ):
        assert_close(got, want, rtol=1e-9, atol=1e-12, msg=what)
    step_norms = torch.linalg.vector_norm(actual[0] - x0, dim=-1)
    assert (step_norms <= radius * (1 + 1e-12)).all()


@pytest.mark.parametrize("d", [2, 3])
def test_newton_step_matches_pyro_for_semidefinite_hessian_with_trust_radius(d):
    # The loss ignores all but the first coordinate: the Hessian is singular, the
    # trust-region shift makes it invertible.

    def loss(x: Tensor, c: Tensor) -> Tensor:
        return ((x[..., 0] - c) ** 2).sum() + 0.0 * x.sum()

    expected, actual = both_newton_steps(loss, torch.randn(3, d), 0.5, [torch.randn(3)])
    for want, got in zip(expected, actual, strict=True):
        assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_isotropic_hessian_with_trust_radius_in_3d():
    # pyro's closed-form 3x3 eigenvalues divide by zero when H = c I (it returns NaN);
    # the shifted Newton step is well defined: x - g / (c + lambda).
    c, radius = 2.0, 0.1
    m = torch.tensor([[1.0, 2.0, -2.0], [0.01, 0.0, 0.0]])
    x = torch.zeros(2, 3, requires_grad=True)
    x_new, cov = newton_step(0.5 * c * ((x - m) ** 2).sum(), x, radius)
    g = -c * m
    lam = (torch.linalg.vector_norm(g, dim=-1) / radius - c).clamp(min=1e-8)
    assert_close(x_new.detach(), -g / (c + lam).unsqueeze(-1), **TOL)
    assert_close(cov.detach(), torch.eye(3) / (c + lam)[:, None, None], **TOL)


def reference_step(h: np.ndarray, g: np.ndarray, radius: float | None) -> np.ndarray:
    """The trust-region Newton step of one block, written with numpy."""
    if radius is not None:
        shift = max(np.linalg.norm(g) / radius - np.linalg.eigvalsh(h)[0], 1e-8)
        h = h + shift * np.eye(len(g))
    return -np.linalg.solve(h, g)


@pytest.mark.parametrize("radius", [None, 0.05, 0.5, 100.0])
@pytest.mark.parametrize("d", [4, 5, 6])
def test_newton_beyond_pyro_dimensions_matches_numpy_reference(d, radius):
    a, b = random_symmetric((3,), d), torch.randn(3, d)
    x0 = torch.randn(3, d)
    x = x0.clone().requires_grad_()
    loss = 0.5 * (x.unsqueeze(-2) @ a @ x.unsqueeze(-1)).sum() - (b * x).sum()
    (x_new,) = Newton({"x": radius} if radius is not None else {}).get_step(loss, {"x": x}).values()
    g = (a @ x0.unsqueeze(-1)).squeeze(-1) - b
    expected = torch.stack(
        [torch.from_numpy(reference_step(a[i].numpy(), g[i].numpy(), radius)) for i in range(3)]
    )
    assert_close(x_new.detach() - x0, expected, rtol=1e-9, atol=1e-12)
    if radius is not None:
        assert (torch.linalg.vector_norm(x_new.detach() - x0, dim=-1) <= radius * 1.000001).all()
        assert ((x_new.detach() - x0) * g).sum(-1).lt(0).all()  # downhill


def test_scalar_parameter_is_one_variable_of_dimension_one():
    s = torch.tensor(0.3, requires_grad=True)
    v = torch.tensor([0.3], requires_grad=True)

    def loss(t: Tensor) -> Tensor:
        return (torch.exp(t) - 2.0).pow(2).sum() + t.pow(4).sum()

    s_new, s_cov = newton_step(loss(s), s, 0.2)
    v_new, v_cov = pyro.ops.newton.newton_step(loss(v), v, 0.2)
    assert s_new.shape == ()
    assert_close(s_new.detach(), v_new.detach()[0], **TOL)
    assert_close(s_cov.detach(), v_cov.detach(), **TOL)


def test_nan_step_in_one_dimension_is_zero_as_in_pyro():
    x = pyro.param("x", torch.tensor([[-1.0], [4.0]]))
    loss = torch.sqrt(x).sum()  # NaN derivatives at -1
    Newton().step(loss, {"x": x.unconstrained()})
    # at 4: g = 1/4, H = -1/32 floored to 1e-8: pyro's step of -g * 1e8
    assert_close(pyro.param("x").detach(), torch.tensor([[-1.0], [4.0 - 0.25e8]]), **TOL)


# -- gradients through get_step ------------------------------------------------------------
def test_get_step_gradient_analytic():
    # One Newton step on 0.5 (x - theta)^T A (x - theta) lands on theta from anywhere,
    # so d(updated)/d(theta) = I and d(updated)/dA = 0.
    a = random_spd((2,), 3).requires_grad_()
    theta = torch.randn(2, 3, requires_grad=True)
    x = pyro.param("x", torch.randn(2, 3))
    updated = Newton().get_step(quadratic(x, a, theta), {"x": x.unconstrained()})["x"]
    w = torch.randn(2, 3)
    d_theta, d_a = torch.autograd.grad((w * updated).sum(), [theta, a])
    assert_close(d_theta, w, **TOL)
    assert_close(d_a, torch.zeros_like(a), rtol=0, atol=1e-12)


@pytest.mark.parametrize("radius", [None, 0.3])
@pytest.mark.parametrize("d", [1, 2, 4])
def test_get_step_gradient_matches_finite_differences(d, radius):
    a, b0 = random_spd((3,), d), torch.randn(3, d)
    x0, w = torch.randn(3, d), torch.randn(3, d)
    optim = Newton({"x": radius} if radius is not None else {})

    def objective(b: Tensor) -> Tensor:
        x = x0.clone().requires_grad_()
        return (w * optim.get_step(smooth_loss(x, a, b), {"x": x})["x"]).sum()

    b = b0.clone().requires_grad_()
    (analytic,) = torch.autograd.grad(objective(b), [b])
    h = 1e-6
    numeric = torch.zeros_like(b0)
    for i in range(b0.numel()):
        e = torch.zeros(b0.numel())
        e[i] = h
        e = e.reshape(b0.shape)
        numeric.view(-1)[i] = (objective(b0 + e) - objective(b0 - e)).detach() / (2 * h)
    assert_close(analytic, numeric, rtol=1e-6, atol=1e-7)


def test_mixed_get_step_is_differentiable():
    theta = torch.randn(2, requires_grad=True)
    a = pyro.param("a", torch.zeros(2))
    b = pyro.param("b", torch.zeros(3, 4))
    loss = ((a - theta) ** 2).sum() + ((b - 2 * theta.sum()) ** 2).sum()
    optim = MixedMultiOptimizer([(["a"], Newton()), (["b"], Newton({"b": 100.0}))])
    updated = optim.get_step(loss, {"a": a.unconstrained(), "b": b.unconstrained()})
    (d_theta,) = torch.autograd.grad(updated["a"].sum() + updated["b"].sum(), [theta])
    # a -> theta; b -> 2 sum(theta) in each of 12 entries (up to the 1e-8 shift)
    assert_close(d_theta, torch.full((2,), 1.0 + 24.0), rtol=1e-7, atol=0)


# -- step semantics, constrained parameters --------------------------------------------------
def test_step_writes_detached_get_step_values_in_place():
    x = pyro.param("x", torch.randn(4, 3))
    u = x.unconstrained()
    a, m = random_spd((4,), 3), torch.randn(4, 3)
    expected = Newton({"x": 0.5}).get_step(quadratic(u, a, m), {"x": u})["x"].detach()
    Newton({"x": 0.5}).step(quadratic(u, a, m), {"x": u})
    assert pyro.param("x").unconstrained() is u
    assert u.is_leaf and u.requires_grad and u.grad_fn is None
    assert_close(u.detach(), expected, **TOL)


@pytest.mark.parametrize("optim_factory", [lambda: Newton(), lambda: Newton({"s": 100.0})])
def test_constrained_parameter_is_stepped_in_unconstrained_space(optim_factory):
    # The loss is quadratic in log(scale), the unconstrained value: one step is exact.
    target = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    s = pyro.param("s", torch.ones(2, 2), constraint=constraints.positive)
    loss = ((s.log() - target) ** 2).sum()
    optim_factory().step(loss, {"s": s.unconstrained()})
    assert_close(pyro.param("s").log().detach(), target, rtol=1e-6, atol=1e-8)


def test_constrained_value_is_rejected_with_a_hint():
    z = pyro.param("z", torch.ones(2), constraint=constraints.positive)
    with pytest.raises(ValueError, match=r"'z'.*pyro.param\('z'\).unconstrained\(\)"):
        Newton().step((z**2).sum(), {"z": z})


def test_empty_params_do_nothing():
    x = torch.ones(2, requires_grad=True)
    assert Newton().get_step((x**2).sum(), {}) == {}
    Newton().step((x**2).sum(), {})
    PyroMultiOptimizer(pyroopt.Adam({"lr": 0.1})).step((x**2).sum(), {})


# -- PyroMultiOptimizer, TorchMultiOptimizer -------------------------------------------------
@pytest.mark.parametrize("previous", [None, "tensor"])
def test_pyro_multi_optimizer_leaves_grad_as_it_was(previous):
    x = pyro.param("x", torch.ones(3))
    u = x.unconstrained()
    sentinel = torch.full((3,), 7.0) if previous else None
    u.grad = sentinel
    PyroMultiOptimizer(pyroopt.SGD({"lr": 0.5})).step(((x - 3.0) ** 2).sum(), {"x": u})
    assert u.grad is sentinel
    assert_close(pyro.param("x").detach(), torch.full((3,), 3.0), **TOL)  # 1 - 0.5 * (-4)


@pytest.mark.parametrize(
    "optim",
    [
        lambda: PyroMultiOptimizer(pyroopt.Adam({"lr": 0.1})),
        lambda: TorchMultiOptimizer(torch.optim.SGD, {"lr": 0.1}),
    ],
)
def test_pyro_multi_optimizer_has_no_get_step(optim):
    x = pyro.param("x", torch.ones(3))
    with pytest.raises(NotImplementedError, match="get_step"):
        optim().get_step((x**2).sum(), {"x": x.unconstrained()})


def test_pyro_multi_optimizer_rejects_a_non_pyro_optim():
    with pytest.raises(TypeError, match="PyroOptim"):
        PyroMultiOptimizer(torch.optim.Adam)


def test_torch_multi_optimizer_rejects_bad_args():
    with pytest.raises(TypeError, match="optim_args"):
        TorchMultiOptimizer(torch.optim.Adam, [0.1])


def test_pyro_multi_optimizer_uses_a_per_parameter_optim_args_callable():
    a = pyro.param("a", torch.zeros(2))
    b = pyro.param("b", torch.zeros(2))
    optim = TorchMultiOptimizer(torch.optim.SGD, lambda name: {"lr": 0.5 if name == "a" else 0.25})
    loss = (a - 1.0).pow(2).sum() + (b - 1.0).pow(2).sum()
    optim.step(loss, {"a": a.unconstrained(), "b": b.unconstrained()})
    assert_close(pyro.param("a").detach(), torch.ones(2), **TOL)
    assert_close(pyro.param("b").detach(), torch.full((2,), 0.5), **TOL)


# -- MixedMultiOptimizer ----------------------------------------------------------------------
def test_mixed_rejects_a_name_in_two_parts():
    with pytest.raises(ValueError, match=r"'y' is in part 0 and in part 1"):
        MixedMultiOptimizer([(["x", "y"], Newton()), (["y"], pyroopt.Adam({"lr": 0.1}))])


def test_mixed_rejects_a_name_twice_in_one_part():
    with pytest.raises(ValueError, match=r"'x' is in part 0 and in part 0"):
        MixedMultiOptimizer([(["x", "x"], Newton())])


def test_mixed_rejects_an_uncovered_name():
    x = pyro.param("x", torch.ones(2))
    w = pyro.param("w", torch.ones(2))
    optim = MixedMultiOptimizer([(["x"], Newton())])
    loss = (x**2).sum() + (w**2).sum()
    params = {"x": x.unconstrained(), "w": w.unconstrained()}
    with pytest.raises(ValueError, match=r"\['w'\] are in no part"):
        optim.step(loss, params)
    with pytest.raises(ValueError, match=r"\['w'\] are in no part"):
        optim.get_step(loss, params)
    assert_close(pyro.param("x").detach(), torch.ones(2), rtol=0, atol=0)  # nothing moved


def test_mixed_skips_names_absent_from_params():
    x = pyro.param("x", torch.ones(2))
    optim = MixedMultiOptimizer([(["x", "later"], Newton()), (["other"], Newton())])
    optim.step(((x - 3.0) ** 2).sum(), {"x": x.unconstrained()})
    assert_close(pyro.param("x").detach(), torch.full((2,), 3.0), **TOL)


@pytest.mark.parametrize(
    "parts, error, match",
    [
        ("x", TypeError, "parts must be a list"),
        ({"x": Newton()}, TypeError, "parts must be a list"),
        ([("x", Newton())], TypeError, r"parts\[0\] names"),
        ([(["x"], Newton(), 1)], TypeError, r"parts\[0\] must be a \(names, optimizer\)"),
        ([([1], Newton())], TypeError, r"names must be strings"),
        ([(["x"], torch.optim.Adam)], TypeError, r"parts\[0\] optimizer"),
    ],
)
def test_mixed_rejects_bad_parts(parts, error, match):
    with pytest.raises(error, match=match):
        MixedMultiOptimizer(parts)


def separable_loss() -> tuple[Tensor, dict[str, Tensor]]:
    """Four parameters, each in its own non-quadratic term."""
    a = pyro.param("a", torch.linspace(-1.0, 1.0, 6).reshape(3, 2))
    b = pyro.param("b", torch.linspace(0.0, 1.0, 4))
    c = pyro.param("c", torch.linspace(0.5, 2.0, 6).reshape(2, 3), constraint=constraints.positive)
    d = pyro.param("d", torch.linspace(-2.0, 2.0, 5))
    loss = (
        (torch.cosh(a - 0.3) + a**2).sum()
        + (b - 0.7).pow(2).sum()
        + 0.5 * (b.sum() - 1.0) ** 2
        + ((c.log() - 0.2) ** 2).sum()
        + (d - 1.0).pow(4).sum()
    )
    params = {name: pyro.param(name).unconstrained() for name in "abcd"}
    return loss, params


def run_separable(optim: MultiOptimizer, names: str, steps: int = 15) -> dict[str, Tensor]:
    pyro.clear_param_store()
    for _ in range(steps):
        loss, params = separable_loss()
        optim.step(loss, {name: params[name] for name in names})
    return {name: pyro.param(name).detach().clone() for name in "abcd"}


def test_mixed_equals_each_part_on_its_own():
    mixed = MixedMultiOptimizer(
        [(["a", "b"], Newton({"b": 0.3})), (["c", "d"], pyroopt.Adam({"lr": 0.05}))]
    )
    together = run_separable(mixed, "abcd")
    newton_alone = run_separable(Newton({"b": 0.3}), "ab")
    adam_alone = run_separable(PyroMultiOptimizer(pyroopt.Adam({"lr": 0.05})), "cd")
    for name in "ab":
        assert_close(together[name], newton_alone[name], **TOL, msg=name)
    for name in "cd":
        assert_close(together[name], adam_alone[name], **TOL, msg=name)
    assert not torch.equal(together["d"], newton_alone["d"])  # d moved, and only by Adam


def test_mixed_steps_every_part_from_the_same_point_when_the_loss_couples_them():
    # pyro's MixedMultiOptimizer steps parts in turn: here its second part's gradient
    # needs a value the first part already changed in place, and autograd raises.
    def coupled() -> tuple[Tensor, dict[str, Tensor]]:
        a = pyro.param("a", torch.tensor([0.2, -0.4]))
        b = pyro.param("b", torch.tensor([1.0, 2.0]))
        loss = ((a * b - 1.0) ** 2).sum() + (a**2).sum() + (b**2).sum()
        return loss, {"a": a.unconstrained(), "b": b.unconstrained()}

    # expected: Newton's step for a and SGD's for b, both at the starting point
    loss, params = coupled()
    (g_b,) = torch.autograd.grad(loss, [params["b"]], retain_graph=True)
    want_a = Newton().get_step(loss, {"a": params["a"]})["a"].detach()
    want_b = params["b"].detach() - 0.1 * g_b
    results = []
    for order in (["a", "b"], ["b", "a"]):
        pyro.clear_param_store()
        parts = {"a": (["a"], Newton()), "b": (["b"], pyroopt.SGD({"lr": 0.1}))}
        optim = MixedMultiOptimizer([parts[name] for name in order])
        optim.step(*coupled())
        results.append((pyro.param("a").detach().clone(), pyro.param("b").detach().clone()))
    for got_a, got_b in results:
        assert_close(got_a, want_a, **TOL)
        assert_close(got_b, want_b, **TOL)


def test_mixed_accepts_pyro_multi_optimizers_and_pyro_optims():
    parts_pyroopt = [(["x", "z"], Newton({"z": 0.2})), (["y"], pyroopt.Adam({"lr": 0.05}))]
    parts_pyro = [
        (["x", "z"], pyro.optim.multi.Newton({"z": 0.2})),
        (["y"], pyro.optim.Adam({"lr": 0.05})),
    ]
    want = run_map(MixedMultiOptimizer(parts_pyroopt), steps=10)[-1]
    got = run_map(MixedMultiOptimizer(parts_pyro), steps=10)[-1]
    for name in "xyz":
        assert_close(got[name], want[name], **TOL, msg=name)


# -- bad input ----------------------------------------------------------------------------------
@pytest.fixture
def x_param() -> Tensor:
    return pyro.param("x", torch.ones(3, 2)).unconstrained()


OPTIMIZERS: dict[str, Callable[[], MultiOptimizer]] = {
    "newton": lambda: Newton(),
    "pyro_multi": lambda: PyroMultiOptimizer(pyroopt.Adam({"lr": 0.1})),
    "mixed": lambda: MixedMultiOptimizer([(["x"], Newton())]),
}


@pytest.mark.parametrize("optim", list(OPTIMIZERS))
@pytest.mark.parametrize(
    "make_params, error, match",
    [
        (lambda x: [x], TypeError, r"params must be a dict.*list"),
        (lambda x: x, TypeError, r"params must be a dict.*Tensor"),
        (lambda x: {"x": [1.0, 2.0]}, TypeError, r"params\['x'\] must be a tensor, got list"),
        (lambda x: {1: x}, TypeError, r"keyed by parameter name \(str\), got key 1"),
        (lambda x: {"x": torch.ones(2, dtype=torch.long)}, TypeError, r"floating point.*int64"),
        (lambda x: {"x": torch.ones(2)}, ValueError, r"params\['x'\] does not require grad"),
    ],
)
def test_bad_params(x_param, optim, make_params, error, match):
    loss = (x_param**2).sum()
    with pytest.raises(error, match=match):
        OPTIMIZERS[optim]().step(loss, make_params(x_param))


@pytest.mark.parametrize("optim", list(OPTIMIZERS))
@pytest.mark.parametrize(
    "make_loss, error, match",
    [
        (lambda x: 1.0, TypeError, "loss must be a scalar tensor, got float"),
        (lambda x: x**2, ValueError, r"loss must be a scalar tensor, got shape \(3, 2\)"),
        (lambda x: (x**2).sum().detach(), ValueError, "loss does not require grad"),
    ],
)
def test_bad_loss(x_param, optim, make_loss, error, match):
    with pytest.raises(error, match=match):
        OPTIMIZERS[optim]().step(make_loss(x_param), {"x": x_param})


@pytest.mark.parametrize("optim", list(OPTIMIZERS))
def test_parameter_the_loss_ignores(x_param, optim):
    other = pyro.param("other", torch.ones(2)).unconstrained()
    params = {"other": other, "x": x_param}
    if optim == "mixed":
        params = {"x": x_param}  # "other" is in no part: loss depends on none of params
    with pytest.raises(ValueError, match=r"loss does not depend on params \['x'\]"):
        OPTIMIZERS[optim]().step((other**2).sum(), params)


@pytest.mark.parametrize(
    "radius, error, match",
    [
        (0.0, ValueError, r"trust radius of 'x' must be > 0, got 0.0"),
        (-1.0, ValueError, r"trust radius of 'x' must be > 0, got -1.0"),
        (float("nan"), ValueError, r"trust radius of 'x' must be > 0, got nan"),
        ("1.0", TypeError, r"trust radius of 'x' must be a positive number, got str"),
        (True, TypeError, r"trust radius of 'x' must be a positive number, got bool"),
    ],
)
def test_bad_trust_radius(x_param, radius, error, match):
    with pytest.raises(error, match=match):
        Newton({"x": radius})
    loss = (x_param**2).sum()
    with pytest.raises(error, match=match):
        newton_step(loss, x_param, radius)
    optim = Newton()
    optim.trust_radii["x"] = radius  # changed after construction: checked at the step
    with pytest.raises(error, match=match):
        optim.step(loss, {"x": x_param})


def test_trust_radius_none_means_unregularized_as_in_pyro():
    a, m = random_spd((3,), 2), torch.randn(3, 2)
    x = torch.randn(3, 2, requires_grad=True)
    (x_new,) = Newton({"x": None}).get_step(quadratic(x, a, m), {"x": x}).values()
    assert_close(x_new.detach(), m, **TOL)  # exact: no 1e-8 shift


def test_bad_trust_radii():
    with pytest.raises(TypeError, match=r"trust_radii must be a dict.*list"):
        Newton([0.1])
    with pytest.raises(TypeError, match=r"keyed by parameter name \(str\), got \[0\]"):
        Newton({0: 0.1})


def test_newton_step_bad_x():
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(TypeError, match="x must be a tensor, got list"):
        newton_step((x**2).sum(), [1.0, 2.0])
    with pytest.raises(ValueError, match="x does not require grad"):
        newton_step((x**2).sum(), torch.ones(2))


@pytest.mark.parametrize("d", [2, 5])
def test_singular_hessian_without_trust_radius_is_an_error(x_param, d):
    x = pyro.param(f"v{d}", torch.ones(4, d)).unconstrained()
    loss = ((x[..., 0] - 2.0) ** 2).sum() + 0.0 * x.sum()
    with pytest.raises(ValueError, match=rf"Hessian of 'v{d}' is singular in 4 of 4.*trust_radii"):
        Newton().step(loss, {f"v{d}": x})
    # The trust region shifts the Hessian diag(2, 0, ...) by |g| / r = 2 / 10: invertible.
    Newton({f"v{d}": 10.0}).step(loss, {f"v{d}": x})
    expected = torch.ones(4, d)
    expected[:, 0] += 2.0 / (2.0 + 0.2)
    assert_close(x.detach(), expected, **TOL)


def test_non_finite_step_is_an_error():
    x = pyro.param("x", torch.tensor([[-1.0, 1.0]])).unconstrained()
    with pytest.raises(ValueError, match="Newton step of 'x' is not finite"):
        Newton().step(torch.sqrt(x).sum(), {"x": x})
