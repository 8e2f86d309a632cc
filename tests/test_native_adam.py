"""The C Adam/AdamW and ClippedAdam loops against torch.optim.Adam's single-tensor loop
and pyro's ClippedAdam, bit for bit, float32 and float64."""

from __future__ import annotations

import collections
import itertools

import pyro
import pytest
import torch
from pyro.optim.clipped_adam import ClippedAdam as PyroClippedAdam

import pyroopt
from pyroopt import native, rule_bucket
from pyroopt.kernels.adam import ADAM
from pyroopt.kernels.base import Batch
from pyroopt.kernels.clipped_adam import ClippedAdamRule
from pyroopt.native import adam as native_adam
from pyroopt.native.adam import adam_update, clipped_adam_update

SIZES = [1, 3, 15, 17, 1037]
SIZES_LONG = [*SIZES, 65537]  # for the thread-count tests only, to keep time sane
BIG = [2**20 + 3]
INF, NAN = float("inf"), float("nan")


def assert_same(ours, theirs):
    """Equal bit for bit where a number, NaN where the other is NaN (payloads may differ)."""
    nan = ours.isnan()
    assert torch.equal(nan, theirs.isnan())
    assert torch.equal(ours[~nan], theirs[~nan])


def _grads(sizes, step, dtype):
    gen = torch.Generator().manual_seed(1000 + step)
    grads = [torch.randn(n, generator=gen, dtype=dtype) * (1 + step % 4) for n in sizes]
    if step in (40, 41):  # infinite and NaN gradients, in the middle of a tensor
        for g in grads:
            g[len(g) // 2 :][:3] = torch.tensor([INF, NAN, -INF], dtype=dtype)[
                : len(g) - len(g) // 2
            ]
    return grads


@pytest.fixture
def threads(request, monkeypatch):
    """Thread boundaries inside tensors, and torch's thread count set to match."""
    monkeypatch.setattr(native_adam, "MIN_NUMEL_PER_THREAD", 500)
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _run_against(reference, sizes, dtype, update, steps=105, stagger=3):
    """Step ours and ``reference`` side by side; tensor i takes its first step at step
    ``stagger * i``, so one call holds several step counts. Yields (ours, theirs, grads)."""
    torch.manual_seed(0)
    ours = [torch.randn(n, dtype=dtype) for n in sizes]
    theirs = [p.clone().requires_grad_() for p in ours]
    optim = reference(theirs)
    state = [[torch.zeros_like(p) for p in ours] for _ in range(3)]
    counts = [0] * len(sizes)
    for step in range(steps):
        live = [i for i in range(len(sizes)) if step >= stagger * i]
        grads = _grads([sizes[i] for i in live], step, dtype)
        for p in theirs:
            p.grad = None
        for i, g in zip(live, grads, strict=True):
            theirs[i].grad = g.clone()
            counts[i] += 1
        optim.step()
        pick = [[s[i] for i in live] for s in state]
        assert update([ours[i] for i in live], grads, *pick, [counts[i] for i in live])
        yield ours, theirs, optim, state, live, grads


ADAM_COMBOS = [
    dict(amsgrad=a, maximize=m, betas=b, weight_decay=wd, decoupled=d)
    for a, m, b, (wd, d) in itertools.product(
        [False, True],
        [False, True],
        [(0.9, 0.999), (0.3, 0.9)],  # 1 - beta1 >= 0.5: torch's other lerp formula
        [(0.0, False), (0.1, False), (0.1, True)],
    )
]


def _adam_ids(c):
    return "-".join(f"{k}={v}" for k, v in c.items())


def _check_adam(combo, adamw, sizes, dtype, steps=105):
    args = dict(combo)
    decoupled = args.pop("decoupled")

    def reference(ps):
        cls = torch.optim.AdamW if adamw else torch.optim.Adam
        extra = {} if adamw else {"decoupled_weight_decay": decoupled}
        return cls(ps, lr=0.05, eps=1e-8, foreach=False, **args, **extra)

    def update(ps, gs, m, v, x, counts):
        return adam_update(
            ps, gs, m, v, x, counts, lr=0.05, eps=1e-8, decoupled=decoupled or adamw, **args
        )

    last = collections.deque(_run_against(reference, sizes, dtype, update, steps), maxlen=1)
    ours, theirs, optim, state, live, _ = last[0]
    for i in live:
        s = optim.state[theirs[i]]
        assert_same(ours[i], theirs[i].detach())
        assert_same(state[0][i], s["exp_avg"])
        assert_same(state[1][i], s["exp_avg_sq"])
        if combo["amsgrad"]:
            assert_same(state[2][i], s["max_exp_avg_sq"])


@pytest.mark.parametrize("threads", [2], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("combo", ADAM_COMBOS, ids=_adam_ids)
def test_adam_matches_torch_bit_for_bit(threads, dtype, combo):
    _check_adam(combo, adamw=False, sizes=SIZES, dtype=dtype)


@pytest.mark.parametrize("threads", [1, 3], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_matches_torch_bit_for_bit(threads, dtype, amsgrad):
    combo = dict(
        amsgrad=amsgrad, maximize=False, betas=(0.9, 0.999), weight_decay=0.1, decoupled=True
    )
    _check_adam(combo, adamw=True, sizes=SIZES, dtype=dtype)


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_adam_thread_counts_change_no_number(threads, dtype):
    combo = dict(amsgrad=True, maximize=True, betas=(0.9, 0.999), weight_decay=0.1, decoupled=False)
    _check_adam(combo, adamw=False, sizes=SIZES_LONG, dtype=dtype)


@pytest.mark.parametrize("threads", [3], indirect=True)
@pytest.mark.parametrize(
    "dtype, combo",
    [
        (torch.float32, ADAM_COMBOS[3 + 6]),  # amsgrad, L2
        (torch.float64, ADAM_COMBOS[5]),  # decoupled
    ],
    ids=["f32", "f64"],
)
def test_adam_big_tensor(threads, dtype, combo):
    _check_adam(combo, adamw=False, sizes=BIG, dtype=dtype, steps=100)


CLIPPED_COMBOS = [
    dict(weight_decay=wd, centered_variance=cv, clip_norm=c, lrd=lrd)
    for wd, cv, c, lrd in itertools.product([0.0, 0.1], [False, True], [10.0, 0.3], [1.0, 0.97])
]


def _check_clipped(combo, sizes, dtype, steps=105):
    args = dict(combo)
    lrd = args.pop("lrd")
    lr = [0.05]

    def update(ps, gs, m, v, _x, counts):
        lr[0] *= lrd  # as pyro's step does, before updating
        return clipped_adam_update(
            ps, gs, m, v, counts, lr=lr[0], betas=(0.9, 0.999), eps=1e-8, **args
        )

    def reference(ps):
        return PyroClippedAdam(ps, lr=0.05, lrd=lrd, **args)

    for out in _run_against(reference, sizes, dtype, update, steps):
        ours, theirs, optim, state, live, grads = out
        for i, g in zip(live, grads, strict=True):  # both clamped the gradient in place
            assert_same(g, theirs[i].grad)
    for i in live:
        s = optim.state[theirs[i]]
        assert_same(ours[i], theirs[i].detach())
        assert_same(state[0][i], s["exp_avg"])
        assert_same(state[1][i], s["exp_avg_sq"])


@pytest.mark.parametrize("threads", [2], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("combo", CLIPPED_COMBOS, ids=_adam_ids)
def test_clipped_adam_matches_pyro_bit_for_bit(threads, dtype, combo):
    _check_clipped(combo, SIZES, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_clipped_adam_writes_back_blocks_with_one_clamped_gradient(dtype):
    """A 3-sigma clip clamps about one gradient in 370: some blocks of the loop have one
    or two to write back, most none (which it leaves unwritten)."""
    combo = dict(weight_decay=0.0, centered_variance=False, clip_norm=3.0, lrd=1.0)
    _check_clipped(combo, SIZES_LONG, dtype, steps=30)


@pytest.mark.parametrize("threads", [1, 3], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_clipped_adam_thread_counts_and_big_tensor(threads, dtype):
    combo = dict(weight_decay=0.1, centered_variance=True, clip_norm=0.3, lrd=0.97)
    _check_clipped(combo, SIZES if threads == 1 else BIG, dtype, steps=100)


def test_one_count_stands_for_all_tensors():
    params = [torch.zeros(3), torch.zeros(2)]
    state = {k: [torch.zeros(3), torch.zeros(2)] for k in ("exp_avg", "exp_avg_sq")}
    group = dict(
        lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False
    )
    assert ADAM.native_update(Batch(params, [torch.ones(3), -torch.ones(2)], state, [1]), group)
    torch.testing.assert_close(params[0], torch.full((3,), -0.1))  # lr against g
    torch.testing.assert_close(params[1], torch.full((2,), 0.1))
    with pytest.raises(ValueError, match="2 step counts for 3 tensors"):
        adam_update(
            *[[torch.ones(1)] * 3] * 5,
            [1, 2],
            lr=0.1,
            betas=(0.9, 0.9),
            eps=1e-8,
            weight_decay=0.0,
            decoupled=False,
            amsgrad=True,
            maximize=False,
        )


def _adam_lists(dtype=torch.float32, **kwargs):
    return [[torch.ones(4, dtype=dtype, **kwargs) for _ in range(2)] for _ in range(5)]


DECLINES = [
    "half precision",
    "bfloat16",
    "mixed dtypes",
    "not contiguous",
    "lazily negated",
    "sizes differ",
    "meta device",
    "no library",
]


@pytest.mark.parametrize("rule", ["adam", "clipped"])
@pytest.mark.parametrize("case", DECLINES)
def test_declines_what_it_cannot_compute_and_changes_nothing(monkeypatch, rule, case):
    lists = _adam_lists()
    if case == "half precision":
        lists = _adam_lists(torch.float16)
    elif case == "bfloat16":
        lists = _adam_lists(torch.bfloat16)
    elif case == "mixed dtypes":
        lists[2] = _adam_lists(torch.float64)[2]
    elif case == "not contiguous":
        lists[0] = [torch.ones(4, 2)[:, 0] for _ in range(2)]
    elif case == "lazily negated":
        lists[1] = [torch._neg_view(g) for g in lists[1]]
    elif case == "sizes differ":
        lists[3] = [torch.ones(5) for _ in range(2)]
    elif case == "meta device":
        lists[0] = _adam_lists(device="meta")[0]
    else:
        monkeypatch.setattr(native, "_load", lambda: (None, "turned off"))
        monkeypatch.setattr(native_adam, "_adam_function", lambda dtype: None)
        monkeypatch.setattr(native_adam, "_clipped_function", lambda dtype: None)
    for g in lists[1]:
        if g.device.type != "meta":
            g.mul_(100)  # would be clamped by ClippedAdam
    snapshot = [[t.clone() for t in ts] for ts in lists]
    versions = [[t._version for t in ts] for ts in lists]
    if rule == "adam":
        done = adam_update(
            *lists,
            [1, 2],
            lr=0.1,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=0.1,
            decoupled=False,
            amsgrad=True,
            maximize=False,
        )
    else:
        done = clipped_adam_update(
            *lists[:4],
            [1, 2],
            lr=0.1,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=0.1,
            clip_norm=1.0,
            centered_variance=True,
        )
    assert not done
    assert [[t._version for t in ts] for ts in lists] == versions
    for ts, saved in zip(lists, snapshot, strict=True):
        for t, s in zip(ts, saved, strict=True):
            if t.device.type != "meta":
                assert torch.equal(t, s)


def test_adam_never_writes_gradients_and_marks_what_it_writes():
    lists = _adam_lists()
    grads = [g.clone() for g in lists[1]]
    versions = [[t._version for t in ts] for ts in lists]
    assert adam_update(
        *lists,
        [1, 1],
        lr=0.1,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.1,
        decoupled=False,
        amsgrad=True,
        maximize=True,
    )
    assert all(torch.equal(a, b) for a, b in zip(lists[1], grads, strict=True))
    assert [t._version for t in lists[1]] == versions[1]
    for k in (0, 2, 3, 4):
        assert all(t._version > v for t, v in zip(lists[k], versions[k], strict=True))


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per-tensor"])
@pytest.mark.parametrize(
    "make",
    [lambda: pyroopt.Adam({"lr": 0.1}), lambda: pyroopt.ClippedAdam({"lr": 0.1})],
    ids=["Adam", "ClippedAdam"],
)
def test_autograd_refuses_a_graph_that_saved_a_parameter_then_changed(monkeypatch, flat, make):
    monkeypatch.setattr(rule_bucket, "FLAT_MAX_AVG_NUMEL", 1 << 30 if flat else 0)
    calls = []
    for name in ("adam_update", "clipped_adam_update"):
        real = getattr(native_adam, name)
        monkeypatch.setattr(
            f"pyroopt.kernels.{'adam' if name == 'adam_update' else 'clipped_adam'}.{name}",
            lambda *a, real=real, **k: calls.append(1) or real(*a, **k),
        )
    pyro.clear_param_store()
    param = torch.randn(5, requires_grad=True)
    optim = make()
    loss = (param * param).sum()  # saves param for backward
    param.grad = torch.ones(5)
    optim([param])
    assert calls  # the native loop ran
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_clipped_adam_rule_is_native():
    assert ClippedAdamRule.has_native and ADAM.has_native
