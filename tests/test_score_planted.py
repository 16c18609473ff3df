"""score end to end: the planted demo models through the CLI, a real ImageNet model on photos
(the torchrun run is in tests/test_dist.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax
from sklearn.metrics import average_precision_score, roc_auc_score

from spurious.datasets import load_image


def _direct(spec: str, paths: list[Path]) -> np.ndarray:
    from spurious.models import load_model

    clf = load_model(spec)
    x = torch.stack([clf.preprocessing(load_image(p)) for p in paths])
    with torch.no_grad():
        return clf(x).double().numpy()


def _oracle(spec: str, spu: Path, val: Path) -> dict[str, float | dict[int, float]]:
    """mAUC / mAP / extension / accuracy from a plain per-image forward pass and scikit-learn."""
    folders = sorted(d.name for d in val.iterdir() if d.is_dir())
    vp = sorted(val.glob("*/*.png"))
    vl = np.array([folders.index(p.parent.name) for p in vp])
    sp = sorted(spu.glob("*/*.png"))
    sl = np.array([int(p.parent.name.split("_")[2]) for p in sp])
    ls, lv = _direct(spec, sp), _direct(spec, vp)
    ps, pv = softmax(ls, axis=1), softmax(lv, axis=1)
    aucs, aps, exts = {}, {}, {}
    for k in sorted(set(sl.tolist())):
        y = np.r_[np.ones((vl == k).sum()), np.zeros((sl == k).sum())]
        s = np.r_[pv[vl == k, k], ps[sl == k, k]]
        aucs[k], aps[k] = roc_auc_score(y, s), average_precision_score(y, s)
        exts[k] = float(np.mean(ls[sl == k].argmax(1) == k))
    return {"mauc": float(np.mean(list(aucs.values()))), "map": float(np.mean(list(aps.values()))),
            "ext": float(np.mean(list(exts.values()))), "acc": float(np.mean(lv.argmax(1) == vl)), "aucs": aucs}


def test_planted_demo_models_end_to_end_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spurious.cli import main
    from spurious.demo.planted import load_planted
    from spurious.demo.train import train_demo_model

    planted = load_planted(train_demo_model("standard", tiny=True, progress=False).planted_root)
    train_demo_model("robust", tiny=True, progress=False)
    out = tmp_path / "out"
    rc = main(["score", "--model", "demo:standard-tiny", "--model", "demo:robust-tiny", "--spurious",
               str(planted.spurious), "--val", str(planted.val), "--out", str(out), "--workers", "0",
               "--no-progress", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    rows = {r["model"]: r for r in summary["rows"]}
    for spec in ("demo:standard-tiny", "demo:robust-tiny"):
        want = _oracle(spec, planted.spurious, planted.val)
        got = rows[spec]
        assert got["mauc"] == pytest.approx(want["mauc"], abs=1e-9)
        assert got["map"] == pytest.approx(want["map"], abs=1e-9)
        assert got["mean_extension"] == pytest.approx(want["ext"])
        assert got["val_accuracy"] == pytest.approx(want["acc"])
        assert got["classes_scored"] == 4  # the planted features sit on classes 0-3
    assert rows["demo:standard-tiny"]["mauc"] < 0.9  # the standard model clearly relies on the planted features
    for name in ("scores.csv", "scores.json", "scores.md", "per_class.csv", "report.html", "manifest.json",
                 "plots/scatter.png", "plots/class_auc.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "plots").glob("strip_*.png"))) == 4
    html = (out / "report.html").read_text()
    assert "plots/scatter.png" in html and ">star<" in html and "00_star" not in html  # the model's names


def _photo_benchmark(root: Path, per_class: int = 4) -> tuple[Path, Path]:
    """Val: large crops of the tabby / espresso photos (wnid folders); spurious: small patches of the same photos."""
    from skimage import data as skdata

    from spurious.demo import draw_photo_dataset

    val = draw_photo_dataset(root / "val", per_class=per_class, size=160, seed=0)
    rng = np.random.default_rng(1)
    for k, photo_name, what in ((281, "chelsea", "fur"), (967, "coffee", "table")):
        photo = Image.fromarray(getattr(skdata, photo_name)()).convert("RGB")
        folder = root / "spurious" / f"spurious_imagenet_{k}_{what}_0"
        folder.mkdir(parents=True)
        w, h = photo.size
        for i in range(per_class):
            s = rng.uniform(0.2, 0.35)
            cw, ch = int(w * s), int(h * s)
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            photo.crop((x0, y0, x0 + cw, y0 + ch)).resize((160, 160), Image.BICUBIC).save(folder / f"{i:03d}.jpg")
    return root / "spurious", val


@pytest.mark.slow  # ~15-30 s: loading timm and EfficientNet-Lite0 dominates
def test_real_imagenet_model_on_photos(tmp_path: Path) -> None:
    from spurious.models import load_model
    from spurious.score import score

    spu, val = _photo_benchmark(tmp_path)
    r = score("efficientnet_lite0", spurious=spu, val=val, out=tmp_path / "out", num_workers=0, progress=False,
              plots=False, protocol="reference")
    row = r.row("efficientnet_lite0")
    assert r.classes == [281, 967] and [c.class_name for c in r.per_class] == ["tabby", "espresso"]
    assert row.class_map == "identity" and row.val_images == 8 and row.spurious_images == 8
    # oracle: bicubic resize of the patches to 224 x 224 (no crop); the photos with the model's own preprocessing
    clf = load_model("efficientnet_lite0")
    sp, vp = sorted(spu.glob("*/*.jpg")), sorted(val.glob("*/*.jpg"))
    sl = np.array([int(p.parent.name.split("_")[2]) for p in sp])
    vl = np.array([281 if p.parent.name == "n02123045" else 967 for p in vp])
    with torch.no_grad():
        ls = clf(torch.stack([torch.from_numpy(np.asarray(load_image(p).resize((224, 224), Image.BICUBIC),
                                                          dtype=np.float32) / 255).permute(2, 0, 1) for p in sp]))
        lv = clf(torch.stack([clf.preprocessing(load_image(p)) for p in vp]))
    ps, pv = softmax(ls.double().numpy(), axis=1), softmax(lv.double().numpy(), axis=1)
    for c in r.per_class:
        k = c.class_index
        y = np.r_[np.ones((vl == k).sum()), np.zeros((sl == k).sum())]
        assert c.auc == pytest.approx(roc_auc_score(y, np.r_[pv[vl == k, k], ps[sl == k, k]]), abs=1e-9)
    assert row.val_accuracy == pytest.approx(np.mean(lv.numpy().argmax(1) == vl))
