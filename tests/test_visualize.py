"""The visualize stage against numpy oracles: selection, max-activating images, neuron baseline, diversity,
the files it writes, HTML escaping, resumption, plan checks and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyNet, tiny_classifier, write_images
from PIL import Image

STEPS = 4  # APGD steps in the tests: the stage logic, not the optimiser, is under test here


# ---------------------------------------------------------------------------- fixtures


def _classifier(names: list[str], seed: int = 0):  # type: ignore[no-untyped-def]
    from spurious.models import Classifier, Preprocessing

    torch.manual_seed(seed)
    pre = Preprocessing(input_size=(32, 32), resize_size=32, crop_pct=1.0, interpolation="bilinear",
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return Classifier.from_module(TinyNet(len(names)).eval(), pre, names, "test:tiny")


def _make_ws(root: Path, classifier, per_class: dict[str, int], n_components: int = 5) -> Path:  # type: ignore[no-untyped-def]
    from spurious.extract import extract
    from spurious.npca import npca

    data = write_images(root / "data", per_class, seed=1)
    extract(root / "ws", model=classifier, data=f"folder:{data}", num_workers=0, progress=False, dtype="float32",
            shard_size=8)
    npca(root / "ws", n_components=n_components, progress=False)
    return root / "ws"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A workspace of the conftest tiny CNN (3 classes, D=12) on random-colour images, with npca (L=5)."""
    root = tmp_path_factory.mktemp("vis-tiny")
    clf = tiny_classifier(num_classes=3)
    return _make_ws(root, clf, {"a": 9, "b": 12, "c": 8}), clf


@pytest.fixture(scope="module")
def visualized(tiny, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The stage run once on a copy of the tiny workspace (candidates 4, keep 3, 3 top images)."""
    from spurious.visualize import visualize

    ws, clf = tiny
    copy = tmp_path_factory.mktemp("vis-run") / "ws"
    shutil.copytree(ws, copy)
    result = visualize(copy, model=clf, candidates=4, keep=3, steps=STEPS, top_images=3, progress=False)
    return copy, clf, result


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _alpha_oracle(phi: np.ndarray, basis) -> np.ndarray:  # type: ignore[no-untyped-def]
    """alpha_l^k = <1, v_l> <v_l, w ⊙ phi - mu> straight from the definition (float64)."""
    v = basis.v.astype(np.float64)
    psi = phi.astype(np.float64) * basis.w.astype(np.float64)
    return v.sum(1)[None, :] * ((psi - basis.mu.astype(np.float64)) @ v.T)


def _store(ws: Path):  # type: ignore[no-untyped-def]
    from spurious.workspace import Workspace

    return Workspace.open(ws).feature_store("train")


# ---------------------------------------------------------------------------- building blocks


def test_default_eps_closed_form() -> None:
    from spurious.visualize import default_eps

    assert default_eps((3, 224, 224)) == pytest.approx(30.0)
    assert default_eps((3, 64, 64)) == pytest.approx(30.0 * np.sqrt(3 * 64 * 64 / (3 * 224 * 224)))
    assert default_eps((3, 448, 448)) == pytest.approx(60.0)


def test_selection_ranks_by_npfv_probability(tiny) -> None:  # type: ignore[no-untyped-def]
    from spurious.npca import load_npca
    from spurious.visualize import default_eps, select_components

    ws, clf = tiny
    basis = load_npca(ws)[1]
    sel = select_components(clf, basis, candidates=5, keep=3, steps=STEPS)
    x = sel.visualization.images
    assert x.shape == (5, 3, 32, 32) and sel.candidates.tolist() == [0, 1, 2, 3, 4]
    # inside the constraint set: the image box and the L2 ball around the gray image
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float((x - 0.5).flatten(1).norm(dim=1).max()) <= default_eps((3, 32, 32)) * (1 + 1e-5)
    # oracle: the wrapped network's own logits at the returned NPFVs, softmax in numpy
    with torch.no_grad():
        logits = clf.native_logits(x).double().numpy()
    p = _softmax(logits)[:, 1]
    np.testing.assert_allclose(sel.probability, p, rtol=1e-5, atol=1e-7)
    assert sel.selected.tolist() == np.argsort(-p, kind="stable")[:3].tolist()
    # the stored objective is alpha_l^k at the NPFV; APGD did not end below the gray start
    with torch.no_grad():
        phi = clf.phi(x).double().numpy()
        phi0 = clf.phi(torch.full((1, 3, 32, 32), 0.5)).double().numpy()
    a = _alpha_oracle(phi, basis)
    np.testing.assert_allclose(sel.visualization.value, np.diag(a), rtol=1e-4, atol=1e-5)
    assert np.all(np.diag(a) >= _alpha_oracle(phi0, basis)[0] - 1e-6)
    assert np.any(np.diag(a) > _alpha_oracle(phi0, basis)[0] + 1e-6)  # and really moved up


def test_npfv_leaves_the_classifier_as_found(tiny) -> None:  # type: ignore[no-untyped-def]
    from spurious.npca import load_npca
    from spurious.visualize import npfv

    ws, clf = tiny
    clf.train(True)
    first = next(clf.parameters())
    first.requires_grad_(False)
    try:
        vis = npfv(clf, load_npca(ws)[0], [2, 0], steps=2)
        assert clf.training is True and first.requires_grad is False
        assert all(p.requires_grad for p in list(clf.parameters())[1:])
        assert all(p.grad is None for p in clf.parameters())
        assert vis.index.tolist() == [2, 0] and vis.kind == "component"
    finally:
        first.requires_grad_(True)
        clf.eval()


def test_npfv_and_neuron_visualization_errors(tiny) -> None:  # type: ignore[no-untyped-def]
    from spurious.npca import load_npca
    from spurious.visualize import neuron_visualization, npfv, select_components

    ws, clf = tiny
    basis = load_npca(ws)[0]
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        npfv(clf, basis, eps=-1.0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        npfv(clf, basis, steps=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        npfv(clf, basis, batch_size=0)
    with pytest.raises(ValueError, match="component index out of range"):
        npfv(clf, basis, [7], steps=1)
    with pytest.raises(TypeError, match="basis must be a spurious.npca.ClassBasis"):
        npfv(clf, "basis")
    with pytest.raises(ValueError, match="fitted for another model"):
        npfv(tiny_classifier(num_classes=3, seed=5), basis, steps=1)
    with pytest.raises(ValueError, match="keep must be a positive integer"):
        select_components(clf, basis, keep=0)
    with pytest.raises(ValueError, match="neuron index out of range"):
        neuron_visualization(clf, [12], steps=1)


def test_neuron_visualization_maximises_phi_j(tiny) -> None:  # type: ignore[no-untyped-def]
    from spurious.visualize import neuron_visualization

    _, clf = tiny
    vis = neuron_visualization(clf, [3, 7], k=1, steps=STEPS, batch_size=1)  # chunks of one image
    with torch.no_grad():
        phi = clf.phi(vis.images).double().numpy()
        phi0 = clf.phi(torch.full((1, 3, 32, 32), 0.5)).double().numpy()[0]
    np.testing.assert_allclose(vis.value, [phi[0, 3], phi[1, 7]], rtol=1e-4, atol=1e-6)
    assert vis.value[0] >= phi0[3] and vis.value[1] >= phi0[7]
    assert vis.kind == "neuron" and vis.k == 1


def test_max_activating_equals_numpy_argsort(tiny) -> None:  # type: ignore[no-untyped-def]
    from spurious.npca import load_npca
    from spurious.visualize import max_activating, max_activating_neurons
    from spurious.workspace import Workspace

    ws, _ = tiny
    store = _store(ws)
    W, b = Workspace.open(ws).head()
    basis = load_npca(ws)[1]
    rows = np.flatnonzero(np.asarray(store.labels) == 1)
    phi = store.phi(rows).astype(np.float64)
    a = _alpha_oracle(phi, basis)[:, [3, 0, 1]]
    probs = _softmax(phi @ W.T.astype(np.float64) + b.astype(np.float64))[:, 1]  # K=3: every class is in the top-k
    for chunk in (65536, 5):  # one chunk, and a streaming merge over chunks of 5 rows
        ma = max_activating(store, basis, [3, 0, 1], top=4, chunk_rows=chunk)
        order = np.argsort(-a, axis=0, kind="stable")[:4].T  # [3, 4] positions into rows
        np.testing.assert_array_equal(ma.rows, rows[order])
        np.testing.assert_allclose(ma.values, np.take_along_axis(a.T, order, 1), rtol=1e-9)
        assert ma.ids == [[store.ids[r] for r in rr] for rr in rows[order]]
        np.testing.assert_allclose(ma.probability, probs[order], rtol=1e-4)
    mn = max_activating_neurons(store, 1, [5, 2], top=3, chunk_rows=4)
    order = np.argsort(-phi[:, [5, 2]], axis=0, kind="stable")[:3].T
    np.testing.assert_array_equal(mn.rows, rows[order])
    assert max_activating(store, basis, [0], top=500).rows.shape == (1, rows.size)  # capped at the class size


def test_max_activating_ties_and_missing_probability(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Many tied values (ties go to the lower row, also across chunks); NaN where k is not in the stored top-k."""
    from spurious.npca import fit_class
    from spurious.workspace import import_features
    from spurious.visualize import max_activating, max_activating_neurons
    from spurious.workspace import Workspace

    rng = np.random.default_rng(0)
    phi = rng.integers(0, 3, size=(90, 4)).astype(np.float32)  # values in {0, 1, 2}: ties everywhere
    labels = np.repeat([0, 1, 2], 30)
    W = rng.standard_normal((3, 4)).astype(np.float32)
    b = np.array([0.0, 1.0, 0.0], np.float32)  # class 1 wins for some of its images, not for all
    Workspace.create_from_head(tmp_path / "ws", W, b, spec="test:head")
    store = import_features(tmp_path / "ws", phi, labels, [f"img{i:03d}" for i in range(90)], dtype="float32",
                            topk=1, shard_size=16)
    basis = fit_class(phi[30:60], W[1], 0.0, k=1, n_components=3, precision="float64")
    rows = np.arange(30, 60)
    a = _alpha_oracle(phi[30:60], basis)
    ma = max_activating(store, basis, top=12, chunk_rows=7)
    np.testing.assert_array_equal(ma.rows, rows[np.argsort(-np.round(a, 9), axis=0, kind="stable")[:12].T])
    mn = max_activating_neurons(store, 1, [0, 3], top=12, chunk_rows=7)
    np.testing.assert_array_equal(mn.rows, rows[np.argsort(-phi[30:60][:, [0, 3]], axis=0, kind="stable")[:12].T])
    logits = phi.astype(np.float64) @ W.T.astype(np.float64) + b
    top1 = np.argmax(logits, axis=1)  # only the top-1 prediction is stored
    p1 = _softmax(logits)[:, 1]
    expected = np.where(top1[mn.rows] == 1, p1[mn.rows], np.nan)
    np.testing.assert_allclose(mn.probability, expected, rtol=1e-4)
    assert np.isnan(mn.probability).any() and (~np.isnan(mn.probability)).any()


def test_neuron_importance_matches_numpy(tiny) -> None:  # type: ignore[no-untyped-def]
    from spurious.visualize import neuron_importance
    from spurious.workspace import Workspace

    ws, _ = tiny
    store = _store(ws)
    W, b = Workspace.open(ws).head()
    phi = store.phi().astype(np.float64)
    pred = np.argmax(phi @ W.T.astype(np.float64) + b, axis=1)
    imp = neuron_importance(store, W, chunk_rows=7)
    for k in range(3):
        sel = pred == k
        assert imp.counts[k] == sel.sum()
        if sel.any():
            np.testing.assert_allclose(imp.importance[k], phi[sel].mean(0) * W[k], rtol=1e-9, atol=1e-12)
            assert imp.top(k, 5).tolist() == np.argsort(-(phi[sel].mean(0) * W[k]), kind="stable")[:5].tolist()
    # a class nobody is predicted as: undefined importance
    W2 = np.concatenate([W, np.zeros((1, W.shape[1]), np.float32)])
    imp2 = neuron_importance(store, W2, [3, 0])
    assert imp2.counts[0] == 0 and np.isnan(imp2.importance[0]).all()
    with pytest.raises(ValueError, match="no image of the split is predicted as class 3"):
        imp2.top(3)
    with pytest.raises(ValueError, match="class 2 is not among the classes"):
        imp2.top(2)
    with pytest.raises(ValueError, match="W must have shape"):
        neuron_importance(store, W[:, :5])


def test_diversity_counts_on_hand_made_sets() -> None:
    from spurious.visualize import SetDiversity, diversity

    disjoint = diversity([[1, 2, 3], [4, 5, 6]])
    assert disjoint == SetDiversity(sets=2, slots=6, distinct=6, repeated=0, identical_pairs=0)
    same = diversity([["a", "b", "c", "d", "e"]] * 5)
    assert same == SetDiversity(sets=5, slots=25, distinct=5, repeated=5, identical_pairs=50)
    # a in 2 sets (1 pair), c in 3 sets (3 pairs)
    mixed = diversity([["a", "b", "c"], ["c", "d"], ["a", "c", "e"]])
    assert mixed == SetDiversity(sets=3, slots=8, distinct=5, repeated=2, identical_pairs=4)
    assert (disjoint + mixed).to_dict() == {"sets": 5, "slots": 14, "distinct": 11, "repeated": 2,
                                            "identical_pairs": 4}
    assert diversity([]) == SetDiversity(0, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="set 1 lists image 'x' more than once"):
        diversity([["x"], ["x", "y", "x"]])


# ---------------------------------------------------------------------------- the stage


def test_stage_writes_files_and_components_json(visualized) -> None:  # type: ignore[no-untyped-def]
    from spurious.npca import load_npca

    ws, clf, result = visualized
    out = ws / "visualize"
    assert result.classes == [0, 1, 2] and result.classes_done == 3 and result.classes_reused == 0
    assert result.eps == pytest.approx(30 * np.sqrt(3 * 32 * 32 / (3 * 224 * 224)))
    assert (out / "manifest.json").is_file() and (out / "plan.json").is_file() and (out / "index.html").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_fingerprint"] == clf.fingerprint() and manifest["package_version"]
    assert [c["class"] for c in manifest["classes"]] == [0, 1, 2]
    store = _store(ws)
    pca = load_npca(ws)
    total_pairs = 0
    for k in range(3):
        cdir = out / f"class_{k:05d}"
        table = json.loads((cdir / "components.json").read_text())
        assert table["class"] == k and table["name"] == "abc"[k] and len(table["components"]) == 3
        # ranked by the NPFV class probability, the kept ones are the best of the candidates
        probs = [c["npfv_probability"] for c in table["components"]]
        assert probs == sorted(probs, reverse=True) and [c["rank"] for c in table["components"]] == [1, 2, 3]
        cand = {c["component"]: c["npfv_probability"] for c in table["candidates"]}
        assert sorted(cand) == [0, 1, 2, 3]
        assert min(probs) >= max(p for l, p in cand.items() if l not in {c["component"] for c in table["components"]})
        rows = np.flatnonzero(np.asarray(store.labels) == k)
        a = _alpha_oracle(store.phi(rows), pca[k])
        for comp in table["components"]:
            l = comp["component"]
            assert comp["eigenvalue"] == pytest.approx(float(pca[k].lam[l]))
            assert len(comp["npfv_top3"]) == 3 and comp["npfv_top3"][0]["probability"] >= comp["npfv_probability"]
            for f in (comp["npfv_png"], comp["npfv_heatmap_png"]):
                assert Image.open(cdir / f).size == (32, 32)
            order = np.argsort(-a[:, l], kind="stable")[:3]
            assert [t["id"] for t in comp["top_images"]] == [store.ids[r] for r in rows[order]]
            np.testing.assert_allclose([t["alpha"] for t in comp["top_images"]], a[order, l], rtol=1e-6)
            for t in comp["top_images"]:
                assert t["error"] is None and (cdir / t["png"]).is_file() and (cdir / t["heatmap_png"]).is_file()
        neu = table["neurons"]
        for n in neu["top"]:
            assert (cdir / n["visualization_png"]).is_file() and len(n["top_images"]) == 3
        div = table["diversity"]["components"]
        assert div["sets"] == 3 and div["slots"] == 9
        total_pairs += div["identical_pairs"]
        html = (cdir / "index.html").read_text()
        assert "adversarial noise" in html and "their heatmaps show the feature" in html
        assert comp["npfv_png"] in html
    assert result.diversity["components"]["identical_pairs"] == total_pairs
    index = (out / "index.html").read_text()
    assert all(f"class_{k:05d}/index.html" in index for k in range(3))


def test_thumbnails_are_the_preprocessed_training_images(visualized) -> None:  # type: ignore[no-untyped-def]
    ws, clf, _ = visualized
    data_root = Path(_store(ws).manifest["data"]["spec"].split(":", 1)[1])
    cdir = ws / "visualize" / "class_00002"
    comp = json.loads((cdir / "components.json").read_text())["components"][0]
    for t in comp["top_images"]:
        expected = clf.preprocessing(Image.open(data_root / t["id"]))  # [3, H, W] in [0, 1]
        saved = np.asarray(Image.open(cdir / t["png"]), dtype=np.float64) / 255
        np.testing.assert_allclose(saved, expected.permute(1, 2, 0).numpy(), atol=0.5 / 255 + 1e-6)


def test_resume_does_not_recompute_a_finished_class(visualized) -> None:  # type: ignore[no-untyped-def]
    from spurious.visualize import visualize

    ws, clf, _ = visualized
    cdir = ws / "visualize" / "class_00001"
    before = {p.name: p.stat().st_mtime_ns for p in cdir.iterdir()}
    again = visualize(ws, model=clf, candidates=4, keep=3, steps=STEPS, top_images=3, progress=False)
    assert again.classes_done == 0 and again.classes_reused == 3
    assert {p.name: p.stat().st_mtime_ns for p in cdir.iterdir()} == before


def test_interrupted_class_is_redone_and_plan_mismatch_refused(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from spurious.visualize import visualize
    from spurious.workspace import IncompatibleArtifactError

    ws0, clf = tiny
    ws = tmp_path / "ws"
    shutil.copytree(ws0, ws)
    r = visualize(ws, model=clf, classes=[0, "c"], candidates=3, keep=2, steps=2, top_images=2, neurons=0,
                  progress=False)
    assert r.classes_done == 2 and set(r.diversity) == {"components"}  # neurons=0: no baseline
    assert r.diversity["components"]["sets"] == 4 and r.diversity["components"]["slots"] == 8
    (ws / "visualize" / "class_00002" / "components.json").unlink()  # as if killed before the done marker
    (ws / "visualize" / "class_00002" / "stale.png").write_bytes(b"")
    r = visualize(ws, model=clf, classes=[0, 2], candidates=3, keep=2, steps=2, top_images=2, neurons=0,
                  progress=False)
    assert (r.classes_done, r.classes_reused) == (1, 1)
    assert not (ws / "visualize" / "class_00002" / "stale.png").exists()
    with pytest.raises(IncompatibleArtifactError, match="holds visualizations made with other settings.*keep: 2 vs 1"):
        visualize(ws, model=clf, classes=[0], candidates=3, keep=1, steps=2, top_images=2, neurons=0, progress=False)
    r = visualize(ws, model=clf, classes=[0], candidates=3, keep=1, steps=2, top_images=2, neurons=0,
                  overwrite=True, progress=False)
    assert r.classes_done == 1 and not (ws / "visualize" / "class_00002").exists()


def test_html_escapes_class_names_with_markup(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from spurious.visualize import visualize

    evil = '<img src=x onerror="alert(1)">&cat'
    clf = _classifier([evil, "plain"])
    ws = _make_ws(tmp_path, clf, {"0": 6, "1": 6}, n_components=3)  # folders named by class index
    visualize(ws, model=clf, candidates=2, keep=1, steps=1, top_images=2, progress=False)
    for page in (ws / "visualize" / "index.html", ws / "visualize" / "class_00000" / "index.html"):
        html = page.read_text()
        assert evil not in html and "<img src=x" not in html
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;cat" in html
    assert json.loads((ws / "visualize" / "class_00000" / "components.json").read_text())["name"] == evil


def test_images_are_reloaded_by_id_from_a_moved_dataset(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from spurious.visualize import visualize

    _, clf = tiny
    root = tmp_path
    _make_ws(root, clf, {"a": 4, "b": 4, "c": 4}, n_components=2)
    shutil.move(str(root / "data"), str(root / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="cannot re-open the training images.*--data"):
        visualize(root / "ws", model=clf, classes=[0], candidates=2, keep=1, steps=1, top_images=2, progress=False)
    r = visualize(root / "ws", model=clf, classes=[0], candidates=2, keep=1, steps=1, top_images=2,
                  data=f"folder:{root / 'elsewhere'}", progress=False)
    table = json.loads((root / "ws" / "visualize" / "class_00000" / "components.json").read_text())
    assert r.classes_done == 1 and all(t["error"] is None for t in table["components"][0]["top_images"])


def test_stage_errors(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from spurious.visualize import visualize
    from spurious.workspace import IncompatibleArtifactError

    ws, clf = tiny
    with pytest.raises(FileNotFoundError, match="not a spurious workspace"):
        visualize(tmp_path / "none")
    with pytest.raises(ValueError, match="unknown class 9"):
        visualize(ws, model=clf, classes=[9])
    with pytest.raises(ValueError, match="unknown class 'zebra'"):
        visualize(ws, model=clf, classes=["zebra"])
    with pytest.raises(ValueError, match="candidates must be a positive integer"):
        visualize(ws, model=clf, candidates=0)
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        visualize(ws, model=clf, eps=float("nan"))
    with pytest.raises(ValueError, match="neurons must be a non-negative integer"):
        visualize(ws, model=clf, neurons=-1)
    with pytest.raises(FileNotFoundError, match="no finished features for split 'val'"):
        visualize(ws, model=clf, split="val")
    with pytest.raises(IncompatibleArtifactError, match="made with model"):
        visualize(ws, model=tiny_classifier(num_classes=3, seed=4), classes=[0], progress=False)
    with pytest.raises(TypeError, match="seed must be an integer"):
        visualize(ws, model=clf, seed=1.5)
    with pytest.raises(TypeError, match="model must be None"):
        visualize(ws, model=3.5, classes=[0])
    with pytest.raises(ValueError, match="cam_layer 'nope' is not a module"):
        visualize(ws, model=clf, cam_layer="nope")
    # no npca yet
    fresh = tmp_path / "fresh"
    shutil.copytree(ws, fresh)
    shutil.rmtree(fresh / "npca")
    with pytest.raises(FileNotFoundError, match="no neural PCA.*spurious npca"):
        visualize(fresh, model=clf)
    # a class without components (one training image)
    from spurious.extract import extract
    from spurious.npca import npca

    data = write_images(tmp_path / "few", {"a": 5, "b": 1}, seed=2)
    clf2 = tiny_classifier(num_classes=2)
    extract(tmp_path / "ws2", model=clf2, data=data, num_workers=0, progress=False)
    with pytest.warns(UserWarning, match="fewer than 2"):
        npca(tmp_path / "ws2", n_components=2, progress=False)
    with pytest.raises(ValueError, match=r"class 1 \(b\) has no neural PCA components"):
        visualize(tmp_path / "ws2", model=clf2, classes=[1])
    # npca fitted on another split
    extract(tmp_path / "ws2", model=clf2, data=data, split="other", num_workers=0, progress=False)
    with pytest.raises(IncompatibleArtifactError, match="was fitted on split 'train'"):
        visualize(tmp_path / "ws2", model=clf2, split="other")


# ---------------------------------------------------------------------------- the CLI on the planted demo


def test_cli_json_summary_on_the_planted_demo(planted_ws, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from spurious.cli import main

    ws = str(planted_ws)
    bare = tmp_path / "bare"
    shutil.copytree(planted_ws, bare, ignore=shutil.ignore_patterns("npca"))
    code = main(["visualize", str(bare), "--classes", "0", "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 2 and "no neural PCA" in err and len(err.strip().splitlines()) == 1
    code = main(["visualize", ws, "--classes", "star", "1", "--candidates", "4", "--keep", "2", "--steps", "3",
                 "--top-images", "2", "--batch-size", "3", "--json", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["classes"] == [0, 1] and summary["classes_done"] == 2 and summary["keep"] == 2
    assert summary["eps"] == pytest.approx(30 * np.sqrt(3 * 32 * 32 / (3 * 224 * 224)))
    assert set(summary["diversity"]) == {"components", "neurons"}
    assert Path(summary["index_html"]).is_file()
    code = main(["visualize", ws, "--classes", "0", "1", "--candidates", "4", "--keep", "2", "--steps", "3",
                 "--top-images", "2", "--no-progress"])
    out, _ = capsys.readouterr()
    assert code == 0 and "0 classes (2 reused)" in out


@pytest.mark.parametrize("argv,pattern", [
    (["--classes", "zebra"], "unknown class 'zebra'"),
    (["--classes", "99"], "unknown class 99"),
    (["--keep", "0"], "keep must be a positive integer"),
    (["--device", "tpu"], "unknown device"),
    (["--split", "val"], "no finished features for split 'val'"),
])
def test_cli_bad_input_exits_2(planted_ws, capsys, argv, pattern) -> None:  # type: ignore[no-untyped-def]
    import re

    from spurious.cli import main

    code = main(["visualize", str(planted_ws), *argv, "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 2 and re.search(pattern, err) and len(err.strip().splitlines()) == 1, err


def test_cam_layer_option_changes_the_heatmaps(planted_ws, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--cam-layer is recorded in the plan and used: the NPFV heatmap differs from the default layer's."""
    from PIL import Image

    from spurious.cli import main

    runs = {}
    for name, extra in (("default", []), ("fine", ["--cam-layer", "stages.1"])):
        ws = tmp_path / name
        shutil.copytree(planted_ws, ws, ignore=shutil.ignore_patterns("visualize"))
        code = main(["visualize", str(ws), "--classes", "0", "--candidates", "3", "--keep", "1", "--steps", "3",
                     "--top-images", "1", "--no-progress"] + extra)
        assert code == 0, capsys.readouterr().err
        table = json.loads((ws / "visualize" / "class_00000" / "components.json").read_text())
        comp = table["components"][0]
        runs[name] = np.asarray(Image.open(ws / "visualize" / "class_00000" / comp["npfv_heatmap_png"]), float)
    assert json.loads((tmp_path / "fine" / "visualize" / "plan.json").read_text())["cam_layer"] == "stages.1"
    assert "cam_layer" not in json.loads((tmp_path / "default" / "visualize" / "plan.json").read_text())
    assert np.abs(runs["fine"] - runs["default"]).mean() > 1.0  # other layer, other map
