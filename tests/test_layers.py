"""The package tree is the architecture: each layer imports only the layers below it.

core < stats < data < model < bundle < inference < commands < the CLI (adcli/cli.py, adcli/__init__.py).
Every import counts, also those inside functions (kept there to keep `import adcli` light).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "adcli"
LAYERS = ["core", "stats", "data", "model", "bundle", "inference", "commands"]
TOP = len(LAYERS)  # adcli/cli.py, adcli/__init__.py, adcli/__main__.py


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        return TOP
    return LAYERS.index(parts[1])


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("adcli")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("adcli"):
            # `from adcli.core import io` imports adcli.core.io
            found |= {f"{node.module}.{alias.name}" if _is_module(f"{node.module}.{alias.name}") else node.module
                      for alias in node.names}
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_lives_in_a_layer():
    loose = sorted(m for m in _graph() if _layer(m) == TOP and m not in {"adcli", "adcli.cli", "adcli.__main__"})
    assert not loose, f"modules outside the layer packages: {loose}"


def test_no_layer_imports_a_layer_above_it():
    upward = [f"{m} -> {i}" for m, imports in _graph().items() for i in imports
              if i != "adcli" and _layer(i) > _layer(m)]
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    modules = _graph()
    # `from adcli import __version__` is the one import of the root package: not an edge.
    graph = {m: {i for i in imports if i in modules and i != "adcli"} for m, imports in modules.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt])
                return True
            if nxt not in state and visit(nxt, path + [node]):
                return True
        state[node] = 2
        return False

    for start in sorted(graph):
        if start not in state and visit(start, []):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)
