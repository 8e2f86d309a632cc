# %% [markdown]
# # PyTorch Lightning and ELBO modules with `pyroopt.torch`
#
# Pyro's newer training loops (its `svi_torch.py` and `svi_lightning.py` examples) do not
# use SVI or `pyro.optim`: `Trace_ELBO()(model, guide)` is a `torch.nn.Module` whose
# call returns the loss, and a plain torch optimizer steps its parameters. On the CPU
# torch's optimizers loop over the parameters one tensor at a time;
# `pyroopt.torch.Adam` is a `torch.optim.Adam` that steps them all at once and computes
# the same numbers, bit for bit. Swapping the class is the whole change.
#
# As in Pyro's example, the guide's parameters are created by one call of the loss
# before `configure_optimizers` runs (an `AutoNormal` guide makes them on first use;
# parameters created later would need `optimizer.add_param_group`).
#
# We train the same model twice, once per optimizer class, and compare the losses.
# `PYROOPT_QUICK=1` for a short run (the test suite does).

# %%
from __future__ import annotations

import time
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import pytorch_lightning as pl
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule
from regression import QUICK, output_dir

import pyroopt.torch

EPOCHS = 3 if QUICK else 20
SIZE = 2000 if QUICK else 20000
BATCH = 100
FEATURES = 50  # 50 weights + bias + scale: AutoNormal holds 2 x 52 parameter tensors
OUT = output_dir("08_lightning_elbo")
warnings.filterwarnings("ignore", ".*does not have many workers.*")


# %% [markdown]
# ## The model, with no reference to Lightning
#
# A regression with one sample site per weight (many small parameters: the case where
# a per-tensor optimizer loop costs most). The plate is told the full data size so
# that each mini-batch's likelihood is scaled up to it.


# %%
class Model(PyroModule):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        weights = [pyro.sample(f"w{i}", dist.Normal(0.0, 1.0)) for i in range(FEATURES)]
        bias = pyro.sample("bias", dist.Normal(0.0, 10.0))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        loc = bias + x @ torch.stack(weights)
        with pyro.plate("data", self.size, subsample_size=len(x)):
            return pyro.sample("obs", dist.Normal(loc, scale), obs=y)


# %% [markdown]
# ## The LightningModule holds the ELBO module; `configure_optimizers` picks the class


# %%
class PyroLightningModule(pl.LightningModule):
    def __init__(self, loss_fn: pyro.infer.elbo.ELBOModule, optimizer: type, lr: float):
        super().__init__()
        self.loss_fn = loss_fn
        self.optimizer_class = optimizer
        self.lr = lr
        self.losses: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        loss = self.loss_fn(*batch)
        self.losses.append(loss.detach().clone())
        return loss

    def configure_optimizers(self):
        return self.optimizer_class(self.loss_fn.parameters(), lr=self.lr)


def train(optimizer: type) -> tuple[list[torch.Tensor], float]:
    """Train from the same seed with ``optimizer``; the losses and seconds per epoch."""
    pyro.set_rng_seed(0)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(SIZE, FEATURES, generator=generator)
    y = x @ torch.linspace(-1, 1, FEATURES) + 0.5 + 0.3 * torch.randn(SIZE, generator=generator)
    model = Model(SIZE)
    guide = AutoNormal(model)
    loss_fn = Trace_ELBO()(model, guide)
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH)
    loss_fn(*dataset[:BATCH])  # creates the guide's parameters before the optimizer
    plan = PyroLightningModule(loss_fn, optimizer, lr=0.01)
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(plan, train_dataloaders=loader)
    return plan.losses, (time.perf_counter() - start) / EPOCHS


# %%
with pyro.settings.context(module_local_params=True):
    runs = {cls: train(cls) for cls in (torch.optim.Adam, pyroopt.torch.Adam)}
(theirs, t_theirs), (ours, t_ours) = runs.values()
identical = len(ours) == len(theirs) and all(map(torch.equal, ours, theirs))
print(f"steps: {len(ours)}")
print(f"torch.optim.Adam:   {1e3 * t_theirs:8.1f} ms per epoch")
print(f"pyroopt.torch.Adam: {1e3 * t_ours:8.1f} ms per epoch")
print(f"identical losses: {identical}")
print(f"final loss: {float(ours[-1]):.1f}")

# %% [markdown]
# ## The two loss curves lie on top of each other

# %%
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot([float(v) for v in theirs], label="torch.optim.Adam", linewidth=3, alpha=0.5)
ax.plot([float(v) for v in ours], label="pyroopt.torch.Adam", linestyle="--")
ax.set_xlabel("training step")
ax.set_ylabel("loss (negative ELBO, mini-batch)")
ax.set_yscale("log")
ax.set_title("Lightning + Trace_ELBO module: same losses, bit for bit")
ax.legend()
fig.tight_layout()
plot = OUT / "lightning_loss.png"
fig.savefig(plot, dpi=100)
print(f"plot: {plot}")
