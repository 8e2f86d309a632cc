"""PyroOptim against pyro.optim: same programs, same trajectories."""

from __future__ import annotations

import inspect
import warnings

import pyro
import pyro.optim
import pyro.optim.clipped_adam
import pytest
import torch
from programs import Program, fresh_store, run
from torch.testing import assert_close

import pyroopt
import pyroopt.optimizers
from pyroopt.rule_bucket import RuleBucket
from pyroopt.torch_bucket import PerParamBucket, TorchBucket

#: sizes that put elements on every vector-body, tail and thread boundary
BOUNDARY_SHAPES = {
    "one": (1,),
    "three": (3,),
    "fifteen": (15,),
    "seventeen": (17,),
    "odd.weight": (17, 61),
    "big": (65537,),
    "late": (1037,),
    "skipped": (),
    "empty": (0,),
}

CASES = [
    ("Adam", {"lr": 0.05}),
    ("Adam", {"lr": 0.05, "amsgrad": True, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.05, "maximize": True, "betas": (0.8, 0.99)}),
    ("Adam", {"lr": 0.05, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("AdamW", {"lr": 0.05}),
    ("SGD", {"lr": 0.05}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "maximize": True}),
    ("RMSprop", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True, "weight_decay": 0.1}),
    ("Rprop", {"lr": 0.01}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01}),
    ("Adadelta", {"lr": 1.0}),
    ("Adamax", {"lr": 0.05}),
    ("ASGD", {"lr": 0.05}),
    ("NAdam", {"lr": 0.05}),
    ("RAdam", {"lr": 0.05}),
    ("ClippedAdam", {"lr": 0.05, "clip_norm": 0.5, "lrd": 0.99}),
    ("AdagradRMSProp", {"eta": 0.5}),
    ("DCTAdam", {"lr": 0.05}),
    # torch's fused kernels, asked for: then the numbers are torch-fused's, as pyro.optim's
    ("Adam", {"lr": 0.05, "fused": True}),
    ("AdamW", {"lr": 0.05, "fused": True, "amsgrad": True}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "fused": True}),
    ("Adagrad", {"lr": 0.1, "fused": True}),
    ("Adam", {"lr": 0.05, "foreach": True}),
]


def both(name, args, clip_args=None, steps=12, program=None):
    """Trajectories of pyro.optim's and pyroopt's factory ``name`` on one program."""
    out = []
    for module in (pyro.optim, pyroopt):
        fresh_store()
        factory = getattr(module, name)
        # pyro.optim's factories for its own optimizers take no clip_args
        extra = () if clip_args is None else (clip_args,)
        out.append(run(lambda f=factory, e=extra: f(args, *e), steps, program))
    return out


def assert_same_trajectory(expected, actual):
    """Bit for bit: every parameter after every step."""
    assert len(expected) == len(actual)
    for step, (e, a) in enumerate(zip(expected, actual, strict=True)):
        assert e.keys() == a.keys(), f"step {step}"
        for name in e:
            assert torch.equal(a[name], e[name]), f"{name}@{step}: {a[name]} vs {e[name]}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,args", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_factory_matches_pyro_optim(name, args, dtype):
    torch.set_default_dtype(dtype)
    program = Program(shapes=BOUNDARY_SHAPES, appears_at={"late": 40})
    expected, actual = both(name, args, steps=100, program=program)
    assert_same_trajectory(expected, actual)


def test_muon_matches_pyro_optim_on_matrices():
    program = Program(shapes={"w1": (4, 3), "w2": (3, 5), "late": (2, 2)}, no_grad_at={})
    expected, actual = both("Muon", {"lr": 0.02}, program=program)
    assert_same_trajectory(expected, actual)


def test_adafactor_matches_pyro_optim():
    # torch's Adafactor divides by numel: it cannot step a zero-size parameter, in either.
    program = Program(shapes={"a": (3,), "w": (2, 3), "late": (4,), "skipped": ()})
    expected, actual = both("Adafactor", {"lr": 0.05}, program=program)
    assert_same_trajectory(expected, actual)


def test_sparse_adam_matches_pyro_optim():
    program = Program(shapes={"emb": (5, 3), "late": (4,)}, no_grad_at={}, sparse=True)
    expected, actual = both("SparseAdam", {"lr": 0.05}, program=program)
    assert_same_trajectory(expected, actual)


def test_every_torch_optimizer_has_a_factory():
    torch_optimizers = {
        n
        for n, cls in vars(torch.optim).items()
        if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)
    } - {"Optimizer", "LBFGS"}
    missing = sorted(n for n in torch_optimizers if not hasattr(pyroopt, n))
    assert not missing
    for n in torch_optimizers:
        optim = getattr(pyroopt, n)({"lr": 0.1})
        assert optim.pt_optim_constructor is getattr(torch.optim, n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_callable_args_and_clipping_per_name(dtype):
    torch.set_default_dtype(dtype)

    def optim_args(name):
        return {"lr": 0.2 if name.startswith("layer") else 0.05, "betas": (0.85, 0.99)}

    def clip_args(module_name, param_name):
        return {"clip_norm": 0.3} if param_name == "a" else {"clip_value": 0.2}

    # pyro.optim's clip_value crashes on a parameter without a gradient: give all one.
    program = Program(no_grad_at={})
    expected, actual = both("Adam", optim_args, clip_args, program=program)
    assert_same_trajectory(expected, actual)


def test_clipping_skips_parameters_without_gradient():
    # pyro.optim crashes here; a parameter without gradient must act as one not passed.
    clip = {"clip_norm": 0.3, "clip_value": 0.2}
    fresh_store()
    with_none = run(lambda: pyroopt.Adam({"lr": 0.1}, clip), 9)
    not_passed = Program(no_grad_at={}, not_passed_at={"skipped": {3, 4, 7}, "a": {2}})
    fresh_store()
    reference = run(lambda: pyro.optim.Adam({"lr": 0.1}, clip), 9, not_passed)
    assert_same_trajectory(reference, with_none)


def test_one_argument_clip_callable_gets_normalized_name():
    seen = []

    def clip_args(name):
        seen.append(name)
        return {"clip_norm": 0.1}

    fresh_store()
    run(lambda: pyroopt.SGD({"lr": 0.1}, clip_args), 2, Program(shapes={"layer$$$weight": (2,)}))
    assert seen == ["layer.weight"]


def test_two_argument_optim_args_matches_without_a_warning_pyro_optim_does_not_give():
    """scvi-tools passes ``(module_name, param_name)`` callables; pyro.optim 1.9.2 takes
    them silently, and a drop-in warns only where pyro.optim warns."""

    def optim_args(module_name, param_name):
        return {"lr": 0.1 if param_name == "a" else 0.01}

    fresh_store()
    expected = run(lambda: pyro.optim.SGD(optim_args), 6)
    fresh_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optim = pyroopt.SGD(optim_args)
    actual = run(lambda: optim, 6)
    assert_same_trajectory(expected, actual)


def test_only_passed_parameters_move():
    fresh_store()
    a = pyro.param("a", torch.zeros(2)).unconstrained()
    b = pyro.param("b", torch.zeros(2)).unconstrained()
    optim = pyroopt.Adam({"lr": 0.1})
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    optim([a, b])
    b_before = b.detach().clone()
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    optim([a])
    assert_close(b.detach(), b_before, rtol=0, atol=0)
    assert optim.get_state()["b"]["state"][0]["step"].item() == 1
    assert optim.get_state()["a"]["state"][0]["step"].item() == 2


class UserAdam(torch.optim.Adam):
    """An optimizer pyroopt knows nothing about: it may change its groups in step."""


@pytest.mark.parametrize(
    "constructor,args,kind",
    [
        (torch.optim.Adam, {"lr": 0.1}, RuleBucket),
        (torch.optim.Adam, {"lr": 0.1, "foreach": True}, TorchBucket),
        (torch.optim.Adam, {"lr": 0.1, "fused": True}, TorchBucket),
        (torch.optim.Adam, {"lr": 0.1, "foreach": False}, TorchBucket),
        (torch.optim.NAdam, {"lr": 0.1}, TorchBucket),
        (pyroopt.optimizers.ClippedAdam, {"lr": 0.1}, RuleBucket),
        (pyro.optim.clipped_adam.ClippedAdam, {"lr": 0.1}, RuleBucket),
        (pyroopt.optimizers.DCTAdam, {"lr": 0.1}, TorchBucket),
        (UserAdam, {"lr": 0.1}, PerParamBucket),
    ],
)
def test_engine_picks_the_bucket_and_honours_user_choice(constructor, args, kind):
    fresh_store()
    optim = pyroopt.PyroOptim(constructor, args)
    run(lambda: optim, 3)
    buckets = {type(s.bucket) for s in optim._placement.table}
    assert buckets == {kind}
    if kind is TorchBucket:
        group = optim._placement.buckets[0].optimizer.param_groups[0]
        for key in ("foreach", "fused"):
            if key in args:
                assert group[key] is args[key]


def test_user_implementation_choice_matches_pyro_optim():
    for args in ({"lr": 0.05, "foreach": True}, {"lr": 0.05, "fused": True}):
        expected, actual = both("Adam", args)
        assert_same_trajectory(expected, actual)


def test_buckets_group_parameters_by_args():
    fresh_store()
    optim = pyroopt.Adam(lambda name: {"lr": 0.1 if name == "a" else 0.2})
    run(lambda: optim, 2)
    assert len(optim._placement.buckets) == 2
    lrs = optim.learning_rates()
    assert lrs["a"] == 0.1 and lrs["layer.weight"] == 0.2


def test_global_norm_clipping_bounds_the_joint_norm():
    fresh_store()
    program = Program(grad_scale=100.0, no_grad_at={})
    optim = pyroopt.SGD({"lr": 1.0}, {"clip_global_norm": 0.5})
    params = program.params_at(0)
    before = {id(p): p.detach().clone() for p in params}
    unclipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]))
    optim(params)
    steps = torch.cat([(before[id(p)] - p.detach()).flatten() for p in params])
    assert_close(torch.linalg.vector_norm(steps), torch.tensor(0.5), rtol=1e-6, atol=0)
    assert_close(optim.global_grad_norm(), unclipped.item(), rtol=1e-12, atol=0)


def test_grad_norms_are_recorded_before_clipping():
    fresh_store()
    program = Program(no_grad_at={})
    optim = pyroopt.Adam({"lr": 0.1}, {"clip_norm": 1e-3})
    params = program.params_at(0)
    expected = {
        pyro.get_param_store().param_name(p): torch.linalg.vector_norm(p.grad).item()
        for p in params
    }
    optim(params)
    assert optim.grad_norms() == pytest.approx(expected, rel=1e-12)


def test_grad_norms_need_tracking():
    optim = pyroopt.Adam({"lr": 0.1})
    with pytest.raises(RuntimeError, match="track_grad_norms"):
        optim.grad_norms()
    fresh_store()
    tracked = pyroopt.PyroOptim(torch.optim.Adam, {"lr": 0.1}, track_grad_norms=True)
    run(lambda: tracked, 1)
    assert set(tracked.grad_norms()) == {"a", "layer.weight", "skipped", "empty"}


def test_optim_objs_views_answer_like_torch_optimizers():
    fresh_store()
    for module in (pyro.optim, pyroopt):
        fresh_store()
        optim = module.Adam({"lr": 0.1})
        run(lambda o=optim: o, 3)
        p = pyro.get_param_store().get_param("a").unconstrained()
        view = optim.optim_objs[p]
        assert view.param_groups[0]["lr"] == 0.1
        assert view.param_groups[0]["params"][0] is p
        assert set(view.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
        assert not pyroopt.is_scheduler(view)
        view.zero_grad()
        assert p.grad is None
    assert len(optim.optim_objs) == 4  # 'late' appears at step 5


def test_accepted_by_svi_svgd_and_csis():
    def model():
        pyro.sample("x", pyro.distributions.Normal(0.0, 1.0))

    def guide():
        pyro.sample("x", pyro.distributions.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

    pyro.infer.SVI(model, guide, pyroopt.Adam({"lr": 0.1}), pyro.infer.Trace_ELBO())
    kernel = pyro.infer.RBFSteinKernel()
    pyro.infer.SVGD(model, kernel, pyroopt.Adam({"lr": 0.1}), num_particles=2, max_plate_nesting=0)
    pyro.infer.CSIS(model, guide, pyroopt.Adam({"lr": 0.1}), num_inference_samples=2)


class TestBadInput:
    def test_optim_args_must_be_dict_or_callable(self):
        with pytest.raises(TypeError, match="optim_args must be a dict"):
            pyroopt.Adam([("lr", 0.1)])

    def test_callable_optim_args_must_return_dict(self):
        fresh_store()
        optim = pyroopt.Adam(lambda name: 0.1)
        params = Program().params_at(0)
        before = [p.detach().clone() for p in params]
        with pytest.raises(TypeError, match=r"optim_args must return a dict.*'a'.*float: 0.1"):
            optim(params)
        for p, b in zip(params, before, strict=True):
            assert_close(p.detach(), b, rtol=0, atol=0)

    def test_unknown_clip_keys(self):
        with pytest.raises(ValueError, match=r"unknown keys \['clip_nrom'\].*allowed"):
            pyroopt.Adam({"lr": 0.1}, {"clip_nrom": 1.0})

    @pytest.mark.parametrize("key", ["clip_norm", "clip_value", "clip_global_norm"])
    def test_negative_clip_values(self, key):
        with pytest.raises(
            ValueError, match=rf"clip_args\['{key}'\] must be a finite number >= 0, got -1"
        ):
            pyroopt.Adam({"lr": 0.1}, {key: -1})

    def test_callable_clip_args_checked_per_parameter(self):
        fresh_store()
        optim = pyroopt.Adam({"lr": 0.1}, lambda name: {"clip_value": -2.0})
        with pytest.raises(ValueError, match=r"clip_args for 'a'\['clip_value'\].*-2.0"):
            optim(Program().params_at(0))

    def test_global_clip_only_in_dict(self):
        fresh_store()
        optim = pyroopt.Adam({"lr": 0.1}, lambda name: {"clip_global_norm": 1.0})
        with pytest.raises(ValueError, match="only accepted in a clip_args dict"):
            optim(Program().params_at(0))

    @pytest.mark.parametrize("params", [torch.zeros(2), 3, [torch.zeros(2), "x"]])
    def test_params_must_be_iterable_of_tensors(self, params):
        with pytest.raises(TypeError, match="params must"):
            pyroopt.Adam({"lr": 0.1})(params)

    def test_non_leaf_and_integer_params(self):
        optim = pyroopt.Adam({"lr": 0.1})
        leaf = torch.zeros(2, requires_grad=True)
        with pytest.raises(ValueError, match="non-leaf"):
            optim([leaf * 2])
        with pytest.raises(TypeError, match="floating point"):
            optim([torch.zeros(2, dtype=torch.long)])

    def test_bad_params_leave_others_untouched(self):
        fresh_store()
        optim = pyroopt.Adam({"lr": 0.1})
        params = Program().params_at(0)
        before = [p.detach().clone() for p in params]
        with pytest.raises(TypeError):
            optim([*params, "not a tensor"])
        for p, b in zip(params, before, strict=True):
            assert_close(p.detach(), b, rtol=0, atol=0)

    def test_negative_lr_names_value(self):
        fresh_store()
        with pytest.raises(ValueError, match=r"-0\.1"):
            pyroopt.Adam({"lr": -0.1})(Program().params_at(0))

    def test_unknown_optim_args_name_what_is_allowed(self):
        fresh_store()
        with pytest.raises(
            TypeError, match=r"Adam does not take \['lrr'\]; it takes \['lr', 'betas'"
        ):
            pyroopt.Adam({"lrr": 0.1})(Program().params_at(0))

    def test_wrong_arity_callable(self):
        with pytest.raises(TypeError, match="takes 3"):
            pyroopt.Adam(lambda a, b, c: {})


def test_no_warnings_on_plain_use():
    fresh_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(lambda: pyroopt.Adam({"lr": 0.1}), 3)


def test_closure_is_passed_to_the_step():
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        return torch.tensor(1.0)

    for name in ("Adam", "NAdam"):  # a pyroopt rule and a torch optimizer
        fresh_store()
        optim = getattr(pyroopt, name)({"lr": 0.1})
        optim(Program().params_at(0), closure)
        assert calls and all(calls)
        calls.clear()
        with pytest.raises(TypeError, match="closure"):
            optim(Program().params_at(1), closure, 3)
