# %% [markdown]
# # Per-parameter settings and gradient clipping
#
# Two runs of the Bayesian regression of tutorial 1, each showing what pyroopt reads
# back from the optimizer:
#
# 1. **Per parameter.** `optim_args` is a one-argument callable: it receives each
#    parameter's name (`"AutoNormal.locs.weight"`, `"AutoNormal.scales.sigma"`, ...) and
#    gives the means (`locs`) a larger learning rate than the scales. `clip_args` is a
#    callable too: the means' gradients are clipped by norm (`clip_norm`), the scales'
#    element by element (`clip_value`).
# 2. **Global norm.** `clip_args={"clip_global_norm": ...}` bounds the joint norm of all
#    gradients of a step, which pyro.optim cannot do.
#
# `optim.learning_rates()` gives each parameter's current learning rate,
# `optim.grad_norms()` each gradient's norm at the last step before clipping (recorded
# with `track_grad_norms=True`, or whenever a parameter is clipped by norm) and
# `optim.global_grad_norm()` the joint norm at the last step before `clip_global_norm`.
# The plot shows the gradient norms over training against the thresholds, and the loss.

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

STEPS = 150 if QUICK else 1500
OUT = output_dir("02_per_parameter_and_clipping")
LOC_LR, SCALE_LR = 0.05, 0.02
LOC_CLIP_NORM = 800.0  # bound on the norm of each mean's gradient
SCALE_CLIP_VALUE = 5.0  # bound on each element of a scale's gradient
GLOBAL_CLIP_NORM = 1000.0  # bound on the norm of all gradients of a step together

# %% [markdown]
# ## Per-parameter learning rates and clipping
# Both callables take the parameter's name. The names AutoNormal gives are
# `AutoNormal.locs.<site>` for the means and `AutoNormal.scales.<site>` for the
# standard deviations (stepped in the unconstrained, log space).


# %%
def optim_args(name: str) -> dict[str, float]:
    return {"lr": LOC_LR if ".locs." in name else SCALE_LR}


def clip_args(name: str) -> dict[str, float]:
    if ".locs." in name:
        return {"clip_norm": LOC_CLIP_NORM}
    return {"clip_value": SCALE_CLIP_VALUE}


def train(optim: pyroopt.PyroOptim) -> tuple[list[float], list[dict[str, float]], list[float]]:
    """Train from scratch; the loss, the gradient norms and the global norm per step."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x, y = data()
    svi = SVI(model, AutoNormal(model), optim, Trace_ELBO())
    losses, norms, global_norms = [], [], []
    for _ in range(STEPS):
        losses.append(svi.step(x, y))
        norms.append(optim.grad_norms())  # before clipping
        global_norms.append(optim.global_grad_norm())  # None unless clip_global_norm
    return losses, norms, global_norms


per_param = pyroopt.PyroOptim(torch.optim.Adam, optim_args, clip_args, track_grad_norms=True)
losses_pp, norms_pp, _ = train(per_param)

print("learning rates (optim.learning_rates()):")
for name, lr in sorted(per_param.learning_rates().items()):
    print(f"  {name:28s} lr {lr:.3f}")
print("gradient norms at the last step (optim.grad_norms()):")
for name, norm in sorted(norms_pp[-1].items()):
    print(f"  {name:28s} {norm:9.2f}")
names = sorted(norms_pp[0])
loc_names = [n for n in names if ".locs." in n]
clipped = sum(any(step[n] > LOC_CLIP_NORM for n in loc_names) for step in norms_pp)
print(f"steps where a mean's gradient was clipped to norm {LOC_CLIP_NORM:g}: {clipped} of {STEPS}")

# %% [markdown]
# ## Global-norm clipping
# One Adam for everything, and all gradients of a step scaled down together whenever
# their joint norm exceeds the bound: the direction of the step is kept.

# %%
global_clip = pyroopt.PyroOptim(
    torch.optim.Adam, {"lr": LOC_LR}, {"clip_global_norm": GLOBAL_CLIP_NORM}, track_grad_norms=True
)
losses_gc, norms_gc, global_gc = train(global_clip)
over = sum(g > GLOBAL_CLIP_NORM for g in global_gc)
print(f"global gradient norm (optim.global_grad_norm()) at the last step: {global_gc[-1]:.2f}")
print(f"steps scaled down to global norm {GLOBAL_CLIP_NORM:g}: {over} of {STEPS}")

# %% [markdown]
# ## Gradient norms and loss over training

# %%
fig, (ax_pp, ax_gc, ax_loss) = plt.subplots(1, 3, figsize=(16, 4.5))
for name in names:
    style = "-" if ".locs." in name else ":"
    ax_pp.plot([step[name] for step in norms_pp], style, label=name.removeprefix("AutoNormal."))
ax_pp.axhline(
    LOC_CLIP_NORM, color="black", linestyle="--", label=f"clip_norm of locs ({LOC_CLIP_NORM:g})"
)
ax_pp.set_yscale("log")
ax_pp.set_xlabel("SVI step")
ax_pp.set_ylabel("gradient norm before clipping (log scale)")
ax_pp.set_title("Run 1: per-parameter gradient norms")
ax_pp.legend(fontsize=7, ncol=2)

ax_gc.plot(global_gc, color="tab:purple", label="joint norm of all gradients")
ax_gc.axhline(
    GLOBAL_CLIP_NORM,
    color="black",
    linestyle="--",
    label=f"clip_global_norm ({GLOBAL_CLIP_NORM:g})",
)
ax_gc.set_yscale("log")
ax_gc.set_xlabel("SVI step")
ax_gc.set_ylabel("global gradient norm before clipping (log scale)")
ax_gc.set_title("Run 2: global gradient norm")
ax_gc.legend(fontsize=8)

ax_loss.plot(losses_pp, label="run 1: per-parameter lr and clipping", alpha=0.8)
ax_loss.plot(losses_gc, label="run 2: global-norm clipping", alpha=0.8)
ax_loss.set_yscale("log")
ax_loss.set_xlabel("SVI step")
ax_loss.set_ylabel("loss (negative ELBO, log scale)")
ax_loss.set_title("Loss")
ax_loss.legend(fontsize=8)
fig.tight_layout()
plot = OUT / "grad_norms.png"
fig.savefig(plot, dpi=100)

final_pp = sum(losses_pp[-20:]) / 20
final_gc = sum(losses_gc[-20:]) / 20
print(f"final loss, per-parameter run: {final_pp:.1f}")
print(f"final loss, global-norm run: {final_gc:.1f}")
print(f"plot: {plot}")
