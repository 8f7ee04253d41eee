"""The package's shape: layers import only downward, and no class or function outgrows a read.

The layering is stated in ``trio_balancer/__init__.py`` (``LAYERS``); this walks every import
statement of every module, top level and inside functions alike, so a lazy import cannot hide
an upward dependency. Sizes follow the house rule: no class over ~300 lines, no function over
~80, unless its docstring says why it cannot be split.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import trio_balancer

PACKAGE = Path(trio_balancer.__file__).parent
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 80
# What a docstring must say for a longer class or function to be let through.
SIZE_REASON = "cannot be split"


def layer_of(module: str) -> int:
    """The layer index of ``trio_balancer.x.y`` (by its first component ``x``)."""
    top = module.split(".")[1] if module.count(".") else "__init__"
    for index, names in enumerate(trio_balancer.LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module}: not in any layer of trio_balancer.LAYERS")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of ours in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("trio_balancer")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not target.startswith("trio_balancer"):
                continue
            if target == "trio_balancer":  # from trio_balancer import x: x is the module
                found += [
                    (node.lineno, f"trio_balancer.{a.name}") for a in node.names if a.name != "__version__"
                ]
            else:
                found.append((node.lineno, target))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path: Path) -> None:
    name = module_name(path)
    if name == "trio_balancer":
        return
    mine = layer_of(name)
    upward = [
        f"line {line}: {target} (layer {layer_of(target)} > {mine})"
        for line, target in imports_of(path)
        if layer_of(target) > mine
    ]
    assert upward == [], f"{name} imports upward: {upward}"


def test_no_import_cycle_between_modules() -> None:
    """Within a layer imports may go sideways, but never round in a circle."""
    graph: dict[str, set[str]] = {}
    names = {module_name(p) for p in MODULES}
    for path in MODULES:
        deps = set()
        for _line, target in imports_of(path):
            while target not in names and "." in target:
                target = target.rsplit(".", 1)[0]  # from pkg.mod import name: the module
            if target in names and target != module_name(path):
                deps.add(target)
        graph[module_name(path)] = deps
    # A package's __init__ that re-exports its modules is not a cycle with them.
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def oversized(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            limit = MAX_CLASS_LINES
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            limit = MAX_FUNCTION_LINES
        else:
            continue
        assert node.end_lineno is not None
        lines = node.end_lineno - node.lineno + 1
        doc = ast.get_docstring(node) or ""
        if lines > limit and SIZE_REASON not in doc:
            out.append(f"{node.name} ({lines} lines, line {node.lineno})")
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_class_or_function_outgrows_a_read(path: Path) -> None:
    assert oversized(path) == []


SANS_IO = ("protocol", "policy")
# (socket is not listed: policy/auth parses address spellings with socket.inet_aton, no I/O.)
IO_LIBRARIES = ("trio", "httpx", "hypercorn", "h11", "sqlite3", "psycopg", "redis", "prometheus_client")


@pytest.mark.parametrize(
    "path",
    [p for p in MODULES if p.relative_to(PACKAGE).parts[0] in SANS_IO],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_sans_io_layers_import_no_io_library(path: Path) -> None:
    """protocol/ and policy/ take bytes, events and a clock; they never reach for a socket."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and not node.level
            else []
        )
        found += [n for n in names if n.split(".")[0] in IO_LIBRARIES]
    assert found == []


def test_tools_are_imported_by_the_cli_only() -> None:
    importers = {
        module_name(p)
        for p in MODULES
        for _line, target in imports_of(p)
        if target.startswith("trio_balancer.tools") and not module_name(p).startswith("trio_balancer.tools")
    }
    assert importers <= {"trio_balancer.cli"}
