"""`spurious demo --fast`: the whole pipeline so far on the tiny planted data, offline, in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FastDemo, copy_demo_out

from spurious.cli import main
from spurious.workspace import Workspace


def test_fast_demo_end_to_end(tmp_path: Path, fast_demo: FastDemo) -> None:
    """On the session's run of `spurious demo --fast --json` (conftest), copied: the test moves it."""
    import sqlite3

    from spurious.demo.planted import PlantedConfig, load_planted
    from spurious.npca import load_npca

    r = fast_demo.summary
    cfg = PlantedConfig.tiny()
    planted = load_planted(r["planted_root"])
    assert r["labelers"] == "simulated"
    assert sorted(r["planted_features"]) == sorted(f"{planted.class_names[k]}/{f.name}"
                                                   for f in planted.features for k in f.classes)
    assert (fast_demo.cwd / r["out"]).resolve() == fast_demo.out.resolve()
    assert Path(r["report"]) == Path(r["out"]) / "report" / "index.html"
    root = copy_demo_out(fast_demo, tmp_path / "out")
    for variant in ("robust", "standard"):
        ws = root / f"ws-{variant}"
        assert load_npca(ws).classes == list(range(cfg.num_classes))
        counts = json.loads((ws / "features" / "pool" / "manifest.json").read_text())["num_rows"]
        assert counts == cfg.pool_size
    assert [m["fix_kind"] for m in r["models"]] == ["plain", "transferred"]
    for m in r["models"]:
        assert m["logit_identity_max_abs_error"] < 1e-9
        assert 0.0 <= m["val_accuracy"] <= 1.0
        # the sanity figure of extract, as stored in the train split (labels vs stored top-1)
        store = Workspace.open(root / f"ws-{m['fix_kind'] == 'plain' and 'robust' or 'standard'}").feature_store("train")
        top1 = store.topk()[0][:, 0]
        assert m["train_agreement"]["agreement"] == pytest.approx(float((top1 == store.labels).mean()))
        assert m["train_agreement"]["labelled"] == len(store)
    # the simulated review is in the label database, two labelers per selected component, and the
    # agreed components are exactly those both called spurious
    ws_r = root / "ws-robust"
    with sqlite3.connect(ws_r / "labels.sqlite") as con:
        rows = con.execute("SELECT labeler, class, component, verdict FROM component_verdicts").fetchall()
    assert {row[0] for row in rows} == {"sim-sheet", "sim-top20"}
    from spurious.label.store import LabelStore

    kinds = {i.name: i.kind for i in LabelStore(ws_r).identities()}
    assert kinds == {"sim-sheet": "simulated", "sim-top20": "simulated"}
    planted_classes = sorted({k for f in planted.features for k in f.classes})
    assert {row[1] for row in rows} == set(planted_classes)
    by_comp: dict[tuple[int, int], list[str]] = {}
    for _, k, l, verdict in rows:
        by_comp.setdefault((k, l), []).append(verdict)
    agreed = {c for c, v in by_comp.items() if v.count("spurious") == 2}
    assert {(f["class_index"], f["component"]) for f in r["found"]} == agreed
    for f in r["found"]:
        assert f["precision_top20"] >= 0.8 and f["feature"] is not None
    found = {f"{f['class_name']}/{f['feature']}" for f in r["found"]}
    assert set(r["missed"]) == set(r["planted_features"]) - found
    # the report exists and links the stage pages
    report = (root / "report" / "index.html").read_text()
    assert "simulated labelers" in report and "visualize/index.html" in report
    assert "Sanity check" in report and "kappa" in report
    _check_report_pictures(root, r, tmp_path / "moved" / "demo-out", built_in=fast_demo.out)


def _check_report_pictures(root: Path, r: dict, moved: Path, built_in: Path) -> None:  # type: ignore[type-arg]
    """The report's pictures of the found components, its model names, and its links after a move.

    ``root`` is a copy of the demo's output, which was written in ``built_in``; no link of the moved
    copy may lead back into either folder.
    """
    import shutil

    from test_demo_report import assert_pictures_of, report_images, report_links, resolve

    from spurious.demo import DemoResult, FoundComponent
    from spurious.demo._report import write_report

    report = root / "report" / "index.html"
    assert_pictures_of(report, root / "ws-robust", [(f["class_index"], f["component"]) for f in r["found"]])
    html = report.read_text()
    for m in r["models"]:  # the tables name the models by the spec's name; the full spec is still listed
        assert f">{m['model'].split('@')[0]}</span>" in html and m["model"] in html
    # a moved output folder: every picture (found components, plots) and every link still resolves
    shutil.move(str(root), str(moved))
    report = moved / "report" / "index.html"
    assert len(report_images(report)) >= 2  # at least the score plots
    for src in [i["src"] for i in report_images(report)] + report_links(report):
        target = resolve(report, src)
        assert target.exists(), src
        assert not target.is_relative_to(built_in.resolve()) and not target.is_relative_to(root.resolve()), src
    # the pictures of components the fast demo's review may not have agreed on: each visualized class's
    # first selected component, read from the real visualize output of the moved folder
    shown = []
    for folder in sorted((moved / "ws-robust" / "visualize").glob("class_*")):
        data = json.loads((folder / "components.json").read_text())
        c = data["components"][0]
        shown.append(FoundComponent(data["class"], data["name"], c["component"], None, 0.0, c["npfv_probability"]))
    assert shown
    report = write_report(moved, DemoResult(out=str(moved), fast=True, labelers="simulated",
                                            planted_root=r["planted_root"], found=shown), {})
    assert_pictures_of(report, moved / "ws-robust", [(f.class_index, f.component) for f in shown])


def test_interactive_demo_needs_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code = main(["demo", "--fast", "--interactive", "--out", str(tmp_path / "out")])
    assert code == 2 and "needs a terminal" in capsys.readouterr().err


@pytest.mark.slow
def test_real_model_tour(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--real", "--fast", "--out", str(tmp_path), "--json", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    assert r["model"] == "efficientnet_lite0" and r["dim"] == 1280
    assert r["classes"] == ["tabby", "espresso"] and r["num_train"] == 32
    assert r["logit_identity_max_abs_error"] < 1e-9
    # the real ImageNet model recognises the held-out espresso crops
    assert r["top_imagenet_predictions"]["espresso"][0].startswith("espresso")
    # later stages on the real model: NPFVs (with the honest note), scores with a SpuFix row, round-trips
    assert set(r["npfv"]) == {"tabby", "espresso"} and "not adversarially robust" in r["npfv_note"]
    assert Path(r["visualize_index"]).is_file()
    rows = {row["model"]: row for row in r["score"]}
    assert "efficientnet_lite0" in rows and any(m.startswith("efficientnet_lite0 + ") for m in rows)
    assert r["spufix_removed"] > 0.01  # the round-trip is not vacuous: the fix changed some logit
    assert r["spufix_max_abs_error"] < 1e-3 and r["export_max_abs_error"] < 1e-4


def test_fast_demo_says_what_it_is() -> None:
    from spurious.demo._pipeline import FAST_NOTE, DemoResult

    fast = DemoResult(out="o", fast=True, labelers="simulated", planted_root="p").summary_lines()
    full = DemoResult(out="o", fast=False, labelers="simulated", planted_root="p").summary_lines()
    assert any(FAST_NOTE in line for line in fast) and not any(FAST_NOTE in line for line in full)
    assert "checks the installation" in FAST_NOTE


def test_planted_data_other_than_the_models_were_trained_on_is_said() -> None:
    import warnings
    from types import SimpleNamespace

    from spurious.demo._pipeline import _check_trained_on

    info = SimpleNamespace(spec="demo:robust", metadata={"planted_content_hash": "a" * 64},
                           evidence={"val_accuracy_per_class": [0.8, 0.9], "num_val": 120})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        def not_measured(spec: str) -> list[float]:
            raise AssertionError(f"{spec}: the same data need no accuracy check")

        _check_trained_on([info], "a" * 64, not_measured)  # the same data: silent, nothing measured
    with pytest.warns(UserWarning, match="differ from the data demo:robust was trained on.*--retrain"):
        _check_trained_on([info], "b" * 64)  # nothing measured: the loud form
    # other bytes, the same accuracy per class within one image (1/60): the figures should match
    with pytest.warns(UserWarning, match=r"differ from.*val accuracy here, 0\.8583, matches the recorded 0\.8500"
                                         r".*should match") as caught:
        _check_trained_on([info], "b" * 64, {"demo:robust": [0.8 + 1 / 60, 0.9]}.get)
    assert "will not match" not in str(caught[0].message)
    # two images off in a class: they will not match, both accuracies said
    with pytest.warns(UserWarning, match=r"val accuracy here, 0\.8333, is not the recorded 0\.8500 \(a class "
                                         r"differs by 0\.033\): the demo's figures will not match.*--retrain"):
        _check_trained_on([info], "b" * 64, {"demo:robust": [0.8 - 2 / 60, 0.9]}.get)
