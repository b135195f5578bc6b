"""The module import graph of `pipeline`: no import cycle anywhere in it.

The graph is read from the source (ast), counting the imports inside functions
too - they run when the function does, so a cycle through them is a cycle all
the same; only `if TYPE_CHECKING:` imports are left out (never run). The lazy
subcommand table of `pipeline.cli` ("module:attribute" strings) adds its edges.

`python tests/unit/test_import_graph.py` prints every cycle in `pipeline`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "pipeline"


def module_files(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package under `root`."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (anywhere in its code)."""
    modules = module_files(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set()
        for imported in _imported_names(tree, name, is_package=is_package):
            target = _nearest_module(imported, modules)
            if target is not None and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _imported_names(tree: ast.Module, module: str, *, is_package: bool) -> Iterator[str]:
    """Dotted names a module imports: `from a import b` yields a.b (module b, or a name in a)."""
    skipped = {id(node) for node in _type_checking_blocks(tree)}
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if id(node) in skipped:
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package=is_package)
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _type_checking_blocks(tree: ast.Module) -> Iterable[ast.If]:
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield node


def _absolute(node: ast.ImportFrom, module: str, *, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if not is_package:
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _nearest_module(dotted: str, modules: Mapping[str, Path]) -> str | None:
    """The module a dotted name lives in (a.b.name -> a.b), if it is one of ours."""
    parts = dotted.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def with_lazy_subcommands(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph plus pipeline.cli -> each module its subcommand table loads."""
    from pipeline.cli import SUBCOMMANDS

    loaded = {entry.target.partition(":")[0] for entry in SUBCOMMANDS.values()}
    return {**graph, "pipeline.cli": graph["pipeline.cli"] | loaded}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                lowlink[node] = min(lowlink[node], lowlink[target])
            elif target in on_stack:
                lowlink[node] = min(lowlink[node], index[target])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _is_command_line(module: str) -> bool:
    return module.startswith(("pipeline.cli", "pipeline.harness.cli", "pipeline.console"))


def test_the_command_line_is_in_no_import_cycle() -> None:
    graph = with_lazy_subcommands(import_graph())
    assert "pipeline.cli.run" in graph["pipeline.cli"]  # the lazy table is counted

    in_cycles = [cycle for cycle in cycles(graph) if any(map(_is_command_line, cycle))]

    assert in_cycles == []


def test_pipeline_has_no_import_cycle() -> None:
    """Application code reaches Celery through the Dispatcher port and Services lives
    in pipeline.ports.services, so no use case imports the tasks or the composition root."""
    graph = with_lazy_subcommands(import_graph())

    assert cycles(graph) == []


HARNESS = ("pipeline.harness", "pipeline.testing")
#: What the inner layers may not import: the use cases see ports, never adapters,
#: Celery, the composition root or the command line.
OUTER = ("pipeline.adapters", "pipeline.runtime", "pipeline.bootstrap", "pipeline.cli")


def test_the_core_never_imports_the_harness() -> None:
    """The product (domain, ports, app, adapters, runtime, bootstrap, cli) works from a
    plain install; the harness builds on it. The CLI names the harness subcommands only
    in its lazy table (strings), loaded when one of them runs."""
    graph = import_graph()

    into_harness = {
        module: sorted(t for t in targets if t.startswith(HARNESS))
        for module, targets in graph.items()
        if not module.startswith(HARNESS)
    }

    assert {m: t for m, t in into_harness.items() if t} == {}
    assert any(m.startswith("pipeline.harness.") for m in graph)  # the rule has something to check


def test_domain_ports_and_use_cases_import_no_outer_layer() -> None:
    graph = import_graph()
    layers = ("pipeline.domain", "pipeline.ports", "pipeline.app")
    inner = [m for m in graph if m.startswith(layers)]

    outward = {m: sorted(t for t in graph[m] if t.startswith(OUTER)) for m in inner}

    assert "pipeline.app.stages" in inner
    assert {m: t for m, t in outward.items() if t} == {}


def test_importing_the_use_cases_loads_no_client_library() -> None:
    """The use cases import Services from pipeline.ports.services, not the composition root,
    and the parsers load pypdf / python-docx only to parse: no Redis, Celery, SQL or
    document library comes with an import of the application code."""
    probe = (
        "import sys\n"
        "import pipeline.app.intake, pipeline.app.monolith, pipeline.app.queue_processor\n"
        "import pipeline.app.admin, pipeline.app.dead_letters\n"
        "import pipeline.app.report\n"
        "import pipeline.app.stages\n"
        "heavy = ('redis', 'celery', 'sqlalchemy', 'pypdf', 'docx', 'fakeredis')\n"
        "print(','.join(name for name in heavy if name in sys.modules))\n"
    )

    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=PACKAGE_ROOT.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    assert loaded == ""


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import helper\n")
    (package / "b.py").write_text("def helper():\n    from . import a\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
    )

    graph = import_graph(package)

    assert graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.c"] == set()  # TYPE_CHECKING imports never run
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in conftest.py, tests/helpers.py or pipeline.testing: importing
    a test module runs its collection-time code and ties unrelated tests together."""
    tests_root = PACKAGE_ROOT.parent / "tests"
    offenders = []
    for path in sorted(tests_root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            if any(name.split(".")[-1].startswith("test_") for name in names if "tests" in name):
                offenders.append(f"{path.relative_to(tests_root)}:{node.lineno}")

    assert offenders == []


if __name__ == "__main__":
    sys.path.insert(0, str(PACKAGE_ROOT.parent))
    for cycle in cycles(with_lazy_subcommands(import_graph())):
        print(" <-> ".join(cycle))


def test_every_module_says_what_it_is() -> None:
    """scripts/layout_tree.py prints the layout from these docstrings (the README's map)."""
    undocumented = [
        name
        for name, path in module_files().items()
        if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    ]

    assert undocumented == []
