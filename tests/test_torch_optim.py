"""pyroopt.torch: bit for bit what the torch (or pyro) class of the same name computes."""

from __future__ import annotations

import copy
import inspect
import itertools
import pickle

import pytest
import torch

import pyroopt.torch as pt

#: option grids: every combination of each class's options is compared
GRIDS: dict[type, dict[str, list]] = {
    pt.Adam: dict(
        lr=[0.01],
        weight_decay=[0.0, 0.1],
        amsgrad=[False, True],
        maximize=[False, True],
        decoupled_weight_decay=[False, True],
        impl=["default", "foreach", "fused"],
    ),
    pt.AdamW: dict(
        lr=[0.01],
        weight_decay=[0.0, 0.1],
        amsgrad=[False, True],
        maximize=[False, True],
        impl=["default", "foreach", "fused"],
    ),
    pt.SGD: dict(
        lr=[0.01],
        momentum=[0.0, 0.9],
        dampening=[0.0, 0.1],
        nesterov=[False, True],
        weight_decay=[0.0, 0.1],
        maximize=[False, True],
        impl=["default", "foreach", "fused"],
    ),
    pt.RMSprop: dict(
        lr=[0.01],
        alpha=[0.99, 0.9],
        centered=[False, True],
        momentum=[0.0, 0.9],
        weight_decay=[0.0, 0.1],
        maximize=[False, True],
        impl=["default", "foreach"],
    ),
    pt.Rprop: dict(
        lr=[0.01],
        etas=[(0.5, 1.2), (0.3, 1.5)],
        step_sizes=[(1e-6, 50), (1e-3, 0.05)],
        maximize=[False, True],
        impl=["default", "foreach"],
    ),
    pt.Adagrad: dict(
        lr=[0.01],
        lr_decay=[0.0, 0.01],
        weight_decay=[0.0, 0.1],
        initial_accumulator_value=[0.0, 0.1],
        maximize=[False, True],
        impl=["default", "foreach", "fused"],
    ),
    pt.ClippedAdam: dict(
        lr=[0.01],
        weight_decay=[0.0, 0.1],
        clip_norm=[10.0, 0.5],
        lrd=[1.0, 0.99],
        centered_variance=[False, True],
        impl=["default"],
    ),
    pt.AdagradRMSProp: dict(eta=[1.0, 0.1], delta=[1e-16, 0.1], t=[0.1, 0.5], impl=["default"]),
}


def combos(cls):
    grid = GRIDS[cls]
    for values in itertools.product(*grid.values()):
        args = dict(zip(grid, values, strict=True))
        impl = args.pop("impl")
        if cls is pt.SGD and args["nesterov"] and (args["momentum"] == 0 or args["dampening"]):
            continue
        if impl != "default":
            args[impl] = True
        yield args


CASES = [
    pytest.param(
        cls,
        args,
        id=f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in args.items())}",
    )
    for cls in GRIDS
    for args in combos(cls)
]
SHAPES = [(3, 4), (5,), (), (2, 3, 2), (7,), (1,)]


def make_params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in SHAPES]


def twins(dtype):
    ours = make_params(dtype)
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    return ours, theirs


def set_grads(params, step, *, skip=True):
    """Deterministic gradients; parameter 1 skips some steps (mixed step counts)."""
    gen = torch.Generator().manual_seed(1000 + step)
    for i, p in enumerate(params):
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        if skip and i == 1 and step % 3 == 1:
            p.grad = None
        else:
            p.grad = (p.detach() * 0.7 + noise).sin() * 3.0


def reference(cls):
    return pt.REFERENCE[cls]


def assert_same(ours, theirs, where=""):
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.equal(a, b), f"parameter {i} differs {where}: {(a - b).abs().max()}"


def assert_same_state(ours_opt, theirs_opt):
    a, b = ours_opt.state_dict(), theirs_opt.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert sorted(a["state"]) == sorted(b["state"])
    for k in a["state"]:
        sa, sb = a["state"][k], b["state"][k]
        assert sorted(sa) == sorted(sb), k
        for key in sa:
            va, vb = sa[key], sb[key]
            if isinstance(va, torch.Tensor):
                assert torch.equal(va, torch.as_tensor(vb, dtype=va.dtype)), (k, key)
                assert va.dtype == torch.as_tensor(vb).dtype, (k, key)
            else:
                assert va == vb, (k, key)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls,args", CASES)
def test_matches_reference(cls, args, dtype):
    ours, theirs = twins(dtype)
    a, b = cls(ours, **args), reference(cls)(theirs, **args)
    assert_same_state(a, b)  # before the first step too (Adagrad, AdagradRMSProp)
    for step in range(100):
        set_grads(ours, step)
        set_grads(theirs, step)
        a.step()
        b.step()
    assert_same(ours, theirs)
    assert_same_state(a, b)


DEFAULTS = [pytest.param(cls, id=cls.__name__) for cls in GRIDS]


def base_args(cls):
    return {"eta": 0.5} if cls is pt.AdagradRMSProp else {"lr": 0.01}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls", DEFAULTS)
def test_param_groups_edits_and_round_trips(cls, dtype):
    """Two groups, lr edits between steps, a group added later, and state dicts moved
    both ways at step 40 and 70: both optimizers continue identically."""
    ours, theirs = twins(dtype)
    key = "eta" if cls is pt.AdagradRMSProp else "lr"
    args = base_args(cls)

    def build(kind, params):
        return kind([{"params": params[:3]}, {"params": params[3:5], key: 0.02}], **args)

    a, b = build(cls, ours), build(reference(cls), theirs)
    late_a, late_b = ours[5], theirs[5]
    for step in range(120):
        if step == 20:
            for opt in (a, b):
                opt.param_groups[0][key] *= 0.5
        if step == 30:
            a.add_param_group({"params": [late_a], key: 0.03})
            b.add_param_group({"params": [late_b], key: 0.03})
            if cls is pt.AdagradRMSProp:  # pyro's class makes state in __init__ only
                b.state[late_b] = {"step": 0, "sum": torch.zeros_like(late_b)}
        if step == 40:  # theirs -> a fresh one of ours
            a = build(cls, ours)
            a.add_param_group({"params": [late_a], key: 0.03})
            a.load_state_dict(copy.deepcopy(b.state_dict()))  # as a checkpoint file does
        if step == 70:  # ours -> a fresh torch one
            b = build(reference(cls), theirs)
            b.add_param_group({"params": [late_b], key: 0.03})
            b.load_state_dict(copy.deepcopy(a.state_dict()))
        if step == 90:  # ours loads its own, in place
            a.load_state_dict(copy.deepcopy(a.state_dict()))
        set_grads(ours, step)
        set_grads(theirs, step)
        if step < 30:
            late_a.grad = late_b.grad = None
        a.step()
        b.step()
        assert_same(ours, theirs, f"at step {step}")
    assert_same_state(a, b)


SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.7),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=110),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=30),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1 / (1 + t)),
}
SCHEDULED = [pt.Adam, pt.AdamW, pt.SGD, pt.RMSprop, pt.Rprop, pt.Adagrad, pt.ClippedAdam]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("cls", SCHEDULED, ids=lambda c: c.__name__)
def test_schedulers(cls, name, dtype):
    make = SCHEDULERS[name]
    if name == "OneCycleLR" and cls in (pt.Rprop, pt.Adagrad, pt.ClippedAdam):
        # no momentum (or betas) to cycle: the lr alone, as torch allows
        def make(o):
            return torch.optim.lr_scheduler.OneCycleLR(
                o, max_lr=0.05, total_steps=110, cycle_momentum=False
            )

    extra = {"momentum": 0.9} if cls in (pt.SGD, pt.RMSprop) else {}
    ours, theirs = twins(dtype)
    a, b = cls(ours, lr=0.01, **extra), reference(cls)(theirs, lr=0.01, **extra)
    sa, sb = make(a), make(b)
    for step in range(105):
        set_grads(ours, step)
        set_grads(theirs, step)
        a.step()
        b.step()
        sa.step()
        sb.step()
    assert_same(ours, theirs)
    assert_same_state(a, b)


def test_signatures_are_torchs():
    for ours, theirs in pt.REFERENCE.items():
        assert issubclass(ours, torch.optim.Optimizer)
        assert inspect.signature(ours) == inspect.signature(reference(ours)) or ours in (
            pt.ClippedAdam,
            pt.AdagradRMSProp,
        )
        got = [p for p in inspect.signature(ours).parameters]
        want = [p for p in inspect.signature(theirs).parameters]
        assert got == want, ours
    assert isinstance(pt.Adam([torch.zeros(1, requires_grad=True)]), torch.optim.Adam)


def test_import_torch_is_real_torch():
    import pyroopt.rule_bucket

    assert pyroopt.rule_bucket.torch is torch
    assert torch.__file__ != pt.__file__


def test_closure_evaluated_once_and_returned():
    w = torch.ones(3, requires_grad=True)
    v = w.detach().clone().requires_grad_()
    a, b = pt.Adam([w], lr=0.1), torch.optim.Adam([v], lr=0.1)
    calls = []

    def closure_for(x, opt):
        def closure():
            calls.append(1)
            opt.zero_grad()
            loss = (x**2).sum()
            loss.backward()
            return loss

        return closure

    for _ in range(5):
        la = a.step(closure_for(w, a))
        lb = b.step(closure_for(v, b))
        assert torch.equal(la, lb)
    assert len(calls) == 10
    assert torch.equal(w, v)
    with pytest.raises(TypeError, match="closure"):
        a.step(3)


def test_hooks_and_zero_grad():
    w = torch.ones(3, requires_grad=True)
    opt = pt.SGD([w], lr=0.1)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append("post"))
    opt.register_state_dict_post_hook(lambda o, sd: seen.append("sd") or None)
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load"))
    (w * 2).sum().backward()
    opt.step()
    opt.load_state_dict(opt.state_dict())
    assert seen == ["pre", "post", "sd", "load"]
    opt.zero_grad(set_to_none=False)
    assert torch.equal(w.grad, torch.zeros(3))
    opt.zero_grad()
    assert w.grad is None


def test_params_without_grads_are_skipped():
    ws = [torch.ones(2, requires_grad=True) for _ in range(3)]
    opt = pt.Adam(ws, lr=0.1)
    ws[0].grad = torch.ones(2)
    opt.step()
    assert not torch.equal(ws[0], torch.ones(2))
    assert torch.equal(ws[1], torch.ones(2)) and torch.equal(ws[2], torch.ones(2))
    assert list(opt.state_dict()["state"]) == [0]
    assert ws[0] in opt.state and ws[1] not in opt.state


def test_state_reads_and_writes():
    w, v = torch.ones(4, requires_grad=True), torch.ones(4, requires_grad=True)
    a, b = pt.Adam([w], lr=0.1), torch.optim.Adam([v], lr=0.1)
    for x, o in ((w, a), (v, b)):
        x.grad = torch.arange(4.0)
        o.step()
    assert torch.equal(a.state[w]["exp_avg"], b.state[v]["exp_avg"])
    assert torch.equal(a.state[w]["step"], b.state[v]["step"])
    a.state[w] = {k: t.clone() * 0 if k != "step" else t for k, t in b.state[v].items()}
    assert torch.equal(a.state[w]["exp_avg"], torch.zeros(4))
    del a.state[w]
    assert w not in a.state and len(a.state) == 0


def test_mixed_dtypes_in_one_group():
    """One bucket per (group, device, dtype); ClippedAdam decays lr once per group."""
    ours = [torch.ones(3, requires_grad=True), torch.ones(3, dtype=torch.float64).requires_grad_()]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    a = pt.ClippedAdam(ours, lr=0.1, lrd=0.9)
    from pyro.optim.clipped_adam import ClippedAdam as PyroClippedAdam

    b = PyroClippedAdam(theirs, lr=0.1, lrd=0.9)
    for step in range(20):
        set_grads(ours, step, skip=False)
        set_grads(theirs, step, skip=False)
        a.step()
        b.step()
    assert_same(ours, theirs)
    assert a.param_groups[0]["lr"] == b.param_groups[0]["lr"]


def test_switching_implementation_mid_run():
    ours, theirs = twins(torch.float32)
    a, b = pt.Adam(ours, lr=0.01), torch.optim.Adam(theirs, lr=0.01)
    for step in range(60):
        if step == 20:
            a.param_groups[0]["foreach"] = b.param_groups[0]["foreach"] = True
        if step == 40:
            a.param_groups[0]["foreach"] = b.param_groups[0]["foreach"] = None
        set_grads(ours, step)
        set_grads(theirs, step)
        a.step()
        b.step()
    assert_same(ours, theirs)


def test_pickle_and_deepcopy():
    ours, theirs = twins(torch.float64)
    a, b = (
        pt.RMSprop(ours, lr=0.01, momentum=0.5),
        torch.optim.RMSprop(theirs, lr=0.01, momentum=0.5),
    )
    for step in range(10):
        set_grads(ours, step)
        set_grads(theirs, step)
        a.step()
        b.step()
    c = copy.deepcopy(a)
    assert_same_state(c, b)
    d = pickle.loads(pickle.dumps(a))
    assert_same_state(d, b)


def test_errors_name_the_value():
    with pytest.raises(ValueError, match="-1"):
        pt.Adam([torch.zeros(1, requires_grad=True)], lr=-1)
    with pytest.raises(ValueError, match="clip_norm"):
        pt.ClippedAdam([torch.zeros(1, requires_grad=True)], clip_norm=-1.0)
    opt = pt.Adam([torch.zeros(1, requires_grad=True)])
    with pytest.raises(TypeError, match="list"):
        opt.state[opt.param_groups[0]["params"][0]] = [1]


def test_elbo_module_parameters_created_later():
    """A guide that creates a parameter on a later call: the user adds it with
    add_param_group (Pyro's svi_lightning.py instead calls the loss once before making
    the optimizer, which needs nothing more); both optimizers give the same numbers."""
    import pyro
    import pyro.distributions as dist
    from pyro.infer import Trace_ELBO
    from pyro.nn import PyroModule

    class Model(PyroModule):
        grow = False

        def forward(self, data):
            loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
            if self.grow:
                loc = loc + pyro.sample("extra", dist.Normal(0.0, 1.0))
            with pyro.plate("data", len(data)):
                pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)

    class Guide(PyroModule):
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.loc_q = torch.nn.Parameter(torch.zeros(()))

        def forward(self, data):
            pyro.sample("loc", dist.Normal(self.loc_q, 0.5))
            if self.model.grow:
                if not hasattr(self, "extra_q"):  # created on first use
                    self.extra_q = torch.nn.Parameter(torch.zeros(2).sum())
                pyro.sample("extra", dist.Normal(self.extra_q, 0.5))

    results = []
    data = torch.randn(20, generator=torch.Generator().manual_seed(0)) + 1.0
    for cls in (torch.optim.Adam, pt.Adam):
        with pyro.settings.context(module_local_params=True):
            pyro.set_rng_seed(0)
            model = Model()
            guide = Guide(model)
            elbo = Trace_ELBO()(model, guide)
            opt = cls(elbo.parameters(), lr=0.05)
            losses = []
            for step in range(40):
                if step == 20:
                    model.grow = True
                opt.zero_grad()
                loss = elbo(data)
                loss.backward()
                if step == 20:  # the new parameter has its gradient: it joins now
                    known = {id(p) for g in opt.param_groups for p in g["params"]}
                    new = [p for p in elbo.parameters() if id(p) not in known]
                    assert len(new) == 1
                    opt.add_param_group({"params": new, "lr": 0.1})
                opt.step()
                losses.append(loss.detach())
            results.append((losses, [p.detach().clone() for p in elbo.parameters()]))
    (la, pa), (lb, pb) = results
    assert len(pa) == 2
    assert all(map(torch.equal, la, lb))
    assert all(map(torch.equal, pa, pb))


@pytest.mark.parametrize("impl", [{}, {"foreach": True}], ids=["default", "foreach"])
def test_named_parameters_and_round_trip(impl):
    m1 = torch.nn.Linear(3, 2)
    m2 = copy.deepcopy(m1)
    a = pt.Adam(m1.named_parameters(), lr=0.1, **impl)
    b = torch.optim.Adam(m2.named_parameters(), lr=0.1, **impl)

    def steps(n):
        for _ in range(n):
            for m, o in ((m1, a), (m2, b)):
                o.zero_grad()
                m(torch.ones(4, 3)).pow(2).sum().backward()
                o.step()

    steps(5)
    a.load_state_dict(copy.deepcopy(b.state_dict()))
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    steps(5)
    assert all(torch.equal(x, y) for x, y in zip(m1.parameters(), m2.parameters(), strict=True))
    assert a.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]
    assert_same_state(a, b)


def test_small_buckets_step_on_one_thread_and_restore_the_count(monkeypatch):
    from pyroopt.rule_bucket import RuleBucket

    threads = torch.get_num_threads()
    during = []
    native = RuleBucket._native

    def recording(self, batch):
        during.append(torch.get_num_threads())
        return native(self, batch)

    monkeypatch.setattr(RuleBucket, "_native", recording)
    w = torch.ones(10, requires_grad=True)
    opt = pt.Adam([w], lr=0.1)
    w.grad = torch.ones(10)
    opt.step()
    assert during == [1] and torch.get_num_threads() == threads
