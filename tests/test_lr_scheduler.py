"""PyroLRScheduler against pyro.optim's: same schedules per parameter, same numbers."""

from __future__ import annotations

import pyro
import pyro.optim
import pytest
import torch
from programs import Program, fresh_store
from torch.optim import lr_scheduler as torch_schedulers

import pyroopt

TOL = {"rtol": 1e-10, "atol": 1e-12}
EPOCHS = 30
# A metric that improves, stalls, improves and stalls, for ReduceLROnPlateau.
METRIC = [10 - min(e, 4) - max(0, min(e - 12, 3)) for e in range(EPOCHS)]

CASES = [
    ("LambdaLR", torch.optim.Adam, {"lr_lambda": lambda e: 0.95**e}),
    ("MultiplicativeLR", torch.optim.Adam, {"lr_lambda": lambda e: 0.9}),
    ("StepLR", torch.optim.Adam, {"step_size": 5, "gamma": 0.5}),
    ("StepLR", torch.optim.NAdam, {"step_size": 5, "gamma": 0.5}),
    ("MultiStepLR", torch.optim.SGD, {"milestones": [3, 10], "gamma": 0.3}),
    ("ConstantLR", torch.optim.Adam, {"factor": 0.5, "total_iters": 4}),
    ("LinearLR", torch.optim.Adam, {"start_factor": 0.2, "total_iters": 6}),
    ("ExponentialLR", torch.optim.RMSprop, {"gamma": 0.9}),
    ("ExponentialLR", pyroopt.optimizers.ClippedAdam, {"gamma": 0.9}),
    ("PolynomialLR", torch.optim.Adam, {"total_iters": 20, "power": 2.0}),
    ("CosineAnnealingLR", torch.optim.Adam, {"T_max": 10, "eta_min": 0.001}),
    ("CosineAnnealingWarmRestarts", torch.optim.Adam, {"T_0": 5, "T_mult": 2}),
    ("CyclicLR", torch.optim.SGD, {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4}),
    ("OneCycleLR", torch.optim.Adam, {"max_lr": 0.1, "total_steps": 40}),
    ("ReduceLROnPlateau", torch.optim.Adam, {"patience": 2, "factor": 0.5}),
]
OPTIM_ARGS = {
    torch.optim.SGD: {"lr": 0.05, "momentum": 0.9},
    pyroopt.optimizers.ClippedAdam: {"lr": 0.05, "lrd": 0.99},
}


def pyro_optimizer(cls):
    """pyro.optim must run pyro's own ClippedAdam class; the rest are torch's."""
    if cls is pyroopt.optimizers.ClippedAdam:
        return pyro.optim.clipped_adam.ClippedAdam
    return cls


def run_schedule(
    module, name, cls, kwargs, *, epochs=EPOCHS, calls_per_epoch=2, start=0, sched=None
):
    """Train with ``module.<name>`` for ``epochs``; lr and values of every param per epoch."""
    program = Program(appears_at={"late": 7 * calls_per_epoch})
    if sched is None:
        optimizer = cls if module is pyroopt else pyro_optimizer(cls)
        args = {"optimizer": optimizer, "optim_args": dict(OPTIM_ARGS.get(cls, {"lr": 0.05}))}
        sched = getattr(module, name)({**args, **kwargs})
    history = []
    for epoch in range(start, start + epochs):
        for call in range(calls_per_epoch):
            sched(set(program.params_at(epoch * calls_per_epoch + call)))
        if name == "ReduceLROnPlateau":
            sched.step(METRIC[epoch])
        else:
            sched.step()
        history.append(snapshot(sched))
    return sched, history


def snapshot(sched):
    store = pyro.get_param_store()
    lrs = {
        store.param_name(p): obj.optimizer.param_groups[0]["lr"]
        for p, obj in sched.optim_objs.items()
    }
    values = {name: v.detach().clone() for name, v in store.items()}
    return lrs, values


def assert_same_history(expected, actual):
    assert len(expected) == len(actual)
    for epoch, ((e_lr, e_val), (a_lr, a_val)) in enumerate(zip(expected, actual, strict=True)):
        assert a_lr.keys() == e_lr.keys(), epoch
        for name in e_lr:
            assert a_lr[name] == e_lr[name], (name, epoch)
        for name in e_val:
            assert torch.equal(a_val[name], e_val[name]), f"{name}@{epoch}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,cls,kwargs", CASES, ids=[f"{n}-{c.__name__}" for n, c, _ in CASES])
def test_schedule_matches_pyro_optim(name, cls, kwargs, dtype):
    torch.set_default_dtype(dtype)
    fresh_store()
    _, expected = run_schedule(pyro.optim, name, cls, kwargs)
    fresh_store()
    sched, actual = run_schedule(pyroopt, name, cls, kwargs)
    assert_same_history(expected, actual)
    assert sched.get_last_lr() == actual[-1][0]
    # cohorts: one bucket for the parameters of epoch 0, another for 'late'
    assert len(sched._placement.buckets) <= 3


MOMENTUM_CASES = [
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 40}),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,kwargs", MOMENTUM_CASES, ids=[n for n, _ in MOMENTUM_CASES])
def test_a_schedule_that_turns_sgd_momentum_on_matches_pyro_optim(name, kwargs, dtype):
    """SGD made with momentum 0 keeps no buffer; a cycling schedule sets momentum, and
    torch's SGD then clones each gradient into a new buffer on its next step."""
    torch.set_default_dtype(dtype)
    histories = []
    for module in (pyro.optim, pyroopt):
        fresh_store()
        args = {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.05}, **kwargs}
        sched = getattr(module, name)(args)
        histories.append(run_schedule(module, name, torch.optim.SGD, {}, sched=sched)[1])
    assert_same_history(*histories)


def _torch_lrs(make_scheduler, epochs):
    x = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.Adam([x], lr=0.05)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(epochs):
        x.grad = torch.ones(2)
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("composite", ["SequentialLR", "ChainedScheduler"])
@pytest.mark.parametrize("child_spec", ["factory", "class"])
def test_composite_schedules_equal_torch(composite, child_spec):
    linear = pyroopt.LinearLR if child_spec == "factory" else torch_schedulers.LinearLR
    cosine = (
        pyroopt.CosineAnnealingLR if child_spec == "factory" else torch_schedulers.CosineAnnealingLR
    )
    children = [(linear, {"start_factor": 0.1, "total_iters": 5}), (cosine, {"T_max": 20})]
    extra = {"milestones": [5]} if composite == "SequentialLR" else {}

    def make_torch(optimizer):
        built = [
            torch_schedulers.LinearLR(optimizer, start_factor=0.1, total_iters=5),
            torch_schedulers.CosineAnnealingLR(optimizer, T_max=20),
        ]
        if composite == "SequentialLR":
            return torch_schedulers.SequentialLR(optimizer, built, milestones=[5])
        return torch_schedulers.ChainedScheduler(built, optimizer)

    expected = _torch_lrs(make_torch, EPOCHS)
    fresh_store()
    sched = getattr(pyroopt, composite)(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "schedulers": children, **extra}
    )
    program = Program(appears_at={"late": 7})
    lrs, late = [], []
    for epoch in range(EPOCHS):
        sched(program.params_at(epoch))
        sched.step()
        lrs.append(sched.get_last_lr()["a"])
        if epoch >= 7:
            late.append(sched.get_last_lr()["late"])
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert late == pytest.approx(expected[: EPOCHS - 7], rel=1e-12)  # its own schedule from 0


@pytest.mark.parametrize(
    "name,cls,kwargs",
    [c for c in CASES if c[0] in ("StepLR", "OneCycleLR", "ReduceLROnPlateau", "CyclicLR")],
    ids=lambda v: getattr(v, "__name__", None) if isinstance(v, type) else None,
)
@pytest.mark.parametrize("save_with", [pyroopt, pyro.optim], ids=["pyroopt-file", "pyro-file"])
def test_resume_mid_schedule_equals_straight_through(tmp_path, name, cls, kwargs, save_with):
    fresh_store()
    _, straight = run_schedule(pyro.optim, name, cls, kwargs, epochs=16)
    fresh_store()
    first, head = run_schedule(save_with, name, cls, kwargs, epochs=9)
    path = tmp_path / "sched.pt"
    first.save(path)
    args = {"optimizer": cls, "optim_args": dict(OPTIM_ARGS.get(cls, {"lr": 0.05}))}
    second = getattr(pyroopt, name)({**args, **kwargs})
    second.load(path)
    _, tail = run_schedule(pyroopt, name, cls, kwargs, epochs=7, start=9, sched=second)
    assert_same_history(straight, head + tail)


class TestMisuse:
    def test_missing_optimizer_key(self):
        with pytest.raises(ValueError, match=r"lacks \['optimizer'\]"):
            pyroopt.StepLR({"optim_args": {"lr": 0.1}, "step_size": 2})

    def test_unknown_scheduler_kwarg(self):
        with pytest.raises(TypeError, match=r"StepLR does not take \['step'\]; it takes"):
            pyroopt.StepLR({"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}, "step": 2})

    def test_metric_for_a_schedule_without_one(self):
        sched = pyroopt.StepLR(
            {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}, "step_size": 2}
        )
        with pytest.raises(TypeError, match=r"takes no argument \(only ReduceLROnPlateau"):
            sched.step(1.5)

    def test_plateau_needs_its_metric(self):
        sched = pyroopt.ReduceLROnPlateau({"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}})
        with pytest.raises(TypeError, match="needs the metric"):
            sched.step()

    def test_composite_needs_children(self):
        with pytest.raises(ValueError, match=r"needs 'schedulers'"):
            pyroopt.SequentialLR(
                {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}, "milestones": [2]}
            )
        with pytest.raises(TypeError, match="scheduler factory"):
            pyroopt.ChainedScheduler(
                {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}, "schedulers": [(max, {})]}
            )

    def test_user_dict_is_not_consumed(self):
        args = {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}, "gamma": 0.5}
        pyroopt.ExponentialLR(args)
        assert set(args) == {"optimizer", "optim_args", "gamma"}  # pyro.optim pops keys


def test_lr_scheduler_base_factory_matches_pyro():
    """pyro.optim.LRScheduler (torch's base class) has a pyroopt counterpart."""
    from pyroopt.factories import FACTORY_CLASSES

    assert FACTORY_CLASSES[pyroopt.LRScheduler] is torch_schedulers.LRScheduler
    args = {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}}
    sched = pyroopt.LRScheduler(dict(args))
    assert isinstance(sched, pyroopt.PyroLRScheduler)
    # The base class defines no schedule: both raise on the first parameter seen.
    errors = []
    for module in (pyro.optim, pyroopt):
        fresh_store()
        with pytest.raises(NotImplementedError) as info:
            module.LRScheduler(dict(args))(set(Program().params_at(0)))
        errors.append(type(info.value))
    assert errors[0] is errors[1]
