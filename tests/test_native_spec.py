"""One spec per native loop (pyroopt.native.specs): the Python struct and the C struct come
from one field list, are filled and read by name, and a library laid out otherwise is
refused; the per-tensor coefficients the loops compute from step counts in C are the bits
of torch's (and pyro's) Python expressions."""

from __future__ import annotations

import ctypes
import dataclasses
import math
import random
import struct

import pytest

from pyroopt import native
from pyroopt.kernels import adagrad, adagrad_rmsprop, adam, clipped_adam
from pyroopt.native import _spec, specs

#: the decays the brief of issue 30 names, and a few of no particular form
BETAS = (0.0, 0.5, 0.9, 0.999, 0.9999, 0.3, 0.99, 0.123456789)


def _swapped(spec: _spec.Spec, first: str, second: str) -> _spec.Spec:
    """``spec`` with two of its fields trading places."""
    fields = list(spec.fields)
    names = [field.name for field in fields]
    i, j = names.index(first), names.index(second)
    fields[i], fields[j] = fields[j], fields[i]
    return dataclasses.replace(spec, fields=tuple(fields))


@pytest.fixture
def library():
    lib = native.library()
    assert lib is not None, native.unavailable_reason()
    return lib


@pytest.mark.parametrize("spec", specs.ALL, ids=lambda spec: spec.name)
def test_every_spec_is_the_layout_the_library_was_built_with(spec, library):
    spec.check_layout(library)


def test_two_swapped_fields_of_one_type_are_refused(library):
    swapped = _swapped(specs.ADAM, "beta1", "beta2")  # two doubles: ctypes cannot tell
    with pytest.raises(_spec.LayoutMismatch, match=r"'beta1'.*'beta2'.*another spec"):
        swapped.check_layout(library)


def test_a_field_more_or_less_is_refused(library):
    shorter = dataclasses.replace(specs.SGD, fields=specs.SGD.fields[:-1])
    with pytest.raises(_spec.LayoutMismatch, match="pyroopt_sgd_args"):
        shorter.check_layout(library)


def test_a_library_built_from_another_spec_is_not_loaded(monkeypatch):
    """A stale library (its specs since edited) is refused at load, with the reason, and
    every rule then runs its chain of torch ops."""
    built = native.build()
    swapped = _swapped(specs.RMSPROP, "alpha", "eps")
    monkeypatch.setattr(
        specs, "ALL", tuple(swapped if s is specs.RMSPROP else s for s in specs.ALL)
    )
    monkeypatch.setattr(native, "build", lambda: built)
    native._load.cache_clear()
    try:
        assert native.library() is None
        reason = native.unavailable_reason()
        assert reason is not None and "pyroopt_rmsprop_args" in reason and "'alpha'" in reason
    finally:
        native._load.cache_clear()


def test_an_edited_spec_is_another_library(monkeypatch):
    """The generated struct is part of the library's hash: an edit rebuilds it."""
    cc = native.compiler()
    assert cc is not None
    before = native.library_path(cc)
    swapped = _swapped(specs.ADAGRAD, "lr", "lr_decay")
    monkeypatch.setattr(
        specs, "ALL", tuple(swapped if s is specs.ADAGRAD else s for s in specs.ALL)
    )
    assert native.library_path(cc) != before
    assert (
        "double lr_decay; /* learning-rate decay */\n    double lr;"
        in (native.generated_sources()["pyroopt_specs.h"])
    )


def test_the_struct_is_filled_by_name():
    values = {field.name: 0 for field in specs.SGD.all_fields}
    values.update(lr=0.25, momentum=0.5, fresh=None, params=None, grads=None, numels=None)
    values["momentum_buffers"] = None
    packed = specs.SGD.pack(values)
    assert (packed.lr, packed.momentum, packed.dampening) == (0.25, 0.5, 0.0)
    misspelt = {("learning_rate" if k == "lr" else k): v for k, v in values.items()}
    with pytest.raises(TypeError, match="missing: lr; unknown: learning_rate"):
        specs.SGD.pack(misspelt)


def test_every_loop_takes_its_tensors_params_first_and_grads_second():
    for spec in specs.ALL:
        assert spec.tensors[:2] == ("params", "grads"), spec.name
        assert len(spec.names) == len(spec.all_fields), spec.name  # no name twice


# -- the coefficients ------------------------------------------------------------------


def _steps() -> list[int]:
    """Every count to 2000, and 3000 sampled up to 100000 (seeded)."""
    sampled = random.Random(30).sample(range(2001, 100_001), 3000)
    return [*range(1, 2001), *sorted(sampled)]


def _c_functions(library):
    double = ctypes.c_double
    adam_c = library.pyroopt_adam_coefficients
    adam_c.argtypes = [double] * 4 + [ctypes.POINTER(double)] * 2
    adam_c.restype = None
    for name, count in (
        ("pyroopt_clipped_adam_neg_step_size", 4),
        ("pyroopt_adagrad_neg_lr", 3),
        ("pyroopt_adagrad_rmsprop_neg_lr", 3),
    ):
        getattr(library, name).argtypes = [double] * count
        getattr(library, name).restype = double
    return adam_c


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


@pytest.mark.parametrize("beta1", BETAS)
def test_adam_and_clipped_adam_coefficients_are_the_bits_of_the_python_expressions(beta1, library):
    adam_c = _c_functions(library)
    out = (ctypes.c_double(), ctypes.c_double())
    for lr in (1e-3, 0.1):
        for beta2 in BETAS:
            group = {"lr": lr, "betas": (beta1, beta2)}
            for step in _steps():
                # torch.optim.Adam's single-tensor expressions, its step a float
                t = float(step)
                bias_correction1 = 1 - beta1**t
                bias_correction2 = 1 - beta2**t
                step_size = lr / bias_correction1
                bias_correction2_sqrt = bias_correction2**0.5
                torchs = (_bits(-step_size), _bits(bias_correction2_sqrt))
                assert tuple(map(_bits, adam.coefficients(group, step))) == torchs
                for _ in range(2):  # computed, then from the memo
                    adam_c(lr, beta1, beta2, t, *map(ctypes.byref, out))
                    assert (_bits(out[0].value), _bits(out[1].value)) == torchs, (group, step)
                # pyro's ClippedAdam, its step an int
                pyros = -(lr * math.sqrt(1 - beta2**step) / (1 - beta1**step))
                assert _bits(clipped_adam.step_size(group, step)) == _bits(pyros)
                for _ in range(2):
                    ours = library.pyroopt_clipped_adam_neg_step_size(lr, beta1, beta2, t)
                    assert _bits(ours) == _bits(pyros), (group, step)


def test_adagrad_and_adagrad_rmsprop_rates_are_the_bits_of_the_python_expressions(library):
    _c_functions(library)
    for lr in (1e-2, 0.1, 0.7):
        for lr_decay in (0.0, 0.01, 1e-4, 0.3):
            group = {"lr": lr, "lr_decay": lr_decay}
            for step in _steps():
                t = float(step)
                torchs = lr / (1 + (t - 1) * lr_decay)  # torch.optim.Adagrad's clr
                assert _bits(adagrad.learning_rate(group, step)) == _bits(torchs)
                ours = library.pyroopt_adagrad_neg_lr(lr, lr_decay, t)
                assert _bits(ours) == _bits(-torchs), (group, step)
    for eta in (1.0, 0.5, 0.01):
        for delta in (1e-16, 0.1, 0.0, 0.25):
            group = {"eta": eta, "delta": delta}
            for step in _steps():
                pyros = eta * (step ** (-0.5 + delta))  # pyro's AdagradRMSProp, int step
                assert _bits(adagrad_rmsprop.learning_rate(group, step)) == _bits(pyros)
                for _ in range(2):
                    ours = library.pyroopt_adagrad_rmsprop_neg_lr(eta, delta, float(step))
                    assert _bits(ours) == _bits(-pyros), (group, step)
