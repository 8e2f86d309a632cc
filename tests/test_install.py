"""The install works: pyroopt imports, and horovod runs two real processes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pyroopt


def test_version_is_exposed():
    assert re.fullmatch(r"\d+\.\d+\.\d+", pyroopt.__version__)


@pytest.mark.distributed
def test_horovodrun_two_process_allreduce(tmp_path):
    horovodrun = shutil.which("horovodrun", path=str(Path(sys.executable).parent))
    assert horovodrun is not None, (
        "horovodrun is not installed next to this python: run make install"
    )
    script = tmp_path / "allreduce.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch
            import horovod.torch as hvd

            hvd.init()
            x = torch.tensor([float(hvd.rank() + 1), 10.0 * (hvd.rank() + 1)])
            total = hvd.allreduce(x, op=hvd.Sum)
            print(f"rank={hvd.rank()} size={hvd.size()} sum={total.tolist()}", flush=True)
            """
        )
    )
    result = subprocess.run(
        [horovodrun, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = re.findall(r"rank=(\d) size=(\d) sum=\[(.*)\]", result.stdout)
    assert sorted(r for r, _, _ in lines) == ["0", "1"], result.stdout
    for _, size, total in lines:
        assert size == "2"
        assert [float(v) for v in total.split(",")] == [3.0, 30.0]
