"""The pyro.optim -> pyroopt name map, generated from the installed pyro.

``python docs/pyro_map.py > docs/pyro_optim.rst`` writes the mapping page;
tests/test_docs_map.py checks that every name of ``pyro.optim.__all__`` and
``pyro.optim.multi`` has a row and that each named counterpart exists.
"""

from __future__ import annotations

import inspect

import pyro.optim
import pyro.optim.multi

SAME = "same arguments and numbers; all parameters stepped together"
# Names whose counterpart or difference is not the default (same name, SAME).
SPECIAL = {
    "LRScheduler": ("pyroopt.LRScheduler", "torch's base class; defines no schedule"),
    "_LRScheduler": (
        "pyroopt._LRScheduler",
        "torch's old name of its base class; defines no schedule",
    ),
    "HorovodOptimizer": (
        "pyroopt.HorovodOptimizer",
        "one collective per step over a flat buffer; no Adasum; "
        "get horovod with ``python -m pyroopt.horovod_build``",
    ),
    "PyroOptim": ("pyroopt.PyroOptim", "adds skip_nonfinite and track_grad_norms keywords"),
    "PyroLRScheduler": ("pyroopt.PyroLRScheduler", SAME),
}


def pyro_names() -> list[tuple[str, str]]:
    """(module, name) for every name users reach in pyro.optim and pyro.optim.multi."""
    names = [("pyro.optim", n) for n in sorted(pyro.optim.__all__)]
    multi = pyro.optim.multi
    for n, obj in sorted(vars(multi).items()):
        # its classes and functions, its own or imported (newton_step), not typing's
        public = not n.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
        if public and getattr(obj, "__module__", "") != "typing":
            names.append(("pyro.optim.multi", n))
    return names


def mapping() -> list[tuple[str, str, str]]:
    rows = []
    for module, name in pyro_names():
        default_target = "pyroopt.multi." + name if module.endswith("multi") else "pyroopt." + name
        target, diff = SPECIAL.get(name, (default_target, SAME))
        rows.append((f"{module}.{name}", target, diff))
    return rows


def render() -> str:
    lines = [
        "pyro.optim to pyroopt",
        "=====================",
        "",
        f"Generated from pyro-ppl {pyro.__version__}.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 30 30 40",
        "",
        "   * - pyro",
        "     - pyroopt",
        "     - what differs",
    ]
    for pyro_name, target, diff in mapping():
        lines += [f"   * - ``{pyro_name}``", f"     - ``{target}``", f"     - {diff}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
