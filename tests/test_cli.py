"""The command line: exit codes, one-line errors, --json summaries, python -m."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_images
from spurious.cli import main

REPO = Path(__file__).resolve().parents[1]


def _checkpoint(tmp_path: Path) -> str:
    import timm

    torch.manual_seed(0)
    path = tmp_path / "ckpt.pt"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=3).state_dict(), path)
    return f"timm:test_resnet@{path}"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_extract_then_npca_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_images(tmp_path / "data", {"a": 6, "b": 5, "c": 4}, size=40)
    spec = _checkpoint(tmp_path)
    ws = str(tmp_path / "ws")
    code, out, err = _run(capsys, "extract", ws, "--model", spec, "--data", f"folder:{data}", "--workers", "0",
                          "--json", "--no-progress")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["num_rows"] == 15 and summary["dtype"] == "float16" and summary["complete"] is True
    code, out, err = _run(capsys, "npca", ws, "--components", "3", "--json", "--no-progress")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["classes_fitted"] == 3 and summary["n_components"] == 3
    code, out, _ = _run(capsys, "npca", ws, "--components", "3", "--no-progress")
    assert code == 0 and "3 reused" in out


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["extract", "{ws}", "--model", "timm:resnet5O", "--data", "{data}"], "did you mean"),
        (["extract", "{ws}", "--model", "efficientnet_lite0", "--data", "{tmp}/missing"], "missing"),
        (["extract", "{ws}", "--model", "efficientnet_lite0", "--data", "{tmp}/empty"], "[Nn]o images|empty"),
        (["extract", "{ws}", "--data", "{data}"], "new workspace: pass the model"),
        (["npca", "{tmp}/nowhere"], "not a spurious workspace"),
        (["npca", "{ws}", "--components", "many"], "must be a positive integer or 'all'"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                        pattern: str) -> None:
    import re

    data = write_images(tmp_path / "data", {"a": 2}, size=16)
    (tmp_path / "empty").mkdir()
    ws = tmp_path / "ws"
    if argv[0] == "npca" and "{ws}" in argv:
        ws.mkdir()
        (ws / "manifest.json").write_text(json.dumps({"format": "spurious-workspace", "model": {}}))
    argv = [a.format(ws=ws, data=data, tmp=tmp_path) for a in argv]
    code, out, err = _run(capsys, *argv, "--no-progress")
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]


def test_verbose_shows_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "npca", str(tmp_path / "nowhere"), "-v")
    assert code == 2 and "Traceback" in err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: spurious" in capsys.readouterr().err


def test_models_listing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "models", "timm:resnet1*", "--json")
    names = json.loads(out)
    assert code == 0 and "timm:resnet18" in names and all(n.startswith("timm:resnet1") for n in names)


def test_python_dash_m_entry_point() -> None:
    r = subprocess.run([sys.executable, "-m", "spurious", "--version"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.startswith("spurious ")
