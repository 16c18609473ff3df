"""``retrieve``: streamed ranking by alpha, classifier agreement by image id, resumption, errors.

Oracles: alpha from the stored features with :meth:`ClassBasis.alpha` (float64) and ``np.argsort``;
votes from ``argmax(phi @ W.T + b)`` of each voter's own features, looked up by image id.
"""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spurious.cli import main
from spurious.npca import load_npca, npca
from spurious.retrieve import components_to_retrieve, load_candidates, rank_pool, retrieve
from spurious.retrieve._rank import TopK as _TopK
from spurious.workspace import import_features
from spurious.workspace import IncompatibleArtifactError, Workspace

K, D, N_POOL = 4, 16, 230
NAMES = ["a_x", "b y", "c", "d"]


def _features(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return np.abs(rng.standard_normal((n, d))).astype(np.float32) * rng.uniform(0.5, 2.0, size=d).astype(np.float32)


def _head(rng: np.random.Generator, k: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal((k, d)).astype(np.float32), rng.standard_normal(k).astype(np.float32) * 0.1


class Synth:
    """A workspace of a synthetic model (train + an unsorted pool) and two voter workspaces."""

    def __init__(self, root: Path) -> None:
        rng = np.random.default_rng(0)
        self.root = root
        self.W, b0 = _head(rng, K, D)
        tr = _features(rng, 40 * K, D)
        self.ids = [f"p/{i:04d}.png" for i in rng.permutation(N_POOL)]  # rows not in id order
        self.phi = _features(rng, N_POOL, D)
        # every class is top-1 on part of the pool, and the top-2 margins are comparable to alpha
        self.b = (b0 - np.median(self.phi @ self.W.T, axis=0)).astype(np.float32)
        self.ws = root / "ws"
        Workspace.create_from_head(self.ws, self.W, self.b, spec="synth:a", class_names=NAMES)
        import_features(self.ws, tr, np.repeat(np.arange(K), 40), [f"t/{i:04d}" for i in range(40 * K)])
        npca(self.ws, n_components=6, device="cpu", progress=False)
        import_features(self.ws, self.phi, np.full(N_POOL, -1), self.ids, split="pool", shard_size=64)
        # voter 1: another model (D = 12) on the same images, stored in another row order
        self.W2, self.b2 = _head(rng, K, 12)
        self.ws2 = root / "ws2"
        Workspace.create_from_head(self.ws2, self.W2, self.b2, spec="synth:b", class_names=NAMES)
        perm = rng.permutation(N_POOL)
        phi2 = _features(rng, N_POOL, 12)
        import_features(self.ws2, phi2[perm], np.full(N_POOL, -1), [self.ids[i] for i in perm], split="pool",
                        shard_size=50)
        self.vote2 = {self.ids[i]: int(np.argmax(phi2[i] @ self.W2.T + self.b2)) for i in range(N_POOL)}
        # voter 2: a third model that saw only the first half of the pool images
        W3, b3 = _head(rng, K, 10)
        self.ws3 = root / "ws3"
        Workspace.create_from_head(self.ws3, W3, b3, spec="synth:c", class_names=NAMES)
        phi3 = _features(rng, N_POOL // 2, 10)
        import_features(self.ws3, phi3, np.full(N_POOL // 2, -1), self.ids[: N_POOL // 2], split="pool")
        self.vote3 = {self.ids[i]: int(np.argmax(phi3[i] @ W3.T + b3)) for i in range(N_POOL // 2)}
        self.vote_self = {i: int(np.argmax(p @ self.W.T + self.b)) for i, p in zip(self.ids, self.phi)}

    def oracle(self, k: int, l: int, voters: list[dict[str, int]], m: int, top: int,
               flip_margin: float | None = None) -> list[tuple[str, float, int]]:
        """Top ``top`` by alpha among the images ``m`` voters give to ``k``; with ``flip_margin``, also
        only those the workspace model predicts as ``k`` with ``f_k - max(alpha, 0) < f_runner-up + margin``
        (logits in float64 from the features the head saw)."""
        store = Workspace.open(self.ws).feature_store("pool")
        alpha = load_npca(self.ws)[k].alpha(store.phi(), [l])[:, 0]
        ids = store.ids
        votes = np.array([sum(v.get(i, -1) == k for v in voters) for i in ids])
        ok = votes >= m
        if flip_margin is not None:
            f = self.phi.astype(np.float64) @ self.W.T.astype(np.float64) + self.b  # rows in self.ids order
            f = f[[self.ids.index(i) for i in ids]]
            second = np.sort(f, axis=1)[:, -2]
            ok &= (f.argmax(1) == k) & (f[:, k] - np.maximum(alpha, 0) < second + flip_margin)
        order = [r for r in np.argsort(-alpha, kind="stable") if ok[r]][:top]
        return [(ids[r], float(alpha[r]), int(votes[r])) for r in order]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return Synth(tmp_path_factory.mktemp("retrieve"))


@pytest.fixture
def fresh(synth: Synth) -> Synth:
    """The module workspace without a retrieve folder."""
    import shutil

    shutil.rmtree(synth.ws / "retrieve", ignore_errors=True)
    return synth


def _got(ws: Path, k: int, l: int) -> list[tuple[str, float, int]]:
    return [(r["id"], r["alpha"], r["votes"]) for r in load_candidates(ws) if r["class"] == k and r["component"] == l]


def _check(got: list[tuple[str, float, int]], want: list[tuple[str, float, int]]) -> None:
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=1e-9, atol=1e-12)
    assert [g[2] for g in got] == [w[2] for w in want]


# ---------------------------------------------------------------------------- ranking core


@pytest.mark.parametrize("chunk_rows,max_scores", [(7, 1 << 25), (50, 1 << 25), (100000, 1 << 25), (50, 100)])
def test_rank_pool_equals_numpy_argsort(synth: Synth, chunk_rows: int, max_scores: int,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import spurious.retrieve._rank

    monkeypatch.setattr(spurious.retrieve._rank, "_MAX_SCORES", max_scores)  # 100: directions in blocks of 2
    rng = np.random.default_rng(5)
    store = Workspace.open(synth.ws).feature_store("pool")
    A, c = rng.standard_normal((5, D)), rng.standard_normal(5)
    keep = 13
    r = rank_pool(store, A, c, keep, chunk_rows=chunk_rows)
    scores = store.phi().astype(np.float64) @ A.T - c  # [N, 5]
    for j in range(5):
        want = np.argsort(-scores[:, j], kind="stable")[:keep]
        np.testing.assert_array_equal(r.rows[j], want)
        np.testing.assert_allclose(r.values[j], scores[want, j], rtol=1e-5, atol=1e-5)
    assert r.rows_scanned == N_POOL
    # eligibility per group: directions 0, 1, 3 (group 0) keep even rows, 2 and 4 (group 1) odd ones
    r2 = rank_pool(store, A, c, keep, chunk_rows=chunk_rows, groups=np.array([0, 0, 1, 0, 1]),
                   eligible=lambda rows: np.stack([rows % 2 == 0, rows % 2 == 1]))
    for j in range(5):
        ok = np.flatnonzero(np.arange(N_POOL) % 2 == (j in (2, 4)))
        np.testing.assert_array_equal(r2.rows[j], ok[np.argsort(-scores[ok, j], kind="stable")[:keep]])


def test_rank_pool_keeps_fewer_when_the_pool_is_small(synth: Synth) -> None:
    store = Workspace.open(synth.ws).feature_store("pool")
    r = rank_pool(store, np.ones((1, D)), keep=N_POOL + 5)
    assert (r.rows[0, :N_POOL] >= 0).all() and (r.rows[0, N_POOL:] == -1).all()
    assert np.isneginf(r.values[0, N_POOL:]).all()
    with pytest.raises(ValueError, match=r"A must have shape \[C, 16\]"):
        rank_pool(store, np.ones((1, 3)))
    with pytest.raises(ValueError, match="keep must be a positive integer"):
        rank_pool(store, np.ones((1, D)), keep=0)


def test_topk_merge_of_partitions_equals_one_pass() -> None:
    rng = np.random.default_rng(3)
    scores, rows = rng.standard_normal((3, 500)).astype(np.float32), np.arange(500)
    whole, a, b = _TopK(3, 20), _TopK(3, 20), _TopK(3, 20)
    whole.add(scores, rows)
    a.add(scores[:, ::2], rows[::2])
    b.add(scores[:, 1::2], rows[1::2])
    a.merge(b.values, b.rows)
    np.testing.assert_array_equal(a.sorted()[0], whole.sorted()[0])
    np.testing.assert_array_equal(whole.sorted()[0], np.argsort(-scores, axis=1, kind="stable")[:, :20])


# ---------------------------------------------------------------------------- the stage


def test_retrieve_agreement_matches_hand_counted_votes(fresh: Synth) -> None:
    s = fresh
    sel = {0: [0, 2], 3: [1]}
    r = retrieve(s.ws, components=sel, agree=[s.ws2], min_votes=2, top_n=9, progress=False, chunk_rows=40)
    assert r.voters == ["self", str(s.ws2)] and r.components == 3 and r.pool_rows == N_POOL
    for k, ls in sel.items():
        for l in ls:
            _check(_got(s.ws, k, l), s.oracle(k, l, [s.vote_self, s.vote2], 2, 9))
    recs = load_candidates(s.ws)
    assert [(x["class"], x["component"], x["rank"]) for x in recs] == sorted(
        (x["class"], x["component"], x["rank"]) for x in recs)
    assert all(x["models"] == 2 and x["path"] is None for x in recs)  # imported pool: no files
    assert sum(r.per_component.values()) == len(recs) == r.candidates
    manifest = json.loads((s.ws / "retrieve" / "manifest.json").read_text())
    assert manifest["model"]["fingerprint"] == Workspace.open(s.ws).model_fingerprint
    assert (s.ws / "retrieve" / "gallery" / "index.html").is_file()
    assert (s.ws / "retrieve" / "gallery" / "class_00003" / "l0001.html").is_file()
    assert manifest["result"]["per_component"] == r.per_component
    assert [k for k, v in r.to_dict().items() if isinstance(v, (dict, list))] == ["voters"]  # no per-component map
    # one of three voters, one of whom saw only half of the pool (matched by id; the rest: no vote)
    with pytest.warns(UserWarning, match="covers 115 of 230 pool images"):
        retrieve(s.ws, components=sel, agree=[s.ws2, s.ws3], min_votes=1, top_n=9, overwrite=True, progress=False)
    for k, ls in sel.items():
        for l in ls:
            _check(_got(s.ws, k, l), s.oracle(k, l, [s.vote_self, s.vote2, s.vote3], 1, 9))
    # without the self vote, two of the two other models
    with pytest.warns(UserWarning, match="covers 115"):
        retrieve(s.ws, components=sel, agree=[s.ws2, s.ws3], self_vote=False, min_votes=2, top_n=9, overwrite=True,
                 progress=False)
    _check(_got(s.ws, 0, 2), s.oracle(0, 2, [s.vote2, s.vote3], 2, 9))


@pytest.mark.parametrize("margin", [0.0, 1.5])
def test_dependence_flip_matches_numpy(fresh: Synth, margin: float) -> None:
    """A candidate is kept only when removing the component's positive part flips the workspace
    model's top-1 prediction (oracle: logits recomputed from the features, alpha in float64)."""
    s = fresh
    sel = {0: [0, 3], 2: [0, 1], 3: [1]}
    r = retrieve(s.ws, components=sel, agree=[s.ws2], min_votes=1, top_n=8, dependence="flip",
                 dependence_margin=margin, chunk_rows=40, progress=False)
    assert (r.dependence, r.dependence_margin) == ("flip", margin)
    changed = 0
    for k, ls in sel.items():
        for l in ls:
            want = s.oracle(k, l, [s.vote_self, s.vote2], 1, 8, flip_margin=margin)
            _check(_got(s.ws, k, l), want)
            changed += want != s.oracle(k, l, [s.vote_self, s.vote2], 1, 8)
    assert changed >= 3  # the test removes candidates that plain ranking keeps
    plan = json.loads((s.ws / "retrieve" / "plan.json").read_text())
    assert plan["dependence"] == {"test": "flip", "margin": margin}
    # the test uses the workspace model's logits even when that model does not vote
    retrieve(s.ws, components=sel, agree=[s.ws2], self_vote=False, min_votes=1, top_n=8, dependence="flip",
             dependence_margin=margin, overwrite=True, progress=False)
    for k, ls in sel.items():
        for l in ls:
            _check(_got(s.ws, k, l), s.oracle(k, l, [s.vote2], 1, 8, flip_margin=margin))


def test_dependence_none_is_the_plain_ranking(fresh: Synth) -> None:
    s = fresh
    sel = {0: [0, 3], 2: [0, 1], 3: [1]}
    r = retrieve(s.ws, components=sel, agree=[s.ws2], min_votes=1, top_n=8, dependence="none", progress=False)
    assert r.dependence == "none"
    for k, ls in sel.items():
        for l in ls:
            _check(_got(s.ws, k, l), s.oracle(k, l, [s.vote_self, s.vote2], 1, 8))


def test_dependence_errors(fresh: Synth, tmp_path: Path) -> None:
    s = fresh
    kw: dict[str, Any] = dict(components={0: [0]}, agree=[s.ws2], min_votes=1, progress=False)
    with pytest.raises(ValueError, match="dependence must be one of 'none', 'flip', got 'maybe'"):
        retrieve(s.ws, dependence="maybe", **kw)
    with pytest.raises(ValueError, match="dependence_margin only applies with dependence='flip'"):
        retrieve(s.ws, dependence_margin=1.0, **kw)
    with pytest.raises(ValueError, match="dependence_margin must be a finite number"):
        retrieve(s.ws, dependence="flip", dependence_margin=float("nan"), **kw)
    other = tmp_path / "top1ws"  # the same model, but a pool store that kept only the top-1 prediction
    Workspace.create_from_head(other, s.W, s.b, spec="synth:a", class_names=NAMES)
    import_features(other, s.phi, np.full(N_POOL, -1), s.ids, split="pool", topk=1)
    with pytest.raises(ValueError, match="kept only the top-1 prediction; re-extract the pool with --topk 2"):
        retrieve(s.ws, pool=other, dependence="flip", **kw)


def test_store_shard_table_covers_the_rows(synth: Synth) -> None:
    store = Workspace.open(synth.ws).feature_store("pool")
    table = store.shard_table()
    assert [sh.start_row for sh in table] == [64 * i for i in range(len(table))]
    assert sum(sh.rows for sh in table) == N_POOL == len(store)
    np.testing.assert_array_equal(np.concatenate([np.load(sh.path("phi")) for sh in table]),
                                  synth.phi.astype(np.float16))
    with pytest.raises(ValueError, match="unknown shard array 'psi'"):
        table[0].path("psi")
    # the stored top-k logits (the dependence test's input) against the head applied in float64
    idx, logit = store.topk(np.arange(N_POOL), logits=True)
    f = synth.phi.astype(np.float64) @ synth.W.T.astype(np.float64) + synth.b
    np.testing.assert_array_equal(idx, np.argsort(-f, axis=1, kind="stable")[:, :idx.shape[1]])
    np.testing.assert_allclose(logit, -np.sort(-f, axis=1)[:, :idx.shape[1]], rtol=1e-5, atol=1e-5)


def test_finished_run_is_reused_and_a_new_plan_refused(fresh: Synth) -> None:
    s = fresh
    kw: dict[str, Any] = dict(components={1: [0]}, agree=[s.ws2], min_votes=1, top_n=5, progress=False)
    first = retrieve(s.ws, **kw)
    assert not first.reused
    mtime = (s.ws / "retrieve" / "candidates.jsonl").stat().st_mtime_ns
    again = retrieve(s.ws, **kw)
    assert again.reused and again.candidates == first.candidates
    assert (s.ws / "retrieve" / "candidates.jsonl").stat().st_mtime_ns == mtime
    with pytest.raises(IncompatibleArtifactError, match="another plan.*top_n"):
        retrieve(s.ws, **{**kw, "top_n": 6})
    assert not retrieve(s.ws, **{**kw, "top_n": 6}, overwrite=True).reused


def test_killed_run_resumes_from_its_checkpoint(fresh: Synth, monkeypatch: pytest.MonkeyPatch) -> None:
    s = fresh
    calls = {"n": 0}
    real_add = _TopK.add

    def flaky(self: _TopK, scores: np.ndarray, rows: np.ndarray, first: int = 0) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_add(self, scores, rows, first)

    monkeypatch.setattr(_TopK, "add", flaky)
    kw: dict[str, Any] = dict(components={0: [1], 2: [0]}, agree=[s.ws2], min_votes=2, top_n=7, chunk_rows=30,
                              checkpoint_seconds=0.0, progress=False)
    with pytest.raises(KeyboardInterrupt):
        retrieve(s.ws, **kw)
    assert not (s.ws / "retrieve" / "manifest.json").exists()
    assert list((s.ws / "retrieve" / "state").glob("rank-*.npz"))
    r = retrieve(s.ws, **kw)
    assert r.resumed_rows == 60  # two chunks of 30 were done before the kill
    assert calls["n"] == 3 + -(-(N_POOL - 60) // 30)  # the rest, in chunks that span shards of 64
    for k, l in ((0, 1), (2, 0)):
        _check(_got(s.ws, k, l), s.oracle(k, l, [s.vote_self, s.vote2], 2, 7))
    assert not (s.ws / "retrieve" / "state").exists()


def test_component_selection_sources(fresh: Synth, tmp_path: Path) -> None:
    s = fresh
    ws = Workspace.open(s.ws)
    sel, src = components_to_retrieve(ws, top_components=2, classes=[1, "d"])
    assert sel == {1: [0, 1], 3: [0, 1]} and "top 2" in src
    path = tmp_path / "comps.json"
    path.write_text(json.dumps({"format": "spurious-components", "version": 1,
                                "model_fingerprint": ws.model_fingerprint, "classes": {"2": [3, 1], "c": [0]}}))
    with pytest.raises(ValueError, match="class 'c' is listed twice"):
        components_to_retrieve(ws, components=path)
    path.write_text(json.dumps({"2": [3, 1]}))
    assert components_to_retrieve(ws, components=path)[0] == {2: [1, 3]}
    # visualize selection (class_KKKKK/components.json) when nothing else is given
    vis = s.ws / "visualize" / "class_00002"
    vis.mkdir(parents=True)
    (vis / "components.json").write_text(json.dumps({"class": 2, "components": [{"rank": 1, "component": 4},
                                                                                {"rank": 2, "component": 0}]}))
    try:
        assert components_to_retrieve(ws) == ({2: [0, 4]}, "visualize selection")
    finally:
        import shutil

        shutil.rmtree(s.ws / "visualize")


def test_errors(fresh: Synth, tmp_path: Path) -> None:
    s = fresh
    one = {0: [0]}
    with pytest.raises(ValueError, match="no components selected"):
        retrieve(s.ws, agree=[s.ws2], progress=False)
    with pytest.raises(ValueError, match=r"component\(s\) \[6\] out of range"):
        retrieve(s.ws, components={0: [6]}, agree=[s.ws2], progress=False)
    with pytest.raises(ValueError, match="min_votes=2 but only 1 voter"):
        retrieve(s.ws, components=one, progress=False)
    with pytest.raises(ValueError, match="top_n must be an integer >= 1"):
        retrieve(s.ws, components=one, agree=[s.ws2], top_n=0, progress=False)
    with pytest.raises(ValueError, match="already the 'self' voter"):
        retrieve(s.ws, components=one, agree=[s.ws], progress=False)
    with pytest.raises(ValueError, match="appears twice"):
        retrieve(s.ws, components=one, agree=[s.ws2, s.ws2], progress=False)
    with pytest.raises(FileNotFoundError, match="neither a finished feature split"):
        retrieve(s.ws, components=one, agree=[s.ws2], pool="nope", progress=False)
    # voters must share the class space
    rng = np.random.default_rng(9)
    W5, b5 = _head(rng, K + 1, D)
    Workspace.create_from_head(tmp_path / "ws5", W5, b5, spec="synth:e")
    with pytest.raises(ValueError, match="voters must share the workspace's class space"):
        retrieve(s.ws, components=one, agree=[tmp_path / "ws5"], progress=False)
    # a pool from another model's workspace
    with pytest.raises(IncompatibleArtifactError, match="alpha needs the pool's phi from the same model"):
        retrieve(s.ws, components=one, agree=[s.ws2], pool=str(s.ws2), progress=False)
    # a component set made for another model
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"format": "spurious-components", "version": 1, "model_fingerprint": "0" * 16,
                                "classes": {"0": [0]}}))
    with pytest.raises(IncompatibleArtifactError, match="made for the model with fingerprint 0000000000000000"):
        retrieve(s.ws, components=path, agree=[s.ws2], progress=False)
    # a voter without features of the pool, and one that shares no image with it
    Workspace.create_from_head(tmp_path / "ws6", W5[:K], b5[:K], spec="synth:f", class_names=NAMES)
    with pytest.raises(FileNotFoundError, match="ws6 has no features of the pool"):
        retrieve(s.ws, components=one, agree=[tmp_path / "ws6"], progress=False)
    import_features(tmp_path / "ws6", s.phi[:4], np.full(4, -1), ["x", "y", "z", "w"], split="pool")
    with pytest.raises(ValueError, match="none of its 4 images"):
        retrieve(s.ws, components=one, agree=[tmp_path / "ws6"], progress=False)


def test_pool_of_another_workspace_of_the_same_model(fresh: Synth, tmp_path: Path) -> None:
    s = fresh
    other = tmp_path / "poolws"
    Workspace.create_from_head(other, s.W, s.b, spec="synth:a", class_names=NAMES)
    import_features(other, s.phi, np.full(N_POOL, -1), s.ids, split="big")
    retrieve(s.ws, pool=other, pool_split="big", components={1: [2]}, agree=[s.ws2], min_votes=2, top_n=8,
             progress=False)
    _check(_got(s.ws, 1, 2), s.oracle(1, 2, [s.vote_self, s.vote2], 2, 8))


def test_cli_json_and_one_line_errors(fresh: Synth, capsys: pytest.CaptureFixture[str]) -> None:
    s = fresh
    code = main(["retrieve", str(s.ws), "--top-components", "1", "--classes", "2", "--agree", str(s.ws2),
                 "--min-votes", "1", "--top", "4", "--json", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    assert r["components"] == 1 and r["min_votes"] == 1 and "per_component" not in r and r["num_short"] == 0
    assert json.loads(Path(r["manifest"]).read_text())["result"]["per_component"] == {"2/0": 4}
    assert r["candidates_file"] == str(s.ws / "retrieve" / "candidates.jsonl")
    assert r["dependence"] == "none"
    code = main(["retrieve", str(s.ws), "--top-components", "1", "--classes", "2", "--agree", str(s.ws2),
                 "--min-votes", "1", "--top", "4", "--dependence", "flip", "--dependence-margin", "0.5", "--json",
                 "--no-progress", "--overwrite"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    assert (r["dependence"], r["dependence_margin"]) == ("flip", 0.5)
    assert [x["id"] for x in load_candidates(s.ws)] == [
        i for i, _, _ in s.oracle(2, 0, [s.vote_self, s.vote2], 1, 4, flip_margin=0.5)]
    code = main(["retrieve", str(s.ws), "--top-components", "1", "--overwrite", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2 and err.strip().count("\n") == 0 and "min_votes=2 but only 1 voter" in err


# ---------------------------------------------------------------------------- planted data, real models


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spurious.demo import prepare_workspaces

    out = tmp_path_factory.mktemp("demo")
    prepare_workspaces(out, fast=True, progress=False)
    return out


@pytest.mark.slow  # the fixture runs `spurious demo --fast` (10-30 s on 2 busy CPUs)
def test_planted_pool_model_voter_equals_the_stored_predictions(demo: Path) -> None:
    """On the tiny planted data: ranking == numpy oracle, and a voter *model* run on the pool images
    votes exactly as the stored predictions of its extracted workspace (matched by id)."""
    ws, ws_std = demo / "ws-robust", demo / "ws-standard"
    sel = {0: [0, 1], 3: [0]}
    retrieve(ws, components=sel, agree=[ws_std], min_votes=2, top_n=6, progress=False)
    by_store = load_candidates(ws)
    spec = Workspace.open(ws_std).model_spec
    r = retrieve(ws, components=sel, agree_models=[spec], min_votes=2, top_n=6, oversample=50, overwrite=True,
                 device="cpu", num_workers=0, progress=False)
    assert r.voters == ["self", spec]
    by_model = load_candidates(ws)
    assert [(x["id"], x["votes"]) for x in by_model] == [(x["id"], x["votes"]) for x in by_store]
    # oracle on the real features: alpha from the store, top-1 of both models by id
    store = Workspace.open(ws).feature_store("pool")
    std = Workspace.open(ws_std).feature_store("pool")
    std_top1 = dict(zip(std.ids, std.topk()[0][:, 0].tolist()))
    self_top1 = store.topk()[0][:, 0]
    for k, ls in sel.items():
        a = load_npca(ws)[k].alpha(store.phi(), ls)
        for j, l in enumerate(ls):
            votes = np.array([int(self_top1[r] == k) + int(std_top1[i] == k) for r, i in enumerate(store.ids)])
            want = [store.ids[r] for r in np.argsort(-a[:, j], kind="stable") if votes[r] >= 2][:6]
            assert [x["id"] for x in by_model if (x["class"], x["component"]) == (k, l)] == want
    assert all(Path(x["path"]).is_file() for x in by_model)
    # the gallery is sharded by class; every link of the index and of each page resolves
    gallery = ws / "retrieve" / "gallery"
    pages = re.findall(r'href="([^"]+)"', (gallery / "index.html").read_text())
    assert sorted(pages) == ["class_00000/l0000.html", "class_00000/l0001.html", "class_00003/l0000.html"]
    for page in pages:
        html = (gallery / page).read_text()
        srcs = [unescape(x) for x in re.findall(r'src="([^"]+)"', html)]
        n = sum((x["class"], x["component"]) == (int(page[6:11]), int(page[13:17])) for x in by_model)
        assert len(srcs) == n and all(((gallery / page).parent / x).resolve().is_file() for x in srcs)
        assert all(((gallery / page).parent / h).resolve() == (gallery / "index.html").resolve()
                   for h in re.findall(r'href="([^"]+)"', html))
    # the votes are cached by id: a new plan does not run the model again
    cache = next((ws / "retrieve" / "votes").iterdir())
    parts = sorted(p.name for p in cache.glob("part-*.npz"))
    retrieve(ws, components=sel, agree_models=[spec], min_votes=2, top_n=5, oversample=50, overwrite=True,
             device="cpu", num_workers=0, progress=False)
    assert sorted(p.name for p in cache.glob("part-*.npz")) == parts
    with pytest.raises(ValueError, match="is the model of workspace .*already the 'self' voter"):
        retrieve(ws, components=sel, agree_models=[Workspace.open(ws).model_spec], min_votes=1, progress=False)
    from conftest import tiny_classifier

    from spurious.models import register_model_source

    register_model_source("retrievetest", lambda name, **kw: tiny_classifier(num_classes=3), lambda: ["three"])
    with pytest.raises(ValueError, match="voter model 'retrievetest:three' has 3 classes, the workspace model has 6"):
        retrieve(ws, components=sel, agree_models=["retrievetest:three"], min_votes=1, progress=False)


@pytest.mark.slow  # shares the `spurious demo --fast` fixture above
def test_planted_pool_dependence_filter_matches_numpy(demo: Path) -> None:
    """On the tiny planted data and the real demo models: the dependence test against numpy over the
    logits read straight from the pool's shard files (top-1 class, runner-up)."""
    ws, ws_std = demo / "ws-robust", demo / "ws-standard"
    sel = {0: [0, 1], 2: [0], 3: [0, 1]}
    store = Workspace.open(ws).feature_store("pool")
    shards = sorted((ws / "features" / "pool" / "shards").glob("*.topk_logit.npy"))
    logit = np.concatenate([np.load(p) for p in shards]).astype(np.float64)
    top1 = np.concatenate([np.load(str(p).replace("topk_logit", "topk_index")) for p in shards])[:, 0]
    std = Workspace.open(ws_std).feature_store("pool")
    std_top1 = dict(zip(std.ids, std.topk()[0][:, 0].tolist()))
    kept = {0.0: 0, 2.0: 0}
    for margin in kept:
        retrieve(ws, components=sel, agree=[ws_std], min_votes=1, top_n=10, dependence="flip",
                 dependence_margin=margin, overwrite=True, progress=False, gallery=False)
        got = load_candidates(ws)
        for k, ls in sel.items():
            a = load_npca(ws)[k].alpha(store.phi(), ls)
            for j, l in enumerate(ls):
                votes = np.array([int(top1[r] == k) + int(std_top1[i] == k) for r, i in enumerate(store.ids)])
                dep = (top1 == k) & (logit[:, 0] - np.maximum(a[:, j], 0) < logit[:, 1] + margin)
                want = [store.ids[r] for r in np.argsort(-a[:, j], kind="stable") if votes[r] >= 1 and dep[r]][:10]
                assert [x["id"] for x in got if (x["class"], x["component"]) == (k, l)] == want
                kept[margin] += len(want)
    assert 0 < kept[0.0] < kept[2.0]  # the strict flip keeps some, fewer than a 2-logit margin
