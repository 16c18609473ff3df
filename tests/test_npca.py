"""Neural PCA against float64 numpy oracles, the exact logit identity, and the stage on a real store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spurious.npca import alpha, fit_class


def _power_law_features(rng: np.random.Generator, n: int, d: int, offset: float = 0.5) -> np.ndarray:
    lam = np.arange(1, d + 1, dtype=np.float64) ** -1.2
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (rng.standard_normal((n, d)) * np.sqrt(lam)) @ q.T + offset


def _oracle(phi: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    psi = phi.astype(np.float64) * w
    evals, evecs = np.linalg.eigh(np.cov(psi, rowvar=False))
    return evals[::-1], evecs[:, ::-1]


@pytest.mark.parametrize("n,d", [(60, 96), (200, 48)], ids=["gram N<D", "covariance N>D"])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_fit_class_matches_numpy_eigh(n: int, d: int, precision: str) -> None:
    rng = np.random.default_rng(0)
    phi = _power_law_features(rng, n, d).astype(np.float16).astype(np.float32)
    w = rng.uniform(0.2, 1.5, size=d)
    L = 20
    basis = fit_class(phi, w, 0.3, k=3, n_components=L, precision=precision)
    ref_vals, ref_vecs = _oracle(phi, w)
    assert basis.lam.shape == (L,) and basis.v.shape == (L, d)
    np.testing.assert_allclose(basis.lam, ref_vals[:L], rtol=1e-4)
    np.testing.assert_allclose(basis.mu, (phi.astype(np.float64) * w).mean(0), rtol=1e-5, atol=1e-6)
    # eigenvectors up to sign; the spectrum here is well separated among the top 10
    dots = np.abs(np.sum(basis.v[:10].astype(np.float64) * ref_vecs[:, :10].T, axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-3)
    assert np.all(basis.v.sum(axis=1) >= 0)  # sign convention <1, v_l> >= 0


def test_components_capped_at_n_minus_1() -> None:
    rng = np.random.default_rng(1)
    phi = rng.standard_normal((5, 32)).astype(np.float32)
    basis = fit_class(phi, np.ones(32), 0.0, n_components=128)
    assert basis.num_components == 4


def test_logit_identity_with_all_components_on_unseen_inputs() -> None:
    rng = np.random.default_rng(2)
    d = 40
    phi = np.abs(_power_law_features(rng, 25, d))  # N < D: the null space must be completed
    w, b = rng.standard_normal(d), 0.7
    basis = fit_class(phi, w, b, n_components="all", precision="float64")
    assert basis.num_components == d
    new = np.abs(rng.standard_normal((9, d))) * 2
    logits = new @ w + b
    recon = alpha(new, basis).sum(axis=1) + basis.offset()
    np.testing.assert_allclose(recon, logits, rtol=1e-6, atol=1e-6)


def test_alpha_matches_definition_and_is_sign_invariant() -> None:
    rng = np.random.default_rng(3)
    phi = rng.standard_normal((30, 16))
    w = rng.standard_normal(16)
    basis = fit_class(phi, w, 0.0, n_components=6, precision="float64")
    x = rng.standard_normal((4, 16))
    psi = x * w
    v = basis.v.astype(np.float64)
    direct = v.sum(1)[None, :] * ((psi - basis.mu.astype(np.float64)) @ v.T)
    np.testing.assert_allclose(alpha(x, basis), direct, rtol=1e-6, atol=1e-9)
    flipped = type(basis)(**{**basis.__dict__, "v": -basis.v})
    np.testing.assert_allclose(alpha(x, flipped), direct, rtol=1e-6, atol=1e-9)
    # torch input: same values, differentiable, subset of components in the order asked
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    at = alpha(xt, basis, components=[4, 1])
    np.testing.assert_allclose(at.detach().numpy(), direct[:, [4, 1]], rtol=1e-6, atol=1e-9)
    at.sum().backward()
    assert xt.grad is not None and torch.any(xt.grad != 0)


def test_fit_class_errors() -> None:
    rng = np.random.default_rng(4)
    phi = rng.standard_normal((10, 8))
    with pytest.raises(ValueError, match="at least 2"):
        fit_class(phi[:1], np.ones(8), 0.0)
    with pytest.raises(ValueError, match=r"w must have shape \[8\]"):
        fit_class(phi, np.ones(7), 0.0)
    with pytest.raises(ValueError, match="n_components must be a positive integer"):
        fit_class(phi, np.ones(8), 0.0, n_components=0)
    with pytest.raises(ValueError, match="precision must be one of"):
        fit_class(phi, np.ones(8), 0.0, precision="float16")
    basis = fit_class(phi, np.ones(8), 0.0, n_components=3)
    with pytest.raises(ValueError, match=r"phi must have shape \[N, 8\]"):
        alpha(np.ones((2, 9)), basis)
    with pytest.raises(ValueError, match="component index out of range"):
        alpha(np.ones((2, 8)), basis, components=[3])


# ---------------------------------------------------------------------------- the stage on a store


def _ws(tmp_path, per_class, tiny=True, seed=0):  # type: ignore[no-untyped-def]
    from conftest import tiny_classifier, write_images
    from spurious.extract import extract

    data = write_images(tmp_path / "data", per_class, seed=seed)
    extract(tmp_path / "ws", model=tiny_classifier(num_classes=len(per_class)), data=data, num_workers=0,
            progress=False, dtype="float32", shard_size=8)
    return tmp_path / "ws"


def test_stage_matches_oracle_and_resumes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from spurious.npca import load_npca, npca
    from spurious.workspace import Workspace

    ws = _ws(tmp_path, {"a": 9, "b": 30, "c": 1})
    with pytest.warns(UserWarning, match="fewer than 2 training images"):
        r = npca(ws, n_components=5, progress=False)
    assert r.classes_fitted == 2 and r.classes_skipped == [2]
    store = Workspace.open(ws).feature_store("train")
    W, b = Workspace.open(ws).head()
    pca = load_npca(ws)
    assert pca.classes == [0, 1] and 2 not in pca
    for k in (0, 1):  # class 0: N=9 < D=12 (Gram path); class 1: N=30 > D (covariance path)
        phi = store.phi(store.rows_of_class(k)).astype(np.float64)
        ref_vals, ref_vecs = _oracle(phi, W[k].astype(np.float64))
        basis = pca[k]
        assert basis.n == len(phi) and basis.num_components == 5
        np.testing.assert_allclose(basis.lam, ref_vals[:5], rtol=1e-4)
        dots = np.abs(np.sum(basis.v[:3].astype(np.float64) * ref_vecs[:, :3].T, axis=1))
        np.testing.assert_allclose(dots, 1.0, atol=1e-3)
        assert basis.b == pytest.approx(float(b[k]))
    with pytest.raises(KeyError, match="class 2 has no neural PCA components"):
        pca[2]
    with pytest.warns(UserWarning):
        again = npca(ws, n_components=5, progress=False)
    assert again.classes_fitted == 0 and again.classes_reused == 2
    with pytest.raises(ValueError, match="holds neural PCA made with other inputs"):
        npca(ws, n_components=4, progress=False)
    with pytest.warns(UserWarning):
        npca(ws, n_components=4, progress=False, overwrite=True)
    assert load_npca(ws)[0].num_components == 4


def test_stage_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from spurious.npca import npca

    with pytest.raises(FileNotFoundError, match="not a spurious workspace"):
        npca(tmp_path / "none")
    ws = _ws(tmp_path, {"a": 4, "b": 4})
    with pytest.raises(ValueError, match="unknown class 7"):
        npca(ws, classes=[7], progress=False)
    with pytest.raises(ValueError, match="unknown class 'zebra'"):
        npca(ws, classes=["zebra"], progress=False)
    with pytest.raises(FileNotFoundError, match="no finished features for split 'val'"):
        npca(ws, split="val", progress=False)
    r = npca(ws, classes=["b"], n_components=2, progress=False)
    assert r.classes_fitted == 1


def test_dimension_mismatch_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from spurious.npca import npca
    from spurious.workspace import IncompatibleArtifactError

    ws = _ws(tmp_path, {"a": 4, "b": 4})
    m = ws / "features" / "train" / "manifest.json"
    meta = json.loads(m.read_text())
    meta["dim"] = 13
    m.write_text(json.dumps(meta))
    with pytest.raises(IncompatibleArtifactError, match="feature dimension mismatch"):
        npca(ws, progress=False)


@pytest.mark.slow
def test_logit_identity_on_real_images_with_the_real_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """EfficientNet-Lite0 (real weights) on augmented scikit-image photos; identity on unseen images."""
    from spurious.demo import draw_photo_dataset, draw_shapes_dataset
    from spurious.extract import extract
    from spurious.npca import load_npca, npca
    from spurious.workspace import Workspace

    train = draw_photo_dataset(tmp_path / "train", per_class=10, seed=0)
    unseen = draw_shapes_dataset(tmp_path / "pool", per_class=2, seed=3)
    ws = tmp_path / "ws"
    extract(ws, model="efficientnet_lite0", data=f"imagenet:{train}", num_workers=0, progress=False)
    extract(ws, data=f"pool:{unseen}", split="pool", num_workers=0, progress=False)
    npca(ws, n_components="all", precision="float64", progress=False)
    W, b = Workspace.open(ws).head()
    phi = Workspace.open(ws).feature_store("pool").phi().astype(np.float64)
    pca = load_npca(ws)
    assert pca.classes == [281, 967]
    for k in pca.classes:
        basis = pca[k]
        assert basis.num_components == W.shape[1] == 1280
        logits = phi @ W[k].astype(np.float64) + float(b[k])
        recon = basis.alpha(phi).sum(axis=1) + basis.offset()
        np.testing.assert_allclose(recon, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,d", [(60, 96), (200, 48)], ids=["gram", "covariance"])
def test_torch_linear_algebra_path_matches_numpy(n: int, d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The code path used on GPUs (torch matmul + torch.linalg.eigh), run on the CPU."""
    import spurious.npca as npca_mod

    rng = np.random.default_rng(5)
    phi = _power_law_features(rng, n, d).astype(np.float32)
    w = rng.uniform(0.2, 1.5, size=d)
    monkeypatch.setattr(npca_mod, "_TORCH_LINALG_ON_CPU", True)
    basis = fit_class(phi, w, 0.0, n_components=12, precision="float64")
    ref_vals, ref_vecs = _oracle(phi, w)
    np.testing.assert_allclose(basis.lam, ref_vals[:12], rtol=1e-8)
    dots = np.abs(np.sum(basis.v[:8] * ref_vecs[:, :8].T, axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-6)
