"""Distributed SVI steps at 2 workers: pyro.optim's HorovodOptimizer against pyroopt's.

Launches :mod:`benchmarks.distributed_job` under ``horovodrun`` (pyro.optim's and
pyroopt's HorovodOptimizer, and SVI with no optimizer step) and under ``torchrun``
(pyroopt's DistributedOptimizer, and SVI with no optimizer step), on three models (see
the job), and reports each variant's median time per SVI step and collectives per
steady step. The two launches are separate processes with their own baseline: the
``optimizer ms`` column subtracts the no-step time of the same launch.

Run alone: ``python -m benchmarks.distributed [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

JOB = Path(__file__).with_name("distributed_job.py")
BIN = Path(sys.executable).parent
TIMEOUT_S = 900
BASELINE = "no optimizer step"
REFERENCE = "pyro.optim HorovodOptimizer"
MODELS = {
    "autonormal50": "25 vector sites, AutoNormal guide (50 params), Adam",
    "regression24": "Bayesian regression, 12 weight blocks, hand-written guide (24 params), Adam",
    "mlp24": "10-layer net as pyro.param point estimates + 2 latent sites, hand-written guide "
    "(24 params), Adam",
}


@dataclass(frozen=True)
class DistributedRow:
    """One variant of the 2-worker SVI job on one model."""

    model: str
    variant: str
    launcher: str
    ms_per_step: float
    collectives: int
    params: int
    repeats: int
    rounds_ms: tuple[float, ...]  # each round's ms per step, of which ms_per_step is the median


def _launch(command: list[str], out: Path, launcher: str) -> list[DistributedRow]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[:3])} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    data: dict[str, dict[str, dict[str, Any]]] = json.loads(out.read_text())
    return [
        DistributedRow(
            model,
            variant,
            launcher,
            float(v["ms_per_step"]),
            int(v["collectives"]),
            int(v["params"]),
            len(v["repeats_ms"]),
            tuple(float(t) for t in v["repeats_ms"]),
        )
        for model, variants in data.items()
        for variant, v in variants.items()
    ]


def run_distributed(repeats: int = 7) -> list[DistributedRow]:
    """Both launches, all variants on both models, in table order."""
    with tempfile.TemporaryDirectory() as tmp:
        hvd_out, torch_out = Path(tmp) / "horovod.json", Path(tmp) / "torch.json"
        hvd_cmd = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo"]
        hvd_cmd += [sys.executable, str(JOB), "horovod", str(hvd_out), str(repeats)]
        torch_cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
        torch_cmd += [str(JOB), "torch", str(torch_out), str(repeats)]
        rows = _launch(hvd_cmd, hvd_out, "horovodrun")
        rows += _launch(torch_cmd, torch_out, "torchrun")
    order = {m: i for i, m in enumerate(MODELS)}
    return sorted(rows, key=lambda r: order.get(r.model, len(order)))  # stable


def table(rows: Sequence[DistributedRow]) -> str:
    """The rows as text, one block per model, with ratios to pyro.optim's.

    ``optimizer ms`` is the step minus SVI's own work (the no-step row of the same
    launch): the reduction and the update, which is what the optimizer controls.
    """
    lines = []
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        floors = {r.launcher: r.ms_per_step for r in mine if r.variant.startswith(BASELINE)}
        ref = next(r for r in mine if r.variant == REFERENCE)
        base, base_part = ref.ms_per_step, ref.ms_per_step - floors[ref.launcher]
        lines += [
            f"{model}: {MODELS.get(model, '')} ({mine[0].params} params, "
            f"median of {mine[0].repeats} rounds)",
            f"  {'variant':32s} {'ms per SVI step':>15s} {'(rounds: min-max)':>18s} "
            f"{'optimizer ms':>13s} {'pyro.optim/this':>16s} {'(optimizer part)':>17s} "
            f"{'collectives/step':>17s}",
            "  " + "-" * 134,
        ]
        for r in mine:
            spread = f"{min(r.rounds_ms):.1f}-{max(r.rounds_ms):.1f}" if r.rounds_ms else ""
            if r.variant.startswith(BASELINE):
                lines.append(f"  {r.variant:32s} {r.ms_per_step:15.2f} {spread:>18s}")
                continue
            part = r.ms_per_step - floors[r.launcher]
            # a part at or below the baseline is noise: no ratio can be read from it
            part_ratio = f"{base_part / part:.2f}x" if part > 0 and base_part > 0 else "noise"
            lines.append(
                f"  {r.variant:32s} {r.ms_per_step:15.2f} {spread:>18s} {part:13.2f} "
                f"{base / r.ms_per_step:15.2f}x {part_ratio:>17s} {r.collectives:17d}"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the distributed benchmark alone and print its table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed")
    parser.add_argument("--repeats", type=int, default=7, help="rounds (median is kept)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    rows = run_distributed(args.repeats)
    print("Distributed SVI step, 2 workers:")
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
