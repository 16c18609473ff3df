"""Every check that refuses to mix artifacts of two models (or datasets) names the artifact, both models and the fix.

Two workspaces of different random heads (``synth:a``, ``synth:b``) on the same training ids, and one of
the conftest tiny CNN for the checks that need a real classifier; artifacts of one are copied into (a
copy of) the other to make the mix. Each test asserts that the message names the artifact's path and
both fingerprints.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_classifier, write_images

from spurious.fix import SpuFix, fix, load_fix, transfer
from spurious.npca import load_npca, npca
from spurious.retrieve import components_to_retrieve, retrieve
from spurious.workspace import import_features
from spurious.workspace import IncompatibleArtifactError, Workspace

K, D, N_K = 3, 8, 12
Pair = tuple[Workspace, Workspace]


def _ids(n: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}/{i:04d}.png" for i in range(n)]


def _synth_ws(root: Path, spec: str, seed: int) -> Workspace:
    """A workspace of a random head with train features (same ids for every seed), a small pool and npca (L=3)."""
    rng = np.random.default_rng(seed)
    ws = Workspace.create_from_head(root, rng.normal(size=(K, D)), rng.normal(size=K), spec=spec,
                                    class_names=[f"c{k}" for k in range(K)])
    phi = np.abs(rng.normal(1.0, 1.0, (K * N_K, D))).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random heads do not agree with the labels
        import_features(root, phi, np.repeat(np.arange(K), N_K), _ids(K * N_K), dtype="float32")
        import_features(root, phi[:10], np.full(10, -1), _ids(10, "pool"), split="pool", dtype="float32")
        npca(root, n_components=3, device="cpu", progress=False)
    return ws


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    root = tmp_path_factory.mktemp("checks")
    return _synth_ws(root / "a", "synth:a", 0), _synth_ws(root / "b", "synth:b", 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace of the tiny CNN (D=12) with train features, npca and a fix in WS/fix."""
    root = tmp_path_factory.mktemp("checks-tiny") / "ws"
    ws = Workspace.create(root, tiny_classifier(num_classes=K, seed=0))
    phi = np.abs(np.random.default_rng(2).normal(1.0, 1.0, (K * N_K, 12))).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import_features(root, phi, np.repeat(np.arange(K), N_K), _ids(K * N_K), dtype="float32")
        import_features(root, phi[:10], np.full(10, -1), _ids(10, "pool"), split="pool", dtype="float32")
        npca(root, n_components=3, device="cpu", progress=False)
    fix(root, {0: [0]})
    return ws


def _copy(ws: Workspace, dst: Path) -> Workspace:
    shutil.copytree(ws.root, dst)
    return Workspace.open(dst)


def _names(*parts: str) -> str:
    """A pattern that matches when every part appears in the message, in any order."""
    return "".join(f"(?=.*{re.escape(p)})" for p in parts)


def _components_of(ws: Workspace, path: Path) -> Path:
    doc = {"format": "spurious-components", "version": 1, "model_fingerprint": ws.model_fingerprint,
           "classes": {"0": [0]}, "source": "test"}
    path.write_text(json.dumps(doc))
    return path


# ---------------------------------------------------------------------------- component sets


def test_fix_refuses_a_component_set_of_another_model(pair: Pair, tmp_path: Path) -> None:
    a, b = pair
    comps = _components_of(b, tmp_path / "comps.json")
    want = _names(str(comps), b.model_fingerprint, "'synth:a'", a.model_fingerprint, str(a.root), "`spurious label WS`")
    with pytest.raises(IncompatibleArtifactError, match=want):
        fix(a.root, comps, out=tmp_path / "fx")


def test_transfer_refuses_a_component_set_of_another_source(pair: Pair, tmp_path: Path) -> None:
    a, b = pair
    comps = _components_of(a, tmp_path / "comps.json")
    with pytest.raises(IncompatibleArtifactError, match=_names(str(comps), a.model_fingerprint, "transfer source",
                                                               str(b.root), "'synth:b'", b.model_fingerprint)):
        transfer(b.root, a.root, comps, out=tmp_path / "fx")


def test_retrieve_refuses_a_component_set_of_another_model(pair: Pair, tmp_path: Path) -> None:
    a, b = pair
    comps = _components_of(b, tmp_path / "comps.json")
    with pytest.raises(IncompatibleArtifactError, match=_names(str(comps), b.model_fingerprint, "'synth:a'",
                                                               a.model_fingerprint, str(a.root))):
        components_to_retrieve(a.root, components=comps)


# ---------------------------------------------------------------------------- fix artifact


def test_spufix_names_the_artifact_and_both_models(tiny: Workspace) -> None:
    other = tiny_classifier(num_classes=K, seed=1)
    with pytest.raises(IncompatibleArtifactError, match=_names(
            str(tiny.root / "fix" / "spufix.safetensors"), "'test:tiny'", tiny.model_fingerprint,
            other.fingerprint(), f"Workspace.open('{tiny.root}').load_model()", "--overwrite", "fix transfer")):
        SpuFix(other, load_fix(tiny.root))
    SpuFix(tiny_classifier(num_classes=K, seed=0), load_fix(tiny.root))  # the model it was made for is accepted


# ---------------------------------------------------------------------------- retrieve


def test_retrieve_refuses_a_pool_workspace_of_another_model(pair: Pair) -> None:
    a, b = pair
    with pytest.raises(IncompatibleArtifactError, match=_names(
            str(b.root / "manifest.json"), "'synth:b'", b.model_fingerprint, "'synth:a'", a.model_fingerprint,
            f"spurious extract {a.root}")):
        retrieve(a.root, pool=str(b.root), components={0: [0]}, min_votes=1, progress=False)


def test_retrieve_refuses_a_retrieval_of_another_model(pair: Pair, tmp_path: Path) -> None:
    a, b = pair
    ws = _copy(a, tmp_path / "a")
    (ws.root / "retrieve").mkdir()
    (ws.root / "retrieve" / "plan.json").write_text(json.dumps(
        {"model": {"spec": b.model_spec, "fingerprint": b.model_fingerprint}}))
    with pytest.raises(IncompatibleArtifactError, match=_names(
            str(ws.root / "retrieve" / "plan.json"), "'synth:b'", b.model_fingerprint, "'synth:a'",
            a.model_fingerprint, "--overwrite")):
        retrieve(ws.root, components={0: [0]}, min_votes=1, progress=False)


def test_retrieve_refuses_the_own_workspace_as_a_voter(pair: Pair, tmp_path: Path) -> None:
    a, _ = pair
    twin = _copy(a, tmp_path / "twin")
    with pytest.raises(ValueError, match=_names(str(twin.root / "manifest.json"), str(a.root), "'synth:a'",
                                                a.model_fingerprint, "already the 'self' voter")):
        retrieve(a.root, components={0: [0]}, agree=[twin.root], progress=False)


def test_retrieve_refuses_the_own_model_as_a_voter(tiny: Workspace, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    import spurious.models

    ws = _copy(tiny, tmp_path / "ws")
    monkeypatch.setattr(spurious.models, "load_model", lambda spec, **kw: tiny_classifier(num_classes=K, seed=0))
    with pytest.raises(ValueError, match=_names("voter model 'test:tiny'", str(ws.root), tiny.model_fingerprint,
                                                "already the 'self' voter")):
        retrieve(ws.root, components={0: [0]}, agree_models=["test:tiny"], device="cpu", progress=False)


# ---------------------------------------------------------------------------- npca


def test_load_npca_names_the_manifest_and_both_models(pair: Pair, tmp_path: Path) -> None:
    a, b = pair
    mixed = _copy(b, tmp_path / "b")
    shutil.rmtree(mixed.npca_dir)
    shutil.copytree(a.npca_dir, mixed.npca_dir)
    with pytest.raises(IncompatibleArtifactError, match=_names(
            str(mixed.npca_dir / "manifest.json"), "'synth:a'", a.model_fingerprint, "'synth:b'",
            b.model_fingerprint, f"spurious npca {mixed.root} --overwrite")):
        load_npca(mixed.root)
    # refitting over it without --overwrite names the plan and the workspace's model
    with pytest.raises(IncompatibleArtifactError, match=_names(
            str(mixed.npca_dir / "plan.json"), a.model_fingerprint, b.model_fingerprint, "'synth:b'", "--overwrite")):
        npca(mixed.root, n_components=3, device="cpu", progress=False)


# ---------------------------------------------------------------------------- visualize


def test_visualize_refuses_npca_of_other_features(pair: Pair, tmp_path: Path) -> None:
    from spurious.visualize import visualize

    a, _ = pair
    ws = _copy(a, tmp_path / "a")
    train = ws.feature_store("train")
    other = import_features(ws.root, np.ones((6, D), np.float32), np.arange(6) % K, _ids(6, "x"), split="other")
    with pytest.raises(IncompatibleArtifactError, match=_names(
            str(ws.npca_dir / "manifest.json"), train.data_fingerprint, other.data_fingerprint, str(other.path),
            a.model_fingerprint, "--split train", "--split other --overwrite")):
        visualize(ws.root, split="other", progress=False)


def test_visualize_warns_when_the_images_are_not_the_extracted_ones(pair: Pair, tmp_path: Path) -> None:
    from spurious.datasets import open_dataset
    from spurious.visualize._stage import _open_images

    a, _ = pair
    store = a.feature_store("train")
    ds = open_dataset(f"folder:{write_images(tmp_path / 'data', {'c0': 2, 'c1': 2})}")
    with pytest.warns(UserWarning, match=_names(str(store.path / "manifest.json"), ds.fingerprint(),
                                                store.data_fingerprint, "--overwrite")):
        _open_images(ds, store, tiny_classifier(num_classes=K))


def test_visualize_refuses_another_classifier(tiny: Workspace) -> None:
    from spurious.visualize._stage import _resolve_classifier

    other = tiny_classifier(num_classes=K, seed=3)
    with pytest.raises(IncompatibleArtifactError, match=_names(
            str(tiny.root), tiny.model_fingerprint, other.fingerprint(), "the model passed to visualize")):
        _resolve_classifier(other, tiny, torch.device("cpu"))


def test_visualize_refuses_visualizations_of_another_model(tiny: Workspace, tmp_path: Path) -> None:
    from spurious.visualize import visualize

    ws = _copy(tiny, tmp_path / "ws")
    (ws.root / "visualize").mkdir()
    (ws.root / "visualize" / "plan.json").write_text(json.dumps({"model_fingerprint": "0123456789abcdef"}))
    with pytest.raises(IncompatibleArtifactError, match=_names(
            str(ws.root / "visualize" / "plan.json"), "0123456789abcdef", tiny.model_fingerprint, "--overwrite")):
        visualize(ws.root, model=tiny_classifier(num_classes=K, seed=0), device="cpu", progress=False)


# ---------------------------------------------------------------------------- label store and benchmark


def test_label_store_of_another_workspace_is_refused(pair: Pair, tmp_path: Path) -> None:
    from spurious.label.store import LabelStore

    a, b = pair
    mine, theirs = _copy(a, tmp_path / "a"), _copy(b, tmp_path / "b")
    LabelStore(mine)
    shutil.copy(mine.root / "labels.sqlite", theirs.root / "labels.sqlite")
    with pytest.raises(IncompatibleArtifactError, match=_names(
            str(theirs.root / "labels.sqlite"), "'synth:a'", a.model_fingerprint, "'synth:b'", b.model_fingerprint)):
        LabelStore(theirs)


@pytest.mark.parametrize("stage,manifest", [
    ("retrieve", lambda ws: {"model": {"spec": ws.model_spec, "fingerprint": ws.model_fingerprint}}),
    ("visualize", lambda ws: {"model_spec": ws.model_spec, "model_fingerprint": ws.model_fingerprint}),
])
def test_label_sync_refuses_a_stage_folder_of_another_model(pair: Pair, tmp_path: Path, stage: str,
                                                            manifest: Callable[[Workspace], dict]) -> None:
    from spurious.label.store import LabelStore

    a, b = pair
    ws = _copy(a, tmp_path / "a")
    (ws.root / stage).mkdir()
    (ws.root / stage / "manifest.json").write_text(json.dumps(manifest(b)))
    (ws.root / stage / "candidates.jsonl").write_text("")  # retrieve is read only when it has candidates
    with pytest.raises(IncompatibleArtifactError, match=_names(
            str(ws.root / stage / "manifest.json"), "'synth:b'", b.model_fingerprint, "'synth:a'",
            a.model_fingerprint, f"spurious {stage} {ws.root} --overwrite")):
        LabelStore(ws, sync=True)


def test_benchmark_refuses_a_retrieval_of_another_model(pair: Pair, tmp_path: Path) -> None:
    from spurious.benchmark import build_benchmark

    a, b = pair
    ws = _copy(a, tmp_path / "a")
    (ws.root / "retrieve").mkdir()
    (ws.root / "retrieve" / "manifest.json").write_text(json.dumps(
        {"format": "spurious-retrieve", "model": {"spec": b.model_spec, "fingerprint": b.model_fingerprint}}))
    with pytest.raises(IncompatibleArtifactError, match=_names(
            str(ws.root / "retrieve" / "manifest.json"), "'synth:b'", b.model_fingerprint, "'synth:a'",
            a.model_fingerprint, f"spurious retrieve {ws.root} --overwrite")):
        build_benchmark(ws.root, tmp_path / "bench")
