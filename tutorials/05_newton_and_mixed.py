# %% [markdown]
# # Newton steps for a batched latent, Adam for the rest
#
# A hierarchical model: `K` groups, each with a 2-D mean `mu_k`, drawn around a shared
# population mean `m0`; each group has `n` 2-D observations with a correlated
# (MultivariateNormal) noise. We look for the maximum a posteriori (MAP) values of the
# `K x 2` latent `mu` and of the parameter `m0`.
#
# Given `m0`, the loss is a sum of independent terms, one per group, each quadratic in
# its `mu_k`: a batch of 2-D problems, exactly what `pyroopt.Newton` solves, with one
# `2 x 2` Hessian block per group (here within a trust region). `m0` is left to
# `pyroopt.Adam`; `pyroopt.MixedMultiOptimizer` gives each its own optimizer and steps
# both from the same loss. The baseline steps everything with Adam.
#
# The exact MAP is known in closed form, so we can say how far each run ends from it.

# %%
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta
from regression import QUICK, output_dir

import pyroopt

torch.set_default_dtype(torch.float64)  # to compare with the closed form closely
STEPS = 100 if QUICK else 300
K, N = 50, 20  # groups, observations per group
LR = 0.2
OUT = output_dir("05_newton_and_mixed")
PRIOR_COV = torch.tensor([[4.0, 1.0], [1.0, 2.0]])  # spread of the group means
NOISE_COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]])  # observation noise

# %% [markdown]
# ## Data and model
# `AutoDelta` turns the latent `mu` into the point parameter `AutoDelta.mu`; with a
# point guide the negative ELBO is the negative log joint density, the MAP objective.

# %%
generator = torch.Generator().manual_seed(0)
true_m0 = torch.tensor([3.0, -1.0])
true_mu = true_m0 + torch.randn(K, 2, generator=generator) @ torch.linalg.cholesky(PRIOR_COV).T
noise = torch.randn(N, K, 2, generator=generator) @ torch.linalg.cholesky(NOISE_COV).T
x = true_mu + noise  # shape (N, K, 2)


def model(x: torch.Tensor) -> None:
    m0 = pyro.param("m0", torch.zeros(2))
    with pyro.plate("groups", K):
        mu = pyro.sample("mu", dist.MultivariateNormal(m0, PRIOR_COV))
        with pyro.plate("obs", N, dim=-2):
            pyro.sample("x", dist.MultivariateNormal(mu, NOISE_COV), obs=x)


def loss_and_params(guide: AutoDelta) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The MAP loss and ``{name: unconstrained parameter}`` it was computed from."""
    with poutine.trace(param_only=True) as tape:
        loss = Trace_ELBO().differentiable_loss(model, guide, x)
    params = {name: site["value"].unconstrained() for name, site in tape.trace.nodes.items()}
    return loss, params


# %% [markdown]
# ## The exact MAP
# Setting the gradient to zero: `m0` is the grand mean of the data, and each `mu_k`
# the precision-weighted mix of `m0` and its group's data,
# `mu_k = (P0 + n P)^-1 (P0 m0 + P sum_i x_ik)` with `P0`, `P` the prior and noise
# precisions.

# %%
prior_prec, noise_prec = torch.linalg.inv(PRIOR_COV), torch.linalg.inv(NOISE_COV)
exact_m0 = x.mean(dim=(0, 1))
post_cov = torch.linalg.inv(prior_prec + N * noise_prec)
exact_mu = (post_cov @ (prior_prec @ exact_m0 + (noise_prec @ x.sum(0).T).T).T).T


def distance_to_map() -> float:
    """The largest absolute difference from the exact MAP, over mu and m0."""
    mu = pyro.param("AutoDelta.mu").detach()
    m0 = pyro.param("m0").detach()
    return max(float((mu - exact_mu).abs().max()), float((m0 - exact_m0).abs().max()))


with torch.no_grad():
    pyro.clear_param_store()
    guide = AutoDelta(model, init_loc_fn=lambda site: exact_mu.clone())
    pyro.param("m0", exact_m0.clone())  # the store would make its init tensor require grad
    best_loss = float(loss_and_params(guide)[0])
print(f"loss at the exact MAP: {best_loss:.4f}")


# %% [markdown]
# ## Two runs from the same start
# `Newton(trust_radii={"AutoDelta.mu": 5.0})` keeps every group's step within 5 units;
# the step takes the gradient and the `2 x 2` Hessian block of each group from the loss
# itself, so the optimizers are called as `optim.step(loss, params)`.


# %%
def run(optim: pyroopt.MultiOptimizer) -> tuple[list[float], float]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoDelta(model)
    losses = []
    for _ in range(STEPS):
        loss, params = loss_and_params(guide)
        losses.append(float(loss.detach()))
        optim.step(loss, params)
    losses.append(float(loss_and_params(guide)[0].detach()))  # after the last step
    return losses, distance_to_map()


mixed = pyroopt.MixedMultiOptimizer(
    [
        (["AutoDelta.mu"], pyroopt.Newton(trust_radii={"AutoDelta.mu": 5.0})),
        (["m0"], pyroopt.Adam({"lr": LR})),
    ]
)
adam_only = pyroopt.PyroMultiOptimizer(pyroopt.Adam({"lr": LR}))
curves = {}
for label, optim in (("Newton for mu + Adam for m0", mixed), ("Adam for both", adam_only)):
    losses, distance = run(optim)
    curves[label] = losses
    print(f"{label:28s} final loss {losses[-1]:.4f}   distance to the exact MAP {distance:.2e}")

# %% [markdown]
# ## Loss per step
# The distance of the loss from its minimum, on a log scale: Newton solves the group
# means at once for the current `m0`, so the mixed run is left with the one 2-D
# parameter Adam moves.

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
for label, losses in curves.items():
    ax.plot([loss - best_loss for loss in losses], label=label)
ax.set_yscale("log")
ax.set_xlabel("optimizer step")
ax.set_ylabel("loss - loss at the exact MAP (log scale)")
ax.set_title(f"MAP of {K} 2-D group means and a population mean")
ax.legend()
fig.tight_layout()
plot = OUT / "newton_vs_adam.png"
fig.savefig(plot, dpi=100)
print(f"plot: {plot}")
