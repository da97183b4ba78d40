"""The codebase's own rules, checked from the source: the linters and the type checker pass
(configured in pyproject.toml), modules and classes stay small, raw JSON reading stays in few
places, no import cycles and no imports hidden inside functions unless marked.

A function-level import is allowed only for an optional or heavy third-party module, with a
comment on its line saying so: `import guestfs  # optional: Debian's python3-guestfs`
(or `# heavy: ...`).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "osgtest_dag"
BIN = Path(sys.executable).parent

MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 250
MAX_JSON_LOADING_MODULES = 3
LAZY_IMPORT_MARKER = re.compile(r"#\s*(optional|heavy):\s*\S")
STAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES: dict[str, ast.Module] = {name: ast.parse(p.read_text(), str(p)) for name, p in SOURCES.items()}


def rel(name: str) -> str:
    return str(SOURCES[name].relative_to(ROOT))


def _run(*argv: str | Path) -> None:
    proc = subprocess.run([str(a) for a in argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(
            f"{Path(argv[0]).name} {' '.join(map(str, argv[1:]))} exited {proc.returncode}:\n"
            f"{proc.stdout}{proc.stderr}",
            pytrace=False,
        )


# --- the tools ---


def test_ruff_check_passes():
    _run(sys.executable, "-m", "ruff", "check", "osgtest_dag", "tests", "benchmarks")


def test_ruff_format_is_clean():
    _run(sys.executable, "-m", "ruff", "format", "--check", "osgtest_dag", "tests", "benchmarks")


def test_mypy_passes():
    _run(sys.executable, "-m", "mypy")  # its cache (.mypy_cache) makes a rerun take seconds


def test_import_layers_hold():
    # lint-imports reads the contracts in pyproject.toml; it checks function-level imports too.
    _run(BIN / "lint-imports")


# --- from the source alone ---


def test_no_module_over_the_line_limit():
    long = {rel(n): len(p.read_text().splitlines()) for n, p in SOURCES.items()}
    over = [f"{f}: {n} lines" for f, n in long.items() if n > MAX_MODULE_LINES]
    assert not over, "\n".join(over)


def test_no_class_over_the_line_limit():
    big = [
        f"{rel(n)}:{c.lineno}: class {c.name}: {c.end_lineno - c.lineno + 1} lines"
        for n, tree in TREES.items()
        for c in ast.walk(tree)
        if isinstance(c, ast.ClassDef) and (c.end_lineno or c.lineno) - c.lineno + 1 > MAX_CLASS_LINES
    ]
    assert not big, "\n".join(big)


def test_raw_json_reading_in_few_modules():
    readers = sorted(
        rel(n)
        for n, tree in TREES.items()
        if any(
            isinstance(c, ast.Call)
            and isinstance(c.func, ast.Attribute)
            and c.func.attr in ("load", "loads")
            and isinstance(c.func.value, ast.Name)
            and c.func.value.id == "json"
            for c in ast.walk(tree)
        )
    )
    assert len(readers) <= MAX_JSON_LOADING_MODULES, "json.load(s) in:\n" + "\n".join(readers)


def _imports(tree: ast.Module):
    """(import node, inside a function or class) for every import statement of a module."""

    def walk(node: ast.AST, nested: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, nested
            yield from walk(
                child,
                nested
                or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)),
            )

    yield from walk(tree, False)


def _imported_modules(name: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The project modules an import statement in module `name` loads."""
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name if SOURCES[name].name == "__init__.py" else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}".rstrip(".")
        # `from pkg import mod` loads pkg.mod; `from mod import name` loads mod.
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in SOURCES else base for a in node.names]
    found = []
    for t in targets:
        while t and t not in SOURCES:
            t = t.rpartition(".")[0]
        if t and t != name:
            found.append(t)
    return found


def import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(SOURCES)
    for name, tree in TREES.items():
        for node, _ in _imports(tree):
            for target in _imported_modules(name, node):
                graph.add_edge(name, target, line=node.lineno)
    return graph


def test_import_graph_sees_imports_inside_functions(tmp_path):
    tree = ast.parse("import os\n\ndef f():\n    from osgtest_dag.base import errors\n")
    ((node, nested),) = [(n, nested) for n, nested in _imports(tree) if isinstance(n, ast.ImportFrom)]
    assert nested and _imported_modules("osgtest_dag.base.paths", node) == ["osgtest_dag.base.errors"]


def cycles(graph: nx.DiGraph) -> list[str]:
    """Each strongly connected component of more than one module, as its import edges."""
    out = []
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            sub = graph.subgraph(component)
            out.append(
                ", ".join(f"{a} -> {b} (line {sub.edges[a, b]['line']})" for a, b in sorted(sub.edges))
            )
    return out


def test_cycles_are_found():
    graph = nx.DiGraph(
        [("a", "b", {"line": 1}), ("b", "c", {"line": 2}), ("c", "a", {"line": 3}), ("c", "d", {"line": 4})]
    )
    assert cycles(graph) == ["a -> b (line 1), b -> c (line 2), c -> a (line 3)"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "\n".join(found)


@pytest.mark.parametrize("stage", STAGES)
def test_imports_inside_functions_are_optional_and_marked(stage):
    bad = []
    for name, tree in TREES.items():
        if not name.startswith(f"osgtest_dag.{stage}."):
            continue
        lines = SOURCES[name].read_text().splitlines()
        for node, nested in _imports(tree):
            if not nested:
                continue
            text = "\n".join(lines[node.lineno - 1 : node.end_lineno])
            where = f"{rel(name)}:{node.lineno}: {lines[node.lineno - 1].strip()}"
            if _imported_modules(name, node):
                bad.append(f"{where}  (project module: import it at the top)")
            elif not LAZY_IMPORT_MARKER.search(text):
                bad.append(f"{where}  (no `# optional: ...` or `# heavy: ...` comment)")
    assert not bad, "\n".join(bad)
