"""Distributed SVI steps at 2 workers: pyro.optim's HorovodOptimizer against pyroopt's.

Launches :mod:`benchmarks.distributed_job` under ``horovodrun`` (pyro.optim's and
pyroopt's HorovodOptimizer) and under ``torchrun`` (pyroopt's DistributedOptimizer),
and reports each variant's median time per SVI step and collectives per step. The two
launches are separate processes, so compare the horovod rows with each other first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

JOB = Path(__file__).with_name("distributed_job.py")
BIN = Path(sys.executable).parent
TIMEOUT_S = 600


@dataclass(frozen=True)
class DistributedRow:
    """One variant of the 2-worker SVI job."""

    variant: str
    ms_per_step: float
    collectives: int
    params: int


def _launch(command: list[str], out: Path) -> dict[str, dict[str, float]]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[:3])} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    data: dict[str, dict[str, float]] = json.loads(out.read_text())
    return data


def run_distributed() -> list[DistributedRow]:
    """Both launches, all variants, in table order."""
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        hvd_out, torch_out = Path(tmp) / "horovod.json", Path(tmp) / "torch.json"
        rows |= _launch(
            [
                str(BIN / "horovodrun"),
                "-np",
                "2",
                "-H",
                "localhost:2",
                "--gloo",
                sys.executable,
                str(JOB),
                "horovod",
                str(hvd_out),
            ],
            hvd_out,
        )
        rows |= _launch(
            [
                str(BIN / "torchrun"),
                "--standalone",
                "--nproc_per_node",
                "2",
                str(JOB),
                "torch",
                str(torch_out),
            ],
            torch_out,
        )
    return [
        DistributedRow(name, v["ms_per_step"], int(v["collectives"]), int(v["params"]))
        for name, v in rows.items()
    ]


def table(rows: list[DistributedRow]) -> str:
    """The rows as text, with speed-ups over pyro.optim's HorovodOptimizer.

    ``optimizer ms`` is the step minus SVI's own work (the ``no optimizer step`` row):
    the reduction and the update, which is what the optimizer controls.
    """
    by_name = {r.variant: r for r in rows}
    base = by_name["pyro.optim HorovodOptimizer"].ms_per_step
    floor = by_name["no optimizer step"].ms_per_step
    lines = [
        f"{'variant':30s} {'ms per SVI step':>16s} {'optimizer ms':>13s} "
        f"{'pyro.optim/this':>16s} {'(optimizer part)':>17s} {'collectives/step':>17s}",
        "-" * 115,
    ]
    for r in rows:
        if r.variant == "no optimizer step":
            lines.append(f"{r.variant:30s} {r.ms_per_step:16.2f}")
            continue
        part = r.ms_per_step - floor
        lines.append(
            f"{r.variant:30s} {r.ms_per_step:16.2f} {part:13.2f} {base / r.ms_per_step:15.2f}x "
            f"{(base - floor) / part if part > 0 else float('nan'):16.2f}x {r.collectives:17d}"
        )
    return "\n".join(lines)
