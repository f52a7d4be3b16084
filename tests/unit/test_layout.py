"""The package's architecture, pinned: imports point one way and never circle; old public import paths still work.

    entry points (train, api, compose, build, tools)  ->  engine  ->  distributed  ->  components, io  ->  config  ->  errors

The graph is read from the source (ast), function-level imports included (they are how a circle hides), imports
under `if TYPE_CHECKING:` left out (they never run).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "codistill"

# Higher layers may import lower ones, never the reverse. Modules of one layer may import each other (no circles);
# components and io are peers that do not import each other.
LAYERS = {
    "errors": 0,
    "runtime": 0,
    "config": 1,
    "components": 2,
    "io": 2,
    "distributed": 3,
    "engine": 4,
    "train": 5, "api": 5, "compose": 5, "build": 5, "tools": 5,
}
EXEMPT = {"codistill", "codistill._legacy_paths"}  # the package root and the old-path aliases name every module


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The codistill modules `name` imports (a `from pkg import mod` names the module mod when it is one)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            return
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                       for a in node.names]
        for t in targets:
            if t.startswith("codistill") and t != name:  # train.py's __main__ runs its importable self
                found.add(t)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items() if name not in EXEMPT}


def part(name: str) -> str:
    return name.split(".")[1]


def test_every_module_has_a_layer() -> None:
    assert {part(m) for m in graph()} <= set(LAYERS), "a new top-level part of codistill/ needs its place in LAYERS"


def test_imports_point_down() -> None:
    wrong = []
    for name, targets in graph().items():
        for t in targets:
            if t in EXEMPT:
                wrong.append(f"{name} -> {t} (import the module itself, not the package root)")
                continue
            a, b = part(name), part(t)
            if LAYERS[b] > LAYERS[a] or (LAYERS[a] == LAYERS[b] == 2 and a != b):
                wrong.append(f"{name} ({a}) -> {t} ({b})")
    assert not wrong, "imports pointing the wrong way:\n" + "\n".join(sorted(wrong))


def test_no_import_circles() -> None:
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_errors_import_nothing_heavy() -> None:
    tree = ast.parse((PACKAGE / "errors.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "typing"}


ENTRY_POINTS = {"codistill.train", "codistill.api", "codistill.build", "codistill.compose", "codistill.config"}


def test_only_entry_points_take_the_whole_config() -> None:
    """A parameter named `cfg` is the whole config, which only the entry points and config.validate receive; every
    other part takes its own section (named after it) or a small frozen dataclass made from it."""
    takers = []
    for name, path in modules().items():
        if name in ENTRY_POINTS or name.startswith("codistill.tools"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
                if "cfg" in args:
                    takers.append(f"{name}.{node.name}")
    assert not takers, "take a config section, not the whole config:\n" + "\n".join(sorted(takers))


# Old public paths (users' code and configs name them) and the object each must be.
LEGACY = {
    "codistill.models.MLP": "codistill.components.models.mlp.MLP",
    "codistill.data.Batch": "codistill.components.data.base.Batch",
    "codistill.data.fashion_mnist.dataset": "codistill.components.data.fashion_mnist.dataset",
    "codistill.preemption.EXIT_PREEMPTED": "codistill.distributed.preemption.EXIT_PREEMPTED",
    "codistill.preemption.Preempted": "codistill.errors.Preempted",
    "codistill.config.ConfigError": "codistill.errors.ConfigError",
    "codistill.checkpoint.StorageError": "codistill.errors.StorageError",
    "codistill.topology.StartupError": "codistill.errors.StartupError",
    "codistill.train.RunError": "codistill.errors.RunError",
    "codistill.data.DataFormatError": "codistill.errors.DataFormatError",
    "codistill.exchange.ExchangeWriteError": "codistill.errors.ExchangeWriteError",
    "codistill.trainer.Trainer": "codistill.engine.trainer.Trainer",
}


def resolve(path: str) -> object:
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("old", sorted(LEGACY))
def test_legacy_paths_are_the_same_objects(old: str) -> None:
    assert resolve(old) is resolve(LEGACY[old])


def test_codistill_fit_is_the_api() -> None:
    import codistill
    from codistill.api import fit

    assert codistill.fit is fit


def test_preset_targets_resolve() -> None:
    """Every `_target_` in conf/ imports (presets name old and new paths alike)."""
    from hydra.utils import get_object

    targets = set()
    for yaml in sorted((PACKAGE / "conf").rglob("*.yaml")):
        for line in yaml.read_text().splitlines():
            key, _, value = line.strip().partition(":")
            if key == "_target_" and value.strip().startswith("codistill"):
                targets.add(value.strip())
    assert targets
    for t in sorted(targets):
        assert callable(get_object(t)), t
