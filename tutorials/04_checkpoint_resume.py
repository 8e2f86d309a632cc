# %% [markdown]
# # Checkpoint, crash, resume: the same curve
#
# A long SVI job is killed half-way; the checkpoint it left lets a new process carry
# on as if nothing happened. `pyroopt.checkpoint.save_training` writes the param store,
# the optimizer state and the random generators' state into one file, atomically: a
# crash during the write leaves the previous checkpoint intact. `load_training` reads it
# back safely (no code in the file can run).
#
# The worker process below trains, checkpoints at the half-way step, and is then killed
# with SIGKILL. This process resumes from the file and finishes; its loss curve lies
# exactly on top of an uninterrupted run.

# %%
from __future__ import annotations

import signal
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from regression import QUICK, data, model, output_dir

import pyroopt
from pyroopt.checkpoint import load_training, save_training

# float64: two processes may round float32 sums differently (memory alignment picks
# the SIMD path), and this tutorial compares curves across processes.
torch.set_default_dtype(torch.float64)
STEPS = 60 if QUICK else 400
HALF = STEPS // 2
OUT = output_dir("04_checkpoint_resume")
CHECKPOINT = OUT / "training.pt"


def new_run() -> tuple[SVI, pyroopt.PyroOptim]:
    """A fresh SVI run; the guide is set up at once so setup draws no random numbers later."""
    x, y = data()
    guide = AutoNormal(model)
    guide(x, y)
    optim = pyroopt.ClippedAdam({"lr": 0.05, "lrd": 0.999})
    return SVI(model, guide, optim, Trace_ELBO()), optim


def train(svi: SVI, steps: int) -> list[float]:
    x, y = data()
    return [svi.step(x, y) for _ in range(steps)]


def worker() -> None:
    """Train half-way, checkpoint, then hang until killed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi, optim = new_run()
    train(svi, HALF)
    save_training(CHECKPOINT, optim)
    print("saved", flush=True)
    signal.pause()  # the crash comes from outside


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    worker()
    sys.exit()

# %% [markdown]
# ## The uninterrupted run

# %%
pyro.clear_param_store()
pyro.set_rng_seed(0)
svi, _ = new_run()
straight = train(svi, STEPS)

# %% [markdown]
# ## A worker that dies half-way, and the resumed run

# %%
with subprocess.Popen(
    [sys.executable, __file__, "--worker"], stdout=subprocess.PIPE, text=True
) as proc:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "saved"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
print(f"worker killed by signal {-proc.returncode} after saving {CHECKPOINT}")

pyro.clear_param_store()
svi, optim = new_run()
load_training(CHECKPOINT, optim)
resumed = train(svi, STEPS - HALF)
gap = max(abs(a - b) for a, b in zip(straight[HALF:], resumed, strict=True))
print(f"largest difference between resumed and uninterrupted losses: {gap:.3g}")

# %% [markdown]
# ## The curves

# %%
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(range(STEPS), straight, label="uninterrupted run", linewidth=3, alpha=0.5)
ax.plot(range(HALF, STEPS), resumed, "--", label="resumed from the checkpoint")
ax.axvline(HALF, color="grey", linestyle=":", label="checkpoint, then SIGKILL")
ax.set_xlabel("SVI step")
ax.set_ylabel("loss (negative ELBO)")
ax.set_yscale("log")
ax.set_title("Resuming from pyroopt's checkpoint retraces the curve")
ax.legend()
fig.tight_layout()
plot = OUT / "resume.png"
fig.savefig(plot, dpi=100)
print(f"final loss: {resumed[-1]:.1f}")
print(f"plot: {plot}")
