"""The wheel and sdist: built, installed outside the tree, and working from there."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHECK = textwrap.dedent(
    """
    import sys, torch, pyro, pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    import pyroopt
    from pyroopt import native
    from pyroopt.native.rprop import rprop_update
    assert pyroopt.__file__.startswith(sys.prefix), (pyroopt.__file__, sys.prefix)

    def model(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(w * x, 1.0).to_event(1), obs=2 * x)

    x = torch.linspace(0, 1, 10)
    optim = pyroopt.Adam({"lr": 0.01})
    svi = SVI(model, AutoNormal(model), optim, Trace_ELBO())
    svi.step(x)
    optim.save(sys.argv[1])
    pyroopt.Adam({"lr": 0.01}).load(sys.argv[1])
    assert native.library() is not None, native.unavailable_reason()
    p, g = [torch.ones(3)], [torch.tensor([1.0, -1.0, 0.0])]
    done = rprop_update(p, g, [torch.zeros(3)], [torch.zeros(3)], [True], lr=0.1,
                        etas=(0.5, 1.2), step_sizes=(1e-6, 50.0), maximize=False)
    assert done, "the native Rprop step did not run"
    assert torch.allclose(p[0], torch.tensor([0.9, 1.1, 1.0])), p
    print("ok", pyroopt.__file__)
    """
)


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_tree(tmp_path):
    dist_dir = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist_dir), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist_dir.glob("pyroopt-*.whl")
    assert list(dist_dir.glob("pyroopt-*.tar.gz"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "pyroopt/native/rprop.c" in names and "pyroopt/native/parallel.h" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    # --system-site-packages reaches the base interpreter's packages only: a path entry
    # (not the .pth files, so not the editable pyroopt) adds this venv's torch and pyro.
    site_dir = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages") and "torch" in os.listdir(p)]
    Path(site_dir, "project-venv.pth").write_text("\n".join(ours) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYROOPT_CACHE_DIR"] = str(tmp_path / "native-cache")  # first use compiles
    pip = [py, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(pip, check=True, env=env, cwd=tmp_path)
    run = subprocess.run(
        [py, "-c", CHECK, str(tmp_path / "optim.pt")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert str(venv) in run.stdout
    shown = subprocess.run(
        [py, "-m", "pip", "show", "-f", "pyroopt"], env=env, capture_output=True, text=True
    ).stdout
    assert "pyroopt/native/rprop.c" in shown
