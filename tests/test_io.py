"""_io: the atomic writer honours the umask (files 0666 & ~umask, folders 0777 & ~umask), also in stage outputs."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_classifier

from spurious._io import atomic_path, make_temp_dir, save_npy, write_json

pytestmark = [pytest.mark.skipif(os.name != "posix", reason="POSIX file modes"),
              pytest.mark.filterwarnings("ignore:the model does not agree with the labels:UserWarning")]


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                     (0o002, 0o664, 0o775)])
def test_writers_honour_the_umask(tmp_path: Path, mask: int, file_mode: int, dir_mode: int) -> None:
    with _umask(mask):
        with atomic_path(tmp_path / "raw.bin") as tmp:
            tmp.write_bytes(b"x")
        write_json(tmp_path / "doc.json", {"a": 1})
        save_npy(tmp_path / "arr.npy", np.arange(3))
        folder = make_temp_dir(tmp_path, ".tmp-out.")
    for name in ("raw.bin", "doc.json", "arr.npy"):
        assert _mode(tmp_path / name) == file_mode, (name, oct(_mode(tmp_path / name)))
    assert _mode(folder) == dir_mode and folder.name.startswith(".tmp-out.") and not any(folder.iterdir())
    assert json.loads((tmp_path / "doc.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folder.name, "arr.npy", "doc.json", "raw.bin"])


def test_atomic_path_keeps_the_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_stage_outputs_are_not_private_under_umask_022(tmp_path: Path, image_folder: Path) -> None:
    from spurious.extract import extract
    from spurious.npca import npca

    with _umask(0o022):
        extract(tmp_path / "ws", model=tiny_classifier(), data=f"folder:{image_folder}", num_workers=0,
                progress=False, device="cpu")
        npca(tmp_path / "ws", n_components=2, device="cpu", progress=False)
    files = [p for p in (tmp_path / "ws").rglob("*") if p.is_file()]
    dirs = [p for p in (tmp_path / "ws").rglob("*") if p.is_dir()]
    assert len(files) >= 6 and any(p.suffix == ".safetensors" for p in files) and any(p.suffix == ".npy" for p in files)
    private = [f"{p.relative_to(tmp_path)} {oct(_mode(p))}" for p in files if _mode(p) & 0o044 != 0o044]
    assert not private, private
    assert all(_mode(p) & 0o055 == 0o055 for p in dirs), [(str(p), oct(_mode(p))) for p in dirs]


@pytest.mark.parametrize(("text", "keep", "expected"), [
    ("demo:robust", "._-", "demo-robust"),
    ("timm:vit_base_patch16_224.augreg_in21k", "._-", "timm-vit_base_patch16_224.augreg_in21k"),
    ("demo:robust@ckpt", "._-", "demo-robust-ckpt"),
    ("demo:robust@ckpt", "._@-", "demo-robust@ckpt"),
    ("..//:..", "._-", "model"),
    ("-.a b.-", "._-", "a-b"),
    ("x" * 70, "._-", "x" * 60),
])
def test_slug(text: str, keep: str, expected: str) -> None:
    from spurious._io import slug

    assert slug(text, keep=keep) == expected
