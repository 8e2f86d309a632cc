"""Parameters seated in a flat buffer behave exactly like parameters updated in place."""

from __future__ import annotations

import pyro
import pyro.optim
import pytest
import torch
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints
from torch.testing import assert_close

import pyroopt
from pyroopt.engine import full_group
from pyroopt.native import _entry
from pyroopt.placement import Placement
from pyroopt.registry import RULES
from pyroopt.rule_bucket import RuleBucket
from pyroopt.seating import FlatValues, _storage_users

NAMES = ("a", "b", "c")


def _params():
    return [pyro.param(n, torch.full((3,), float(i))).unconstrained() for i, n in enumerate(NAMES)]


def _step(optim, params, step):
    for i, p in enumerate(params):
        with torch.no_grad():
            p.grad = torch.sin(2 * p + step) + 0.1 * i
    optim(params)


def _holds(tensors, t):
    return any(x is t for x in tensors)


def _bucket_values(optim):
    (bucket,) = optim._placement.buckets
    return bucket._values


def test_parameters_are_seated_and_the_buffer_is_their_only_copy():
    params = _params()
    optim = pyroopt.Adam({"lr": 0.1})
    _step(optim, params, 0)
    values = _bucket_values(optim)
    assert values.seated == params
    # the buffer, its slices (one per parameter, kept for the update), the three
    # parameters, nothing else
    assert _storage_users(values.buffer) == 1 + len(values.views) + len(params)
    assert params[1].detach().abs().min() > 0
    values.buffer.zero_()  # writing the buffer writes the parameters
    assert torch.equal(params[1].detach(), torch.zeros(3))


def test_a_view_taken_before_the_first_step_keeps_following_its_parameter():
    params = _params()
    view = params[0].detach()  # shares storage: seating would leave it behind
    optim = pyroopt.Adam({"lr": 0.1})
    for step in range(3):
        _step(optim, params, step)
    assert _holds(_bucket_values(optim).unseated, params[0])
    assert torch.equal(view, params[0].detach())
    assert not torch.equal(view, torch.zeros(3))


def _bucket_of(optim, param):
    return optim._placement.table.get(param).bucket


def test_a_view_taken_after_seating_survives_a_parameter_leaving():
    params = _params()
    optim = pyroopt.Adam({"lr": 0.1})
    _step(optim, params, 0)
    view = params[2].detach()
    del pyro.get_param_store()["a"]  # 'a' leaves: its bucket is laid out anew
    late = pyro.param("late", torch.ones(2)).unconstrained()
    kept = params[1:]
    for step in range(1, 4):
        _step(optim, [*kept, late], step)
    assert torch.equal(view, params[2].detach())
    # the parameters left behind could not move: they are copied in and out
    values = _bucket_of(optim, params[2])._values
    assert _holds(values.unseated, params[2]) and values.params == [*kept, late]
    # the newcomer joined the stepped bucket (its hyperparameters have not moved), and
    # nothing outside shares its storage: it is seated
    assert _bucket_of(optim, late) is _bucket_of(optim, params[2])
    assert _holds(values.seated, late)


def test_without_outside_views_parameters_move_and_the_old_buffer_is_freed():
    params = _params()
    optim = pyroopt.Adam({"lr": 0.1})
    _step(optim, params, 0)
    old = _bucket_values(optim).buffer
    del pyro.get_param_store()["a"]
    late = pyro.param("late", torch.ones(2)).unconstrained()
    _step(optim, [*params[1:], late], 1)
    values = _bucket_of(optim, params[1])._values
    assert values.seated == [*params[1:], late]  # the newcomer joined them
    assert _storage_users(old) == 1  # only our local name for it is left
    assert not _holds(optim.optim_objs, params[0])  # retired


def test_a_removed_parameter_gets_storage_of_its_own():
    a, b = torch.zeros(2, requires_grad=True), torch.ones(3, requires_grad=True)
    group = full_group(torch.optim.Adam, {"lr": 0.1}, a)
    bucket = RuleBucket(torch.optim.Adam, group, RULES[torch.optim.Adam])
    bucket.add(a)
    bucket.add(b)
    a.grad, b.grad = torch.ones(2), torch.ones(3)
    bucket.step([a, b])
    first = bucket._values.buffer
    bucket.remove(a)
    bucket.step([b])  # rebuilds the layout without a
    assert bucket._values.buffer.untyped_storage().data_ptr() != a.untyped_storage().data_ptr()
    assert _storage_users(a) == 1 and _storage_users(first) == 1


def _reseat_program(make_optim, reseat):
    pyro.clear_param_store()
    params = _params()
    optim = make_optim()
    out = []
    for step in range(8):
        if step in reseat:
            with torch.no_grad():
                params[1].data = torch.full((3,), 10.0 + step)
        _step(optim, params, step)
        out.append(torch.stack([p.detach().clone() for p in params]))
    return out


def test_a_parameter_given_new_storage_is_followed_as_pyro_optim_follows_it():
    reseat = {3, 6}
    ours = _reseat_program(lambda: pyroopt.Adam({"lr": 0.1}), reseat)
    theirs = _reseat_program(lambda: pyro.optim.Adam({"lr": 0.1}), reseat)
    for step, (x, y) in enumerate(zip(ours, theirs, strict=True)):
        assert_close(x, y, rtol=1e-12, atol=1e-12, msg=f"step {step}")


def test_pyro_module_attribute_assignment_mid_training():
    """PyroModule writes a new value into an existing parameter with ``.data =``."""

    def train(make_optim):
        pyro.clear_param_store()
        module = PyroModule()
        module.loc = PyroParam(torch.zeros(3))
        module.scale = PyroParam(torch.ones(3), constraint=constraints.positive)
        optim = make_optim()
        for step in range(6):
            if step == 3:
                module.scale = torch.full((3,), 2.0)
            loss = ((module.loc - 1.0) ** 2 * module.scale).sum() + module.scale.sum()
            loss.backward()
            params = list(module.parameters())  # the unconstrained tensors
            optim(params)
            for p in params:
                p.grad = None
        return module.loc.detach().clone(), module.scale.detach().clone()

    ours = train(lambda: pyroopt.Adam({"lr": 0.1}))
    theirs = train(lambda: pyro.optim.Adam({"lr": 0.1}))
    assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make_optim", [pyroopt.Adam, pyro.optim.Adam], ids=["pyroopt", "pyro"])
def test_autograd_still_sees_that_a_step_changed_a_saved_parameter(make_optim):
    params = _params()
    optim = make_optim({"lr": 0.1})
    _step(optim, params, 0)  # seat them
    loss = (params[0] * params[0]).sum()  # saves params[0] for backward
    _step(optim, params, 1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_storage_shared_by_design_stays_shared():
    """A parameter made from a tensor the caller keeps (tying by storage) is not moved."""
    tied = torch.zeros(3)
    p = torch.nn.Parameter(tied)
    q = torch.nn.Parameter(torch.zeros(2))
    values = FlatValues([p, q], pyroopt.flat.FlatLayout([p.shape, q.shape]), previous=None)
    assert values.unseated == [p] and values.seated == [q]
    values.buffer.add_(1.0)
    values.stored()
    assert torch.equal(tied, torch.ones(3)) and torch.equal(q.detach(), torch.ones(2))


def _mixed_program(make_optim, events):
    """Steps with new storage (``"reseat"``) or a missing gradient (``"partial"``)
    before some steps, in float32; every parameter and loss after each step."""
    pyro.clear_param_store()
    params = [
        pyro.param(n, torch.linspace(-1.0, 1.0, 5 + i, dtype=torch.float32)).unconstrained()
        for i, n in enumerate(NAMES)
    ]
    optim = make_optim()
    out = []
    for step in range(10):
        event = events.get(step, ())
        if "reseat" in event:
            with torch.no_grad():
                params[1].data = params[1].detach() * 0.5 + 1.0
        for i, p in enumerate(params):
            with torch.no_grad():
                missing = "partial" in event and i == 2
                p.grad = None if missing else torch.sin(3 * p + step) + 0.1 * i
        given = params[::-1] if "reversed" in event else params[:2] if "subset" in event else params
        optim(given)
        out.append([p.detach().clone() for p in params])
    return out


@pytest.mark.parametrize(
    "events",
    [
        {4: ("reseat",)},
        {3: ("reseat", "partial")},  # new storage, then a step that does not step flat
        {3: ("partial",), 4: ("reseat",), 5: ("partial",), 6: ("reseat", "partial")},
        # the same parameters in another order, a call over some of them, new storage
        {2: ("reversed",), 3: ("reversed",), 4: ("subset",), 5: ("reversed", "reseat")},
    ],
    ids=["reseat", "reseat-in-partial-step", "alternating", "reordered-and-subset-calls"],
)
def test_new_storage_around_partial_steps_is_followed_bit_for_bit(events):
    ours = _mixed_program(lambda: pyroopt.Adam({"lr": 0.1}), events)
    theirs = _mixed_program(lambda: pyro.optim.Adam({"lr": 0.1}), events)
    for step, (x, y) in enumerate(zip(ours, theirs, strict=True)):
        for a, b in zip(x, y, strict=True):
            assert torch.equal(a, b), f"step {step}"


def test_steady_steps_do_not_check_storage_again(monkeypatch):
    """The plan's data pointers vouch for the flat values: only the first step and the
    step after new storage check them (and follow the new storage)."""
    checks = []
    intact = FlatValues.intact
    monkeypatch.setattr(FlatValues, "intact", lambda self: checks.append(1) or intact(self))
    pyro.clear_param_store()
    params = _params()
    optim = pyroopt.Adam({"lr": 0.1})
    for step in range(4):
        _step(optim, params, step)
    assert checks == [1]
    with torch.no_grad():
        params[0].data = torch.full((3,), 7.0)
    _step(optim, params, 4)
    assert checks == [1, 1]
    assert _bucket_values(optim).buffer.untyped_storage().data_ptr() == (
        params[0].untyped_storage().data_ptr()
    )
    for step in range(5, 8):
        _step(optim, params, step)
    assert checks == [1, 1]


def test_steady_steps_read_their_buffers_pointers_once(monkeypatch):
    """A flat step hands the native loop the bucket's own buffers, whose pointers the
    native entry reads once: steady steps read none, a step after a parameter joined
    reads them anew (the layout changed), and the values are pyro.optim's throughout."""
    reads = []
    pointers = _entry.pointers
    monkeypatch.setattr(_entry, "pointers", lambda ts: reads.append(len(ts)) or pointers(ts))
    ours, theirs = [], []
    for optim_class, out in ((pyroopt.Adam, ours), (pyro.optim.Adam, theirs)):
        pyro.clear_param_store()
        params = _params()
        optim = optim_class({"lr": 0.1})
        counts = []
        for step in range(4):
            _step(optim, params, step)
            counts.append(len(reads))
        params.append(pyro.param("late", torch.full((5,), 2.0)).unconstrained())
        for step in range(4, 7):
            _step(optim, params, step)
            counts.append(len(reads))
        out.append(counts)
        out.extend(p.detach().clone() for p in params)
        reads.clear()
    (ours_counts, *ours_values), (theirs_counts, *theirs_values) = ours, theirs
    assert theirs_counts == [0] * 7
    first = ours_counts[0]
    assert first > 0 and ours_counts[:4] == [first] * 4  # read on the first step only
    assert ours_counts[4] > first and ours_counts[4:] == [ours_counts[4]] * 3
    for a, b in zip(ours_values, theirs_values, strict=True):
        assert torch.equal(a, b)


def test_a_plan_holds_across_calls_of_the_same_parameters_in_any_order(monkeypatch):
    """A call listing the last call's tensors (in any order) keeps its plan; a call over
    another set of tensors makes a new one."""
    made = []
    make_plan = Placement._make_plan
    monkeypatch.setattr(
        Placement,
        "_make_plan",
        lambda self, params, ids: made.append(len(params)) or make_plan(self, params, ids),
    )
    pyro.clear_param_store()
    params = _params()
    optim = pyroopt.Adam({"lr": 0.1})
    calls = [params, params, params[::-1], params[::-1], params, params[:1], params[1:2], params]
    for step, given in enumerate(calls):
        for i, p in enumerate(params):
            p.grad = torch.full_like(p, 0.5 + i + step)
        optim(list(given))
    assert made == [len(params), 1, 1, len(params)]


def _steady_then(make_optim, event):
    """Three steady flat steps in float32, then one step where the second parameter's
    gradient is ``event`` ("sparse": a sparse one, "missing": none; a refused step is
    recorded as None), then two dense steps."""
    pyro.clear_param_store()
    params = [
        pyro.param(n, torch.linspace(-1.0, 1.0, 4, dtype=torch.float32)).unconstrained()
        for n in NAMES
    ]
    optim = make_optim()
    out = []
    for step in range(6):
        for i, p in enumerate(params):
            with torch.no_grad():
                p.grad = torch.cos(2 * p + step) + 0.1 * i
        if step == 3:
            params[1].grad = None if event == "missing" else params[1].grad.to_sparse()
        try:
            optim(params)
        except ValueError:
            out.append(None)
            continue
        out.append([p.detach().clone() for p in params])
    return out


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")
@pytest.mark.parametrize(
    "factory,event",
    [("Adam", "missing"), ("SGD", "sparse"), ("Adagrad", "sparse"), ("ClippedAdam", "missing")],
)
def test_a_missing_or_sparse_gradient_after_steady_steps_steps_as_pyro_optim(
    monkeypatch, factory, event
):
    """A steady flat step checks its gradients by gathering them (torch.cat refuses
    what does not fit) instead of one by one; a missing or sparse gradient then still
    takes pyro.optim's way (a partial step; torch's own sparse update)."""
    args = {"lr": 0.1, "momentum": 0.9} if factory == "SGD" else {"lr": 0.1}
    found = []
    check = RuleBucket.check

    def recording(self, params, **kwargs):
        try:
            check(self, params, **kwargs)
        except Exception:
            found.append("refused")
            raise
        found.append(self._checked)

    monkeypatch.setattr(RuleBucket, "check", recording)
    ours = _steady_then(lambda: getattr(pyroopt, factory)(args), event)
    # step 0 checked one by one (first), 1 and 2 gathered, 3 checked again (or refused,
    # to hand a sparse gradient over)
    assert found[:3] == ["checked", "gathered", "gathered"]
    assert found[3] in ("checked", "refused")
    theirs = _steady_then(lambda: getattr(pyro.optim, factory)(args), event)
    for step, (x, y) in enumerate(zip(ours, theirs, strict=True)):
        for a, b in zip(x, y, strict=True):
            assert torch.equal(a, b), f"step {step}"


def test_a_sparse_gradient_after_steady_steps_is_refused_before_anything_changes():
    """Adam refuses a sparse gradient; after steady steps the refusal still comes
    before any parameter, state or step count moved."""
    refused = _steady_then(lambda: pyroopt.Adam({"lr": 0.1}), "sparse")
    assert refused[3] is None
    pyro.clear_param_store()
    params = [
        pyro.param(n, torch.linspace(-1.0, 1.0, 4, dtype=torch.float32)).unconstrained()
        for n in NAMES
    ]
    optim = pyroopt.Adam({"lr": 0.1})
    for step in (0, 1, 2, 4, 5):  # the same steps without the refused one
        for i, p in enumerate(params):
            with torch.no_grad():
                p.grad = torch.cos(2 * p + step) + 0.1 * i
        optim(params)
        if step >= 4:
            assert all(
                torch.equal(p.detach(), q) for p, q in zip(params, refused[step], strict=True)
            ), step
