"""Build a spurious-feature benchmark from curated retrieval candidates (the Spurious ImageNet recipe).

Input: the images people accepted in the curate task of ``spurious label`` (at least ``min_agree``
labelers said *out*: the spurious feature is visible, the class object is not), read from
``WS/labels.sqlite`` (:meth:`spurious.label.store.LabelStore.accepted_images`), or an explicit list
of accepted candidates (``accept=FILE``: JSON lines or a JSON list of records with at least
``class``, ``component`` and ``id``; missing fields are taken from ``WS/retrieve/candidates.jsonl``).

Output: the published Spurious ImageNet layout, readable by
:func:`spurious.datasets.spurious_imagenet` (``spurious score`` uses it as the negatives)::

    OUT/<prefix>_<k>_<class-name>_<l>/00000.jpg ...   per (class, component): the first
                                                      ``per_component`` accepted images by rank
    OUT/manifest.json                                 provenance of every image: pool id, source
                                                      path, alpha, votes, labelers, sha256
    OUT/README.md                                     dataset card
    OUT/timestamp.txt                                 build time (the only non-deterministic file)

Folder names split on ``_`` give the class index as token 2 and the component as the last token
(class names are sanitised: no ``_``). The same input gives byte-identical files except
``timestamp.txt``. The folder is built next to ``OUT`` and renamed into place, so ``OUT`` is either
the old benchmark or the complete new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spurious import __version__
from spurious._checks import int_at_least
from spurious._io import JSONDict, make_temp_dir, read_json, sha256_file, utc_now
from spurious.workspace import IncompatibleArtifactError, Workspace

__all__ = ["BenchmarkResult", "benchmark_folder_name", "build_benchmark", "read_accepted"]

log = logging.getLogger(__name__)

_FORMAT = "spurious-benchmark"
_VERSION = 1
_PREFIX_RE = re.compile(r"^[A-Za-z0-9-]+_[A-Za-z0-9-]+$")
_DEFAULT_LICENSE = ("The images are copies of images of the source pool and keep that pool's licences (OpenImages: "
                    "each image has its own licence, mostly CC BY 2.0, listed in the OpenImages metadata). Check "
                    "them before redistributing this folder; this card grants no rights of its own.")


@dataclass
class BenchmarkResult:
    """Summary of a benchmark build (what ``--json`` prints).

    Attributes:
        out: the benchmark folder; ``source``: where the accepted images came from.
        components: (class, component) folders written; ``images``: images written.
        per_component: ``"k/l" -> images`` written; ``short``: components with fewer than
            ``per_component`` accepted images (``"k/l: n"``); ``skipped``: components with fewer
            than ``min_per_component`` (not written).
    """

    out: str
    source: str
    components: int
    images: int
    per_component: dict[str, int] = field(default_factory=dict)
    short: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> JSONDict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        lines = [f"benchmark: {self.images} images in {self.components} (class, component) folders -> {self.out}",
                 f"accepted images from {self.source}"]
        if self.short:
            lines.append(f"{len(self.short)} components have fewer images than asked: " + ", ".join(self.short[:10]))
        if self.skipped:
            lines.append(f"{len(self.skipped)} components skipped (too few accepted images): "
                         + ", ".join(self.skipped[:10]))
        return lines


def benchmark_folder_name(k: int, class_name: str, component: int, prefix: str = "spurious_imagenet") -> str:
    """Sub-folder name of ``(k, component)`` in the Spurious ImageNet layout.

    ``f"{prefix}_{k}_{name}_{component}"`` with every run of characters other than letters, digits
    and ``-`` in ``class_name`` replaced by ``-`` (so splitting on ``_`` gives ``k`` as token 2 and
    the component as the last token), e.g. ``spurious_imagenet_281_tabby-cat_3``.

    Raises:
        ValueError: ``prefix`` is not two ``_``-separated tokens, or ``k`` is outside 0..999 (the
            published format reserves token 2 for an ImageNet-1k-sized class index).
    """
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"prefix {prefix!r} must be two tokens joined by one '_' (letters, digits, '-'), "
                         "e.g. 'spurious_imagenet'")
    if not 0 <= int(k) < 1000:
        raise ValueError(f"class index {k} does not fit the Spurious ImageNet folder format (0..999)")
    if int(component) < 0:
        raise ValueError(f"component index must be >= 0, got {component}")
    name = re.sub(r"[^A-Za-z0-9-]+", "-", str(class_name)).strip("-") or "class"
    return f"{prefix}_{int(k)}_{name}_{int(component)}"


def _load_jsonl_or_json(path: Path) -> list[Any]:  # Any: the JSON values as read, checked by the caller
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
        return list(data)
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not JSON ({err.msg}); expected one JSON object per line") from None
    return out


def read_accepted(path: str | os.PathLike[str], workspace: str | os.PathLike[str] | None = None
                  ) -> dict[tuple[int, int], list[JSONDict]]:
    """Read an accepted-images file: ``(k, l) -> [record, ...]``.

    Each record needs ``class``, ``component`` and ``id``; fields it lacks (``path``, ``alpha``,
    ``votes``, ``models``, ``rank``) are filled from ``WS/retrieve/candidates.jsonl`` of
    ``workspace`` when given. ``labelers`` defaults to ``[]``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON lines / a JSON list, a record without ``class``/``component``/``id``, or
            (with a workspace) an id that is not a candidate of its component.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"accepted-images file {path} does not exist")
    known: dict[tuple[int, int, str], JSONDict] = {}
    if workspace is not None:
        cands = Path(workspace) / "retrieve" / "candidates.jsonl"
        if cands.is_file():
            for rec in _load_jsonl_or_json(cands):
                known[(int(rec["class"]), int(rec["component"]), str(rec["id"]))] = rec
    out: dict[tuple[int, int], list[JSONDict]] = {}
    for i, rec in enumerate(_load_jsonl_or_json(path)):
        if not isinstance(rec, Mapping) or any(key not in rec for key in ("class", "component", "id")):
            raise ValueError(f"{path}: record {i} must be an object with 'class', 'component' and 'id', got {rec!r}")
        key = (int(rec["class"]), int(rec["component"]), str(rec["id"]))
        base = known.get(key)
        if base is None and workspace is not None and "path" not in rec:
            raise ValueError(f"{path}: record {i}: image {key[2]!r} is not a retrieval candidate of class {key[0]}, "
                             f"component {key[1]} in {workspace}/retrieve/candidates.jsonl, and gives no 'path'")
        merged = {**(base or {}), **dict(rec)}
        merged.setdefault("labelers", [])
        out.setdefault((key[0], key[1]), []).append(merged)
    return out


def _order(records: list[JSONDict]) -> list[JSONDict]:
    """Deterministic order: by rank when known, else by alpha descending; ties by id."""
    def key(r: JSONDict) -> tuple[float, float, str]:
        rank = r.get("rank")
        alpha = r.get("alpha")
        return (float(rank) if rank is not None else float("inf"),
                -float(alpha) if alpha is not None else 0.0, str(r["id"]))

    seen: set[str] = set()
    out = []
    for r in sorted(records, key=key):
        if r["id"] not in seen:
            seen.add(r["id"])
            out.append(r)
    return out



def _retrieval_manifest(ws: Workspace) -> JSONDict | None:
    """``WS/retrieve/manifest.json`` (``None`` before a finished retrieval), checked against the workspace's model.

    Raises:
        IncompatibleArtifactError: the retrieval was made with another model than the workspace's.
    """
    path = ws.root / "retrieve" / "manifest.json"
    if not path.is_file():
        return None
    manifest = read_json(path)
    model = manifest.get("model") or {}
    fingerprint = model.get("fingerprint")
    if fingerprint is not None and fingerprint != ws.model_fingerprint:
        raise IncompatibleArtifactError(
            f"retrieval {path} was made with model {model.get('spec', '(spec not recorded)')!r} (fingerprint "
            f"{fingerprint}), but workspace {ws.root} has model {ws.model_spec!r} "
            f"(fingerprint {ws.model_fingerprint}); "
            f"its candidates are not this model's: re-run `spurious retrieve {ws.root} --overwrite` (and curate "
            "again), or build the benchmark from the workspace the retrieval was made in")
    return manifest


def _readme(manifest: JSONDict, license_text: str) -> str:
    comps = manifest["components"]
    retr = manifest.get("retrieve") or {}
    voters = ", ".join(v.get("spec", v.get("name", "?")) for v in retr.get("voters", [])) or "unknown"
    lines = [
        f"# {manifest['name']}",
        "",
        "Images that show a spurious feature of an image classifier's class *without* the class object. "
        "A model that predicts the class on them relies on the spurious feature.",
        "",
        "## How it was made",
        "",
        f"1. Class-wise neural PCA of the classifier `{manifest['model']['spec']}` (fingerprint "
        f"`{manifest['model']['fingerprint']}`) gave, per class k, components l whose value alpha_l^k(x) "
        "decomposes the class logit; people labelled the components that respond to a spurious feature.",
        f"2. The pool `{retr.get('pool', {}).get('spec', 'unknown')}` was ranked by alpha_l^k for each such "
        f"component; images that at least {retr.get('min_votes', '?')} of {len(retr.get('voters', [])) or '?'} "
        f"classifiers ({voters}) predict as class k were kept as candidates.",
        f"3. Curation: {manifest['source']}. An image is included when it shows the spurious feature and "
        "not the class object.",
        f"4. Per component the first {manifest['per_component']} accepted images by alpha rank were copied "
        "(fewer where fewer were accepted).",
        "",
        "## Layout",
        "",
        "One sub-folder per (class, component): split its name on `_`; token 2 is the class index, the last "
        "token the component index. `manifest.json` records, for every image, the pool id, the source path, "
        "alpha, the votes and the labelers. Read it with `spurious.datasets.spurious_imagenet(DIR, "
        "class_names=...)` or `spurious score --spurious DIR ...`.",
        "",
        "## Counts",
        "",
        f"{len(comps)} components of {len({c['class'] for c in comps})} classes, {manifest['num_images']} images.",
        "",
        "| class | name | component | images | accepted |",
        "|---:|---|---:|---:|---:|",
    ]
    for c in comps:
        lines.append(f"| {c['class']} | {c['name']} | {c['component']} | {c['images']} | {c['accepted']} |")
    lines += ["", "## Licence", "", license_text, "",
              f"Built with spurious {manifest['package_version']}; the build time is in `timestamp.txt`.", ""]
    return "\n".join(lines)


def build_benchmark(
    workspace: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    per_component: int = 75,
    accept: str | os.PathLike[str] | None = None,
    min_agree: int = 2,
    min_per_component: int = 1,
    prefix: str = "spurious_imagenet",
    name: str | None = None,
    license_text: str | None = None,
    link: bool = False,
    overwrite: bool = False,
) -> BenchmarkResult:
    """Write the accepted images of a workspace as a benchmark in the Spurious ImageNet layout.

    Args:
        workspace: the workspace whose candidates were curated.
        out: the benchmark folder to create.
        per_component: images per (class, component), the first ones by rank (default 75).
        accept: an accepted-images file (see :func:`read_accepted`) instead of the label store.
        min_agree: labelers who must have said *out* (label store only; default 2).
        min_per_component: components with fewer accepted images are left out (default 1).
        prefix: first two folder-name tokens (default ``spurious_imagenet``).
        name: dataset name in the README (default ``"Spurious benchmark of <model spec>"``).
        license_text: licence paragraph of the README (default: the images keep the pool's licences).
        link: hard-link the images instead of copying (falls back to a copy across file systems).
        overwrite: replace an existing ``out``.

    Returns:
        A :class:`BenchmarkResult`.

    Raises:
        FileNotFoundError: no workspace, no label store (and no ``accept``), or a missing image file.
        ValueError: bad counts or prefix, ``out`` exists (without ``overwrite``), nothing accepted, or a
            class index that does not fit the format.
        IncompatibleArtifactError: ``WS/retrieve`` was made with another model than the workspace's.
    """
    t0 = time.perf_counter()
    per_component = int_at_least("per_component", per_component, 1)
    min_per_component = int_at_least("min_per_component", min_per_component, 1)
    min_agree = int_at_least("min_agree", min_agree, 1)
    benchmark_folder_name(0, "x", 0, prefix)  # validates the prefix early
    ws = Workspace.open(workspace)
    m = _retrieval_manifest(ws)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; pick another --out or pass overwrite=True (--overwrite)")
    if accept is not None:
        accepted = read_accepted(accept, ws.root)
        source = f"accepted-images file {Path(accept).name}"
    else:
        if not (ws.root / "labels.sqlite").is_file():
            raise FileNotFoundError(f"{ws.root} has no label store (labels.sqlite); curate the retrieved "
                                    f"candidates with `spurious label {ws.root}` first, or pass an accepted-images "
                                    "file (--accept)")
        from spurious.label.store import LabelStore

        accepted = LabelStore(ws).accepted_images(min_agree=min_agree)
        source = f"label store: images at least {min_agree} labelers marked 'out' (feature visible, object absent)"
    if not accepted:
        raise ValueError(f"no accepted images ({source}); nothing to build")
    names = ws.class_names
    plan: list[tuple[int, int, str, list[JSONDict], int]] = []
    per: dict[str, int] = {}
    short, skipped = [], []
    for (k, l) in sorted(accepted):
        if not 0 <= k < len(names):
            raise ValueError(f"accepted image of class {k}, outside this model's classes 0..{len(names) - 1}")
        recs = _order(accepted[(k, l)])
        if len(recs) < min_per_component:
            skipped.append(f"{k}/{l}: {len(recs)}")
            continue
        chosen = recs[:per_component]
        for r in chosen:
            if not r.get("path"):
                raise FileNotFoundError(f"image {r['id']!r} of class {k}, component {l} has no file: the pool was "
                                        "imported without image files; give each accepted record a 'path' (--accept)")
            if not Path(r["path"]).is_file():
                raise FileNotFoundError(f"image {r['id']!r} of class {k}, component {l}: file {r.get('path')!r} does "
                                        "not exist (was the pool moved?)")
        plan.append((k, l, benchmark_folder_name(k, names[k], l, prefix), chosen, len(recs)))
        per[f"{k}/{l}"] = len(chosen)
        if len(chosen) < per_component:
            short.append(f"{k}/{l}: {len(chosen)}")
    if not plan:
        raise ValueError(f"no component has at least {min_per_component} accepted images ({source})")
    if short:
        warnings.warn(f"{len(short)} components have fewer than {per_component} accepted images: "
                      + ", ".join(short[:10]), stacklevel=2)

    retr = None
    if m is not None:
        retr = {"pool": m.get("pool"), "voters": m.get("voters"), "min_votes": m.get("min_votes"),
                "top_n": m.get("top_n"), "source": m.get("source")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, f".tmp-{out.name}.")  # 0777 & ~umask, as mkdir
    try:
        images, components = [], []
        for k, l, folder, chosen, n_acc in plan:
            (tmp / folder).mkdir()
            for j, r in enumerate(chosen):
                src = Path(r["path"])
                fname = f"{j:05d}{src.suffix.lower()}"
                dst = tmp / folder / fname
                if link:
                    try:
                        os.link(src, dst)
                    except OSError:
                        shutil.copyfile(src, dst)
                else:
                    shutil.copyfile(src, dst)
                images.append({"file": f"{folder}/{fname}", "class": k, "component": l, "id": r["id"],
                               "source_path": str(src), "rank": r.get("rank"), "alpha": r.get("alpha"),
                               "votes": r.get("votes"), "models": r.get("models"),
                               "labelers": sorted(r.get("labelers", [])), "sha256": sha256_file(dst)})
            components.append({"class": k, "name": names[k], "component": l, "folder": folder,
                               "images": len(chosen), "accepted": n_acc})
        manifest = {
            "format": _FORMAT, "version": _VERSION, "package_version": __version__,
            "name": name or f"Spurious benchmark of {ws.model_spec}",
            "model": {"spec": ws.model_spec, "fingerprint": ws.model_fingerprint},
            "class_names": names, "source": source, "per_component": per_component,
            "min_per_component": min_per_component, "prefix": prefix, "retrieve": retr,
            "num_images": len(images), "components": components, "images": images,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_readme(manifest, license_text or _DEFAULT_LICENSE), encoding="utf-8")
        (tmp / "timestamp.txt").write_text(utc_now() + "\n", encoding="utf-8")
        if out.exists():
            old = out.parent / f".old-{out.name}.{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return BenchmarkResult(out=str(out), source=source, components=len(plan), images=len(images),
                           per_component=per, short=short, skipped=skipped,
                           seconds=round(time.perf_counter() - t0, 3))
