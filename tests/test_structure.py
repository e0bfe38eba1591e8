"""The package's shape: no import cycle, and no module reaches into another's private names
(issue 15). Read from the source with ast, so that imports inside functions count too."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "relprop"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str):
    """(imported module, names taken from it, line) for every import in module ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    here = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], node.lineno


def _edges(name: str) -> set[str]:
    """The package modules ``name`` imports: ``from . import x`` names module x where x is one."""
    out = set()
    for target, names, _ in _imports(name):
        submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
        if submodules:
            out.update(submodules)
        elif target in MODULES:
            out.add(target)
    out.discard(name)
    return out


def test_the_package_has_no_import_cycle():
    graph = {name: _edges(name) for name in MODULES}
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"
    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names():
    found = []
    for name in MODULES:
        for target, names, line in _imports(name):
            if not target.startswith("relprop"):
                continue
            for imported in names:
                if imported.startswith("_") and not imported.startswith("__"):
                    found.append(f"{name}:{line} imports {target}.{imported}")
        tree = ast.parse(MODULES[name].read_text())
        aliases = {a.asname or a.name for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and (node.level or
                                                             (node.module or "").startswith(
                                                                 "relprop"))
                   for a in node.names}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{name}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert not found, "\n".join(found)


def test_the_checks_see_what_they_look_for(tmp_path):
    """The walker finds relative imports, imports inside functions and package-level names."""
    assert "relprop.explainer" in _edges("relprop.propagation")
    assert "relprop.rules.registry" in _edges("relprop.rules.rap")
    assert "relprop.serve" in _edges("relprop.cli.serve")  # imported inside a function
    assert "relprop.api" in _edges("relprop")
