"""A description for every parameter in the API reference (a Sphinx extension).

autodoc lists each parameter of a signature with its type; a parameter the docstring
does not describe shows a type and nothing else. This extension (loaded by
``docs/conf.py``) adds a ``:param name:`` field for every parameter a docstring leaves
out, taking the text from the first of:

1. :data:`DESCRIPTIONS`, keyed by the defining function's module and qualified name;
2. the same parameter of the method or class it overrides or inherits from, within
   pyroopt (``Newton.get_step`` from ``MultiOptimizer.get_step``,
   ``pyroopt.torch.ClippedAdam`` from ``pyroopt.optimizers.ClippedAdam``);
3. for a factory (a function returning a ``PyroOptim`` or ``PyroLRScheduler``),
   :data:`FACTORY_ARGUMENTS`, a short form of the class's text that links to it, and
   for ``optim_args`` a text that names the torch class the factory wraps;
4. for a torch optimizer class, :data:`TORCH_ARGUMENTS`.

A parameter that none of these describe stays bare, and tests/test_docs_site.py fails.
Once a docstring describes a parameter itself, its own text wins.

The extension also resolves a reference to a public object by the module that defines
it (``pyroopt.optim.PyroOptim``) to the place where the reference documents it
(``pyroopt.PyroOptim``).

Example::

    >>> param_texts([":param x: the first", "    line.", ":param \\\\*args: more", "", "Text."])
    {'x': 'the first line.', 'args': 'more'}
"""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

#: ``:param name:``, ``:param type name:`` or ``:param \*args:``, and its text
PARAM_FIELD = re.compile(r"^(\s*):param\s+(?:[^:]*\s)?(?:\\?\*){0,2}(\w+)\s*:(.*)$")
#: the first line of any field (``:param x:``, ``:raises ValueError:``, ``:return:`` ...),
#: not a line that opens with a role (``:class:`Adam```)
FIELD = re.compile(r"^:\w+(\s[^:`]*)?:(\s|$)")

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "pyroopt.lr_scheduler.is_scheduler": {
        "optimizer": "any object; a scheduler is one with an ``optimizer`` attribute, as "
        "torch's learning-rate schedulers have.",
    },
    "pyroopt.optim.PyroOptim.__call__": {
        "params": "the tensors to step (SVI passes the unconstrained parameters it just "
        "differentiated); a tensor without a ``.grad`` is not stepped.",
        "args": "passed on to the underlying torch optimizer's ``step``.",
        "kwargs": "passed on to the underlying torch optimizer's ``step``.",
    },
    "pyroopt.optim.PyroOptim.set_state": {
        "state_dict": "``{param_name: state}`` as :meth:`get_state` (pyroopt's or "
        "pyro.optim's) returns it.",
    },
    "pyroopt.optim.PyroOptim.save": {
        "filename": "the path to write; an existing file is replaced atomically.",
    },
    "pyroopt.optim.PyroOptim.load": {
        "filename": "a file written by :meth:`save` or by pyro.optim's ``save``.",
        "map_location": "where to put the loaded tensors, as for :func:`torch.load` "
        '(e.g. ``"cpu"``); ``None`` keeps the devices they were saved from.',
        "weights_only": "``True`` (the default) reads tensors and plain values only; "
        "``False`` unpickles any object, which can run code: only for files you trust.",
    },
    "pyroopt.lr_scheduler.PyroLRScheduler.step": {
        "args": "the metric for ``ReduceLROnPlateau`` (``step(loss)``); other schedules take none.",
        "kwargs": "the metric for ``ReduceLROnPlateau`` by keyword; other schedules take none.",
    },
    "pyroopt.distributed.reduce.DistributedPyroOptim.__call__": {
        "params": "the tensors to step; every worker passes the same parameters (by name, "
        "shape and dtype).",
        "args": "passed on to the wrapped optimizer's call.",
        "kwargs": "passed on to the wrapped optimizer's call.",
    },
    "pyroopt.distributed.reduce.DistributedPyroOptim.step": {
        "args": "the metric of a wrapped ``ReduceLROnPlateau`` (``step(loss)``), "
        "averaged over the workers before the schedule sees it; other schedules take none.",
        "kwargs": "the metric by keyword, as for ``args``.",
    },
    "pyroopt.distributed.reduce.DistributedPyroOptim.set_state": {
        "state_dict": "``{param_name: state}`` as :meth:`get_state` returns it; rank 0's "
        "is applied on every worker.",
    },
    "pyroopt.distributed.reduce.DistributedPyroOptim.save": {
        "filename": "the path to write (atomically, as :meth:`pyroopt.PyroOptim.save`).",
        "all_ranks": "write on every worker (e.g. to each host's local disk) instead of on "
        "rank 0 only.",
    },
    "pyroopt.distributed.reduce.DistributedPyroOptim.load": {
        "filename": "a file written by :meth:`save` (or by pyro.optim's ``save``); only "
        "rank 0 reads it.",
        "map_location": "as for :meth:`pyroopt.PyroOptim.load`.",
        "weights_only": "as for :meth:`pyroopt.PyroOptim.load`.",
    },
    "pyroopt.distributed.data.shard_bounds": {
        "n": "the number of items to split.",
        "rank": "the worker whose block to give, ``0 <= rank < world_size``.",
        "world_size": "the number of workers.",
    },
    "pyroopt.checkpoint.save_training": {
        "filename": "the path to write; an existing file is replaced atomically.",
        "optim": "the optimizer or scheduler whose state to save (anything with "
        "``get_state()``, pyroopt's or pyro.optim's).",
        "rng": "also save the states of torch's, Python's and NumPy's random generators.",
    },
    "pyroopt.checkpoint.load_training": {
        "filename": "a file written by :func:`save_training`.",
        "optim": "the optimizer or scheduler to give the file's optimizer state.",
        "map_location": "where to put the loaded tensors, as for :func:`torch.load`.",
        "weights_only": "``True`` (the default) reads tensors, plain values and "
        "constraint objects only; ``False`` unpickles any object, which can run code: only "
        "for files you trust.",
    },
    "pyroopt.torch._EngineOptimizer.step": {
        "closure": "optional; re-evaluates the model and returns the loss. It runs once, "
        "with gradients enabled, before any update.",
    },
    "pyroopt.torch._EngineOptimizer.add_param_group": {
        "param_group": 'a dict with ``"params"`` (the tensors) and any hyperparameters '
        "that differ from the optimizer's defaults, as for torch's ``add_param_group``.",
    },
    "pyroopt.optimizers.RuleOptimizer.step": {
        "closure": "optional; re-evaluates the model and returns the loss. It runs once, "
        "with gradients enabled, before any update.",
    },
}

#: The arguments every factory passes on to :class:`~pyroopt.PyroOptim` (whose
#: docstring holds the full text); ``optim_args`` is written per factory.
FACTORY_ARGUMENTS: dict[str, str] = {
    "clip_args": "gradient clipping: ``clip_norm`` and/or ``clip_value`` for each "
    "parameter, ``clip_global_norm`` over all of a step's gradients; see "
    ":class:`~pyroopt.PyroOptim`.",
    "skip_nonfinite": "skip a whole step when a gradient holds NaN or Inf; see "
    ":class:`~pyroopt.PyroOptim`.",
    "track_grad_norms": "record each gradient's norm for "
    ":meth:`~pyroopt.PyroOptim.grad_norms`; see :class:`~pyroopt.PyroOptim`.",
}

#: The arguments of torch's optimizer classes, for ``pyroopt.torch`` and
#: ``pyroopt.optimizers``, whose constructors are torch's (or pyro's).
TORCH_ARGUMENTS: dict[str, str] = {
    "params": "the tensors to optimize, as for any torch optimizer: an iterable of tensors "
    "(or of ``(name, tensor)`` pairs), or of dicts that each define a param group "
    '(``{"params": [...], "lr": ...}``).',
    "lr": "learning rate.",
    "betas": "coefficients :math:`(\\beta_1, \\beta_2)` of the running averages of the "
    "gradient and of its square.",
    "eps": "term added to the denominator for numerical stability.",
    "weight_decay": "weight decay: an L2 penalty ``weight_decay * param`` added to the "
    "gradient, or, where the decay is decoupled (``AdamW``, "
    "``decoupled_weight_decay=True``), the parameter multiplied by "
    "``1 - lr * weight_decay`` before the step.",
    "decoupled_weight_decay": "decay the parameter as ``AdamW`` does instead of adding an "
    "L2 penalty to the gradient.",
    "amsgrad": "use the AMSGrad variant: divide by the running maximum of the second-moment "
    "average.",
    "momentum": "momentum factor: the weight of the previous momentum buffer (``SGD``), or "
    "of the previous scaled step (``RMSprop``).",
    "dampening": "dampening for momentum: the gradient enters the buffer scaled by "
    "``1 - dampening``.",
    "nesterov": "use Nesterov momentum.",
    "alpha": "smoothing constant of the running average of squared gradients.",
    "centered": "divide by an estimate of the gradient's variance (the average of squares "
    "minus the square of the average) instead of the average of squares.",
    "etas": "``(eta_minus, eta_plus)``: the factors by which an element's step size "
    "shrinks when its gradient changes sign and grows when the sign persists.",
    "step_sizes": "``(minimum, maximum)`` of the step sizes.",
    "lr_decay": "learning-rate decay: step ``t`` uses ``lr / (1 + (t - 1) * lr_decay)``.",
    "initial_accumulator_value": "starting value of the sum of squared gradients.",
    "maximize": "maximize the objective instead of minimizing it.",
    "foreach": "``None`` (the default) steps through pyroopt's engine with the numbers of "
    "torch's default implementation; ``True`` or ``False`` runs torch's own foreach or "
    "for-loop implementation for the group.",
    "fused": "``None`` (the default) steps through pyroopt's engine; ``True`` runs torch's "
    "fused kernel for the group, which rounds differently from the default "
    "implementation.",
    "capturable": "as in torch (for CUDA graphs and ``torch.compile``); ``True`` runs "
    "torch's own implementation for the group.",
    "differentiable": "as in torch, let autograd run through the step; ``True`` runs "
    "torch's own implementation for the group.",
}


def resolve(dotted: str) -> Any:
    """The object a dotted name names: a module, then attributes.

    >>> resolve("pyroopt.PyroOptim.save").__qualname__
    'PyroOptim.save'
    """
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {dotted}")


def defined_name(obj: Any) -> str:
    """``module.qualname`` of a function or class: where its code is."""
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def public_path(cls: type) -> str:
    """The shortest import path that reaches ``cls`` (``torch.optim.Adam``, not
    ``torch.optim.adam.Adam``)."""
    parts = cls.__module__.split(".")
    for cut in range(1, len(parts) + 1):
        module = importlib.import_module(".".join(parts[:cut]))
        if getattr(module, cls.__name__, None) is cls:
            return f"{module.__name__}.{cls.__name__}"
    return defined_name(cls)


def parameter_names(obj: Any) -> list[str]:
    """The names of the parameters a caller passes (``self`` left out)."""
    try:
        params = list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return []
    if params and params[0] in ("self", "cls") and not inspect.isclass(obj):
        params = params[1:]
    return params


def param_texts(lines: list[str]) -> dict[str, str]:
    """``{name: text}`` of the ``:param`` fields in docstring ``lines``."""
    texts: dict[str, str] = {}
    current: str | None = None
    indent = 0
    for line in lines:
        field = PARAM_FIELD.match(line)
        if field:
            current, indent = field.group(2), len(field.group(1))
            texts[current] = field.group(3).strip()
        elif current and line.strip() and len(line) - len(line.lstrip()) > indent:
            texts[current] = f"{texts[current]} {line.strip()}".strip()
        else:
            current = None
    return texts


def _docstring_texts(obj: Any) -> dict[str, str]:
    doc = inspect.getdoc(obj) if obj is not None else None
    return param_texts(doc.splitlines()) if doc else {}


def _inherited_text(owner: type | None, obj: Any, param: str) -> str | None:
    """``param``'s text in the pyroopt class or method that ``obj`` overrides."""
    if inspect.isclass(obj):
        bases = obj.__mro__[1:]
        candidates = [base for base in bases if base.__module__.startswith("pyroopt")]
    elif owner is not None:
        name = getattr(obj, "__name__", "")
        candidates = [
            base.__dict__[name]
            for base in owner.__mro__[1:]
            if base.__module__.startswith("pyroopt") and name in base.__dict__
        ]
    else:
        candidates = []
    for candidate in candidates:
        text = _docstring_texts(candidate).get(param)
        if text:
            return text
    return None


def _factory_text(obj: Any, param: str) -> str | None:
    """``param``'s text for a factory: :data:`FACTORY_ARGUMENTS`, naming what it wraps."""
    from pyroopt import PyroLRScheduler, PyroOptim
    from pyroopt.factories import FACTORY_CLASSES

    if not inspect.isfunction(obj):
        return None
    returned = typing.get_type_hints(obj).get("return")
    if not (inspect.isclass(returned) and issubclass(returned, PyroOptim)):
        return None
    if param != "optim_args":
        return FACTORY_ARGUMENTS.get(param)
    if issubclass(returned, PyroLRScheduler):
        cls = FACTORY_CLASSES[obj]
        names = [n for n in inspect.signature(cls).parameters if n != "optimizer"]
        listed = ", ".join(f"``{n}``" for n in names)
        pairs = (
            " (``schedulers`` as ``(scheduler, kwargs)`` pairs)" if "schedulers" in names else ""
        )
        return (
            '``{"optimizer": a torch optimizer class, "optim_args": its arguments, '
            f"**kwargs}}``, where ``kwargs`` are the arguments of "
            f":class:`{public_path(cls)}`: {listed}{pairs}; see "
            ":class:`~pyroopt.PyroLRScheduler`."
        )
    # an optimizer factory builds nothing until its first step: ask it what it wraps
    cls = obj({}).pt_optim_constructor
    return (
        f"the keyword arguments of :class:`{public_path(cls)}`, as a dict or as a callable "
        "that returns one for each parameter name; see :class:`~pyroopt.PyroOptim`."
    )


def _torch_text(obj: Any, param: str) -> str | None:
    import torch

    if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer):
        return TORCH_ARGUMENTS.get(param)
    return None


def describe(owner: type | None, obj: Any, param: str) -> str | None:
    """The text for ``param`` of ``obj`` (a method of ``owner``, a class or a function)."""
    sources: list[Callable[[], str | None]] = [
        lambda: DESCRIPTIONS.get(defined_name(obj), {}).get(param),
        lambda: _inherited_text(owner, obj, param),
        lambda: _factory_text(obj, param),
        lambda: _torch_text(obj, param),
    ]
    for source in sources:
        text = source()
        if text:
            return text
    return None


def _insertion_point(lines: list[str]) -> int:
    """After the last field block of ``lines``, or at the end."""
    last = None
    for i, line in enumerate(lines):
        if FIELD.match(line):
            last = i
    if last is None:
        return len(lines)
    end = last + 1
    while end < len(lines) and lines[end].startswith((" ", "\t")):
        end += 1
    return end


def complete_params(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """autodoc-process-docstring: add a ``:param`` for each undescribed parameter."""
    if what not in ("class", "function", "method"):
        return
    described = set(param_texts(lines))
    owner = None
    if what == "method":
        owner = resolve(name.rpartition(".")[0])
    added = []
    for param in parameter_names(obj):
        if param in described:
            continue
        text = describe(owner, obj, param)
        if text:
            star = {"VAR_POSITIONAL": "\\*", "VAR_KEYWORD": "\\*\\*"}.get(
                inspect.signature(obj).parameters[param].kind.name, ""
            )
            added.append(f":param {star}{param}: {text}")
    if not added:
        return
    at = _insertion_point(lines)
    if at == len(lines) and lines and lines[-1].strip():
        added.insert(0, "")
    lines[at:at] = added


def _documented_names(env: Any) -> dict[int, str]:
    """``{id(object): name}`` of every object the reference documents (first name wins)."""
    domain = env.get_domain("py")
    cached = getattr(env, "_pyroopt_documented", None)
    if cached is not None and cached[0] == len(domain.objects):
        return cached[1]
    names: dict[int, str] = {}
    for documented, entry in sorted(domain.objects.items()):
        if entry.objtype == "module":
            continue
        try:
            names.setdefault(id(resolve(documented)), documented)
        except (ImportError, AttributeError):
            continue
    env._pyroopt_documented = (len(domain.objects), names)
    return names


def documented_name(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """missing-reference: ``pyroopt.optim.PyroOptim`` -> where ``PyroOptim`` is documented."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("pyroopt."):
        return None
    try:
        documented = _documented_names(env).get(id(resolve(target)))
    except (ImportError, AttributeError):
        return None
    if documented is None or documented == target:
        return None
    return env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], documented, node, contnode
    )


def setup(app: Any) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", complete_params)
    app.connect("missing-reference", documented_name)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
