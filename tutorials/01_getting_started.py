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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyro
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from regression import QUICK, TRUE_WEIGHT, data, model, output_dir
from tqdm import tqdm

import pyroopt as optim  # was: import pyro.optim as optim

STEPS = 200 if QUICK else 2000
OUT = output_dir("01_getting_started")

# %% [markdown]
# ## Data and model
# 500 points from `y = x @ w + 1 + noise` with four features, and a Bayesian linear
# regression with priors on the weights, the bias and the noise scale (see
# `tutorials/regression.py`).

# %%
pyro.set_rng_seed(0)
x, y = data()

# %% [markdown]
# ## Training
# `optim.Adam` takes the same arguments as `pyro.optim.Adam`; all parameters of the
# guide are stepped together, in one pass over a flat buffer, with the same numbers.

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
