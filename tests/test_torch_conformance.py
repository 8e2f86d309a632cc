"""pyroopt.torch under the behaviours torch's own optimizer suite checks.

torch's ``test/test_optim.py`` is driven by ``optim_db`` (shipped in the wheel as
``torch.testing._internal.common_optimizers``): every optimizer class with its sample
configurations, the implementation flags it supports and the schedules it composes
with. This module walks that database for each class pyroopt.torch provides and runs
the behaviours torch checks with pyroopt's class in place of torch's: step hooks
(global and local) fire once per step, sparse gradients, tensor learning rates, fused
and foreach, closures, param groups, schedules, state dicts, and edits of
``optimizer.state`` made in place. Where numbers must match they are compared with
``torch.equal`` against torch's class run side by side.
"""

from __future__ import annotations

import copy
import pickle
import tempfile

import pytest
import torch
from torch.nn import Parameter
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.testing._internal.common_optimizers import (
    _get_optim_inputs_including_global_cliquey_kwargs,
    optim_db,
)

import pyroopt.bucket
import pyroopt.torch as pt
from pyroopt.optimizers import SparseGradientError

#: torch's class -> ours, for every class of pyroopt.torch that reproduces a torch class
OURS = {ref: ours for ours, ref in pt.REFERENCE.items() if ref.__module__.startswith("torch.")}
INFOS = [info for info in optim_db if info.optim_cls in OURS]
SPARSE_INFOS = [info for info in INFOS if info.supports_sparse]


def test_every_torch_class_of_ours_is_in_optim_db():
    assert {info.optim_cls for info in INFOS} == set(OURS)
    assert {info.optim_cls for info in SPARSE_INFOS} == {torch.optim.SGD, torch.optim.Adagrad}


def configs(info, dtype=torch.float32, skip=()):
    """torch's sample configurations with every implementation flag it tests on the CPU,
    and ``foreach`` (which torch's database tests only where foreach kernels exist, but
    which runs on the CPU too)."""
    inputs = _get_optim_inputs_including_global_cliquey_kwargs("cpu", dtype, info, skip=skip)
    out = [(i.desc, i.kwargs) for i in inputs]
    if "foreach" in info.supported_impls and "foreach" not in skip:
        for i in info.optim_inputs_func(device="cpu"):
            for flag in (False, True):
                out.append((f"{i.desc} & foreach={flag}", {**i.kwargs, "foreach": flag}))
    return out


def cases(infos, **kwargs):
    return [
        pytest.param(info, kw, id=f"{info.optim_cls.__name__}-{desc}")
        for info in infos
        for desc, kw in configs(info, **kwargs)
    ]


def fresh(kwargs):
    """A copy of ``kwargs`` with its own tensors (a tensor lr is edited in place)."""
    return copy.deepcopy(kwargs)


def model_pair(dtype):
    """Two equal small models (and a 0-dim parameter each, as torch's suite adds)."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid()
    ).to(dtype)
    twin = copy.deepcopy(model)
    extra = [torch.ones((), dtype=dtype, requires_grad=True) for _ in range(2)]
    return (model, extra[0]), (twin, extra[1])


def train_side_by_side(ours, theirs, models, steps=7, closure=False):
    """torch's ``_compare_between``: a layer frozen for two steps, one step without
    gradients; parameters and state compared bit for bit after every step."""
    inputs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=models[0][1].dtype).reshape(3, 2)
    for i in range(steps):
        for (model, extra), opt in zip(models, (ours, theirs), strict=True):
            if i == 3:
                model[2].requires_grad_(False)
            if i == 5:
                model[2].requires_grad_(True)

            def fwd_bwd(model=model, extra=extra, opt=opt, i=i):
                opt.zero_grad()
                if i != 2:
                    (model(inputs).sum() + extra * 0.5).backward()
                return torch.tensor(float(i))

            if closure:
                assert torch.equal(opt.step(fwd_bwd), torch.tensor(float(i)))
            else:
                fwd_bwd()
                opt.step()
        assert_same_params(models)
        assert_same_state(ours, theirs)


def params_of(pair):
    model, extra = pair
    return [*model.parameters(), extra]


def assert_same_params(models):
    for a, b in zip(params_of(models[0]), params_of(models[1]), strict=True):
        assert torch.equal(a, b), (a, b)


def assert_same_value(a, b, where):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def assert_same_state(ours, theirs):
    a, b = ours.state_dict(), theirs.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert sorted(a["state"]) == sorted(b["state"])
    for index, state in b["state"].items():
        assert sorted(a["state"][index]) == sorted(state), index
        for key, value in state.items():
            assert_same_value(a["state"][index][key], value, (index, key))
    # ``optimizer.state`` itself, read by parameter
    groups = zip(ours.param_groups, theirs.param_groups, strict=True)
    for ga, gb in groups:
        for pa, pb in zip(ga["params"], gb["params"], strict=True):
            assert (pa in ours.state) == (pb in theirs.state)
            sa, sb = ours.state.get(pa, {}), theirs.state.get(pb, {})
            assert sorted(sa) == sorted(sb)
            for key in sb:
                assert_same_value(sa[key], sb[key], key)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("info,kwargs", cases(INFOS, skip=("differentiable",)))
def test_numbers_match_torch(info, kwargs, dtype):
    models = model_pair(dtype)
    ours = OURS[info.optim_cls](params_of(models[0]), **fresh(kwargs))
    theirs = info.optim_cls(params_of(models[1]), **fresh(kwargs))
    train_side_by_side(ours, theirs, models)


@pytest.mark.parametrize("info,kwargs", cases(INFOS, skip=("differentiable",)))
def test_closures_and_schedules_match_torch(info, kwargs):
    """Steps through a closure, with each of torch's schedule combinations for the class
    on two param groups (torch's ``test_param_group_with_lrscheduler_goes_right_direction``)."""
    for schedules in info.scheduler_inputs:
        models = model_pair(torch.float32)
        opts = []
        for cls, pair in ((OURS[info.optim_cls], models[0]), (info.optim_cls, models[1])):
            model, extra = pair
            groups = [{"params": list(model.parameters())}, {"params": [extra], "lr": 0.01}]
            opts.append(cls(groups, **fresh(kwargs)))
        scheds = [[make(opt) for make in schedules] for opt in opts]
        for _ in range(3):
            train_side_by_side(*opts, models, steps=2, closure=True)
            for opt_scheds in scheds:
                for sched in opt_scheds:
                    sched.step(1.0) if isinstance(sched, ReduceLROnPlateau) else sched.step()


@pytest.mark.parametrize("info,kwargs", cases(INFOS))
def test_global_and_local_step_hooks_fire_once_per_step(info, kwargs):
    """torch's ``test_step_all_hooks``: an optimizer that runs a torch optimizer inside
    (``fused=``, ``foreach=``, ``differentiable=``) must not fire global hooks again."""
    data = []
    params = [torch.tensor([1.0, 1.0])]
    ours = OURS[info.optim_cls](params, **fresh(kwargs))
    other = torch.optim.SGD(params)
    handles = [
        register_optimizer_step_pre_hook(lambda *_: data.append(0)),
        register_optimizer_step_post_hook(lambda *_: data.append(5)),
    ]
    for opt in (ours, other):
        handles.append(opt.register_step_pre_hook(lambda *_: data.append(1)))
        handles.append(opt.register_step_post_hook(lambda *_: data.append(2)))
    try:
        ours.step()
        assert data == [0, 1, 2, 5]
        other.step()
        ours.step()
        assert data == [0, 1, 2, 5] * 3
        params[0].grad = torch.ones(2)
        ours.step()  # with a gradient: an inner optimizer does step now
        assert data == [0, 1, 2, 5] * 4
    finally:
        for handle in handles:
            handle.remove()
    ours.step()
    assert data == [0, 1, 2, 5] * 4


def rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def sparse_rosenbrock_grad(x, w):
    """torch's uncoalesced sparse gradient of one coordinate of ``rosenbrock``."""
    with torch.no_grad():
        gx = -400 * x[0] * (x[1] - x[0] ** 2) - 2 * (1 - x[0])
        gy = 200 * (x[1] - x[0] ** 2)
        if w:
            i, v = torch.tensor([[0, 0]]), torch.stack([gx / 4.0, gx - gx / 4.0])
        else:
            i, v = torch.tensor([[1, 1]]), torch.stack([gy - gy / 4.0, gy / 4.0])
        return torch.sparse_coo_tensor(i, v, (2,), dtype=x.dtype, check_invariants=True)


# torch's Adagrad builds sparse tensors without saying whether to check them
@pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly disabled")
@pytest.mark.parametrize("with_schedule", [False, True], ids=["plain", "scheduled"])
@pytest.mark.parametrize(
    "info,kwargs", cases(SPARSE_INFOS, dtype=torch.float64, skip=("differentiable", "fused"))
)
def test_sparse_gradients_as_torch(info, kwargs, with_schedule):
    """torch's ``test_rosenbrock_sparse``: SGD and Adagrad take sparse gradients; ours
    steps them as torch's class does, bit for bit, and no internal exception escapes."""
    updates, schedules = info.metadata_for_sparse
    kwargs = {**fresh(kwargs), **updates}
    params = [Parameter(torch.tensor([1.5, 1.5])), Parameter(torch.tensor([1.5, 1.5]))]
    opts = [OURS[info.optim_cls]([params[0]], **kwargs), info.optim_cls([params[1]], **kwargs)]
    scheds = [[make(o) for make in (schedules if with_schedule else [])] for o in opts]
    for i in range(60):
        for p, opt, opt_scheds in zip(params, opts, scheds, strict=True):
            p.grad = sparse_rosenbrock_grad(p, i % 2)
            opt.step()
            for s in opt_scheds:
                s.step(rosenbrock(p.detach())) if isinstance(s, ReduceLROnPlateau) else s.step()
        assert torch.equal(params[0], params[1]), i
    assert_same_state(*opts)


@pytest.mark.parametrize(
    "info", [i for i in INFOS if not i.supports_sparse], ids=lambda i: i.optim_cls.__name__
)
def test_sparse_gradients_where_torch_refuses_them(info):
    """A class without sparse support raises a public error and changes nothing."""
    p = Parameter(torch.ones(2))
    p.grad = torch.ones(2).to_sparse()
    with pytest.raises((RuntimeError, ValueError), match="sparse") as raised:
        OURS[info.optim_cls]([p]).step()
    # a builtin error, or pyroopt's public one, which is also the RuntimeError torch raises
    assert raised.type.__module__ == "builtins" or raised.type is SparseGradientError
    assert issubclass(raised.type, RuntimeError)
    assert torch.equal(p, torch.ones(2))


@pytest.mark.parametrize("info,kwargs", cases(INFOS))
def test_steps_without_gradients_and_with_zero_gradients(info, kwargs):
    """torch's ``test_step_is_noop_when_params_have_no_grad`` / ``_for_zero_grads``
    (weight decay still moves parameters with zero gradients: as torch's class does)."""
    params = [torch.randn(2, 3) for _ in range(2)]
    old = [p.clone() for p in params]
    assert OURS[info.optim_cls](params, **fresh(kwargs)).step(lambda: 1) == 1
    assert all(map(torch.equal, params, old))
    pair = []
    for cls in (OURS[info.optim_cls], info.optim_cls):
        leaf = torch.ones(5, 1, requires_grad=True)
        param = leaf.clone() if kwargs.get("differentiable") else leaf
        if kwargs.get("differentiable"):
            param.retain_grad()
        opt = cls([param], **fresh(kwargs))
        param.grad = torch.zeros_like(param)
        opt.step()
        pair.append(param.detach())
    assert torch.equal(*pair)
    if kwargs.get("weight_decay", 0) == 0 and info.optim_cls is not torch.optim.AdamW:
        assert torch.equal(pair[0], torch.ones(5, 1))


@pytest.mark.parametrize("info,kwargs", cases(INFOS, skip=("differentiable",)))
def test_state_dicts_as_torch(info, kwargs):
    """State dicts: deterministic, loadable by torch's class and from it, from older
    versions (flags missing), with a Python number as ``step``, through ``torch.save``
    with ``weights_only``; deepcopy keeps every public attribute; hooks run."""
    models = model_pair(torch.float32)
    ours = OURS[info.optim_cls](params_of(models[0]), **fresh(kwargs))
    theirs = info.optim_cls(params_of(models[1]), **fresh(kwargs))
    train_side_by_side(ours, theirs, models, steps=3)
    # either way round, and from a state dict of an older torch (flags deleted)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))
    older = copy.deepcopy(ours.state_dict())
    for group in older["param_groups"]:
        for flag in info.not_og_supported_flags:
            group.pop(flag, None)
    for state in older["state"].values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].item()
    for opt in (ours, theirs):
        opt.load_state_dict(copy.deepcopy(older))
    train_side_by_side(ours, theirs, models, steps=3)
    with tempfile.TemporaryFile() as f:
        torch.save(ours.state_dict(), f)
        f.seek(0)
        loaded = torch.load(f, weights_only=True)
    assert_same_loaded(loaded, ours.state_dict())
    public = {k for k in ours.__dict__ if not k.startswith("_")}
    assert {k for k in copy.deepcopy(ours).__dict__ if not k.startswith("_")} == public
    assert_same_state(copy.deepcopy(ours), theirs)
    assert_same_state(pickle.loads(pickle.dumps(ours)), theirs)
    repr(ours)


def assert_same_loaded(a, b):
    assert a["param_groups"] == b["param_groups"]
    for index, state in b["state"].items():
        for key, value in state.items():
            assert_same_value(a["state"][index][key], value, (index, key))


@pytest.mark.parametrize("info", INFOS, ids=lambda i: i.optim_cls.__name__)
def test_state_dict_and_load_hooks(info):
    """torch's state-dict hook tests: hooks may write any key into ``optimizer.state``."""
    param = torch.rand(2, 3, requires_grad=True)
    opt = OURS[info.optim_cls]([param])
    opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("test", 1))
    assert opt.state_dict()["state"]["test"] == 1
    opt = OURS[info.optim_cls]([param])
    state_dict = opt.state_dict()
    opt.register_load_state_dict_pre_hook(
        lambda o, sd: sd["param_groups"][0].__setitem__("lr", 0.002)
    )
    opt.register_load_state_dict_post_hook(lambda o: o.state.__setitem__("ran", True))
    opt.load_state_dict(state_dict)
    assert opt.param_groups[0]["lr"] == 0.002 and opt.state["ran"] is True


# -- optimizer.state: a dict whose tensors are the optimizer's own ------------------------

STATE_CASES = [
    pytest.param(info, kwargs, id=f"{info.optim_cls.__name__}-{desc}")
    for info in INFOS
    for desc, kwargs in [
        ("default", {}),
        *([("foreach", {"foreach": True})] if "foreach" in info.supported_impls else []),
        *([("fused", {"fused": True})] if "fused" in info.supported_impls else []),
    ]
]


def stepped_pair(info, kwargs, steps=2):
    models = model_pair(torch.float32)
    ours = OURS[info.optim_cls](params_of(models[0]), **fresh(kwargs))
    theirs = info.optim_cls(params_of(models[1]), **fresh(kwargs))
    train_side_by_side(ours, theirs, models, steps=steps)
    return models, ours, theirs


def state_pairs(ours, theirs, models):
    """(ours, theirs) state dicts of every parameter that has state."""
    pairs = zip(params_of(models[0]), params_of(models[1]), strict=True)
    return [(ours.state[a], theirs.state[b]) for a, b in pairs if b in theirs.state]


@pytest.mark.parametrize("info,kwargs", STATE_CASES)
def test_state_is_a_dict_of_the_optimizers_own_dicts(info, kwargs):
    models, ours, theirs = stepped_pair(info, kwargs)
    assert isinstance(ours.state, dict)
    p = params_of(models[0])[0]
    held = ours.state[p]
    theirs.state[params_of(models[1])[0]]  # the same lookup (a state without entries)
    assert ours.state[p] is held and ours.state.get(p) is held
    assert dict(ours.state)[p] is held and dict(ours.state.items())[p] is held
    train_side_by_side(ours, theirs, models, steps=2)
    assert ours.state[p] is held  # a held dict follows the steps
    for key, value in theirs.state[params_of(models[1])[0]].items():
        assert_same_value(held[key], value, key)


def edit_in_place(state):
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and key != "step":
            value.mul_(0.5).add_(0.25)
        elif isinstance(value, torch.Tensor):
            value.add_(3)


def edit_by_assignment(state):
    for key, value in list(state.items()):
        if isinstance(value, torch.Tensor):
            state[key] = value.clone() * 0.5 + (3 if key == "step" else 0.25)


def edit_whole_dict(ours_or_theirs, param):
    state = ours_or_theirs.state[param]
    ours_or_theirs.state[param] = {
        k: (v.clone() * 0.5 + 0.25 if isinstance(v, torch.Tensor) and k != "step" else v)
        for k, v in state.items()
    }


@pytest.mark.parametrize("edit", ["in_place", "assignment", "whole_dict", "delete"])
@pytest.mark.parametrize("info,kwargs", STATE_CASES)
def test_edits_of_state_reach_the_next_step(info, kwargs, edit):
    """In-place edits of state tensors, assigned entries, assigned or deleted state
    dicts: the next step uses them, exactly as torch's class does."""
    models, ours, theirs = stepped_pair(info, kwargs)
    for opt, model in ((ours, models[0]), (theirs, models[1])):
        for p in params_of(model)[:3]:
            if p not in opt.state:
                continue
            if edit == "in_place":
                edit_in_place(opt.state[p])
            elif edit == "assignment":
                edit_by_assignment(opt.state[p])
            elif edit == "whole_dict":
                edit_whole_dict(opt, p)
            else:
                del opt.state[p]
    assert_same_state(ours, theirs)
    train_side_by_side(ours, theirs, models, steps=3)


@pytest.mark.parametrize("info,kwargs", STATE_CASES)
def test_state_moved_by_lightning_continues_as_torch(info, kwargs):
    """Lightning moves each state tensor with ``state[key] = tensor.to(device)``."""
    from lightning_fabric.utilities.optimizer import _optimizer_to_device

    models, ours, theirs = stepped_pair(info, kwargs)
    held = [ours.state[p] for p in params_of(models[0]) if p in ours.state]
    _optimizer_to_device(ours, "cpu")
    _optimizer_to_device(theirs, "cpu")
    train_side_by_side(ours, theirs, models, steps=2)
    assert all(ours.state[p] is d for p, d in zip(params_of(models[0]), held, strict=False))


@pytest.mark.parametrize("info", INFOS, ids=lambda i: i.optim_cls.__name__)
def test_state_keys_are_torchs(info):
    """Keys only for parameters with state (or looked up, as in a ``defaultdict``)."""
    ws = [torch.ones(2, requires_grad=True) for _ in range(3)]
    vs = [w.detach().clone().requires_grad_() for w in ws]
    opt, ref = OURS[info.optim_cls](ws, lr=0.1), info.optim_cls(vs, lr=0.1)
    for params, o in ((ws, opt), (vs, ref)):
        assert len(o.state) == (3 if info.optim_cls is torch.optim.Adagrad else 0)
        params[0].grad = torch.ones(2)
        o.step()
        if params[0] in o.state:  # SGD without momentum keeps none
            del o.state[params[0]]
    assert [w in opt.state for w in ws] == [v in ref.state for v in vs]
    for params, o in ((ws, opt), (vs, ref)):
        assert o.state[params[2]] is o.state[params[2]]  # looked up: there, as in a
        assert params[2] in o.state  # defaultdict
        params[1].grad = torch.ones(2)
        o.step()
    assert [w in opt.state for w in ws] == [v in ref.state for v in vs]
    assert_same_state(opt, ref)


# -- pyro's ClippedAdam and AdagradRMSProp ------------------------------------------------


def test_clipped_adam_takes_a_tensor_lr_as_pyros_class_does():
    from pyro.optim.clipped_adam import ClippedAdam as PyroClippedAdam

    ws = [torch.ones(3, requires_grad=True) for _ in range(2)]
    lrs = [torch.tensor(0.01), torch.tensor(0.01)]
    ours, theirs = (
        pt.ClippedAdam([ws[0]], lr=lrs[0], lrd=0.9),
        PyroClippedAdam([ws[1]], lr=lrs[1], lrd=0.9),
    )
    for step in range(5):
        for w, opt in zip(ws, (ours, theirs), strict=True):
            w.grad = torch.full((3,), float(step) - 1.5)
            opt.step()
        assert torch.equal(ws[0], ws[1])
    assert torch.equal(ours.param_groups[0]["lr"], theirs.param_groups[0]["lr"])
    with pytest.raises(ValueError, match="lr"):
        pt.ClippedAdam([ws[0]], lr=torch.tensor([0.1, 0.2]))


# torch's Adagrad builds sparse tensors without saying whether to check them
@pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly disabled")
def test_no_internal_exception_type_is_public():
    """The engine's signal for sparse gradients is caught where it is raised."""
    assert pyroopt.bucket.SparseGradients.__module__ == "pyroopt.bucket"
    p = Parameter(torch.ones(2))
    p.grad = torch.ones(2).to_sparse()
    for cls in (pt.SGD, pt.Adagrad):
        cls([p], lr=0.1).step()  # does not raise SparseGradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_clipped_adam_state_edits_as_pyros_class(dtype):
    """pyro's ClippedAdam keeps an int ``step``: edits of it and of the moments reach the
    next step, as they do in pyro's class."""
    from pyro.optim.clipped_adam import ClippedAdam as PyroClippedAdam

    ws = [torch.ones(3, dtype=dtype, requires_grad=True) for _ in range(2)]
    ours, theirs = pt.ClippedAdam([ws[0]], lr=0.1), PyroClippedAdam([ws[1]], lr=0.1)
    held = ours.state[ws[0]]
    for step in range(6):
        for w, opt in zip(ws, (ours, theirs), strict=True):
            if step == 3:
                opt.state[w]["step"] += 5
                opt.state[w]["exp_avg"].mul_(0.5)
            w.grad = torch.full((3,), float(step) - 1.5, dtype=dtype)
            opt.step()
        assert torch.equal(ws[0], ws[1])
        assert ours.state[ws[0]] is held and held["step"] == theirs.state[ws[1]]["step"]


FUSED = [info for info in INFOS if "fused" in info.supported_impls]


@pytest.mark.parametrize(
    "info,kwargs",
    [
        pytest.param(info, kw, id=f"{info.optim_cls.__name__}-{desc}")
        for info in FUSED
        for desc, kw in configs(info)
        if kw.get("fused")
    ],
)
def test_grad_scaler_with_fused_as_torch(info, kwargs):
    """``torch.amp.GradScaler`` hands a fused optimizer its scale to unscale with: the
    torch optimizer that ours runs inside gets it too (else the update would use the
    scaled gradients), and a skipped step (inf found) is skipped."""
    models = model_pair(torch.float32)
    opts = [
        OURS[info.optim_cls](params_of(models[0]), **fresh(kwargs)),
        info.optim_cls(params_of(models[1]), **fresh(kwargs)),
    ]
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in opts]
    inputs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=torch.float32).reshape(3, 2)
    for step in range(4):
        for (model, extra), opt, scaler in zip(models, opts, scalers, strict=True):
            opt.zero_grad()
            loss = model(inputs).sum() + extra * 0.5
            if step == 2:
                loss = loss * float("inf")  # the scaler skips this step
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        assert_same_params(models)
        assert_same_state(*opts)


def test_grad_scaler_values_refused_where_not_fused():
    w = torch.ones(2, requires_grad=True)
    opt = pt.SGD([{"params": [w], "fused": False}], lr=0.1, fused=True)
    w.grad = torch.ones(2)
    opt.grad_scale, opt.found_inf = torch.ones(()), torch.zeros(())
    with pytest.raises(RuntimeError, match="fused=False"):
        opt.step()
    assert torch.equal(w, torch.ones(2))
