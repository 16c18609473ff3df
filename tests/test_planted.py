"""Tests for spurious.demo.planted: the generated dataset with planted spurious features.

Oracles: pixels that change when a layer is left out of the rendering (same random numbers), the
decoded PNG files, the documented rates (``floor(rate * n + 0.5)`` images), the colours the
features are documented to have, and the existing readers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spurious.datasets import image_folder, image_pool, spurious_imagenet
from spurious.demo.planted import (
    PLANTED_FEATURES,
    PlantedConfig,
    PlantedDataset,
    SpuriousFeature,
    generate_planted,
    load_planted,
)
from spurious.demo.planted import _drawing as D
from spurious.demo.planted import _generator as G

TINY = PlantedConfig.tiny()
MICRO = PlantedConfig(
    num_classes=4, image_size=16, train_per_class=2, val_per_class=1, spurious_per_feature=1, pool_size=3
)
PATCHES = ("feeder", "scribble")  # features drawn as a separate element next to the object


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> PlantedDataset:
    return generate_planted(tmp_path_factory.mktemp("planted") / "data", TINY)


@pytest.fixture(scope="module")
def truth(tiny: PlantedDataset) -> list[dict]:
    return tiny.ground_truth()


def _box_mask(size: int, box: list[int] | tuple[int, ...] | None) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    if box is not None:
        m[box[1]:box[3], box[0]:box[2]] = True
    return m


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def _read(root: Path, rel: str) -> np.ndarray:
    with Image.open(root / rel) as im:
        return np.asarray(im.convert("RGB"))


def _magenta(pixels: np.ndarray) -> np.ndarray:
    p = pixels.astype(int)
    return (p[..., 0] > 170) & (p[..., 1] < 80) & (p[..., 2] > 140)


# ---------------------------------------------------------------------- rendering
_COMBOS = [
    (), ("feeder",), ("frame",), ("water",), ("scribble",), ("water", "scribble"), ("feeder", "water"),
]


@pytest.mark.parametrize("size", [16, 32, 64])
def test_render_masks_and_changed_pixels_lie_in_boxes(size: int) -> None:
    for case in range(2 * len(D.CLASS_SHAPES)):
        cls = case % len(D.CLASS_SHAPES)
        feats = _COMBOS[case % len(_COMBOS)]
        key = [size, case]
        cls = None if case % 3 == 2 else cls  # a third without a class object, with a stand-in shape
        stand_in_p = 0.9 if cls is None else 0.0
        r = D.render(np.random.default_rng(key), size, cls, feats, distractor_p=0.7, stand_in_p=stand_in_p)
        assert r.image.shape == (size, size, 3) and r.image.dtype == np.uint8
        if cls is not None:
            assert r.stand_in_box is None and r.stand_in_mask is None
        assert list(r.feature_masks) == list(feats)
        masks = {**({"object": (r.object_mask, r.object_box)} if cls is not None else {}),
                 **({"stand_in": (r.stand_in_mask, r.stand_in_box)} if r.stand_in_box is not None else {}),
                 **{f: (r.feature_masks[f], r.feature_boxes[f]) for f in feats}}
        for name, (mask, box) in masks.items():
            assert mask.any(), (name, case)
            assert not (mask & ~_box_mask(size, box)).any(), (name, case)
            ys, xs = np.nonzero(mask)  # recorded boxes are tight
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == list(box), (name, case)
        # patches never overlap the object (touching is fine) nor each other; frame never overlaps
        boxes = [b for b in (r.object_box, r.stand_in_box) if b is not None]
        boxes += [r.feature_boxes[f] for f in feats if f in PATCHES] + r.distractor_boxes
        for i in range(len(boxes)):
            for j in range(i):
                assert not D.overlaps(boxes[i], boxes[j]), (case, boxes)
        if "frame" in feats:
            for name in ("object", "stand_in"):
                if name in masks:
                    assert not (masks[name][0] & r.feature_masks["frame"]).any()
        # leaving a layer out changes pixels only inside its box, and most of its own pixels
        for layer in [*[m for m in ("object", "stand_in") if m in masks], *[f for f in feats if f != "water"]]:
            without = D.render(
                np.random.default_rng(key), size, cls, feats, distractor_p=0.7, stand_in_p=stand_in_p, omit={layer}
            )
            changed = (without.image != r.image).any(axis=2)
            mask, box = masks[layer]
            assert not (changed & ~_box_mask(size, box)).any(), (layer, case)
            assert changed[mask].mean() > 0.5, (layer, case)  # visible, not occluded


def test_render_rejects_unknown_feature() -> None:
    with pytest.raises(ValueError, match="unknown planted feature"):
        D.render(np.random.default_rng(0), 32, 0, ("hat",))



def test_the_drawing_kit_paints_the_planted_features_in_their_order() -> None:
    assert D.FEATURE_NAMES == tuple(f.name for f in PLANTED_FEATURES)


# ---------------------------------------------------------------------- written files
def test_files_match_rendering_and_index(tiny: PlantedDataset, truth: list[dict]) -> None:
    items = G._plan(TINY)
    assert [it.id for it in items] == [t["id"] for t in truth]
    pngs = {p.relative_to(tiny.root).as_posix() for p in tiny.root.rglob("*.png")}
    assert pngs == {t["id"] for t in truth}
    size = TINY.image_size
    for item, rec in zip(items, truth):
        r = G._render_item(TINY, item)
        np.testing.assert_array_equal(_read(tiny.root, rec["id"]), r.image, err_msg=rec["id"])
        assert rec["object"] == (r.object_mask is not None)
        if rec["object"]:
            assert not (r.object_mask & ~_box_mask(size, rec["object_box"])).any()
        assert (rec["stand_in_box"] is None) == (r.stand_in_mask is None)
        if rec["stand_in_box"] is not None:
            assert not rec["object"] and r.stand_in_mask.any()
            assert not (r.stand_in_mask & ~_box_mask(size, rec["stand_in_box"])).any()
        assert [f["name"] for f in rec["features"]] == list(r.feature_masks)
        for f in rec["features"]:
            assert not (r.feature_masks[f["name"]] & ~_box_mask(size, f["box"])).any()


def test_features_are_visible_in_the_files(tiny: PlantedDataset, truth: list[dict]) -> None:
    size = TINY.image_size
    border = ~_box_mask(size, [2, 2, size - 2, size - 2])
    n_checked = Counter()
    for rec in truth:
        names = {f["name"]: f["box"] for f in rec["features"]}
        img = _read(tiny.root, rec["id"])
        if "frame" in names:
            assert names["frame"] == [0, 0, size, size]
            assert _magenta(img[border]).all(), rec["id"]
            n_checked["frame"] += 1
        elif rec["object"]:
            assert _magenta(img[border]).mean() < 0.5, rec["id"]
        if "feeder" in names:
            x0, y0, x1, y1 = names["feeder"]
            patch = img[y0:y1, x0:x1].astype(int)
            yellow = (patch[..., 0] > 190) & (patch[..., 1] > 150) & (patch[..., 2] < 90)
            red = (patch[..., 0] > 170) & (patch[..., 1] < 70) & (patch[..., 2] < 70)
            assert yellow.any() and red.any(), rec["id"]
            n_checked["feeder"] += 1
        if "scribble" in names:
            x0, y0, x1, y1 = names["scribble"]
            patch = img[y0:y1, x0:x1].astype(int)
            assert (patch.min(axis=2) > 190).mean() > 0.3, rec["id"]  # pale paper
            assert (patch.max(axis=2) < 120).any(), rec["id"]  # dark ink
            n_checked["scribble"] += 1
        if "water" in names:
            keep = ~_box_mask(size, rec["object_box"] or rec["stand_in_box"])
            px = img[keep].astype(int)
            assert (px[:, 2] > px[:, 0] + 20).mean() > 0.6, rec["id"]  # blue water
            n_checked["water"] += 1
    assert all(n_checked[f.name] > 0 for f in PLANTED_FEATURES), n_checked


# ---------------------------------------------------------------------- determinism and cache
def test_same_config_same_bytes_other_seed_differs(tmp_path: Path, tiny: PlantedDataset) -> None:
    again = generate_planted(tmp_path / "again", TINY)
    assert _tree_hashes(again.root) == _tree_hashes(tiny.root)
    assert again.content_hash == tiny.content_hash
    other = generate_planted(tmp_path / "other", PlantedConfig.tiny(seed=1))
    a, b = _tree_hashes(tiny.root), _tree_hashes(other.root)
    assert set(a) == set(b)
    assert sum(a[k] != b[k] for k in a if k.endswith(".png")) > 0.9 * sum(k.endswith(".png") for k in a)


def test_existing_generation_is_reused(tiny: PlantedDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny.root.rglob("*")}

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated")

    monkeypatch.setattr(G, "render", boom)
    again = generate_planted(tiny.root, TINY)
    assert again == tiny
    assert {p: p.stat().st_mtime_ns for p in tiny.root.rglob("*")} == before
    tiny.verify()


def test_load_planted_round_trip(tiny: PlantedDataset) -> None:
    loaded = load_planted(tiny.root)
    assert loaded == tiny
    assert loaded.config == TINY
    assert loaded.class_names == list(D.CLASS_SHAPES[:6])
    assert loaded.class_folders == sorted(loaded.class_folders)
    assert loaded.features == PLANTED_FEATURES
    meta = json.loads((tiny.root / "planted.json").read_text())
    assert meta["counts"] == {"train": 120, "val": 48, "spurious": 40, "pool": 60, "total": 268}
    assert (tiny.spurious / "timestamp.txt").is_file()


# ---------------------------------------------------------------------- planted rates
@pytest.mark.parametrize("split, n", [("train", TINY.train_per_class), ("val", TINY.val_per_class)])
def test_feature_rates_are_exact_and_exclusive(truth: list[dict], split: str, n: int) -> None:
    counts: Counter[tuple[int, str]] = Counter()
    per_class = Counter()
    for rec in truth:
        if rec["split"] == split:
            per_class[rec["label"]] += 1
            for f in rec["features"]:
                counts[(rec["label"], f["name"])] += 1
    assert set(per_class.values()) == {n}
    expected = {(c, f.name): int(np.floor(r * n + 0.5))
                for f in PLANTED_FEATURES for c, r in zip(f.classes, f.rates)}
    assert dict(counts) == {k: v for k, v in expected.items() if v}
    assert len({c for c, _ in counts}) >= 3
    for f in PLANTED_FEATURES:
        assert 0.3 <= f.rates[0] <= 0.45
        if split == "train":
            assert 0.3 <= counts[(f.classes[0], f.name)] / n <= 0.45
        with_feature = {c for (c, name) in counts if name == f.name}
        if f.kind == "class_extension":
            assert with_feature == {f.classes[0]}
        else:
            assert with_feature == set(f.classes) and len(f.classes) == 2
            assert counts[(f.classes[0], f.name)] > counts[(f.classes[1], f.name)]


def test_feature_sizes_follow_the_documented_fractions_of_the_image(truth: list[dict]) -> None:
    # module doc: at 64 px a 17-21 px tall feeder (radius 0.13-0.16 of the side, shape height
    # 2 radii, rotated by at most 0.2 rad), a 22-27 x 13-17 px label (0.34-0.42 x 0.2-0.26 of the
    # side) and a frame of 0.09 of the side; here at 32 px
    size = PlantedConfig.tiny().image_size
    sizes: dict[str, list[tuple[int, int]]] = {"feeder": [], "scribble": []}
    for rec in truth:
        for f in rec["features"]:
            if f["name"] in sizes:
                x0, y0, x1, y1 = f["box"]
                sizes[f["name"]].append((x1 - x0, y1 - y0))
    assert len(sizes["feeder"]) > 5 and len(sizes["scribble"]) > 5
    for w, h in sizes["feeder"]:
        assert 2 * 0.13 * size - 1 <= h <= 2 * 0.16 * size + 2 and w < h, (w, h)
    for w, h in sizes["scribble"]:
        assert round(0.34 * size) <= w <= round(0.42 * size), w
        assert round(0.2 * size) <= h <= round(0.26 * size), h


def test_pool_class_images_follow_the_same_pairing(truth: list[dict]) -> None:
    pool = [r for r in truth if r["split"] == "pool"]
    assert all(r["label"] == -1 for r in pool)
    kinds = Counter(
        "object" if r["object"] else ("spurious" if r["features"] else "plain") for r in pool
    )
    assert kinds == {"object": 9, "spurious": 27, "plain": 24}  # 15 / 45 / 40 % of 60
    # a large non-class stand-in shape in most images without a class object, never with one
    # (so that retrieval cannot tell spurious-only images from plain ones by "there is an object")
    for kind in ("spurious", "plain"):
        group = [r for r in pool if not r["object"] and bool(r["features"]) == (kind == "spurious")]
        share = np.mean([r["stand_in_box"] is not None for r in group])
        assert 0.4 <= share <= 0.95, (kind, share)
    assert all(r["stand_in_box"] is None for r in truth if r["object"])
    spur = [r for r in truth if r["split"] == "spurious"]
    assert 0.5 <= np.mean([r["stand_in_box"] is not None for r in spur]) <= 0.95
    for r in pool:
        if r["object"]:
            for f in r["features"]:
                feat = next(x for x in PLANTED_FEATURES if x.name == f["name"])
                assert r["object_class"] in feat.classes


# ---------------------------------------------------------------------- readers
def test_spurious_split_loads_with_the_published_reader(tiny: PlantedDataset, truth: list[dict]) -> None:
    by_id = {t["id"]: t for t in truth}
    ds = spurious_imagenet(tiny.spurious)
    assert len(ds) == 5 * TINY.spurious_per_feature
    assert ds.skipped == []
    pairs = Counter()
    for rec in ds.records:
        k, j = rec.label, rec.meta["component"]
        feature = PLANTED_FEATURES[j]
        assert k in feature.classes
        gt = by_id["spurious/" + rec.id]
        assert gt["object"] is False and gt["object_class"] != k and gt["object_box"] is None
        assert [f["name"] for f in gt["features"]] == [feature.name]
        assert gt["label"] == k
        assert tiny.spurious_folder(k, feature.name).name == rec.meta["folder"]
        pairs[(k, j)] += 1
    assert pairs == {(0, 0): 8, (1, 1): 8, (2, 2): 8, (3, 2): 8, (3, 3): 8}


def test_train_val_and_pool_load_unchanged(tiny: PlantedDataset, truth: list[dict]) -> None:
    for split in ("train", "val"):
        ds = image_folder(tiny.root / split)
        assert ds.class_names == tiny.class_folders
        expected = {t["id"]: t["label"] for t in truth if t["split"] == split}
        assert {f"{split}/{r.id}": r.label for r in ds.records} == expected
    pool = image_pool(tiny.pool)
    assert len(pool) == sum(t["split"] == "pool" for t in truth) == TINY.pool_size
    assert {"pool/" + r.id for r in pool.records} == {t["id"] for t in truth if t["split"] == "pool"}


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 3}, r"num_classes=3 .*at least 4"),
    ({"num_classes": 13}, r"num_classes=13 .*4\.\.12"),
    ({"image_size": 8}, r"image_size=8 is too small"),
    ({"train_per_class": 0}, r"train_per_class=0 must be a positive count"),
    ({"val_per_class": -1}, r"val_per_class=-1 must be a positive count"),
    ({"spurious_per_feature": 0}, r"spurious_per_feature=0 must be a positive count"),
    ({"pool_size": 0}, r"pool_size=0 must be a positive count"),
    ({"seed": -1}, r"seed=-1 must be a non-negative"),
])
def test_bad_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PlantedConfig(**kwargs)


def test_bad_types_raise() -> None:
    with pytest.raises(TypeError, match="image_size must be an int"):
        PlantedConfig(image_size=32.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config must be a PlantedConfig"):
        generate_planted("unused", {"num_classes": 4})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be non-empty and contain no '_'"):
        SpuriousFeature("bird_feeder", (0,), (0.2,), "class_extension")
    assert PlantedConfig(seed=np.int64(3)).seed == 3


def test_overwrite_rules(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    first = generate_planted(out, MICRO)
    other = dataclasses.replace(MICRO, seed=5)
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        generate_planted(out, other)
    assert load_planted(out).config == MICRO
    replaced = generate_planted(out, other, overwrite=True)
    assert replaced.config == other and replaced.content_hash != first.content_hash
    replaced.verify()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary folders left

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a planted dataset"):
        generate_planted(foreign, MICRO, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(FileExistsError, match="is a file"):
        generate_planted(foreign / "notes.txt", MICRO)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate_planted(empty, MICRO).content_hash == first.content_hash


def test_failed_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = G._render_item

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(G, "_render_item", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_planted(tmp_path / "ds", MICRO)
    assert list(tmp_path.iterdir()) == []


def test_load_and_verify_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_planted(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="planted.json is missing"):
        load_planted(tmp_path / "plain")
    (tmp_path / "plain" / "planted.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a planted-dataset description"):
        load_planted(tmp_path / "plain")

    ds = generate_planted(tmp_path / "ds", MICRO)
    victim = next(ds.pool.glob("*.png"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(ValueError, match=r"changed: pool/"):
        ds.verify()
    with pytest.raises(ValueError, match=r"valid \(class, feature\) pairs"):
        ds.spurious_folder(1, "water")
    assert ds.spurious_folder(3, "water").name == "planted_spurious_3_water_2"
    assert os.path.isdir(ds.spurious_folder(2, 2))
