"""Tests for spurious.datasets: listing layouts, robust decoding, collation, specs, fingerprints.

Every fixture is generated in ``tmp_path``; expected values come from what the test planted
(folder names, pixel values, the documented hash format), never from the code under test.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spurious import imagenet
from spurious.datasets import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    ImageDecodeError,
    ImageRecord,
    collate_images,
    file_list,
    image_folder,
    image_pool,
    imagenet_folder,
    load_image,
    open_dataset,
    parse_spurious_folder,
    spurious_imagenet,
)


# ---------------------------------------------------------------------- fixture helpers
def _save(path: Path, size: tuple[int, int] = (6, 4), color: tuple[int, int, int] = (10, 200, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _jpeg_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write_bad_files(folder: Path) -> list[str]:
    """Three undecodable files (truncated JPEG, zero bytes, text named .jpg); returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    data = _jpeg_bytes()
    (folder / "bad_truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "bad_empty.jpg").write_bytes(b"")
    (folder / "bad_text.jpg").write_text("this is not an image\n")
    return ["bad_truncated.jpg", "bad_empty.jpg", "bad_text.jpg"]


def _png16_rgb(path: Path, arr: np.ndarray) -> None:
    """Minimal writer for a 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _mode(path: Path) -> str:
    with Image.open(path) as im:
        return im.mode


def _resize_to_tensor(image: Image.Image) -> torch.Tensor:
    """Module-level (picklable) transform: 8x8 float tensor in [0, 1]."""
    arr = np.asarray(image.resize((8, 8)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def _expected_fingerprint(pairs: list[tuple[str, int]]) -> str:
    h = hashlib.sha256()
    for rid, label in pairs:
        h.update(f"{rid}\0{label}\n".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------- image_folder
def test_image_folder_labels_ids_and_sorted_order(tmp_path: Path) -> None:
    files = [f"{cls}/img_{i:02d}.png" for cls in ("dog", "cat", "bird") for i in range(4)]
    files += ["cat/nested/deeper/x.png", "dog/sub/y.JPEG"]
    random.Random(1).shuffle(files)
    for rel in files:
        _save(tmp_path / rel)
    (tmp_path / "dog" / "notes.txt").write_text("hi")
    (tmp_path / "dog" / ".hidden.png").write_bytes(b"")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    _save(tmp_path / "loose.png")

    ds = image_folder(tmp_path)

    assert ds.kind == "folder"
    assert ds.class_names == ["bird", "cat", "dog"]
    assert ds.spec == f"folder:{tmp_path.resolve()}"
    assert [r.id for r in ds.records] == sorted(files)
    expected = {"bird": 0, "cat": 1, "dog": 2}
    assert [r.label for r in ds.records] == [expected[f.split("/")[0]] for f in sorted(files)]
    assert ds.labels().dtype == np.int64
    assert ds.labels().tolist() == [r.label for r in ds.records]
    for r in ds.records:
        assert r.path == str(tmp_path.resolve() / r.id)
        assert os.path.isabs(r.path)
    skipped = dict(ds.skipped)
    assert set(skipped) == {"dog/notes.txt", "loose.png"}
    assert "extension" in skipped["dog/notes.txt"]
    assert "outside the class folders" in skipped["loose.png"]
    assert ds.record(0) == ds.records[0]


def test_image_folder_class_names_give_positions(tmp_path: Path) -> None:
    for cls in ("cat", "dog"):
        _save(tmp_path / cls / "a.png")
    ds = image_folder(tmp_path, class_names=["fish", "dog", "cat"])
    assert ds.class_names == ["fish", "dog", "cat"]
    assert {r.id: r.label for r in ds.records} == {"cat/a.png": 2, "dog/a.png": 1}


def test_image_folder_errors(tmp_path: Path) -> None:
    for cls in ("cat", "dgo"):
        _save(tmp_path / cls / "a.png")
    with pytest.raises(ValueError, match=r"'dgo'.*not in class_names.*closest class names: 'dog'"):
        image_folder(tmp_path, class_names=["cat", "dog"])
    with pytest.raises(ValueError, match="twice"):
        image_folder(tmp_path, class_names=["cat", "dgo", "cat"])
    with pytest.raises(TypeError, match="sequence of strings"):
        image_folder(tmp_path, class_names="cat")  # type: ignore[arg-type]
    flat = tmp_path / "flat"
    _save(flat / "a.png")
    with pytest.raises(ValueError, match="no class sub-folders.*pool:"):
        image_folder(flat)
    empty_classes = tmp_path / "empty_classes"
    (empty_classes / "a").mkdir(parents=True)
    (empty_classes / "a" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no images found.*1 entries were skipped.*readme.txt"):
        image_folder(empty_classes)
    with pytest.raises(FileNotFoundError, match="nope"):
        image_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="is a file"):
        image_folder(flat / "a.png")


# ---------------------------------------------------------------------- imagenet_folder
def test_imagenet_folder_uses_standard_indices(tmp_path: Path) -> None:
    wnids = imagenet.wnids()
    espresso = wnids[imagenet.class_names().index("espresso")]
    chosen = ["n01440764", espresso, wnids[500]]
    for w in chosen:
        _save(tmp_path / w / f"{w}_1.JPEG")
        _save(tmp_path / w / f"{w}_0.JPEG")
    ds = imagenet_folder(tmp_path)
    assert ds.kind == "imagenet"
    labels = {r.id.split("/")[0]: r.label for r in ds.records}
    assert labels == {"n01440764": 0, espresso: 967, wnids[500]: 500}
    assert labels[espresso] == wnids.index(espresso)
    assert ds.class_names is not None and len(ds.class_names) == 1000
    assert ds.class_names[967] == "espresso"
    assert [r.id for r in ds.records][:2] == ["n01440764/n01440764_0.JPEG", "n01440764/n01440764_1.JPEG"]


def test_imagenet_folder_rejects_non_wnid(tmp_path: Path) -> None:
    _save(tmp_path / "n01440764" / "a.JPEG")
    _save(tmp_path / "n99999999" / "a.JPEG")
    with pytest.raises(ValueError, match=r"'n99999999'.*not ImageNet-1k wnids"):
        imagenet_folder(tmp_path)


# ---------------------------------------------------------------------- file_list
def test_file_list_csv_with_labels_relative_and_absolute(tmp_path: Path) -> None:
    _save(tmp_path / "imgs" / "b.png")
    _save(tmp_path / "imgs" / "a.png")
    other = _save(tmp_path / "elsewhere" / "c.png")
    lst = tmp_path / "list.csv"
    lst.write_text(f"path,label,extra\n./imgs/b.png,2,x\n\nimgs/a.png, 0 ,y\n{other},-1,z\n")
    ds = file_list(lst)
    assert ds.kind == "list"
    assert ds.spec == f"list:{lst.resolve()}"
    assert ds.root == tmp_path.resolve()
    recs = {r.id: r for r in ds.records}
    assert [r.id for r in ds.records] == sorted(recs)
    assert set(recs) == {"imgs/a.png", "imgs/b.png", str(other.resolve())}
    assert recs["imgs/b.png"].label == 2 and recs["imgs/a.png"].label == 0
    assert recs[str(other.resolve())].label == -1
    assert recs["imgs/a.png"].path == str(tmp_path.resolve() / "imgs" / "a.png")
    assert recs[str(other.resolve())].path == str(other.resolve())
    assert ds.class_names is None
    assert all(ds[i][2] is None for i in range(len(ds)))


def test_file_list_csv_without_labels_and_custom_root(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _save(data / "x.png")
    lst = tmp_path / "lists" / "l.csv"
    lst.parent.mkdir()
    lst.write_text("Path\nx.png\n")
    ds = file_list(lst, root=data)
    assert ds.labels().tolist() == [-1]
    assert ds.records[0].path == str(data.resolve() / "x.png")
    assert ds[0][2] is None
    up = _write(tmp_path / "lists" / "up.csv", "path\n../data/./x.png\n")
    rec = file_list(up).records[0]
    assert rec.id == "../data/x.png" and rec.path == str(data.resolve() / "x.png")


def test_file_list_class_name_labels_csv_and_jsonl(tmp_path: Path) -> None:
    names = ["cat", "dog", "7"]
    csv_file = tmp_path / "l.csv"
    csv_file.write_text("path,label\na.png,dog\nb.png,0\nc.png,7\nd.png,\n")
    ds = file_list(csv_file, class_names=names)
    assert {r.id: r.label for r in ds.records} == {"a.png": 1, "b.png": 0, "c.png": 2, "d.png": -1}
    assert ds.class_names == names

    jl = tmp_path / "l.jsonl"
    rows = [{"path": "z.png", "label": "cat"}, {"path": "y.png", "label": 1}, {"path": "x.png"},
            {"path": "w.png", "label": None}]
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = file_list(jl, class_names=names)
    assert [(r.id, r.label) for r in ds.records] == [("w.png", -1), ("x.png", -1), ("y.png", 1), ("z.png", 0)]
    ds_plain = file_list(_write(tmp_path / "p.jsonl", '{"path": "a.png", "label": 3}\n'))
    assert ds_plain.labels().tolist() == [3]


@pytest.mark.parametrize(
    ("name", "text", "kwargs", "match"),
    [
        ("cols.csv", "path,label\na.png,1\nb.png,1,extra\n", {}, r"line 3: expected 2 columns"),
        ("lab.csv", "path,label\na.png,1\nb.png,cat\n", {},
         r"line 3: label 'cat' is not an integer.*class_names"),
        ("name.csv", "path,label\na.png,dgo\n", {"class_names": ["cat", "dog"]},
         r"label 'dgo' \(line 2\) is not in class_names.*closest class names: 'dog'"),
        ("range.csv", "path,label\na.png,5\n", {"class_names": ["cat", "dog"]},
         r"line 2: label 5 out of range"),
        ("neg.csv", "path,label\na.png,-3\n", {}, r"line 2: label -3 out of range"),
        ("empty_path.csv", "path,label\na.png,1\n,2\n", {},
         r"line 3: 'path' must be a non-empty string"),
        ("dup.csv", "path\na.png\nb.png\n./a.png\n", {},
         r"line 4: path 'a.png' is listed twice \(first on line 2\)"),
        ("nohdr.csv", "file,label\na.png,1\n", {}, r"line 1: header .* has no 'path' column"),
        ("empty.csv", "", {}, r"is empty"),
        ("only_header.csv", "path,label\n", {}, r"lists no images"),
        ("json.jsonl", '{"path": "a.png"}\n{"path": "b.png",\n', {}, r"line 2: invalid JSON"),
        ("nokey.jsonl", '{"path": "a.png"}\n\n{"file": "b.png"}\n', {},
         r"line 3: expected an object with a \"path\" key"),
        ("bool.jsonl", '{"path": "a.png", "label": true}\n', {},
         r"line 1: label True must be an integer"),
        ("list.txt", "a.png\n", {}, r"unknown file-list format '.txt'"),
    ],
)
def test_file_list_bad_rows(tmp_path: Path, name: str, text: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        file_list(_write(tmp_path / name, text), **kwargs)


def test_file_list_missing_file_and_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        file_list(tmp_path / "missing.csv")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("path\ncaf\xe9.png\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        file_list(bad)


# ---------------------------------------------------------------------- image_pool
def test_image_pool_recursive_unlabeled(tmp_path: Path) -> None:
    rels = ["a.png", "shard_1/b.jpg", "shard_1/deep/er/c.webp", "shard_0/d.PNG"]
    for rel in rels:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (5, 5), (1, 2, 3)).save(p, format="PNG" if rel.lower().endswith("png") else None)
    (tmp_path / "shard_1" / "labels.csv").write_text("x")
    ds = image_pool(tmp_path)
    assert ds.kind == "pool" and ds.class_names is None
    assert [r.id for r in ds.records] == sorted(rels)
    assert ds.labels().tolist() == [-1] * 4
    assert ds.skipped == [("shard_1/labels.csv", "not an image extension (.csv)")]


def test_listing_does_not_open_images(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"{i:03d}.jpg").write_bytes(b"garbage")
    ds = image_pool(tmp_path)
    assert len(ds) == 50  # only decoding (in __getitem__) finds out these are bad
    assert ds[0][2] is not None


def test_symlinks_followed_without_loops(tmp_path: Path) -> None:
    real = tmp_path / "real"
    _save(real / "cls" / "a.png")
    data = tmp_path / "data"
    (data / "cls").mkdir(parents=True)
    os.symlink(real / "cls" / "a.png", data / "cls" / "link.png")
    os.symlink(tmp_path / "missing.png", data / "cls" / "broken.png")
    os.symlink(data, data / "cls" / "loop")  # back to the dataset root
    os.symlink(data / "cls", data / "cls" / "self")  # to its own parent
    os.symlink(real / "cls", data / "linked_cls")  # a whole class folder as a link
    ds = image_folder(data)
    assert [r.id for r in ds.records] == ["cls/link.png", "linked_cls/a.png"]
    skipped = dict(ds.skipped)
    assert skipped["cls/broken.png"] == "broken symlink"
    assert "symlink loop" in skipped["cls/loop"] and "symlink loop" in skipped["cls/self"]
    assert ds[0][2] is None and ds[1][2] is None


def test_non_utf8_file_name_is_skipped(tmp_path: Path) -> None:
    _save(tmp_path / "ok.png")
    try:
        with open(os.fsencode(tmp_path) + b"/caf\xe9.png", "wb") as fh:
            fh.write(b"x")
    except OSError:
        pytest.skip("file system refuses non-UTF-8 names")
    ds = image_pool(tmp_path)
    assert [r.id for r in ds.records] == ["ok.png"]
    assert len(ds.skipped) == 1 and "not valid UTF-8" in ds.skipped[0][1]


# ---------------------------------------------------------------------- spurious_imagenet
def test_spurious_imagenet_layout(tmp_path: Path) -> None:
    folders = {
        "spurious_imagenet_281_cat_3": (281, 3),
        "spurious_imagenet_967_espresso_cup_with_foam_0": (967, 0),
        "x_y_5_12": (5, 12),
    }
    for name in folders:
        for i in range(3):
            _save(tmp_path / name / f"{i}.png")
    (tmp_path / "timestamp.txt").write_text("2023-01-01")
    ds = spurious_imagenet(tmp_path)
    assert ds.kind == "spurious-imagenet"
    assert ds.skipped == []
    assert len(ds) == 9
    for r in ds.records:
        folder = r.id.split("/")[0]
        assert r.label == folders[folder][0]
        assert dict(r.meta) == {"component": folders[folder][1], "folder": folder}
    assert ds.class_names == imagenet.class_names()
    assert parse_spurious_folder("a_b_281") is None  # class and component must be distinct tokens
    assert parse_spurious_folder("a_b_1000_x_1") is None


def test_spurious_imagenet_bad_folder_name(tmp_path: Path) -> None:
    _save(tmp_path / "spurious_imagenet_281_cat_3" / "a.png")
    _save(tmp_path / "cats_and_dogs" / "a.png")
    with pytest.raises(ValueError, match=r"'cats_and_dogs' is not a Spurious ImageNet folder name; expected"):
        spurious_imagenet(tmp_path)


# ---------------------------------------------------------------------- load_image
def _check_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    im = load_image(path)
    assert im.mode == "RGB" and im.size == size
    return np.asarray(im)


def test_load_image_modes(tmp_path: Path) -> None:
    Image.new("CMYK", (5, 3), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    arr = _check_rgb(tmp_path / "cmyk.jpg", (5, 3))
    assert np.abs(arr.astype(int) - [255, 0, 255]).max() <= 8  # naive CMYK: R = 255 - C ...

    Image.new("L", (4, 3), 77).save(tmp_path / "l.png")
    assert (_check_rgb(tmp_path / "l.png", (4, 3)) == 77).all()

    Image.new("LA", (4, 3), (90, 10)).save(tmp_path / "la.png")
    assert (_check_rgb(tmp_path / "la.png", (4, 3)) == 90).all()

    p = Image.new("P", (4, 2), 0)
    p.putpalette([200, 0, 0, 0, 0, 180] + [0] * 762)
    p.putpixel((3, 1), 1)
    p.info["transparency"] = 1
    p.save(tmp_path / "p.png", transparency=1)
    arr = _check_rgb(tmp_path / "p.png", (4, 2))
    assert arr[0, 0].tolist() == [200, 0, 0] and arr[1, 3].tolist() == [0, 0, 180]  # alpha dropped
    p.save(tmp_path / "p.gif", transparency=1)
    _check_rgb(tmp_path / "p.gif", (4, 2))

    Image.new("RGBA", (3, 3), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    assert _check_rgb(tmp_path / "rgba.png", (3, 3))[1, 1].tolist() == [10, 20, 30]  # like torchvision

    one = Image.new("1", (4, 2), 0)
    one.putpixel((1, 1), 1)
    one.save(tmp_path / "one.png")
    arr = _check_rgb(tmp_path / "one.png", (4, 2))
    assert arr[1, 1].tolist() == [255, 255, 255] and arr[0, 0].tolist() == [0, 0, 0]

    Image.new("RGB", (7, 2), (1, 2, 3)).save(tmp_path / "x.ppm")
    assert _check_rgb(tmp_path / "x.ppm", (7, 2))[0, 0].tolist() == [1, 2, 3]


@pytest.mark.parametrize(("suffix", "dtype"), [(".png", "<u2"), (".tif", ">u2")])
def test_load_image_16bit_gray_scaled_not_clipped(tmp_path: Path, suffix: str, dtype: str) -> None:
    values = np.array([[0, 32768, 65535, 1000, 257]], dtype=dtype)
    path = tmp_path / f"g16{suffix}"
    Image.fromarray(values).save(path)
    assert _mode(path).startswith("I;16")
    arr = _check_rgb(path, (5, 1))
    expected = np.round(values.astype(np.float64) * 255 / 65535)
    assert np.abs(arr[..., 0] - expected).max() <= 1
    assert arr[0, 2, 0] == 255 and abs(int(arr[0, 1, 0]) - 128) <= 1 and arr[0, 4, 0] == 1
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_load_image_int32_and_float(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 65535, 32768]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert _mode(tmp_path / "i.tif") == "I"
    assert _check_rgb(tmp_path / "i.tif", (3, 1))[0, :, 0].tolist() == [0, 255, 128]
    Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32)).save(tmp_path / "i8.tif")
    assert _check_rgb(tmp_path / "i8.tif", (3, 1))[0, :, 0].tolist() == [0, 100, 255]

    Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert _mode(tmp_path / "f.tif") == "F"
    assert _check_rgb(tmp_path / "f.tif", (4, 1))[0, :, 0].tolist() == [0, 128, 255, 0]
    Image.fromarray(np.array([[0.0, 100.0, 255.0]], dtype=np.float32)).save(tmp_path / "f255.tif")
    assert _check_rgb(tmp_path / "f255.tif", (3, 1))[0, :, 0].tolist() == [0, 100, 255]


def test_load_image_16bit_rgb_png(tmp_path: Path) -> None:
    values = np.array([[[65535, 32768, 0], [256, 512, 65280]]], dtype=np.uint16)
    _png16_rgb(tmp_path / "rgb16.png", values)
    arr = _check_rgb(tmp_path / "rgb16.png", (2, 1))
    assert np.abs(arr.astype(int) - np.round(values.astype(np.float64) * 255 / 65535)).max() <= 1


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    src = np.zeros((32, 64, 3), dtype=np.uint8)
    src[:, :32] = (255, 0, 0)
    src[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise for display
    Image.fromarray(src).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    arr = _check_rgb(tmp_path / "rot.jpg", (32, 64))
    expected = np.rot90(src, k=-1)  # clockwise
    assert np.abs(arr.astype(int) - expected.astype(int)).mean() < 8
    assert arr[8, 16, 0] > 200 and arr[56, 16, 2] > 200


def test_load_image_errors(tmp_path: Path) -> None:
    data = _jpeg_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, I am text")
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).bytes(500))
    png = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(png, format="PNG")
    body = bytearray(png.getvalue())
    body[40:60] = b"\xff" * 20  # corrupt the compressed data / CRC
    (tmp_path / "corrupt.png").write_bytes(bytes(body))

    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(tmp_path / "trunc.jpg")
    with pytest.raises(ImageDecodeError, match=r"empty file \(0 bytes\)"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(tmp_path / "text.jpg")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(tmp_path / "noise.png")
    with pytest.raises(ImageDecodeError, match="corrupt"):
        load_image(tmp_path / "corrupt.png")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg")
    err = pytest.raises(ImageDecodeError, load_image, tmp_path / "empty.jpg").value
    assert isinstance(err, ValueError) and err.path == str(tmp_path / "empty.jpg")
    assert pickle.loads(pickle.dumps(err)).reason == err.reason


def test_load_image_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(tmp_path / "big.png", size=(20, 20))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 px > 2 x limit
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_image(tmp_path / "big.png")


# ---------------------------------------------------------------------- __getitem__, collate, DataLoader
def test_getitem_never_raises_and_collate_reports(tmp_path: Path) -> None:
    _save(tmp_path / "good1.png", size=(5, 4))
    _save(tmp_path / "good2.png", size=(5, 4))
    bad = _write_bad_files(tmp_path)
    ds = image_pool(tmp_path)
    items = [ds[i] for i in range(len(ds))]
    by_id = {ds.records[i].id: item for i, item in enumerate(items)}
    for name in bad:
        index, image, reason = by_id[name]
        assert image is None and isinstance(reason, str) and reason
    assert "truncated" in by_id["bad_truncated.jpg"][2]
    assert "empty" in by_id["bad_empty.jpg"][2]
    good = by_id["good1.png"][1]
    assert good is not None and good.shape == (3, 4, 5) and good.dtype == torch.float32
    assert torch.allclose(good[:, 0, 0], torch.tensor([10, 200, 30]) / 255.0)

    images, indices, failed = collate_images(items)
    assert images.shape == (2, 3, 4, 5)
    assert sorted(ds.records[i].id for i in indices.tolist()) == ["good1.png", "good2.png"]
    assert sorted(ds.records[i].id for i, _ in failed) == sorted(bad)

    images, indices, failed = collate_images([items[i] for i, _ in failed])
    assert images.shape == (0, 3, 0, 0) and indices.dtype == torch.int64 and indices.numel() == 0
    assert len(failed) == 3

    # a file deleted after listing is a failure too, not an exception
    os.remove(tmp_path / "good2.png")
    gone = next(i for i in range(len(ds)) if ds.records[i].id == "good2.png")
    assert ds[gone][1] is None and "cannot read file" in ds[gone][2]


def test_transform_failure_is_reported(tmp_path: Path) -> None:
    _save(tmp_path / "a.png")

    def broken(image: Image.Image) -> torch.Tensor:
        raise RuntimeError("boom")

    ds = image_pool(tmp_path, transform=broken)
    assert ds[0] == (0, None, "transform failed (RuntimeError: boom)")


def test_collate_rejects_mixed_shapes() -> None:
    batch = [(0, torch.zeros(3, 4, 4), None), (1, torch.zeros(3, 5, 4), None)]
    with pytest.raises(ValueError, match="different shapes"):
        collate_images(batch)


def test_dataloader_with_workers_drops_bad_files(tmp_path: Path) -> None:
    for i in range(17):
        _save(tmp_path / "cls" / f"good_{i:02d}.png", color=(i, 2 * i, 3 * i))
    bad = _write_bad_files(tmp_path / "cls")
    ds = image_folder(tmp_path, transform=_resize_to_tensor)
    assert len(ds) == 20
    loader = torch.utils.data.DataLoader(
        ds, batch_size=6, num_workers=2, collate_fn=collate_images, shuffle=False
    )
    n_images, seen, failures = 0, [], []
    for images, indices, failed in loader:
        assert images.shape[1:] == (3, 8, 8) and images.shape[0] == len(indices)
        n_images += images.shape[0]
        seen += indices.tolist()
        failures += failed
    assert n_images == 17 and len(failures) == 3
    assert sorted(ds.records[i].id for i, _ in failures) == sorted(f"cls/{b}" for b in bad)
    assert sorted(seen + [i for i, _ in failures]) == list(range(20))


# ---------------------------------------------------------------------- dataset object
def test_subset_with_transform_and_pickle(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        _save(tmp_path / "k" / f"{name}.png")
    ds = image_folder(tmp_path)
    sub = ds.subset([2, 0])
    assert [r.id for r in sub.records] == ["k/c.png", "k/a.png"]
    assert sub.fingerprint() == _expected_fingerprint([("k/c.png", 0), ("k/a.png", 0)])
    assert len(ds.subset([])) == 0
    with pytest.raises(ValueError, match="out of range"):
        ds.subset([3])
    with pytest.raises(IndexError):
        ds[3]
    other = ds.with_transform(_resize_to_tensor)
    assert other.transform is _resize_to_tensor and ds.transform is None
    assert other[0][1].shape == (3, 8, 8) and ds[0][1].shape == (3, 4, 6)
    clone = pickle.loads(pickle.dumps(other))
    assert clone.records == ds.records and clone.fingerprint() == ds.fingerprint()
    assert isinstance(clone, ImageDataset) and "images=3" in repr(clone)


def test_record_is_frozen_hashable_and_meta_read_only(tmp_path: Path) -> None:
    _save(tmp_path / "a_b_1_x_4" / "i.png")
    rec = spurious_imagenet(tmp_path).records[0]
    assert isinstance(rec, ImageRecord) and hash(rec) == hash(pickle.loads(pickle.dumps(rec)))
    assert rec.meta["component"] == 4
    with pytest.raises(TypeError):
        rec.meta["component"] = 5  # type: ignore[index]
    with pytest.raises(AttributeError):
        rec.label = 3  # type: ignore[misc]
    assert ImageRecord("a", "/a", -1).meta == {}


def test_fingerprint_stable_and_label_sensitive(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        for i in range(3):
            _save(tmp_path / cls / f"{i}.png")
    first, second = image_folder(tmp_path), image_folder(tmp_path)
    assert first.fingerprint() == second.fingerprint()
    fp = first.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fp == _expected_fingerprint([(r.id, r.label) for r in first.records])
    swapped = image_folder(tmp_path, class_names=["b", "a"])
    assert swapped.fingerprint() != fp

    lst = tmp_path / "l.csv"
    lst.write_text("path,label\na/0.png,0\na/1.png,1\n")
    before = file_list(lst).fingerprint()
    lst.write_text("path,label\na/0.png,0\na/1.png,2\n")
    assert file_list(lst).fingerprint() != before


# ---------------------------------------------------------------------- open_dataset
def test_open_dataset_autodetects_every_layout(tmp_path: Path) -> None:
    _save(tmp_path / "folder" / "cat" / "a.png")
    _save(tmp_path / "folder" / "dog" / "b.png")
    _save(tmp_path / "inet" / "n01440764" / "a.JPEG")
    _save(tmp_path / "spur" / "spurious_imagenet_281_cat_3" / "a.png")
    (tmp_path / "spur" / "timestamp.txt").write_text("t")
    _save(tmp_path / "pool" / "a.png")
    _save(tmp_path / "pool" / "b.jpg")
    (tmp_path / "l.jsonl").write_text('{"path": "pool/a.png", "label": 0}\n')
    (tmp_path / "l.csv").write_text("path\npool/a.png\n")

    expected = {
        "folder": "folder",
        "inet": "imagenet",
        "spur": "spurious-imagenet",
        "pool": "pool",
        "l.jsonl": "list",
        "l.csv": "list",
    }
    for name, kind in expected.items():
        ds = open_dataset(tmp_path / name)
        assert ds.kind == kind, name
        assert ds.spec == f"{kind}:{(tmp_path / name).resolve()}"
        again = open_dataset(ds.spec)  # the canonical spec reopens the same listing
        assert again.kind == kind and again.fingerprint() == ds.fingerprint()
    assert open_dataset(str(tmp_path / "spur")).records[0].label == 281

    # explicit prefixes override detection
    assert open_dataset(f"pool:{tmp_path / 'folder'}").labels().tolist() == [-1, -1]
    assert open_dataset(f"folder:{tmp_path / 'inet'}").labels().tolist() == [0]
    named = open_dataset(f"folder:{tmp_path / 'folder'}", class_names=["x", "dog", "cat"])
    assert named.labels().tolist() == [2, 1]


def test_open_dataset_warns_on_mostly_wnid_folders(tmp_path: Path) -> None:
    _save(tmp_path / "n01440764" / "a.JPEG")
    _save(tmp_path / "extra" / "a.JPEG")
    with pytest.warns(UserWarning, match="ImageNet wnids but 'extra'"):
        ds = open_dataset(tmp_path)
    assert ds.kind == "folder"


def test_open_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        open_dataset(tmp_path / "does-not-exist")
    with pytest.raises(FileNotFoundError, match=r"does-not-exist.*from spec 'imagenet:"):
        open_dataset(f"imagenet:{tmp_path / 'does-not-exist'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no images found in .*empty.*Accepted layouts: folder:DIR"):
        open_dataset(empty)
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no images found.*notes.txt"):
        open_dataset(f"pool:{empty}")
    valid = "valid prefixes: folder:, imagenet:, list:, pool:, spurious-imagenet:"
    with pytest.raises(ValueError, match=rf"unknown dataset prefix 'imagenett'.*did you mean 'imagenet'.*{valid}"):
        open_dataset(f"imagenett:{empty}")
    with pytest.raises(ValueError, match="has no path"):
        open_dataset("folder:")
    _save(tmp_path / "inet" / "n01440764" / "a.JPEG")
    with pytest.raises(ValueError, match="class_names cannot be given for a 'imagenet' dataset"):
        open_dataset(tmp_path / "inet", class_names=["a"])
    (tmp_path / "x.txt").write_text("a.png\n")
    with pytest.raises(ValueError, match="not a file list"):
        open_dataset(tmp_path / "x.txt")
    with pytest.raises(TypeError, match="spec must be a str or path"):
        open_dataset(3)  # type: ignore[arg-type]


def test_image_extensions_constant() -> None:
    expected = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
    assert IMAGE_EXTENSIONS == expected
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


def test_spurious_layout_in_another_label_space(tmp_path: Path) -> None:
    from PIL import Image

    from spurious.datasets import open_dataset, spurious_imagenet

    for folder in ("planted_spurious_1_frame_1", "planted_spurious_3_scribble_3"):
        (tmp_path / "sp" / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "sp" / folder / "0.png")
    names = ["star", "ring", "cross", "triangle"]
    ds = spurious_imagenet(tmp_path / "sp", class_names=names)
    assert ds.class_names == names and list(ds.labels()) == [1, 3]
    assert [r.meta["component"] for r in ds.records] == [1, 3]
    assert open_dataset(f"spurious-imagenet:{tmp_path / 'sp'}", class_names=names).class_names == names
    with pytest.raises(ValueError, match="names class 3, outside the label space of 2 classes"):
        spurious_imagenet(tmp_path / "sp", class_names=names[:2])


def test_imagenet_label_space_with_repeated_short_names(tmp_path) -> None:  # noqa: ANN001
    """ImageNet's short names repeat ('crane' is classes 134 and 517): index-labelled readers accept them."""
    from spurious import imagenet
    from spurious.datasets import file_list, spurious_imagenet

    names = imagenet.class_names()
    assert len(set(names)) < len(names)
    folder = tmp_path / "bench" / "spurious_imagenet_517_crane_0"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(folder / "a.png")
    ds = spurious_imagenet(tmp_path / "bench", class_names=names)
    assert ds.labels().tolist() == [517]
    (tmp_path / "list.csv").write_text("path,label\nbench/spurious_imagenet_517_crane_0/a.png,517\n")
    assert file_list(tmp_path / "list.csv", class_names=names).labels().tolist() == [517]


# ---------------------------------------------------------------------- empty class folders
def test_empty_class_folders_are_warned_about_and_counted(tmp_path: Path) -> None:
    import warnings

    root = tmp_path / "folder"
    _save(root / "ant" / "1.png")
    _save(root / "ant" / "2.png")
    (root / "bee").mkdir()
    (root / "cat").mkdir()
    (root / "cat" / "readme.txt").write_text("no images here")
    _save(root / "dog" / "sub" / "3.png")
    with pytest.warns(UserWarning, match=r"2 class folders hold no images: 'bee', 'cat'"):
        ds = image_folder(root)
    assert ds.class_names == ["ant", "bee", "cat", "dog"]  # the empty classes keep their index
    assert sorted(set(ds.labels().tolist())) == [0, 3] and len(ds) == 3
    skipped = dict(ds.skipped)
    assert skipped["bee/"] == skipped["cat/"] == "class folder holds no images"
    assert "extension" in skipped["cat/readme.txt"]
    assert sum(reason == "class folder holds no images" for reason in skipped.values()) == 2

    inet = tmp_path / "inet"
    wnids = imagenet.wnids()
    _save(inet / wnids[0] / "a.JPEG")
    (inet / wnids[5]).mkdir()
    with pytest.warns(UserWarning, match=rf"1 class folder holds no images: '{wnids[5]}'"):
        ds = imagenet_folder(inet)
    assert (f"{wnids[5]}/", "class folder holds no images") in ds.skipped

    spu = tmp_path / "spurious"
    _save(spu / "spurious_imagenet_3_x_0" / "a.png")
    (spu / "spurious_imagenet_7_y_2").mkdir()
    with pytest.warns(UserWarning, match="1 class folder holds no images: 'spurious_imagenet_7_y_2'"):
        ds = spurious_imagenet(spu)
    assert ("spurious_imagenet_7_y_2/", "class folder holds no images") in ds.skipped

    full = tmp_path / "full"
    _save(full / "a" / "1.png")
    _save(full / "b" / "2.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no empty folder, no warning
        assert image_folder(full).skipped == []


def test_block_batches_never_straddle_a_block() -> None:
    from spurious.datasets._dataset import BlockBatches

    sampler = BlockBatches([(3, 10, 15), (0, 0, 2), (7, 20, 20)], batch_size=2)
    assert list(sampler) == [[10, 11], [12, 13], [14], [0, 1]]
    assert sampler.block_of_batch == [3, 3, 3, 0]
    assert len(sampler) == 4
