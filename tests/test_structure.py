"""The package's structure, read from the source (no import is executed): the module import graph
has no cycle, no module imports another's private names, and the library never imports the apps.

Every import counts, also one inside a function: a lazy import that closes a cycle still ties the
two modules together. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else
to the package's ``__init__``; a package's ``__init__`` depends on what it imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("invdiff", "operators")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package_of(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str):
    """(line, target module, imported names) of every import of ``name``'s source, resolved."""
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name).split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target, [a.name for a in node.names]


def _ours(target: str) -> bool:
    return target.split(".")[0] in PACKAGES


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for _, target, names in _imports(m):
            if not _ours(target):
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if subs:
                edges[m].update(subs)
            if len(subs) < len(names) or not names:
                edges[m].add(target if target in MODULES else target.rpartition(".")[0])
        edges[m].discard(m)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return out


def test_the_graph_reader_finds_a_cycle():
    """The checker itself: a two-module cycle and a three-module one are found, a chain is not."""
    mods = sorted(MODULES)[:3]
    assert len(mods) == 3
    a, b, c = mods
    assert cycles({a: {b}, b: {c}, c: {a}}) == [sorted([a, b, c])]
    assert cycles({a: {b}, b: {c}, c: set()}) == []
    assert "invdiff.apps.app" in graph()["invdiff.apps.cli"]


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles between modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_private_names_imported_from_another_module():
    """No ``from x import _y`` of a private name defined in another module, and no private module
    (``_x.py``) imported from outside its own package."""
    bad = []
    for m in MODULES:
        for line, target, names in _imports(m):
            if not _ours(target):
                continue
            for n in names:
                if n.startswith("_") and f"{target}.{n}" not in MODULES:
                    bad.append(f"{m}:{line} imports {target}.{n}")
            for module in [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES] or [target]:
                parts = module.split(".")
                for i, part in enumerate(parts):
                    if part.startswith("_") and not part.startswith("__"):
                        owner = ".".join(parts[:i])
                        if not (m == owner or m.startswith(owner + ".")):
                            bad.append(f"{m}:{line} imports the private module {'.'.join(parts[: i + 1])}")
    assert not bad, "\n".join(bad)


def test_the_library_does_not_import_the_apps():
    edges = graph()
    bad = [f"{m} -> {t}" for m, ts in edges.items() if not m.startswith("invdiff.apps") for t in ts
           if t.startswith("invdiff.apps")]
    assert not bad, bad
