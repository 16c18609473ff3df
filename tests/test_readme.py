"""Everything the README shows is run here: the tour on the demo (with the fast substitutions), the
Python snippet on its output, and every ImageNet-scale command line through the CLI parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import FastDemo, copy_demo_out

from spurious.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(tag: str) -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"<!-- {tag} -->\n```\w*\n(.*?)```\n<!-- /{tag} -->", text, re.S)
    assert m, f"README has no <!-- {tag} --> block"
    return m.group(1)


def _commands(tag: str) -> list[list[str]]:
    cmds = []
    for line in _block(tag).splitlines():
        line = line.split("  #")[0].strip()
        if line and not line.startswith("#"):
            cmds.append(shlex.split(line))
    return cmds


def _fast(argv: list[str]) -> list[str]:
    """The README's commands on the tiny planted data and tiny demo models (same code paths)."""
    argv = [{"demo:robust": "demo:robust-tiny", "demo:standard": "demo:standard-tiny"}.get(a, a) for a in argv]
    if argv[:2] == ["spurious", "demo"]:
        argv.append("--fast")
    return argv


@pytest.mark.slow
def test_readme_tour_and_python_snippet_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str], fast_demo: FastDemo) -> None:
    monkeypatch.chdir(tmp_path)
    cmds = _commands("tour")
    assert cmds and all(c[0] == "spurious" for c in cmds)
    for argv in cmds:
        argv = _fast(argv) + ["--no-progress"]
        if argv[1] == "demo":
            # The README's demo line from an empty folder is the session's run (conftest.fast_demo, the same
            # arguments but --json); it runs again here, on a copy of that output, and the tour goes on.
            out = _same_demo_as(argv[1:], fast_demo)
            copy_demo_out(fast_demo, tmp_path / out)
        code = main(argv[1:])
        err = capsys.readouterr().err
        assert code == 0, f"{' '.join(argv)} failed: {err[-2000:]}"
        if argv[1] == "demo":
            _two_people_agree_on_a_component(tmp_path / "demo-out" / "ws-robust")
    out = tmp_path / "demo-out"
    assert (out / "report" / "index.html").is_file()
    assert (out / "my-score" / "scores.csv").is_file()
    assert (out / "robust-fixed.onnx").is_file()
    # the Python snippet runs on the same output, and the fixed model gives logits
    namespace: dict[str, object] = {}
    exec(compile(_block("python"), "README.md", "exec"), namespace)  # noqa: S102
    import torch

    fixed = namespace["fixed"]
    x = torch.full((2, *fixed.input_size), 0.5)  # type: ignore[attr-defined]
    assert fixed(x).shape == (2, fixed.num_classes)  # type: ignore[attr-defined,operator]
    assert namespace["alpha"].shape[1] == 2  # type: ignore[attr-defined]


def _same_demo_as(argv: list[str], demo: FastDemo) -> str:
    """The ``--out`` of ``spurious demo ARGV``, after checking ARGV is the run of ``demo`` but for --json."""
    parser = build_parser()
    readme, ran = vars(parser.parse_args(argv)), vars(parser.parse_args(demo.argv))
    assert ran.pop("json") and not readme.pop("json")
    assert readme == ran, "the README's demo line is not the one conftest.fast_demo runs; update the fixture"
    return str(readme["out"])


def _two_people_agree_on_a_component(ws: Path) -> None:
    """The tiny demo models are too weak for the simulated labelers to agree on anything; two
    people (through the label store's API, as the web UI does) mark one selected component spurious."""
    from spurious.label.store import LabelStore

    store = LabelStore(ws, sync=True)
    if store.agreed_components(2):
        return
    first = store.components()[0]
    k, l = first.cls, first.component
    for who in ("ann", "bob"):
        store.set_component_verdict(who, k, l, "spurious")
    assert store.agreed_components(2) == {k: [l]}


def test_readme_scale_commands_parse() -> None:
    parser = build_parser()
    cmds = _commands("scale")
    assert len(cmds) >= 6
    for argv in cmds:
        if argv[0] == "torchrun":  # torchrun [opts] -m spurious ARGS
            argv = argv[argv.index("spurious") + 1:]
        else:
            assert argv[0] == "spurious"
            argv = argv[1:]
        args = parser.parse_args(argv)
        assert callable(args.func), argv


def test_readme_own_model_commands_parse() -> None:
    """The "Your own model" commands (run for real on a trained checkpoint in tests/test_own_model.py)."""
    parser = build_parser()
    cmds = _commands("own")
    assert [c[1] for c in cmds] == ["model", "extract"]
    for argv in cmds:
        args = parser.parse_args(argv[1:])
        assert callable(args.func), argv


def test_readme_says_how_to_get_the_command_and_it_works() -> None:
    """The tour's `spurious ...` lines need the venv: the README says so before the tour, and its
    instruction works in a fresh shell (no `spurious` on PATH)."""
    import os
    import subprocess
    import sys

    text = README.read_text(encoding="utf-8")
    activate = text.index(". .venv/bin/activate")
    assert activate < text.index("<!-- tour -->") and ".venv/bin/spurious" in text
    venv = README.parent / ".venv"
    if Path(sys.prefix).resolve() != venv.resolve():
        pytest.skip("the suite does not run in the repository's .venv (make test does)")
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    bare = subprocess.run(["bash", "-c", "command -v spurious"], env=env, capture_output=True, text=True)
    assert bare.returncode != 0  # a fresh shell has no spurious command ...
    ok = subprocess.run(["bash", "-c", ". .venv/bin/activate && spurious --version"], cwd=README.parent, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("spurious "), ok.stderr  # ... the README's line gives it
