"""score: one label space (the model's class names), the label-agreement sanity figure, preprocessing options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spurious.agreement import KAPPA_MIN, AgreementError
from spurious.datasets import load_image
from spurious.models import Classifier, Preprocessing, load_model, register_model_source
from spurious.score import score

# ----------------------------------------------------------------------------- a model that sees colours
COLOURS = {"cross": (40, 60, 220), "star": (220, 40, 40), "ring": (40, 200, 60)}
NAMES = ["cross", "star", "ring"]  # the model's label space: class 0 is blue, 1 red, 2 green
VAL_FOLDERS = {"01_star": 1, "Ring": 2, "cross": 0}  # NN_name, other case, exact; sorted order is not the model's
SPURIOUS_FOLDERS = {"s_s_1_feeder_0": ((200, 120, 120), 4), "s_s_0_water_2": ((90, 110, 200), 3)}
IDENTITY = Preprocessing(input_size=(32, 32), resize_size=32, crop_pct=1.0, interpolation="bilinear",
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _write(folder: Path, rgb: tuple[int, int, int], n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.clip(np.array(rgb) + rng.normal(0, 20, size=(40, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")


def make_data(root: Path, per_class: int = 5) -> tuple[Path, Path]:
    """Validation folders of three colours named in three ways, and two spurious folders."""
    for i, (folder, k) in enumerate(VAL_FOLDERS.items()):
        _write(root / "val" / folder, COLOURS[NAMES[k]], per_class + i, seed=i)
    for i, (folder, (rgb, n)) in enumerate(SPURIOUS_FOLDERS.items()):
        _write(root / "spurious" / folder, rgb, n, seed=10 + i)
    return root / "spurious", root / "val"


def colour_net(shift: int = 0) -> torch.nn.Module:
    """Nearest mean colour: ``logit_k = 20 (2 mu_k . x - |mu_k|^2)``; ``shift`` rolls the head rows (wrong labels)."""
    mu = torch.tensor([COLOURS[n] for n in NAMES], dtype=torch.float32) / 255.0
    mu = mu.roll(shift, dims=0)
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3))
    with torch.no_grad():
        net[2].weight.copy_(40.0 * mu)
        net[2].bias.copy_(-20.0 * (mu * mu).sum(1))
    return net.eval()


def colour_model(shift: int = 0, names: list[str] | None = NAMES, spec: str = "test:colour") -> Classifier:
    return Classifier.from_module(colour_net(shift), IDENTITY, names, spec)


def _factory(name: str, **_: object) -> Classifier:
    return colour_model(shift=1 if name == "permuted" else 0, names=None if name == "unnamed" else NAMES,
                        spec=f"scorelabels:{name}")


register_model_source("scorelabels", _factory, lambda: ["colour", "permuted", "unnamed"])


def _quiet(**kw):  # type: ignore[no-untyped-def]
    return {"num_workers": 0, "progress": False, **kw}


def truth(val: Path) -> tuple[list[Path], np.ndarray]:
    """Validation images in the dataset's order (sorted ids) with their class in the model's label space."""
    paths = sorted(val.glob("*/*.png"), key=lambda p: f"{p.parent.name}/{p.name}")
    return paths, np.array([VAL_FOLDERS[p.parent.name] for p in paths])


def logits_of(clf: Classifier, paths: list[Path], pre: Preprocessing | None = None) -> np.ndarray:
    x = torch.stack([(pre or clf.preprocessing)(load_image(p)) for p in paths])
    with torch.no_grad():
        return clf(x).double().numpy()


def kappa_np(labels: np.ndarray, pred: np.ndarray, k: int) -> tuple[float, float, float]:
    """``(p_o, p_e, kappa)`` from the confusion matrix (Cohen 1960)."""
    confusion = np.zeros((k, k))
    np.add.at(confusion, (labels, pred), 1)
    confusion /= confusion.sum()
    p_o = float(np.trace(confusion))
    p_e = float(confusion.sum(1) @ confusion.sum(0))
    return p_o, p_e, (p_o - p_e) / (1 - p_e)


def cached_val_preds(out: Path) -> np.ndarray:
    """The prediction of every validation record, read straight from the cache chunks."""
    (folder,) = [p for p in (out / "cache").glob("*/val-*") if p.is_dir()]
    pred = {}
    for chunk in sorted(folder.glob("c*.npz")):
        if ".fix-" in chunk.name:
            continue
        with np.load(chunk) as z:
            pred.update(zip(z["rows"].tolist(), z["pred"].tolist()))
    return np.array([pred[i] for i in range(len(pred))])


# ----------------------------------------------------------------------------- one label space
def test_val_folders_are_read_in_the_model_label_space(tmp_path: Path) -> None:
    spu, val = make_data(tmp_path)
    clf = colour_model()
    r = score(clf, spurious=spu, val=val, out=tmp_path / "out", **_quiet())
    assert r.class_names == NAMES
    assert [(c.class_index, c.class_name) for c in r.per_class] == [(0, "cross"), (1, "star")]
    paths, labels = truth(val)
    spurious_of = {int(f.split("_")[2]): n for f, (_, n) in SPURIOUS_FOLDERS.items()}  # class token -> images
    for c in r.per_class:
        assert (c.val_images, c.spurious_images) == ((labels == c.class_index).sum(), spurious_of[c.class_index])
    row = r.row("test:colour")
    lv = logits_of(clf, paths)
    assert row.val_accuracy == pytest.approx(np.mean(lv.argmax(1) == labels)) and row.val_accuracy == 1.0
    assert row.agreement.ok and row.agreement.kappa == pytest.approx(1.0)
    assert "test:colour" in r.label_source and "NN_name" in r.label_source
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["label_space"]["class_names"] == NAMES and manifest["label_space"]["source"] == r.label_source
    assert json.loads((tmp_path / "out" / "scores.json").read_text())["label_source"] == r.label_source
    md = (tmp_path / "out" / "scores.md").read_text()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "| 1 | star |" in md and "01_star" not in md and "01_star" not in html and ">star<" in html


def test_a_class_map_or_a_model_without_names_keeps_the_folder_names(tmp_path: Path) -> None:
    spu, val = make_data(tmp_path)
    folders = sorted(VAL_FOLDERS)
    with pytest.warns(UserWarning, match="does not agree with the labels"):  # sorted folders: not the model's order
        unnamed = score(colour_model(names=None), spurious=spu, val=val, out=tmp_path / "a", **_quiet(plots=False))
    assert unnamed.class_names == folders and "no model has class names" in unnamed.label_source
    with pytest.warns(UserWarning, match="does not agree with the labels"):  # sorted positions are not the model's
        mapped = score(colour_model(), spurious=spu, val=val, out=tmp_path / "b", class_map="identity",
                       **_quiet(plots=False))
    assert mapped.class_names == folders and "a class map was given" in mapped.label_source
    given = score(colour_model(names=None), spurious=spu, val=val, out=tmp_path / "c", class_names=NAMES,
                  **_quiet(plots=False))  # given class names: the folders are matched to them
    assert given.class_names == NAMES and given.row("test:colour").agreement.kappa == pytest.approx(1.0)


def test_folders_that_match_no_class_name_are_an_error(tmp_path: Path) -> None:
    spu, val = make_data(tmp_path)
    (val / "Ring").rename(val / "moon")
    with pytest.raises(ValueError, match=r"'moon'.*not in class_names(.|\n)*label space of test:colour"):
        score(colour_model(), spurious=spu, val=val, out=tmp_path / "out", **_quiet())


def test_spurious_class_tokens_must_lie_in_the_model_label_space(tmp_path: Path) -> None:
    spu, val = make_data(tmp_path)
    (spu / "s_s_0_water_2").rename(spu / "s_s_3_water_2")  # the model has classes 0-2
    with pytest.raises(ValueError, match="'s_s_3_water_2' names class 3, outside the label space of 3 classes"):
        score(colour_model(), spurious=spu, val=val, out=tmp_path / "out", **_quiet())


@pytest.mark.filterwarnings("ignore:the model does not agree")  # the tiny demo model is barely trained
def test_planted_demo_folders_take_the_demo_model_names(tmp_path: Path) -> None:
    from spurious.demo.planted import load_planted
    from spurious.demo.train import train_demo_model

    planted = load_planted(train_demo_model("standard", tiny=True, progress=False).planted_root)
    clf = load_model("demo:standard-tiny")
    r = score("demo:standard-tiny", spurious=planted.spurious, val=planted.val, out=tmp_path / "out", **_quiet())
    assert r.class_names == clf.class_names == list(planted.class_names)
    assert all(c.class_name == planted.class_names[c.class_index] for c in r.per_class)
    gt = planted.ground_truth()
    val_gt = sorted((g["id"], g["label"]) for g in gt if g["split"] == "val")
    spu_gt = np.array([g["label"] for g in gt if g["split"] == "spurious"])
    labels = np.array([k for _, k in val_gt])
    for c in r.per_class:
        assert (c.val_images, c.spurious_images) == ((labels == c.class_index).sum(), (spu_gt == c.class_index).sum())
    lv = logits_of(clf, [planted.root / i for i, _ in val_gt])
    row = r.row("demo:standard-tiny")
    assert row.val_accuracy == pytest.approx(np.mean(lv.argmax(1) == labels))
    p_o, p_e, kappa = kappa_np(labels, lv.argmax(1), len(r.class_names))
    assert (row.agreement.agreement, row.agreement.chance) == (pytest.approx(p_o), pytest.approx(p_e))
    assert row.agreement.kappa == pytest.approx(kappa) and row.agreement.ok == (kappa >= KAPPA_MIN)
    html = (tmp_path / "out" / "report.html").read_text()
    assert ">star<" in html and "00_star" not in html


# ----------------------------------------------------------------------------- the sanity figure
def test_a_model_that_disagrees_with_the_labels_is_warned_about_and_strict_raises(tmp_path: Path) -> None:
    spu, val = make_data(tmp_path)
    clf = colour_model(shift=1, spec="test:permuted")  # every class answers with its neighbour's colour
    with pytest.warns(UserWarning, match=r"does not agree with the labels of the validation images folder:.*"
                                         r"`spurious model test:permuted`"):
        r = score(clf, spurious=spu, val=val, out=tmp_path / "out", **_quiet(plots=False))
    row = r.row("test:permuted")
    _, labels = truth(val)
    pred = cached_val_preds(tmp_path / "out")
    p_o, p_e, kappa = kappa_np(labels, pred, 3)
    assert p_o == 0.0 and kappa < 0  # the oracle sees the disagreement too
    a = row.agreement
    assert (a.agreement, a.chance, a.kappa, a.labelled) == (p_o, pytest.approx(p_e), pytest.approx(kappa), len(labels))
    assert not a.ok and a.threshold == KAPPA_MIN and row.val_accuracy == a.agreement
    saved = json.loads((tmp_path / "out" / "scores.json").read_text())["rows"][0]["agreement"]
    assert saved["kappa"] == pytest.approx(kappa) and saved["ok"] is False
    assert "SUSPECT" in (tmp_path / "out" / "scores.md").read_text()
    assert any("SUSPECT" in line for line in r.summary_lines())

    seen: list[int] = []
    handle = clf.model.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    try:
        with pytest.raises(AgreementError, match=r"kappa -?[0-9.]+ < 0.2.*\(--strict\)"):
            score(clf, spurious=spu, val=val, out=tmp_path / "out", strict=True, **_quiet(plots=False))
    finally:
        handle.remove()
    assert seen == []  # the figure comes from the cached predictions, no forward pass
    good = score(colour_model(), spurious=spu, val=val, out=tmp_path / "good", strict=True, **_quiet(plots=False))
    assert good.row("test:colour").agreement.ok


def test_cli_strict_and_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spurious.cli import main

    spu, val = make_data(tmp_path)
    common = ["--spurious", str(spu), "--val", str(val), "--workers", "0", "--no-progress", "--no-plots"]
    assert main(["score", "--model", "scorelabels:colour", "--out", str(tmp_path / "a"), *common]) == 0
    out = capsys.readouterr().out
    assert "kappa" in out and "validation labels: the class names of scorelabels:colour" in out
    rc = main(["score", "--model", "scorelabels:permuted", "--out", str(tmp_path / "b"), "--strict", *common])
    assert rc == 2 and "does not agree with the labels" in capsys.readouterr().err
    assert (tmp_path / "b" / "scores.json").is_file()  # the results are written before the error


# ----------------------------------------------------------------------------- preprocessing options
def test_preprocessing_options_reach_every_spec_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spurious.cli import main

    spu, val = make_data(tmp_path)
    rc = main(["score", "--model", "scorelabels:colour", "--model", "scorelabels:permuted", "--spurious", str(spu),
               "--val", str(val), "--out", str(tmp_path / "out"), "--workers", "0", "--no-progress", "--no-plots",
               "--mean", "0.5", "--std", "0.25,0.5,1", "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["args"]["preprocessing"] == {"mean": [0.5] * 3, "std": [0.25, 0.5, 1.0]}
    stated = Preprocessing(input_size=(32, 32), resize_size=32, crop_pct=1.0, interpolation="bilinear",
                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    paths, labels = truth(val)
    for m, shift in zip(manifest["models"], (0, 1)):
        assert m["preprocessing"]["mean"] == [0.5] * 3 and m["preprocessing"]["std"] == [0.25, 0.5, 1.0]
        # oracle: the colour net applied by hand to the images normalised with the stated mean / std
        x = torch.stack([IDENTITY(load_image(p)) for p in paths])
        normalised = (x - torch.tensor(stated.mean).view(1, 3, 1, 1)) / torch.tensor(stated.std).view(1, 3, 1, 1)
        with torch.no_grad():
            pred = colour_net(shift)(normalised).argmax(1).numpy()
        row = next(r for r in rows if r["spec"] == m["spec"])
        assert row["val_accuracy"] == pytest.approx(np.mean(pred == labels))
        assert row["agreement"]["kappa"] == pytest.approx(kappa_np(labels, pred, 3)[2])
    assert rows[0]["fingerprint"] != load_model("scorelabels:colour").fingerprint()


def test_a_model_config_names_the_classes_and_sets_the_preprocessing(tmp_path: Path) -> None:
    spu, val = make_data(tmp_path)
    config = tmp_path / "colour.json"
    config.write_text(json.dumps({"class_names": NAMES, "pretrained_cfg": {"input_size": [3, 24, 24]}}))
    r = score("scorelabels:unnamed", spurious=spu, val=val, out=tmp_path / "out", model_config=config,
              **_quiet(plots=False))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["models"][0]["preprocessing"]["input_size"] == [24, 24]
    assert manifest["models"][0]["class_names_source"] == "config file"
    assert manifest["args"]["model_config"] == str(config)
    assert r.class_names == NAMES and "scorelabels:unnamed" in r.label_source  # the config's names name the classes
    assert r.row("scorelabels:unnamed").agreement.kappa == pytest.approx(1.0)
    with pytest.raises(ValueError, match="apply to models given as specs"):
        score(colour_model(), spurious=spu, val=val, out=tmp_path / "o2", preprocessing={"mean": 0.5}, **_quiet())
