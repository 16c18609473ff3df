"""Stage 2, ``npca``: class-wise neural PCA of the weighted features ``psi_k = w_k ⊙ phi``.

For every class ``k`` (training images *labelled* ``k``, set ``I_k``, ``N_k = |I_k|``)::

    mu_k  = mean_{i in I_k} psi_k(x_i)
    C_k   = cov(psi_k) with divisor N_k - 1  =  sum_l lambda_l v_l v_l^T,  lambda_1 >= lambda_2 >= ...
    alpha_l^k(x) = <1, v_l> * <v_l, psi_k(x) - mu_k>

so that ``f_k(x) = sum_{l=1..D} alpha_l^k(x) + <1, mu_k> + b_k`` exactly. Only the top ``L`` pairs
are kept. When ``N_k <= D`` (ImageNet: ~1300 vs 2048) the pairs come from the ``N_k x N_k`` Gram
matrix of the centred features (same non-zero spectrum as ``C_k``, far cheaper); otherwise ``C_k``
is accumulated in chunks. Memory is ``O(D^2)`` per class whatever the split size.

Artifacts: ``WS/npca/class_KKKKK.safetensors`` (``mu`` [D], ``lam`` [L], ``v`` [L, D], ``w`` [D],
``b`` [1]; float32, or float64 with ``precision="float64"``) and ``WS/npca/manifest.json``.
Sign convention: ``<1, v_l> >= 0``.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

import numpy as np
import torch
from tqdm.auto import tqdm

from spurious import __version__
from spurious._dist import barrier, init_distributed, on_main_rank, resolve_device
from spurious._io import (
    JSONDict,
    atomic_path,
    read_json,
    sha256_strings,
    utc_now,
    write_json,
)
from spurious.workspace import (
    IncompatibleArtifactError,
    Workspace,
    prepare_artifact_dir,
)

if TYPE_CHECKING:
    from spurious.store import FeatureStore

__all__ = ["ClassBasis", "NPCA", "NPCAResult", "alpha", "fit_class", "load_npca", "npca"]

log = logging.getLogger(__name__)

_PRECISIONS = ("float32", "float64")
_TORCH_LINALG_ON_CPU = False  # tests flip this to run the GPU code path (torch linear algebra) on the CPU


@dataclass
class ClassBasis:
    """Neural PCA of one class: everything needed to compute ``alpha_l^k`` from raw ``phi``.

    Attributes:
        k: class index.
        n: ``N_k``, number of training images of the class.
        mu: float [D], mean of ``psi_k`` over the class.
        lam: float [L], eigenvalues, descending.
        v: float [L, D], eigenvectors as rows (``<1, v_l> >= 0``).
        w: float [D], the class's weight row ``w_k``.
        b: float, the class's bias ``b_k``.
    """

    k: int
    n: int
    mu: np.ndarray
    lam: np.ndarray
    v: np.ndarray
    w: np.ndarray
    b: float

    @property
    def num_components(self) -> int:
        return int(self.lam.shape[0])

    def offset(self) -> float:
        """``<1, mu_k> + b_k``: the part of the logit no component explains."""
        return float(np.sum(self.mu, dtype=np.float64) + self.b)

    def projection(self, components: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Linear form of ``alpha`` on raw features: ``alpha = phi @ A.T - c``.

        Returns:
            ``A`` float64 [c, D] with rows ``<1, v_l> (w_k ⊙ v_l)`` and ``c`` float64 [c] with
            ``<1, v_l> <v_l, mu_k>``, for the selected components (all by default).
        """
        comps = self._components(components)
        v = self.v[comps].astype(np.float64)
        s = v.sum(axis=1)
        A = s[:, None] * v * self.w.astype(np.float64)[None, :]
        c = s * (v @ self.mu.astype(np.float64))
        return A, c

    @overload
    def alpha(self, phi: np.ndarray, components: Sequence[int] | np.ndarray | None = None) -> np.ndarray: ...
    @overload
    def alpha(self, phi: torch.Tensor, components: Sequence[int] | np.ndarray | None = None) -> torch.Tensor: ...
    def alpha(self, phi: np.ndarray | torch.Tensor, components: Sequence[int] | np.ndarray | None = None
              ) -> np.ndarray | torch.Tensor:
        """``alpha_l^k(x)`` for a batch of features; see :func:`alpha`."""
        return alpha(phi, self, components)

    def _components(self, components: Sequence[int] | np.ndarray | None) -> np.ndarray:
        if components is None:
            return np.arange(self.num_components)
        comps = np.asarray(components, dtype=np.int64).reshape(-1)
        if comps.size and (comps.min() < 0 or comps.max() >= self.num_components):
            raise ValueError(f"component index out of range for class {self.k}: valid 0..{self.num_components - 1} "
                             f"(got {comps.tolist()})")
        return comps


@overload
def alpha(phi: np.ndarray, basis: ClassBasis, components: Sequence[int] | np.ndarray | None = None) -> np.ndarray: ...
@overload
def alpha(phi: torch.Tensor, basis: ClassBasis,
          components: Sequence[int] | np.ndarray | None = None) -> torch.Tensor: ...
def alpha(phi: np.ndarray | torch.Tensor, basis: ClassBasis,
          components: Sequence[int] | np.ndarray | None = None) -> np.ndarray | torch.Tensor:
    """Component values ``alpha_l^k(x) = <1, v_l> <v_l, w_k ⊙ phi(x) - mu_k>`` (one matrix product).

    Args:
        phi: raw penultimate features [N, D] (numpy or torch; any float dtype).
        basis: the class's :class:`ClassBasis`.
        components: 0-based component indices (default: all stored).

    Returns:
        [N, c] in the input's library: float64 for numpy input, the input's float dtype (at least
        float32) on the input's device for torch input (differentiable).
    """
    if phi.ndim != 2 or phi.shape[1] != basis.mu.shape[0]:
        raise ValueError(f"phi must have shape [N, {basis.mu.shape[0]}] (the model's feature dimension), "
                         f"got {tuple(phi.shape)}")
    A, c = basis.projection(components)
    if isinstance(phi, torch.Tensor):
        dt = phi.dtype if phi.dtype in (torch.float32, torch.float64) else torch.float32
        At = torch.as_tensor(A, dtype=dt, device=phi.device)
        ct = torch.as_tensor(c, dtype=dt, device=phi.device)
        return phi.to(dt) @ At.T - ct
    return np.asarray(phi, dtype=np.float64) @ A.T - c


# ---------------------------------------------------------------------------- fitting


def fit_class(phi: np.ndarray | torch.Tensor, w: np.ndarray, b: float, *, k: int = -1,
              n_components: int | Literal["all"] = 128, device: str | torch.device | None = "cpu",
              precision: str = "float32") -> ClassBasis:
    """Neural PCA of one class from its features held in memory ([N, D]; used by :func:`npca`).

    Args:
        phi: raw features of the class's training images, [N, D], N >= 2.
        w: weight row ``w_k`` [D]; ``b``: bias ``b_k``.
        n_components: ``L``, capped at ``min(N - 1, D)``; ``"all"`` returns all ``D`` pairs (the
            ones past ``N - 1`` have eigenvalue 0 and span the null space) so that
            ``sum_l alpha_l^k = <1, psi_k - mu_k>`` holds for any input.
        device: where the linear algebra runs.
        precision: ``float32`` (default; top eigenvalues to ~1e-5 relative) or ``float64``.
    """
    dev = resolve_device(device)
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    X = torch.as_tensor(np.asarray(phi) if not isinstance(phi, torch.Tensor) else phi)
    if X.ndim != 2:
        raise ValueError(f"phi must be [N, D], got shape {tuple(X.shape)}")
    n, d = X.shape
    if n < 2:
        raise ValueError(f"class {k} has {n} image(s); neural PCA needs at least 2")
    w64 = np.asarray(w, dtype=np.float64)
    if w64.shape != (d,):
        raise ValueError(f"w must have shape [{d}], got {w64.shape}")
    L = d if n_components == "all" else _check_L(n_components, n, d)
    if n <= d and L < d:
        return _gram_basis(X, w64, float(b), k, L, precision, dev)
    acc = _CovAccumulator(w64, dev)
    acc.add(X)
    return acc.finish(k=k, b=float(b), n_components=L, precision=precision)


def _check_L(n_components: object, n: int, d: int) -> int:
    if not isinstance(n_components, (int, np.integer)) or isinstance(n_components, bool) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer or 'all', got {n_components!r}")
    return int(min(n_components, n - 1, d))


def _basis(k: int, n: int, mu: torch.Tensor, lam: np.ndarray, V: np.ndarray, w: np.ndarray, b: float,
           precision: str) -> ClassBasis:
    """Pack eigenpairs (V: [D, L] columns) with the sign convention ``<1, v_l> >= 0``; stored in ``precision``."""
    dt = np.dtype(precision)
    V = V * np.where(V.sum(axis=0) < 0, -1.0, 1.0)[None, :]
    return ClassBasis(k=k, n=n, mu=mu.double().cpu().numpy().astype(dt), lam=lam.astype(dt),
                      v=np.ascontiguousarray(V.T.astype(dt)), w=np.asarray(w, dtype=dt), b=b)


class _CovAccumulator:
    """Shifted streaming sums of ``psi`` in float64: the covariance path (``N_k > D`` or all components)."""

    def __init__(self, w: np.ndarray, device: torch.device) -> None:
        self.device = device
        self.w_np = w
        self.w = torch.as_tensor(w, dtype=torch.float64, device=device)
        self.n = 0
        self.shift = self.s1 = self.s2 = torch.empty(0)

    def add(self, phi: torch.Tensor) -> None:
        psi = phi.to(self.device, torch.float64) * self.w
        if self.n == 0:
            self.shift = psi.mean(0)
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros(psi.shape[1], psi.shape[1], dtype=torch.float64, device=self.device)
        z = psi - self.shift
        self.s1 += z.sum(0)
        self.s2 += z.T @ z
        self.n += psi.shape[0]

    def finish(self, *, k: int, b: float, n_components: int, precision: str) -> ClassBasis:
        n = self.n
        mean_z = self.s1 / n
        C = (self.s2 - n * torch.outer(mean_z, mean_z)) / (n - 1)
        lam, V = _top_eigh(C, n_components, precision)
        return _basis(k, n, self.shift + mean_z, lam, V, self.w_np, b, precision)


def _gram_basis(X: torch.Tensor, w: np.ndarray, b: float, k: int, L: int, precision: str,
                device: torch.device) -> ClassBasis:
    """Top-L eigenpairs of ``C = Xc^T Xc / (n-1)`` through the ``n x n`` Gram matrix ``Xc Xc^T`` (n <= D).

    The mean is accumulated in float64; centring, the Gram matrix and the back-projection run in
    ``precision`` (numpy BLAS on the CPU, torch on a GPU).
    """
    n = X.shape[0]
    if device.type == "cpu" and not _TORCH_LINALG_ON_CPU:
        dt = np.dtype(precision)
        psi = X.numpy().astype(dt) * np.asarray(w, dtype=dt)
        mu = psi.mean(axis=0, dtype=np.float64)
        Xc = psi - mu.astype(dt)
        evals, U = _top_eigh(torch.from_numpy(Xc @ Xc.T), L, precision)  # Gram eigenvalues = (n - 1) * lambda
        V = (Xc.T @ U.astype(dt)).astype(np.float64)
        mu_t = torch.from_numpy(mu)
    else:
        tdt = torch.float32 if precision == "float32" else torch.float64
        psi64 = X.to(device, torch.float64) * torch.as_tensor(w, dtype=torch.float64, device=device)
        mu_t = psi64.mean(0)
        Xct = (psi64 - mu_t).to(tdt)
        evals, U = _top_eigh(Xct @ Xct.T, L, precision)
        V = (Xct.T @ torch.as_tensor(U, dtype=tdt, device=device)).double().cpu().numpy()
    V /= np.maximum(np.linalg.norm(V, axis=0, keepdims=True), 1e-300)
    return _basis(k, n, mu_t, evals / (n - 1), V, w, b, precision)


def _top_eigh(M: torch.Tensor, L: int, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-L eigenpairs (descending) of a symmetric matrix: eigenvalues [L], vectors [m, L] (numpy f64)."""
    m = M.shape[0]
    if M.device.type == "cpu" and not _TORCH_LINALG_ON_CPU:
        import scipy.linalg

        # LAPACK reads one triangle only: no need to symmetrise the rounding noise of X X^T
        A = M.numpy().astype(np.float32 if precision == "float32" else np.float64, copy=False)
        if L < m:
            evals, vecs = scipy.linalg.eigh(A, subset_by_index=(m - L, m - 1), driver="evr", overwrite_a=True,
                                            check_finite=False)
        else:
            evals, vecs = scipy.linalg.eigh(A, driver="evd", overwrite_a=True, check_finite=False)
    else:
        dt = torch.float32 if precision == "float32" else torch.float64
        A_t = M.to(dt)
        evals_t, vecs_t = torch.linalg.eigh((A_t + A_t.T) / 2)
        evals, vecs = evals_t[m - L:].double().cpu().numpy(), vecs_t[:, m - L:].double().cpu().numpy()
    order = np.argsort(evals)[::-1]
    return np.maximum(evals[order].astype(np.float64), 0.0), vecs[:, order].astype(np.float64)


# ---------------------------------------------------------------------------- stage


@dataclass(frozen=True)
class NPCAResult:
    """Summary of an ``npca`` run (what ``--json`` prints)."""

    path: str
    split: str
    n_components: int | str
    classes_fitted: int
    classes_reused: int
    classes_skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    seconds_per_class: float = 0.0
    device: str = "cpu"

    def to_dict(self) -> JSONDict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """What the CLI prints."""
        return [
            f"neural PCA: {self.classes_fitted} classes fitted, {self.classes_reused} reused, "
            f"{len(self.classes_skipped)} skipped (< 2 images) -> {self.path}",
            f"{self.seconds:.1f} s ({self.seconds_per_class:.3f} s/class on {self.device})",
        ]


def _class_file(root: Path, k: int) -> Path:
    return root / f"class_{k:05d}.safetensors"


def npca(
    workspace: str | os.PathLike[str],
    *,
    split: str = "train",
    n_components: int | Literal["all"] = 128,
    classes: Sequence[int | str] | None = None,
    device: str | torch.device | None = "auto",
    precision: str = "float32",
    chunk_rows: int = 8192,
    overwrite: bool = False,
    progress: bool = True,
) -> NPCAResult:
    """Fit class-wise neural PCA on the feature split ``split`` and save it to ``WS/npca/``.

    Streams each class's rows from the feature store (never the whole split). Resumable per class;
    under ``torchrun`` class ``k`` goes to rank ``k % world_size``.

    Args:
        workspace: workspace directory with finished features for ``split``.
        split: the labelled training split (``I_k`` = images *labelled* k).
        n_components: ``L`` per class (default 128, capped at ``min(N_k - 1, D)``) or ``"all"``.
        classes: class indices or names (default: every class with images).
        device: ``auto`` | ``cpu`` | ``cuda[:N]``.
        precision: ``float32`` (fast) or ``float64``.
        chunk_rows: rows per chunk when a class has more images than ``D``.
        overwrite: discard an existing ``npca/`` made from other features or settings.
        progress: progress bar on stderr.

    Raises:
        FileNotFoundError: no workspace or no finished features for ``split``.
        ValueError: unknown class, bad ``n_components``/``precision``, or a split without labels.
        IncompatibleArtifactError: ``npca/`` exists from other features or settings.
    """
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    if n_components != "all":
        _check_L(n_components, 10**9, 10**9)
    t0 = time.perf_counter()
    dev = resolve_device(device)
    info = init_distributed(dev)
    ws = Workspace.open(workspace)
    store = ws.feature_store(split)
    W, bias = ws.head()
    if W.shape[1] != store.dim:
        raise IncompatibleArtifactError(f"feature dimension mismatch: store {store.path} has D={store.dim}, "
                                        f"the workspace head has D={W.shape[1]}")
    labels = np.asarray(store.labels)
    if classes is None:
        wanted = sorted(int(c) for c in np.unique(labels) if c >= 0)
        if not wanted:
            raise ValueError(f"split {split!r} has no labelled images; npca needs a labelled training split")
    else:
        wanted = sorted({ws.resolve_class(c) for c in classes})
    plan = {"model_fingerprint": ws.model_fingerprint, "split": split, "data_fingerprint": store.data_fingerprint,
            "n_components": n_components, "precision": precision}
    phash = sha256_strings([repr(sorted(plan.items()))])
    out = ws.npca_dir
    on_main_rank(lambda: _prepare_npca_dir(out, plan, overwrite, ws, store))

    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(W) + 1))
    mine = [k for k in wanted if k % info.world_size == info.rank]
    fitted = reused = 0
    skipped: list[int] = []
    for k in tqdm(mine, desc="npca", unit="class", disable=not (progress and info.is_main), dynamic_ncols=True):
        rows = order[bounds[k]:bounds[k + 1]]
        if rows.size < 2:
            skipped.append(k)
            continue
        path = _class_file(out, k)
        if path.is_file() and _file_plan(path) == phash:
            reused += 1
            continue
        basis = _fit_from_store(store, rows, W[k], float(bias[k]), k, n_components, dev, precision, chunk_rows)
        _save_basis(path, basis, phash, ws.class_names[k])
        fitted += 1
    if skipped:
        names = ", ".join(f"{k} ({ws.class_names[k]}: {int(bounds[k + 1] - bounds[k])} images)" for k in skipped[:10])
        warnings.warn(f"{len(skipped)} classes have fewer than 2 training images and get no components: {names}",
                      stacklevel=2)
    barrier()
    if info.is_main:
        _write_npca_manifest(out, plan, phash, ws, split, labels, bounds)
    barrier()
    seconds = time.perf_counter() - t0
    return NPCAResult(path=str(out), split=split, n_components=n_components, classes_fitted=fitted,
                      classes_reused=reused, classes_skipped=skipped, seconds=round(seconds, 3),
                      seconds_per_class=round(seconds / max(fitted, 1), 4), device=str(dev))


def _fit_from_store(store: FeatureStore, rows: np.ndarray, w: np.ndarray, b: float, k: int,
                    n_components: int | Literal["all"],
                    dev: torch.device, precision: str, chunk_rows: int) -> ClassBasis:
    n, d = rows.size, store.dim
    L = d if n_components == "all" else _check_L(n_components, n, d)
    if n <= d and L < d:
        return fit_class(store.phi(rows), w, b, k=k, n_components=L, device=dev, precision=precision)
    acc = _CovAccumulator(np.asarray(w, dtype=np.float64), dev)
    for start in range(0, n, chunk_rows):
        acc.add(torch.from_numpy(store.phi(rows[start:start + chunk_rows]).astype(np.float32)))
    return acc.finish(k=k, b=b, n_components=L, precision=precision)


def _file_plan(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            return (fh.metadata() or {}).get("plan")
    except Exception:  # a torn or foreign file: treat as not done
        return None


def _save_basis(path: Path, basis: ClassBasis, phash: str, name: str) -> None:
    from safetensors.numpy import save_file

    tensors = {"mu": basis.mu, "lam": basis.lam, "v": basis.v, "w": basis.w,
               "b": np.array([basis.b], dtype=basis.v.dtype)}
    meta = {"class": str(basis.k), "n": str(basis.n), "name": name, "plan": phash}
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=meta)


def _prepare_npca_dir(out: Path, plan: JSONDict, overwrite: bool, ws: Workspace, store: FeatureStore) -> None:
    def mismatch(old: JSONDict) -> str:
        diffs = [f"{k}: {old.get(k)!r} vs {v!r}" for k, v in plan.items() if old.get(k) != v]
        now = []
        if old.get("model_fingerprint") != plan["model_fingerprint"]:
            now.append(f"workspace {ws.root} has model {ws.model_spec!r} (fingerprint {ws.model_fingerprint})")
        if old.get("data_fingerprint") != plan["data_fingerprint"]:
            now.append(f"the features {store.path} have data fingerprint {plan['data_fingerprint']}")
        return (f"{out} holds neural PCA made with other inputs ({out / 'plan.json'}: {'; '.join(diffs)})"
                + (f"; {' and '.join(now)}" if now else "") + "; pass --overwrite to refit")

    prepare_artifact_dir(out, plan, overwrite=overwrite, mismatch=mismatch)


def _write_npca_manifest(out: Path, plan: JSONDict, phash: str, ws: Workspace, split: str,
                         labels: np.ndarray, bounds: np.ndarray) -> None:
    from safetensors import safe_open

    classes = []
    for path in sorted(out.glob("class_*.safetensors")):
        if _file_plan(path) != phash:
            continue
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata()
            L = fh.get_slice("lam").get_shape()[0]
        classes.append({"class": int(meta["class"]), "name": meta["name"], "n": int(meta["n"]),
                        "n_components": int(L), "file": path.name})
    counts = np.diff(bounds)
    manifest = {
        "format": "spurious-npca", "version": 1, "package_version": __version__, "created": utc_now(),
        **plan, "model_spec": ws.model_spec, "dim": ws.num_features, "classes": classes,
        "classes_too_small": [int(k) for k in np.flatnonzero((counts > 0) & (counts < 2))],
    }
    write_json(out / "manifest.json", manifest)


# ---------------------------------------------------------------------------- loading


class NPCA:
    """Loaded neural PCA of a workspace: ``npca[k]`` is the :class:`ClassBasis` of class ``k``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"no neural PCA in {self.root}; run `spurious npca WS` first")
        self.manifest = read_json(mpath)
        self._entries = {int(c["class"]): c for c in self.manifest["classes"]}
        self._cache: dict[int, ClassBasis] = {}

    @property
    def classes(self) -> list[int]:
        """Classes that have components."""
        return sorted(self._entries)

    def __contains__(self, k: object) -> bool:
        return k in self._entries

    def __getitem__(self, k: int) -> ClassBasis:
        if k not in self._entries:
            raise KeyError(f"class {k} has no neural PCA components (fitted: {len(self._entries)} classes; "
                           "classes with < 2 training images get none)")
        if k not in self._cache:
            from safetensors.numpy import load_file

            t = load_file(str(self.root / self._entries[k]["file"]))
            self._cache[k] = ClassBasis(k=k, n=int(self._entries[k]["n"]), mu=t["mu"], lam=t["lam"], v=t["v"],
                                        w=t["w"], b=float(t["b"][0]))
        return self._cache[k]

    def alpha(self, phi: np.ndarray | torch.Tensor, k: int,
              components: Sequence[int] | np.ndarray | None = None) -> np.ndarray | torch.Tensor:
        """``alpha_l^k`` of a batch of raw features ``phi`` [N, D] for class ``k``."""
        return alpha(phi, self[k], components)


def load_npca(workspace: str | os.PathLike[str]) -> NPCA:
    """Load ``WS/npca`` (checks that it belongs to the workspace's model).

    Raises:
        FileNotFoundError: no workspace, or no neural PCA in it.
        IncompatibleArtifactError: ``WS/npca`` was fitted for another model than the workspace's.
    """
    ws = Workspace.open(workspace)
    result = NPCA(ws.npca_dir)
    fingerprint = result.manifest.get("model_fingerprint")
    if fingerprint != ws.model_fingerprint:
        spec = result.manifest.get("model_spec")
        raise IncompatibleArtifactError(
            f"neural PCA {ws.npca_dir / 'manifest.json'} was fitted for model "
            f"{'(spec not recorded)' if spec is None else repr(spec)} (fingerprint {fingerprint}), but workspace "
            f"{ws.root} has model {ws.model_spec!r} (fingerprint {ws.model_fingerprint}); refit it on this "
            f"workspace's features: `spurious npca {ws.root} --overwrite`")
    return result
