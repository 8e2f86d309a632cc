"""The native loops check themselves against torch before they are trusted.

pyroopt's C loops reproduce, operation for operation, the roundings of torch's
single-tensor optimizers and of MKL's square root. A torch or MKL release that rounds
one operation differently would take every pyroopt user silently off pyro.optim's
numbers, so before a loop runs in a process, :func:`reason_off` runs it next to torch's
own optimizer for its rule (``foreach=False``; pyro's ClippedAdam and AdagradRMSProp)
and compares every parameter, state tensor and (where the loop writes them) gradient
bit for bit, after every step, on inputs chosen to find a difference:

- tensors of 0, 1, 7, 17, 63, 257 and 1031 elements in one call (vector bodies, scalar
  tails, the 256-element blocks of the square root), run on 1 thread, and every second
  step on 2 with the thread boundary inside a tensor;
- +-0, subnormals, values whose square overflows, +-inf and NaN of both signs, in the
  gradients and the parameters (raw bits are compared, so a NaN's sign bit counts);
- every option of the loop (amsgrad, maximize, L2 and decoupled weight decay, momentum,
  dampening and nesterov, centered, lr_decay, ...), and both branches of torch's
  ``lerp`` (weights below and above 0.5);
- :data:`STEPS` steps, so that bias corrections and running averages act, one tensor a
  step behind the others (its own step count in the same call).

A loop that differs is turned off for that dtype: :func:`pyroopt.native._entry.typed`
returns ``None`` for it, and its rule runs the chain of torch ops, exact by
construction. The verdict (:data:`SAME`, or the first difference: where, ours, torch's,
the options) is kept next to the library under a name that carries the CPU model,
torch's build, MKL's identity and whatever else it depends on
(:func:`pyroopt.native.verdict_path`), so that each loop is checked once per machine and
build: by ``python -m pyroopt.native``, or on its first use. A check takes 50-300 ms per
loop and dtype on two busy cores (most of it waiting for the team of two), and the first
in a process also imports ``torch._dynamo``, as the first step of any torch optimizer
does (2-4 s).

Example::

    >>> import torch
    >>> from pyroopt.native import selfcheck
    >>> reason = selfcheck.reason_off("pyroopt_sgd", torch.float32)
    >>> reason is None or reason.startswith("pyroopt_sgd_f32 ")
    True
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.optim.adagrad_rmsprop import AdagradRMSProp
from pyro.optim.clipped_adam import ClippedAdam
from torch import Tensor
from torch.optim import Optimizer

from pyroopt import native
from pyroopt.kernels.base import Batch, UpdateRule
from pyroopt.native import _entry, _newton_root, specs
from pyroopt.native._spec import Spec
from pyroopt.registry import RULES

#: the verdict of a loop that computed what torch computed
SAME = "same"
#: elements of the tensors of one call: empty, a lone element, tails shorter than any
#: vector, 63 = 3 * 16 + 15, 257 = one square-root block + 1, 1031 = 4 blocks + 7
SIZES = (0, 1, 7, 17, 63, 257, 1031)
#: the tensor that skips the first step, so that one call mixes step counts
LATE = 4
#: steps per option variant: from the second on, the state and bias corrections act
STEPS = 3
#: the loops' ``threads`` argument, step by step (cycled): a team of 2 costs microseconds
#: on an idle machine, tens of milliseconds a call where other processes hold the cores
THREADS = (1, 2)
#: elements per thread in the check, so that 2 threads split the 1376 elements
#: inside the 1031-element tensor
MIN_NUMEL_PER_THREAD = 256


@dataclass(frozen=True)
class Case:
    """One option variant of a loop: torch's (or pyro's) optimizer class and its arguments."""

    reference: type[Optimizer]
    options: Mapping[str, Any]

    @property
    def rule(self) -> UpdateRule:
        """pyroopt's rule for the reference class: its native update is what is checked."""
        return RULES[self.reference]

    def build(self, params: Sequence[Tensor]) -> Optimizer:
        """The reference optimizer over ``params``, on torch's single-tensor path."""
        constructor: Any = self.reference  # its own keyword arguments, not Optimizer's
        if self.reference.__module__.startswith("torch.optim"):
            return constructor(params, **self.options, foreach=False)
        return constructor(params, **self.options)

    def __str__(self) -> str:
        module = self.reference.__module__.rsplit(".", 1)[0]  # torch.optim, pyro.optim
        options = ", ".join(f"{key}={value!r}" for key, value in self.options.items())
        return f"{module}.{self.reference.__name__}({options})"


@dataclass(frozen=True)
class Loop:
    """A C loop (``{name}_f32``, ``{name}_f64``) and the cases it is checked on; each
    case's rule steps it (:meth:`~pyroopt.kernels.base.UpdateRule.native_update`)."""

    spec: Spec
    cases: tuple[Case, ...]
    #: whether the loop writes the gradients (ClippedAdam clamps them, as pyro does)
    writes_grads: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


def _cases(reference: type[Optimizer], *variants: Mapping[str, Any]) -> tuple[Case, ...]:
    return tuple(Case(reference, variant) for variant in variants)


_ADAM, _ADAMW = torch.optim.Adam, torch.optim.AdamW
#: betas[0] = 0.9 puts lerp's weight 1 - beta1 below 0.5, 0.3 above it
LOOPS: dict[str, Loop] = {
    loop.name: loop
    for loop in (
        Loop(
            specs.SGD,
            _cases(
                torch.optim.SGD,
                {"lr": 0.05},
                {"lr": 0.05, "weight_decay": 0.01, "maximize": True},
                {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01},
                {"lr": 0.05, "momentum": 0.9, "nesterov": True, "maximize": True},
                {"lr": 0.05, "momentum": 0.5, "nesterov": True, "weight_decay": 0.01},
            ),
        ),
        Loop(
            specs.ADAM,
            (
                *_cases(
                    _ADAM,
                    {"lr": 0.01},
                    {"lr": 0.01, "betas": (0.3, 0.999), "amsgrad": True, "maximize": True},
                    {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True},
                    {"lr": 0.01, "betas": (0.3, 0.9), "weight_decay": 0.1, "maximize": True},
                ),
                *_cases(
                    _ADAMW,
                    {"lr": 0.01, "weight_decay": 0.1},
                    {"lr": 0.01, "betas": (0.3, 0.99), "weight_decay": 0.1, "amsgrad": True},
                    {"lr": 0.01, "weight_decay": 0.0, "maximize": True},
                ),
            ),
        ),
        Loop(
            specs.CLIPPED_ADAM,
            _cases(
                ClippedAdam,
                {"lr": 0.01},
                {"lr": 0.01, "clip_norm": 0.5, "lrd": 0.9, "weight_decay": 0.1},
                {"lr": 0.01, "betas": (0.3, 0.9), "clip_norm": 2.0, "centered_variance": True},
            ),
            writes_grads=True,
        ),
        Loop(
            specs.RMSPROP,
            _cases(
                torch.optim.RMSprop,
                {"lr": 0.01},
                {"lr": 0.01, "alpha": 0.3, "centered": True, "momentum": 0.5, "maximize": True},
                {"lr": 0.01, "centered": True, "weight_decay": 0.1},
                {"lr": 0.01, "alpha": 0.3, "momentum": 0.5, "weight_decay": 0.1},
                {"lr": 0.01, "eps": 0.5, "centered": True, "momentum": 0.2, "maximize": True},
            ),
        ),
        Loop(
            specs.RPROP,
            _cases(
                torch.optim.Rprop,
                {"lr": 0.01},
                {"lr": 0.01, "etas": (0.3, 1.5), "step_sizes": (1e-4, 0.05), "maximize": True},
            ),
        ),
        Loop(
            specs.ADAGRAD,
            _cases(
                torch.optim.Adagrad,
                {"lr": 0.05},
                {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.1, "maximize": True},
                {"lr": 0.05, "initial_accumulator_value": 0.2, "eps": 0.3},
                {"lr": 0.05, "lr_decay": 0.01, "initial_accumulator_value": 0.2, "maximize": True},
            ),
        ),
        Loop(
            specs.ADAGRAD_RMSPROP,
            _cases(
                AdagradRMSProp,
                {"eta": 1.0, "t": 0.1, "delta": 1e-16},
                {"eta": 0.5, "t": 0.5, "delta": 0.1},
                {"eta": 1.0, "t": 0.0},
            ),
        ),
    )
}

#: the rules that run each loop, as ``python -m pyroopt.native`` reports them
RULE_LOOPS = (
    ("torch.optim.SGD", specs.SGD.name),
    ("torch.optim.Adam", specs.ADAM.name),
    ("torch.optim.AdamW", specs.ADAM.name),
    ("torch.optim.RMSprop", specs.RMSPROP.name),
    ("torch.optim.Rprop", specs.RPROP.name),
    ("torch.optim.Adagrad", specs.ADAGRAD.name),
    ("ClippedAdam", specs.CLIPPED_ADAM.name),
    ("AdagradRMSProp", specs.ADAGRAD_RMSPROP.name),
)


# -- inputs ------------------------------------------------------------------------------

_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


def _nans(dtype: torch.dtype) -> tuple[float, float]:
    """A NaN with its sign bit clear and one with it set (as tensors keep them)."""
    nan = torch.tensor([math.nan], dtype=dtype)
    return nan.item(), torch.neg(nan).item()


def _values(n: int, seed: int, dtype: torch.dtype, specials_at: Sequence[int]) -> Tensor:
    """``n`` random values with +-0, subnormals and values whose square overflows among
    them, and +-inf and NaNs of both signs at ``specials_at`` (where they fit)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=dtype)
    info = torch.finfo(dtype)
    x[::5] = 0.0
    x[1::9] = -0.0
    x[2::13] *= info.tiny  # subnormal
    x[3::17] *= 4 * math.sqrt(info.max)  # most squares overflow
    x[4::11] *= 1000.0
    nan, negative_nan = _nans(dtype)
    for index, value in zip(specials_at, (nan, -math.inf, negative_nan, math.inf), strict=True):
        if -n <= index < n:
            x[index] = value  # a float keeps a NaN's sign bit into the tensor
    return x


def _initial_params(dtype: torch.dtype) -> list[Tensor]:
    """The parameters before the first step, with special values of their own."""
    return [_values(n, 1000 + k, dtype, (9, 10, 11, -6)) for k, n in enumerate(SIZES)]


def _gradients(step: int, dtype: torch.dtype) -> list[Tensor]:
    """Step ``step``'s gradients: special values in the vector body and in the tail, at
    places that move from step to step."""
    return [
        _values(n, 10 * step + k, dtype, (3 + step, -1 - step, 16 + 2 * step, -3 - 2 * step))
        for k, n in enumerate(SIZES)
    ]


# -- running and comparing -------------------------------------------------------------


class _OnThreads:
    """A C loop called on ``threads`` threads with :data:`MIN_NUMEL_PER_THREAD`: the
    fields every loop takes last (:func:`pyroopt.native._entry.run_loop`)."""

    def __init__(self, function: Any, threads: int) -> None:
        self.function = function
        self.threads = threads

    def __call__(self, args: Any) -> int:
        args.n_threads = self.threads
        args.min_per_thread = MIN_NUMEL_PER_THREAD
        return int(self.function(args))


def _format(value: Tensor) -> str:
    """A value and its bits: ``-nan (0xffc00000)``."""
    bits = int(value.view(_BITS[value.dtype]).item()) % (1 << (8 * value.element_size()))
    number = value.item()
    text = repr(number)
    if math.isnan(number):
        text = "-nan" if bits >> (8 * value.element_size() - 1) else "nan"
    return f"{text} ({bits:#0{2 + 2 * value.element_size()}x})"


def _first_difference(ours: Tensor, theirs: Tensor) -> str | None:
    """``"[index]: ours ..., torch's ..."`` where the bits first differ, or ``None``.

    A NaN matches any NaN: the check guards roundings, and torch's own NaN payloads are
    not a function of the values (its ``maximum`` returns one NaN in its vector body and
    another in its scalar tail, and ``add`` of two NaNs keeps the one of its operand
    order), so no loop can follow them in every layout. The sign of a NaN under
    ``maximize``, which does follow the values, is held by the test suite.
    """
    a, b = ours.view(_BITS[ours.dtype]), theirs.view(_BITS[theirs.dtype])
    differ = (a != b) & ~(ours.isnan() & theirs.isnan())
    if not differ.any():
        return None
    index = int(differ.nonzero()[0].item())
    return f"[{index}]: ours {_format(ours[index])}, torch's {_format(theirs[index])}"


class _Ours:
    """The loop's side of a run: parameters, state, step counts, last gradients."""

    def __init__(self, function: Any, inits: Sequence[Tensor], keys: Sequence[str]) -> None:
        self.function = function
        self.params = [p.clone() for p in inits]
        self.state = {key: [torch.zeros_like(p) for p in inits] for key in keys}
        self.counts = [0] * len(inits)
        self.grads: dict[int, Tensor] = {}

    def step(self, grads: Sequence[Tensor | None], threads: int, group: Any, case: Case) -> bool:
        """One step of the tensors that have a gradient, through the loop's Python entry."""
        active = [k for k, g in enumerate(grads) if g is not None]
        for k, g in enumerate(grads):
            if g is not None:
                self.counts[k] += 1
                self.grads[k] = g.clone()
        on_threads = _OnThreads(self.function, threads)
        batch = Batch(
            [self.params[k] for k in active],
            [self.grads[k] for k in active],
            {key: [ts[k] for k in active] for key, ts in self.state.items()},
            [self.counts[k] for k in active],
        )
        return case.rule.native_update(batch, group, function_for=lambda dtype: on_threads)

    def difference(self, loop: Loop, reference: Optimizer, theirs: Sequence[Tensor]) -> str | None:
        """Where this side first differs from ``reference``, or ``None``."""
        for k, p in enumerate(theirs):
            pairs = [("param", self.params[k], p.detach())]
            if self.counts[k]:
                state = reference.state[p]
                pairs += [(key, self.state[key][k], state[key]) for key in self.state]
                if loop.writes_grads and p.grad is not None:
                    pairs.append(("grad", self.grads[k], p.grad))
            for what, ours, torchs in pairs:
                found = _first_difference(ours, torchs)
                if found:
                    return f"tensor {k} ({SIZES[k]} elements), {what}{found}"
        return None


def _run_case(loop: Loop, case: Case, dtype: torch.dtype, function: Any) -> str | None:
    """The first difference between the loop and ``case``'s optimizer, or ``None``."""
    inits = _initial_params(dtype)
    theirs = [p.clone() for p in inits]
    reference = case.build(theirs)
    group = reference.param_groups[0]
    ours = _Ours(function, inits, case.rule.state_keys(group))
    for step in range(STEPS):
        grads: list[Tensor | None] = list(_gradients(step, dtype))
        if step == 0:
            grads[LATE] = None
        for p, g in zip(theirs, grads, strict=True):
            p.grad = None if g is None else g.clone()
        reference.step()
        threads = THREADS[step % len(THREADS)]
        where = f"at step {step + 1} on {threads} thread{'s' * (threads > 1)}"
        if not ours.step(grads, threads, group, case):
            return f"declined the check's tensors ({case}, {where})"
        found = ours.difference(loop, reference, theirs)
        if found:
            return f"differs from {case} {where}, {found}"
    return None


def check(loop: Loop, dtype: torch.dtype, function: Any) -> str:
    """Run the C ``function`` (``loop`` in ``dtype``) next to torch's optimizer on every
    case: :data:`SAME`, or ``"{name}_{suffix} differs from ..."``: the first difference."""
    # the reference makes its state where torch's default device says
    device = torch.device("cpu") if torch.get_default_device().type != "cpu" else nullcontext()
    with torch.inference_mode(False), torch.no_grad(), device:
        for case in loop.cases:
            found = _run_case(loop, case, dtype, function)
            if found:
                return f"{loop.name}_{_entry.SUFFIXES[dtype]} {found}"
    return SAME


# -- verdicts ----------------------------------------------------------------------------


@functools.cache
def _sources_digest() -> str:
    """A hash of the Python side of the loops, of the rules that call them
    (:mod:`pyroopt.kernels`) and of this check (the C side is in the library's name)."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for source in sorted([*here.glob("*.py"), *(here.parent / "kernels").glob("*.py")]):
        digest.update(source.parent.name.encode() + b"/" + source.name.encode() + b"\0")
        digest.update(source.read_bytes())
    return digest.hexdigest()


def verdict_path(name: str, dtype: torch.dtype) -> Path:
    """Where the verdict on loop ``name`` in ``dtype`` is kept: it depends, besides what
    every verdict depends on (:func:`pyroopt.native.verdict_path`), on pyro's version (its
    ClippedAdam and AdagradRMSProp are the references), the CPU kernels torch dispatches
    to, whether the loops take float32 roots in line, and the sources of the loops'
    Python side, of the rules that call them and of this check.

    Found once per loop, dtype and loaded library in a process (it hashes the
    library's sources: about a millisecond, which every new bucket would pay).
    """
    lib = native.library()
    key = (name, dtype, lib)
    path = _PATHS.get(key)
    if path is None:
        in_line = lib is not None and _newton_root.reason_off(lib) is None
        path = _PATHS[key] = native.verdict_path(
            f"selfcheck-{name}_{_entry.SUFFIXES[dtype]}",
            native.build(),
            f"pyro {pyro.__version__}",
            f"torch CPU kernels {native.torch_cpu_capability()}",
            f"in-line root {'on' if in_line else 'off'}",
            _sources_digest(),
        )
    return path


#: verdict paths found in this process, by loop, dtype and library
_PATHS: dict[tuple[str, torch.dtype, Any], Path] = {}


#: verdicts read or made in this process, by path (they hold where none can be kept)
_VERDICTS: dict[Path, str] = {}
#: seconds each check that ran in this process took, by (loop, dtype)
CHECK_SECONDS: dict[tuple[str, torch.dtype], float] = {}
_LOCK = threading.Lock()


def reason_off(name: str, dtype: torch.dtype) -> str | None:
    """``None`` if the loop ``name`` may run in ``dtype`` here; else why not: the library
    is missing, the loops are not compiled for ``dtype``, or the self-check found a
    difference (``"{name}_{suffix} differs from ..."``).

    Reads the kept verdict, or runs :func:`check` and keeps its verdict. A check that
    fails to run turns the loop off for this process only.
    """
    loop = LOOPS[name]
    if dtype not in _entry.SUFFIXES:
        return f"no {name} loop is compiled for {dtype}"
    function = _entry.unchecked(loop.spec, dtype)
    if function is None:
        return f"no library: {native.unavailable_reason()}"
    path = verdict_path(name, dtype)
    with _LOCK:
        verdict = _VERDICTS.get(path) or native.read_verdict(path)
        if not verdict:
            start = time.perf_counter()
            try:
                verdict = check(loop, dtype, function)
            except Exception as error:  # an unchecked loop must not run
                _VERDICTS[path] = f"the self-check of {name} could not run: {error!r}"
                return _VERDICTS[path]
            CHECK_SECONDS[name, dtype] = time.perf_counter() - start
            native.keep_verdict(path, verdict)
        _VERDICTS[path] = verdict
    return None if verdict == SAME else verdict


#: the dtypes ``python -m pyroopt.native`` reports on
REPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def implementation(name: str, dtype: torch.dtype) -> str:
    """What runs a rule whose loop is ``name`` on CPU tensors of ``dtype`` here, and why
    (running the loop's self-check if its verdict is not kept yet)."""
    if dtype not in _entry.SUFFIXES:
        return "torch-op chain: dtype not compiled (the loops are float32 and float64)"
    if native.library() is None:
        return f"torch-op chain: no library ({native.unavailable_reason()})"
    reason = reason_off(name, dtype)
    if reason is not None:
        return f"torch-op chain: self-check mismatch: {reason}"
    return f"native loop {name}_{_entry.SUFFIXES[dtype]} ({native.vector_clone()} clone)"


def report() -> list[str]:
    """One line per rule and dtype: which implementation runs and why."""
    width = max(len(rule) for rule, _ in RULE_LOOPS)
    return [
        f"{rule:<{width}}  {str(dtype).removeprefix('torch.'):<8}  {implementation(name, dtype)}"
        for rule, name in RULE_LOOPS
        for dtype in REPORTED_DTYPES
    ]
