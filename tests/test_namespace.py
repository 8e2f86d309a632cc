"""Every name of pyro.optim is in pyroopt, and pyroopt's objects pass pyro's isinstance checks.

Code that checks ``isinstance(x, pyro.optim.PyroLRScheduler)`` (or rebinds
``pyro.optim.PyroOptim``) must treat ``import pyroopt as optim`` exactly as
``import pyro.optim as optim``.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import threading
import time
import types

import pyro
import pyro.optim
import pyro.optim.multi
import pytest
import torch

import pyroopt

#: ``pyro`` is bound in pyro.optim's namespace only because its ``__init__`` runs
#: ``import pyro.optim.multi``: the pyro package itself, not part of the optim API
NOT_API = {"pyro"}

PYRO_NAMES = sorted(
    name
    for name in dir(pyro.optim)
    if not (name.startswith("__") and name.endswith("__")) and name not in NOT_API
)

#: the pyro.optim classes code checks with isinstance, and pyroopt's counterparts
CLASSES = {
    pyro.optim.PyroOptim: pyroopt.PyroOptim,
    pyro.optim.PyroLRScheduler: pyroopt.PyroLRScheduler,
    pyro.optim.HorovodOptimizer: pyroopt.HorovodOptimizer,
}


def test_every_name_of_pyro_optim_is_in_pyroopt():
    assert "_LRScheduler" in PYRO_NAMES
    missing = [name for name in PYRO_NAMES if not hasattr(pyroopt, name)]
    assert missing == []
    assert pyroopt.pytorch_optims == pyro.optim.pytorch_optims
    assert set(pyro.optim.__all__) <= set(pyroopt.__all__)


#: pyroopt.optim is pyroopt's module of PyroOptim (tested below)
OWN_MODULES = {"optim"}


def test_optim_module_holds_the_public_names_of_pyros():
    """``from pyro.optim.optim import ClippedAdam`` -> ``from pyroopt.optim import
    ClippedAdam``: the functions and classes pyro.optim.optim defines, pyroopt's ones."""
    import pyro.optim.optim as theirs

    import pyroopt.optim as ours

    defined_there = [
        n
        for n, obj in vars(theirs).items()
        if n[0] != "_"
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == theirs.__name__
    ]
    assert {"PyroOptim", "ClippedAdam", "AdagradRMSProp", "DCTAdam", "is_scheduler"} <= set(
        defined_there
    )
    assert [n for n in defined_there if not hasattr(ours, n)] == []
    for name in ("ClippedAdam", "AdagradRMSProp", "DCTAdam", "is_scheduler"):
        assert getattr(ours, name) is getattr(pyroopt, name)
    with pytest.raises(AttributeError, match="no attribute 'Adamm'"):
        ours.Adamm  # noqa: B018


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in PYRO_NAMES
        if isinstance(getattr(pyro.optim, n), types.ModuleType) and n not in OWN_MODULES
    ],
)
def test_each_submodule_holds_pyros_public_names(name):
    """``optim.clipped_adam.ClippedAdam`` and the like: the same names, pyroopt's objects."""
    theirs, ours = getattr(pyro.optim, name), getattr(pyroopt, name)
    assert isinstance(ours, types.ModuleType)
    exported = getattr(theirs, "__all__", None)
    public = exported if exported is not None else [n for n in vars(theirs) if n[0] != "_"]
    defined_there = [
        n
        for n in public
        if getattr(getattr(theirs, n), "__module__", theirs.__name__) == theirs.__name__
        and not isinstance(getattr(theirs, n), types.ModuleType)
    ]
    assert [n for n in defined_there if not hasattr(ours, n)] == []


def test_pyroopt_classes_derive_from_pyros():
    for theirs, ours in CLASSES.items():
        assert issubclass(ours, theirs), ours
        assert issubclass(ours, pyroopt.PyroOptim), ours
    assert issubclass(pyroopt.DistributedOptimizer, pyroopt.PyroOptim)


def factory_args(name):
    """Arguments each factory takes (objects are built lazily: these are enough)."""
    pyro_factory, ours = getattr(pyro.optim, name), getattr(pyroopt, name)
    scheduler = ours in pyroopt.factories.FACTORY_CLASSES
    if not scheduler:
        return pyro_factory, ours, {"lr": 0.01}
    args = {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.01}}
    if name in ("SequentialLR", "ChainedScheduler"):
        theirs = {**args, "schedulers": []}
        return pyro_factory, ours, (theirs, {**args, "schedulers": [(pyroopt.ConstantLR, {})]})
    return pyro_factory, ours, args


FACTORIES = [
    n
    for n in PYRO_NAMES
    if inspect.isfunction(getattr(pyro.optim, n)) and n not in ("PyroOptim", "PyroLRScheduler")
]


@pytest.mark.parametrize("name", FACTORIES)
def test_each_factory_builds_what_passes_pyros_isinstance_checks(name):
    pyro_factory, ours, args = factory_args(name)
    theirs_args, ours_args = args if isinstance(args, tuple) else (args, args)
    theirs_obj, ours_obj = pyro_factory(dict(theirs_args)), ours(dict(ours_args))
    for cls in (*CLASSES, *CLASSES.values()):
        if cls in CLASSES.values():  # pyroopt's: what pyro's object is, ours is
            pyro_cls = next(k for k, v in CLASSES.items() if v is cls)
            assert isinstance(ours_obj, cls) == isinstance(theirs_obj, pyro_cls), (name, cls)
        else:
            assert isinstance(ours_obj, cls) == isinstance(theirs_obj, cls), (name, cls)


def test_rebinding_pyro_optim_pyrooptim_sees_pyroopt():
    """Code that rebinds ``pyro.optim.PyroOptim`` to a subclass check still sees ours."""
    sched = pyroopt.ExponentialLR(
        {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}, "gamma": 0.9}
    )
    assert isinstance(sched, pyro.optim.PyroLRScheduler)
    assert isinstance(sched, pyro.optim.lr_scheduler.PyroLRScheduler)
    assert isinstance(pyroopt.Adam({"lr": 0.1}), pyro.optim.optim.PyroOptim)


WRAPPERS = r"""
import json
import pyro.optim
import pyro
import torch
import torch.distributed as dist
import pyroopt

if "{backend}" == "horovod":
    import horovod.torch as hvd

    hvd.init()
    make = pyroopt.HorovodOptimizer
else:
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
    make = pyroopt.DistributedOptimizer
out = {{}}
for name in ("{backend}",):
    for kind, inner in (
        ("optim", pyroopt.Adam({{"lr": 0.1}})),
        ("sched", pyroopt.ExponentialLR(
            {{"optimizer": torch.optim.Adam, "optim_args": {{"lr": 0.1}}, "gamma": 0.5}})),
    ):
        pyro.clear_param_store()
        wrapper = make(inner)
        x = pyro.param("x", torch.ones(2)).unconstrained()
        x.grad = torch.ones(2)
        wrapper([x])
        if kind == "sched":
            wrapper.step()
        out[name + "-" + kind] = {{
            "pyro.optim.PyroOptim": isinstance(wrapper, pyro.optim.PyroOptim),
            "pyro.optim.HorovodOptimizer": isinstance(wrapper, pyro.optim.HorovodOptimizer),
            "pyroopt.PyroOptim": isinstance(wrapper, pyroopt.PyroOptim),
            # what the wrapper does not define comes from the wrapped optimizer
            "learning_rates": wrapper.learning_rates(),
            "inner_learning_rates": inner.learning_rates(),
            "view_is_inner": type(wrapper.optim_objs[x]) is type(inner.optim_objs[x]),
        }}
if dist.is_initialized():
    dist.destroy_process_group()
print(json.dumps(out))
"""


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("backend", ["horovod", "torch"])
def test_distributed_wrappers_are_pyrooptims_that_delegate(backend):
    """In a process of its own (horovod or torch.distributed, one worker); horovod is a
    dependency ``make install`` installs, so a missing one fails here."""
    script = WRAPPERS.format(port=free_port(), backend=backend)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name, seen in out.items():
        assert seen["pyro.optim.PyroOptim"] and seen["pyroopt.PyroOptim"], name
        assert seen["pyro.optim.HorovodOptimizer"] == name.startswith("horovod"), name
        assert seen["learning_rates"] == seen["inner_learning_rates"], name
        assert seen["view_is_inner"], name
    assert out[f"{backend}-sched"]["learning_rates"] == {"x": 0.05}


# -- PyroLRScheduler.step: under the optimizer's one lock, all schedules or none ----------


def scheduler(name, **kwargs):
    return getattr(pyroopt, name)(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}, **kwargs}
    )


def new_param(i):
    x = pyro.param(f"x{i}", torch.ones(2)).unconstrained()
    x.grad = torch.ones(2)
    return x


def slow_decay(epoch):
    time.sleep(0.0005)  # lets the other thread run in the middle of a step
    return 0.9**epoch


def test_scheduler_step_from_another_thread_waits_for_the_lock():
    """A thread stepping the schedules while another discovers parameters (each one a
    new schedule) used to fail with "dictionary changed size during iteration"."""
    sched = scheduler("LambdaLR", lr_lambda=slow_decay)
    errors = []
    epochs = 15

    def step_epochs():
        try:
            for _ in range(epochs):
                sched.step()
        except Exception as e:  # reported below
            errors.append(e)

    thread = threading.Thread(target=step_epochs)
    params = [new_param(0)]
    sched(list(params))
    thread.start()
    for i in range(1, 60):
        params.append(new_param(i))
        sched(list(params))
    thread.join()
    assert errors == []
    assert sched._schedules.epoch == epochs
    # each schedule ran from the epoch its parameter appeared in, not beyond the last
    assert all(0 <= s.last_epoch <= epochs for s in sched._schedules.by_bucket.values())
    assert len(sched.learning_rates()) == len(params)


def refuse_epoch_one(epoch):
    if epoch == 1:
        raise ValueError("this schedule refuses epoch 1")
    return 0.5**epoch


def test_scheduler_step_is_all_or_nothing():
    """A schedule that raises after others advanced: every schedule and learning rate
    goes back to where it was."""
    sched = scheduler("LambdaLR", lr_lambda=refuse_epoch_one)
    sched([new_param(0)])
    (first,) = sched._schedules.by_bucket.values()
    first.last_epoch = 1  # past the refusal
    sched.step()
    sched([new_param(0), new_param(1)])  # a second schedule, at epoch 0: it refuses next
    before = {k: s.state_dict() for k, s in sched._schedules.by_bucket.items()}
    lrs = sched.learning_rates()
    assert len(before) == 2
    with pytest.raises(ValueError, match="refuses epoch 1"):
        sched.step()
    assert sched.learning_rates() == lrs
    for key, s in sched._schedules.by_bucket.items():
        assert s.state_dict() == before[key]
    assert sched._schedules.epoch == 1


@pytest.mark.parametrize(
    "args,kwargs",
    [((), {}), (("loss",), {}), ((None,), {}), ((torch.ones(2),), {}), ((), {"metric": 1.0})],
    ids=["missing", "a string", "None", "two elements", "misnamed"],
)
def test_plateau_metric_is_checked_before_any_schedule_moves(args, kwargs):
    sched = scheduler("ReduceLROnPlateau", patience=0)
    sched([new_param(0)])
    sched.step(1.0)
    state = [s.state_dict() for s in sched._schedules.by_bucket.values()]
    with pytest.raises(TypeError, match=r"ReduceLROnPlateau\.step"):
        sched.step(*args, **kwargs)
    assert [s.state_dict() for s in sched._schedules.by_bucket.values()] == state
    sched.step(torch.tensor(2.0))  # a one-element tensor is a metric
    sched.step(metrics=3.0)
    assert sched._schedules.epoch == 3


def test_every_multi_optimizer_is_an_instance_of_pyros_and_runs_none_of_its_code():
    pyro_multi = pyro.optim.multi
    made = {
        "PyroMultiOptimizer": pyroopt.PyroMultiOptimizer(pyroopt.Adam({"lr": 0.1})),
        "TorchMultiOptimizer": pyroopt.TorchMultiOptimizer(torch.optim.Adam, {"lr": 0.1}),
        "MixedMultiOptimizer": pyroopt.MixedMultiOptimizer([(["x"], pyroopt.Newton())]),
        "Newton": pyroopt.Newton(),
    }
    for name, optim in made.items():
        assert isinstance(optim, getattr(pyro_multi, name)), name
        assert isinstance(optim, pyro_multi.MultiOptimizer), name
        for attribute in vars(getattr(pyro_multi, name)):
            if callable(getattr(optim, attribute, None)) and not attribute.startswith("__"):
                # pyroopt's own method, found before pyro's in the method order
                assert getattr(type(optim), attribute).__module__ == "pyroopt.multi", (
                    name,
                    attribute,
                )
