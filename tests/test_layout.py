"""The package's layout holds: each paper's folder imports no other paper's, and no module imports
itself back through others (every import counted, those inside functions too)."""

import ast
from pathlib import Path

from conftest import REPO
from raysynth.recipes import RECIPES

PACKAGE = REPO / "raysynth"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each raysynth module -> the raysynth modules it imports (a package's import counts as its
    __init__; `from package import name` counts the submodule when `name` is one)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_paper_imports_another_papers_folder():
    for name, targets in imports().items():
        if name.startswith("raysynth.recipes.") and name.count(".") >= 3:
            paper = name.split(".")[2]
            others = {t for t in targets if t.startswith("raysynth.recipes.") and t.count(".") >= 2
                      and t.split(".")[2] != paper}
            assert not others, f"{name} imports another paper's folder: {sorted(others)}"


def test_no_import_cycles():
    graph = imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_every_paper_folder_is_registered_and_complete():
    folders = {p.name for p in (PACKAGE / "recipes").iterdir() if (p / "recipe.py").is_file()}
    assert folders == set(RECIPES)
    for name in folders:
        folder = PACKAGE / "recipes" / name
        assert {"recipe.py", "steps.py", "config.py", "__init__.py"} <= {p.name for p in folder.iterdir()}
        assert any((folder / "prompts").glob("*.txt"))
