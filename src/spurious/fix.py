"""Stage 7, ``fix``: remove the dependence on spurious components without labels or retraining (SpuFix).

Plain SpuFix (DESIGN.md, "Math"), for the spurious component set ``S_k`` of class ``k``::

    f~_k(x) = f_k(x) - sum_{l in S_k} max(alpha_l^k(x), 0),      other classes unchanged,
    alpha_l^k(x) = <1, v_l> <v_l, psi_k(x) - mu_k> = phi(x) . A_l - c_l     (ClassBasis.projection)

Transfer to another classifier ``g`` (features ``phi'``, weights ``w'_k``, ``psi'_k = w'_k ⊙ phi'``,
``mu'_k`` the mean of ``psi'_k`` over the same training images ``I_k``, matched by image id)::

    u_l  = sum_{i in I_k} alpha_l^k(x_i) (psi'_k(x_i) - mu'_k),   normalised to unit length
    c    = (U^T U)^{-1} U^T (psi'_k(x) - mu'_k),                 U = [u_l]_{l in S_k}  (not orthogonal)
    beta_j = c_j <1, u_j>,          g~_k(x) = g_k(x) - sum_j max(beta_j, 0)

A component whose source eigenvalue is ~0 (``lambda_l <= max(1e-10, 16 eps) lambda_1``, ``eps`` the
machine epsilon of the neural PCA; for imported alphas the same test on the alphas' energy
``|alpha_l|^2 / max_j |alpha_j|^2`` with 1e-10) or whose matched direction is ~0 (``|u_l|`` before
normalisation at most 1e-12 of its bound ``|alpha_l| |psi'|``) has no direction to match: ``u_l`` would be
rounding noise. It is skipped with a warning and recorded (``FixResult.skipped``, the artifact's
``transfer.skipped``).

``beta`` is again a linear form of the raw features, ``beta = phi'(x) . B_j - d_j`` with
``B = diag(<1, u>) U^+ diag(w'_k)`` and ``d = B m'`` (``m'`` the mean of ``phi'`` over ``I_k``), so
both kinds reduce to the same :class:`FixHead`: one stacked matrix ``A`` [M, D], offsets ``c`` [M] and
the class of each row ``cls`` [M]; the forward pass is one matrix product, a ReLU and a scatter-add
into the logits (no Python loop over classes). Applied to the source model itself, the transfer
reproduces plain SpuFix (``u_l = v_l`` because ``sum_i alpha_l (psi_i - mu) = <1,v_l> (N-1) lambda_l v_l``).

Artifact: ``WS/fix/spufix.safetensors`` (tensors ``A``, ``c``, ``cls``, ``comp`` and, for a transfer,
the unit matched directions ``u``; the JSON metadata in the safetensors header under the key
``spurious_fix``) plus ``WS/fix/manifest.json`` (the same metadata, the arguments and the file hash).

Component sets (``S_k``) are read, checked against the model and resolved by :mod:`spurious.components`
(a component-set JSON file, the label store's agreed verdicts, or the published ``spurious_components.npy``);
its public names are re-exported here (``from spurious.fix import load_components`` keeps working). The
published per-class training alphas ``spurious_alphas_train_<kkk>.pt`` are imported by :func:`import_alphas`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spurious import __version__
from spurious._io import (
    JSONDict,
    atomic_path,
    read_json,
    sha256_file,
    utc_now,
    write_json,
)
from spurious.components import (
    COMPONENTS_FORMAT,
    ComponentSet,
    ComponentSource,
    components_from_labels,
    import_components,
    load_components,
)
from spurious.workspace import IncompatibleArtifactError, Workspace

if TYPE_CHECKING:
    from spurious.models import Classifier, Preprocessing

__all__ = [
    "COMPONENTS_FORMAT",
    "ComponentSet",
    "ExportResult",
    "FixHead",
    "FixResult",
    "ImportedAlphas",
    "LastLayerHead",
    "SpuFix",
    "components_from_labels",
    "export",
    "export_fix",
    "fix",
    "import_alphas",
    "import_components",
    "load_alphas",
    "load_components",
    "load_fix",
    "transfer",
]

log = logging.getLogger(__name__)

_FIX_FORMAT = "spurious-fix"
_ALPHAS_FORMAT = "spurious-alphas"
_VERSION = 1
_FIX_FILE = "spufix.safetensors"
DFR_FILE = "dfr.safetensors"  # a last-layer head (spurious.dfr), in the same format
_META_KEY = "spurious_fix"
_PRECISIONS = ("float32", "float64")
_EXPORT_FORMATS = ("torchscript", "onnx")
_ALPHA_FILE_RE = re.compile(r"^spurious_alphas_train_(\d+)\.pt$")
_COND_WARN = 1e6  # condition number of U above which the transfer warns (min-norm solution used)
_EIG_FLOOR = 1e-10  # lambda_l / lambda_1 at or below which a source component has no direction (also alpha energy)
_EIG_FLOOR_EPS = 16  # ... or below this many machine epsilons of the npca precision (the eigensolver's noise)
_U_FLOOR = 1e-12  # |u_l| / (|alpha_l| |psi'|_F) at or below which the matched direction is rounding noise


# ---------------------------------------------------------------------------- the head


class FixHead(nn.Module):
    """SpuFix correction that acts on features only (no backbone); one per fixed model.

    ``forward(phi, logits) = logits - scatter_k(sum_{rows m of class k} max(phi . A_m - c_m, 0))``: the
    rows are the plain components ``alpha_l^k`` or the transferred ``beta_j`` (both are linear forms of
    ``phi``). One matrix product, a ReLU and a scatter-add; no Python loop over classes.

    Attributes:
        model_spec: spec of the model it fixes (``Classifier.spec``).
        model_fingerprint: ``Classifier.fingerprint()`` of the model it fixes.
        classes: fixed classes (sorted).
        components: class -> its removed component indices (of the source model for a transfer).
        name: short label for tables, e.g. ``"SpuFix"`` or ``"SpuFix (transfer from demo:robust)"``.
        kind: ``"plain"`` or ``"transfer"``.
        num_classes: ``K``, the number of logits it expects; ``num_features``: ``D``.
        meta: the artifact's metadata (provenance: source model, component-set source, created, ...).
        path: the artifact file it was loaded from (:func:`load_fix`); ``None`` for a head built in memory.
        A: buffer [M, D]; c: buffer [M]; cls: buffer [M] int64 (class of each row); comp: [M] int64.
    """

    A: Tensor
    c: Tensor
    cls: Tensor
    comp: Tensor

    def __init__(self, A: Tensor | np.ndarray, c: Tensor | np.ndarray, cls: Tensor | np.ndarray,
                 comp: Tensor | np.ndarray, *, num_classes: int, model_spec: str, model_fingerprint: str,
                 name: str = "SpuFix", kind: str = "plain", meta: JSONDict | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        """Build from the stacked linear forms (see :func:`fix` / :func:`transfer` / :func:`load_fix`).

        Args:
            A: [M, D] rows such that the component value is ``phi @ A.T - c``.
            c: [M] offsets. cls: [M] class of each row (0..num_classes-1). comp: [M] component index.
            num_classes: ``K`` of the fixed model.
            dtype: storage dtype of ``A``/``c`` (float32 or float64); the forward pass follows ``phi``.

        Raises:
            ValueError: inconsistent shapes, an empty head, or a class index outside ``0..K-1``.
        """
        super().__init__()
        def tensor(x: Tensor | np.ndarray, dt: torch.dtype) -> Tensor:
            return (x if isinstance(x, Tensor) else torch.from_numpy(np.ascontiguousarray(x))).detach().to("cpu", dt)

        A_t, c_t = tensor(A, dtype), tensor(c, dtype)
        cls_t, comp_t = tensor(cls, torch.int64), tensor(comp, torch.int64)
        if A_t.ndim != 2 or A_t.shape[0] == 0:
            raise ValueError(f"A must be a non-empty [M, D] matrix, got shape {tuple(A_t.shape)}")
        m = A_t.shape[0]
        for name_, t in (("c", c_t), ("cls", cls_t), ("comp", comp_t)):
            if t.shape != (m,):
                raise ValueError(f"{name_} must have shape [{m}] (one entry per row of A), got {tuple(t.shape)}")
        if int(cls_t.min()) < 0 or int(cls_t.max()) >= num_classes:
            raise ValueError(f"class indices of the fix must be in 0..{num_classes - 1}, got "
                             f"{sorted(set(cls_t.tolist()))[:10]}")
        self.register_buffer("A", A_t.contiguous())
        self.register_buffer("c", c_t.contiguous())
        self.register_buffer("cls", cls_t.contiguous())
        self.register_buffer("comp", comp_t.contiguous())
        self.num_classes = int(num_classes)
        self.num_features = int(A_t.shape[1])
        self.model_spec = str(model_spec)
        self.model_fingerprint = str(model_fingerprint)
        self.name = str(name)
        self.kind = str(kind)
        self.meta = dict(meta or {})
        self.path: Path | None = None
        comps: dict[int, list[int]] = {}
        for k, l in zip(cls_t.tolist(), comp_t.tolist(), strict=False):
            comps.setdefault(int(k), []).append(int(l))
        self.components = dict(sorted(comps.items()))
        self.classes = sorted(self.components)

    @property
    def num_rows(self) -> int:
        """``M``: the number of removed components over all classes."""
        return int(self.A.shape[0])

    def _check(self, phi: Tensor) -> None:
        if phi.ndim != 2 or phi.shape[1] != self.num_features:
            raise ValueError(f"phi must have shape [N, {self.num_features}] (the fixed model's features), "
                             f"got {tuple(phi.shape)}")

    def values(self, phi: Tensor) -> Tensor:
        """Component values before the ReLU: ``alpha_l^k`` (plain) or ``beta_j`` (transfer), [N, M].

        Args:
            phi: raw penultimate features [N, D] of the fixed model; dtype and device are followed.
        """
        self._check(phi)
        A = self.A.to(device=phi.device, dtype=phi.dtype)
        return F.linear(phi, A) - self.c.to(device=phi.device, dtype=phi.dtype)

    def forward(self, phi: Tensor, logits: Tensor) -> Tensor:
        """Fixed logits ``f_k - sum_{l in S_k} max(alpha_l^k, 0)`` (or ``beta_j`` for a transfer).

        Args:
            phi: [N, D] features of the model it fixes.
            logits: [N, K] logits of that model from the same forward pass.

        Returns:
            [N, K] fixed logits, in ``logits``' dtype, on ``phi``'s device; classes outside the fix
            are unchanged.
        """
        if logits.ndim != 2 or logits.shape[1] != self.num_classes or logits.shape[0] != phi.shape[0]:
            raise ValueError(f"logits must have shape [N, {self.num_classes}] with the N of phi "
                             f"{tuple(phi.shape)}, got {tuple(logits.shape)}")
        corr = torch.relu(self.values(phi))
        index = self.cls.to(phi.device).unsqueeze(0).expand(corr.shape[0], -1)
        return logits.scatter_add(1, index, corr.neg().to(logits.dtype))

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, kind={self.kind}, model={self.model_spec!r}, classes={len(self.classes)}, "
                f"components={self.num_rows}, D={self.num_features}")

    def save(self, path: str | os.PathLike[str], extra_tensors: Mapping[str, np.ndarray] | None = None) -> Path:
        """Write the artifact file (safetensors + JSON metadata in the header), atomically."""
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {"A": self.A.cpu().numpy(), "c": self.c.cpu().numpy(), "cls": self.cls.cpu().numpy(),
                   "comp": self.comp.cpu().numpy()}
        for k, v in (extra_tensors or {}).items():
            tensors[k] = np.asarray(v)
        with atomic_path(path) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
                      metadata={_META_KEY: json.dumps(self._metadata(), sort_keys=True)})
        return path

    def _metadata(self) -> JSONDict:
        return {**self.meta, "format": _FIX_FORMAT, "version": _VERSION, "kind": self.kind, "name": self.name,
                "model": {**dict(self.meta.get("model") or {}), "spec": self.model_spec,
                          "fingerprint": self.model_fingerprint, "num_classes": self.num_classes,
                          "num_features": self.num_features},
                "classes": self.classes, "components": {str(k): v for k, v in self.components.items()},
                "precision": str(self.A.dtype).removeprefix("torch.")}


class LastLayerHead(FixHead):
    """A new last layer (DFR, :mod:`spurious.dfr`) in the :class:`FixHead` format: it replaces the logits.

    ``forward(phi, logits)``: the logits of the classes in ``cls`` become ``phi . A_m - c_m`` (so
    ``A`` = the new weights ``W``, ``c = -b``), the others stay. Saved, loaded (:func:`load_fix`, kind
    ``"dfr"``), scored (``score --fix``) and exported like a SpuFix head; ``comp`` is ``-1`` (no component).
    """

    def forward(self, phi: Tensor, logits: Tensor) -> Tensor:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes or logits.shape[0] != phi.shape[0]:
            raise ValueError(f"logits must have shape [N, {self.num_classes}] with the N of phi "
                             f"{tuple(phi.shape)}, got {tuple(logits.shape)}")
        index = self.cls.to(phi.device).unsqueeze(0).expand(phi.shape[0], -1)
        return logits.scatter(1, index, self.values(phi).to(logits.dtype))


def load_fix(path: str | os.PathLike[str]) -> FixHead:
    """Load a fix artifact: a ``spufix.safetensors`` / ``dfr.safetensors`` file, a ``WS/fix`` or ``WS/dfr``
    directory, or a workspace ``WS`` (its ``fix/`` first, then its ``dfr/``).

    Raises:
        FileNotFoundError: no artifact there.
        ValueError: the file is not a SpuFix artifact (or of a newer version).
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        cands = [p / _FIX_FILE, p / "fix" / _FIX_FILE, p / DFR_FILE, p / "dfr" / DFR_FILE]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"no SpuFix artifact in {p} (looked for {cands[0]}, {cands[1]} and the DFR "
                                    f"heads {cands[2].name}, dfr/{DFR_FILE}); make one with `spurious fix WS "
                                    "--components FILE` (or `--method dfr --groups FILE --split SPLIT`)")
        p = found
    elif not p.is_file():
        raise FileNotFoundError(f"fix artifact {p} does not exist")
    try:
        with safe_open(str(p), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(_META_KEY)
    except SafetensorError as err:
        raise ValueError(f"{p} is not a safetensors file ({err})") from None
    if raw is None:
        raise ValueError(f"{p} is not a SpuFix artifact (no {_META_KEY!r} metadata)")
    meta = json.loads(raw)
    if meta.get("format") != _FIX_FORMAT or int(meta.get("version", 0)) > _VERSION:
        raise ValueError(f"{p}: unsupported artifact format {meta.get('format')!r} version {meta.get('version')!r}")
    t = load_file(str(p))
    model = meta["model"]
    kind = meta.get("kind", "plain")
    head = (LastLayerHead if kind == "dfr" else FixHead)(
                   t["A"], t["c"], t["cls"], t["comp"], num_classes=int(model["num_classes"]),
                   model_spec=model["spec"], model_fingerprint=model["fingerprint"], name=meta.get("name", "SpuFix"),
                   kind=kind, meta=meta, dtype=t["A"].dtype)
    head.path = p
    return head


# ---------------------------------------------------------------------------- the fixed model


class SpuFix(nn.Module):
    """A :class:`~spurious.models.Classifier` with the fix applied: ``forward(x in [0,1]) -> fixed logits``.

    Args:
        classifier: the model the head was made for.
        head: its :class:`FixHead` (copied to the classifier's device when it lives elsewhere; the
            caller's head is not moved).

    Raises:
        TypeError: wrong argument types.
        IncompatibleArtifactError (a ValueError): the head was made for another model (fingerprints differ).
    """

    def __init__(self, classifier: Classifier, head: FixHead) -> None:
        from spurious.models import Classifier

        super().__init__()
        if not isinstance(classifier, Classifier):
            raise TypeError(f"classifier must be a spurious.models.Classifier, got {type(classifier).__name__}")
        if not isinstance(head, FixHead):
            raise TypeError(f"head must be a FixHead (see load_fix), got {type(head).__name__}")
        fp = classifier.fingerprint()
        if fp != head.model_fingerprint:
            where = f"fix artifact {head.path} ({head.name!r})" if head.path is not None else f"fix {head.name!r}"
            made_in = (head.meta.get("model") or {}).get("workspace")
            load = (f"load the model it was made for (Workspace.open({str(made_in)!r}).load_model())" if made_in
                    else "load the model it was made for")
            raise IncompatibleArtifactError(
                f"{where} was made for model {head.model_spec!r} (fingerprint {head.model_fingerprint}), but the "
                f"classifier it is applied to is {classifier.spec!r} (fingerprint {fp}): the weights, the "
                f"preprocessing or the class names differ; {load}, make a fix for this model in its workspace "
                "(`spurious fix WS --components FILE --overwrite`), or transfer this one to it "
                "(`spurious fix transfer`)")
        if head.A.device != classifier.device:
            head = copy.deepcopy(head).to(classifier.device)
        self.classifier = classifier
        self.head = head
        self.spec = f"{classifier.spec}+spufix"

    @property
    def preprocessing(self) -> Preprocessing:
        return self.classifier.preprocessing

    @property
    def class_names(self) -> list[str]:
        return self.classifier.class_names

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    @property
    def num_features(self) -> int:
        return self.classifier.num_features

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.classifier.input_size

    @property
    def device(self) -> torch.device:
        return self.classifier.device

    def phi_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``phi [N, D]`` and the FIXED logits ``[N, K]`` of images ``x [N, 3, H, W]`` in ``[0, 1]``."""
        phi, logits = self.classifier.phi_and_logits(x)
        return phi, self.head(phi, logits)

    def forward(self, x: Tensor) -> Tensor:
        """Fixed logits ``f~(x)`` [N, K] of images ``x`` [N, 3, H, W] in ``[0, 1]``."""
        return self.phi_and_logits(x)[1]

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}"


# ---------------------------------------------------------------------------- results


@dataclass
class FixResult:
    """Summary of a :func:`fix` / :func:`transfer` run.

    The attributes hold the per-class maps (``components``, and for a transfer ``matched_images``,
    ``condition_numbers``, ``skipped``); ``--json`` prints :meth:`to_dict`, which carries only
    counts and paths, so its size does not grow with the number of classes. The maps are in
    ``manifest`` (``components``, ``transfer.matched_images``/``condition_numbers``/``skipped``).
    """

    path: str
    manifest: str
    kind: str
    name: str
    model_spec: str
    model_fingerprint: str
    num_classes_fixed: int
    num_components: int
    components: dict[str, list[int]]
    source: JSONDict = field(default_factory=dict)
    matched_images: dict[str, int] = field(default_factory=dict)
    condition_numbers: dict[str, float | None] = field(default_factory=dict)  # None: rank-deficient U
    skipped: dict[str, list[JSONDict]] = field(default_factory=dict)  # transfer: class -> skipped components
    seconds: float = 0.0

    def to_dict(self) -> JSONDict:
        """What ``--json`` prints: scalars, counts and paths; the per-class maps stay in ``manifest``."""
        d: JSONDict = {"path": self.path, "manifest": self.manifest, "kind": self.kind, "name": self.name,
                       "model_spec": self.model_spec, "model_fingerprint": self.model_fingerprint,
                       "num_classes_fixed": self.num_classes_fixed, "num_components": self.num_components,
                       "source": self.source, "seconds": self.seconds}
        if self.kind == "transfer":
            n = list(self.matched_images.values())
            worst = self._worst_condition()
            d.update({"matched_images_min": min(n, default=0), "matched_images_max": max(n, default=0),
                      "worst_condition_number": None if worst == float("inf") else worst,
                      "num_skipped": sum(len(v) for v in self.skipped.values()),
                      "num_classes_not_fixed": len(self._unfixed())})
        return d

    def _worst_condition(self) -> float:
        """The largest condition number of ``U`` (inf when a ``U`` is rank deficient)."""
        return max((float("inf") if c is None else c for c in self.condition_numbers.values()), default=0.0)

    def _unfixed(self) -> list[str]:
        """Classes whose every listed component was skipped."""
        return sorted(set(self.skipped) - set(self.components), key=int)

    def summary_lines(self) -> list[str]:
        lines = [(f"{self.name}: {self.num_components} components of {self.num_classes_fixed} classes removed from "
                  f"{self.model_spec} -> {self.path}")]
        if self.matched_images:
            n = list(self.matched_images.values())
            lines.append(f"matched training images per class: {min(n)}..{max(n)}; worst condition number of U: "
                         f"{self._worst_condition():.3g}")
        if self.skipped:
            n_skipped = sum(len(v) for v in self.skipped.values())
            shown = ", ".join(f"class {k}: {[e['component'] for e in v]}" for k, v in list(self.skipped.items())[:5])
            lines.append(f"skipped {n_skipped} components without a direction to match (eigenvalue or matched "
                         f"direction ~0): {shown}{', ...' if len(self.skipped) > 5 else ''}")
            unfixed = self._unfixed()
            if unfixed:
                lines.append(f"not fixed (every listed component skipped): class{'es' if len(unfixed) > 1 else ''} "
                             + ", ".join(unfixed))
        return lines


def _prepare_out(out: Path, overwrite: bool, file: str = _FIX_FILE) -> None:
    target = out / file
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it, or "
                              "choose another --out directory")
    out.mkdir(parents=True, exist_ok=True)



def _write(head: FixHead, out: Path, args: JSONDict, extra: Mapping[str, np.ndarray] | None,
           result_extra: JSONDict, seconds0: float, file: str = _FIX_FILE) -> FixResult:
    path = head.save(out / file, extra)
    manifest = {**head._metadata(), "args": args, "file": file, "sha256": sha256_file(path)}
    write_json(out / "manifest.json", manifest)
    return FixResult(path=str(path), manifest=str(out / "manifest.json"), kind=head.kind, name=head.name,
                     model_spec=head.model_spec, model_fingerprint=head.model_fingerprint,
                     num_classes_fixed=len(head.classes), num_components=head.num_rows,
                     components={str(k): v for k, v in head.components.items()}, source=head.meta.get("source", {}),
                     seconds=round(time.perf_counter() - seconds0, 3), **result_extra)


def _check_precision(precision: str) -> torch.dtype:
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    return torch.float32 if precision == "float32" else torch.float64


def _short_spec(spec: str) -> str:
    """``demo:robust@/long/path/ckpt.pt`` -> ``demo:robust@ckpt.pt`` (for table labels)."""
    arch, sep, ckpt = spec.partition("@")
    return f"{arch}@{Path(ckpt).name}" if sep else spec


def _model_meta(ws: Workspace) -> JSONDict:
    return {"spec": ws.model_spec, "fingerprint": ws.model_fingerprint, "num_classes": ws.num_classes,
            "num_features": ws.num_features, "workspace": str(ws.root)}


# ---------------------------------------------------------------------------- plain SpuFix


def fix(
    workspace: str | os.PathLike[str],
    components: ComponentSource,
    *,
    out: str | os.PathLike[str] | None = None,
    precision: str = "float32",
    name: str | None = None,
    overwrite: bool = False,
) -> FixResult:
    """Plain SpuFix of the workspace's model: ``f~_k = f_k - sum_{l in S_k} max(alpha_l^k, 0)``.

    Builds the :class:`FixHead` from the workspace's neural PCA (``alpha = phi @ A.T - c`` per
    component, :meth:`~spurious.npca.ClassBasis.projection`, in float64) and writes
    ``OUT/spufix.safetensors`` + ``OUT/manifest.json`` (default ``OUT = WS/fix``).

    Args:
        workspace: a workspace with ``npca`` fitted.
        components: ``S_k`` per class: a component-set file, a mapping ``{class: [l, ...]}`` (class
            index or name; 0-based component indices by eigenvalue), or a :class:`ComponentSet`.
        out: artifact directory (default ``WS/fix``).
        precision: storage dtype of the head, ``float32`` (default) or ``float64``.
        name: label for tables (default ``"SpuFix"``).
        overwrite: replace an existing artifact in ``out``.

    Raises:
        FileNotFoundError: no workspace, no neural PCA, or no component file.
        ValueError: bad component set, unknown class, a class without neural PCA, a component index
            beyond the fitted ``L``, or bad ``precision``.
        IncompatibleArtifactError: the component set names another model's fingerprint.
        FileExistsError: an artifact exists in ``out`` and ``overwrite`` is false.
    """
    from spurious.npca import load_npca

    t0 = time.perf_counter()
    dtype = _check_precision(precision)
    ws = Workspace.open(workspace)
    comps = load_components(components)
    comps.check_model(ws.model_fingerprint, ws.model_spec, used_with=f"workspace {ws.root}")
    selected = comps.resolve(ws)
    pca = load_npca(ws.root)
    As, cs, cls, comp = [], [], [], []
    for k, ls in selected.items():
        if k not in pca:
            raise ValueError(f"class {k} ({ws.class_names[k]}) has no neural PCA components in {ws.npca_dir} "
                             f"(fitted classes: {len(pca.classes)}; classes with < 2 training images get none)")
        A, c = pca[k].projection(ls)
        As.append(A)
        cs.append(c)
        cls += [k] * len(ls)
        comp += ls
    out_dir = Path(out) if out is not None else ws.root / "fix"
    _prepare_out(out_dir, overwrite)
    meta = {"created": utc_now(), "package_version": __version__, "model": _model_meta(ws),
            "source": {"kind": "npca", "workspace": str(ws.root), "model_spec": ws.model_spec,
                       "model_fingerprint": ws.model_fingerprint, "npca_split": pca.manifest.get("split"),
                       "components_source": comps.source}}
    head = FixHead(np.concatenate(As), np.concatenate(cs), np.asarray(cls), np.asarray(comp),
                   num_classes=ws.num_classes, model_spec=ws.model_spec, model_fingerprint=ws.model_fingerprint,
                   name=name or "SpuFix", kind="plain", meta=meta, dtype=dtype)
    args = {"workspace": str(workspace), "components": comps.source, "precision": precision, "name": name}
    return _write(head, out_dir, args, None, {}, t0)


# ---------------------------------------------------------------------------- transfer


class ImportedAlphas:
    """Per-class training alphas imported from the published reference artifacts (see :func:`import_alphas`).

    ``alpha(k, components)`` returns the image ids and ``alpha_l^k`` of the class's training images.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"no imported alphas in {self.root} (no manifest.json); run "
                                    "`spurious fix import-alphas DIR --train TRAIN_DIR --out OUT` first")
        self.manifest = read_json(mpath)
        if self.manifest.get("format") != _ALPHAS_FORMAT:
            raise ValueError(f"{mpath} is not an imported-alphas manifest (format={self.manifest.get('format')!r})")
        self._entries = {int(e["class"]): e for e in self.manifest["classes"]}

    def to_dict(self) -> JSONDict:
        """The ``--json`` summary of ``spurious fix import-alphas``: folder, classes, images."""
        return {"out": str(self.root), "classes": len(self.classes),
                "images": sum(int(e["n"]) for e in self._entries.values())}

    def summary_lines(self) -> list[str]:
        """What ``spurious fix import-alphas`` prints."""
        d = self.to_dict()
        return [f"imported training alphas of {d['classes']} classes ({d['images']} images, keyed by image id) "
                f"-> {self.root}"]

    @property
    def classes(self) -> list[int]:
        return sorted(self._entries)

    @property
    def model_fingerprint(self) -> str | None:
        return self.manifest.get("model_fingerprint")

    @property
    def model_spec(self) -> str:
        return str(self.manifest.get("model_spec") or "reference alphas")

    def alpha(self, k: int, components: Sequence[int]) -> tuple[list[str], np.ndarray]:
        """Image ids [N_k] and ``alpha_l^k`` float64 [N_k, len(components)] of class ``k``.

        Raises:
            ValueError: class ``k`` was not imported, or a component index beyond the file's columns.
        """
        from safetensors import safe_open

        if k not in self._entries:
            raise ValueError(f"class {k} has no imported alphas in {self.root} (imported: {len(self._entries)} "
                             f"classes, e.g. {self.classes[:5]})")
        e = self._entries[k]
        with safe_open(str(self.root / e["file"]), framework="numpy") as fh:
            ids = json.loads(fh.metadata()["ids"])
            a = fh.get_tensor("alpha")
        comps = np.asarray(components, dtype=np.int64)
        if comps.size and (comps.min() < 0 or comps.max() >= a.shape[1]):
            raise ValueError(f"component index out of range for class {k}: the imported alphas have "
                             f"{a.shape[1]} components (valid 0..{a.shape[1] - 1}), got {comps.tolist()}")
        return ids, a[:, comps].astype(np.float64)

    def _spread(self, k: int, components: Sequence[int]) -> tuple[np.ndarray, float, str]:
        """Energy ``|alpha_l|^2 / max_j |alpha_j|^2`` over the file's columns (no eigenvalues here), its floor, its name."""
        _, a = self.alpha(k, range(self._entries[k]["n_components"]))
        energy = (a**2).sum(axis=0)
        top = float(energy.max()) if energy.size else 0.0
        ratio = energy[list(components)] / top if top > 0 else np.zeros(len(components))
        return ratio, _EIG_FLOOR, "|alpha_l|^2/max_j |alpha_j|^2"


def load_alphas(path: str | os.PathLike[str]) -> ImportedAlphas:
    """Open a directory written by :func:`import_alphas`."""
    return ImportedAlphas(path)


def import_alphas(alphas_dir: str | os.PathLike[str], train: str | os.PathLike[str],
                  out: str | os.PathLike[str], *, overwrite: bool = False) -> ImportedAlphas:
    """Import the published per-class training alphas ``spurious_alphas_train_<kkk>.pt``, keyed by image id.

    Each file holds a tensor ``[N_k, C]`` (``C >= max component + 1``) whose rows follow the sorted
    file order of class ``k``'s folder in the ImageNet training set. The rows are matched to that
    folder (listed with the same reader the feature store uses, so the ids are the same relative
    paths ``<wnid>/<file>``) and stored as ``OUT/class_KKKKK.safetensors`` (``alpha`` float32
    [N_k, C], the ids in the header) + ``OUT/manifest.json``. Files are read with
    ``torch.load(weights_only=True)`` (no pickled code is executed).

    Args:
        alphas_dir: folder holding the ``spurious_alphas_train_<kkk>.pt`` files.
        train: the training set (``imagenet:DIR`` or any dataset spec; labels give the class folders).
        out: output directory.
        overwrite: replace an existing import in ``out``.

    Raises:
        FileNotFoundError: no such folder, or no alpha files in it.
        ValueError: a file is not a 2-D tensor, or its row count differs from the class's image count.
        FileExistsError: ``out`` holds an import and ``overwrite`` is false.
    """
    from safetensors.numpy import save_file

    from spurious.datasets import open_dataset

    src = Path(alphas_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"alphas folder {src} does not exist")
    files = sorted((int(m.group(1)), p) for p in src.iterdir() if (m := _ALPHA_FILE_RE.match(p.name)))
    if not files:
        raise FileNotFoundError(f"no spurious_alphas_train_<kkk>.pt files in {src}")
    out_dir = Path(out)
    if (out_dir / "manifest.json").exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds imported alphas; pass overwrite=True (--overwrite)")
    ds = open_dataset(train)
    labels = np.asarray(ds.labels())
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for k, path in files:
        rows = np.flatnonzero(labels == k)
        t = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(t, Tensor) or t.ndim != 2:
            raise ValueError(f"{path} must hold one 2-D tensor [N_k, components], got "
                             f"{type(t).__name__}{'' if not isinstance(t, Tensor) else tuple(t.shape)}")
        if t.shape[0] != rows.size:
            raise ValueError(f"{path} has {t.shape[0]} rows but class {k} has {rows.size} images in {ds.spec}; "
                             "the alphas must come from the same training folder (rows in sorted file order)")
        ids = [ds.record(int(r)).id for r in rows]  # sorted by id: the sorted file order of the folder
        fname = f"class_{k:05d}.safetensors"
        with atomic_path(out_dir / fname) as tmp:
            save_file({"alpha": np.ascontiguousarray(t.detach().to(torch.float32).numpy())}, str(tmp),
                      metadata={"class": str(k), "ids": json.dumps(ids)})
        entries.append({"class": k, "file": fname, "n": int(t.shape[0]), "n_components": int(t.shape[1]),
                        "source_file": path.name})
    write_json(out_dir / "manifest.json", {
        "format": _ALPHAS_FORMAT, "version": _VERSION, "package_version": __version__, "created": utc_now(),
        "source": str(src), "train": ds.spec, "model_spec": "reference alphas", "model_fingerprint": None,
        "classes": entries})
    return ImportedAlphas(out_dir)


class _WorkspaceAlphas:
    """Training alphas of a source workspace (its npca split), by image id."""

    def __init__(self, ws: Workspace) -> None:
        from spurious.npca import load_npca

        self.ws = ws
        self.pca = load_npca(ws.root)
        self.split = str(self.pca.manifest.get("split", "train"))
        self.store = ws.feature_store(self.split)
        self.model_fingerprint: str | None = ws.model_fingerprint
        self.model_spec = ws.model_spec

    def alpha(self, k: int, components: Sequence[int]) -> tuple[list[str], np.ndarray]:
        if k not in self.pca:
            raise ValueError(f"class {k} has no neural PCA components in the source workspace {self.ws.root}")
        rows = self.store.rows_of_class(k)
        ids = self.store.ids
        a = self.pca[k].alpha(self.store.phi(rows).astype(np.float64), components)
        return [ids[r] for r in rows], np.asarray(a, dtype=np.float64)

    def _spread(self, k: int, components: Sequence[int]) -> tuple[np.ndarray, float, str]:
        """``lambda_l / lambda_1`` of the class, the floor below which it is ~0 for this npca precision, its name."""
        lam = self.pca[k].lam
        top = float(lam[0]) if lam.size else 0.0
        ratio = lam.astype(np.float64)[list(components)] / top if top > 0 else np.zeros(len(components))
        floor = max(_EIG_FLOOR, _EIG_FLOOR_EPS * float(np.finfo(lam.dtype).eps))
        return ratio, floor, "lambda_l/lambda_1"


def _open_source(source: str | os.PathLike[str] | ImportedAlphas,
                 ) -> tuple[ImportedAlphas | _WorkspaceAlphas, JSONDict]:
    if isinstance(source, ImportedAlphas):
        return source, {"kind": "alphas", "path": str(source.root), "model_spec": source.model_spec,
                        "model_fingerprint": source.model_fingerprint}
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a workspace path, an imported-alphas path or ImportedAlphas, got "
                        f"{type(source).__name__}")
    p = Path(source)
    mpath = p / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"transfer source {p} is neither a workspace nor imported alphas (no manifest.json)")
    fmt = read_json(mpath).get("format")
    if fmt == _ALPHAS_FORMAT:
        return _open_source(ImportedAlphas(p))
    src = _WorkspaceAlphas(Workspace.open(p))
    return src, {"kind": "workspace", "workspace": str(p), "model_spec": src.model_spec,
                 "model_fingerprint": src.model_fingerprint, "split": src.split}


def _matched_directions(alpha: np.ndarray, phi: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unnormalised matched directions of one class, in float64.

    Args:
        alpha: [n, m] source alphas of the matched training images; phi: [n, D'] target features;
        w: [D'] target weight row ``w'_k``.

    Returns:
        ``raw`` [D', m] ``= sum_i alpha_il (psi'_i - mu')``, its column norms ``|u_l|`` [m], and those
        relative to their Cauchy-Schwarz bound ``|alpha_l| |psi'|_F`` [m] (0 when the bound is 0).
    """
    raw = (phi - phi.mean(axis=0)).T @ alpha * w[:, None]
    norms = np.linalg.norm(raw, axis=0)
    bound = np.linalg.norm(alpha, axis=0) * float(np.linalg.norm(phi * w[None, :]))
    return raw, norms, np.divide(norms, bound, out=np.zeros_like(norms), where=bound > 0)


def _transfer_class(raw: np.ndarray, phi: np.ndarray, w: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Linear form of ``beta`` for one class from its matched directions (none of them ~0), in float64.

    Args:
        raw: [D', m] unnormalised matched directions (:func:`_matched_directions`); phi: [n, D'] target
            features of the matched images; w: [D'] target weight row ``w'_k``.

    Returns:
        ``B`` [m, D'], ``d`` [m] (``beta = phi' @ B.T - d``), the unit directions ``U`` [D', m] and
        the condition number of ``U`` (inf when rank deficient).
    """
    U = raw / np.linalg.norm(raw, axis=0)[None, :]
    P, s, Qt = np.linalg.svd(U, full_matrices=False)
    keep = s > max(float(s.max()), 1e-300) * 1e-12
    # fewer singular values than columns, or a zero one: rank deficient
    full = s.size == U.shape[1] and s.min() > 0
    cond = float(s.max() / s.min()) if full else float("inf")
    if cond > _COND_WARN and U.shape[1] > 1:
        warnings.warn(f"class {k}: the matched directions are nearly linearly dependent (condition number "
                      f"{cond:.3g}); the minimum-norm least-squares projection is used", stacklevel=4)
    pinv = (Qt[keep].T / s[keep][None, :]) @ P[:, keep].T  # [m, D'] = (U^T U)^{-1} U^T
    B = U.sum(axis=0)[:, None] * pinv * w[None, :]
    return B, B @ phi.mean(axis=0), U, cond


def _skip_noise_components(k: int, ls: Sequence[int], ratio: np.ndarray, floor: float, what: str,
                           norms: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, list[JSONDict]]:
    """Which components of class ``k`` have a direction to match (mask); the others, warned about and described."""
    skip = (ratio <= floor) | (rel <= _U_FLOOR)
    skipped = [{"component": int(ls[int(j)]), "ratio": float(ratio[j]), "ratio_of": what, "u_norm": float(norms[j]),
                "reason": "eigenvalue ~0" if ratio[j] <= floor else "matched direction ~0"}
               for j in np.flatnonzero(skip)]
    if skipped:
        figures = "; ".join(f"component {e['component']} ({e['reason']}): {what} = {e['ratio']:.3g}, |u| = "
                            f"{e['u_norm']:.3g} before normalisation" for e in skipped)
        tail = (f"; every listed component of class {k} is skipped, so class {k} is not fixed" if skip.all()
                else "")
        warnings.warn(f"class {k}: {len(skipped)} component(s) skipped, their matched direction would be rounding "
                      f"noise, not a feature ({figures}; ~0 means {what} <= {floor:.2g} or |u| <= {_U_FLOOR:g} "
                      f"|alpha_l| |psi'|){tail}", stacklevel=3)
    return ~skip, skipped


def transfer(
    source: str | os.PathLike[str] | ImportedAlphas,
    target: str | os.PathLike[str],
    components: ComponentSource,
    *,
    split: str = "train",
    out: str | os.PathLike[str] | None = None,
    precision: str = "float32",
    name: str | None = None,
    overwrite: bool = False,
) -> FixResult:
    """SpuFix transfer of the source model's spurious components to the target workspace's model.

    For every class ``k`` of the component set, over the training images labelled ``k`` that both
    sides hold (matched by image id, never by order): ``u_l = sum_i alpha_l^k(x_i)(psi'_k(x_i) -
    mu'_k)`` normalised, ``c = (U^T U)^{-1} U^T (psi'_k(x) - mu'_k)`` (computed with an SVD
    pseudo-inverse in float64; a warning when ``U`` is ill-conditioned), ``beta_j = c_j <1, u_j>``
    and ``g~_k = g_k - sum_j max(beta_j, 0)``. The head goes to ``OUT`` (default ``TARGET/fix``).

    A component without a direction to match is skipped with a warning that gives its figures and
    is listed in ``FixResult.skipped`` (and the artifact's ``transfer.skipped``): its eigenvalue is
    ~0, ``lambda_l <= max(1e-10, 16 eps) lambda_1`` (``eps`` of the source's npca precision; for
    imported alphas ``|alpha_l|^2 <= 1e-10 max_j |alpha_j|^2``), or its matched direction is ~0
    (``|u_l| <= 1e-12 |alpha_l| |psi'|_F`` before normalisation, e.g. ``w'_k = 0``). A class whose
    listed components are all skipped is not fixed (the warning says so).

    Args:
        source: a workspace with neural PCA and the features of its npca split, or imported
            reference alphas (:func:`import_alphas`).
        target: the workspace of the model to fix (features of ``split``; no npca needed).
        components: ``S_k`` per class, indices into the *source* model's components.
        split: the target's labelled training split.
        out, precision, name, overwrite: as in :func:`fix`.

    Raises:
        FileNotFoundError: missing workspace, features, npca of the source, or component file.
        ValueError: bad component set, unknown class or component, a class without source alphas,
            no shared image ids for a class, or every component skipped (nothing to transfer).
        IncompatibleArtifactError: the component set was made for another model than the source.
        FileExistsError: an artifact exists in ``out`` and ``overwrite`` is false.
    """
    t0 = time.perf_counter()
    dtype = _check_precision(precision)
    src, src_meta = _open_source(source)
    tws = Workspace.open(target)
    comps = load_components(components)
    if src.model_fingerprint is not None:
        comps.check_model(src.model_fingerprint, src.model_spec,
                          used_with=f"the transfer source {src_meta.get('workspace') or src_meta.get('path')}")
    selected = comps.resolve(tws)
    store = tws.feature_store(split)
    W, _ = tws.head()
    ids_t = store.ids
    Bs, ds, Us, cls, comp = [], [], [], [], []
    matched: dict[str, int] = {}
    conds: dict[str, float | None] = {}
    skipped: dict[str, list[JSONDict]] = {}
    partial = []
    for k, ls in selected.items():
        sids, alpha = src.alpha(k, ls)
        trows = store.rows_of_class(k)
        where = {ids_t[r]: r for r in trows}
        pairs = [(i, where[s]) for i, s in enumerate(sids) if s in where]
        if not pairs:
            ex_s = sids[0] if sids else "(none)"
            ex_t = ids_t[trows[0]] if trows.size else "(none)"
            raise ValueError(f"class {k}: the source and the target share no training image ids (source ids look "
                             f"like {ex_s!r}, target ids of class {k} like {ex_t!r}); the transfer needs the "
                             "features of the same training images in both workspaces")
        if len(pairs) < len(sids):
            partial.append((k, len(pairs), len(sids)))
        si = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
        ti = np.fromiter((p[1] for p in pairs), dtype=np.int64, count=len(pairs))
        order = np.argsort(ti, kind="stable")  # read the target store in row order
        si, ti = si[order], ti[order]
        phi = store.phi(ti).astype(np.float64)
        w = W[k].astype(np.float64)
        raw, norms, rel = _matched_directions(alpha[si], phi, w)
        ratio, floor, what = src._spread(k, ls)
        live, dropped = _skip_noise_components(k, ls, ratio, floor, what, norms, rel)
        matched[str(k)] = len(pairs)
        if dropped:
            skipped[str(k)] = dropped
        if not live.any():
            continue
        B, d, U, cond = _transfer_class(raw[:, live], phi, w, k)
        Bs.append(B)
        ds.append(d)
        Us.append(U.T)
        kept = [int(ls[j]) for j in np.flatnonzero(live)]
        cls += [k] * len(kept)
        comp += kept
        conds[str(k)] = cond if np.isfinite(cond) else None  # None: rank deficient (JSON has no infinity)
    if partial:
        k, got, total = partial[0]
        warnings.warn(f"{len(partial)} classes use only the training images found in both workspaces (e.g. class "
                      f"{k}: {got} of {total} source images)", stacklevel=2)
    if not Bs:
        raise ValueError(f"no component of {comps.source or 'the component set'} can be transferred: every one has "
                         "an eigenvalue or a matched direction of ~0 (see the warnings for the figures); choose "
                         "components with variance in the source model")
    out_dir = Path(out) if out is not None else tws.root / "fix"
    _prepare_out(out_dir, overwrite)
    meta = {"created": utc_now(), "package_version": __version__, "model": _model_meta(tws),
            "source": {**src_meta, "components_source": comps.source, "target_split": split},
            "transfer": {"matched_images": matched, "condition_numbers": conds, "skipped": skipped}}
    head = FixHead(np.concatenate(Bs), np.concatenate(ds), np.asarray(cls), np.asarray(comp),
                   num_classes=tws.num_classes, model_spec=tws.model_spec, model_fingerprint=tws.model_fingerprint,
                   name=name or f"SpuFix (transfer from {_short_spec(src_meta['model_spec'])})", kind="transfer",
                   meta=meta, dtype=dtype)
    args = {"source": str(source if not isinstance(source, ImportedAlphas) else source.root), "target": str(target),
            "components": comps.source, "split": split, "precision": precision, "name": name}
    extra = {"u": np.concatenate(Us).astype(np.dtype(precision))}
    return _write(head, out_dir, args, extra, {"matched_images": matched, "condition_numbers": conds,
                                                "skipped": skipped}, t0)


# ---------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    """Summary of :func:`export`: the file, its format, and the check against the wrapper."""

    path: str
    format: str
    max_abs_diff: float | None
    verified_with: str | None
    seconds: float
    fix_name: str = ""
    model_spec: str = ""

    def to_dict(self) -> JSONDict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """What the CLI prints."""
        diff = ("not checked (install onnxruntime)" if self.max_abs_diff is None
                else f"max |logit difference| {self.max_abs_diff:.2e} ({self.verified_with})")
        return [f"exported {self.fix_name} of {self.model_spec} as {self.format} -> {self.path}", f"check: {diff}"]


def export(fixed: SpuFix, path: str | os.PathLike[str], format: Literal["torchscript", "onnx"] = "torchscript",
           *, batch_size: int = 2, opset: int = 17, verify: bool = True) -> ExportResult:
    """Export the fixed model so that it runs without this package: images in ``[0, 1]`` -> fixed logits.

    ``torchscript``: a traced module (``torch.jit.load(path)(x)``), with the fix metadata as the
    extra file ``spurious_fix.json``. ``onnx``: input ``images`` [N, 3, H, W] float in ``[0, 1]``,
    output ``logits`` [N, K], dynamic batch size (legacy TorchScript-based exporter; needs the
    ``onnx`` package). The normalisation is inside the export. Traced in the model's dtype on its
    device, in eval mode (the caller's train/eval state is restored).

    Args:
        fixed: the :class:`SpuFix` model.
        path: output file (written atomically).
        format: ``torchscript`` or ``onnx``.
        batch_size: batch size of the tracing example (the export accepts any batch size).
        opset: ONNX opset (>= 16 for the scatter-add with repeated indices).
        verify: reload the export and compare with the wrapper on a batch of another size
            (ONNX: only when ``onnxruntime`` is installed).

    Returns:
        :class:`ExportResult` with the largest absolute logit difference of the check.

    Raises:
        TypeError: ``fixed`` is not a :class:`SpuFix`.
        ValueError: unknown ``format`` or ``opset`` < 16.
        ImportError: ONNX export without the ``onnx`` package.
    """
    if not isinstance(fixed, SpuFix):
        raise TypeError(f"fixed must be a SpuFix (SpuFix(classifier, load_fix(...))), got {type(fixed).__name__}")
    if format not in _EXPORT_FORMATS:
        raise ValueError(f"format must be one of {_EXPORT_FORMATS}, got {format!r}")
    if format == "onnx" and int(opset) < 16:
        raise ValueError(f"opset must be >= 16 (ScatterElements with reduction='add'), got {opset}")
    t0 = time.perf_counter()
    path = Path(path)
    dev = fixed.device
    dtype = next((p.dtype for p in fixed.classifier.parameters() if p.is_floating_point()), torch.float32)
    gen = torch.Generator().manual_seed(0)
    example = torch.rand((batch_size, *fixed.input_size), generator=gen).to(dev, dtype)
    was_training = fixed.training
    fixed.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")  # TorchScript still works
            meta = json.dumps(fixed.head._metadata(), sort_keys=True)
            if format == "torchscript":
                traced = torch.jit.trace(fixed, example, check_trace=False)
                with atomic_path(path) as tmp:
                    torch.jit.save(traced, str(tmp), _extra_files={"spurious_fix.json": meta})
            else:
                try:
                    import onnx
                except ImportError as err:
                    raise ImportError("ONNX export needs the onnx package: pip install onnx onnxruntime") from err
                with atomic_path(path) as tmp:
                    torch.onnx.export(fixed, (example,), str(tmp), dynamo=False, input_names=["images"],
                                      output_names=["logits"], opset_version=int(opset),
                                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
                    model = onnx.load(str(tmp))
                    onnx.helper.set_model_props(model, {"spurious_fix": meta, "spec": fixed.spec})
                    onnx.save(model, str(tmp))
            diff, how = _verify_export(fixed, path, format, example.dtype, dev) if verify else (None, None)
    finally:
        fixed.train(was_training)
    if diff is not None:
        ref = 1e-4 if example.dtype == torch.float64 else 1e-3
        if diff > ref:
            warnings.warn(f"the exported model differs from the wrapper by up to {diff:.3g} in the logits",
                          stacklevel=2)
    return ExportResult(path=str(path), format=format, max_abs_diff=diff, verified_with=how,
                        seconds=round(time.perf_counter() - t0, 3), fix_name=fixed.head.name,
                        model_spec=fixed.head.model_spec)


def export_fix(
    workspace: str | os.PathLike[str],
    *,
    format: Literal["torchscript", "onnx"],
    out: str | os.PathLike[str] | None = None,
    fix_path: str | os.PathLike[str] | None = None,
    model: str | None = None,
    device: str | torch.device | None = "cpu",
    preprocessing: Mapping[str, object] | None = None,
    model_config: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export the SpuFix of a workspace (``spurious fix export``): :func:`load_fix`, the model, :func:`export`.

    The model is the workspace's own, reloaded with the preprocessing recorded at extraction, when the
    fix was made for it and no ``model`` is given; else ``model`` (default: the fix's model spec)
    loaded with ``preprocessing`` and ``model_config`` (see :func:`spurious.models.load_model`).

    Args:
        workspace: the workspace (its ``fix/`` folder holds the fix unless ``fix_path`` says otherwise).
        format: ``torchscript`` or ``onnx``.
        out: the file to write; default ``WS/fix/spufix.pt`` (TorchScript) or ``WS/fix/spufix.onnx``.
        fix_path: the fix artifact (file or folder); default ``WS/fix``.
        model: model spec to load instead of the workspace's model or the fix's spec.
        device: device to load the model and trace on.
        preprocessing, model_config: what the model was trained with, for a model loaded by spec.
        overwrite: replace an existing ``out``.

    Returns:
        :class:`ExportResult` of :func:`export`.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is false (checked before the model is loaded).
        ValueError: unknown ``format``.
    """
    from spurious.models import load_model

    if format not in _EXPORT_FORMATS:
        raise ValueError(f"format must be one of {_EXPORT_FORMATS}, got {format!r}")
    ws = Path(workspace)
    head = load_fix(ws if fix_path is None else fix_path)
    path = Path(out) if out else ws / "fix" / ("spufix.pt" if format == "torchscript" else "spufix.onnx")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    own = _open_workspace(ws) if model is None else None
    if own is not None and own.model_fingerprint == head.model_fingerprint:
        clf = own.load_model(device=device)  # with the preprocessing it was recorded with
    else:
        clf = load_model(model or head.model_spec, device=device, preprocessing=preprocessing, config=model_config)
    return export(SpuFix(clf, head), path, format)


def _open_workspace(path: Path) -> Workspace | None:
    """The workspace at ``path``, or ``None`` when ``path`` is none (e.g. a folder holding only a fix)."""
    manifest = path / "manifest.json"
    if not (manifest.is_file() and read_json(manifest).get("format") == "spurious-workspace"):
        return None
    return Workspace.open(path)


def _verify_export(fixed: SpuFix, path: Path, format: str, dtype: torch.dtype, dev: torch.device
                   ) -> tuple[float | None, str | None]:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((3, *fixed.input_size), generator=gen).to(dev, dtype)
    want = fixed(x)
    if format == "torchscript":
        got = torch.jit.load(str(path), map_location=dev)(x)
        return float((got - want).abs().max()), "torch.jit.load"
    try:
        import onnxruntime as ort
    except ImportError:
        log.info("onnxruntime is not installed; the ONNX export was not checked")
        return None, None
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"images": x.cpu().numpy()})[0]
    except Exception as err:  # onnxruntime's own error types, e.g. no float64 kernel for an operator
        warnings.warn(f"onnxruntime cannot run the export here, so it was not checked ({err})", stacklevel=3)
        return None, None
    return float(np.abs(got - want.cpu().numpy()).max()), "onnxruntime"
