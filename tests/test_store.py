"""Feature store: importing features computed elsewhere, reading rows back, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spurious.store import FeatureStore
from spurious.workspace import import_features
from spurious.workspace import IncompatibleArtifactError, Workspace


def _head(rng: np.random.Generator, k: int = 4, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal((k, d)).astype(np.float32), rng.standard_normal(k).astype(np.float32)


def test_import_round_trip_with_topk_against_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    W, b = _head(rng)
    phi = rng.standard_normal((23, 6)).astype(np.float32)
    np.save(tmp_path / "phi.npy", phi)
    mm = np.load(tmp_path / "phi.npy", mmap_mode="r")
    labels = rng.integers(-1, 4, size=23)
    ids = [f"img/{i:03d}.jpg" for i in range(23)]
    Workspace.create_from_head(tmp_path / "ws", W, b, spec="mine:v1", class_names=list("abcd"))
    store = import_features(tmp_path / "ws", mm, labels, ids, dtype="float32", topk=3, shard_size=5)
    assert len(store) == 23 and store.dim == 6 and len(store.manifest["shards"]) == 5
    np.testing.assert_array_equal(store.phi(), phi)
    np.testing.assert_array_equal(np.asarray(store.labels), labels)
    assert store.ids == ids
    logits = phi.astype(np.float64) @ W.T.astype(np.float64) + b
    idx, prob = store.topk()
    np.testing.assert_array_equal(idx, np.argsort(-logits, axis=1)[:, :3])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(prob, np.take_along_axis(p, idx, 1), rtol=1e-5)
    rows = np.array([22, 0, 7, 7])
    np.testing.assert_array_equal(store.phi(rows), phi[rows])
    np.testing.assert_array_equal(store.rows_of_class(2), np.flatnonzero(labels == 2))
    np.testing.assert_array_equal(store.rows_of_ids(["img/004.jpg", "img/001.jpg"]), [4, 1])
    # opened through the workspace, with the model check
    assert Workspace.open(tmp_path / "ws").feature_store("train").ids == ids


def test_import_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    W, b = _head(rng)
    Workspace.create_from_head(tmp_path / "ws", W, b, spec="mine:v1")
    phi = rng.standard_normal((3, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="feature dimension mismatch"):
        import_features(tmp_path / "ws", phi[:, :5], [0, 1, 2], ["a", "b", "c"])
    with pytest.raises(ValueError, match="one entry per row"):
        import_features(tmp_path / "ws", phi, [0, 1], ["a", "b", "c"])
    with pytest.raises(ValueError, match="ids must be unique"):
        import_features(tmp_path / "ws", phi, [0, 1, 2], ["a", "a", "c"])
    import_features(tmp_path / "ws", phi, [0, 1, 2], ["a", "b", "c"])
    with pytest.raises(ValueError, match="already exists"):
        import_features(tmp_path / "ws", phi, [0, 1, 2], ["a", "b", "c"])
    store = FeatureStore(tmp_path / "ws" / "features" / "train")
    with pytest.raises(KeyError, match="'zz' is not in the feature store"):
        store.rows_of_ids(["zz"])
    with pytest.raises(IndexError, match="row index out of range"):
        store.phi(np.array([3]))
    with pytest.raises(FileNotFoundError, match="no finished feature store"):
        FeatureStore(tmp_path / "ws" / "features" / "val")


def test_workspace_head_checks(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    W, b = _head(rng)
    with pytest.raises(ValueError, match=r"head must be W \[K, D\] and b \[K\]"):
        Workspace.create_from_head(tmp_path / "ws", W, b[:3], spec="x")
    with pytest.raises(ValueError, match="3 class names for a head with 4 classes"):
        Workspace.create_from_head(tmp_path / "ws", W, b, spec="x", class_names=["a", "b", "c"])
    ws = Workspace.create_from_head(tmp_path / "ws", W, b, spec="x", class_names=["cat", "dog", "cow", "owl"])
    np.testing.assert_array_equal(ws.head()[0], W)
    assert ws.resolve_class("owl") == 3 and ws.resolve_class("2") == 2 and ws.resolve_class(1) == 1
    with pytest.raises(ValueError, match="did you mean: .*cat"):
        ws.resolve_class("cot")
    with pytest.raises(IncompatibleArtifactError, match="was made with model 'x'"):
        Workspace.create_from_head(tmp_path / "ws", W * 2, b, spec="y")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        Workspace.create_from_head(tmp_path / "file", W, b, spec="x")


def test_prepare_artifact_dir(tmp_path: Path) -> None:
    import json

    from spurious.workspace import prepare_artifact_dir

    out = tmp_path / "art"
    prepare_artifact_dir(out, {"a": 1}, overwrite=False, mismatch=lambda old: f"old {old}")
    (out / "part").write_text("finished work")
    prepare_artifact_dir(out, {"a": 1}, overwrite=False, mismatch=lambda old: f"old {old}")  # same plan: kept
    assert (out / "part").is_file()
    with pytest.raises(IncompatibleArtifactError, match=r"old \{'a': 1\}"):
        prepare_artifact_dir(out, {"a": 2}, overwrite=False, mismatch=lambda old: f"old {old}")
    prepare_artifact_dir(out, {"a": 2}, overwrite=True, mismatch=str)
    assert not (out / "part").exists() and json.loads((out / "plan.json").read_text()) == {"a": 2}
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "x").write_text("user file")
    with pytest.raises(IncompatibleArtifactError, match="holds no plan.json"):
        prepare_artifact_dir(stray, {"a": 1}, overwrite=False, mismatch=str)
    assert (stray / "x").is_file()
