"""extract: store contents against direct model runs, resumption after crashes, errors
(torchrun: tests/test_dist.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_classifier, write_images
from spurious.datasets import load_image, open_dataset
from spurious.extract import extract
from spurious.store import FeatureStore
from spurious.workspace import IncompatibleArtifactError

REPO = Path(__file__).resolve().parents[1]


def _oracle(clf, root: Path, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """phi and logits by running the wrapped module's layers directly (no hooks, no store)."""
    net = clf.model
    pre = clf.preprocessing
    x = torch.stack([pre(load_image(root / i)) for i in ids])
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        phi = net.features((x - mean) / std)
        logits = net.fc(phi)
    return phi.numpy(), logits.numpy()


def _add_bad_files(root: Path) -> None:
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    good = (root / "b" / "img_001.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "c" / "notes.txt").write_text("not an image")


def test_store_matches_direct_model_run(tmp_path: Path, image_folder: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    _add_bad_files(image_folder)
    with pytest.warns(UserWarning, match="could not be decoded"):
        r = extract(tmp_path / "ws", model=tiny_model, data=f"folder:{image_folder}", batch_size=4, shard_size=5,
                    num_workers=0, dtype="float32", topk=2, progress=False)
    assert (r.num_rows, r.num_failed, r.num_skipped_files) == (18, 2, 1)
    store = FeatureStore(r.path)
    assert len(store) == 18 and store.dim == 12
    assert store.ids == sorted(store.ids) and "a/broken.jpg" not in store.ids
    np.testing.assert_array_equal(store.labels, [0] * 7 + [1] * 6 + [2] * 5)
    phi, logits = _oracle(tiny_model, image_folder, store.ids)
    np.testing.assert_allclose(store.phi(), phi, rtol=1e-5, atol=1e-6)
    idx, prob = store.topk()
    np.testing.assert_array_equal(idx, np.argsort(-logits, axis=1)[:, :2])
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(prob, np.take_along_axis(softmax, idx, 1), rtol=1e-5)
    m = json.loads((Path(r.path) / "manifest.json").read_text())
    assert m["failed"]["count"] == 2 and m["skipped_files"]["count"] == 1
    assert {f["id"] for f in map(json.loads, (Path(r.path) / "failed.jsonl").read_text().splitlines())} == {
        "a/broken.jpg", "b/truncated.png"}
    # row lookups and partial reads agree with the full array
    rows = store.rows_of_ids(["c/img_004.jpg", "a/img_000.jpg"])
    np.testing.assert_array_equal(store.phi(rows), store.phi()[rows])
    chunks = np.concatenate([c for _, c in store.iter_phi(chunk_rows=4)])
    np.testing.assert_array_equal(chunks, store.phi())


def test_float16_default_and_rerun_is_a_no_op(tmp_path: Path, image_folder: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    r = extract(tmp_path / "ws", model=tiny_model, data=image_folder, num_workers=0, progress=False)
    store = FeatureStore(r.path)
    assert store.dtype == np.float16 and r.shards_computed == 1
    phi, _ = _oracle(tiny_model, image_folder, store.ids)
    np.testing.assert_allclose(store.phi().astype(np.float32), phi, rtol=2e-3, atol=1e-3)
    again = extract(tmp_path / "ws", model=tiny_model, data=image_folder, num_workers=0, progress=False)
    assert again.shards_computed == 0 and again.num_rows == r.num_rows


def test_resume_after_crash_recomputes_no_finished_shard(tmp_path: Path, image_folder: Path, tiny_model,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import spurious.extract as ex

    real = ex._write_shard
    calls = {"n": 0}

    def crash_after_two(*args, **kwargs):  # type: ignore[no-untyped-def]
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "_write_shard", crash_after_two)
    kw = dict(model=tiny_model, data=image_folder, shard_size=4, batch_size=3, num_workers=0, progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(tmp_path / "ws", **kw)
    shards = tmp_path / "ws" / "features" / "train" / "shards"
    done = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.json")}
    assert len(done) == 2 and not (shards.parent / "manifest.json").exists()
    monkeypatch.setattr(ex, "_write_shard", real)
    r = extract(tmp_path / "ws", **kw)
    assert (r.shards_total, r.shards_reused, r.shards_computed) == (5, 2, 3)
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("*.json") if p.name in done} == done
    fresh = extract(tmp_path / "ws2", **kw)
    a, b = FeatureStore(r.path), FeatureStore(fresh.path)
    assert a.ids == b.ids and len(a) == 18
    np.testing.assert_array_equal(a.phi(), b.phi())


def _save_checkpoint(tmp_path: Path) -> str:
    torch.manual_seed(0)
    import timm

    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    return f"timm:test_resnet@{path}"


@pytest.mark.slow
def test_sigkill_half_way_then_rerun(tmp_path: Path) -> None:
    data = write_images(tmp_path / "data", {"x": 40, "y": 40}, size=64)
    spec = _save_checkpoint(tmp_path)
    ws = tmp_path / "ws"
    args = ["extract", str(ws), "--model", spec, "--data", str(data), "--shard-size", "4", "--batch-size", "2",
            "--workers", "0", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "spurious", *args], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    shards = ws / "features" / "train" / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("*.json"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.json")}
    assert 3 <= len(done) < 20, "the run must be killed half-way"
    assert not (shards.parent / "manifest.json").exists()
    from conftest import cli_in_process  # the rerun needs no process of its own (the killed run had one)

    code, out, err = cli_in_process([*args, "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["shards_reused"] == len(done) and summary["shards_computed"] == 20 - len(done)
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("*.json") if p.name in done} == done
    store = FeatureStore(summary["path"])
    assert len(store) == 80 and len(set(store.ids)) == 80
    assert store.ids == sorted(open_dataset(data).records[i].id for i in range(80))


def test_refuses_other_model_or_other_data(tmp_path: Path, image_folder: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    extract(tmp_path / "ws", model=tiny_model, data=image_folder, num_workers=0, progress=False)
    other = tiny_classifier(seed=1)
    with pytest.raises(IncompatibleArtifactError, match="was made with model"):
        extract(tmp_path / "ws", model=other, data=image_folder, num_workers=0, progress=False)
    more = write_images(tmp_path / "more", {"a": 3, "b": 3}, seed=5)
    with pytest.raises(IncompatibleArtifactError, match="was extracted with other settings: data"):
        extract(tmp_path / "ws", model=tiny_model, data=more, num_workers=0, progress=False)
    r = extract(tmp_path / "ws", model=tiny_model, data=more, num_workers=0, progress=False, overwrite=True)
    assert r.num_rows == 6
    r = extract(tmp_path / "ws", data=more, split="val", num_workers=0, progress=False, model=tiny_model)
    assert r.split == "val"


def test_argument_errors(tmp_path: Path, image_folder: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="dtype must be one of"):
        extract(tmp_path / "ws", model=tiny_model, data=image_folder, dtype="int8")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        extract(tmp_path / "ws", model=tiny_model, data=image_folder, batch_size=0)
    with pytest.raises(ValueError, match="new workspace: pass the model"):
        extract(tmp_path / "ws", data=image_folder)
    with pytest.raises(FileNotFoundError, match="nope"):
        extract(tmp_path / "ws", model=tiny_model, data=tmp_path / "nope")
    with pytest.raises(ValueError, match="invalid split name"):
        extract(tmp_path / "ws", model=tiny_model, data=image_folder, split="../x", num_workers=0)


def test_multiworker_loader_gives_the_same_store(tmp_path: Path, image_folder: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    _add_bad_files(image_folder)
    with pytest.warns(UserWarning):
        a = extract(tmp_path / "w0", model=tiny_model, data=image_folder, num_workers=0, shard_size=7, progress=False)
    with pytest.warns(UserWarning):
        b = extract(tmp_path / "w2", model=tiny_model, data=image_folder, num_workers=2, shard_size=7, progress=False)
    sa, sb = FeatureStore(a.path), FeatureStore(b.path)
    assert sa.ids == sb.ids and b.num_failed == 2
    np.testing.assert_array_equal(sa.phi(), sb.phi())


def test_shard_where_every_image_fails(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    data = write_images(tmp_path / "data", {"a": 3, "b": 3})
    for i in range(3):
        (data / "a" / f"img_00{i}{'.png' if i % 2 else '.jpg'}").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="3 of 6 images could not be decoded"):
        r = extract(tmp_path / "ws", model=tiny_model, data=data, shard_size=3, num_workers=0, progress=False)
    store = FeatureStore(r.path)
    assert (len(store), r.num_failed) == (3, 3)
    assert store.ids == ["b/img_000.jpg", "b/img_001.png", "b/img_002.jpg"]
    np.testing.assert_array_equal(np.asarray(store.labels), [1, 1, 1])
    assert store.phi().shape == (3, 12)
