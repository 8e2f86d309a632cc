# %% [markdown]
# # Getting started: SVI with pyroopt
#
# A Bayesian linear regression trained with stochastic variational inference. The only
# change from a pyro.optim program is the import: `import pyroopt as optim` instead of
# `import pyro.optim as optim`. The run shows a progress bar with the loss and the
# learning rate, then writes the loss curve and an optimizer checkpoint.
#
# Run it with `make demo`, or `python tutorials/01_getting_started.py`. Set
# `PYROOPT_QUICK=1` for a short run (the test suite does).

# %%
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from tqdm import tqdm

import pyroopt as optim  # was: import pyro.optim as optim

QUICK = os.environ.get("PYROOPT_QUICK") == "1"
STEPS = 200 if QUICK else 2000
OUT = Path(os.environ.get("PYROOPT_OUT", "outputs")) / "01_getting_started"

# %% [markdown]
# ## Data and model
# 500 points from `y = x @ w + b + noise` with four features.

# %%
pyro.set_rng_seed(0)
TRUE_WEIGHT = torch.tensor([1.5, -2.0, 0.5, 0.0])
x = torch.randn(500, 4)
y = x @ TRUE_WEIGHT + 1.0 + 0.3 * torch.randn(500)


def model(x, y=None):
    weight = pyro.sample("weight", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
    bias = pyro.sample("bias", dist.Normal(0.0, 10.0))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(x @ weight + bias, sigma), obs=y)


# %% [markdown]
# ## Training
# `optim.Adam` takes the same arguments as `pyro.optim.Adam`; all parameters of the
# guide are stepped together in one fused pass.

# %%
pyro.clear_param_store()
guide = AutoNormal(model)
adam = optim.Adam({"lr": 0.02})
svi = SVI(model, guide, adam, Trace_ELBO())

losses = []
with tqdm(range(STEPS), desc="SVI", disable=None) as bar:
    for step in bar:
        losses.append(svi.step(x, y))
        if step % 50 == 0:
            lr = next(iter(adam.learning_rates().values()))
            bar.set_postfix(loss=f"{losses[-1]:.1f}", lr=f"{lr:.3g}")

# %% [markdown]
# ## Results: the posterior means, a checkpoint, and the loss curve

# %%
OUT.mkdir(parents=True, exist_ok=True)
checkpoint = OUT / "optimizer.pt"
adam.save(checkpoint)

fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(losses, label="ELBO loss")
ax.set_xlabel("SVI step")
ax.set_ylabel("loss (negative ELBO)")
ax.set_yscale("symlog")
ax.set_title("Bayesian regression trained with pyroopt.Adam")
ax.legend()
fig.tight_layout()
plot = OUT / "loss.png"
fig.savefig(plot, dpi=100)

weight = pyro.param("AutoNormal.locs.weight").detach()
print(f"posterior mean weight: {weight.numpy().round(2)} (true {TRUE_WEIGHT.numpy()})")
print(f"final loss: {sum(losses[-20:]) / 20:.1f}")
print(f"loss curve: {plot}")
print(f"optimizer checkpoint: {checkpoint}")
