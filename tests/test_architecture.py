"""The shape of the house: no import loops between spurious modules, and the core never imports the demo.

The import graph is read from the source (every ``import`` statement, also those inside functions,
which is where loops hide), so a loop fails here even when lazy imports keep it from failing at run
time.
"""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (SRC / "spurious").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _targets(module: str, node: ast.Import | ast.ImportFrom, mods: dict[str, Path]) -> list[str]:
    """The spurious modules an import statement loads (a package only when names come from its __init__)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".")
            package = base if mods[module].name == "__init__.py" else base[:-1]
            package = package[: len(package) - (node.level - 1)]
            prefix = ".".join(package + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        submodules = [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in mods]
        names = submodules + ([prefix] if len(submodules) < len(node.names) else [])
    out = []
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name.startswith("spurious") and name != module:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[module] = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                         for t in _targets(module, node, mods)}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_loops() -> None:
    graph = import_graph()
    assert "spurious.models" in graph and len(graph) > 30
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_loop() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def _in_package(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_core_modules_never_import_the_demo() -> None:
    """The embedded default (planted data, demo models, the demo) lives in ``spurious.demo``; only the
    demo itself and the command line import it."""
    graph = import_graph()
    assert {"spurious.demo.planted", "spurious.demo.train"} <= set(graph)
    assert not {"spurious.train", "spurious.datasets.planted"} & set(graph)  # moved into spurious.demo
    allowed = ("spurious.demo", "spurious.cli", "spurious._cli")
    offenders = {m: sorted(t for t in targets if _in_package(t, ("spurious.demo",)))
                 for m, targets in graph.items() if not _in_package(m, allowed)}
    assert {m: v for m, v in offenders.items() if v} == {}


def test_the_demo_models_come_from_a_registered_plugin() -> None:
    from spurious.models import PLUGIN_GROUP, list_models

    plugins = {e.name: e.value for e in entry_points(group=PLUGIN_GROUP)}
    assert plugins.get("demo") == "spurious.demo._source:register"
    assert "demo:robust" in list_models("demo:*")


def test_every_stage_result_says_its_own_summary() -> None:
    """The CLI prints ``Result.summary_lines()``: no stage's summary is written by the CLI."""
    from spurious.benchmark import BenchmarkResult
    from spurious.extract import ExtractResult
    from spurious.fix import ExportResult, FixResult
    from spurious.npca import NPCAResult
    from spurious.retrieve import RetrieveResult
    from spurious.score import ScoreResult
    from spurious.visualize import VisualizeResult

    for result in (ExtractResult, NPCAResult, VisualizeResult, RetrieveResult, FixResult, ExportResult,
                   ScoreResult, BenchmarkResult):
        assert callable(getattr(result, "summary_lines", None)), result.__name__
    r = NPCAResult(path="ws/npca", split="train", n_components=4, classes_fitted=3, classes_reused=1,
                   classes_skipped=[7], seconds=2.0, seconds_per_class=0.5)
    assert r.summary_lines() == ["neural PCA: 3 classes fitted, 1 reused, 1 skipped (< 2 images) -> ws/npca",
                                 "2.0 s (0.500 s/class on cpu)"]
    e = ExportResult(path="f.onnx", format="onnx", max_abs_diff=None, verified_with=None, seconds=1.0,
                     fix_name="SpuFix", model_spec="demo:robust")
    assert e.summary_lines() == ["exported SpuFix of demo:robust as onnx -> f.onnx",
                                 "check: not checked (install onnxruntime)"]


def test_files_of_a_shared_fixture_are_one_xdist_unit_and_an_unlisted_user_stops_collection() -> None:
    """tests/conftest.py: under ``--dist loadfile`` the users of the fast demo (and of the planted workspace)
    go to one worker as one unit; any other file is its own unit; a file that uses one unlisted stops collection."""
    from types import SimpleNamespace

    import conftest

    class Config:  # what pytest-xdist's schedulers read of the controller's config
        def __init__(self, dist: str) -> None:
            self.values = {"dist": dist, "tx": ["2*popen"], "maxschedchunk": None}

        def getoption(self, name: str, default: object = None) -> object:
            return self.values.get(name, default)

        getvalue = getoption

    assert conftest.pytest_xdist_make_scheduler(Config("load"), None) is None  # other modes: xdist's own
    sched = conftest.pytest_xdist_make_scheduler(Config("loadfile"), None)
    units = {node: sched._split_scope(node) for node in (
        "tests/test_demo.py::test_real_model_tour", "tests/test_dvce.py::test_x[a::b]",
        "tests/test_visualize.py::test_y", "tests/test_dist.py::test_z", "tests/test_io.py::test_slug[a@b]")}
    assert units == {"tests/test_demo.py::test_real_model_tour": "fast_demo", "tests/test_dvce.py::test_x[a::b]": "fast_demo",
                     "tests/test_visualize.py::test_y": "planted_ws", "tests/test_dist.py::test_z": "planted_ws",
                     "tests/test_io.py::test_slug[a@b]": "tests/test_io.py"}

    def items(*rows: tuple[str, list[str]]) -> list[Any]:
        return [SimpleNamespace(nodeid=node, fixturenames=names) for node, names in rows]

    # as listed: nothing said (a listed file's other tests need not use the fixture)
    conftest.pytest_collection_modifyitems(None, items(("tests/test_demo.py::a", ["fast_demo", "tmp_path"]),
                                                       ("tests/test_demo.py::b", []), ("tests/test_io.py::c", [])))
    with pytest.raises(pytest.UsageError, match=r"out of date for tests/test_io\.py: it uses \['fast_demo'\], "
                                                r"listed under None"):
        conftest.pytest_collection_modifyitems(None, items(("tests/test_io.py::c", ["fast_demo"])))
    # a run of a listed file's tests that do not use it (-k, a node id): nothing said
    conftest.pytest_collection_modifyitems(None, items(("tests/test_demo.py::b", ["tmp_path"])))
    with pytest.raises(pytest.UsageError, match="out of date for tests/test_visualize.py"):  # listed under another
        conftest.pytest_collection_modifyitems(None, items(("tests/test_visualize.py::a", ["fast_demo"])))
