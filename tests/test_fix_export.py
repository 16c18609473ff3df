"""Exported fixed models run without this package and give the wrapper's logits (TorchScript and ONNX)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_classifier

from spurious.fix import FixHead, SpuFix, export

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _fixed(dtype: torch.dtype = torch.float32) -> SpuFix:
    clf = tiny_classifier(num_classes=4, seed=2)
    rng = np.random.default_rng(0)
    # two rows on class 1 (a repeated index in the scatter-add), one on class 3
    head = FixHead(rng.normal(0, 1, (3, 12)), rng.normal(0, 0.1, 3), np.array([1, 1, 3]), np.array([0, 2, 1]),
                   num_classes=4, model_spec=clf.spec, model_fingerprint=clf.fingerprint(), dtype=torch.float64)
    fixed = SpuFix(clf, head)
    return fixed.to(dtype)


_RUNNER = textwrap.dedent("""
    import sys
    sys.modules["spurious"] = None  # any import of the package fails: the exports must not need it
    import json
    import numpy as np
    import torch
    ts, onnx_path = sys.argv[1:3]
    module = torch.jit.load(ts)
    if onnx_path != "-":
        import onnxruntime as ort
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    out = []
    for x_path in sys.argv[3:]:
        x = np.load(x_path)
        res = {"torchscript": module(torch.from_numpy(x)).detach().numpy().tolist()}
        if onnx_path != "-":
            res["onnx"] = sess.run(None, {"images": x})[0].tolist()
        out.append(res)
    print(json.dumps(out))
""")


# onnxruntime's CPU build has no float64 convolution: the float64 model is checked in TorchScript only
@pytest.mark.parametrize("dtype, formats", [(torch.float32, ("torchscript", "onnx")),
                                            (torch.float64, ("torchscript",))])
def test_exports_run_without_the_package_and_match(tmp_path: Path, dtype: torch.dtype, formats: tuple) -> None:
    fixed = _fixed(dtype)
    ts = export(fixed, tmp_path / "fixed.pt", "torchscript")
    assert ts.verified_with == "torch.jit.load" and ts.max_abs_diff is not None and ts.max_abs_diff < 1e-5
    if "onnx" in formats:
        ox = export(fixed, tmp_path / "fixed.onnx", "onnx")
        assert ox.verified_with == "onnxruntime" and ox.max_abs_diff is not None and ox.max_abs_diff < 1e-5
    xs = [torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n), dtype=dtype) for n in (1, 5)]
    for i, x in enumerate(xs):  # the trace used batch 2: other batch sizes must work
        np.save(tmp_path / f"x{i}.npy", x.numpy())
    (tmp_path / "run.py").write_text(_RUNNER)
    res = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "fixed.pt"),
                          str(tmp_path / "fixed.onnx") if "onnx" in formats else "-",
                          *(str(tmp_path / f"x{i}.npy") for i in range(len(xs)))],
                         check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    outputs = json.loads(res.stdout.strip().splitlines()[-1])
    for x, got in zip(xs, outputs):
        with torch.no_grad():
            want = fixed(x).numpy()
            plain = fixed.classifier(x).numpy()
        assert np.abs(want - plain).max() > 1e-3  # the fix changes these logits
        for fmt in formats:
            np.testing.assert_allclose(np.asarray(got[fmt]), want, rtol=1e-5, atol=1e-5, err_msg=fmt)


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
def test_export_keeps_train_state_and_metadata(tmp_path: Path) -> None:
    fixed = _fixed()
    fixed.train()
    export(fixed, tmp_path / "f.pt")
    assert fixed.training and fixed.classifier.training
    extra = {"spurious_fix.json": ""}
    torch.jit.load(str(tmp_path / "f.pt"), _extra_files=extra)
    meta = json.loads(extra["spurious_fix.json"])
    assert meta["format"] == "spurious-fix" and meta["components"] == {"1": [0, 2], "3": [1]}
    import onnx

    export(fixed, tmp_path / "f.onnx", "onnx")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "f.onnx")).metadata_props}
    assert json.loads(props["spurious_fix"])["model"]["fingerprint"] == fixed.classifier.fingerprint()


def test_export_errors(tmp_path: Path) -> None:
    fixed = _fixed()
    with pytest.raises(ValueError, match="format must be one of"):
        export(fixed, tmp_path / "f", "tflite")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="opset must be >= 16"):
        export(fixed, tmp_path / "f.onnx", "onnx", opset=13)
    with pytest.raises(TypeError, match="fixed must be a SpuFix"):
        export(fixed.classifier, tmp_path / "f.pt")  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:the model does not agree with the labels")
def test_export_fix_of_a_workspace_writes_beside_the_fix_and_refuses_to_overwrite(tmp_path: Path) -> None:
    """``export_fix`` (what ``spurious fix export`` runs): default file WS/fix/spufix.pt|.onnx, the
    workspace's own model, and no silent replacement of an existing file."""
    from test_fix import _features, _ids, _make_ws, _oracle_fixed

    from spurious.fix import export_fix, fix
    from spurious.models import register_model_source

    register_model_source("fixexporttest", lambda name, **kw: tiny_classifier(num_classes=3, seed=0,
                                                                              spec="fixexporttest:tiny"),
                          lambda: ["tiny"])
    clf = tiny_classifier(num_classes=3, seed=0, spec="fixexporttest:tiny")
    phi, labels = _features(3, d=12)
    W, b = (t.numpy() for t in clf.head())
    ws = _make_ws(tmp_path / "ws", phi, labels, _ids(len(labels)), W, b, clf=clf)
    fix(ws, {"1": [0, 3]})
    with pytest.raises(ValueError, match="format must be one of"):
        export_fix(ws, format="tflite")  # type: ignore[arg-type]
    r = export_fix(ws, format="torchscript")
    assert r.path == str(ws / "fix" / "spufix.pt") and r.max_abs_diff is not None and r.max_abs_diff < 1e-5
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = torch.jit.load(r.path)(x).numpy()
        want = _oracle_fixed(phi, labels, W, b, clf.phi(x).numpy(), {1: [0, 3]})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    before = Path(r.path).stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        export_fix(ws, format="torchscript")
    assert Path(r.path).stat().st_mtime_ns == before
    assert export_fix(ws, format="torchscript", overwrite=True).path == r.path
    assert export_fix(ws, format="onnx").path == str(ws / "fix" / "spufix.onnx")
    other = export_fix(ws, format="onnx", out=tmp_path / "elsewhere" / "f.onnx", fix_path=ws / "fix")
    assert other.path == str(tmp_path / "elsewhere" / "f.onnx") and Path(other.path).is_file()
