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


# ----------------------------------------------------------------------------- user errors: status 2, one line


def _error_lines(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if not line.startswith("warning:")]


@pytest.mark.parametrize("content", ["hello world\n", "# a config\nfoo: 1\n", '{"a": 1}\n'])
def test_text_file_as_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             content: str) -> None:
    data = write_images(tmp_path / "data", {"a": 2}, size=16)
    ckpt = tmp_path / "notes.txt"
    ckpt.write_text(content)
    code, out, err = _run(capsys, "extract", str(tmp_path / "ws"), "--model", f"torchvision:resnet18@{ckpt}",
                          "--data", f"folder:{data}", "--json", "--no-progress")
    assert code == 2 and out == "", err
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err and "Weights only load failed" not in err, err
    assert f"'{ckpt}' is not a readable checkpoint" in lines[0] and "torch.save(model.state_dict()" in lines[0]


@pytest.mark.parametrize("where", ["torchvision", "torch.hub"])
def test_offline_download_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    import urllib.error

    import torch.hub
    import torchvision.models._api

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached weights
    if where == "torchvision":  # fails before torch.hub prints anything
        monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    else:  # what a machine without network does: torch.hub announces the download, then urlopen fails
        monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    data = write_images(tmp_path / "data", {"a": 2}, size=16)
    code, out, err = _run(capsys, "extract", str(tmp_path / "ws"), "--model", "torchvision:resnet18",
                          "--data", f"folder:{data}", "--json", "--no-progress")
    assert code == 2 and out == "", (out, err)
    lines = _error_lines(err)
    errors = [line for line in lines if line.startswith("spurious extract: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "could not download the pretrained weights of 'torchvision:resnet18' (URLError" in errors[0]
    assert "--random-weights" in errors[0]
    if where == "torchvision":
        assert lines == errors, err  # a single line
    else:  # torch.hub's own notice, sent to stderr instead of polluting stdout
        assert [line for line in lines if line not in errors] == [line for line in lines
                                                                  if line.startswith("Downloading: ")], err


def test_json_stdout_parses_while_weights_download(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.hub prints 'Downloading: ...' on stdout; the CLI keeps stdout for the --json summary only."""
    import torch.hub
    import torchvision

    from test_score import make_bench

    def fake_download(url: str, dst: str, *args: object, **kwargs: object) -> None:
        print(f"progress of {url}")  # stands for any library output on stdout during a download
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), dst)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    data = write_images(tmp_path / "data", {"n01440764": 3, "n01443537": 3}, size=24)  # wnids: tench, goldfish
    ws = str(tmp_path / "ws")
    code, out, err = _run(capsys, "extract", ws, "--model", "torchvision:resnet18", "--data", f"folder:{data}",
                          "--workers", "0", "--device", "cpu", "--json", "--no-progress")
    assert code == 0, err
    assert json.loads(out)["num_rows"] == 6
    assert 'Downloading: "https://download.pytorch.org/models/resnet18' in err and "progress of https://" in err

    code, out, err = _run(capsys, "npca", ws, "--components", "2", "--device", "cpu", "--json", "--no-progress")
    assert code == 0, err
    assert json.loads(out)["classes_fitted"] == 2

    spu, val = make_bench(tmp_path / "bench")
    code, out, err = _run(capsys, "score", "--model", _checkpoint(tmp_path), "--spurious", str(spu), "--val", str(val),
                          "--out", str(tmp_path / "score"), "--workers", "0", "--device", "cpu", "--class-map",
                          "identity", "--no-plots", "--json", "--no-progress")
    assert code == 0, err
    assert [c["class_index"] for c in json.loads(out)["per_class"]] == [0, 2]


# ----------------------------------------------------------------------------- defaults come from the functions

# sub-command -> the public functions it calls (an option's parameter is looked up in the first that has
# it) and the options named unlike their parameter
_CALLS: dict[tuple[str, ...], tuple[list[str], dict[str, str]]] = {
    ("extract",): (["spurious.extract:extract"], {"workers": "num_workers"}),
    ("npca",): (["spurious.npca:npca"], {"components": "n_components"}),
    ("model",): (["spurious.models:load_model"], {"model_config": "config"}),
    ("models",): (["spurious.models:list_models"], {}),
    ("demo",): (["spurious.demo:run_demo"], {}),
    ("data", "planted"): (["spurious.demo.planted:PlantedConfig", "spurious.demo.planted:generate_planted"],
                          {}),
    ("train", "demo"): (["spurious.demo.train:train_demo_model"], {}),
    ("train-diffusion",): (["spurious.demo.diffusion:train_demo_diffusion", "spurious.demo.diffusion:quality_check",
                            "spurious.demo.diffusion:DemoDiffusionConfig"], {}),
    ("benchmark", "build"): (["spurious.benchmark:build_benchmark"], {"license": "license_text"}),
    ("fix",): (["spurious.fix:fix", "spurious.fix:transfer", "spurious.fix:export_fix",
                "spurious.components:components_from_labels", "spurious.dfr:dfr"], {"target_ws": "target"}),
    ("label",): (["spurious.label.app:serve", "spurious.label:LabelStore.export_labels"], {}),
    ("retrieve",): (["spurious.retrieve:retrieve"], {"workers": "num_workers", "top": "top_n",
                                                     "agree_model": "agree_models"}),
    ("score",): (["spurious.score:score", "spurious.score:score_zoo"], {"workers": "num_workers"}),
    ("visualize",): (["spurious.visualize:visualize"], {}),
    ("counterfactual",): (["spurious.counterfactual:counterfactual"], {"eval_model": "eval_models"}),
}
# the command's own choices, deliberately unlike the function's default
_CLI_OWN = {("model",): {"device": "cpu"}}  # a look at a model needs no accelerator


def _function(target: str) -> object:
    import importlib

    module, _, qualname = target.partition(":")
    obj: object = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _subcommands(parser: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser)]
    return [found for name, p in subs[0].choices.items() for found in _subcommands(p, (*path, name))]


def test_option_defaults_are_the_functions_defaults() -> None:
    """Every option that stands for a parameter of the public function its command calls shows (in -h) and
    uses that parameter's default: a function's default changed is the CLI's default changed."""
    import argparse
    import inspect

    from spurious._cli._common import FunctionDefault
    from spurious.cli import build_parser

    commands = _subcommands(build_parser())
    assert sorted(path for path, _ in commands) == sorted(_CALLS)  # a new command needs a row in _CALLS
    checked = 0
    for path, parser in commands:
        assert isinstance(parser, argparse.ArgumentParser)
        targets, renamed = _CALLS[path]
        signatures = [(t, inspect.signature(_function(t)).parameters) for t in targets]  # type: ignore[arg-type]
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0:  # positionals and flags (store_true, help)
                continue
            param = renamed.get(action.dest, action.dest)
            owner = next(((t, ps[param]) for t, ps in signatures
                          if param in ps and ps[param].default is not inspect.Parameter.empty), None)
            if owner is None:  # an option of the command itself (e.g. --variant), or a required parameter
                continue
            target, want = owner[0], owner[1].default
            where = f"spurious {' '.join(path)} {action.option_strings[-1]}"
            if action.dest in _CLI_OWN.get(path, {}):
                assert action.default == _CLI_OWN[path][action.dest] != want, where
                continue
            if isinstance(action.default, FunctionDefault):
                assert (action.default.target, action.default.parameter) in [(t, param) for t, _ in signatures], where
                assert action.default.value == want, where
            else:  # None / [] where the function's default is None / (): nothing given, nothing restated
                assert action.default == want or (action.default == [] and want == ()), (where, action.default, want)
            shown = parser._get_formatter()._expand_help(action) if action.help else ""
            if "%(default)" in (action.help or ""):
                assert f"default {want}" in shown or f"default: {want}" in shown or f"./{want}" in shown, (where, shown)
            if isinstance(want, (int, float)) and not isinstance(want, bool) and "default" in shown:
                assert str(want) in shown, (where, shown)  # no stale literal number in the help
            checked += 1
    assert checked >= 60, checked


def test_an_option_left_out_is_not_passed(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The handler passes given options only: the function's own default is the one in force."""
    import spurious.retrieve

    calls: list[dict[str, object]] = []

    class Done:
        complete = True

        def to_dict(self) -> dict[str, object]:
            return {}

        def summary_lines(self) -> list[str]:
            return ["done"]

    def fake(workspace: str, **kw: object) -> Done:
        calls.append(kw)
        return Done()

    monkeypatch.setattr(spurious.retrieve, "retrieve", fake)
    assert main(["retrieve", "ws", "--top", "7"]) == 0
    assert capsys.readouterr().out == "done\n"
    assert calls[0]["top_n"] == 7
    assert not {"min_votes", "oversample", "chunk_rows", "pool", "device", "classes"} & set(calls[0])
