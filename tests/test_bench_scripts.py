"""The benchmark scripts under ``bench/`` are not run by the suite (they take minutes), but what they import
from ``spurious`` must exist: a module that moves (issue 17 moved several) must not silently break them."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """``(module, name)`` for every ``from spurious... import name`` and ``(module, None)`` for ``import spurious...``."""
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "spurious":
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.split(".")[0] == "spurious"]
    return out


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_bench_script_imports_exist(script: Path) -> None:
    missing = []
    for module, name in _imports(script):
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            missing.append(f"{module} ({err})")
            continue
        if name is not None and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{script.name} imports what does not exist: {', '.join(missing)}"
