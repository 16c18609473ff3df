"""Shared fixtures: tiny deterministic models and generated image folders (all offline, seconds)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from PIL import Image

if TYPE_CHECKING:
    from spurious.demo.train import DemoModelInfo

os.environ.setdefault("OMP_NUM_THREADS", "2")


def write_images(root: Path, per_class: dict[str, int], *, size: int = 40, seed: int = 0) -> Path:
    """Random-colour PNG/JPEG images in class folders; returns ``root``."""
    rng = np.random.default_rng(seed)
    for cls, n in per_class.items():
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = rng.integers(0, 256, size=3)
            arr = np.clip(base + rng.normal(0, 30, size=(size, size + 8, 3)), 0, 255).astype(np.uint8)
            ext = ".png" if i % 2 else ".jpg"
            Image.fromarray(arr).save(folder / f"img_{i:03d}{ext}")
    return root


class TinyNet(torch.nn.Module):
    """A 2-conv CNN with a linear head: phi has D=12, K classes."""

    def __init__(self, num_classes: int = 3, width: int = 12) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, width, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        )
        self.fc = torch.nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def tiny_classifier(num_classes: int = 3, seed: int = 0, spec: str = "test:tiny"):  # type: ignore[no-untyped-def]
    from spurious.models import Classifier, Preprocessing

    torch.manual_seed(seed)
    net = TinyNet(num_classes).eval()
    pre = Preprocessing(input_size=(32, 32), resize_size=32, crop_pct=1.0, interpolation="bilinear",
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return Classifier.from_module(net, pre, [chr(ord("a") + i) for i in range(num_classes)], spec)  # = folder names


@pytest.fixture
def tiny_model():  # type: ignore[no-untyped-def]
    return tiny_classifier()


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_images(tmp_path / "data", {"a": 7, "b": 6, "c": 5})


# ------------------------------------------------------------------------ built once per session
#
# Training the tiny demo models (seconds for the standard one, ~half a minute for the robust one) and
# running `spurious demo --fast` are the suite's most expensive steps; they are done once per session
# here. Tests that change what they get work on a copy (``copy_demo_out``), so the suite still passes
# in any order and any file alone.


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``$SPURIOUS_CACHE`` for the whole session: a fresh folder, never the user's ``~/.cache/spurious``.

    Planted data, tiny demo checkpoints and checkpoint digests are written here on first use and reused
    by every later test (and by the subprocesses they start, which inherit the environment). A test
    that needs an empty cache still sets its own with ``monkeypatch.setenv``.
    """
    cache = tmp_path_factory.mktemp("spurious-cache")
    old = os.environ.get("SPURIOUS_CACHE")
    os.environ["SPURIOUS_CACHE"] = str(cache)
    try:
        yield cache
    finally:
        if old is None:
            del os.environ["SPURIOUS_CACHE"]
        else:
            os.environ["SPURIOUS_CACHE"] = old


@pytest.fixture(scope="session")
def demo_models(session_cache: Path) -> dict[str, DemoModelInfo]:
    """``demo:robust-tiny`` and ``demo:standard-tiny`` trained into the session cache (once per session)."""
    from spurious.demo.train import train_demo_model

    return {v: train_demo_model(v, tiny=True, cache_dir=session_cache, progress=False) for v in ("robust", "standard")}


@dataclass(frozen=True)
class FastDemo:
    """One run of ``spurious demo --fast --out demo-out --json`` (from the session folder ``cwd``)."""

    argv: list[str]           # the command line after ``spurious``
    cwd: Path
    out: Path                 # cwd / "demo-out": shared, read only; copy it with copy_demo_out to change it
    summary: dict[str, Any]   # the --json summary as printed


@pytest.fixture(scope="session")
def fast_demo(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> FastDemo:
    """The fast demo, run once per session through the CLI, the README's way (a relative ``--out``).

    It trains the tiny models into the session cache if no test has yet.
    """
    import contextlib
    import io
    import json

    from spurious.cli import main

    argv = ["demo", "--fast", "--out", "demo-out", "--json", "--no-progress"]
    cwd = tmp_path_factory.mktemp("fast-demo")
    stdout, stderr = io.StringIO(), io.StringIO()
    here = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(argv)
    finally:
        os.chdir(here)
    assert code == 0, stderr.getvalue()[-3000:]
    return FastDemo(argv, cwd, cwd / argv[argv.index("--out") + 1], json.loads(stdout.getvalue()))


def copy_demo_out(demo: FastDemo, dest: Path) -> Path:
    """A private copy of the fast demo's output at ``dest`` (symlinks, such as ``planted``, kept as links)."""
    shutil.copytree(demo.out, dest, symlinks=True)
    return dest
