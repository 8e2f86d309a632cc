# %% [markdown]
# # Learning-rate schedules
#
# Every torch schedule works as in pyro.optim: `schedule(params)` on each SVI step,
# `schedule.step()` once per epoch (`schedule.step(metric)` for ReduceLROnPlateau).
# pyroopt also runs the composite `SequentialLR`, which pyro.optim wraps but cannot
# build: here a linear warm-up followed by cosine annealing.
#
# The plot shows the learning rate of each schedule per epoch and the loss it reaches.

# %%
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from regression import QUICK, data, model, output_dir

import pyroopt

EPOCHS = 12 if QUICK else 40
STEPS_PER_EPOCH = 10 if QUICK else 25
OUT = output_dir("03_lr_schedules")
ADAM = {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}}

SCHEDULES = {
    "StepLR": pyroopt.StepLR({**ADAM, "step_size": EPOCHS // 4, "gamma": 0.5}),
    "CosineAnnealingLR": pyroopt.CosineAnnealingLR({**ADAM, "T_max": EPOCHS}),
    "OneCycleLR": pyroopt.OneCycleLR({**ADAM, "max_lr": 0.1, "total_steps": EPOCHS}),
    "ReduceLROnPlateau": pyroopt.ReduceLROnPlateau({**ADAM, "patience": 2, "factor": 0.5}),
    "warm-up + cosine (SequentialLR)": pyroopt.SequentialLR(
        {
            **ADAM,
            "schedulers": [
                (pyroopt.LinearLR, {"start_factor": 0.1, "total_iters": 4}),
                (pyroopt.CosineAnnealingLR, {"T_max": EPOCHS - 4}),
            ],
            "milestones": [4],
        }
    ),
}

# %% [markdown]
# ## One training run per schedule

# %%
x, y = data()
curves = {}
for label, schedule in SCHEDULES.items():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(model, AutoNormal(model), schedule, Trace_ELBO())
    lrs, losses = [], []
    for _ in range(EPOCHS):
        epoch_loss = sum(svi.step(x, y) for _ in range(STEPS_PER_EPOCH)) / STEPS_PER_EPOCH
        losses.append(epoch_loss)
        lrs.append(schedule.get_last_lr()["AutoNormal.locs.weight"])  # the lr used this epoch
        if label == "ReduceLROnPlateau":
            schedule.step(epoch_loss)  # the metric it watches
        else:
            schedule.step()
    curves[label] = (lrs, losses)
    print(f"{label:34s} final loss {losses[-1]:8.1f}   final lr {lrs[-1]:.4f}")

# %% [markdown]
# ## Learning rate and loss per epoch

# %%
fig, (ax_lr, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
for label, (lrs, losses) in curves.items():
    ax_lr.plot(lrs, label=label)
    ax_loss.plot(losses, label=label)
ax_lr.set_xlabel("epoch")
ax_lr.set_ylabel("learning rate")
ax_lr.set_title("Learning rate per epoch")
ax_loss.set_xlabel("epoch")
ax_loss.set_ylabel("mean loss in the epoch (negative ELBO)")
ax_loss.set_yscale("log")
ax_loss.set_title("Loss per epoch")
ax_lr.legend(fontsize=8)
ax_loss.legend(fontsize=8)
fig.tight_layout()
plot = OUT / "schedules.png"
fig.savefig(plot, dpi=100)
best = min(losses[-1] for _, losses in curves.values())
print(f"best final loss: {best:.1f}")
print(f"plot: {plot}")
