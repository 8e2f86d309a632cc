"""Each tutorial runs end to end in quick mode and writes what it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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


def test_per_parameter_settings_and_clipping(tmp_path):
    stdout = run_tutorial("02_per_parameter_and_clipping.py", tmp_path)
    assert (tmp_path / "02_per_parameter_and_clipping" / "grad_norms.png").stat().st_size > 20_000
    for run in ("per-parameter run", "global-norm run"):
        loss = float(re.search(rf"final loss, {run}: ([\d.]+)", stdout).group(1))
        assert loss < 400  # from ~2000 at the start


def test_newton_and_mixed(tmp_path):
    stdout = run_tutorial("05_newton_and_mixed.py", tmp_path)
    assert (tmp_path / "05_newton_and_mixed" / "newton_vs_adam.png").stat().st_size > 20_000
    newton, adam = (float(d) for d in re.findall(r"distance to the exact MAP ([\d.e+-]+)", stdout))
    assert newton < 0.02 and newton < adam  # Newton gets far closer in the same steps
