"""``spurious fix`` command line: the five forms, --json summaries, one-line errors with status 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_classifier
from test_fix import (
    D,
    _apply,
    _features,
    _head,
    _ids,
    _imagenet_train,
    _make_ws,
    _oracle_fixed,
    _oracle_transfer,
    _target,
)

from spurious.cli import main
from spurious.fix import load_fix


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fixcli")
    phi, labels = _features(0)
    W, b = _head(1)
    ws = _make_ws(root / "ws", phi, labels, _ids(len(labels)), W, b)
    (root / "comps.json").write_text(json.dumps({"format": "spurious-components", "version": 1,
                                                 "model_fingerprint": None, "classes": {"0": [1], "2": [0, 2]},
                                                 "source": "test"}))
    return {"root": root, "ws": ws, "phi": phi, "labels": labels, "W": W, "b": b, "comps": root / "comps.json"}


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def test_cli_plain_and_transfer(src: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fix", str(src["ws"]), "--components", str(src["comps"]), "--out", str(tmp_path / "fx"),
                 "--precision", "float64", "--json"]) == 0
    out = _json(capsys)
    assert out["kind"] == "plain" and out["num_components"] == 3 and "components" not in out
    assert json.loads(Path(out["manifest"]).read_text())["components"] == {"0": [1], "2": [0, 2]}
    x = np.abs(np.random.default_rng(1).normal(2, 1.5, (4, D)))
    want = _oracle_fixed(src["phi"], src["labels"], src["W"], src["b"], x, {0: [1], 2: [0, 2]})
    np.testing.assert_allclose(_apply(load_fix(out["path"]), x, src["W"], src["b"]), want, rtol=1e-9, atol=1e-9)

    phi2, W2, b2 = _target(3, src["phi"])
    tgt = _make_ws(tmp_path / "tgt", phi2, src["labels"], _ids(len(src["labels"])), W2, b2, with_npca=False)
    assert main(["fix", "transfer", "--source", str(src["ws"]), "--target", str(tgt), "--components",
                 str(src["comps"]), "--precision", "float64", "--json"]) == 0
    out = _json(capsys)
    assert out["kind"] == "transfer" and out["path"] == str(tgt / "fix" / "spufix.safetensors")
    assert json.loads(Path(out["manifest"]).read_text())["transfer"]["matched_images"] == {"0": 30, "2": 30}
    assert (out["matched_images_min"], out["matched_images_max"], out["num_skipped"]) == (30, 30, 0)
    x2 = np.abs(np.random.default_rng(2).normal(1.0, 0.5, (3, 10)))
    want2, _ = _oracle_transfer(src["phi"], src["labels"], src["W"], phi2, W2, b2, x2, {0: [1], 2: [0, 2]})
    np.testing.assert_allclose(_apply(load_fix(tgt), x2, W2, b2), want2, rtol=1e-8, atol=1e-8)
    # human-readable form
    assert main(["fix", str(src["ws"]), "--components", str(src["comps"]), "--out", str(tmp_path / "fx"),
                 "--overwrite"]) == 0
    assert "3 components of 2 classes removed" in capsys.readouterr().out


def test_cli_imports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "spurious_components.npy", np.array({3: [0, 1], 7: [2]}, dtype=object), allow_pickle=True)
    assert main(["fix", "import-components", str(tmp_path / "spurious_components.npy"), "--out",
                 str(tmp_path / "c.json"), "--json"]) == 0
    assert _json(capsys) == {"out": str(tmp_path / "c.json"), "classes": 2, "components": 3,
                             "source": "imported from spurious_components.npy"}
    assert json.loads((tmp_path / "c.json").read_text())["classes"] == {"3": [0, 1], "7": [2]}

    ids = _imagenet_train(tmp_path / "train", [0, 4], 6)
    (tmp_path / "pub").mkdir()
    rows = {k: torch.arange(6 * 3, dtype=torch.float32).reshape(6, 3) + 100 * k for k in (0, 4)}
    for k, t in rows.items():
        torch.save(t, tmp_path / "pub" / f"spurious_alphas_train_{k:03d}.pt")
    assert main(["fix", "import-alphas", str(tmp_path / "pub"), "--train", f"imagenet:{tmp_path / 'train'}",
                 "--out", str(tmp_path / "alphas"), "--json"]) == 0
    assert _json(capsys) == {"out": str(tmp_path / "alphas"), "classes": 2, "images": 12}
    from spurious.fix import load_alphas

    got_ids, a = load_alphas(tmp_path / "alphas").alpha(4, [2])
    assert got_ids == ids[4]  # row i of the file is the i-th file of the sorted class folder
    np.testing.assert_array_equal(a[:, 0], rows[4][:, 2].numpy())


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spurious.models import register_model_source

    register_model_source("fixclitest", lambda name, **kw: tiny_classifier(num_classes=3, seed=0,
                                                                           spec="fixclitest:tiny"),
                          lambda: ["tiny"])
    clf = tiny_classifier(num_classes=3, seed=0, spec="fixclitest:tiny")
    phi, labels = _features(3, d=12)
    W, b = (t.numpy() for t in clf.head())
    ws = _make_ws(tmp_path / "ws", phi, labels, _ids(len(labels)), W, b, clf=clf)
    assert main(["fix", str(ws), "--components", str(_comp_file(tmp_path, {"1": [0, 3]}))]) == 0
    capsys.readouterr()
    assert main(["fix", "export", str(ws), "--format", "torchscript", "--json"]) == 0
    out = _json(capsys)
    assert out["path"] == str(ws / "fix" / "spufix.pt") and out["max_abs_diff"] < 1e-5
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = torch.jit.load(out["path"])(x).numpy()
        phi_x = clf.phi(x).numpy()
    want = _oracle_fixed(phi, labels, W, b, phi_x, {1: [0, 3]})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert main(["fix", "export", str(ws), "--format", "torchscript"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def _comp_file(tmp_path: Path, classes: dict) -> Path:
    p = tmp_path / "comps.json"
    p.write_text(json.dumps(classes))
    return p


@pytest.mark.parametrize("argv, match", [
    (["{ws}"], "needs exactly one of --components FILE and --from-labels"),
    (["{ws}", "--components", "{comps}", "--from-labels"], "needs exactly one of"),
    (["{ws}", "--from-labels", "--out", "{out}"], "no label store in"),
    (["{ws}", "--components", "{comps}", "--format", "onnx"], "does not take --format"),
    (["{ws}", "extra", "--components", "{comps}"], "unexpected argument 'extra'"),
    (["transfer", "--source", "{ws}", "--components", "{comps}"], "needs --target WS"),
    (["export", "{ws}"], "needs --format"),
    (["import-components", "x.npy"], "needs --out"),
    (["import-alphas", "dir", "--out", "{out}"], "needs --train"),
    (["{ws}", "--components", "{bad}", "--out", "{out}"], "unknown class 9"),
    (["{ws}", "--components", "{comps}", "--out", "{out}", "--precision", "float64", "--train", "t"],
     "does not take --train"),
])
def test_cli_errors(src: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list, match: str) -> None:
    bad = _comp_file(tmp_path, {"9": [0]})
    args = [a.format(ws=src["ws"], comps=src["comps"], bad=bad, out=tmp_path / "o") for a in argv]
    assert main(["fix", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and err.count("\n") == 0


@pytest.mark.parametrize("content", ["hello world\n", "# a config\nfoo: 1\n", '{"3": [0]}\n', ""])
def test_cli_import_components_of_a_file_that_is_not_a_pickle(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               content: str) -> None:
    bad = tmp_path / "spurious_components.npy"
    bad.write_text(content)
    assert main(["fix", "import-components", str(bad), "--out", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert f"{bad} is not a readable .npy file or pickle" in err and "spurious_components.npy" in err
    assert not (tmp_path / "c.json").exists()


def test_cli_transfer_reports_skipped_components(src: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    phi2, W2, b2 = _target(61, src["phi"])
    W2[1] = 0.0  # class 1 of the target never varies: no direction to match its components
    tgt = _make_ws(tmp_path / "tgt", phi2, src["labels"], _ids(len(src["labels"])), W2, b2, with_npca=False)
    comps = _comp_file(tmp_path, {"1": [0, 2], "2": [1]})
    base = ["fix", "transfer", "--source", str(src["ws"]), "--target", str(tgt), "--components", str(comps)]
    assert main([*base, "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert (out["num_skipped"], out["num_classes_not_fixed"]) == (2, 1)
    manifest = json.loads(Path(out["manifest"]).read_text())
    assert manifest["components"] == {"2": [1]}
    assert [e["component"] for e in manifest["transfer"]["skipped"]["1"]] == [0, 2]
    assert {e["reason"] for e in manifest["transfer"]["skipped"]["1"]} == {"matched direction ~0"}
    assert "class 1: 2 component(s) skipped" in captured.err and "class 1 is not fixed" in captured.err
    assert main([*base, "--overwrite"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "skipped 2 components without a direction to match (eigenvalue or matched direction ~0): class 1: [0, 2]" \
        in lines
    assert "not fixed (every listed component skipped): class 1" in lines
    # nothing left to transfer: status 2, one error line (after the warning)
    only = _comp_file(tmp_path, {"1": [0]})
    assert main([*base[:-1], str(only), "--overwrite"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning:")]
    assert len(err) == 1 and "can be transferred" in err[0]


def test_cli_json_does_not_grow_with_the_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--json`` carries counts and paths: the same keys and about the same size for 2 or 200 fixed classes."""
    K, D_, n = 200, 4, 4
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(K), n)
    phi = np.abs(rng.normal(1.0, 0.5, (K * n, D_))).astype(np.float32)
    W, b = rng.normal(0, 1, (K, D_)), rng.normal(0, 1, K)
    ws = _make_ws(tmp_path / "ws", phi, labels, _ids(len(labels)), W, b)
    sizes: dict[tuple[str, int], int] = {}
    keys: dict[tuple[str, int], set[str]] = {}
    for n_classes in (2, K):
        classes = {str(k): [0, 1] for k in range(n_classes)}
        comps = _comp_file(tmp_path, classes)
        for form in (["fix", str(ws)], ["fix", "transfer", "--source", str(ws), "--target", str(ws)]):
            assert main([*form, "--components", str(comps), "--out", str(tmp_path / "fx"), "--overwrite",
                         "--json"]) == 0
            raw = capsys.readouterr().out
            out = json.loads(raw)
            manifest = json.loads(Path(out["manifest"]).read_text())
            assert out["num_classes_fixed"] == n_classes and manifest["components"] == classes
            if form[1] == "transfer":
                assert manifest["transfer"]["matched_images"] == {k: n for k in classes}
                assert (out["matched_images_min"], out["matched_images_max"]) == (n, n)
            sizes[form[1], n_classes] = len(raw)
            keys[form[1], n_classes] = set(out)
    for form in (str(ws), "transfer"):
        assert keys[form, 2] == keys[form, K]
        assert abs(sizes[form, K] - sizes[form, 2]) < 40  # only digits differ
