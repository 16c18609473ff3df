"""SpuFix, its transfer, the artifact, the imports and the CLI, against numpy oracles of DESIGN.md's formulas.

The oracle never uses ``spurious.npca`` or ``spurious.fix``: it recomputes the class covariance of
``psi_k = w_k * phi`` with ``numpy.cov``, its eigenvectors with ``numpy.linalg.eigh``, the alphas,
the matched directions and the non-orthogonal projection with ``numpy.linalg.lstsq``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_classifier

from spurious.fix import (
    FixHead,
    SpuFix,
    fix,
    import_alphas,
    import_components,
    load_alphas,
    load_fix,
    transfer,
)
from spurious.npca import npca
from spurious.workspace import import_features
from spurious.workspace import IncompatibleArtifactError, Workspace

K, D, N_K = 3, 8, 30


# ---------------------------------------------------------------------------- data + oracle


def _features(seed: int, n_k: int = N_K, d: int = D, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Class-wise anisotropic non-negative features (distinct eigenvalues), labels 0..k-1."""
    rng = np.random.default_rng(seed)
    phi, labels = [], []
    for c in range(k):
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        z = rng.standard_normal((n_k, d)) * np.linspace(2.0, 0.3, d)
        phi.append(np.abs(z @ q.T + rng.uniform(1, 3, size=d)))
        labels += [c] * n_k
    return np.concatenate(phi).astype(np.float32), np.asarray(labels)  # float32: what the store holds


def _head(seed: int, k: int = K, d: int = D) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (k, d)).astype(np.float32), rng.normal(0, 0.5, k).astype(np.float32)


def _ids(n: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}/{i:04d}.png" for i in range(n)]


def _make_ws(root: Path, phi: np.ndarray, labels: np.ndarray, ids: list[str], W: np.ndarray, b: np.ndarray, *,
             spec: str = "test:model", with_npca: bool = True, clf=None) -> Path:  # type: ignore[no-untyped-def]
    if clf is not None:
        Workspace.create(root, clf)
    else:
        Workspace.create_from_head(root, W, b, spec=spec)
    import_features(root, phi, labels, ids, split="train", dtype="float32")
    if with_npca:
        npca(root, n_components="all", precision="float64", progress=False, device="cpu")
    return root


def _oracle_alpha(phi_train: np.ndarray, w: np.ndarray, x: np.ndarray, comps: list[int]) -> np.ndarray:
    """alpha_l^k(x) = <1, v_l> <v_l, w * x - mu> with numpy's covariance and eigh; [n, len(comps)]."""
    psi = phi_train.astype(np.float64) * w.astype(np.float64)
    mu = psi.mean(0)
    lam, V = np.linalg.eigh(np.cov(psi.T, ddof=1))
    V = V[:, np.argsort(lam)[::-1]][:, comps]
    return V.sum(0)[None, :] * ((x.astype(np.float64) * w - mu) @ V)


def _oracle_fixed(phi_train: np.ndarray, labels: np.ndarray, W: np.ndarray, b: np.ndarray, x: np.ndarray,
                  comps: dict[int, list[int]]) -> np.ndarray:
    logits = x.astype(np.float64) @ W.T.astype(np.float64) + b
    for k, ls in comps.items():
        a = _oracle_alpha(phi_train[labels == k], W[k], x, ls)
        logits[:, k] -= np.maximum(a, 0).sum(1)
    return logits


def _apply(head: FixHead, x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    phi = torch.from_numpy(x.astype(np.float64))
    logits = phi @ torch.from_numpy(W.astype(np.float64)).T + torch.from_numpy(b.astype(np.float64))
    return head(phi, logits).numpy()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fixsrc")
    phi, labels = _features(0)
    W, b = _head(1)
    ws = _make_ws(root / "ws", phi, labels, _ids(len(labels)), W, b)
    return {"ws": ws, "phi": phi, "labels": labels, "W": W, "b": b, "root": root}


# ---------------------------------------------------------------------------- plain SpuFix


@pytest.mark.parametrize("comps", [{1: [0]}, {0: [0, 2], 2: [1], 1: [5]}])
@pytest.mark.parametrize("n", [1, 17])
def test_plain_fix_matches_oracle(source: dict, tmp_path: Path, comps: dict, n: int) -> None:
    r = fix(source["ws"], comps, out=tmp_path / "fx", precision="float64")
    head = load_fix(r.path)
    x = np.abs(np.random.default_rng(5).normal(2, 1.5, (n, D)))
    want = _oracle_fixed(source["phi"], source["labels"], source["W"], source["b"], x, comps)
    np.testing.assert_allclose(_apply(head, x, source["W"], source["b"]), want, rtol=1e-9, atol=1e-9)
    # the oracle's correction is not trivially zero for these inputs
    plain = x @ source["W"].T.astype(np.float64) + source["b"]
    assert np.abs(want - plain).max() > 1e-3
    assert r.num_components == sum(len(v) for v in comps.values())
    assert r.components == {str(k): v for k, v in sorted(comps.items())}


def test_float32_artifact_within_1e5(source: dict, tmp_path: Path) -> None:
    comps = {0: [1], 2: [0, 3]}
    head = load_fix(fix(source["ws"], comps, out=tmp_path / "fx").path)
    assert head.A.dtype == torch.float32
    x = np.abs(np.random.default_rng(6).normal(2, 1.5, (9, D)))
    want = _oracle_fixed(source["phi"], source["labels"], source["W"], source["b"], x, comps)
    got = head(torch.from_numpy(x.astype(np.float32)),
               torch.from_numpy((x @ source["W"].T.astype(np.float64) + source["b"]).astype(np.float32)))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_component_names_resolve_and_duplicates_warn(source: dict, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="lists a component twice"):
        r = fix(source["ws"], {"class_2": [1, 1]}, out=tmp_path / "fx", precision="float64")
    assert r.components == {"2": [1]}


def test_artifact_format_and_manifest(source: dict, tmp_path: Path) -> None:
    from safetensors import safe_open

    r = fix(source["ws"], {0: [0], 2: [1, 2]}, out=tmp_path / "fx", name="my fix")
    with safe_open(r.path, framework="numpy") as fh:
        meta = json.loads(fh.metadata()["spurious_fix"])
        assert sorted(fh.keys()) == ["A", "c", "cls", "comp"]
        assert fh.get_tensor("cls").tolist() == [0, 2, 2] and fh.get_tensor("comp").tolist() == [0, 1, 2]
    ws = Workspace.open(source["ws"])
    manifest = json.loads((tmp_path / "fx" / "manifest.json").read_text())
    for m in (meta, manifest):
        assert m["format"] == "spurious-fix" and m["version"] == 1 and m["kind"] == "plain"
        assert m["model"]["fingerprint"] == ws.model_fingerprint and m["model"]["spec"] == "test:model"
        assert m["classes"] == [0, 2] and m["components"] == {"0": [0], "2": [1, 2]}
        assert m["source"]["kind"] == "npca" and m["name"] == "my fix"
        assert "created" in m and "package_version" in m
    assert manifest["args"]["components"] == "python mapping"
    # a WS/fix directory and the workspace itself load too
    fix(source["ws"], {1: [0]}, overwrite=True)
    assert load_fix(source["ws"]).components == {1: [0]}
    assert load_fix(Path(source["ws"]) / "fix").name == "SpuFix"


# ---------------------------------------------------------------------------- the wrapper on a real model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    clf = tiny_classifier(num_classes=3, seed=0)
    W, b = (t.numpy() for t in clf.head())
    phi, labels = _features(3, d=12)
    root = tmp_path_factory.mktemp("fixtiny")
    ws = _make_ws(root / "ws", phi, labels, _ids(len(labels)), W, b, clf=clf)
    comps = {0: [0, 1], 2: [2]}
    path = fix(ws, comps, out=root / "fx", precision="float64").path
    return {"clf": clf, "ws": ws, "phi": phi, "labels": labels, "W": W, "b": b, "comps": comps, "path": path}


@pytest.mark.parametrize("n", [1, 5])
def test_spufix_wrapper_matches_oracle(tiny: dict, n: int) -> None:
    fixed = SpuFix(tiny["clf"], load_fix(tiny["path"]))
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        phi, out = fixed.phi_and_logits(x)
        assert torch.equal(fixed(x), out)
    want = _oracle_fixed(tiny["phi"], tiny["labels"], tiny["W"], tiny["b"], phi.numpy(), tiny["comps"])
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    assert fixed.spec == "test:tiny+spufix" and fixed.num_classes == 3 and fixed.num_features == 12
    assert fixed.input_size == (3, 32, 32) and fixed.class_names == ["a", "b", "c"]


def test_spufix_float64_model(tiny: dict) -> None:
    clf = tiny_classifier(num_classes=3, seed=0).double()
    fixed = SpuFix(clf, load_fix(tiny["path"]))
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        phi, out = fixed.phi_and_logits(x)
    assert out.dtype == torch.float64
    want = _oracle_fixed(tiny["phi"], tiny["labels"], tiny["W"], tiny["b"], phi.numpy(), tiny["comps"])
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-9, atol=1e-9)


def test_spufix_refuses_another_model(tiny: dict) -> None:
    with pytest.raises(IncompatibleArtifactError, match="was made for model 'test:tiny'"):
        SpuFix(tiny_classifier(num_classes=3, seed=1), load_fix(tiny["path"]))
    with pytest.raises(TypeError, match="head must be a FixHead"):
        SpuFix(tiny["clf"], object())  # type: ignore[arg-type]


def test_head_shape_errors(tiny: dict) -> None:
    head = load_fix(tiny["path"])
    with pytest.raises(ValueError, match=r"phi must have shape \[N, 12\]"):
        head(torch.zeros(2, 5), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"logits must have shape \[N, 3\]"):
        head(torch.zeros(2, 12), torch.zeros(2, 4))


# ---------------------------------------------------------------------------- transfer


def test_transfer_onto_same_model_reproduces_plain(source: dict, tmp_path: Path) -> None:
    twin = _make_ws(tmp_path / "twin", source["phi"], source["labels"], _ids(len(source["labels"])), source["W"],
                    source["b"], with_npca=False)
    comps = {0: [0, 2], 1: [1], 2: [0, 1, 4]}
    plain = load_fix(fix(source["ws"], comps, out=tmp_path / "plain").path)
    moved = load_fix(transfer(source["ws"], twin, comps, out=tmp_path / "moved").path)
    assert moved.kind == "transfer"
    x = np.abs(np.random.default_rng(7).normal(2, 1.5, (11, D)))
    want = _oracle_fixed(source["phi"], source["labels"], source["W"], source["b"], x, comps)
    np.testing.assert_allclose(_apply(moved, x, source["W"], source["b"]), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_apply(moved, x, source["W"], source["b"]),
                               _apply(plain, x, source["W"], source["b"]), rtol=1e-5, atol=1e-5)


def _target(seed: int, phi_src: np.ndarray, d2: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Another model's features of the same images (a nonlinear map of the source's) and its head."""
    rng = np.random.default_rng(seed)
    R = rng.normal(0, 0.5, (phi_src.shape[1], d2))
    phi2 = np.abs(np.tanh(phi_src @ R) + 0.1 * rng.standard_normal((phi_src.shape[0], d2)) + 1.0).astype(np.float32)
    W2, b2 = _head(seed + 1, d=d2)
    return phi2, W2, b2


def _oracle_transfer(phi_s: np.ndarray, labels: np.ndarray, W_s: np.ndarray, phi_t: np.ndarray, W_t: np.ndarray,
                     b_t: np.ndarray, x: np.ndarray, comps: dict[int, list[int]]) -> tuple[np.ndarray, dict]:
    logits = x.astype(np.float64) @ W_t.T.astype(np.float64) + b_t
    gram = {}
    for k, ls in comps.items():
        sel = labels == k
        a = _oracle_alpha(phi_s[sel], W_s[k], phi_s[sel], ls)                 # [n, m]
        psi = phi_t[sel] * W_t[k].astype(np.float64)
        mu = psi.mean(0)
        U = np.stack([(a[:, j:j + 1] * (psi - mu)).sum(0) for j in range(len(ls))], axis=1)
        U /= np.linalg.norm(U, axis=0, keepdims=True)
        c = np.linalg.lstsq(U, (x * W_t[k] - mu).T, rcond=None)[0]          # [m, n]
        beta = c * U.sum(0)[:, None]
        logits[:, k] -= np.maximum(beta, 0).sum(0)
        gram[k] = U.T @ U
    return logits, gram


def test_transfer_nonorthogonal_projection_matches_lstsq(source: dict, tmp_path: Path) -> None:
    phi2, W2, b2 = _target(11, source["phi"])
    tgt = _make_ws(tmp_path / "tgt", phi2, source["labels"], _ids(len(source["labels"])), W2, b2, with_npca=False)
    comps = {0: [0, 1, 2], 2: [1, 3]}
    r = transfer(source["ws"], tgt, comps, out=tmp_path / "fx", precision="float64")
    x = np.abs(np.random.default_rng(8).normal(1.0, 0.5, (13, 10)))
    want, gram = _oracle_transfer(source["phi"], source["labels"], source["W"], phi2, W2, b2, x, comps)
    off = max(np.abs(g - np.eye(len(g))).max() for g in gram.values())
    assert off > 0.05, "test data must give non-orthogonal matched directions"
    np.testing.assert_allclose(_apply(load_fix(r.path), x, W2, b2), want, rtol=1e-8, atol=1e-8)
    assert r.matched_images == {"0": N_K, "2": N_K}
    assert r.name.startswith("SpuFix (transfer from test:model")


def test_transfer_matches_by_id_not_row_order(source: dict, tmp_path: Path) -> None:
    phi2, W2, b2 = _target(21, source["phi"])
    ids = _ids(len(source["labels"]))
    perm = np.random.default_rng(0).permutation(len(ids))
    straight = _make_ws(tmp_path / "a", phi2, source["labels"], ids, W2, b2, with_npca=False)
    shuffled = _make_ws(tmp_path / "b", phi2[perm], source["labels"][perm], [ids[i] for i in perm], W2, b2,
                        with_npca=False)
    comps = {1: [0, 2], 2: [1]}
    h1 = load_fix(transfer(source["ws"], straight, comps, out=tmp_path / "f1", precision="float64").path)
    h2 = load_fix(transfer(source["ws"], shuffled, comps, out=tmp_path / "f2", precision="float64").path)
    x = np.abs(np.random.default_rng(9).normal(1.0, 0.5, (6, 10)))
    want, _ = _oracle_transfer(source["phi"], source["labels"], source["W"], phi2, W2, b2, x, comps)
    np.testing.assert_allclose(_apply(h2, x, W2, b2), want, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(_apply(h1, x, W2, b2), _apply(h2, x, W2, b2), rtol=1e-8, atol=1e-8)


def test_transfer_uses_only_shared_ids(source: dict, tmp_path: Path) -> None:
    phi2, W2, b2 = _target(31, source["phi"])
    ids = _ids(len(source["labels"]))
    keep = np.ones(len(ids), bool)
    keep[[0, 1, 2, 3]] = False  # four class-0 images missing from the target
    tgt = _make_ws(tmp_path / "t", phi2[keep], source["labels"][keep], [i for i, k in zip(ids, keep) if k], W2, b2,
                   with_npca=False)
    with pytest.warns(UserWarning, match="only the training images found in both workspaces"):
        r = transfer(source["ws"], tgt, {0: [0]}, out=tmp_path / "fx", precision="float64")
    assert r.matched_images == {"0": N_K - 4}
    # oracle on the shared images only (the source's alphas still come from its full npca)
    sel0 = np.flatnonzero(source["labels"] == 0)
    a = _oracle_alpha(source["phi"][sel0], source["W"][0], source["phi"][sel0[4:]], [0])
    psi = phi2[sel0[4:]] * W2[0].astype(np.float64)
    u = ((psi - psi.mean(0)) * a).sum(0)
    u /= np.linalg.norm(u)
    x = np.abs(np.random.default_rng(3).normal(1.0, 0.5, (5, 10)))
    beta = ((x * W2[0] - psi.mean(0)) @ u) * u.sum()
    want = x @ W2.T.astype(np.float64) + b2
    want[:, 0] -= np.maximum(beta, 0)
    np.testing.assert_allclose(_apply(load_fix(r.path), x, W2, b2), want, rtol=1e-8, atol=1e-8)


def test_transfer_warns_when_directions_are_dependent(source: dict, tmp_path: Path) -> None:
    # a target with one feature: every matched direction is the same unit vector
    phi2 = np.abs(source["phi"][:, :1]) + 1.0
    W2, b2 = _head(5, d=1)
    tgt = _make_ws(tmp_path / "t", phi2, source["labels"], _ids(len(source["labels"])), W2, b2, with_npca=False)
    with pytest.warns(UserWarning, match="nearly linearly dependent"):
        r = transfer(source["ws"], tgt, {1: [0, 1]}, out=tmp_path / "fx", precision="float64")
    assert r.condition_numbers["1"] is None  # rank deficient
    head = load_fix(r.path)
    assert torch.isfinite(head.A).all()


# ---------------------------------------------------------------------------- published artifacts


def _imagenet_train(root: Path, classes: list[int], n: int) -> dict[int, list[str]]:
    """Empty .JPEG files in wnid folders (the listing never opens them); returns sorted ids per class."""
    from spurious import imagenet

    ids = {}
    rng = np.random.default_rng(0)
    for k in classes:
        wnid = imagenet.wnids()[k]
        (root / wnid).mkdir(parents=True)
        names = [f"{wnid}_{int(v)}.JPEG" for v in rng.choice(100000, n, replace=False)]  # not in sorted order
        for name in names:
            (root / wnid / name).touch()
        ids[k] = sorted(f"{wnid}/{name}" for name in names)
    return ids


def test_import_alphas_and_transfer_from_them(source: dict, tmp_path: Path) -> None:
    train = tmp_path / "train"
    ids = _imagenet_train(train, [0, 1, 2], N_K)
    all_ids = [i for k in range(K) for i in ids[k]]
    phi, labels, W, b = source["phi"], source["labels"], source["W"], source["b"]
    src = _make_ws(tmp_path / "src", phi, labels, all_ids, W, b)
    phi2, W2, b2 = _target(41, phi)
    perm = np.random.default_rng(1).permutation(len(all_ids))
    tgt = _make_ws(tmp_path / "tgt", phi2[perm], labels[perm], [all_ids[i] for i in perm], W2, b2, with_npca=False)
    pub = tmp_path / "published"
    pub.mkdir()
    for k in range(K):  # the reference format: rows in the sorted file order of the class folder
        a = _oracle_alpha(phi[labels == k], W[k], phi[labels == k], list(range(6)))
        torch.save(torch.from_numpy(a).float(), pub / f"spurious_alphas_train_{k:03d}.pt")
    imported = import_alphas(pub, f"imagenet:{train}", tmp_path / "alphas")
    got_ids, got = load_alphas(tmp_path / "alphas").alpha(1, [2, 0])
    assert got_ids == ids[1]
    np.testing.assert_allclose(got, _oracle_alpha(phi[labels == 1], W[1], phi[labels == 1], [2, 0]), rtol=1e-6,
                               atol=1e-6)
    comps = {0: [0, 1], 2: [2]}
    r = transfer(imported, tgt, comps, out=tmp_path / "fx", precision="float64")
    assert r.source["kind"] == "alphas"
    x = np.abs(np.random.default_rng(2).normal(1.0, 0.5, (7, 10)))
    want, _ = _oracle_transfer(phi, labels, W, phi2, W2, b2, x, comps)
    np.testing.assert_allclose(_apply(load_fix(r.path), x, W2, b2), want, rtol=1e-5, atol=1e-5)
    # the path form of the source works too, and so does the workspace the alphas came from
    r2 = transfer(tmp_path / "alphas", tgt, comps, out=tmp_path / "fx2", precision="float64")
    np.testing.assert_allclose(_apply(load_fix(r2.path), x, W2, b2), want, rtol=1e-5, atol=1e-5)
    r3 = transfer(src, tgt, comps, out=tmp_path / "fx3", precision="float64")
    np.testing.assert_allclose(_apply(load_fix(r3.path), x, W2, b2), want, rtol=1e-8, atol=1e-8)


def test_import_alphas_errors(tmp_path: Path) -> None:
    train = tmp_path / "train"
    _imagenet_train(train, [0], 5)
    pub = tmp_path / "pub"
    pub.mkdir()
    with pytest.raises(FileNotFoundError, match="no spurious_alphas_train_<kkk>.pt files"):
        import_alphas(pub, f"imagenet:{train}", tmp_path / "out")
    torch.save(torch.zeros(4, 3), pub / "spurious_alphas_train_000.pt")
    with pytest.raises(ValueError, match="has 4 rows but class 0 has 5 images"):
        import_alphas(pub, f"imagenet:{train}", tmp_path / "out")
    torch.save(torch.zeros(5), pub / "spurious_alphas_train_000.pt")
    with pytest.raises(ValueError, match="must hold one 2-D tensor"):
        import_alphas(pub, f"imagenet:{train}", tmp_path / "out")
    torch.save(torch.zeros(5, 3), pub / "spurious_alphas_train_000.pt")
    a = import_alphas(pub, f"imagenet:{train}", tmp_path / "out")
    with pytest.raises(ValueError, match=r"imported alphas have 3 components \(valid 0..2\)"):
        a.alpha(0, [3])
    with pytest.raises(ValueError, match="class 4 has no imported alphas"):
        a.alpha(4, [0])
    with pytest.raises(FileExistsError, match="already holds imported alphas"):
        import_alphas(pub, f"imagenet:{train}", tmp_path / "out")


# ---------------------------------------------------------------------------- errors


# the component-set file itself (forms, bad files, the published .npy): tests/test_components.py


def test_fix_errors(source: dict, tmp_path: Path) -> None:
    ws = source["ws"]
    with pytest.raises(FileNotFoundError, match="component file .* does not exist"):
        fix(ws, tmp_path / "missing.json")
    np.save(tmp_path / "c.npy", np.arange(2))
    with pytest.raises(ValueError, match="read only by the explicit import"):
        fix(ws, tmp_path / "c.npy")
    (tmp_path / "fp.json").write_text(json.dumps({"format": "spurious-components", "version": 1,
                                                   "model_fingerprint": "0123456789abcdef", "classes": {"0": [0]}}))
    with pytest.raises(IncompatibleArtifactError, match="made for the model with fingerprint 0123456789abcdef"):
        fix(ws, tmp_path / "fp.json", out=tmp_path / "fx")
    with pytest.raises(ValueError, match="unknown class 7: this model has classes 0..2"):
        fix(ws, {7: [0]}, out=tmp_path / "fx")
    with pytest.raises(ValueError, match=r"component index out of range for class 0: valid 0..7"):
        fix(ws, {0: [8]}, out=tmp_path / "fx")
    with pytest.raises(ValueError, match="precision must be one of"):
        fix(ws, {0: [0]}, out=tmp_path / "fx", precision="float16")
    fix(ws, {0: [0]}, out=tmp_path / "fx")
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        fix(ws, {0: [0]}, out=tmp_path / "fx")
    bare = _make_ws(tmp_path / "bare", source["phi"], source["labels"], _ids(len(source["labels"])), source["W"],
                    source["b"], with_npca=False)
    with pytest.raises(FileNotFoundError, match="no neural PCA"):
        fix(bare, {0: [0]})
    with pytest.raises(FileNotFoundError, match="no neural PCA"):
        transfer(bare, ws, {0: [0]}, out=tmp_path / "t")


def test_fix_class_without_npca(tmp_path: Path) -> None:
    phi, labels = _features(4)
    W, b = _head(4)
    labels = labels.copy()
    labels[labels == 2] = 1
    labels[-1] = 2  # class 2 has one training image: npca skips it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = _make_ws(tmp_path / "ws", phi, labels, _ids(len(labels)), W, b)
    with pytest.raises(ValueError, match="class 2 .* has no neural PCA components"):
        fix(ws, {2: [0]})


def test_transfer_errors(source: dict, tmp_path: Path) -> None:
    phi2, W2, b2 = _target(51, source["phi"])
    other = _make_ws(tmp_path / "o", phi2, source["labels"], _ids(len(source["labels"]), prefix="elsewhere"), W2, b2,
                     with_npca=False)
    with pytest.raises(ValueError, match="share no training image ids .* like 'img/0000.png'"):
        transfer(source["ws"], other, {0: [0]}, out=tmp_path / "fx")
    (tmp_path / "fp.json").write_text(json.dumps({"format": "spurious-components", "version": 1,
                                                   "model_fingerprint": "0123456789abcdef", "classes": {"0": [0]}}))
    with pytest.raises(IncompatibleArtifactError, match="but the transfer source .* has model 'test:model'"):
        transfer(source["ws"], other, tmp_path / "fp.json", out=tmp_path / "fx")
    with pytest.raises(FileNotFoundError, match="neither a workspace nor imported alphas"):
        transfer(tmp_path / "nothing", other, {0: [0]})
    with pytest.raises(ValueError, match="component index out of range"):
        transfer(source["ws"], other, {0: [99]}, out=tmp_path / "fx")


def test_load_fix_errors(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_fix(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="no SpuFix artifact in"):
        load_fix(tmp_path)
    save_file({"A": np.zeros((1, 2), np.float32)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="is not a SpuFix artifact"):
        load_fix(tmp_path / "x.safetensors")
    (tmp_path / "y.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        load_fix(tmp_path / "y.safetensors")


def test_head_constructor_errors() -> None:
    kw = {"num_classes": 3, "model_spec": "m", "model_fingerprint": "f"}
    with pytest.raises(ValueError, match="non-empty"):
        FixHead(np.zeros((0, 4)), np.zeros(0), np.zeros(0), np.zeros(0), **kw)
    with pytest.raises(ValueError, match=r"c must have shape \[2\]"):
        FixHead(np.zeros((2, 4)), np.zeros(3), np.zeros(2), np.zeros(2), **kw)
    with pytest.raises(ValueError, match="class indices of the fix must be in 0..2"):
        FixHead(np.zeros((1, 4)), np.zeros(1), np.array([3]), np.zeros(1), **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_spufix_on_cuda_matches_cpu(tiny: dict) -> None:
    head = load_fix(tiny["path"])
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cpu = SpuFix(tiny["clf"], head)
    with torch.no_grad():
        want = cpu(x).numpy()
        gpu = SpuFix(tiny_classifier(num_classes=3, seed=0).to("cuda"), head)
        assert head.A.device.type == "cpu"  # the caller's head is copied, not moved
        got = gpu(x.to("cuda"))
    assert got.device.type == "cuda"
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-4, atol=1e-4)


def test_components_from_labels(source: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spurious.fix import components_from_labels

    LabelStore = pytest.importorskip("spurious.label.store").LabelStore  # the label stage (issue 7)

    phi, labels, W, b = source["phi"], source["labels"], source["W"], source["b"]
    ws = _make_ws(tmp_path / "ws", phi, labels, _ids(len(labels)), W, b)
    with pytest.raises(FileNotFoundError, match="no label store in"):
        components_from_labels(ws)
    LabelStore(ws)  # an empty store: nothing agreed yet
    with pytest.raises(ValueError, match="no component of .* has 2 agreeing 'spurious' verdicts"):
        components_from_labels(ws)
    fp = Workspace.open(ws).model_fingerprint
    seen = []
    monkeypatch.setattr(LabelStore, "agreed_components", lambda self, m: seen.append(m) or {0: [2], 1: []})
    monkeypatch.setattr(LabelStore, "labeler_count", lambda self, task="review": 2)
    comps = components_from_labels(ws, min_agree=3)
    assert seen == [3] and comps.classes == {0: [2]} and comps.model_fingerprint == fp
    r = fix(ws, comps, precision="float64")
    x = np.abs(np.random.default_rng(1).normal(2, 1.5, (3, D)))
    want = _oracle_fixed(phi, labels, W, b, x, {0: [2]})
    np.testing.assert_allclose(_apply(load_fix(r.path), x, W, b), want, rtol=1e-9, atol=1e-9)
    assert r.source["components_source"] == "labels: 2 labelers, min_agree=3"


def test_transfer_zero_direction_and_missing_inputs(source: dict, tmp_path: Path) -> None:
    phi2, W2, b2 = _target(61, source["phi"])
    W2[1] = 0.0  # class 1's weighted features never vary: its matched directions are zero
    tgt = _make_ws(tmp_path / "t", phi2, source["labels"], _ids(len(source["labels"])), W2, b2, with_npca=False)
    with pytest.warns(UserWarning, match=r"class 1: 1 component\(s\) skipped.*component 0 \(matched direction ~0\)"
                                         r".*\|u\| = 0 before normalisation.*class 1 is not fixed"):
        r = transfer(source["ws"], tgt, {1: [0], 2: [1]}, out=tmp_path / "fx", precision="float64")
    assert r.components == {"2": [1]} and [e["component"] for e in r.skipped["1"]] == [0]
    x = np.abs(np.random.default_rng(4).normal(1.0, 0.5, (3, 10)))
    want, _ = _oracle_transfer(source["phi"], source["labels"], source["W"], phi2, W2, b2, x, {2: [1]})
    np.testing.assert_allclose(_apply(load_fix(r.path), x, W2, b2), want, rtol=1e-8, atol=1e-8)
    with pytest.warns(UserWarning, match="class 1 is not fixed"), \
            pytest.raises(ValueError, match="no component of .* can be transferred"):
        transfer(source["ws"], tgt, {1: [0]}, out=tmp_path / "fx2", precision="float64")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_components(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError, match="no imported alphas in"):
        load_alphas(tmp_path)
    with pytest.raises(FileNotFoundError, match="alphas folder .* does not exist"):
        import_alphas(tmp_path / "nope", tmp_path, tmp_path / "out")


# ---------------------------------------------------------------------------- components without variance


def _flat_features(seed: int, flat: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`_features`, but class 0 has one planted direction of exactly zero variance (rotated)."""
    rng = np.random.default_rng(seed)
    phi, labels = [], []
    for c in range(K):
        q, _ = np.linalg.qr(rng.standard_normal((D, D)))
        z = rng.standard_normal((N_K, D)) * np.linspace(2.0, 0.3, D)
        if c == 0:
            z[:, flat] = 0.0
        phi.append(z @ q.T + 12.0)  # positive without abs(), so the planted direction stays exactly flat
        labels += [c] * N_K
    phi_all = np.concatenate(phi)
    assert (phi_all > 0).all()
    return phi_all.astype(np.float32), np.asarray(labels)


@pytest.mark.parametrize("kind", ["float64", "float32", "alphas"])
def test_transfer_skips_a_planted_zero_variance_component(tmp_path: Path, kind: str) -> None:
    phi, labels = _flat_features(70)
    W, b = _head(71)
    train = tmp_path / "train"
    ids = _imagenet_train(train, [0, 1, 2], N_K)
    all_ids = [i for k in range(K) for i in ids[k]]
    src = tmp_path / "src"
    Workspace.create_from_head(src, W, b, spec="test:model")
    import_features(src, phi, labels, all_ids, split="train", dtype="float32")
    npca(src, n_components="all", precision="float32" if kind == "float32" else "float64", progress=False,
         device="cpu")
    # oracle: numpy's eigh of class 0's covariance has exactly one eigenvalue at rounding level, the last one
    psi0 = phi[labels == 0].astype(np.float64) * W[0]
    lam = np.sort(np.linalg.eigvalsh(np.cov(psi0.T, ddof=1)))[::-1]
    assert lam[-1] / lam[0] < 1e-12 and lam[-2] / lam[0] > 1e-4
    flat = D - 1
    source: Any = src
    if kind == "alphas":
        pub = tmp_path / "published"
        pub.mkdir()
        for k in range(K):
            a = _oracle_alpha(phi[labels == k], W[k], phi[labels == k], list(range(D)))
            torch.save(torch.from_numpy(a).float(), pub / f"spurious_alphas_train_{k:03d}.pt")
        source = import_alphas(pub, f"imagenet:{train}", tmp_path / "alphas")
    phi2, W2, b2 = _target(72, phi)
    tgt = _make_ws(tmp_path / "tgt", phi2, labels, all_ids, W2, b2, with_npca=False)
    comps = {0: [0, flat], 2: [1]}
    figure = r"\|alpha_l\|\^2/max_j \|alpha_j\|\^2" if kind == "alphas" else r"lambda_l/lambda_1"
    with pytest.warns(UserWarning, match=rf"class 0: 1 component\(s\) skipped.*component {flat} \(eigenvalue ~0\): "
                                         rf"{figure} = [0-9.e+-]+, \|u\| = [0-9.e+-]+ before normalisation"):
        r = transfer(source, tgt, comps, out=tmp_path / "fx", precision="float64")
    assert r.components == {"0": [0], "2": [1]} and r.num_components == 2
    (entry,) = r.skipped["0"]
    assert entry["component"] == flat and entry["reason"] == "eigenvalue ~0" and entry["ratio"] < 2e-6
    assert list(r.skipped) == ["0"]
    head = load_fix(r.path)
    assert head.meta["transfer"]["skipped"] == r.skipped and head.components == {0: [0], 2: [1]}
    # the remaining components are transferred exactly as if the flat one had not been listed
    x = np.abs(np.random.default_rng(73).normal(1.0, 0.5, (6, 10)))
    want, _ = _oracle_transfer(phi, labels, W, phi2, W2, b2, x, {0: [0], 2: [1]})
    np.testing.assert_allclose(_apply(head, x, W2, b2), want, rtol=1e-5, atol=1e-5)
    assert any("skipped 1 components without a direction to match" in line and "class 0: [7]" in line
               for line in r.summary_lines())
