"""Each tutorial runs end to end in quick mode and writes what it promises."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Each tutorial is a subprocess run of several seconds: `make test-fast` skips them.
pytestmark = pytest.mark.slow

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"


def run_tutorial(name: str, out: Path) -> str:
    env = {**os.environ, "PYROOPT_QUICK": "1", "PYROOPT_OUT": str(out), "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, str(TUTORIALS / name)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_getting_started(tmp_path):
    stdout = run_tutorial("01_getting_started.py", tmp_path)
    folder = tmp_path / "01_getting_started"
    assert (folder / "loss.png").stat().st_size > 10_000
    assert (folder / "optimizer.pt").exists()
    final_loss = float(re.search(r"final loss: ([\d.]+)", stdout).group(1))
    # 200 quick steps bring the loss from ~2000 to ~300 (full run: ~120).
    assert final_loss < 400


def test_lr_schedules(tmp_path):
    stdout = run_tutorial("03_lr_schedules.py", tmp_path)
    assert (tmp_path / "03_lr_schedules" / "schedules.png").stat().st_size > 20_000
    for label in ("StepLR", "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau", "SequentialLR"):
        assert label in stdout
    best = float(re.search(r"best final loss: ([\d.]+)", stdout).group(1))
    # 12 quick epochs: the best schedule gets from ~2000 to ~150 (full run: ~120)
    assert best < 400


def test_checkpoint_resume_retraces_the_curve(tmp_path):
    stdout = run_tutorial("04_checkpoint_resume.py", tmp_path)
    folder = tmp_path / "04_checkpoint_resume"
    assert (folder / "resume.png").stat().st_size > 10_000
    assert (folder / "training.pt").exists()
    assert "killed by signal 9" in stdout
    gap = float(re.search(r"resumed and uninterrupted losses: ([\d.e+-]+)", stdout).group(1))
    assert gap == 0.0
    assert float(re.search(r"final loss: ([\d.]+)", stdout).group(1)) < 400


def number(pattern: str, stdout: str) -> float:
    match = re.search(pattern, stdout)
    assert match is not None, f"{pattern!r} not in:\n{stdout}"
    return float(match.group(1))


def test_per_parameter_and_clipping(tmp_path):
    stdout = run_tutorial("02_per_parameter_and_clipping.py", tmp_path)
    assert (tmp_path / "02_per_parameter_and_clipping" / "grad_norms.png").stat().st_size > 30_000
    # the callable optim_args gave the means and the scales their own learning rates
    assert number(r"AutoNormal\.locs\.weight\s+lr ([\d.]+)", stdout) == 0.05
    assert number(r"AutoNormal\.scales\.weight\s+lr ([\d.]+)", stdout) == 0.02
    # both clipping thresholds were actually reached (early steps have norms ~3000)
    assert number(r"clipped to norm 800: (\d+) of", stdout) > 0
    assert number(r"scaled down to global norm 1000: (\d+) of", stdout) > 0
    assert number(r"optim.global_grad_norm\(\)\) at the last step: ([\d.]+)", stdout) > 0
    # 150 quick steps bring the loss from ~2400 to ~130-150 in both runs
    assert number(r"final loss, per-parameter run: ([\d.]+)", stdout) < 400
    assert number(r"final loss, global-norm run: ([\d.]+)", stdout) < 400


def test_newton_and_mixed(tmp_path):
    stdout = run_tutorial("05_newton_and_mixed.py", tmp_path)
    assert (tmp_path / "05_newton_and_mixed" / "newton_vs_adam.png").stat().st_size > 20_000
    mixed = number(r"Newton for mu \+ Adam for m0 .* distance to the exact MAP ([\d.e+-]+)", stdout)
    adam = number(r"Adam for both .* distance to the exact MAP ([\d.e+-]+)", stdout)
    # 100 quick steps: Newton + Adam ends ~6e-3 from the exact MAP, Adam alone ~5e-2
    assert mixed < 0.02
    assert mixed < adam / 3


@pytest.mark.distributed  # launches horovodrun and torchrun, as tests/test_distributed.py
def test_distributed(tmp_path):
    stdout = run_tutorial("06_distributed.py", tmp_path)
    folder = tmp_path / "06_distributed"
    assert (folder / "distributed.png").stat().st_size > 20_000
    for backend in ("horovod", "torch"):
        result = json.loads((folder / f"{backend}.json").read_text())
        assert result["size"] == 2 and result["rows"] == 250
        # two workers on half the data each reproduce one process on all of it
        diff = number(rf"{backend}: largest difference in final parameters .*: ([\d.e+-]+)", stdout)
        assert diff < 1e-9
    assert number(r"final loss: ([\d.]+)", stdout) < 1500  # from ~2600 in 40 steps
    assert (folder / "elastic.png").stat().st_size > 20_000
    assert "elastic: worlds of [2, 1, 2] workers" in stdout
    assert "elastic: Adam steps per parameter at the end: [40.0]" in stdout


def test_speed_reads_the_committed_results(tmp_path):
    stdout = run_tutorial("07_speed.py", tmp_path)
    assert (tmp_path / "07_speed" / "speedup.png").stat().st_size > 20_000
    results = json.loads((TUTORIALS.parent / "benchmarks/results/results.json").read_text())
    # one table row per optimizer and shape of the file
    rows = re.findall(r"^\S.*\d x [\d,]+\s+\S+\s+\S+\s+(\S+)x$", stdout, re.MULTILINE)
    assert len(rows) == len(results["optimizer_steps"])
    # many small tensors are where pyroopt gains most: over 10x on the committed file
    assert number(r"largest speed-up: ([\d.]+)x", stdout) > 10
    assert number(r"geometric mean speed-up: ([\d.]+)x", stdout) > 1


def test_lightning_elbo(tmp_path):
    pytest.importorskip("pytorch_lightning")
    stdout = run_tutorial("08_lightning_elbo.py", tmp_path)
    assert (tmp_path / "08_lightning_elbo" / "lightning_loss.png").stat().st_size > 10_000
    assert "identical losses: True" in stdout
    assert float(re.search(r"final loss: ([\d.]+)", stdout).group(1)) > 0
