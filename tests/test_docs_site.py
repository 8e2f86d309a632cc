"""The docs site a Pyro user starts from, as built: every public parameter described,
a landing page with the install commands and an example, a footer that names the site.

Reads the HTML that ``make docs`` writes to docs/_build/html (``make test`` builds it
before running pytest) and compares it with pyroopt's public signatures: every name in
``pyroopt.__all__`` and ``pyroopt.torch.__all__`` and each of their public methods must
be in the reference, and every parameter of everything the reference shows must have
a description there.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import itertools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import pyroopt
import pyroopt.torch

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "docs" / "_build" / "html"
README = ROOT / "README.md"
#: the issue's bound: under half of the 23,636 characters the README once had
README_MAX_CHARS = 11_800
#: pages whose text is ours to keep free of dated narrative
USER_DOCS = ("README.md", "docs/index.md", "docs/api.rst", "docs/benchmarks.rst")
DIARY = re.compile(r"\b(today|tonight|yesterday|this (morning|afternoon|session))\b", re.I)
PUBLIC_MODULES = (pyroopt, pyroopt.torch)
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


# -- a small HTML tree ----------------------------------------------------------------------
@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def elements(self) -> list[Node]:
        return [c for c in self.children if isinstance(c, Node)]

    def walk(self) -> Iterator[Node]:
        for child in self.elements():
            yield child
            yield from child.walk()


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = Node("document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def page(name: str) -> Node:
    path = HTML / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make docs` (`make test` does)")
    builder = _TreeBuilder()
    builder.feed(path.read_text(encoding="utf-8"))
    return builder.root


def pages() -> list[str]:
    return sorted(
        str(p.relative_to(HTML))
        for p in HTML.rglob("*.html")
        if not p.relative_to(HTML).parts[0].startswith("_")
    )


def squash(text: str) -> str:
    return " ".join(text.split())


# -- what the reference says ----------------------------------------------------------------
@dataclass
class Entry:
    """One object's description in the reference: its anchors and its parameters."""

    ids: list[str]
    page: str
    #: parameter name (stars stripped) -> its description ("" when there is none)
    params: dict[str, str]


def _parameters_field(body: Node) -> dict[str, str]:
    """The Parameters field of a description's body (not of its members' bodies)."""
    for fields in body.elements():
        if fields.tag != "dl" or "field-list" not in fields.classes:
            continue
        items = fields.elements()
        for term, definition in itertools.pairwise(items):
            if term.tag == "dt" and term.text().strip().startswith("Parameters"):
                described = {}
                rows = [n for n in definition.walk() if n.tag == "li"] or [definition]
                for row in rows:
                    name = next((n.text() for n in row.walk() if n.tag == "strong"), "")
                    _, dash, description = squash(row.text()).partition(" \u2013 ")
                    described[name.lstrip("*")] = description.strip() if dash else ""
                return described
    return {}


def reference_entries() -> list[Entry]:
    entries = []
    for name in pages():
        for node in page(name).walk():
            if node.tag != "dl" or "py" not in node.classes:
                continue
            children = node.elements()
            ids = [c.attrs["id"] for c in children if c.tag == "dt" and c.attrs.get("id")]
            body = next((c for c in children if c.tag == "dd"), None)
            if ids and body is not None:
                entries.append(Entry(ids, name, _parameters_field(body)))
    return entries


def resolve(dotted: str) -> Any:
    """The object a documented name names, or None (an instance attribute, a module)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def is_ours(obj: Any) -> bool:
    return (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__.startswith(
        "pyroopt"
    )


def parameter_names(obj: Any) -> list[str]:
    """What a caller passes: the signature's parameters without ``self``."""
    names = list(inspect.signature(obj).parameters)
    if names and names[0] in ("self", "cls") and not inspect.isclass(obj):
        names = names[1:]
    return names


def public_objects() -> list[tuple[str, Any]]:
    """Every public function and class, and the public methods pyroopt defines on them."""
    found = []
    for module in PUBLIC_MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            private = name.startswith("_")  # an alias kept for code that names it
            if private or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            found.append((f"{module.__name__}.{name}", obj))
            if inspect.isclass(obj):
                for attr in sorted(dir(obj)):
                    method = getattr(obj, attr)
                    public = not attr.startswith("_") or attr == "__call__"
                    if public and inspect.isfunction(method) and is_ours(method):
                        found.append((f"{module.__name__}.{name}.{attr}", method))
    return found


@pytest.fixture(scope="module")
def entries() -> list[Entry]:
    return reference_entries()


@pytest.fixture(scope="module")
def entries_by_object(entries: list[Entry]) -> dict[int, list[tuple[str, Entry]]]:
    by_object: dict[int, list[tuple[str, Entry]]] = {}
    for entry in entries:
        for anchor in entry.ids:
            obj = resolve(anchor)
            if is_ours(obj):
                by_object.setdefault(id(obj), []).append((anchor, entry))
    return by_object


# -- the reference --------------------------------------------------------------------------
def test_every_public_name_and_method_is_in_the_reference(entries_by_object):
    missing = [name for name, obj in public_objects() if id(obj) not in entries_by_object]
    assert not missing, f"not in the API reference (run `make docs` after a change): {missing}"


def test_every_parameter_the_reference_shows_is_described(entries_by_object):
    problems = []
    for documented in entries_by_object.values():
        for anchor, entry in documented:
            obj = resolve(anchor)
            expected = parameter_names(obj)
            for param in expected:
                if not entry.params.get(param):
                    problems.append(f"{anchor}: parameter {param!r} has no description")
            for param in sorted(set(entry.params) - set(expected)):
                problems.append(f"{anchor}: describes {param!r}, which it does not take")
    assert not problems, "\n".join(problems)


def test_the_reference_opens_with_pyro_optim_and_ends_with_pyroopt_torch(entries):
    anchors = [e.ids[0] for e in entries if e.page == "api.html"]
    assert anchors[0] == "pyroopt.PyroOptim"
    assert anchors[-1].startswith("pyroopt.torch.")
    assert anchors.index("pyroopt.PyroOptim.save") < anchors.index("pyroopt.Adam")
    assert anchors.index("pyroopt.Adam") < anchors.index("pyroopt.StepLR")


def test_the_parameters_field_is_read_as_the_reference_shows_it():
    html = (
        '<dl class="py function"><dt class="sig sig-object py" id="m.f">f</dt><dd>'
        '<dl class="field-list simple"><dt class="field-odd">Parameters</dt>'
        '<dd class="field-odd"><ul><li><p><strong>a</strong> (<em>int</em>) \u2013 the a.</p>'
        "</li><li><p><strong>*args</strong> (<em>Any</em>)</p></li></ul></dd></dl></dd></dl>"
    )
    builder = _TreeBuilder()
    builder.feed(html)
    (dl,) = [n for n in builder.root.walk() if n.tag == "dl" and "py" in n.classes]
    assert _parameters_field(dl.elements()[1]) == {"a": "the a.", "args": ""}


# -- the landing page and every page's footer -----------------------------------------------
def test_the_landing_page_has_the_install_commands_and_an_example():
    index = page("index.html")
    blocks = [n for n in index.walk() if n.tag == "div" and "highlight" in n.classes]
    code = [n.text() for n in blocks]
    assert any("make install" in c and "make test" in c for c in code), code
    python = [n.text() for n in index.walk() if "highlight-python" in n.classes]
    assert any("import pyroopt" in c and "SVI(" in c and "svi.step(" in c for c in python)


def test_the_landing_page_is_the_readme_user_guide():
    text = squash(page("index.html").text())
    guide = README.read_text().split("<!-- end of the user guide")[0]
    for heading in re.findall(r"^#+ (.+)$", guide, flags=re.M):
        assert squash(heading.replace("`", "")) in text, heading
    assert "Where to go next" in text


@pytest.mark.parametrize("name", ["index.html", "api.html", "benchmarks.html"])
def test_the_footer_names_the_site(name):
    (footer,) = [n for n in page(name).walk() if "footer" in n.classes]
    text = squash(footer.text())
    assert "pyroopt" in text, text
    assert not re.search(r"©\s*\.", text), f"an empty copyright: {text!r}"


# -- the README -----------------------------------------------------------------------------
def test_the_readme_is_short_and_keeps_the_two_commands_ci_runs():
    text = README.read_text()
    assert len(text) < README_MAX_CHARS, len(text)
    assert "make install" in text and "make test" in text


@pytest.mark.parametrize("name", USER_DOCS)
def test_the_user_docs_state_facts_not_a_diary(name):
    found = [m.group(0) for m in DIARY.finditer((ROOT / name).read_text())]
    assert not found, f"{name}: {found}"


def test_the_extension_examples_hold():
    spec = importlib.util.spec_from_file_location("api_params", ROOT / "docs" / "api_params.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert doctest.testmod(module).failed == 0
