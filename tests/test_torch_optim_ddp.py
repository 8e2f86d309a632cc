"""pyroopt.torch.Adam under DistributedDataParallel: two torchrun workers (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

JOB = Path(__file__).parent / "distributed_jobs" / "ddp_torch_optim.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_matches_torch_adam(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, f"torchrun is not installed next to {sys.executable}"
    cmd = [
        torchrun,
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(JOB),
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        output, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun job hung:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-5000:]
    ranks = [json.loads((tmp_path / f"ddp_r{r}.json").read_text()) for r in (0, 1)]
    for result in ranks:
        assert all(result["equal_each_step"]), result["equal_each_step"]
        assert all(a == b for a, b in result["losses"])
    assert ranks[0]["params"] == ranks[1]["params"]  # DDP kept the replicas in step
