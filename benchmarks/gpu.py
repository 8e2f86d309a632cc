"""Optimizer steps and whole SVI steps on a GPU: pyro.optim, torch, pyroopt.

    python -m benchmarks.gpu                      # CUDA, full sizes (< 6 min on an H200)
    python -m benchmarks.gpu --device cpu --quick # a smoke run anywhere

Optimizer step, for 1000 x 10, 100 x 1000 and 10 x 10M float32 parameters (``--quick``:
10 x 10k for the last), per algorithm:

* ``pyro.optim``: pyro's factory (one torch optimizer per parameter),
* ``torch``: one torch optimizer over all parameters, ``fused=True`` where torch has a
  fused kernel for the algorithm (Adam, AdamW, SGD, Adagrad), else ``foreach=True``,
* ``pyroopt``: pyroopt's factory,
* ``flat``: the limit, the same algorithm on one flat tensor holding every element
  (Adam: ``torch._fused_adam_`` called directly).

SVI step of a 200- and a 2000-parameter model (AutoNormal over 100/1000 small sites; a
PyroModule sum of 50/500 two-layer MLPs), with pyro.optim, pyroopt and no optimizer step
(``none``: the same step, loss and gradients only).

Times are medians over repeats, each repeat timed with CUDA events (CPU: perf_counter)
between ``torch.cuda.synchronize()`` calls. Writes ``benchmarks/results/gpu.json`` (or
``--out``) and prints a table with the goals:

* 1000 x 10 Adam: pyroopt at least 100x faster than pyro.optim, within 3x of ``flat``;
* SVI step of the 2000-parameter models: at least 2x faster with pyroopt than with
  pyro.optim, end to end.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule

import pyroopt

ALGORITHMS = {
    "Adam": {"lr": 1e-3},
    "AdamW": {"lr": 1e-3},
    "SGD": {"lr": 1e-3, "momentum": 0.9},
    "RMSprop": {"lr": 1e-3},
    "Adagrad": {"lr": 1e-3},
}
FUSED = {"Adam", "AdamW", "SGD", "Adagrad"}


class Clock:
    """Median seconds per call of ``fn`` over ``repeats`` timed runs of ``inner`` calls."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(
        self, fn: Callable[[], object], repeats: int, inner: int, warmup: int = 2
    ) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(repeats):
            if self.cuda:
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                for _ in range(inner):
                    fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3 / inner)
            else:
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                times.append((time.perf_counter() - t0) / inner)
        return statistics.median(times)


# -- optimizer steps ----------------------------------------------------------------------
def _params(count: int, size: int, device: torch.device) -> list[torch.Tensor]:
    pyro.clear_param_store()
    gen = torch.Generator(device="cpu").manual_seed(0)
    params = []
    for i in range(count):
        init = torch.randn(size, generator=gen).to(device)
        p = pyro.param(f"p{i}", init).unconstrained()
        p.grad = (torch.randn(size, generator=gen) * 1e-2).to(device)
        params.append(p)
    return params


def _flat_step(name: str, args: dict, numel: int, device: torch.device) -> Callable[[], None]:
    p = torch.zeros(numel, device=device, requires_grad=True)
    p.grad = torch.full_like(p, 1e-2)
    if name == "Adam":
        m, v = torch.zeros_like(p), torch.zeros_like(p)
        step = torch.zeros((), device=device)

        def fused_adam() -> None:
            step.add_(1)
            with torch.no_grad():
                torch._fused_adam_(
                    [p], [p.grad], [m], [v], [], [step], lr=args["lr"], beta1=0.9,
                    beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False,
                )  # fmt: skip

        return fused_adam
    return _torch_step(name, args, [p])


def _torch_step(name: str, args: dict, params: list[torch.Tensor]) -> Callable[[], None]:
    choice = {"fused": True} if name in FUSED else {"foreach": True}
    try:
        optimizer = getattr(torch.optim, name)(params, **args, **choice)
        optimizer.step()
    except (RuntimeError, ValueError):  # no fused kernel for this device
        optimizer = getattr(torch.optim, name)(params, **args, foreach=True)
    return optimizer.step


def optimizer_steps(device: torch.device, quick: bool, clock: Clock) -> list[dict]:
    sizes = [(1000, 10), (100, 1000), (10, 10_000 if quick else 10_000_000)]
    algorithms = ["Adam", "SGD"] if quick else list(ALGORITHMS)
    rows = []
    for count, size in sizes:
        big = size >= 1_000_000
        for name in algorithms:
            args = ALGORITHMS[name]
            row = {"shape": f"{count} x {size}", "algorithm": name, "seconds": {}}
            for method in ("pyro.optim", "torch", "pyroopt", "flat"):
                params = _params(count, size, device)
                if method == "pyro.optim":
                    optim = getattr(pyro.optim, name)(dict(args))
                    fn = lambda o=optim, ps=params: o(ps)  # noqa: E731
                elif method == "pyroopt":
                    optim = getattr(pyroopt, name)(dict(args))
                    fn = lambda o=optim, ps=params: o(ps)  # noqa: E731
                elif method == "torch":
                    fn = _torch_step(name, args, params)
                else:
                    fn = _flat_step(name, args, count * size, device)
                slow = method == "pyro.optim" and count >= 1000
                repeats = 3 if quick else (5 if slow or big else 9)
                inner = 2 if slow or quick or big else 10
                row["seconds"][method] = clock(fn, repeats, inner)
                del fn, params
                pyro.clear_param_store()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(_step_line(row), flush=True)
    return rows


def _step_line(row: dict) -> str:
    s = row["seconds"]
    cells = " ".join(f"{s[m] * 1e3:10.3f}" for m in ("pyro.optim", "torch", "pyroopt", "flat"))
    return (
        f"{row['shape']:>14} {row['algorithm']:>8} {cells}"
        f" {s['pyro.optim'] / s['pyroopt']:9.1f}x {s['pyroopt'] / s['flat']:8.2f}x"
    )


# -- SVI steps ----------------------------------------------------------------------------
def autonormal_model(sites: int, data: torch.Tensor) -> tuple[Callable, Callable]:
    def model() -> None:
        total = 0.0
        for i in range(sites):
            z = pyro.sample(f"z{i}", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
            total = total + z.sum()
        pyro.sample("obs", dist.Normal(total / sites, 1.0), obs=data)

    return model, AutoNormal(model)


class MLPs(PyroModule):
    """A sum of ``count`` small two-layer MLPs: ``4 * count`` parameters."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.nets = PyroModule[torch.nn.ModuleList](
            [
                PyroModule[torch.nn.Sequential](
                    PyroModule[torch.nn.Linear](8, 16),
                    PyroModule[torch.nn.Tanh](),
                    PyroModule[torch.nn.Linear](16, 1),
                )
                for _ in range(count)
            ]
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pred = sum(net(x) for net in self.nets).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(pred, 1.0), obs=y)


def mlp_model(count: int, device: torch.device) -> tuple[Callable, Callable]:
    module = MLPs(count).to(device)
    x = torch.randn(256, 8, device=device)
    y = torch.randn(256, device=device)

    def model() -> None:
        module(x, y)

    def guide() -> None:
        pass

    return model, guide


def svi_step_fn(model: Callable, guide: Callable, optim: object | None) -> Callable[[], float]:
    """What ``SVI.step`` does; ``optim=None`` leaves the optimizer step out."""
    elbo = Trace_ELBO()

    def step() -> float:
        with poutine.trace(param_only=True) as capture:
            loss = elbo.loss_and_grads(model, guide)
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        if optim is not None:
            optim(params)
        pyro.infer.util.zero_grads(params)
        return loss

    return step


def svi_steps(device: torch.device, quick: bool, clock: Clock) -> list[dict]:
    rows = []
    sizes = (20, 200) if quick else (200, 2000)  # --quick: a smoke run, not the goal's sizes
    for kind in ("AutoNormal", "PyroModule MLP"):
        for n_params in sizes:
            row = {"model": kind, "params": n_params, "seconds": {}}
            for method in ("pyro.optim", "pyroopt", "none"):
                pyro.clear_param_store()
                pyro.set_rng_seed(0)
                if kind == "AutoNormal":
                    model, guide = autonormal_model(n_params // 2, torch.tensor(0.5, device=device))
                else:
                    model, guide = mlp_model(n_params // 4, device)
                optim = {
                    "pyro.optim": lambda: pyro.optim.Adam({"lr": 1e-3}),
                    "pyroopt": lambda: pyroopt.Adam({"lr": 1e-3}),
                    "none": lambda: None,
                }[method]()
                step = svi_step_fn(model, guide, optim)
                step()  # parameters created
                row["seconds"][method] = clock(step, 3, 1 if quick else 2, warmup=1)
            found = len(pyro.get_param_store())
            row["params_in_store"] = found
            rows.append(row)
            s = row["seconds"]
            print(
                f"{kind:>15} {n_params:>6} ({found:>5}) "
                + " ".join(f"{s[m] * 1e3:10.2f}" for m in ("pyro.optim", "pyroopt", "none"))
                + f" {s['pyro.optim'] / s['pyroopt']:8.2f}x",
                flush=True,
            )
    return rows


# -- goals --------------------------------------------------------------------------------
def goals(steps: list[dict], svi: list[dict]) -> list[dict]:
    out = []
    for row in steps:
        if row["shape"] == "1000 x 10" and row["algorithm"] == "Adam":
            s = row["seconds"]
            vs_pyro = s["pyro.optim"] / s["pyroopt"]
            vs_flat = s["pyroopt"] / s["flat"]
            out.append(
                {
                    "goal": "1000 x 10 Adam: >= 100x pyro.optim",
                    "value": vs_pyro,
                    "met": vs_pyro >= 100,
                }
            )
            out.append(
                {
                    "goal": "1000 x 10 Adam: <= 3x flat fused Adam",
                    "value": vs_flat,
                    "met": vs_flat <= 3,
                }
            )
    for row in svi:
        if row["params"] == 2000:
            s = row["seconds"]
            speedup = s["pyro.optim"] / s["pyroopt"]
            out.append(
                {
                    "goal": f"SVI step, 2000-param {row['model']}: >= 2x pyro.optim",
                    "value": speedup,
                    "met": speedup >= 2,
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--out", default="benchmarks/results/gpu.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: use --device cpu (with --quick for a smoke run)")
    torch.set_default_dtype(torch.float32)
    if device.type == "cpu" and args.quick:
        torch.set_num_threads(1)  # a smoke run on shared CPUs: fewer threads waiting for one
    clock = Clock(device)
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"device {device} ({name}), torch {torch.__version__}, pyro {pyro.__version__}")
    print("optimizer step, ms per step; speedup = pyro.optim/pyroopt, vs flat = pyroopt/flat")
    print(f"{'shape':>14} {'algo':>8} {'pyro.optim':>10} {'torch':>10} {'pyroopt':>10}"
          f" {'flat':>10} {'speedup':>10} {'vs flat':>9}")  # fmt: skip
    steps = optimizer_steps(device, args.quick, clock)
    print("\nSVI step, ms per step; speedup = pyro.optim/pyroopt")
    print(f"{'model':>15} {'params':>6} (store) {'pyro.optim':>10} {'pyroopt':>10} {'none':>10}"
          f" {'speedup':>9}")  # fmt: skip
    with torch.device(device):
        svi = svi_steps(device, args.quick, clock)
    met = goals(steps, svi)
    print("\ngoals" + (" (--quick: sizes differ, not the goal's conditions)" if args.quick else ""))
    for g in met:
        print(f"  {'MET ' if g['met'] else 'MISS'} {g['goal']}: {g['value']:.2f}x")
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.1f} s")
    result = {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "quick": args.quick,
        "seconds_total": elapsed,
        "optimizer_steps": steps,
        "svi_steps": svi,
        "goals": met,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
