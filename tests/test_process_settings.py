"""pyroopt leaves the user's process as it found it: thread counts, MKL's dynamic
adjustment, OpenMP's settings and the floating-point environment.

``torch.set_num_threads`` (any count, even the current one) also switches MKL's dynamic
thread adjustment off for the whole process, after which the model's own small MKL
operations open parallel regions and wait for a busy core (Pyro's minipyro ran 1.7 s
with pyro.optim, 5.0 s after one such call). The flag cannot be set back through torch,
so the check runs in a fresh process, where it is still on, and reads it with MKL's own
(unexported) getter found through ``nm``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    r"""
    import ctypes, json, os, platform, subprocess, threading
    import pyro, torch
    import pyroopt
    from pyroopt.native import _entry

    path = _entry.torch_cpu_path()
    lib = ctypes.CDLL(path)
    symbols = {}
    for line in subprocess.run(["nm", path], capture_output=True, text=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] in ("mkl_serv_get_dynamic", "mkl_get_max_threads"):
            symbols[parts[2]] = int(parts[0], 16)
    loaded = ctypes.cast(lib.mkl_get_max_threads, ctypes.c_void_p).value
    base = loaded - symbols["mkl_get_max_threads"]
    mkl_dynamic = ctypes.CFUNCTYPE(ctypes.c_int)(base + symbols["mkl_serv_get_dynamic"])
    libc = ctypes.CDLL(None)

    def fenv():
        # the control part of the floating-point environment: rounding mode, x87 control
        # word, MXCSR's masks, rounding and flush-to-zero/denormals-are-zero bits; its
        # sticky exception flags are raised by any arithmetic and left out
        if platform.machine() != "x86_64":  # the layout read below is x86-64 glibc's
            return [libc.fegetround()]
        env = ctypes.create_string_buffer(64)
        assert libc.fegetenv(env) == 0
        x87_control = int.from_bytes(env.raw[0:2], "little")
        mxcsr = int.from_bytes(env.raw[28:32], "little")
        return [libc.fegetround(), x87_control, mxcsr & ~0x3F]

    def settings():
        return {
            "threads": torch.get_num_threads(),
            "interop": torch.get_num_interop_threads(),
            "omp_max": lib.omp_get_max_threads(),
            "omp_dynamic": lib.omp_get_dynamic(),
            "mkl_max": lib.mkl_get_max_threads(),
            "mkl_dynamic": mkl_dynamic(),
            "fenv": fenv(),
        }

    # another thread that reads the settings while the steps run
    seen, stop = set(), threading.Event()

    def watch():
        while not stop.is_set():
            seen.add((lib.mkl_get_max_threads(), mkl_dynamic(), torch.get_num_threads()))

    before = settings()
    watcher = threading.Thread(target=watch)
    watcher.start()
    changed = []
    factories = {
        "SGD": (pyroopt.SGD, {"lr": 0.1, "momentum": 0.9}),
        "Adam": (pyroopt.Adam, {"lr": 0.1}),
        "AdamW": (pyroopt.AdamW, {"lr": 0.1}),
        "RMSprop": (pyroopt.RMSprop, {"lr": 0.1, "centered": True}),
        "Rprop": (pyroopt.Rprop, {"lr": 0.1}),
        "Adagrad": (pyroopt.Adagrad, {"lr": 0.1}),
        "ClippedAdam": (pyroopt.ClippedAdam, {"lr": 0.1, "lrd": 0.99}),
        "AdagradRMSProp": (pyroopt.AdagradRMSProp, {"eta": 0.1}),
        "NAdam": (pyroopt.NAdam, {"lr": 0.1}),
    }
    # below and above every size threshold of the engine and the native loops
    shapes = {
        "3 x 10": [(10,)] * 3,
        "20 x 3000": [(3000,)] * 20,
        "1 x 70000": [(70000,)],
        "2 x 300000": [(300000,)] * 2,
        "1 x 1100000": [(1100000,)],
    }
    for dtype in (torch.float32, torch.float16):
        for rule, (factory, args) in factories.items():
            for label, sizes in shapes.items():
                pyro.clear_param_store()
                params = [
                    pyro.param(f"p{i}", torch.ones(s, dtype=dtype)).unconstrained()
                    for i, s in enumerate(sizes)
                ]
                optim = factory(dict(args))
                for step in range(3):
                    for p in params:
                        p.grad = torch.full_like(p, 0.5 - step)
                    optim(params)
                    now = settings()
                    if now != before:
                        changed.append([rule, label, str(dtype), now])
    stop.set()
    watcher.join()
    expected = (before["mkl_max"], before["mkl_dynamic"], before["threads"])
    print(json.dumps({"before": before, "changed": changed[:5], "n_changed": len(changed),
                      "other_thread_saw": sorted(seen), "expected": expected}))
    """
)


@pytest.mark.slow
def test_no_process_wide_setting_changes_across_every_rule_and_size():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # a fresh process with MKL: dynamic adjustment is on (else this test proves nothing)
    assert result["before"]["mkl_dynamic"] == 1
    assert result["before"]["threads"] > 1, "needs at least 2 intra-op threads"
    assert result["n_changed"] == 0, result["changed"]
    assert result["other_thread_saw"] == [list(result["expected"])]


FIRST_STEPS = textwrap.dedent(
    """
    import sys
    import pyro, torch
    import pyroopt
    from pyroopt.native import selfcheck
    for factory, args in [
        (pyroopt.Adam, {"lr": 0.1}),
        (pyroopt.SGD, {"lr": 0.1, "momentum": 0.9}),
        (pyroopt.ClippedAdam, {"lr": 0.1, "lrd": 0.99}),
        (pyroopt.RMSprop, {"lr": 0.1, "centered": True}),
    ]:
        pyro.clear_param_store()
        x = pyro.param("x", torch.ones(3)).unconstrained()
        optim = factory(args)
        for _ in range(2):
            x.grad = torch.ones(3)
            optim([x])
    print("torch._dynamo" in sys.modules, bool(selfcheck.CHECK_SECONDS))
    """
)


def test_a_first_step_does_not_import_torch_dynamo():
    """Building a torch optimizer imports ``torch._dynamo`` (seconds, at a program's
    first step); the rules pyroopt steps itself need none. (Where the self-check had
    to run in this process, it builds torch's optimizers as its reference.)"""
    done = subprocess.run(
        [sys.executable, "-c", FIRST_STEPS], capture_output=True, text=True, check=True
    )
    dynamo, checked = done.stdout.split()
    assert dynamo == "False" or checked == "True", done.stdout


RULE_ARGS = [
    ("Adam", {"lr": 0.1}),
    ("Adam", {"lr": 0.1, "betas": (0.8, 0.9), "amsgrad": True, "weight_decay": 0.1}),
    ("Adam", {"lr": torch.tensor(0.1)}),
    ("AdamW", {"lr": 0.1, "maximize": True}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("RMSprop", {"lr": 0.1, "centered": True}),
    ("Rprop", {"lr": 0.1, "etas": (0.4, 1.3)}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.1}),
    ("ClippedAdam", {"lr": 0.1, "lrd": 0.99}),
    ("AdagradRMSProp", {"eta": 0.3}),
]


@pytest.mark.parametrize("name,args", RULE_ARGS, ids=[n for n, _ in RULE_ARGS])
def test_hyperparameters_read_without_an_optimizer_are_its_groups(name, args):
    from pyroopt.engine import full_group
    from pyroopt.registry import RULES
    from pyroopt.torch_bucket import hyperparameters

    p = torch.zeros(3, requires_grad=True)
    classes = [c for c in RULES if c.__name__ == name]
    assert classes
    for constructor in classes:
        expected = hyperparameters(constructor([p], **args))
        got = full_group(constructor, args, p)
        assert got.keys() == expected.keys()
        assert all(got[k] is expected[k] or got[k] == expected[k] for k in got), constructor


@pytest.mark.parametrize(
    "args", [{"lr": -1.0}, {"lr": 0.1, "betas": (1.5, 0.9)}, {"lr": 0.1, "eps": -1.0}]
)
def test_bad_hyperparameters_raise_torchs_own_error(args):
    from pyroopt.engine import full_group

    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError) as torchs:
        torch.optim.Adam([p], **args)
    with pytest.raises(ValueError, match=re.escape(str(torchs.value))):
        full_group(torch.optim.Adam, args, p)
