"""The package's layers: what each part may import (also inside functions), no import circles, no god-modules."""

from __future__ import annotations

import ast
from pathlib import Path

import metaformer

ROOT = Path(metaformer.__file__).parent
# What each top-level part may import; the README's architecture section draws the same layers.
ALLOWED = {
    "errors": set(),
    "task_table": {"errors"},  # names its code as strings: it sits below everything that reads it
    "files": {"errors"},
    "data": {"errors", "files"},
    "models": {"errors", "data", "task_table"},  # the reference model only (the table checks a registered task)
    "fast": {"errors", "files", "models"},  # every other execution of it: a swap of its modules
    "engine": {"errors", "files", "data"},  # the training engine knows no model, format or task
    "checkpoints": {"errors", "files", "data", "models", "task_table"},
    "processor": {"data", "models"},
    "api": {"errors", "checkpoints", "models", "task_table"},
    "counts": {"api", "models"},
    "explain": {"errors", "models", "fast"},
    "tasks": {
        "errors",
        "files",
        "data",
        "models",
        "fast",
        "explain",
        "engine",
        "checkpoints",
        "processor",
        "api",
        "task_table",
    },
    "serve": {"errors", "files", "data", "models", "checkpoints", "processor", "api", "tasks", "explain", "task_table"},
}
ALLOWED["cli"] = set(ALLOWED)  # the command line is the top layer: it may use every part
LONGEST_MODULE = 400  # lines


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``metaformer`` module ``path`` imports, at the top or inside functions."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("metaformer")}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if target.startswith("metaformer"):
                found.add(target)
                found |= {f"{target}.{alias.name}" for alias in node.names}
    modules = {module_name(p) for p in ROOT.rglob("*.py")}
    return {name for name in found if name in modules}


def graph() -> dict[str, set[str]]:
    # Every import runs metaformer/__init__.py first anyway: an edge to it says nothing.
    return {module_name(p): imports_of(p) - {module_name(p), "metaformer"} for p in ROOT.rglob("*.py")}


def part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def test_each_part_imports_only_the_layers_below_it():
    wrong = []
    for module, targets in graph().items():
        source = part(module)
        if source in ("__init__", "__main__"):
            continue
        for target in targets:
            if part(target) != source and part(target) not in ALLOWED[source]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_module_is_a_god_module():
    long = {module_name(p): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > LONGEST_MODULE}
    assert not long, f"modules over {LONGEST_MODULE} lines: {long}; split them by idea"


def test_every_task_folder_has_the_same_files():
    expected = {"__init__.py", "data.py", "recipe.py", "task.py", "metrics.py", "predict.py"}
    for task in ("classification", "segmentation", "detection"):
        assert {p.name for p in (ROOT / "tasks" / task).glob("*.py")} == expected, task


def test_no_module_shadows_the_standard_library():
    import sys

    names = {p.stem for p in ROOT.rglob("*.py")}
    assert not names & set(sys.stdlib_module_names) - {"__init__", "__main__"}


def test_no_assert_checks_inputs():
    # `python -O` drops asserts: a check a user's input depends on must raise an error of its own.
    found = [
        f"{module_name(p)}:{node.lineno}"
        for p in ROOT.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert not found, f"assert statements: {found}"


def test_the_readme_speed_table_is_made_from_the_committed_json():
    """The README's speed figures are what ``benchmarks/speed_table.py`` writes from the results JSON it names, so
    they cannot drift from a measurement by hand."""
    import json
    import re
    import sys

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "benchmarks"))
    try:
        import speed_table
    finally:
        sys.path.remove(str(repo / "benchmarks"))
    readme = (repo / "README.md").read_text()
    source = re.search(r"speed_table\.py (benchmarks/results/\S+\.json) --readme", readme)
    assert source, "the README names the JSON its speed table comes from"
    expected = speed_table.readme_with(speed_table.table(json.loads((repo / source[1]).read_text())), readme)
    assert readme == expected, f"regenerate: python benchmarks/speed_table.py {source[1]} --readme"
