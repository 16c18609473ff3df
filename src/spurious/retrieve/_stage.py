"""The ``retrieve`` stage: :func:`retrieve` as a list of steps, its outputs, and resuming.

The steps: check the settings; resolve the workspace, neural PCA, components and pool; gather the
voters; write the plan (reuse a finished run with the same plan); the votes known before the scan;
score the pool (this rank's shards, with checkpoints); merge the ranks; shortlist the kept rows
(model voters classify only these); vote, apply the dependence test and keep the top ``N``; write
``candidates.jsonl``, the gallery and ``manifest.json`` (last).

Importing the package loads no torch: ``spurious._dist``, ``spurious.npca`` and the models are
imported where they are used.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spurious import __version__
from spurious._checks import int_at_least
from spurious._io import atomic_path, read_json, utc_now, write_json
from spurious.components import ComponentSet
from spurious.retrieve._gallery import write_gallery
from spurious.retrieve._pool import (
    aligned_top1,
    id_keys,
    ids_of_rows,
    pool_paths_resolver,
    resolve_pool,
    stored_top1,
    top1_and_gap,
)
from spurious.retrieve._rank import (
    DEFAULT_CHUNK_ROWS,
    TopK,
    load_state,
    save_state,
    scan,
    shard_table,
)
from spurious.retrieve._select import components_to_retrieve
from spurious.retrieve._voters import (
    ModelVotes,
    Voter,
    check_voter_workspace,
    voter_store,
)
from spurious.workspace import IncompatibleArtifactError, Workspace

if TYPE_CHECKING:
    import torch

    from spurious._dist import DistInfo
    from spurious.npca import NPCA
    from spurious.store import FeatureStore

__all__ = ["DEPENDENCE_TESTS", "RetrieveResult", "load_candidates", "retrieve"]

_FORMAT = "spurious-retrieve"
_VERSION = 1
DEPENDENCE_TESTS = ("none", "flip")
"""Values of ``retrieve(dependence=...)``: no test (the paper), or the prediction must flip without the component."""


@dataclass
class RetrieveResult:
    """Summary of a ``retrieve`` run; ``--json`` prints :meth:`to_dict` (counts and paths).

    Attributes:
        path: the ``WS/retrieve`` folder.
        pool: the pool's feature store; ``pool_rows``: its number of images.
        components: selected ``(k, l)`` pairs; ``source``: where the selection came from.
        voters: voter names; ``min_votes``: ``m``; ``top_n``: ``N``.
        candidates: candidates written, ``per_component``: ``"k/l" -> count``.
        short: components with fewer than ``top_n`` agreed candidates.
        dependence, dependence_margin: the dependence test applied (see :func:`retrieve`).
        reused: a finished run with the same plan was found; ``resumed_rows``: rows skipped thanks
            to a checkpoint.
        rank_seconds / images_per_second: the streamed ranking.
        gallery: the gallery's index page (``None`` without one).

    ``manifest.json`` holds every attribute under ``result`` (``per_component``, ``short``); the
    ``--json`` summary (:meth:`to_dict`) carries their sizes and the file's path instead, so it does
    not grow with the number of components.
    """

    path: str
    pool: str
    pool_rows: int
    components: int
    source: str
    voters: list[str]
    min_votes: int
    top_n: int
    candidates: int
    per_component: dict[str, int] = field(default_factory=dict)
    short: list[str] = field(default_factory=list)
    reused: bool = False
    resumed_rows: int = 0
    rank_seconds: float = 0.0
    images_per_second: float = 0.0
    seconds: float = 0.0
    gallery: str | None = None
    complete: bool = True
    dependence: str = "none"
    dependence_margin: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """What ``--json`` prints: every scalar, ``num_short``, and the paths of the full record."""
        d = {k: v for k, v in asdict(self).items() if k not in ("per_component", "short")}
        return {**d, "num_short": len(self.short), "candidates_file": str(Path(self.path) / "candidates.jsonl"),
                "manifest": str(Path(self.path) / "manifest.json")}

    def summary_lines(self) -> list[str]:
        lines = [f"retrieve: {self.candidates} candidates for {self.components} components ({self.source}) "
                 f"from {self.pool_rows} pool images -> {self.path}/candidates.jsonl",
                 f"agreement: >= {self.min_votes} of {len(self.voters)} voters ({', '.join(self.voters)}); "
                 f"{_dependence_text(self.dependence, self.dependence_margin)}; top {self.top_n} per component"]
        if self.reused:
            lines.append("reused a finished run with the same plan")
        else:
            lines.append(f"ranked in {self.rank_seconds:.1f} s ({self.images_per_second:.0f} images/s)"
                         + (f", resumed after {self.resumed_rows} rows" if self.resumed_rows else ""))
        if self.short:
            lines.append(f"{len(self.short)} components have fewer than {self.top_n} agreed candidates: "
                         + ", ".join(self.short[:10]))
        if self.gallery:
            lines.append(f"gallery: {self.gallery}")
        return lines


def retrieve(
    workspace: str | os.PathLike[str],
    *,
    pool: str | os.PathLike[str] = "pool",
    pool_split: str = "pool",
    components: Mapping[int | str, Sequence[int]] | str | os.PathLike[str] | ComponentSet | None = None,
    classes: Sequence[int | str] | None = None,
    top_components: int | None = None,
    agree: Sequence[str | os.PathLike[str]] = (),
    agree_models: Sequence[str] = (),
    self_vote: bool = True,
    min_votes: int = 2,
    dependence: str = "none",
    dependence_margin: float = 0.0,
    top_n: int = 625,
    oversample: int = 4,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    device: str | torch.device | None = "auto",
    batch_size: int | None = None,
    num_workers: int | None = None,
    gallery: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    checkpoint_seconds: float = 60.0,
) -> RetrieveResult:
    """Rank the pool by ``alpha_l^k`` for every selected component and keep the agreed top ``top_n``.

    Args:
        workspace: workspace with neural PCA (``spurious npca``).
        pool: a feature split of ``workspace`` (default ``"pool"``) or another workspace directory of
            the same model, whose split ``pool_split`` is used.
        components, classes, top_components: which ``(k, l)``; see :func:`components_to_retrieve`.
        agree: other workspaces that extracted the same pool images (voters; matched by image id).
        agree_models: model specs run on the shortlisted pool images (voters; cached by image id).
        self_vote: the workspace's own model is a voter (default).
        dependence: ``"none"`` (default: the paper's plain ranking) or ``"flip"``: keep a candidate
            for ``(k, l)`` only when the workspace model's prediction of ``k`` depends on that
            component: ``k`` is its top-1 class and
            ``f_k(x) - max(alpha_l^k(x), 0) < max_{j != k} f_j(x) + dependence_margin``, i.e. removing
            the component's positive part (SpuFix for ``S_k = {l}``) flips the prediction. Uses the
            logits ``extract`` stored (top-k with k >= 2); independent of the voters.
        dependence_margin: logits added to the runner-up in the ``flip`` test (0: a strict flip;
            larger values also keep candidates that the removal brings within this many logits of
            flipping).
        min_votes: ``m``: a candidate needs at least ``m`` voters predicting its class (default 2).
        top_n: ``N``: candidates kept per component (default 625, the curate queue).
        oversample: shortlist ``top_n * oversample`` per component for ``agree_models`` voters.
        chunk_rows: pool rows per matrix product (memory ~ ``chunk_rows * D * 4 B * 3``).
        device: where ``agree_models`` run (``auto``/``cpu``/``cuda``); ranking runs on the CPU.
        batch_size, num_workers: for ``agree_models`` (default 64 on GPU / 16 on CPU; CPUs up to 8).
        gallery: write the HTML gallery.
        overwrite: replace a retrieval made with another plan.
        progress: progress bars on stderr.
        checkpoint_seconds: save the running state at most this often (resume after a kill).

    Returns:
        A :class:`RetrieveResult`; ``complete`` is False on non-zero torchrun ranks.

    Raises:
        FileNotFoundError: no workspace, no neural PCA, or no pool features.
        ValueError: bad counts, no components, fewer than ``min_votes`` voters, a voter with another
            class space, or a voter that is the workspace's own model.
        IncompatibleArtifactError: the pool was extracted with another model, or ``WS/retrieve``
            holds a run with another plan (without ``overwrite``).
    """
    from spurious._dist import barrier, init_distributed, on_main_rank
    from spurious.npca import load_npca

    t0 = time.perf_counter()
    settings = _check_settings(min_votes=min_votes, top_n=top_n, dependence=dependence,
                               dependence_margin=dependence_margin, oversample=oversample, chunk_rows=chunk_rows)
    ws = Workspace.open(workspace)
    pca = load_npca(ws.root)
    sel, source = components_to_retrieve(ws, components=components, classes=classes, top_components=top_components)
    store = resolve_pool(ws, pool, pool_split)
    info = init_distributed(_cpu())
    voters = _gather_voters(ws, store, self_vote=self_vote, agree=agree, agree_models=agree_models,
                            min_votes=settings.min_votes, device=device, batch_size=batch_size,
                            num_workers=num_workers)
    run = _Run(ws=ws, pca=pca, store=store, sel=sel, source=source, voters=voters, settings=settings, info=info,
               out=ws.root / "retrieve")
    plan = _plan(run)
    on_main_rank(lambda: _prepare_out(run.out, plan, overwrite))
    if (run.out / "manifest.json").is_file():
        return _reused_result(run.out)

    votes = _precomputed_votes(run)
    scanned = _score_pool(run, votes, progress=progress, checkpoint_seconds=checkpoint_seconds)
    barrier()
    if not info.is_main:
        return RetrieveResult(str(run.out), str(store.path), len(store), len(run.pairs), source, voters.names(),
                              settings.min_votes, settings.top_n, 0, complete=False)
    rows = _merge_ranks(run, scanned.top)
    shortlist = _shortlist(run, rows, progress=progress)
    records, per_component, short = _vote_and_keep(run, rows, votes, shortlist)
    if run.lazy and short:
        warnings.warn(f"{len(short)} components have fewer than {settings.top_n} agreed candidates among their "
                      f"shortlist of {run.keep}; a larger oversample (now {settings.oversample}) may find more",
                      stacklevel=2)
    _write_candidates(run.out, records)
    if gallery:
        write_gallery(run.out / "gallery", ws, sel, records, per_component, voters.all, settings.min_votes,
                      _dependence_text(settings.dependence, settings.dependence_margin))
    seconds = time.perf_counter() - t0
    result = RetrieveResult(
        path=str(run.out), pool=str(store.path), pool_rows=len(store), components=len(run.pairs), source=source,
        voters=voters.names(), min_votes=settings.min_votes, top_n=settings.top_n, candidates=len(records),
        per_component=per_component, short=short, reused=False, resumed_rows=scanned.resumed_rows,
        rank_seconds=round(scanned.seconds, 3),
        images_per_second=round(scanned.rows / max(scanned.seconds, 1e-9), 1),
        seconds=round(seconds, 3), gallery=str(run.out / "gallery" / "index.html") if gallery else None,
        dependence=settings.dependence, dependence_margin=settings.dependence_margin)
    _write_manifest(run, plan, result, args={"pool": os.fspath(pool), "pool_split": pool_split,
                                             "self_vote": self_vote, "oversample": settings.oversample,
                                             "chunk_rows": settings.chunk_rows})
    return result


def load_candidates(workspace: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The candidates of a finished retrieval, in file order (class, component, rank).

    Each dict has ``class``, ``component``, ``rank``, ``id``, ``path``, ``alpha``, ``votes``, ``models``.

    Raises:
        FileNotFoundError: the workspace has no finished retrieval.
    """
    ws = Workspace.open(workspace)
    out = ws.root / "retrieve"
    if not (out / "manifest.json").is_file():
        raise FileNotFoundError(f"no finished retrieval in {ws.root}; run `spurious retrieve {ws.root}` first")
    with open(out / "candidates.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# ---------------------------------------------------------------------------- the steps


@dataclass(frozen=True)
class _Settings:
    """The checked counts and dependence test of one run (see :func:`retrieve`)."""

    min_votes: int
    top_n: int
    oversample: int
    chunk_rows: int
    dependence: str
    dependence_margin: float


def _check_settings(*, min_votes: object, top_n: object, dependence: str, dependence_margin: object,
                    oversample: object, chunk_rows: object) -> _Settings:
    """Step 1: the counts are integers >= 1, the dependence test is known and its margin a finite number."""
    min_votes = int_at_least("min_votes", min_votes, 1)
    top_n = int_at_least("top_n", top_n, 1)
    if dependence not in DEPENDENCE_TESTS:
        raise ValueError(f"dependence must be one of {', '.join(map(repr, DEPENDENCE_TESTS))}, got {dependence!r}")
    if isinstance(dependence_margin, bool) or not isinstance(dependence_margin, (int, float, np.integer, np.floating)) \
            or not np.isfinite(dependence_margin):
        raise ValueError(f"dependence_margin must be a finite number of logits, got {dependence_margin!r}")
    margin = float(dependence_margin)
    if dependence == "none" and margin != 0.0:
        raise ValueError("dependence_margin only applies with dependence='flip' (--dependence flip)")
    return _Settings(min_votes=min_votes, top_n=top_n, oversample=int_at_least("oversample", oversample, 1),
                     chunk_rows=int_at_least("chunk_rows", chunk_rows, 1), dependence=dependence,
                     dependence_margin=margin)


@dataclass
class _Voters:
    """Who votes, in vote order: ``self``, the other workspaces, then the models run here.

    Attributes:
        all: every voter.
        self_vote: the first voter is the workspace's own model.
        stores: the pool's features in each voter workspace (their order among ``all``).
        models: the model voters (the last ones in ``all``).
    """

    all: list[Voter]
    self_vote: bool
    stores: list[FeatureStore]
    models: list[ModelVotes]

    def names(self) -> list[str]:
        return [v.name for v in self.all]


def _gather_voters(ws: Workspace, store: FeatureStore, *, self_vote: bool, agree: Sequence[str | os.PathLike[str]],
                   agree_models: Sequence[str], min_votes: int, device: str | torch.device | None,
                   batch_size: int | None, num_workers: int | None) -> _Voters:
    """Step 2: the voters, each model once, at least ``min_votes`` of them; the model voters are loaded
    now, so that a bad spec fails before the long scan."""
    voters: list[Voter] = []
    if self_vote:
        voters.append(Voter("self", "self", ws.model_spec, ws.model_fingerprint, str(ws.root)))
    other_ws = []
    for path in agree:
        other = check_voter_workspace(ws, path)
        if other.model_fingerprint == ws.model_fingerprint:
            raise ValueError(
                f"voter workspace {path} ({Path(path) / 'manifest.json'}: model {other.model_spec!r}, fingerprint "
                f"{other.model_fingerprint}) has the model of workspace {ws.root} ({ws.model_spec!r}, fingerprint "
                f"{ws.model_fingerprint}), which is already the 'self' voter: pass workspaces of other models")
        other_ws.append(other)
        voters.append(Voter(str(path), "workspace", other.model_spec, other.model_fingerprint, str(other.root)))
    model_voters = []
    for spec in agree_models:
        mv = ModelVotes(spec, ws.root / "retrieve" / "votes", ws, device, batch_size, num_workers)
        if mv.fingerprint == ws.model_fingerprint:
            raise ValueError(
                f"voter model {mv.spec!r} (fingerprint {mv.fingerprint}) is the model of workspace {ws.root} "
                f"({ws.model_spec!r}, fingerprint {ws.model_fingerprint}), which is already the 'self' voter: "
                "pass models other than the workspace's own")
        model_voters.append(mv)
        voters.append(Voter(str(spec), "model", mv.spec, mv.fingerprint, str(mv.dir)))
    fps = [v.fingerprint for v in voters]
    if len(set(fps)) != len(fps):
        raise ValueError(f"the same model appears twice among the voters ({', '.join(v.name for v in voters)}); "
                         "each model votes once")
    if len(voters) < min_votes:
        raise ValueError(
            f"min_votes={min_votes} but only {len(voters)} voter(s) ({', '.join(v.name for v in voters) or 'none'}); "
            "add voters with --agree WS2 (a workspace of another model that extracted the same pool) or "
            "--agree-model SPEC, or lower --min-votes")
    return _Voters(all=voters, self_vote=self_vote, stores=[voter_store(o, store) for o in other_ws],
                   models=model_voters)


@dataclass
class _Run:
    """What one retrieval works on, resolved and checked before anything is written."""

    ws: Workspace
    pca: NPCA
    store: FeatureStore
    sel: dict[int, list[int]]
    source: str
    voters: _Voters
    settings: _Settings
    info: DistInfo
    out: Path

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """The selected ``(k, l)``, one per ranked direction, in (class, component) order."""
        return [(k, l) for k, comps in self.sel.items() for l in comps]

    @property
    def lazy(self) -> bool:
        """Model voters run on the shortlist (so the scan keeps ``top_n * oversample`` rows per component)."""
        return len(self.voters.models) > 0

    @property
    def keep(self) -> int:
        """Rows the scan keeps per component."""
        return self.settings.top_n * self.settings.oversample if self.lazy else self.settings.top_n


def _plan(run: _Run) -> dict[str, Any]:
    """Step 3: ``plan.json``, what the result depends on (a finished run with the same plan is reused)."""
    ws, store, voters, s = run.ws, run.store, run.voters, run.settings
    stores: list[FeatureStore | None] = [None] * int(voters.self_vote) + list(voters.stores)
    stores += [None] * len(voters.models)
    return {
        "format": _FORMAT, "version": _VERSION,
        "model": {"spec": ws.model_spec, "fingerprint": ws.model_fingerprint},
        "pool": {"store": str(store.path.resolve()), "data_fingerprint": store.data_fingerprint, "rows": len(store)},
        "components": {str(k): v for k, v in run.sel.items()},
        "voters": [{"kind": v.kind, "name": v.name, "fingerprint": v.fingerprint or None,
                    "data": st.data_fingerprint if st is not None else None}
                   for v, st in zip(voters.all, stores, strict=False)],
        "min_votes": s.min_votes, "top_n": s.top_n, "keep": run.keep,
        "dependence": {"test": s.dependence, "margin": s.dependence_margin},
    }


@dataclass
class _PoolVotes:
    """What is known per pool row before the scan.

    Attributes:
        top1: int32 [V_pre, N]: the top-1 class of each precomputed voter (``self`` and the voter
            workspaces, matched by image id; -1 where a workspace lacks the image).
        dep_top1, dep_gap: int32 [N] top-1 class and float32 [N] ``f_top1 - f_runner-up`` of the
            workspace's model, for the dependence test (``None`` without it).
    """

    top1: np.ndarray
    dep_top1: np.ndarray | None
    dep_gap: np.ndarray | None


def _precomputed_votes(run: _Run) -> _PoolVotes:
    """Step 4: the votes of the workspace's model and of the voter workspaces, aligned to pool rows by id."""
    store, voters = run.store, run.voters
    key_cache: list[np.ndarray] = []

    def pool_keys() -> np.ndarray:
        if not key_cache:
            key_cache.append(id_keys(store))
        return key_cache[0]

    dep_top1, dep_gap = top1_and_gap(store) if run.settings.dependence == "flip" else (None, None)
    pre_top1 = []
    if voters.self_vote:
        pre_top1.append(dep_top1 if dep_top1 is not None else stored_top1(store))
    for v, s in zip(voters.all[int(voters.self_vote):], voters.stores, strict=False):
        t1, matched = aligned_top1(store, s, pool_keys)
        if matched == 0:
            raise ValueError(f"voter workspace {v.name}: none of its {len(s)} images (split {s.path.name!r}) has "
                             f"an id of the pool {store.path}; it must extract the same pool images")
        if matched < len(store):
            warnings.warn(f"voter workspace {v.name} covers {matched} of {len(store)} pool images; it does not vote "
                          "on the others", stacklevel=3)
        pre_top1.append(t1)
    T = np.stack(pre_top1) if pre_top1 else np.zeros((0, len(store)), np.int32)  # [V_pre, N]
    return _PoolVotes(top1=T, dep_top1=dep_top1, dep_gap=dep_gap)


@dataclass
class _Scanned:
    """This rank's part of the ranking: the running top-``keep`` and how it was made."""

    top: TopK
    rows: int
    resumed_rows: int
    seconds: float


def _score_pool(run: _Run, votes: _PoolVotes, *, progress: bool, checkpoint_seconds: float) -> _Scanned:
    """Step 5: stream this rank's shards of the pool into a running top-``keep`` per component, saving
    a checkpoint at most every ``checkpoint_seconds`` (and resuming from one).

    A row is eligible for a component of class ``k`` only when it can still reach ``min_votes`` (the
    precomputed votes for ``k`` plus one per model voter) and, with the dependence test, when it
    passes its lenient float32 form (:func:`_lenient_dependence`).
    """
    store, info = run.store, run.info
    T = votes.top1
    need = run.settings.min_votes - len(run.voters.models)  # votes an image needs from the precomputed voters
    col_class = np.array([k for k, _ in run.pairs], dtype=np.int64)
    uniq, col_pos = np.unique(col_class, return_inverse=True)

    def eligible(rows: np.ndarray) -> np.ndarray:
        t = T[:, rows]  # [V_pre, n]
        votes = (t[None, :, :] == uniq[:, None, None]).sum(axis=1)  # [classes, n]
        return votes >= need

    A, c32 = _directions(run.pca, run.sel)
    shards = shard_table(store)
    positions = list(range(info.rank, len(shards), info.world_size))
    state_path = _state_path(run.out, info.rank, info.world_size)
    top = TopK(len(run.pairs), run.keep)
    start, resumed = load_state(state_path, top, shards, positions)
    last_save = [time.perf_counter()]

    def checkpoint(cursor: tuple[int, int], force: bool = False) -> None:
        if force or time.perf_counter() - last_save[0] >= checkpoint_seconds:
            save_state(state_path, top, cursor)
            last_save[0] = time.perf_counter()

    t_rank = time.perf_counter()
    scanned = scan(shards, positions, A, c32, top, store.dim, run.settings.chunk_rows,
                   eligible if need > 0 else None, col_pos, progress and info.is_main, start, checkpoint,
                   score_filter=_lenient_dependence(votes, col_class, run.settings.dependence_margin))
    checkpoint((len(positions), 0), force=True)
    return _Scanned(top=top, rows=scanned, resumed_rows=resumed, seconds=time.perf_counter() - t_rank)


def _directions(pca: NPCA, sel: dict[int, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``A`` [C, D] and ``c`` [C] with ``alpha_l^k = phi . A_i - c_i`` for every selected ``(k, l)``."""
    A_parts, c_parts = [], []
    for k, comps in sel.items():
        Ak, ck = pca[k].projection(comps)
        A_parts.append(Ak)
        c_parts.append(ck)
    return np.concatenate(A_parts).astype(np.float32), np.concatenate(c_parts).astype(np.float32)


def _lenient_dependence(votes: _PoolVotes, col_class: np.ndarray,
                        margin: float) -> Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None:
    """The dependence test on the float32 scores of the scan (``None`` without the test).

    Lenient by 1e-3 logits so that no row passing the exact float64 test (:func:`_vote_and_keep`)
    is lost; a lenient-only row costs a slot at worst.
    """
    dep_top1, dep_gap = votes.dep_top1, votes.dep_gap
    if dep_top1 is None or dep_gap is None:
        return None

    def dep_filter(scores: np.ndarray, rows: np.ndarray, first: int) -> np.ndarray:
        g = dep_gap[rows].astype(np.float32)
        cut = g - np.float32(margin) - np.float32(1e-3) * (1 + np.abs(g))
        ks = col_class[first:first + scores.shape[0], None]
        return (dep_top1[rows][None, :] == ks) & (np.maximum(scores, 0) > cut[None, :])

    return dep_filter


def _state_path(out: Path, rank: int, world_size: int) -> Path:
    return out / "state" / f"rank-{rank:05d}-of-{world_size:05d}.npz"


def _merge_ranks(run: _Run, top: TopK) -> np.ndarray:
    """Step 6 (rank 0): fold in the other ranks' final states; int64 [C, keep] rows, best first (-1: unfilled)."""
    for r in range(1, run.info.world_size):
        with np.load(_state_path(run.out, r, run.info.world_size)) as z:
            top.merge(z["values"], z["rows"])
    rows, _ = top.sorted()
    return rows


@dataclass
class _Shortlist:
    """The rows the scan kept, their image ids and files, and the model voters' predictions on them.

    Attributes:
        ids: image id of every shortlisted row.
        path_of: absolute file path of an image id (``None`` for a pool imported without files).
        model_top1: per model voter, the top-1 class of every shortlisted row (-1: unreadable).
    """

    ids: dict[int, str]
    path_of: Callable[[str], str | None]
    model_top1: list[dict[int, int]]


def _shortlist(run: _Run, rows: np.ndarray, *, progress: bool) -> _Shortlist:
    """Step 7: the shortlist; the model voters classify these images only (cached by id)."""
    store = run.store
    path_of = pool_paths_resolver(store)
    shortlist = np.unique(rows[rows >= 0])
    ids = ids_of_rows(store, shortlist)
    model_top1 = []
    if run.lazy:
        paths = [path_of(ids[r]) for r in shortlist.tolist()]
        files = [p for p in paths if p is not None]
        if len(files) < len(paths):
            raise ValueError(f"pool {store.path} was imported without image files; --agree-model needs the images")
        for mv in run.voters.models:
            preds = mv.predict([ids[r] for r in shortlist.tolist()], files, progress)
            model_top1.append({r: preds.get(ids[r], -1) for r in shortlist.tolist()})
    return _Shortlist(ids=ids, path_of=path_of, model_top1=model_top1)


def _vote_and_keep(run: _Run, rows: np.ndarray, votes: _PoolVotes,
                   shortlist: _Shortlist) -> tuple[list[dict[str, Any]], dict[str, int], list[str]]:
    """Step 8: per component, the exact float64 ``alpha`` of its kept rows (descending, ties by row),
    their votes, the exact dependence test, and the first ``top_n`` that pass.

    Returns:
        The candidate records (in (class, component, rank) order), the count per ``"k/l"``, and the
        components with fewer than ``top_n`` (``"k/l: count"``).
    """
    pca, store, s = run.pca, run.store, run.settings
    T = votes.top1
    records: list[dict[str, Any]] = []
    per_component: dict[str, int] = {}
    short: list[str] = []
    for j, (k, l) in enumerate(run.pairs):
        cand = rows[j][rows[j] >= 0]
        a = pca[k].alpha(store.phi(cand), [l])[:, 0] if cand.size else np.zeros(0)
        order = np.lexsort((cand, -a))
        cand, a = cand[order], a[order]
        n_votes = (T[:, cand] == k).sum(axis=0) if T.shape[0] else np.zeros(cand.size, np.int64)
        for lt in shortlist.model_top1:
            n_votes = n_votes + np.array([lt[int(r)] == k for r in cand], dtype=np.int64)
        ok = n_votes >= s.min_votes
        if votes.dep_top1 is not None and votes.dep_gap is not None:  # the exact test, on the float64 alpha
            ok &= (votes.dep_top1[cand] == k) & \
                (np.maximum(a, 0) > votes.dep_gap[cand].astype(np.float64) - s.dependence_margin)
        cand, a, n_votes = cand[ok][:s.top_n], a[ok][:s.top_n], n_votes[ok][:s.top_n]
        for rank, (r, av, nv) in enumerate(zip(cand.tolist(), a.tolist(), n_votes.tolist(), strict=False)):
            image_id = shortlist.ids[r]
            records.append({"class": k, "component": l, "rank": rank, "id": image_id,
                            "path": shortlist.path_of(image_id), "alpha": float(av), "votes": int(nv),
                            "models": len(run.voters.all)})
        per_component[f"{k}/{l}"] = int(cand.size)
        if cand.size < s.top_n:
            short.append(f"{k}/{l}: {cand.size}")
    return records, per_component, short


def _write_candidates(out: Path, records: list[dict[str, Any]]) -> None:
    """Step 9: ``candidates.jsonl``, one record per line."""
    with atomic_path(out / "candidates.jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")


def _write_manifest(run: _Run, plan: dict[str, Any], result: RetrieveResult, args: dict[str, Any]) -> None:
    """Step 10 (last): ``manifest.json`` marks the run as finished; the checkpoints go."""
    s = run.settings
    manifest = {
        "format": _FORMAT, "version": _VERSION, "package_version": __version__, "created": utc_now(),
        "model": plan["model"], "pool": {**plan["pool"], "spec": run.store.manifest["data"].get("spec")},
        "source": run.source, "components": plan["components"], "voters": [v.to_dict() for v in run.voters.all],
        "min_votes": s.min_votes, "top_n": s.top_n, "keep": run.keep, "dependence": plan["dependence"],
        "world_size": run.info.world_size,
        "args": args,
        "result": asdict(result),
    }
    write_json(run.out / "manifest.json", manifest)
    shutil.rmtree(run.out / "state", ignore_errors=True)


# ---------------------------------------------------------------------------- helpers


def _plan_mismatch(out: Path, old: dict[str, Any], new: dict[str, Any]) -> str:
    def model(plan: dict[str, Any]) -> str:
        m = plan.get("model") or {}
        return f"{m.get('spec')!r} (fingerprint {m.get('fingerprint')})"

    def pool(plan: dict[str, Any]) -> str:
        p = plan.get("pool") or {}
        return f"{p.get('store')} (data fingerprint {p.get('data_fingerprint')}, {p.get('rows')} rows)"

    full = {"model": model, "pool": pool}  # never cut: the fingerprints are what differs
    diffs = [f"{k}: {full[k](old)} vs {full[k](new)}" if k in full else
             f"{k}: {json.dumps(old.get(k))[:120]} vs {json.dumps(v)[:120]}" for k, v in new.items() if old.get(k) != v]
    return (f"{out} holds a retrieval made with another plan ({out / 'plan.json'}: "
            f"{'; '.join(diffs) or 'format'}); pass overwrite=True (--overwrite) to replace it")


def _prepare_out(out: Path, plan: dict[str, Any], overwrite: bool) -> None:
    """Like :func:`spurious.workspace.prepare_artifact_dir`, but the vote cache survives an overwrite."""
    plan_path = out / "plan.json"
    if plan_path.is_file():
        old = read_json(plan_path)
        if old == plan:
            return
        if not overwrite:
            raise IncompatibleArtifactError(_plan_mismatch(out, old, plan))
    elif out.exists() and any(p.name != "votes" for p in out.iterdir()) and not overwrite:
        raise IncompatibleArtifactError(f"{out} exists but holds no plan.json; pass overwrite=True (--overwrite)")
    if out.exists():
        for p in out.iterdir():
            if p.name == "votes":
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json(plan_path, plan)


def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")


def _reused_result(out: Path) -> RetrieveResult:
    fields = dict(read_json(out / "manifest.json")["result"])
    fields["reused"] = True
    return RetrieveResult(**fields)


def _dependence_text(test: str, margin: float) -> str:
    if test == "none":
        return "no dependence test"
    return "the prediction must flip without the component" + (f" (margin {margin:g} logits)" if margin else "")
