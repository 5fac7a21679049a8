"""The layers of ARCHITECTURE.md, checked on every import statement of the package (lazy ones included)."""

import ast
from pathlib import Path

import pytest

import aqtrack

PACKAGE = Path(aqtrack.__file__).parent
# What each layer may import from aqtrack (besides itself). The top-level modules (cli, api, config,
# errors, names) are listed by name.
ALLOWED = {
    "atomic": set(),
    "crash_points": set(),
    "names": set(),
    "errors": set(),
    "config": {"errors"},
    "data": {"config", "errors", "names"},
    "training": {"config", "errors", "names", "data"},
    "outputs": {"config", "errors", "names", "data", "training"},
    "tracking": {"config", "errors", "names", "data", "training"},
    "jobs": {"config", "errors", "names", "data", "training", "outputs", "tracking"},
    "api": {"jobs", "tracking", "outputs"},
    "cli": {"config", "errors", "names", "data", "training", "outputs", "tracking", "jobs", "api"},
    "__init__": {"api"},
    "__main__": {"cli"},
}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import in `path`, at any depth (function-level ones too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "aqtrack":
                found += [(node.lineno, f"aqtrack.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


BASE = {"atomic", "crash_points", "errors", "names"}  # what every layer may use


def _target_layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "aqtrack" and len(parts) > 1 and parts[1] not in BASE else None


def test_every_module_belongs_to_a_layer():
    assert {_layer(p) for p in _modules()} <= set(ALLOWED)


def test_only_the_tracking_layer_imports_mlflow():
    offenders = [
        f"{p.relative_to(PACKAGE)}:{line} imports {module}"
        for p in _modules()
        if _layer(p) != "tracking"
        for line, module in _imports(p)
        if module.split(".")[0] == "mlflow"
    ]
    assert offenders == []


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(layer):
    offenders = [
        f"{p.relative_to(PACKAGE)}:{line} imports {module}"
        for p in _modules()
        if _layer(p) == layer
        for line, module in _imports(p)
        if (target := _target_layer(module)) is not None and target != layer and target not in ALLOWED[layer]
    ]
    assert offenders == []


def test_the_checker_sees_a_lazy_import_inside_a_function(tmp_path):
    """The checks above would pass vacuously if _imports missed function-level imports."""
    path = tmp_path / "module.py"
    path.write_text("def f():\n    from aqtrack.tracking import store\n    import mlflow\n")
    assert _imports(path) == [(2, "aqtrack.tracking"), (3, "mlflow")]


def test_init_files_hold_no_logic():
    """Every public name has one import path: an __init__ holds a docstring and, at the top, re-exports."""
    for path in PACKAGE.rglob("__init__.py"):
        body = ast.parse(path.read_text()).body
        kinds = {type(node).__name__ for node in body[1:]} if body else set()
        assert kinds <= {"ImportFrom", "Assign"}, f"{path.relative_to(PACKAGE)}: {kinds}"
