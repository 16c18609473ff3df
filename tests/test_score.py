"""score: metrics against scikit-learn, the stage against a direct per-image computation, caching, fixes, errors."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyNet, tiny_classifier, write_images
from PIL import Image
from scipy.special import softmax
from sklearn.metrics import average_precision_score, roc_auc_score

from spurious.datasets import load_image
from spurious.models import Classifier, Preprocessing
from spurious.score import average_precision, class_extension_rate, roc_auc, score

# the random tiny models here do not agree with the labels; tests/test_score_labels.py tests that warning
pytestmark = pytest.mark.filterwarnings("ignore:the model does not agree with the labels:UserWarning")

# ----------------------------------------------------------------------------- metrics


def _sk_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def _sk_ap(pos: np.ndarray, neg: np.ndarray) -> float:
    return float(average_precision_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_sklearn_on_random_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_pos, n_neg = rng.integers(1, 60, size=2)
    pos = rng.normal(0.3, 1.0, n_pos)
    neg = rng.normal(0.0, 1.0, n_neg)
    assert roc_auc(pos, neg) == pytest.approx(_sk_auc(pos, neg), abs=1e-12)
    assert average_precision(pos, neg) == pytest.approx(_sk_ap(pos, neg), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_sklearn_with_many_ties(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    pos = rng.integers(0, 4, size=rng.integers(1, 40)).astype(float)  # scores from {0, 1, 2, 3}: ties everywhere
    neg = rng.integers(0, 3, size=rng.integers(1, 40)).astype(float)
    assert roc_auc(pos, neg) == pytest.approx(_sk_auc(pos, neg), abs=1e-12)
    assert average_precision(pos, neg) == pytest.approx(_sk_ap(pos, neg), abs=1e-12)


def test_degenerate_scores() -> None:
    pos, neg = np.full(5, 0.7), np.full(9, 0.7)  # constant scores: AUC is exactly one half
    assert roc_auc(pos, neg) == 0.5 == _sk_auc(pos, neg)
    assert average_precision(pos, neg) == pytest.approx(_sk_ap(pos, neg)) == pytest.approx(5 / 14)
    assert roc_auc([2.0, 3.0], [1.0]) == 1.0 and roc_auc([1.0], [2.0, 3.0]) == 0.0
    assert average_precision([1.0], []) == 1.0 == _sk_ap(np.array([1.0]), np.array([]))
    assert roc_auc([1.0], [1.0]) == 0.5 and average_precision([5.0], [5.0]) == 0.5


def test_class_extension_rate() -> None:
    pred = np.array([3, 1, 3, 3, 0])
    assert class_extension_rate(pred, 3) == pytest.approx(np.mean(pred == 3))
    assert class_extension_rate(pred, 7) == 0.0


def test_metric_errors() -> None:
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        roc_auc([], [0.1])
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        roc_auc([0.1], [])
    with pytest.raises(ValueError, match="average precision needs at least one positive"):
        average_precision([], [0.3])
    with pytest.raises(ValueError, match="contains NaN at index 1"):
        roc_auc([0.1, float("nan")], [0.2])
    with pytest.raises(ValueError, match="must be 1-D"):
        average_precision(np.zeros((2, 2)), [0.1])
    with pytest.raises(TypeError, match="1-D array of numbers"):
        roc_auc(["a"], [0.1])
    with pytest.raises(ValueError, match="at least one spurious image"):
        class_extension_rate([], 0)
    with pytest.raises(TypeError, match="integer class indices"):
        class_extension_rate([0.5, 1.0], 1)
    with pytest.raises(TypeError, match="class_index must be an int"):
        class_extension_rate([1], "1")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- a generated benchmark
SPURIOUS_FOLDERS = {"bench_spurious_0_x_1": 4, "bench_spurious_0_y_3": 3, "bench_spurious_2_z_0": 5}


def make_bench(root: Path, *, empty_class: bool = False) -> tuple[Path, Path]:
    """Validation class folders a, b, c (+ an empty d) and a spurious benchmark in the published layout."""
    val = write_images(root / "val", {"a": 5, "b": 4, "c": 6}, seed=1)
    if empty_class:
        (val / "d").mkdir()
    spu = write_images(root / "spurious", SPURIOUS_FOLDERS, seed=2)
    (spu / "timestamp.txt").write_text("2022-01-01\n")
    return spu, val


def listing(spu: Path, val: Path) -> tuple[list[Path], np.ndarray, list[Path], np.ndarray]:
    """Independent listing: spurious class = token 2 of the folder name; val label = sorted folder position."""
    folders = sorted(d.name for d in val.iterdir() if d.is_dir())
    vp = sorted(val.glob("*/*"))
    vl = np.array([folders.index(p.parent.name) for p in vp])
    sp = sorted(spu.glob("*/*"))
    sl = np.array([int(p.parent.name.split("_")[2]) for p in sp])
    return sp, sl, vp, vl


def forward(clf: Classifier, paths: list[Path], transform=None) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    t = transform or clf.preprocessing
    x = torch.stack([t(load_image(p)) for p in paths])
    with torch.no_grad():
        phi, logits = clf.phi_and_logits(x)
    return phi.double().numpy(), logits.double().numpy()


def oracle(logits_spu: np.ndarray, sl: np.ndarray, logits_val: np.ndarray, vl: np.ndarray,
           classes: list[int]) -> dict[int, tuple[float, float, float]]:
    ps, pv = softmax(logits_spu, axis=1), softmax(logits_val, axis=1)
    out = {}
    for k in classes:
        pos, neg = pv[vl == k, k], ps[sl == k, k]
        ext = float(np.mean(logits_spu[sl == k].argmax(1) == k))
        out[k] = (_sk_auc(pos, neg), _sk_ap(pos, neg), ext)
    return out


def _quiet(**kw):  # type: ignore[no-untyped-def]
    return {"num_workers": 0, "progress": False, **kw}


def test_scores_match_a_direct_computation(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path)
    m0, m1 = tiny_classifier(seed=0, spec="test:a"), tiny_classifier(seed=1, spec="test:b")
    r = score([m0, m1], spurious=spu, val=val, out=tmp_path / "out", **_quiet())
    sp, sl, vp, vl = listing(spu, val)
    assert r.classes == [0, 2]
    for clf in (m0, m1):
        _, ls = forward(clf, sp)
        _, lv = forward(clf, vp)
        want = oracle(ls, sl, lv, vl, [0, 2])
        got = {c.class_index: c for c in r.class_scores(clf.spec)}
        for k, (auc, ap, ext) in want.items():
            assert got[k].auc == pytest.approx(auc, abs=1e-9)
            assert got[k].ap == pytest.approx(ap, abs=1e-9)
            assert got[k].extension == pytest.approx(ext)
            assert (got[k].val_images, got[k].spurious_images) == ((vl == k).sum(), (sl == k).sum())
        row = r.row(clf.spec)
        assert row.mauc == pytest.approx(np.mean([w[0] for w in want.values()]), abs=1e-9)
        assert row.map == pytest.approx(np.mean([w[1] for w in want.values()]), abs=1e-9)
        assert row.mean_extension == pytest.approx(np.mean([w[2] for w in want.values()]))
        assert row.val_accuracy == pytest.approx(np.mean(lv.argmax(1) == vl))
        assert row.val_complete and row.classes_scored == 2 and row.spurious_images == 12 and row.val_images == 15
    out = tmp_path / "out"
    for name in ("scores.json", "scores.csv", "scores.md", "per_class.csv", "report.html", "manifest.json",
                 "plots/scatter.png", "plots/class_auc.png"):
        assert (out / name).is_file(), name
    assert list((out / "plots").glob("strip_test-a_*.png"))
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [x["model"] for x in rows] == ["test:a", "test:b"]
    assert float(rows[0]["mauc"]) == pytest.approx(r.row("test:a").mauc, abs=1e-6)
    with open(out / "per_class.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    saved = json.loads((out / "scores.json").read_text())
    assert saved["rows"][1]["map"] == pytest.approx(r.row("test:b").map)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "score" and manifest["status"] == "complete"
    assert [m["fingerprint"] for m in manifest["models"]] == [m0.fingerprint(), m1.fingerprint()]
    assert "| test:a |" in (out / "scores.md").read_text()


def test_skipped_classes_are_warned_marked_and_left_out(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path, empty_class=True)  # class 3 (d) has no images, class 1 (b) no spurious ones
    clf = tiny_classifier(num_classes=4)
    with pytest.warns(UserWarning) as record:
        r = score(clf, spurious=spu, val=val, out=tmp_path / "out", classes=[0, "b", 2, "d"], **_quiet())
    messages = " ".join(str(w.message) for w in record)
    assert "2 of 4 requested classes have no spurious images" in messages and "1 (b), 3 (d)" in messages
    status = {c.class_index: c.status for c in r.per_class}
    assert status == {0: "ok", 1: "skipped: no spurious images", 2: "ok", 3: "skipped: no spurious images"}
    sp, sl, vp, vl = listing(spu, val)
    _, ls = forward(clf, sp)
    _, lv = forward(clf, vp)
    want = oracle(ls, sl, lv, vl, [0, 2])
    row = r.row(clf.spec)
    assert (row.classes_scored, row.classes_skipped) == (2, 2)
    assert row.mauc == pytest.approx(np.mean([want[0][0], want[2][0]]), abs=1e-9)
    assert not row.val_complete  # class d has no validation images
    skipped = [c for c in r.per_class if c.status != "ok"]
    assert all(np.isnan(c.auc) for c in skipped)
    assert json.loads((tmp_path / "out" / "scores.json").read_text())["per_class"][1]["auc"] is None


def test_class_with_spurious_but_no_validation_images(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path, empty_class=True)
    (spu / "bench_spurious_3_w_0").mkdir()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(spu / "bench_spurious_3_w_0" / "img.png")
    with pytest.warns(UserWarning, match="1 of 3 requested classes have no validation images and are left out"):
        r = score(tiny_classifier(num_classes=4), spurious=spu, val=val, out=tmp_path / "o", **_quiet(plots=False))
    assert [c.status for c in r.per_class] == ["ok", "ok", "skipped: no validation images"]


def _count_images(clf: Classifier) -> tuple[list[int], object]:
    seen: list[int] = []
    handle = clf.model.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    return seen, handle


def test_rerun_recomputes_nothing_and_new_models_only_run_themselves(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path)
    m0, m1 = tiny_classifier(seed=0, spec="test:a"), tiny_classifier(seed=1, spec="test:b")
    first = score([m0], spurious=spu, val=val, out=tmp_path / "out", **_quiet(plots=False))
    assert first.images_computed == 27 and not first.row("test:a").cached
    caches = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "cache").rglob("*.npz")}
    seen0, h0 = _count_images(m0)
    seen1, h1 = _count_images(m1)
    try:
        again = score([m0, m1], spurious=spu, val=val, out=tmp_path / "out", **_quiet(plots=False))
    finally:
        h0.remove()
        h1.remove()
    assert sum(seen0) == 0 and sum(seen1) == 27  # the cached model ran no image, the new one each image once
    assert again.images_computed == 27 and again.row("test:a").cached and not again.row("test:b").cached
    assert again.row("test:a").mauc == first.row("test:a").mauc
    assert {p: p.stat().st_mtime_ns for p in caches} == caches


def test_interrupted_run_resumes_missing_chunks_only(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path)
    clf = tiny_classifier()
    full = score(clf, spurious=spu, val=val, out=tmp_path / "out", chunk_size=4, batch_size=3, **_quiet(plots=False))
    chunks = sorted((tmp_path / "out" / "cache").glob("*/val-*/c*.npz"))
    assert len(chunks) == 4  # 15 validation images in chunks of 4
    chunks[1].unlink()  # as if the run had been killed while computing chunk 1
    seen, handle = _count_images(clf)
    try:
        again = score(clf, spurious=spu, val=val, out=tmp_path / "out", chunk_size=4, batch_size=3,
                      **_quiet(plots=False))
    finally:
        handle.remove()
    assert sum(seen) == 4 and again.images_computed == 4
    assert again.row(clf.spec).mauc == full.row(clf.spec).mauc


def test_corrupt_images_are_skipped_and_counted(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path)
    (spu / "bench_spurious_0_x_1" / "broken.jpg").write_bytes(b"not a jpeg")
    (val / "a" / "broken.png").write_bytes(b"")
    clf = tiny_classifier()
    with pytest.warns(UserWarning, match="could not be decoded"):
        r = score(clf, spurious=spu, val=val, out=tmp_path / "out", **_quiet(plots=False))
    row = r.row(clf.spec)
    assert (row.failed_images, row.spurious_images, row.val_images) == (2, 12, 15)
    sp, sl, vp, vl = listing(spu, val)
    good_s = [i for i, p in enumerate(sp) if p.name != "broken.jpg"]
    good_v = [i for i, p in enumerate(vp) if p.name != "broken.png"]
    _, ls = forward(clf, [sp[i] for i in good_s])
    _, lv = forward(clf, [vp[i] for i in good_v])
    want = oracle(ls, sl[good_s], lv, vl[good_v], [0, 2])
    assert row.mauc == pytest.approx(np.mean([w[0] for w in want.values()]), abs=1e-9)


def _torchvision_reference(size: int, interpolation: str = "bilinear"):  # type: ignore[no-untyped-def]
    """Oracle: what the reference code fed its models, torchvision Resize(size) + CenterCrop(size) on PIL."""
    from torchvision import transforms as T

    mode = getattr(T.InterpolationMode, interpolation.upper())
    tv = T.Compose([T.Resize(size, interpolation=mode), T.CenterCrop(size), T.PILToTensor()])
    return lambda img: tv(img.convert("RGB")).to(torch.float32) / 255.0


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_reference_transform_equals_torchvision_resize_and_center_crop(interpolation: str) -> None:
    from spurious.score import ReferenceResizeCrop

    rng = np.random.default_rng(0)
    pre = Preprocessing(input_size=(32, 32), resize_size=40, crop_pct=0.8, interpolation=interpolation)
    want = _torchvision_reference(32, interpolation)
    for w, h in [(48, 40), (40, 48), (97, 31), (31, 97), (33, 64), (64, 33), (32, 32), (20, 25), (8, 100)]:
        img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        got = ReferenceResizeCrop(pre)(img)
        assert got.shape == (3, 32, 32) and got.dtype == torch.float32
        torch.testing.assert_close(got, want(img), rtol=0, atol=0, msg=f"{w}x{h}")
    gray = Image.fromarray(rng.integers(0, 256, size=(30, 50), dtype=np.uint8))  # mode L -> RGB
    torch.testing.assert_close(ReferenceResizeCrop(pre)(gray), want(gray), rtol=0, atol=0)


@pytest.mark.parametrize("canvas,input_size", [((120, 60), (32, 32)), ((60, 120), (32, 32)),
                                               ((150, 60), (24, 40)), ((60, 150), (40, 24))])
def test_reference_transform_keeps_the_aspect_ratio(canvas: tuple[int, int], input_size: tuple[int, int]) -> None:
    """A planted disk stays round (equal height and width) after the transform, also for non-square inputs."""
    from spurious.score import ReferenceResizeCrop

    w, h = canvas
    yy, xx = np.mgrid[0:h, 0:w]
    r = 0.4 * min(w, h)
    disk = ((xx + 0.5 - w / 2) ** 2 + (yy + 0.5 - h / 2) ** 2) <= r**2
    img = Image.fromarray(np.where(disk, 0, 255).astype(np.uint8)).convert("RGB")
    out = ReferenceResizeCrop(Preprocessing(input_size=input_size, interpolation="bilinear"))(img)[0].numpy()
    assert out.shape == input_size
    dark = out < 0.5
    rows, cols = np.flatnonzero(dark.any(axis=1)), np.flatnonzero(dark.any(axis=0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    scale = max(input_size[0] / h, input_size[1] / w)  # the smallest resize that covers the input
    assert abs(height - width) <= 1 and abs(height - 2 * r * scale) <= 1.5, (height, width, 2 * r * scale)
    assert not dark[0].any() and not dark[:, 0].any()  # the disk is not cut: nothing stretched or shifted


def test_reference_protocol_resizes_the_short_side_and_crops_spurious_images(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path)  # 48 x 40 images: stretching, the reference and the model's crop all differ
    torch.manual_seed(0)
    pre = Preprocessing(input_size=(32, 32), resize_size=40, crop_pct=0.8, interpolation="bilinear",
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    clf = Classifier.from_module(TinyNet(3).eval(), pre, ["a", "b", "c"], "test:ref")

    r = score(clf, spurious=spu, val=val, out=tmp_path / "out", protocol="reference", **_quiet(plots=False))
    sp, sl, vp, vl = listing(spu, val)
    _, ls = forward(clf, sp, _torchvision_reference(32))
    _, lv = forward(clf, vp)  # validation images keep the model's preprocessing
    want = oracle(ls, sl, lv, vl, [0, 2])
    got = {c.class_index: c for c in r.per_class}
    for k in (0, 2):
        assert got[k].auc == pytest.approx(want[k][0], abs=1e-9)
        assert got[k].ap == pytest.approx(want[k][1], abs=1e-9)
        assert got[k].extension == pytest.approx(want[k][2])

    def stretch(img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)

    _, ls_stretch = forward(clf, sp, stretch)
    _, ls_crop = forward(clf, sp)
    assert not np.allclose(ls_stretch, ls) and not np.allclose(ls_crop, ls)
    crop = score(clf, spurious=spu, val=val, out=tmp_path / "out", protocol="model", **_quiet(plots=False))
    assert crop.row(clf.spec).mauc == pytest.approx(np.mean([w[0] for w in oracle(ls_crop, sl, lv, vl, [0, 2]).values()]))


# ----------------------------------------------------------------------------- SpuFix rows
class StandInFix(torch.nn.Module):
    """FixHead-like: subtracts ``scale * relu(phi . a - c)`` from the logit of one class."""

    def __init__(self, clf: Classifier, k: int, *, seed: int = 3, name: str = "StandIn") -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("a", torch.randn(clf.num_features, generator=g))
        self.register_buffer("c", torch.tensor(-0.05))
        self.model_spec, self.model_fingerprint = clf.spec, clf.fingerprint()
        self.classes, self.name, self.k = [k], name, k

    def forward(self, phi: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        out[:, self.k] -= 20.0 * torch.relu(phi @ self.a - self.c)
        return out


def _fixed_numpy(phi: np.ndarray, logits: np.ndarray, head: StandInFix) -> np.ndarray:
    out = logits.copy()
    out[:, head.k] -= 20.0 * np.maximum(phi @ head.a.double().numpy() - float(head.c), 0.0)
    return out


def test_fix_rows_use_the_same_forward_pass(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path)
    clf, other = tiny_classifier(seed=0, spec="test:a"), tiny_classifier(seed=1, spec="test:b")
    head = StandInFix(clf, 0)
    seen, handle = _count_images(clf)
    try:
        r = score([clf, other], spurious=spu, val=val, out=tmp_path / "out", fixes=[head], **_quiet())
    finally:
        handle.remove()
    assert sum(seen) == 27  # one forward pass per image for the original and the fixed row together
    assert [x.model for x in r.rows] == ["test:a", "test:a + StandIn", "test:b"]
    sp, sl, vp, vl = listing(spu, val)
    ps, ls = forward(clf, sp)
    pv, lv = forward(clf, vp)
    want = oracle(_fixed_numpy(ps, ls, head), sl, _fixed_numpy(pv, lv, head), vl, [0, 2])
    got = {c.class_index: c for c in r.class_scores("test:a + StandIn")}
    for k in (0, 2):
        assert got[k].auc == pytest.approx(want[k][0], abs=1e-9)
        assert got[k].extension == pytest.approx(want[k][2])
    fixed = r.row("test:a + StandIn")
    assert fixed.variant == "StandIn" and fixed.fingerprint == clf.fingerprint()
    assert fixed.val_accuracy == pytest.approx(np.mean(_fixed_numpy(pv, lv, head).argmax(1) == vl))
    assert fixed.mauc != r.row("test:a").mauc
    # adding the fix later to a cached model: one more forward pass, the original chunks are kept
    r2 = score([clf], spurious=spu, val=val, out=tmp_path / "out", fixes=[StandInFix(clf, 2, name="Other")],
               **_quiet(plots=False))
    assert r2.images_computed == 27 and [x.model for x in r2.rows] == ["test:a", "test:a + Other"]
    assert r2.row("test:a").mauc == r.row("test:a").mauc


def test_real_fixhead_from_an_artifact_file(tmp_path: Path) -> None:
    from spurious.fix import FixHead, SpuFix

    spu, val = make_bench(tmp_path)
    clf = tiny_classifier(seed=0, spec="test:a")
    rng = np.random.default_rng(0)
    A = rng.normal(0, 1.0, (3, clf.num_features))
    c = np.array([-0.1, 0.0, 0.05])
    cls = np.array([0, 0, 2])
    head = FixHead(A, c, cls, np.array([0, 4, 1]), num_classes=3, model_spec=clf.spec,
                   model_fingerprint=clf.fingerprint(), name="SpuFix")
    path = head.save(tmp_path / "spufix.safetensors")
    r = score([clf], spurious=spu, val=val, out=tmp_path / "out", fixes=[path], **_quiet(plots=False))
    sp, sl, vp, vl = listing(spu, val)

    def fixed(phi: np.ndarray, logits: np.ndarray) -> np.ndarray:
        out = logits.copy()
        corr = np.maximum(phi @ A.astype(np.float32).astype(np.float64).T - c.astype(np.float32), 0.0)
        for m, k in enumerate(cls):
            out[:, k] -= corr[:, m]
        return out

    ps, ls = forward(clf, sp)
    pv, lv = forward(clf, vp)
    want = oracle(fixed(ps, ls), sl, fixed(pv, lv), vl, [0, 2])
    assert r.row("test:a + SpuFix").mauc == pytest.approx(np.mean([w[0] for w in want.values()]), abs=1e-9)
    # a SpuFix model object scores as the original plus the fixed row
    r2 = score([SpuFix(clf, head)], spurious=spu, val=val, out=tmp_path / "out", **_quiet(plots=False))
    assert r2.images_computed == 0 and [x.model for x in r2.rows] == ["test:a", "test:a + SpuFix"]
    assert r2.row("test:a + SpuFix").mauc == r.row("test:a + SpuFix").mauc


def test_fix_for_another_model_is_an_error(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path)
    head = StandInFix(tiny_classifier(seed=5), 0)
    with pytest.raises(ValueError, match="was made for the model with fingerprint .* which is not among the models"):
        score(tiny_classifier(seed=0), spurious=spu, val=val, out=tmp_path / "out", fixes=[head], **_quiet())
    with pytest.raises(TypeError, match="a fix must be a fix artifact path or a FixHead module"):
        score(tiny_classifier(seed=0), spurious=spu, val=val, out=tmp_path / "out", fixes=[3], **_quiet())
    with pytest.raises(FileNotFoundError, match="fix artifact .* does not exist"):
        score(tiny_classifier(seed=0), spurious=spu, val=val, out=tmp_path / "out", fixes=[tmp_path / "no.st"],
              **_quiet())


# ----------------------------------------------------------------------------- label spaces
def _clf(num_classes: int, class_names: list[str] | None = None, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    pre = Preprocessing(input_size=(32, 32), resize_size=32, crop_pct=1.0, mean=(0.5,) * 3, std=(0.25,) * 3)
    return Classifier.from_module(TinyNet(num_classes).eval(), pre, class_names, f"test:k{num_classes}")


def test_explicit_and_names_class_maps(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path)
    clf = _clf(5, None)
    with pytest.raises(ValueError, match="has 5 outputs but the benchmark has 3 classes; pass a class map"):
        score(clf, spurious=spu, val=val, out=tmp_path / "out", **_quiet())
    clf = _clf(5, ["q", "c", "r", "a", "b"])
    cmap = {0: 3, 1: 4, 2: 1}  # a -> output 3, b -> 4, c -> 1: what 'names' finds too
    r = score(clf, spurious=spu, val=val, out=tmp_path / "out", class_map=cmap, **_quiet(plots=False))
    sp, sl, vp, vl = listing(spu, val)
    _, ls = forward(clf, sp)
    _, lv = forward(clf, vp)
    cols = np.array([3, 4, 1])
    ps, pv = softmax(ls, axis=1), softmax(lv, axis=1)  # softmax over all 5 outputs
    for c in r.per_class:
        k = c.class_index
        assert c.auc == pytest.approx(_sk_auc(pv[vl == k, cols[k]], ps[sl == k, cols[k]]), abs=1e-9)
        assert c.extension == pytest.approx(np.mean(ls[sl == k][:, cols].argmax(1) == k))  # among mapped outputs
    assert r.row(clf.spec).val_accuracy == pytest.approx(np.mean(lv[:, cols].argmax(1) == vl))
    (tmp_path / "map.json").write_text(json.dumps({"0": 3, "1": 4, "2": 1}))
    for spec in ("names", str(tmp_path / "map.json"), [3, 4, 1]):
        again = score(clf, spurious=spu, val=val, out=tmp_path / "out", class_map=spec, **_quiet(plots=False))
        assert again.images_computed == 0 and again.row(clf.spec).mauc == r.row(clf.spec).mauc


def test_without_a_class_map_folders_take_the_model_label_space(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path)
    clf = _clf(5, ["q", "c", "r", "a", "b"])
    with pytest.warns(UserWarning, match="2 of 2 requested classes have no validation images"):
        r = score(clf, spurious=spu, val=val, out=tmp_path / "out", **_quiet(plots=False))
    assert r.class_names == ["q", "c", "r", "a", "b"] and "test:k5" in r.label_source
    assert [c.class_name for c in r.per_class] == ["q", "r"]  # spurious class tokens 0 and 2 index the model's names
    _, sl, vp, vl = listing(spu, val)
    by_name = np.array([3, 4, 1])[vl]  # folders a, b, c are the model's classes 3, 4, 1
    _, lv = forward(clf, vp)
    row = r.row(clf.spec)
    assert row.class_map == "identity" and row.val_accuracy == pytest.approx(np.mean(lv.argmax(1) == by_name))


def test_class_map_errors(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path)
    clf = _clf(5)
    cases = [
        ({0: 3, 1: 3, 2: 1}, ValueError, "maps two benchmark classes to the same output"),
        ({0: 7}, ValueError, r"uses output 7, outside 0-4"),
        ({5: 1}, ValueError, "class map key 5 is outside the benchmark label space"),
        ([1, 2], ValueError, "needs one model output per benchmark class"),
        ("names", ValueError, "maps no benchmark class"),
        ("wnid", ValueError, "class_map 'wnid' needs the ImageNet-1k label space"),
        (tmp_path / "missing.json", FileNotFoundError, "class map file .* does not exist"),
        (3.5, TypeError, "class_map must be one of"),
    ]
    for spec, err, match in cases:
        with pytest.raises(err, match=match):
            score(clf, spurious=spu, val=val, out=tmp_path / "out", class_map=spec, **_quiet())
    with pytest.raises(ValueError, match="'identity' needs at least 3 model outputs"):
        score(_clf(2), spurious=spu, val=val, out=tmp_path / "out", class_map="identity", **_quiet())


def test_imagenet_21k_head_is_mapped_by_wnid() -> None:
    import importlib.resources

    from spurious import imagenet
    from spurious.score._inputs import Benchmark, class_map_for

    clf = _clf(21843)
    bench = Benchmark(None, None, imagenet.class_names(), True, [0])  # type: ignore[arg-type]
    cmap, how = class_map_for(clf, None, bench)
    synsets = (importlib.resources.files("timm.data") / "_info" / "imagenet21k_goog_synsets.txt").read_text().split()
    assert how == "wnid" and len(synsets) == 21843
    assert all(synsets[cmap[k]] == w for k, w in enumerate(imagenet.wnids()) if cmap[k] >= 0)
    assert (cmap >= 0).sum() >= 990  # (nearly) every 1k class is in the 21k head


def _imagenet_bench(root: Path) -> tuple[Path, list[tuple[str, str]]]:
    """Spurious folders for ImageNet classes 281 (tabby) and 967 (espresso)."""
    spu = write_images(root / "spurious", {"spurious_imagenet_281_tabby_0": 3, "spurious_imagenet_967_espresso_2": 4},
                       seed=4)
    flat = root / "flat"
    flat.mkdir()
    rng = np.random.default_rng(0)
    truth = []
    for i in range(8):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(flat / f"{name}.JPEG")
        truth.append((name, ["n02123045", "n07920052", "n01440764"][i % 3]))  # tabby, espresso, tench
    return spu, truth


def test_flat_imagenet_val_with_a_labels_file(tmp_path: Path) -> None:
    from spurious import imagenet

    spu, truth = _imagenet_bench(tmp_path)
    loc = tmp_path / "LOC_val_solution.csv"
    loc.write_text("ImageId,PredictionString\n" + "".join(f"{n},{w} 1 2 30 40 {w} 3 4 5 6\n" for n, w in truth)
                   + "ILSVRC2012_val_00000099,n01440764 1 2 3 4\n")  # listed but not in the folder
    clf = _clf(1000)
    with pytest.warns(UserWarning, match="1 of 9 images named in LOC_val_solution.csv are not in"):
        r = score(clf, spurious=spu, val=tmp_path / "flat", val_labels=loc, out=tmp_path / "out", **_quiet())
    w2i = imagenet.wnid_to_index()
    labels = np.array([w2i[w] for _, w in truth])
    paths = [tmp_path / "flat" / f"{n}.JPEG" for n, _ in truth]
    assert r.classes == [281, 967] and r.class_names[967] == "espresso"
    _, lv = forward(clf, paths)
    sp = sorted(spu.glob("*/*"))
    sl = np.array([int(p.parent.name.split("_")[2]) for p in sp])
    _, ls = forward(clf, sp)
    want = oracle(ls, sl, lv, labels, [281, 967])
    for c in r.per_class:
        assert c.auc == pytest.approx(want[c.class_index][0], abs=1e-9)
        assert c.val_images == (labels == c.class_index).sum()
    assert r.row(clf.spec).val_accuracy == pytest.approx(np.mean(lv.argmax(1) == labels))
    assert not r.row(clf.spec).val_complete
    # the same labels as 'filename label' lines with class indices, and with a header
    lines = tmp_path / "val.txt"
    lines.write_text("filename label\n" + "".join(f"{n}.JPEG {w2i[w]}\n" for n, w in truth))
    r2 = score(clf, spurious=spu, val=tmp_path / "flat", val_labels=lines, out=tmp_path / "out2", **_quiet(plots=False))
    assert r2.row(clf.spec).mauc == pytest.approx(r.row(clf.spec).mauc)


def test_imagenet_wnid_folders_and_class_selection(tmp_path: Path) -> None:
    spu, truth = _imagenet_bench(tmp_path)
    val = tmp_path / "val"
    for name, wnid in truth:
        (val / wnid).mkdir(parents=True, exist_ok=True)
        (tmp_path / "flat" / f"{name}.JPEG").rename(val / wnid / f"{name}.JPEG")
    clf = _clf(1000)
    r = score(clf, spurious=f"spurious-imagenet:{spu}", val=val, out=tmp_path / "out", classes=["n07920052"],
              **_quiet(plots=False))
    assert r.classes == [967] and [c.class_name for c in r.per_class] == ["espresso"]
    r2 = score(clf, spurious=spu, val=f"imagenet:{val}", out=tmp_path / "out", classes=["espresso", 281],
               **_quiet(plots=False))
    assert r2.classes == [281, 967] and r2.images_computed == 0


def test_labels_file_errors(tmp_path: Path) -> None:
    spu, _ = _imagenet_bench(tmp_path)
    clf = _clf(1000)
    bad = tmp_path / "bad.txt"
    for text, match in [("a.JPEG\n", "expected 'filename label'"),
                        ("ILSVRC2012_val_00000001.JPEG n99999999\n", "is not an ImageNet-1k wnid"),
                        ("ILSVRC2012_val_00000001.JPEG 1000\n", "outside the benchmark label space 0-999"),
                        ("nothing.JPEG 3\n", "none of the 1 files named in"),
                        ("\n", "holds no labels")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=match):
            score(clf, spurious=spu, val=tmp_path / "flat", val_labels=bad, out=tmp_path / "out", **_quiet())
    with pytest.raises(ValueError, match="holds images but no class sub-folders; pass its labels file"):
        score(clf, spurious=spu, val=tmp_path / "flat", out=tmp_path / "out", **_quiet())
    with pytest.raises(FileNotFoundError, match="validation labels file .* does not exist"):
        score(clf, spurious=spu, val=tmp_path / "flat", val_labels=tmp_path / "nope.csv", out=tmp_path / "o",
              **_quiet())


# ----------------------------------------------------------------------------- errors, state, report
def test_argument_errors(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path)
    clf = tiny_classifier()
    with pytest.raises(ValueError, match="unknown model 'demo:nope'"):
        score(["demo:nope"], spurious=spu, val=val, out=tmp_path / "o1", **_quiet())
    with pytest.raises(ValueError, match="model 'demo:standard-tiny' is given twice"):
        score(["demo:standard-tiny", "demo:standard-tiny"], spurious=spu, val=val, out=tmp_path / "o1", **_quiet())
    with pytest.raises(ValueError, match=r"model 'test:tiny' \(fingerprint .*\) is given twice"):
        score([clf, clf], spurious=spu, val=val, out=tmp_path / "o1", **_quiet())
    with pytest.raises(ValueError, match="two different models have the spec 'test:tiny'"):
        score([clf, tiny_classifier(seed=1)], spurious=spu, val=val, out=tmp_path / "o1", **_quiet())
    with pytest.raises(ValueError, match="protocol must be one of"):
        score(clf, spurious=spu, val=val, out=tmp_path / "o1", protocol="paper", **_quiet())
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        score(clf, spurious=spu, val=val, out=tmp_path / "o1", chunk_size=0, **_quiet())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a score output folder"):
        score(clf, spurious=spu, val=val, out=tmp_path / "other", **_quiet())
    with pytest.raises(ValueError, match="is not a Spurious ImageNet folder name"):
        score(clf, spurious=val, val=val, out=tmp_path / "o1", **_quiet())
    with pytest.raises(ValueError, match="is in the Spurious ImageNet layout; pass it as spurious="):
        score(clf, spurious=spu, val=spu, out=tmp_path / "o1", **_quiet())
    with pytest.raises(ValueError, match="must be in the Spurious ImageNet layout"):
        score(clf, spurious=f"folder:{val}", val=val, out=tmp_path / "o1", **_quiet())
    with pytest.raises(ValueError, match="'zzz' is not a class name of the benchmark"):
        score(clf, spurious=spu, val=val, out=tmp_path / "o1", classes=["zzz"], **_quiet())
    with pytest.raises(ValueError, match="plot_models: 'nope' is not a row"):
        score(clf, spurious=spu, val=val, out=tmp_path / "o1", plot_models=["nope"], **_quiet())
    with pytest.raises(TypeError, match="a model must be a spec string or a spurious.models.Classifier"):
        score([3], spurious=spu, val=val, out=tmp_path / "o1", **_quiet())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        score(clf, spurious=tmp_path / "nope", val=val, out=tmp_path / "o1", **_quiet())


def test_caller_model_state_is_restored(tmp_path: Path) -> None:
    spu, val = make_bench(tmp_path)
    clf = tiny_classifier()
    clf.train()
    r = score(clf, spurious=spu, val=val, out=tmp_path / "out", device="cpu", **_quiet(plots=False))
    assert clf.training and clf.model.training
    clf.eval()
    sp, sl, vp, vl = listing(spu, val)
    _, ls = forward(clf, sp)
    _, lv = forward(clf, vp)
    assert r.row(clf.spec).mauc == pytest.approx(np.mean([w[0] for w in oracle(ls, sl, lv, vl, [0, 2]).values()]))


def test_report_escapes_class_names_and_plots_odd_names(tmp_path: Path) -> None:
    names = ["<b>a&", "x$\\foo$", "c"]
    val = write_images(tmp_path / "val", {n: 3 for n in names}, seed=1)
    spu = write_images(tmp_path / "spurious", {"s_s_0_x_0": 3, "s_s_2_y_0": 3}, seed=2)
    torch.manual_seed(0)
    clf = Classifier.from_module(TinyNet(3).eval(), tiny_classifier().preprocessing, sorted(names), "test:<i>")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mathtext or glyph trouble
        warnings.filterwarnings("ignore", "the model does not agree with the labels")  # a random model
        r = score(clf, spurious=spu, val=val, out=tmp_path / "out", **_quiet())
    html = (tmp_path / "out" / "report.html").read_text()
    assert "&lt;b&gt;a&amp;" in html and "<b>a&" not in html and "test:&lt;i&gt;" in html
    assert [c.class_name for c in r.per_class] == ["<b>a&", "x$\\foo$"]
    assert len(list((tmp_path / "out" / "plots").glob("strip_*.png"))) == 2


def test_cli_writes_the_files(tmp_path: Path) -> None:
    from spurious.cli import main

    spu, val = make_bench(tmp_path)
    rc = main(["score", "--model", "demo:standard-tiny", "--spurious", str(spu), "--val", str(val),
               "--out", str(tmp_path / "out"), "--workers", "0", "--no-progress", "--class-map", "identity",
               "--no-plots"])
    assert rc == 0
    assert all((tmp_path / "out" / f).is_file() for f in ("scores.csv", "per_class.csv", "scores.md", "scores.json"))
    assert not (tmp_path / "out" / "report.html").exists()
    assert main(["score", "--model", "demo:nope", "--spurious", str(spu), "--val", str(val),
                 "--out", str(tmp_path / "out")]) == 2


def test_models_with_the_same_preprocessing_share_each_decoded_image(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import spurious.datasets._dataset as dataset_module

    spu, val = make_bench(tmp_path)
    decoded: list[str] = []
    real = dataset_module.load_image
    monkeypatch.setattr(dataset_module, "load_image", lambda p: decoded.append(str(p)) or real(p))
    models = [tiny_classifier(seed=s, spec=f"test:{s}") for s in range(3)]
    seen = [_count_images(m) for m in models]
    try:
        score(models, spurious=spu, val=val, out=tmp_path / "out", **_quiet(plots=False))
    finally:
        for _, handle in seen:
            handle.remove()
    assert len(decoded) == len(set(decoded)) == 27  # each image decoded once for the three models
    assert [sum(s) for s, _ in seen] == [27, 27, 27]


# ----------------------------------------------------------------------------- model names and legends
ROBUST_SPEC = "demo:robust@/root/.cache/spurious/models/demo-robust-ef9804dea281125a.pt"
STANDARD_SPEC = "demo:standard@/root/.cache/spurious/models/demo-standard-1c22f85c564fccef.pt"


def test_display_names_are_the_spec_names() -> None:
    from spurious.score.plots import display_names

    assert display_names([ROBUST_SPEC, STANDARD_SPEC, "timm:resnet50"]) == {
        ROBUST_SPEC: "demo:robust", STANDARD_SPEC: "demo:standard", "timm:resnet50": "timm:resnet50"}
    # two checkpoints of one architecture: the file names tell them apart; the same file name: the full specs
    a, b, c = "demo:robust@/x/one.pt", "demo:robust@/y/two.pt", "demo:robust@/z/two.pt"
    assert display_names([a, b]) == {a: "demo:robust@one.pt", b: "demo:robust@two.pt"}
    assert display_names([a, b, c]) == {a: "demo:robust@one.pt", b: b, c: c}
    assert display_names(["demo:robust", a]) == {"demo:robust": "demo:robust", a: "demo:robust@one.pt"}
    assert display_names(["@/ckpt/mine.pt"]) == {"@/ckpt/mine.pt": "mine.pt"}
    # SpuFix rows: "<spec> + <fix name>", split with the row's variant (a "+" in a fix name is kept)
    fixed = f"{ROBUST_SPEC} + SpuFix + x"
    assert display_names([ROBUST_SPEC, fixed], {fixed: "SpuFix + x"}) == {
        ROBUST_SPEC: "demo:robust", fixed: "demo:robust + SpuFix + x"}


def _legend(fig):  # type: ignore[no-untyped-def]
    """(legend labels with line wraps undone, legend bbox, axes bbox) of a drawn one-axes figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    legend = ax.get_legend()
    labels = [" ".join(t.get_text().split()) for t in legend.get_texts()]
    return labels, legend.get_window_extent(renderer), ax.get_window_extent(renderer), ax


def test_plot_legends_name_models_by_spec_name_outside_the_data(tmp_path: Path) -> None:
    from spurious.score.plots import class_auc_figure, scatter_figure

    spu, val = make_bench(tmp_path)
    clf = tiny_classifier(seed=0, spec=ROBUST_SPEC)
    other = tiny_classifier(seed=1, spec=STANDARD_SPEC)
    fix_name = "SpuFix (transfer from demo:robust@demo-robust-ef9804dea281125a.pt)"
    r = score([clf, other], spurious=spu, val=val, out=tmp_path / "out",
              fixes=[StandInFix(clf, 0, name="SpuFix"), StandInFix(other, 0, name=fix_name)], **_quiet())
    want = ["demo:robust", "demo:robust + SpuFix", "demo:standard", f"demo:standard + {fix_name}"]
    assert [x.spec for x in r.rows] == [ROBUST_SPEC, ROBUST_SPEC, STANDARD_SPEC, STANDARD_SPEC]

    labels, legend, axes, ax = _legend(scatter_figure(r.rows))
    assert labels == want
    assert not legend.overlaps(axes) and legend.x0 > axes.x1  # right of the axes: covers no point
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    assert len(points) == 4 and all(axes.contains(*ax.transData.transform(p)) for p in points)

    labels, legend, axes, ax = _legend(class_auc_figure(r.per_class, [x.model for x in r.rows]))
    assert labels == want
    assert not legend.overlaps(axes) and legend.x0 > axes.x1
    bars = [p.get_window_extent() for p in ax.patches if np.isfinite(p.get_height())]
    assert bars and not any(b.overlaps(legend) for b in bars)

    # the machine-readable outputs keep the full specs; the HTML names the rows
    with open(tmp_path / "out" / "scores.csv", newline="") as fh:
        assert [x["model"] for x in csv.DictReader(fh)] == [x.model for x in r.rows]
    assert [x["spec"] for x in json.loads((tmp_path / "out" / "scores.json").read_text())["rows"]][0] == ROBUST_SPEC
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<td class=\"l\">demo:robust + SpuFix</td>" in html and "AUC demo:standard</th>" in html
    assert f"<td class=\"l\">{ROBUST_SPEC}</td>" in html  # the name -> spec table
