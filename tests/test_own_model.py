"""Your own checkpoint on your own class folders: the right preprocessing and labels, or a loud refusal.

A torchvision ResNet-18 is trained here, in plain torch, on 24 px images with raw pixel values
in [0, 255] and its own normalisation (nothing like ImageNet's). Loaded through the CLI with its
config file, the agreement ``extract`` stores must equal the accuracy of a plain-torch forward
with the training transform (an oracle that shares no code with ``spurious``), and folders named
after the classes in another order must get the right labels. Without the config file the
loader warns, and the sanity check flags the agreement.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from spurious.agreement import AgreementError, label_agreement
from spurious.cli import main
from spurious.extract import extract
from spurious.models import load_model
from spurious.workspace import IncompatibleArtifactError, Workspace

CLASSES = ["star", "ring", "cross", "triangle"]
COLOURS = {"star": (200, 40, 40), "ring": (40, 190, 40), "cross": (40, 40, 200), "triangle": (200, 190, 40)}
# Folder names a user might have: another order than the model's classes (sorted: cross, ring, star,
# triangle), another case, and the NN_name form.
FOLDERS = {"star": "Star", "ring": "01_ring", "cross": "cross", "triangle": "triangle"}
SIZE = 24
MEAN, STD = (128.0, 128.0, 128.0), (64.0, 64.0, 64.0)  # on pixel values in [0, 255]


def _draw(rng: np.random.Generator, cls: str) -> Image.Image:
    h, w = SIZE + 4, SIZE + 12  # not square and not the input size: resize and crop matter
    base = np.array(COLOURS[cls], dtype=np.float64) * rng.uniform(0.7, 1.2)
    arr = np.clip(base + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _train_transform(img: Image.Image) -> torch.Tensor:
    """How the model was trained: plain torchvision, pixel values 0..255, own mean/std."""
    x = torchvision.transforms.functional.pil_to_tensor(
        torchvision.transforms.CenterCrop(SIZE)(torchvision.transforms.Resize(SIZE)(img))
    ).float()
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    data = root / "data"
    truth: dict[str, int] = {}
    for k, cls in enumerate(CLASSES):
        folder = data / FOLDERS[cls]
        folder.mkdir(parents=True)
        for i in range(10):
            _draw(rng, cls).save(folder / f"{i:02d}.png")
            truth[f"{FOLDERS[cls]}/{i:02d}.png"] = k

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=len(CLASSES))
    images = [_draw(rng, cls) for cls in CLASSES for _ in range(16)]
    x = torch.stack([_train_transform(img) for img in images])
    y = torch.tensor([k for k in range(len(CLASSES)) for _ in range(16)])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for step in range(30):
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(step))[:32]
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    # BatchNorm's running stats from the whole training set (after 30 steps the moving averages were still
    # unsettled: 0.75 accuracy in eval mode on one CPU, 1.0 on another)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: one pass gives the training set's statistics
    with torch.no_grad():
        net(x)
    net.eval()
    ckpt = root / "ckpt" / "model.pt"
    ckpt.parent.mkdir()
    torch.save(net.state_dict(), ckpt)
    config = {
        "architecture": "resnet18",
        "num_classes": len(CLASSES),
        "class_names": CLASSES,
        "pretrained_cfg": {"input_size": [3, SIZE, SIZE], "crop_pct": 1.0, "interpolation": "bilinear",
                           "mean": list(MEAN), "std": list(STD)},
        "value_range": [0, 255],
    }
    (root / "ckpt" / "model.json").write_text(json.dumps(config), encoding="utf-8")
    bare = root / "bare" / "model.pt"  # the same weights without a config file
    bare.parent.mkdir()
    shutil.copy(ckpt, bare)

    ids = sorted(truth)
    with torch.inference_mode():
        batch = torch.stack([_train_transform(Image.open(data / i).convert("RGB")) for i in ids])
        oracle_pred = net(batch).argmax(1).numpy()
    labels = np.array([truth[i] for i in ids])
    return {"root": root, "data": data, "ckpt": ckpt, "bare": bare, "ids": ids, "labels": labels,
            "oracle_pred": oracle_pred}


def test_cli_extract_with_config_matches_plain_torch(own, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    ws = Path(own["root"]) / "ws-cli"
    # the README's ARCH@CHECKPOINT without a prefix; the config beside it states the rest
    rc = main(["extract", str(ws), "--model", f"resnet18@{own['ckpt']}", "--data", f"folder:{own['data']}",
               "--workers", "0", "--json", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    store = Workspace.open(ws).feature_store("train")
    assert store.ids == own["ids"]
    # labels follow the class names, not the sorted folder order
    np.testing.assert_array_equal(store.labels, own["labels"])
    # the stored top-1 agrees with plain torch on the training transform, image by image
    top1 = store.topk(np.arange(len(store)))[0][:, 0]
    np.testing.assert_array_equal(top1, own["oracle_pred"])
    oracle_acc = float((own["oracle_pred"] == own["labels"]).mean())
    assert summary["agreement"]["agreement"] == pytest.approx(oracle_acc)
    assert summary["agreement"]["ok"] is True and oracle_acc > 0.9
    assert "matched" in summary["label_source"]
    manifest = json.loads((ws / "manifest.json").read_text())
    assert manifest["model"]["spec"] == f"torchvision:resnet18@{own['ckpt']}"
    assert manifest["model"]["preprocessing"]["value_range"] == [0.0, 255.0]
    assert manifest["model"]["preprocessing"]["input_size"] == [SIZE, SIZE]
    assert "config file" in manifest["model"]["preprocessing_source"]
    assert manifest["class_names"] == CLASSES


def test_spurious_model_shows_the_stated_preprocessing(own, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert main(["model", f"torchvision:resnet18@{own['ckpt']}", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["preprocessing"]["mean"] == list(MEAN) and d["preprocessing"]["resize_size"] == SIZE
    assert d["config_file"] == str(Path(own["ckpt"]).with_suffix(".json"))
    assert d["class_names"] == CLASSES and d["class_names_source"] == "config file"
    assert d["num_features"] == 512 and d["head"][0]["layer"] == "fc"
    # options beat the config file
    assert main(["model", f"torchvision:resnet18@{own['ckpt']}", "--mean", "0", "--std", "1", "--json"]) == 0
    d2 = json.loads(capsys.readouterr().out)
    assert d2["preprocessing"]["mean"] == [0.0, 0.0, 0.0] and d2["preprocessing"]["input_size"] == [SIZE, SIZE]
    assert d2["preprocessing_source"].startswith("options (mean, std) over config file")
    assert d2["fingerprint"] != d["fingerprint"]
    assert main(["model", f"torchvision:resnet18@{own['ckpt']}"]) == 0
    text = capsys.readouterr().out
    assert "config file" in text and "pixel values [0, 255]" in text and "star, ring, cross, triangle" in text


def test_without_config_warns_and_the_sanity_check_fires(own, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.warns(UserWarning, match="states no preprocessing") as record:
        r = extract(tmp_path / "ws", model=f"torchvision:resnet18@{own['bare']}", data=str(own["data"]),
                    num_workers=0, progress=False)
    # no class names either: the ImageFolder convention, said so
    assert "sorted folder names" in r.label_source
    assert any("does not agree with the labels" in str(w.message) for w in record)
    assert r.agreement is not None and r.agreement["ok"] is False
    # --strict: an error that names the causes, after the store was written
    with pytest.raises(AgreementError, match="preprocessing"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract(tmp_path / "ws", model=f"torchvision:resnet18@{own['bare']}", data=str(own["data"]),
                num_workers=0, progress=False, strict=True)
    assert (tmp_path / "ws" / "features" / "train" / "manifest.json").is_file()


def test_cli_strict_exits_2(own, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["extract", str(tmp_path / "ws"), "--model", f"torchvision:resnet18@{own['bare']}",
                   "--data", str(own["data"]), "--workers", "0", "--no-progress", "--strict"])
    assert rc == 2
    assert "does not agree with the labels" in capsys.readouterr().err


def test_options_match_the_config(own, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The CLI options state the same preprocessing as the config file: same fingerprint, same figure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stated: no warning
        clf = load_model(f"torchvision:resnet18@{own['bare']}", class_names=CLASSES, preprocessing={
            "input_size": SIZE, "crop_pct": 1.0, "mean": MEAN, "std": STD, "value_range": (0, 255)})
    ref = load_model(f"torchvision:resnet18@{own['ckpt']}")
    assert clf.preprocessing == ref.preprocessing
    # same bytes in another file: the same weights digest, so the same fingerprint
    assert clf.fingerprint() == ref.fingerprint()


def test_two_preprocessings_of_one_checkpoint_are_two_models(own, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = load_model(f"torchvision:resnet18@{own['ckpt']}")
    b = load_model(f"torchvision:resnet18@{own['ckpt']}", preprocessing={"interpolation": "bicubic"})
    c = load_model(f"torchvision:resnet18@{own['ckpt']}", class_names=["a", "b", "c", "d"])
    assert len({a.fingerprint(), b.fingerprint(), c.fingerprint()}) == 3
    extract(tmp_path / "ws", model=a, data=str(own["data"]), num_workers=0, progress=False)
    with pytest.raises(IncompatibleArtifactError, match=rf"{a.fingerprint()}.*{b.fingerprint()}"):
        extract(tmp_path / "ws", model=b, data=str(own["data"]), num_workers=0, progress=False, split="val")
    # later stages reload the workspace's model with the recorded preprocessing
    again = Workspace.open(tmp_path / "ws").load_model()
    assert again.fingerprint() == a.fingerprint() and again.preprocessing == a.preprocessing


def test_unknown_folder_is_refused_with_the_names(own, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    shutil.copytree(Path(own["data"]) / "Star", data / "star")
    shutil.copytree(Path(own["data"]) / "cross", data / "crosses")
    with pytest.raises(ValueError, match=r"crosses.*cross"):
        extract(tmp_path / "ws", model=f"torchvision:resnet18@{own['ckpt']}", data=str(data), num_workers=0,
                progress=False)
    # a class map states the mapping
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"crosses": "cross"}), encoding="utf-8")
    r = extract(tmp_path / "ws", model=f"torchvision:resnet18@{own['ckpt']}", data=str(data), num_workers=0,
                progress=False, class_map=str(cmap))
    store = Workspace.open(tmp_path / "ws").feature_store("train")
    assert sorted(set(store.labels.tolist())) == [0, 2]
    assert r.agreement is not None and r.agreement["ok"]


def test_imagenet_layout_with_a_non_imagenet_model_is_refused(own, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "in"
    shutil.copytree(Path(own["data"]) / "Star", data / "n01440764")
    with pytest.raises(ValueError, match="ImageNet-1k indices.*folder:"):
        extract(tmp_path / "ws", model=f"torchvision:resnet18@{own['ckpt']}", data=str(data), num_workers=0,
                progress=False)


def test_agreement_oracle() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, -1])
    pred = np.array([0, 1, 1, 1, 0, 2, 2])
    a = label_agreement(labels, pred)
    y, p = labels[:6], pred[:6]
    p_o = (y == p).mean()
    p_e = sum((y == c).mean() * (p == c).mean() for c in range(3))
    assert a.labelled == 6 and a.agreement == pytest.approx(p_o)
    assert a.kappa == pytest.approx((p_o - p_e) / (1 - p_e))
    # predictions that ignore the image: kappa 0, suspect
    constant = label_agreement(np.array([0, 1, 2, 3]), np.array([1, 1, 1, 1]))
    assert constant.kappa == pytest.approx(0.0) and not constant.ok


def test_a_workspace_from_before_full_fingerprints_says_so(tmp_path: Path) -> None:
    """Workspaces made when the fingerprint covered only the head are refused with the reason and the fix."""
    W, b = np.ones((3, 4), np.float32), np.zeros(3, np.float32)
    ws = Workspace.create_from_head(tmp_path / "ws", W, b, spec="m", fingerprint="0123456789abcdef",
                                    preprocessing={"input_size": [8, 8]})
    manifest = json.loads((ws.root / "manifest.json").read_text())
    assert manifest["model"]["fingerprint_scheme"] == 2
    del manifest["model"]["fingerprint_scheme"]
    (ws.root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IncompatibleArtifactError, match="older spurious whose fingerprint covered only the head"):
        Workspace.open(ws.root).check_model("fedcba9876543210", "m")
