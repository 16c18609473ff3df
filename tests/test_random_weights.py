"""A workspace made with random weights (``extract --random-weights``, e.g. for a scale test) stays usable:
the seed is recorded, every later stage recreates the same weights, and nothing is downloaded (issue 21, item 3)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from conftest import write_images

from spurious.models import load_model
from spurious.workspace import Workspace

pytestmark = pytest.mark.filterwarnings("ignore:the model does not agree with the labels:UserWarning")  # random nets


def _no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch.hub
    import torchvision.models._api

    def offline(*args: object, **kwargs: object) -> None:
        raise AssertionError("a download was attempted")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    from spurious.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_seeded_random_weights_are_reproducible_and_leave_the_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = load_model("torchvision:resnet18", pretrained=False, seed=7, num_classes=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched
    b = load_model("torchvision:resnet18", pretrained=False, seed=7, num_classes=3)
    c = load_model("torchvision:resnet18", pretrained=False, seed=8, num_classes=3)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert a.random_weights_seed == 7
    assert load_model("torchvision:resnet18", pretrained=False, num_classes=3).random_weights_seed is None
    with pytest.raises(TypeError, match="seed must be an int"):
        load_model("torchvision:resnet18", pretrained=False, seed="7")  # type: ignore[arg-type]


def test_random_weight_workspace_works_in_later_stages_without_downloading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_network(monkeypatch, tmp_path)
    data = write_images(tmp_path / "data", {"0": 5, "1": 5, "2": 4}, size=24)  # ImageNet classes 0-2
    ws = tmp_path / "ws"
    code, out, err = _cli(["extract", str(ws), "--model", "torchvision:resnet18", "--random-weights", "--data",
                           f"folder:{data}", "--workers", "0", "--json", "--no-progress"])
    assert code == 0, err
    manifest = json.loads((ws / "manifest.json").read_text())
    assert manifest["model"]["random_weights_seed"] == 0
    # the Python API: the same random weights come back (the fingerprint check inside would refuse others)
    clf = Workspace.open(ws).load_model()
    assert clf.fingerprint() == manifest["model"]["fingerprint"] and clf.random_weights_seed == 0
    # later stages take no --random-weights and download nothing
    code, out, err = _cli(["extract", str(ws), "--data", f"folder:{data}", "--split", "val", "--workers", "0",
                           "--no-progress"])
    assert code == 0, err
    code, out, err = _cli(["npca", str(ws), "--components", "4", "--no-progress"])
    assert code == 0, err
    code, out, err = _cli(["counterfactual", str(ws), "--class", "1", "--component", "0", "--remove", "--steps", "2",
                           "--n-images", "1", "--json", "--no-progress"])
    assert code == 0, err
    assert json.loads(out)["models"][0]["spec"] == "torchvision:resnet18"


def test_a_pretrained_workspace_records_no_seed(tmp_path: Path) -> None:
    from conftest import tiny_classifier

    from spurious.extract import extract

    data = write_images(tmp_path / "data", {"a": 3, "b": 3, "c": 3}, size=16)
    extract(tmp_path / "ws", model=tiny_classifier(), data=f"folder:{data}", num_workers=0, progress=False)
    assert "random_weights_seed" not in json.loads((tmp_path / "ws" / "manifest.json").read_text())["model"]
