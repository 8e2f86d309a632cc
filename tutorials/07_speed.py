# %% [markdown]
# # How much faster: reading the benchmark
#
# `make bench` times one optimizer step of pyro.optim and of pyroopt side by side, in
# one process, for several optimizers and three shapes of parameter set: `P` parameters
# of `S` elements each (1000 x 10: many small tensors, as in a model with many sites;
# 100 x 1000; 10 x 1,000,000: few large tensors). It writes
# `benchmarks/results/results.json`; this tutorial reads that file (it never runs the
# benchmark) and explains it.
#
# pyro.optim steps one torch optimizer per parameter from Python, so its time grows
# with `P`; pyroopt steps each bucket of parameters in one pass over a flat buffer. The
# speed-up is largest for many small tensors, where Python overhead dominates, and
# smallest for a few large tensors, where both are mostly limited by memory bandwidth.

# %%
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from regression import output_dir

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "results.json"
OUT = output_dir("07_speed")

# %% [markdown]
# ## The file
# `meta` says where and when it was measured; `optimizer_steps` holds one entry per
# optimizer and shape, with a median time in ms per column (`pyro_optim`, `pyroopt`,
# and the torch foreach / fused and flat-tensor "limit" references); a column is `n/a`
# where torch has no such implementation.

# %%
results = json.loads(RESULTS.read_text())
meta = results["meta"]
print(f"results: {RESULTS}")
print(
    f"measured {meta['date']} ({meta['mode']} mode) with torch {meta['torch']}, pyro "
    f"{meta['pyro']}, pyroopt {meta['pyroopt']}, {meta['torch_threads']} threads, {meta['dtype']}"
)


def median_ms(entry: dict, column: str) -> float | None:
    cell = entry["columns"].get(column)
    if cell is None or cell["status"] != "ok" or cell["timing"] is None:
        return None
    return cell["timing"]["median_ms"]


# %% [markdown]
# ## The table: ms per optimizer step, and the speed-up
# The speed-up is pyro.optim's time over pyroopt's: 10x means a step takes a tenth of
# the time.

# %%
rows = []
for entry in results["optimizer_steps"]:
    pyro_ms, ours_ms = median_ms(entry, "pyro_optim"), median_ms(entry, "pyroopt")
    speedup = None if pyro_ms is None or ours_ms is None else pyro_ms / ours_ms
    rows.append((entry["optimizer"], entry["n_params"], entry["numel"], pyro_ms, ours_ms, speedup))

print(
    f"{'optimizer':18s} {'P x S':>15s} {'pyro.optim ms':>14s} {'pyroopt ms':>11s} {'speed-up':>9s}"
)
for optimizer, p, s, pyro_ms, ours_ms, speedup in rows:
    cells = [f"{v:.3f}" if v is not None else "n/a" for v in (pyro_ms, ours_ms)]
    up = f"{speedup:.1f}x" if speedup is not None else "n/a"
    print(f"{optimizer:18s} {f'{p:,} x {s:,}':>15s} {cells[0]:>14s} {cells[1]:>11s} {up:>9s}")

speedups = [r[5] for r in rows if r[5] is not None]
geomean = math.exp(sum(math.log(v) for v in speedups) / len(speedups))
best = max((r for r in rows if r[5] is not None), key=lambda r: r[5])
worst = min((r for r in rows if r[5] is not None), key=lambda r: r[5])
print(f"largest speed-up: {best[5]:.1f}x ({best[0]}, {best[1]:,} x {best[2]:,})")
print(f"smallest speed-up: {worst[5]:.2f}x ({worst[0]}, {worst[1]:,} x {worst[2]:,})")
print(f"geometric mean speed-up: {geomean:.1f}x over {len(speedups)} cases")

# %% [markdown]
# ## Within SVI
# An SVI step also runs the model and guide and differentiates them; the benchmark's
# `svi` entry times a whole `svi.step()` with each optimizer, and without any
# optimizer step (the floor nothing can beat).

# %%
svi = results.get("svi")
if svi:
    for column in ("pyro_optim", "pyroopt", "no_step"):
        ms = median_ms(svi, column)
        label = svi["columns"][column]["label"]
        print(f"svi.step() with {label:18s}: {ms:.1f} ms" if ms else f"{label}: n/a")

# %% [markdown]
# ## The chart: speed-up per optimizer and shape
# One group of bars per optimizer, one bar per shape, on a log scale; the dashed line
# at 1 is pyro.optim's speed.

# %%
optimizers = list(dict.fromkeys(r[0] for r in rows))
shapes = list(dict.fromkeys((r[1], r[2]) for r in rows))
width = 0.8 / len(shapes)
fig, ax = plt.subplots(figsize=(10, 5))
for i, shape in enumerate(shapes):
    by_opt = {r[0]: r[5] for r in rows if (r[1], r[2]) == shape}
    heights = [by_opt.get(o) or math.nan for o in optimizers]
    xs = [k + (i - (len(shapes) - 1) / 2) * width for k in range(len(optimizers))]
    bars = ax.bar(xs, heights, width, label=f"{shape[0]:,} params x {shape[1]:,} elements")
    ax.bar_label(bars, labels=[f"{h:.1f}x" if h == h else "" for h in heights], fontsize=7)
ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8, label="pyro.optim (1x)")
ax.set_yscale("log")
ax.set_xticks(range(len(optimizers)))
ax.set_xticklabels(optimizers)
ax.set_xlabel("optimizer")
ax.set_ylabel("speed-up over pyro.optim (time ratio, log scale)")
ax.set_title(f"One optimizer step, {meta['dtype']}: pyroopt vs pyro.optim (higher is faster)")
ax.set_ylim(0.5, 4 * max(speedups))  # headroom for the legend
ax.legend(fontsize=8, ncol=2, loc="upper right")
ax.grid(axis="y", which="both", alpha=0.3)
fig.tight_layout()
plot = OUT / "speedup.png"
fig.savefig(plot, dpi=100)
print(f"plot: {plot}")
