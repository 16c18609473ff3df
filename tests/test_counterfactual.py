"""The counterfactual stage against numpy oracles: alpha from phi in float64, the documented objective, the
eps-ball and the box for every norm, start-image selection, outputs, resumption and errors (API and CLI)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_demo_out, tiny_classifier, write_images
from PIL import Image

pytestmark = pytest.mark.filterwarnings("ignore:the model does not agree with the labels:UserWarning")  # random nets

STEPS = 8  # enough for APGD to move alpha on the tiny model; the optimiser itself is tested in test_apgd


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A workspace of the conftest tiny CNN (3 classes, D=12): train and val splits, npca (L=5)."""
    from spurious.extract import extract
    from spurious.npca import npca

    root = tmp_path_factory.mktemp("cf-tiny")
    clf = tiny_classifier(num_classes=3)
    train = write_images(root / "train", {"a": 9, "b": 12, "c": 8}, seed=1)
    val = write_images(root / "val", {"a": 4, "b": 5, "c": 3}, seed=2)
    for split, data in (("train", train), ("val", val)):
        extract(root / "ws", model=clf, data=f"folder:{data}", split=split, num_workers=0, progress=False,
                dtype="float32", shard_size=8)
    npca(root / "ws", n_components=5, progress=False)
    return root / "ws", clf


def _basis(ws: Path, k: int):  # type: ignore[no-untyped-def]
    from spurious.npca import load_npca

    return load_npca(ws)[k]


def _alpha_oracle(clf, basis, l: int, x: torch.Tensor) -> np.ndarray:  # type: ignore[no-untyped-def]
    """alpha_l^k = <1, v_l> <v_l, w_k * phi - mu_k>, in float64 numpy from the model's phi."""
    with torch.no_grad():
        phi = clf.phi(x).double().numpy()
    v = basis.v[l].astype(np.float64)
    return v.sum() * ((phi * basis.w.astype(np.float64) - basis.mu.astype(np.float64)) @ v)


def _starts(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, 32, 32), generator=g) * 0.8 + 0.1


# ---------------------------------------------------------------------------- the optimisation


@pytest.mark.parametrize("mode", ["add", "remove"])
def test_alpha_is_the_float64_oracle_and_moves_the_right_way(tiny, mode: str) -> None:
    from spurious.counterfactual import counterfactual_images

    ws, clf = tiny
    basis = _basis(ws, 1)
    x0 = _starts()
    cf = counterfactual_images(clf, basis, 0, x0, mode=mode, steps=STEPS, eps=2.0)
    before, after = _alpha_oracle(clf, basis, 0, x0), _alpha_oracle(clf, basis, 0, cf.images)
    np.testing.assert_allclose(cf.before.alpha, before, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(cf.after.alpha, after, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(cf.objective, (1 if mode == "add" else -1) * after, rtol=1e-4, atol=1e-5)
    assert (after > before).all() if mode == "add" else (after < before).all()
    with torch.no_grad():
        p = torch.softmax(clf(cf.images).double(), 1).numpy()
    np.testing.assert_allclose(cf.after.probability, p[:, 1], rtol=1e-6)
    assert (cf.after.top1 == p.argmax(1)).all()


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_counterfactual_stays_in_the_ball_and_the_box(tiny, norm: str) -> None:
    from spurious.counterfactual import counterfactual_images, default_budget

    ws, clf = tiny
    basis = _basis(ws, 0)
    x0 = _starts(seed=3)
    x0[0, :, :4] = 0.0  # pixels on the box bounds
    x0[1, :, :4] = 1.0
    eps = {"l2": 3.0, "linf": 0.05, "l1": 40.0}[norm]
    cf = counterfactual_images(clf, basis, 1, x0, mode="add", norm=norm, eps=eps, steps=STEPS)
    d = (cf.images - x0).flatten(1).double()
    dist = {"l2": d.norm(dim=1), "linf": d.abs().amax(1), "l1": d.abs().sum(1)}[norm]
    assert (dist <= eps * (1 + 1e-5)).all(), dist
    assert float(cf.images.min()) >= 0.0 and float(cf.images.max()) <= 1.0
    assert (_alpha_oracle(clf, basis, 1, cf.images) > _alpha_oracle(clf, basis, 1, x0)).all()
    assert default_budget(norm, (3, 224, 224)) == pytest.approx({"l2": 30.0, "linf": 30.0 / np.sqrt(150528),
                                                                  "l1": 30.0 * np.sqrt(1505.28)}[norm])


def test_l1_projection_is_the_nearest_feasible_point() -> None:
    from spurious.counterfactual._l1 import project_l1

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((3, 50), generator=g, dtype=torch.float64)
    z = x0 + torch.randn((3, 50), generator=g, dtype=torch.float64) * 0.5
    eps = torch.tensor([0.5, 2.0, 100.0], dtype=torch.float64)
    y = project_l1(z, x0, eps)
    assert ((y - x0).abs().sum(1) <= eps * (1 + 1e-9)).all() and y.min() >= 0 and y.max() <= 1
    torch.testing.assert_close(y[2], z[2].clamp(0, 1))  # inside the ball: the box clip
    # oracle: no feasible point of a large random sample (mixed with y) is closer to z
    for i in range(2):
        cand = y[i] + torch.randn((4000, 50), generator=g, dtype=torch.float64) * 0.02
        cand = cand.clamp(0, 1)
        feasible = (cand - x0[i]).abs().sum(1) <= eps[i]
        assert ((cand[feasible] - z[i]).norm(dim=1) >= (y[i] - z[i]).norm() - 1e-9).all()


def _l1_projection_oracle(z: np.ndarray, x0: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Independent float64 numpy projection: bisection (200 halvings) on the threshold lam, row by row."""
    d = z - x0
    out = np.clip(d, -x0, 1.0 - x0)
    for i in range(len(z)):
        if np.abs(out[i]).sum() <= eps[i]:
            continue
        lo, hi = 0.0, float(np.abs(d[i]).max())
        for _ in range(200):
            lam = 0.5 * (lo + hi)
            step = np.clip(np.sign(d[i]) * np.maximum(np.abs(d[i]) - lam, 0.0), -x0[i], 1.0 - x0[i])
            lo, hi = (lo, lam) if np.abs(step).sum() <= eps[i] else (lam, hi)
        out[i] = np.clip(np.sign(d[i]) * np.maximum(np.abs(d[i]) - hi, 0.0), -x0[i], 1.0 - x0[i])
    return np.clip(x0 + out, 0.0, 1.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_l1_projection_matches_a_bisection_oracle(dtype: torch.dtype) -> None:
    from spurious.counterfactual._l1 import project_l1

    rng = np.random.default_rng(1)
    for _ in range(60):
        n, m = int(rng.integers(1, 6)), int(rng.integers(1, 300))
        x0 = rng.random((n, m))
        x0[:, : m // 4] = rng.choice([0.0, 1.0], size=(n, m // 4))  # values on the box bounds
        keep = rng.random((n, m)) < rng.random()  # sparse moves (zeros of d), some rows all zero
        z = x0 + rng.standard_normal((n, m)) * rng.choice([0.01, 0.5, 3.0]) * keep
        eps = rng.choice([1e-3, 0.1, 1.0, 10.0, 1e4], size=n)  # 1e4: more than the box allows
        zt, x0t, et = (torch.tensor(v, dtype=dtype) for v in (z, x0, eps))
        y = project_l1(zt, x0t, et)
        assert y.dtype == dtype and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        y64, x064, e64 = y.double().numpy(), x0t.double().numpy(), et.double().numpy()
        np.testing.assert_allclose(y64, _l1_projection_oracle(zt.double().numpy(), x064, e64), rtol=0,
                                   atol=1e-10 if dtype == torch.float64 else 1e-5)
        ulp = float(torch.finfo(dtype).eps)  # storing y rounds each value by at most half an ulp of 1
        assert (np.abs(y64 - x064).sum(1) <= e64 * (1 + 1e-12) + m * ulp).all()
        inside = np.abs(np.clip(z, 0, 1) - x0).sum(1) <= eps * (1 - 1e-6)  # already feasible: the box clip
        np.testing.assert_array_equal(y64[inside], zt.clamp(0, 1).double().numpy()[inside])
    zeros = torch.zeros((2, 7), dtype=dtype)  # z = x0: nothing moves
    torch.testing.assert_close(project_l1(zeros, zeros, torch.ones(2, dtype=dtype)), zeros, rtol=0, atol=0)


def test_optional_terms_follow_the_documented_formula(tiny) -> None:
    from spurious.counterfactual import counterfactual_images

    ws, clf = tiny
    basis = _basis(ws, 2)
    x0 = _starts(n=3, seed=5)
    cf = counterfactual_images(clf, basis, 1, x0, mode="remove", steps=STEPS, eps=2.0, keep_weight=0.5,
                               logprob_weight=2.0)

    def alphas(x: torch.Tensor) -> np.ndarray:
        return np.stack([_alpha_oracle(clf, basis, j, x) for j in range(basis.num_components)], 1)

    with torch.no_grad():
        f0, f1 = clf(x0).double().numpy(), clf(cf.images).double().numpy()
    a0, a1 = alphas(x0), alphas(cf.images)
    others = [j for j in range(basis.num_components) if j != 1]
    logp = f1[:, 2] - np.log(np.exp(f1).sum(1))
    want = -(a1[:, 1] + 2.0 * logp) - 0.5 * (((a1[:, others] - a0[:, others]) ** 2).mean(1)
                                             + ((f1[:, :2] - f0[:, :2]) ** 2).mean(1))
    np.testing.assert_allclose(cf.objective, want, rtol=1e-4, atol=1e-4)


def test_model_state_is_left_as_found(tiny) -> None:
    from spurious.counterfactual import counterfactual_images

    ws, clf = tiny
    clf.train()
    try:
        counterfactual_images(clf, _basis(ws, 0), 0, _starts(n=1), steps=2, eps=1.0)
        assert clf.training and all(p.requires_grad for p in clf.parameters())
        assert all(p.grad is None for p in clf.parameters())
    finally:
        clf.eval()


# ---------------------------------------------------------------------------- the stage


def test_stage_remove_defaults_to_max_activating_images_and_resumes(tiny, tmp_path: Path) -> None:
    import shutil

    from spurious.counterfactual import counterfactual, counterfactual_pairs
    from spurious.workspace import Workspace

    src, clf = tiny
    ws = tmp_path / "ws"
    shutil.copytree(src, ws)
    r = counterfactual(ws, "b", 0, mode="remove", n_images=3, steps=STEPS, eps=2.0, model=clf,
                       eval_models=[tiny_classifier(num_classes=3, seed=7)], progress=False)
    # oracle: the 3 training images labelled b with the largest alpha, from the stored phi in float64
    store = Workspace.open(ws).feature_store("train")
    rows = store.rows_of_class(1)
    a = _basis(ws, 1)
    v = a.v[0].astype(np.float64)
    alpha = v.sum() * ((store.phi(rows).astype(np.float64) * a.w - a.mu) @ v)
    want = [store.ids[r] for r in rows[np.argsort(-alpha, kind="stable")[:3]]]
    pairs = counterfactual_pairs(ws, 1, 0)
    assert [p.image_id for p in pairs] == want and r.source == "max-activating"
    assert r.pairs == r.pairs_done == 3 and r.pairs_reused == 0
    for p in pairs:
        assert p.mode == "remove" and len(p.models) == 2 and p.models[1]["role"] == "eval"
        for f in (p.original, p.counterfactual, p.difference, p.heatmap):
            assert Image.open(f).size == (32, 32)
        assert p.optimised["after"]["alpha"] < p.optimised["before"]["alpha"]
        assert p.record["distance"]["l2"] <= 2.0 * (1 + 1e-5)
        diff = np.asarray(Image.open(p.difference), dtype=np.float64)
        cf = np.asarray(Image.open(p.counterfactual), dtype=np.float64) - np.asarray(Image.open(p.original))
        assert np.corrcoef(diff.ravel(), cf.ravel())[0, 1] > 0.9  # the signed difference shows the change
    np.testing.assert_allclose(r.models[0]["alpha_before"], np.mean(np.sort(alpha)[::-1][:3]), rtol=1e-4)
    sheet = Path(r.sheet).read_text()
    assert all(p.original.name in sheet for p in pairs)
    assert (ws / "counterfactual" / "index.html").is_file()
    mtimes = [os.stat(p.counterfactual).st_mtime_ns for p in pairs]

    again = counterfactual(ws, 1, 0, mode="remove", n_images=3, steps=STEPS, eps=2.0, model=clf,
                           eval_models=[tiny_classifier(num_classes=3, seed=7)], progress=False)
    assert again.pairs_done == 0 and again.pairs_reused == 3
    assert [os.stat(p.counterfactual).st_mtime_ns for p in counterfactual_pairs(ws, 1, 0)] == mtimes
    more = counterfactual(ws, 1, 0, mode="remove", n_images=4, steps=STEPS, eps=2.0, model=clf,
                          eval_models=[tiny_classifier(num_classes=3, seed=7)], progress=False)
    assert more.pairs_done == 1 and more.pairs_reused == 3

    # --add: val images of the classes with the highest mean p(k), k excluded (numpy oracle on the val phi)
    added = counterfactual(ws, 1, 0, mode="add", n_images=2, confused=1, steps=STEPS, eps=2.0, model=clf,
                           progress=False)
    val = Workspace.open(ws).feature_store("val")
    W, b = Workspace.open(ws).head()
    z = val.phi().astype(np.float64) @ W.T.astype(np.float64) + b
    p = np.exp(z - z.max(1, keepdims=True))
    p = p[:, 1] / p.sum(1)
    means = {j: p[val.labels == j].mean() for j in (0, 2)}
    best = max(means, key=lambda j: means[j])
    rows = [r for r in np.flatnonzero(val.labels == best) if z[r].argmax() != 1]
    want = [val.ids[r] for r in rows[:2]]
    got = counterfactual_pairs(ws, 1, 0, mode="add")
    assert added.source == "confused-classes" and [g.image_id for g in got] == want
    assert all(g.optimised["after"]["alpha"] > g.optimised["before"]["alpha"] for g in got)
    assert len(counterfactual_pairs(ws, 1, 0)) == 4 + 2


def test_stage_takes_files_and_a_dataset(tiny, tmp_path: Path) -> None:
    import shutil

    from spurious.counterfactual import counterfactual, counterfactual_pairs

    src, clf = tiny
    ws = tmp_path / "ws"
    shutil.copytree(src, ws)
    files = write_images(tmp_path / "mine", {"x": 2}, size=48, seed=4)
    paths = sorted(str(p) for p in (files / "x").iterdir())
    r = counterfactual(ws, 0, 1, mode="add", images=paths, steps=2, eps=1.0, model=clf, progress=False)
    assert r.source == "images" and [p.image_id for p in counterfactual_pairs(ws, 0, 1)] == paths
    r = counterfactual(ws, 0, 1, mode="add", data=f"folder:{files}", n_images=5, steps=2, eps=1.0, model=clf,
                       progress=False)
    assert r.source == "data" and r.pairs == 2


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"component": 5}, r"component 5 does not exist for class 0: it has components 0\.\.4"),
    ({"eps": 0.0}, r"eps must be a finite number > 0"),
    ({"eps": -1.0, "norm": "l1"}, r"eps must be a finite number > 0"),
    ({"norm": "l3"}, r"unknown norm 'l3'"),
    ({"mode": "swap"}, r"unknown mode 'swap'"),
    ({"images": ["missing.png"]}, r"cannot read start image missing\.png"),
    ({"images": torch.rand(2, 3, 40, 40)}, r"start images have shape \(2, 3, 40, 40\), the model 'test:tiny' takes"),
    ({"model": "other"}, r"has 4 classes, the workspace .* 3, and they differ"),
    ({"k": "zebra"}, r"unknown class 'zebra'"),
])
def test_bad_input_is_a_value_error(tiny, kwargs: dict, match: str) -> None:
    from spurious.counterfactual import counterfactual

    ws, clf = tiny
    args = {"k": 0, "component": 0, "mode": "remove", "model": clf, "steps": 2, "n_images": 1, "progress": False,
            **kwargs}
    if args["model"] == "other":
        args["model"] = tiny_classifier(num_classes=4)
    with pytest.raises(ValueError, match=match):
        counterfactual(ws, args.pop("k"), args.pop("component"), **args)


def test_unreadable_file_is_a_value_error(tiny, tmp_path: Path) -> None:
    from spurious.counterfactual import counterfactual

    ws, clf = tiny
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read start image .*broken\.png"):
        counterfactual(ws, 0, 0, images=[bad], model=clf, steps=2, progress=False)


def test_index_reader_without_runs(tmp_path: Path) -> None:
    from spurious.counterfactual import counterfactual_pairs, read_counterfactual_index

    assert read_counterfactual_index(tmp_path)["components"] == {}
    assert counterfactual_pairs(tmp_path, 0, 0) == []
    (tmp_path / "counterfactual").mkdir()
    (tmp_path / "counterfactual" / "index.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="is not a counterfactual index"):
        read_counterfactual_index(tmp_path)


# ---------------------------------------------------------------------------- the command line


def _cli(argv: list[str]) -> tuple[int, str, str]:
    from spurious.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_on_the_fast_demo(fast_demo, tmp_path: Path) -> None:
    out = copy_demo_out(fast_demo, tmp_path / "demo")
    ws = str(out / "ws-robust")
    code, stdout, err = _cli(["counterfactual", ws, "--class", "0", "--component", "0", "--remove", "--steps", "3",
                              "--n-images", "2", "--eval-model", "demo:standard-tiny", "--json", "--no-progress"])
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["pairs"] == 2 and summary["source"] == "max-activating"
    assert [m["role"] for m in summary["models"]] == ["optimised", "eval"]
    assert summary["models"][0]["alpha_after"] < summary["models"][0]["alpha_before"]
    assert Path(summary["sheet"]).is_file()
    code, stdout, err = _cli(["counterfactual", ws, "--class", "0", "--component", "0", "--remove", "--steps", "3",
                              "--n-images", "2", "--eval-model", "demo:standard-tiny", "--no-progress"])
    assert code == 0 and "(0 done, 2 reused)" in stdout, err
    for extra, match in ((["--component", "999"], "component 999 does not exist"),
                         (["--component", "0", "--eps", "0"], "eps must be a finite number > 0"),
                         (["--component", "0", "--images", str(tmp_path / "nope.png")], "cannot read start image")):
        code, stdout, err = _cli(["counterfactual", ws, "--class", "0", "--remove", *extra])
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1 and match in err, err
