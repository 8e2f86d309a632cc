"""Each private torch name behind pyroopt._compat, and its fallback with the name removed."""

from __future__ import annotations

import importlib

import pytest
import torch

from pyroopt import _compat


@pytest.mark.parametrize("default", [torch.float32, torch.float64])
@pytest.mark.parametrize("private", [True, False], ids=["private", "fallback"])
def test_get_scalar_dtype(monkeypatch, default, private):
    if not private:
        monkeypatch.delattr(importlib.import_module("torch.optim.optimizer"), "_get_scalar_dtype")
    old = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        assert _compat.get_scalar_dtype() == default
    finally:
        torch.set_default_dtype(old)


def test_storage_use_count(monkeypatch):
    count = _compat.storage_use_count()
    assert count is not None
    t = torch.zeros(3)
    assert count(t.untyped_storage()._cdata) >= 1
    monkeypatch.delattr(torch._C, "_storage_Use_Count")
    assert _compat.storage_use_count() is None


def test_seating_works_without_use_count(monkeypatch):
    monkeypatch.delattr(torch._C, "_storage_Use_Count")
    import pyroopt.seating

    seating = importlib.reload(pyroopt.seating)
    try:
        assert seating._use_count is None
        assert seating._raw_count(torch.zeros(2)) == 0
    finally:
        monkeypatch.undo()
        importlib.reload(pyroopt.seating)


@pytest.mark.parametrize("mode", ["list", "one-tensor", "fallback"])
def test_increment_version(monkeypatch, mode):
    real = torch._C._increment_version
    if mode == "fallback":
        monkeypatch.delattr(torch._C, "_increment_version")
    elif mode == "one-tensor":  # older torch: one tensor per call

        def one(t):
            if isinstance(t, list):
                raise TypeError("expected Tensor")
            real([t])

        monkeypatch.setattr(torch._C, "_increment_version", one)
    ts = [torch.tensor([-0.0, float("nan"), 2.5]), torch.ones(2)]
    before = [t._version for t in ts]
    _compat.increment_version(ts)
    assert [t._version for t in ts] == [v + 1 for v in before]
    assert torch.equal(ts[1], torch.ones(2))
    assert torch.signbit(ts[0][0]) and torch.isnan(ts[0][1]) and ts[0][2] == 2.5
