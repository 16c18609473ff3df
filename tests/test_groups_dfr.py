"""Group metrics (groups files, score --groups) and the DFR baseline (fix --method dfr), against direct computations."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_in_process, tiny_classifier
from test_score import _quiet, forward, listing, make_bench

from spurious.datasets import load_image
from spurious.groups import group_metrics, match_groups, read_groups
from spurious.score import score

pytestmark = pytest.mark.filterwarnings("ignore:the model does not agree with the labels:UserWarning")


# ----------------------------------------------------------------------------- groups files and metrics
def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.mark.parametrize("seed", range(4))
def test_group_metrics_match_a_direct_computation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, n_groups = 200, 6
    group_of = rng.integers(-1, n_groups, n)
    group_of[:n_groups] = np.arange(n_groups)  # every group has an image
    correct = rng.random(n) < 0.7
    m = group_metrics(correct, group_of, [f"g{g}" for g in range(n_groups)])
    acc = np.array([correct[group_of == g].mean() for g in range(n_groups)])
    assert np.allclose(m.accuracy, acc)
    assert list(m.counts) == [(group_of == g).sum() for g in range(n_groups)]
    assert m.worst_group_accuracy == pytest.approx(acc.min()) and m.worst_group == f"g{int(acc.argmin())}"
    assert m.mean_accuracy == pytest.approx(correct[group_of >= 0].mean())  # over images
    assert m.group_average_accuracy == pytest.approx(acc.mean())  # over groups
    # a group without images is nan and left out of the worst and the average
    m2 = group_metrics(correct, np.where(group_of == 0, -1, group_of), [f"g{g}" for g in range(n_groups)])
    assert np.isnan(m2.accuracy[0]) and m2.counts[0] == 0
    assert m2.group_average_accuracy == pytest.approx(acc[1:].mean())


def test_groups_file_csv_jsonl_and_attributes(tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    ids = ["a/0.png", "a/1.png", "b/0.png", "c/0.png"]
    labels = np.array([0, 0, 1, 2])
    f = _write_csv(tmp_path / "g.csv", ["image", "class", "place"],
                   [["c/0.png", "c", "land"], ["a/1.png", 0, "water"], ["a/0.png", "a", "land"]])
    t = read_groups(f, names)
    assert t.names == ["a/place=land", "a/place=water", "c/place=land"] and t.columns == ["place"]
    of = match_groups(t, ids, labels, what="the test set")
    assert list(of) == [0, 1, -1, 2]  # by id, not by order; b/0 is not listed
    j = tmp_path / "g.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in [{"image": "/abs/b/0.png", "class": "b", "group": "x"},
                                                     {"image": "a/0.png", "class": 0, "group": "y"}]) + "\n")
    t2 = read_groups(j, names)
    assert t2.names == ["a/y", "b/x"]
    of2 = match_groups(t2, ids, labels, what="the test set", paths=["/abs/a/0.png", "/abs/a/1.png", "/abs/b/0.png",
                                                                     "/abs/c/0.png"])
    assert list(of2) == [0, -1, 1, -1]


def test_groups_file_errors(tmp_path: Path) -> None:
    names = ["a", "b"]
    ids, labels = ["a/0.png", "b/0.png"], np.array([0, 1])
    bad = _write_csv(tmp_path / "u.csv", ["image", "class", "group"],
                     [["a/0.png", "a", "x"], ["zz/1.png", "a", "x"], ["zz/2.png", "b", "y"]])
    with pytest.raises(ValueError, match=r"2 of 3 images are not images of the test set: 'zz/1.png', 'zz/2.png'"):
        match_groups(read_groups(bad, names), ids, labels, what="the test set")
    wrong = _write_csv(tmp_path / "w.csv", ["image", "class", "group"], [["a/0.png", "b", "x"]])
    with pytest.raises(ValueError, match=r"1 of 1 images have a class other than their label"):
        match_groups(read_groups(wrong, names), ids, labels, what="the test set")
    for header, rows, msg in [
        (["file", "class", "group"], [["a/0.png", "a", "x"]], "no column 'image'"),
        (["image", "class"], [["a/0.png", "a"]], "add a 'group' column"),
        (["image", "class", "group"], [["a/0.png", "a", ""]], "empty group"),
        (["image", "class", "group"], [["a/0.png", "a", "x"], ["a/0.png", "a", "y"]], "listed twice"),
        (["image", "class", "group"], [["a/0.png", "aa", "x"]], "not a class name .*closest: 'a'"),
    ]:
        with pytest.raises(ValueError, match=msg):
            read_groups(_write_csv(tmp_path / "e.csv", header, rows), names)
    with pytest.raises(FileNotFoundError, match="groups file .* does not exist"):
        read_groups(tmp_path / "none.csv", names)


def test_score_group_metrics_match_a_direct_computation(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path)
    clf = tiny_classifier(seed=0, spec="test:a")
    sp, sl, vp, vl = listing(spu, val)
    # every val image but the first, listed in reverse order; two groups per class by file name parity
    rel = [p.relative_to(val).as_posix() for p in vp]
    rows = [[rel[i], ["a", "b", "c"][vl[i]], "even" if int(vp[i].stem.split("_")[-1]) % 2 == 0 else "odd"]
            for i in range(1, len(vp))][::-1]
    gfile = _write_csv(tmp_path / "groups.csv", ["image", "class", "group"], rows)
    r = score([clf], spurious=spu, val=val, out=tmp_path / "out", groups=gfile, **_quiet(plots=False))
    _, lv = forward(clf, vp)
    correct = lv.argmax(1) == vl
    group_of_image = {r_[0]: f"{r_[1]}/{r_[2]}" for r_ in rows}
    accs = {name: float(np.mean([correct[i] for i in range(1, len(vp)) if group_of_image[rel[i]] == name]))
            for name in set(group_of_image.values())}
    row = r.row("test:a")
    assert {x.group: x.accuracy for x in r.groups} == pytest.approx(accs)
    assert row.worst_group_accuracy == pytest.approx(min(accs.values()))
    assert row.mean_accuracy == pytest.approx(correct[1:].mean())
    assert row.group_average_accuracy == pytest.approx(np.mean(list(accs.values())))
    assert r.groups_images == len(vp) - 1
    out = tmp_path / "out"
    with open(out / "groups.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(accs)
    assert "## Groups" in (out / "scores.md").read_text()
    assert json.loads((out / "scores.json").read_text())["rows"][0]["worst_group_accuracy"] == pytest.approx(
        row.worst_group_accuracy)
    # an image that is not in the val set: how many and which (the CLI's exit 2: the DFR test below)
    _write_csv(tmp_path / "bad.csv", ["image", "class", "group"], [*rows, ["a/missing.png", "a", "odd"]])
    with pytest.raises(ValueError, match=r"1 of 15 images are not images of the validation set .*'a/missing.png'"):
        score([clf], spurious=spu, val=val, out=tmp_path / "out", groups=tmp_path / "bad.csv", **_quiet())
    with pytest.raises(FileNotFoundError, match="groups file .* does not exist"):
        score([clf], spurious=spu, val=val, out=tmp_path / "out", groups=tmp_path / "none.csv", **_quiet())


# ----------------------------------------------------------------------------- DFR
def _spurious_problem(seed: int, n: int, p_align: float, dim: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary labels y; dim 0 the core feature (noisy y), dim 1 the spurious attribute a (= y with prob p_align).

    Groups (y, a). Returns features [n, dim], labels, group index 2 y + a.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < p_align, y, 1 - y)
    x = rng.normal(0, 1, (n, dim))
    x[:, 0] += 1.0 * (2 * y - 1)   # core: overlapping classes
    x[:, 1] = 3.0 * (2 * a - 1) + 0.3 * x[:, 1]  # spurious: clean, large
    return x, y, 2 * y + a


def test_dfr_drops_the_planted_spurious_dimension_and_raises_worst_group_accuracy() -> None:
    from sklearn.linear_model import LogisticRegression

    from spurious.dfr import fit_dfr

    x_tr, y_tr, _ = _spurious_problem(0, 4000, 0.97)          # training: a follows y 97 % of the time
    x_ho, y_ho, g_ho = _spurious_problem(1, 800, 0.5)          # held-out, balanced groups
    x_te, y_te, g_te = _spurious_problem(2, 4000, 0.5)
    erm = LogisticRegression(C=1.0).fit(x_tr, y_tr)            # the "trained model" leans on dimension 1
    assert abs(erm.coef_[0, 1]) * 3.0 > abs(erm.coef_[0, 0]) * 1.0  # weight x the feature's class separation
    fit = fit_dfr(x_ho, y_ho, g_ho, 2, group_names=["0/a0", "0/a1", "1/a0", "1/a1"])
    w = fit.W[1] - fit.W[0]  # the binary direction in raw feature space
    assert abs(w[1]) < 0.05 * abs(w[0]), w  # the spurious dimension is (near) dropped
    assert w[0] > 0
    names = ["g0", "g1", "g2", "g3"]
    wga_erm = group_metrics(erm.predict(x_te) == y_te, g_te, names).worst_group_accuracy
    wga_dfr = group_metrics((x_te @ fit.W.T + fit.b).argmax(1) == y_te, g_te, names).worst_group_accuracy
    assert wga_erm < 0.3 and wga_dfr > 0.75, (wga_erm, wga_dfr)


def test_dfr_folds_the_standardisation_into_the_head() -> None:
    """One refit, no search: the head equals liblinear's L1 logistic regression on standardised features (oracle)."""
    from sklearn.linear_model import LogisticRegression

    from spurious.dfr import fit_dfr

    rng = np.random.default_rng(3)
    k, n = 3, 90
    y = np.repeat(np.arange(k), n // k)
    x = rng.normal(0, 1, (n, 5)) * [1.0, 5.0, 0.2, 1.0, 3.0] + [0, 10, -3, 1, 0] + y[:, None] * [1, 0, 0.5, 0, 2]
    fit = fit_dfr(x, y, y, k, c_grid=(0.5,), retrains=1)  # groups = classes, already balanced: all rows used
    z = (x - x.mean(0)) / x.std(0)
    ref_w, ref_b = [], []
    for j in range(k):
        try:
            m = LogisticRegression(C=0.5, solver="liblinear", l1_ratio=1.0, tol=1e-8).fit(z, (y == j).astype(int))
        except (TypeError, ValueError):  # scikit-learn < 1.8
            m = LogisticRegression(C=0.5, solver="liblinear", penalty="l1", tol=1e-8).fit(z, (y == j).astype(int))
        ref_w.append(m.coef_[0])
        ref_b.append(m.intercept_[0])
    want = z @ np.array(ref_w).T + np.array(ref_b)
    # equal up to liblinear's stopping tolerance (1e-4 in the fit); a wrong fold would be off by whole units
    assert np.abs(x @ fit.W.T + fit.b - want).max() < 2e-3 * np.abs(want).max()
    assert np.allclose(fit.W * x.std(0), ref_w, atol=1e-3)


def test_dfr_errors_on_an_empty_group_or_class() -> None:
    from spurious.dfr import fit_dfr

    x = np.random.default_rng(0).normal(size=(12, 3))
    y = np.array([0] * 6 + [1] * 6)
    with pytest.raises(ValueError, match=r"empty group: class 2 has no image"):
        fit_dfr(x, y, y, 3)
    g = np.array([0] * 6 + [1] * 5 + [2])
    with pytest.raises(ValueError, match=r"1 group with fewer than 2 images \(g2 \(1 image\)\)"):
        fit_dfr(x, y, g, 2, group_names=["g0", "g1", "g2"])


def test_dfr_on_a_workspace_scored_and_exported_like_spufix(tmp_path: Path) -> None:
    """fix --method dfr on imported features: the artifact is a LastLayerHead; score --fix replaces the logits."""
    from spurious.fix import LastLayerHead, load_fix
    from spurious.workspace import Workspace, import_features

    spu, val = make_bench(tmp_path)
    clf = tiny_classifier(seed=0, spec="test:a")
    sp, sl, vp, vl = listing(spu, val)
    pv, lv = forward(clf, vp)
    ws = tmp_path / "ws"
    Workspace.create(ws, clf)
    rel = [p.relative_to(val).as_posix() for p in vp]
    import_features(ws, pv.astype(np.float32), vl, ids=rel, split="val")
    rows = [[rel[i], int(vl[i]), "g" + str(i % 2)] for i in range(len(rel))]
    gfile = _write_csv(tmp_path / "groups.csv", ["image", "class", "group"], rows)
    code, out, err = cli_in_process(["fix", str(ws), "--method", "dfr", "--groups", str(gfile), "--split", "val",
                                     "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["kind"] == "dfr" and summary["images"] == len(rel) and summary["groups"] == 6
    head = load_fix(ws / "dfr")
    assert isinstance(head, LastLayerHead) and head.kind == "dfr" and load_fix(ws).kind == "dfr"
    r = score([clf], spurious=spu, val=val, out=tmp_path / "out", fixes=[ws / "dfr"], **_quiet(plots=False))
    W, b = head.A.double().numpy(), -head.c.double().numpy()
    new = pv @ W.T + b  # the new last layer: the old logits play no part
    assert r.row("test:a + DFR").val_accuracy == pytest.approx(np.mean(new.argmax(1) == vl))
    ps, _ = forward(clf, sp)
    from scipy.special import softmax
    from sklearn.metrics import roc_auc_score

    pv_s, ps_s = softmax(new, 1), softmax(ps @ W.T + b, 1)
    aucs = [roc_auc_score(np.r_[np.ones((vl == k).sum()), np.zeros((sl == k).sum())],
                          np.r_[pv_s[vl == k, k], ps_s[sl == k, k]]) for k in (0, 2)]
    assert r.row("test:a + DFR").mauc == pytest.approx(np.mean(aucs), abs=1e-6)
    # exported like SpuFix: the traced model gives the new last layer's logits
    from spurious.fix import SpuFix, export

    x = torch.stack([clf.preprocessing(load_image(p)) for p in vp[:4]])
    export(SpuFix(clf, head), tmp_path / "dfr.pt")
    with torch.no_grad():
        got = torch.jit.load(str(tmp_path / "dfr.pt"))(x).double().numpy()
    assert np.allclose(got, new[:4], atol=1e-4)
    # errors: one line, exit 2
    _write_csv(tmp_path / "bad.csv", ["image", "class", "group"], [*rows, ["a/none.png", 0, "g0"]])
    for argv, msg in [
        (["--groups", str(tmp_path / "bad.csv"), "--split", "val"], "1 of 16 images are not images of the 'val'"),
        (["--groups", str(gfile)], "needs --split SPLIT"),
        (["--split", "val"], "needs --groups FILE"),
    ]:
        code, _, err = cli_in_process(["fix", str(ws), "--method", "dfr", "--overwrite", *argv])
        errors = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
        assert code == 2 and len(errors) == 1 and msg in errors[0], err
    one = _write_csv(tmp_path / "one.csv", ["image", "class", "group"], [r_ for r_ in rows if int(r_[1]) != 1])
    code, _, err = cli_in_process(["fix", str(ws), "--method", "dfr", "--groups", str(one), "--split", "val",
                                   "--overwrite"])
    assert code == 2 and "empty group: class 1 has no image" in err, err


def test_planted_groups_files(tmp_path: Path, demo_models: dict[str, object]) -> None:
    from spurious.demo.planted import load_planted, write_planted_groups

    planted = load_planted(demo_models["robust"].planted_root)  # type: ignore[attr-defined]
    truth = {r["id"].split("/", 1)[1]: r for r in planted.ground_truth() if r["split"] == "val"}
    every = read_groups(write_planted_groups(planted, tmp_path / "all.csv"), planted.class_names)
    half = read_groups(write_planted_groups(planted, tmp_path / "dfr.csv", part="dfr"), planted.class_names)
    rest = read_groups(write_planted_groups(planted, tmp_path / "eval.csv", part="eval"), planted.class_names)
    assert sorted(every.images) == sorted(truth) and not set(half.images) & set(rest.images)
    assert sorted(half.images + rest.images) == sorted(truth)
    for image, g in zip(every.images, every.group, strict=True):
        rec = truth[image]
        own = {f.name for f in planted.features if f.rate(rec["label"]) > 0}
        shown = bool({f["name"] for f in rec["features"]} & own)
        assert every.names[g] == f"{planted.class_names[rec['label']]}/feature={'present' if shown else 'absent'}"
    with pytest.raises(ValueError, match="labelled splits"):
        write_planted_groups(planted, tmp_path / "x.csv", split="pool")


def test_fast_demo_scores_groups_and_shows_dfr_beside_spufix(fast_demo: object) -> None:
    out = fast_demo.out  # type: ignore[attr-defined]
    summary = fast_demo.summary  # type: ignore[attr-defined]
    assert (out / "groups" / "val-dfr.csv").is_file() and (out / "groups" / "val-eval.csv").is_file()
    assert "<h2>Groups</h2>" in (out / "score-planted" / "report.html").read_text()
    assert "SpuFix beside the retraining baseline DFR" in (out / "report" / "index.html").read_text()
    for m in summary["models"]:
        methods = [c["method"] for c in m["compare"]]
        assert methods[0] == "original" and "DFR" in methods
        assert all(c["worst_group_accuracy"] is None or 0 <= c["worst_group_accuracy"] <= c["mean_accuracy"] + 1e-9
                   for c in m["compare"])
