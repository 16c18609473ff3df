"""`spurious demo --fast`: the whole pipeline so far on the tiny planted data, offline, in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spurious.cli import main


def test_fast_demo_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from spurious.datasets import PlantedConfig, load_planted

    monkeypatch.setenv("SPURIOUS_CACHE", str(tmp_path / "cache"))
    code = main(["demo", "--fast", "--out", str(tmp_path / "out"), "--json", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    cfg = PlantedConfig.tiny()
    planted = load_planted(r["planted_root"])
    n_spurious = sum(len(f.classes) for f in planted.features) * cfg.spurious_per_feature
    assert [m["model"] for m in r["models"]] == ["demo:robust-tiny", "demo:standard-tiny"]
    for m in r["models"]:
        assert m["num_rows"] == {"train": cfg.num_classes * cfg.train_per_class,
                                 "val": cfg.num_classes * cfg.val_per_class,
                                 "spurious": n_spurious, "pool": cfg.pool_size}
        assert m["logit_identity_max_abs_error"] < 1e-9
        # one entry per planted (class, feature); base rates are the planted ones
        pairs = {(f["class_index"], f["feature"]): f for f in m["found"]}
        assert set(pairs) == {(k, f.name) for f in planted.features for k in f.classes}
        for feature in planted.features:
            for k in feature.classes:
                expected = np.floor(feature.rate(k) * cfg.train_per_class + 0.5) / cfg.train_per_class
                assert pairs[(k, feature.name)]["base_rate"] == pytest.approx(expected)
                assert pairs[(k, feature.name)]["top_k"] == cfg.train_per_class // 4
    # the workspaces are real workspaces: later stages can open them
    from spurious.npca import load_npca

    ws = Path(r["out"]) / "ws-robust-tiny"
    assert load_npca(ws).classes == list(range(cfg.num_classes))


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
