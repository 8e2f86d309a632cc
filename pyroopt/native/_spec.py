"""One declaration of each native loop's arguments, matched by name on both sides.

Every loop's C entry, ``pyroopt_<name>_f32`` and ``pyroopt_<name>_f64``, takes one
pointer to a struct ``pyroopt_<name>_args``. Its fields are declared once, as a
:class:`Spec` (:mod:`pyroopt.native.specs`), and from that one list come

- the C declaration of the struct (:func:`c_header`), generated into the build as
  ``pyroopt_specs.h`` and hashed into the library's name, so the C code reads each
  field by its name;
- the :class:`ctypes.Structure` the Python side fills (:attr:`Spec.structure`), by name:
  :meth:`Spec.pack` refuses a missing or unknown name, so two values of one type cannot
  trade places unnoticed, as positional arguments could;
- the layout the C compiler gave the struct (each field's name, offset and size),
  which the library exports (``pyroopt_<name>_layout``, :func:`c_layouts`) and
  :meth:`Spec.check_layout` compares with the Structure's at load: a library built
  from another declaration is refused, naming the first field that differs.

The rule sources are compiled once per dtype through a two-line file per source and
dtype (:func:`c_instances`; see :file:`element.h`).

Example::

    >>> spec = Spec("pyroopt_example", "example.c", (Field("params", TENSORS, "parameters"),
    ...     Field("grads", TENSORS, "gradients"), Field("lr", DOUBLE, "learning rate")))
    >>> [field.name for field in spec.all_fields]  # doctest: +NORMALIZE_WHITESPACE
    ['n_tensors', 'numels', 'params', 'grads', 'lr', 'n_threads', 'min_per_thread']
    >>> spec.pack({"n_tensors": 0, "numels": None, "params": None, "grads": None,
    ...            "lr": 0.1, "n_threads": 1, "min_per_thread": 1}).lr
    0.1
    >>> spec.pack({"lr": 0.1, "learning_rate": 0.1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: pyroopt_example takes n_tensors, ...; missing: ..., params; unknown: learning_rate
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    """A field's type: its ctypes type and its C declaration."""

    ctype: Any
    c_type: str


#: one data pointer per tensor (the C code casts it to its element type)
TENSORS = Kind(ctypes.POINTER(ctypes.c_void_p), "void *const *")
#: one ``int64_t`` per tensor
INT64S = Kind(ctypes.POINTER(ctypes.c_int64), "const int64_t *")
#: one flag per tensor
FLAGS = Kind(ctypes.POINTER(ctypes.c_ubyte), "const unsigned char *")
DOUBLE = Kind(ctypes.c_double, "double")
INT = Kind(ctypes.c_int, "int")
INT64 = Kind(ctypes.c_int64, "int64_t")
#: a function's address, or NULL
FUNCTION = Kind(ctypes.c_void_p, "void *")


@dataclass(frozen=True)
class Field:
    """One argument of a loop: its name (in C and in Python), kind and meaning."""

    name: str
    kind: Kind
    doc: str


#: the fields every loop takes before its own: the tensors' count and element counts
LEADING = (
    Field("n_tensors", INT64, "tensors in the call"),
    Field("numels", INT64S, "elements of each tensor"),
)
#: the square root every loop with roots takes (after its own fields)
ROOT = Field("root", FUNCTION, "torch's vector square root (vmsSqrt/vmdSqrt), or NULL: libm's")
#: the fields every loop takes last: how to split the call over threads (parallel.h)
TRAILING = (
    Field("n_threads", INT, "threads the call may use"),
    Field("min_per_thread", INT64, "elements per thread, at least"),
)


class _LayoutEntry(ctypes.Structure):
    """One field of a layout the library exports: ``{name, offset, size}``, ending with a
    NULL name."""

    _fields_ = [("name", ctypes.c_char_p), ("offset", ctypes.c_int64), ("size", ctypes.c_int64)]


class LayoutMismatch(RuntimeError):
    """The library's struct is not laid out as its spec says."""


@dataclass(frozen=True)
class Spec:
    """The arguments of the C loop ``{name}_f32`` / ``{name}_f64`` in ``source``.

    ``fields`` are the loop's own, in order; its tensor lists (kind :data:`TENSORS`) are
    the parameters first and the gradients second. :attr:`all_fields` adds the
    :data:`LEADING` and :data:`TRAILING` fields every loop takes (and :data:`ROOT` where
    ``root``).
    """

    name: str
    source: str
    fields: tuple[Field, ...]
    root: bool = False

    @functools.cached_property
    def all_fields(self) -> tuple[Field, ...]:
        return (*LEADING, *self.fields, *((ROOT,) if self.root else ()), *TRAILING)

    @functools.cached_property
    def names(self) -> frozenset[str]:
        return frozenset(field.name for field in self.all_fields)

    @functools.cached_property
    def tensors(self) -> tuple[str, ...]:
        """The names of the tensor lists, in order."""
        return tuple(field.name for field in self.fields if field.kind is TENSORS)

    @functools.cached_property
    def structure(self) -> type[ctypes.Structure]:
        """The :class:`ctypes.Structure` of the loop's arguments."""
        fields = [(field.name, field.kind.ctype) for field in self.all_fields]
        return type(f"{self.name}_args", (ctypes.Structure,), {"_fields_": fields})

    @property
    def c_struct(self) -> str:
        return f"{self.name}_args"

    def pack(self, values: Mapping[str, Any]) -> ctypes.Structure:
        """The arguments struct, every field given by name; a ``TypeError`` names the
        fields missing or unknown."""
        if values.keys() != self.names:
            missing, unknown = self.names - values.keys(), values.keys() - self.names
            said = [
                f"{what}: {', '.join(sorted(names))}"
                for what, names in (("missing", missing), ("unknown", unknown))
                if names
            ]
            order = ", ".join(field.name for field in self.all_fields)
            raise TypeError(f"{self.name} takes {order}; {'; '.join(said)}")
        return self.structure(**values)

    def check_layout(self, lib: ctypes.CDLL) -> None:
        """Raise :class:`LayoutMismatch` unless the library lays the struct out as
        :attr:`structure` does: the same fields, in the same order, at the same offsets,
        of the same sizes."""
        function = getattr(lib, f"{self.name}_layout", None)
        if function is None:
            raise LayoutMismatch(f"the library exports no layout of {self.c_struct}")
        function.argtypes = []
        function.restype = ctypes.POINTER(_LayoutEntry)
        entries = function()
        theirs: list[tuple[str, int, int]] = []
        while entries[len(theirs)].name is not None:
            entry = entries[len(theirs)]
            theirs.append((entry.name.decode(), entry.offset, entry.size))
        ours = [
            (
                field.name,
                getattr(self.structure, field.name).offset,
                getattr(self.structure, field.name).size,
            )
            for field in self.all_fields
        ]
        for index, (mine, built) in enumerate(zip(ours, theirs, strict=False)):
            if mine != built:
                raise LayoutMismatch(
                    f"{self.c_struct} field {index}: the library has {built[0]!r} at offset "
                    f"{built[1]} ({built[2]} bytes), the spec {mine[0]!r} at offset "
                    f"{mine[1]} ({mine[2]} bytes); the library was built from another spec"
                )
        if len(ours) != len(theirs):
            raise LayoutMismatch(
                f"{self.c_struct}: the library has {len(theirs)} fields, the spec {len(ours)}"
            )


#: the element types every rule source is compiled for: (suffix, PYROOPT_DOUBLE)
DTYPES = (("f32", 0), ("f64", 1))
_GENERATED = "Generated by pyroopt/native/_spec.py from pyroopt/native/specs.py; do not edit."


def c_header(specs: Sequence[Spec]) -> str:
    """``pyroopt_specs.h``: the argument struct of every loop, and its entries."""
    lines = [f"/* {_GENERATED} */", "#ifndef PYROOPT_SPECS_H", "#define PYROOPT_SPECS_H", ""]
    lines += ["#include <stdint.h>", ""]
    for spec in specs:
        lines.append("typedef struct {")
        lines += [f"    {_declaration(f)}; /* {f.doc} */" for f in spec.all_fields]
        lines += [f"}} {spec.c_struct};", ""]
        lines += [f"int {spec.name}_{suffix}(const {spec.c_struct} *args);" for suffix, _ in DTYPES]
        lines.append("")
    return "\n".join([*lines, "#endif", ""])


def _declaration(field: Field) -> str:
    """``double lr``, ``const int64_t *numels``."""
    between = "" if field.kind.c_type.endswith("*") else " "
    return f"{field.kind.c_type}{between}{field.name}"


def c_layouts(specs: Sequence[Spec]) -> str:
    """``pyroopt_specs.c``: every struct's layout as the compiler laid it out, exported
    as ``{name}_layout()``."""
    lines = [f"/* {_GENERATED} */", "#include <stddef.h>", "", '#include "pyroopt_specs.h"', ""]
    lines += ["typedef struct {", "    const char *name;", "    int64_t offset, size;"]
    lines += ["} pyroopt_layout_entry;", ""]
    for spec in specs:
        struct = spec.c_struct
        lines.append(f"const pyroopt_layout_entry *{spec.name}_layout(void) {{")
        lines.append("    static const pyroopt_layout_entry entries[] = {")
        lines += [
            f'        {{"{f.name}", offsetof({struct}, {f.name}), '
            f"sizeof((({struct} *)0)->{f.name})}},"
            for f in spec.all_fields
        ]
        lines += ["        {NULL, 0, 0}};", "    return entries;", "}", ""]
    return "\n".join(lines)


def c_instances(specs: Sequence[Spec]) -> dict[str, str]:
    """The file that compiles each rule source for each dtype, by file name."""
    sources = sorted({spec.source for spec in specs})
    return {
        f"{source.removesuffix('.c')}_{suffix}.c": (
            f'/* {_GENERATED} */\n#define PYROOPT_DOUBLE {double}\n#include "{source}"\n'
        )
        for source in sources
        for suffix, double in DTYPES
    }


def generated_files(specs: Sequence[Spec]) -> dict[str, str]:
    """Every file the build generates from ``specs``, by name."""
    return {
        "pyroopt_specs.h": c_header(specs),
        "pyroopt_specs.c": c_layouts(specs),
        **c_instances(specs),
    }
