"""The label store (WS/labels.sqlite): registration, verdicts, agreement, exports, concurrency, schema.

Expected results come from the verdicts the tests themselves place (counted by hand or with plain
Python over the placed verdicts), never from the store's own listings.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from spurious.label import (
    COMPONENT_VERDICTS,
    IMAGE_VERDICTS,
    LabelStore,
    UnknownItemError,
    check_labeler,
)
from spurious.label.store import file_key
from spurious.workspace import IncompatibleArtifactError, Workspace

# ---------------------------------------------------------------------- fixture workspace
# The visualize layout follows spurious.visualize (WS/visualize/class_KKKKK/components.json with
# "components": [{"rank", "component", "eigenvalue", "npfv_probability", "npfv_alpha", "npfv_top3",
# "npfv_png", "npfv_heatmap_png", "top_images": [{"id", "row", "alpha", "probability", "png",
# "heatmap_png", "error"}]}]); the retrieve layout follows WS/retrieve/candidates.jsonl.


def _png(path: Path, colour: tuple[int, int, int], size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(path)
    return path


def make_label_ws(root: Path, *, class_names: list[str] | None = None,
                  components: dict[int, list[int]] | None = None,
                  candidates: dict[tuple[int, int], int] | None = None, top_images: int = 5) -> Workspace:
    """A workspace with a visualize folder (``components``: class -> component indices, in rank
    order) and retrieval candidates (``(k, l)`` -> how many), all with real tiny PNG files."""
    names = class_names or ["cat", "dog", "boat"]
    rng = np.random.default_rng(0)
    ws = Workspace.create_from_head(root / "ws", rng.normal(size=(len(names), 4)), rng.normal(size=len(names)),
                                    spec="test:label", class_names=names)
    components = {0: [3, 1, 7], 1: [2, 5]} if components is None else components
    candidates = {(0, 3): 4, (1, 5): 3} if candidates is None else candidates
    vis = ws.root / "visualize"
    vis.mkdir()
    (vis / "manifest.json").write_text(json.dumps({"format": "spurious-visualize", "version": 1,
                                                   "model_fingerprint": ws.model_fingerprint}))
    for k, comps in components.items():
        cdir = vis / f"class_{k:05d}"
        recs = []
        for r, l in enumerate(comps):
            _png(cdir / f"npfv_l{l:04d}.png", (200, 10 * r, 0))
            _png(cdir / f"npfv_l{l:04d}_cam.png", (10 * r, 200, 0))
            tops = []
            for j in range(top_images):
                _png(cdir / f"top_l{l:04d}_{j}.png", (j * 40, 0, 200))
                _png(cdir / f"top_l{l:04d}_{j}_cam.png", (0, j * 40, 200))
                tops.append({"id": f"train/{names[k]}/img_{l}_{j}.png", "row": j, "alpha": 5.0 - j,
                             "probability": 0.9 - 0.1 * j, "png": f"top_l{l:04d}_{j}.png",
                             "heatmap_png": f"top_l{l:04d}_{j}_cam.png", "error": None})
            recs.append({"rank": r + 1, "component": l, "eigenvalue": 10.0 / (r + 1), "npfv_probability": 0.5 + r / 10,
                         "npfv_alpha": 3.0 + r, "npfv_top3": [{"class": k, "name": names[k], "probability": 0.7}],
                         "npfv_png": f"npfv_l{l:04d}.png", "npfv_heatmap_png": f"npfv_l{l:04d}_cam.png",
                         "top_images": tops})
        (cdir / "components.json").write_text(json.dumps({
            "format": "spurious-visualize-class", "version": 1, "class": k, "name": names[k], "components": recs,
            "neurons": {"top": []}}))
    ret = ws.root / "retrieve"
    ret.mkdir()
    (ret / "manifest.json").write_text(json.dumps({"format": "spurious-retrieve",
                                                   "model_fingerprint": ws.model_fingerprint}))
    lines = []
    for (k, l), n in sorted(candidates.items()):
        for r in range(n):
            path = _png(root / "pool" / f"p_{k}_{l}_{r}.png", (r * 30, 100, 100))
            lines.append(json.dumps({"class": k, "component": l, "rank": r, "id": f"pool/p_{k}_{l}_{r}.png",
                                     "path": str(path), "alpha": 9.0 - r, "votes": 3, "models": 3}))
    (ret / "candidates.jsonl").write_text("\n".join(lines) + "\n")
    return ws


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_label_ws(tmp_path)


@pytest.fixture
def store(ws: Workspace) -> LabelStore:
    return LabelStore(ws.root, sync=True)


# ---------------------------------------------------------------------- registration
def test_sync_registers_components_candidates_and_files(ws: Workspace, store: LabelStore) -> None:
    rows = store.components()
    # review order: class, then rank as written by visualize
    assert [(r.cls, r.component) for r in rows] == [(0, 3), (0, 1), (0, 7), (1, 2), (1, 5)]
    assert [(r.cls, r.component, r.candidates) for r in store.curate_components()] == [(0, 3, 4), (1, 5, 3)]
    rec = store.component(0, 1)
    assert rec["eigenvalue"] == pytest.approx(5.0) and rec["npfv_png"] == "npfv_l0001.png"
    # every PNG of the visualize records (5 components x (2 + 2 x 5)) and every candidate is served
    pngs = sorted((ws.root / "visualize").rglob("*.png")) + sorted((ws.root.parent / "pool").glob("*.png"))
    assert len(pngs) == 5 * 12 + 7
    for p in pngs:
        assert store.file_path(file_key(p)) == p.resolve()
    assert store.file_path(file_key(ws.root / "manifest.json")) is None
    assert store.file_path("../../etc/passwd") is None
    again = store.sync()
    assert (again.components, again.candidates, again.files, again.classes) == (5, 7, 67, [0, 1])


def test_sync_is_idempotent_and_keeps_verdicts_of_vanished_items(ws: Workspace, store: LabelStore) -> None:
    store.set_component_verdict("ann", 0, 7, "spurious")
    store.set_component_verdict("bob", 0, 7, "spurious")
    folder = ws.root / "visualize" / "class_00000"
    data = json.loads((folder / "components.json").read_text())
    kept = data["components"]
    data["components"] = [c for c in kept if c["component"] != 7]
    (folder / "components.json").write_text(json.dumps(data))
    store.sync()
    with pytest.raises(UnknownItemError, match=r"component \(class 0, component 7\) is not registered"):
        store.component(0, 7)
    assert store.agreed_components() == {0: [7]}  # the verdicts stay
    data["components"] = kept
    (folder / "components.json").write_text(json.dumps(data))
    store.sync()
    assert store.component(0, 7)["component"] == 7
    assert [r.votes["spurious"] for r in store.components() if r.component == 7] == [2]


def test_candidates_of_a_pool_without_files_are_labelled_by_id(ws: Workspace, tmp_path: Path) -> None:
    """``path: null`` (a pool imported as features only): registered without a file, still judged by id."""
    path = ws.root / "retrieve" / "candidates.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for r in recs:
        if (r["class"], r["component"]) == (0, 3):
            r["path"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    store = LabelStore(ws.root, sync=True)
    got = store.candidates(0, 3)
    assert [c["id"] for c in got] == [f"pool/p_0_3_{r}.png" for r in range(4)] and all(c["path"] is None for c in got)
    assert [c["path"] for c in store.candidates(1, 5)] == [str((ws.root.parent / "pool" / f"p_1_5_{r}.png").absolute())
                                                         for r in range(3)]
    # 5 components x 12 visualize PNGs + the 3 files of (1, 5); none for the file-less candidates
    assert store.sync().files == 5 * 12 + 3
    assert store.file_path(file_key(ws.root.parent / "pool" / "p_0_3_0.png")) is None
    for who in ("ann", "bob"):
        store.set_image_verdict(who, 0, 3, "pool/p_0_3_2.png", "out")
    acc = store.accepted_images()
    assert [(r["id"], r["path"], r["labelers"]) for r in acc[(0, 3)]] == [("pool/p_0_3_2.png", None, ["ann", "bob"])]
    rows = list(csv.DictReader(io.StringIO(store.export_labels(tmp_path / "labels.csv").read_text())))
    assert [(r["id"], r["path"]) for r in rows if r["task"] == "curate"] == [("pool/p_0_3_2.png", "")] * 2


def test_sync_refuses_artifacts_of_another_model(ws: Workspace) -> None:
    (ws.root / "retrieve" / "manifest.json").write_text(json.dumps({"model_fingerprint": "0" * 16}))
    with pytest.raises(IncompatibleArtifactError, match="model fingerprint 0000000000000000"):
        LabelStore(ws.root, sync=True)


@pytest.mark.parametrize("line,pattern", [
    ("{not json", r"candidates.jsonl:1: not JSON"),
    ('{"class": 0, "component": 3}', r"candidates.jsonl:1: candidate record lacks rank, id, path, alpha"),
])
def test_sync_names_malformed_candidate_lines(ws: Workspace, line: str, pattern: str) -> None:
    (ws.root / "retrieve" / "candidates.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=pattern):
        LabelStore(ws.root, sync=True)


def test_sync_names_malformed_components_json(ws: Workspace) -> None:
    (ws.root / "visualize" / "class_00001" / "components.json").write_text(json.dumps({"components": [{"rank": 1}]}))
    with pytest.raises(ValueError, match=r"class_00001/components.json: component record 0 has no component index"):
        LabelStore(ws.root, sync=True)
    (ws.root / "visualize" / "class_00001" / "components.json").write_text(json.dumps({"components": 3}))
    with pytest.raises(ValueError, match="expected a list of components"):
        LabelStore(ws.root, sync=True)


def test_files_outside_the_class_folder_are_not_registered(ws: Workspace) -> None:
    folder = ws.root / "visualize" / "class_00000"
    data = json.loads((folder / "components.json").read_text())
    secret = _png(ws.root / "secret.png", (1, 2, 3))
    data["components"][0]["npfv_png"] = "../../secret.png"
    (folder / "components.json").write_text(json.dumps(data))
    store = LabelStore(ws.root, sync=True)
    assert store.file_path(file_key(folder / "../../secret.png")) is None
    assert store.file_path(file_key(secret)) is None


def test_not_a_workspace(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a spurious workspace"):
        LabelStore(tmp_path)


# ---------------------------------------------------------------------- verdicts and agreement
def test_agreement_needs_two_labelers(store: LabelStore) -> None:
    votes = {  # (k, l) -> {labeler: verdict}
        (0, 3): {"ann": "spurious", "bob": "spurious", "cy": "core"},
        (0, 1): {"ann": "spurious", "bob": "core"},
        (0, 7): {"ann": "spurious"},
        (1, 2): {"ann": "unsure", "bob": "spurious", "cy": "spurious"},
        (1, 5): {"ann": "core", "bob": "core"},
    }
    for (k, l), by in votes.items():
        for who, v in by.items():
            store.set_component_verdict(who, k, l, v)
    expected: dict[int, list[int]] = {}
    for (k, l), by in sorted(votes.items()):
        if sum(v == "spurious" for v in by.values()) >= 2:
            expected.setdefault(k, []).append(l)
    for ls in expected.values():
        ls.sort()
    assert store.agreed_components() == expected == {0: [3], 1: [2]}
    assert store.agreed_components(min_agree=1) == {0: [1, 3, 7], 1: [2]}
    assert store.agreed_components(min_agree=3) == {}
    rows = {(r.cls, r.component): r for r in store.components("ann")}
    assert rows[(0, 3)].votes == {"spurious": 2, "core": 1, "unsure": 0} and rows[(0, 3)].mine == "spurious"
    assert {kl for kl, r in rows.items() if r.disagreement} == {(0, 3), (0, 1), (1, 2)}
    assert [(r.cls, r.component) for r in store.components("ann", filter="disagreements")] == [(0, 3), (0, 1), (1, 2)]
    assert [(r.cls, r.component) for r in store.components("cy", filter="unlabeled")] == [(0, 1), (0, 7), (1, 5)]
    assert [(r.cls, r.component) for r in store.components("cy", filter="unlabeled", cls=1)] == [(1, 5)]


def test_a_changed_verdict_replaces_the_old_one_and_history_keeps_both(store: LabelStore) -> None:
    store.set_component_verdict("ann", 0, 3, "spurious", "water in the background")
    store.set_component_verdict("bob", 0, 3, "spurious")
    assert store.agreed_components() == {0: [3]}
    store.set_component_verdict("ann", 0, 3, "core")  # note None keeps the note
    assert store.agreed_components() == {}
    assert store.component_verdicts(0, 3)["ann"]["verdict"] == "core"
    assert store.component_verdicts(0, 3)["ann"]["note"] == "water in the background"
    store.set_component_verdict("ann", 0, 3, "core", "")
    assert store.component_verdicts(0, 3)["ann"]["note"] == ""
    assert [(h["labeler"], h["verdict"]) for h in store.history()] == [
        ("ann", "spurious"), ("bob", "spurious"), ("ann", "core"), ("ann", "core")]
    with sqlite3.connect(store.path) as con:
        assert con.execute("SELECT count(*) FROM component_verdicts").fetchone()[0] == 2


def test_accepted_images_need_two_out_verdicts(store: LabelStore) -> None:
    cands = [json.loads(line) for line in (store.root / "retrieve" / "candidates.jsonl").read_text().splitlines()]
    by_id = {c["id"]: c for c in cands}
    votes = {
        "pool/p_0_3_0.png": {"ann": "out", "bob": "out"},
        "pool/p_0_3_1.png": {"ann": "out", "bob": "in"},
        "pool/p_0_3_2.png": {"ann": "out", "bob": "out", "cy": "trash"},
        "pool/p_0_3_3.png": {"ann": "trash", "bob": "trash"},
        "pool/p_1_5_2.png": {"bob": "out", "cy": "out"},
    }
    for image_id, by in votes.items():
        c = by_id[image_id]
        for who, v in by.items():
            store.set_image_verdict(who, c["class"], c["component"], image_id, v)
    got = store.accepted_images()
    assert list(got) == [(0, 3), (1, 5)]
    assert [r["id"] for r in got[(0, 3)]] == ["pool/p_0_3_0.png", "pool/p_0_3_2.png"]
    first = got[(0, 3)][0]
    assert first["labelers"] == ["ann", "bob"]
    assert {k: first[k] for k in by_id[first["id"]]} == by_id[first["id"]]  # the candidates.jsonl record
    assert got[(1, 5)][0]["path"] == by_id["pool/p_1_5_2.png"]["path"]
    rows = {(r.cls, r.component): r for r in store.curate_components("ann")}
    assert (rows[(0, 3)].judged_by_me, rows[(0, 3)].disagreements, rows[(0, 3)].accepted) == (4, 2, 2)
    assert (rows[(1, 5)].judged_by_me, rows[(1, 5)].accepted) == (0, 1)
    assert [(r.cls, r.component) for r in store.curate_components("ann", filter="unlabeled")] == [(1, 5)]
    assert [(r.cls, r.component) for r in store.curate_components("bob", filter="unlabeled")] == [(1, 5)]
    assert [(r.cls, r.component) for r in store.curate_components("ann", filter="disagreements")] == [(0, 3)]


@pytest.mark.parametrize("call,pattern", [
    (lambda s: s.set_component_verdict("ann", 0, 3, "maybe"), r"unknown verdict 'maybe'; valid: spurious, core, unsure"),
    (lambda s: s.set_image_verdict("ann", 0, 3, "pool/p_0_3_0.png", "spurious"), r"unknown verdict 'spurious'; valid: in, out, trash"),
    (lambda s: s.set_component_verdict("", 0, 3, "core"), r"invalid labeler name ''"),
    (lambda s: s.set_component_verdict("<b>x</b>", 0, 3, "core"), r"invalid labeler name '<b>x</b>'"),
    (lambda s: s.set_component_verdict("a" * 65, 0, 3, "core"), r"invalid labeler name"),
    (lambda s: s.set_component_verdict("ann", 0, 3, "core", "x" * 2001), r"note must be a string of at most 2000"),
    (lambda s: s.agreed_components(min_agree=0), r"min_agree must be an integer >= 1, got 0"),
    (lambda s: s.components(filter="mine"), r"unknown filter 'mine'; valid: all, unlabeled, disagreements"),
    (lambda s: s.export_labels(s.root / "x.txt", format="xml"), r"unknown export format 'xml'; valid: json, csv"),
])
def test_bad_input_is_refused(store: LabelStore, call: Any, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        call(store)
    assert store.history() == []


def test_unknown_items_are_refused(store: LabelStore) -> None:
    with pytest.raises(UnknownItemError, match=r"component \(class 2, component 0\) is not registered"):
        store.set_component_verdict("ann", 2, 0, "core")
    with pytest.raises(UnknownItemError, match=r"image 'pool/p_1_5_0.png' is not a registered candidate of \(class 0"):
        store.set_image_verdict("ann", 0, 3, "pool/p_1_5_0.png", "out")


def test_labeler_names() -> None:
    assert check_labeler("  Zoë Müller ") == "Zoë Müller"
    assert check_labeler("bob.smith@lab") == "bob.smith@lab"
    with pytest.raises(TypeError, match="must be a string"):
        check_labeler(3)


# ---------------------------------------------------------------------- exports
def _place_some(store: LabelStore) -> None:
    for who in ("ann", "bob"):
        store.set_component_verdict(who, 0, 1, "spurious", f"note by {who}, with \"quotes\"")
        store.set_image_verdict(who, 0, 3, "pool/p_0_3_1.png", "out")
    store.set_component_verdict("ann", 1, 2, "core")
    store.set_image_verdict("ann", 0, 3, "pool/p_0_3_0.png", "in")


def test_the_agreed_components_are_the_fix_component_set(store: LabelStore, ws: Workspace, tmp_path: Path) -> None:
    from spurious.components import agreed_component_set

    _place_some(store)
    agreed_component_set(store).save(tmp_path / "out" / "comps.json")
    on_disk = json.loads((tmp_path / "out" / "comps.json").read_text())
    assert on_disk == {"format": "spurious-components", "version": 1,
                       "model_fingerprint": ws.model_fingerprint, "classes": {"0": [1]},
                       "source": "labels: 2 labelers, min_agree=2"}
    assert store.labeler_count("review") == 2 and store.labeler_count("curate") == len(
        {r["labeler"] for r in store.verdict_rows() if r["task"] == "curate"})
    with pytest.raises(ValueError, match="task must be"):
        store.labeler_count("sheets")


def test_label_counts_against_the_placed_verdicts(store: LabelStore) -> None:
    _place_some(store)
    # _place_some: ann and bob call (0, 1) spurious and say "out" on one image; ann alone calls (1, 2) core
    # and says "in" on another image: one agreed component and one accepted image up to min_agree 2, none at 3
    for m, n in ((1, 1), (2, 1), (3, 0)):
        counts = store.label_counts(m)
        assert counts.to_dict() == {"labelers": ["ann", "bob"], "agreed_components": n, "accepted_images": n}
        assert counts.summary_lines("x.csv") == ["labels of 2 labelers -> x.csv",
                                                 f"{n} agreed spurious components, {n} accepted images (min_agree={m})"]


def test_export_labels_json_and_csv(store: LabelStore, tmp_path: Path) -> None:
    _place_some(store)
    doc = json.loads(store.export_labels(tmp_path / "labels.json").read_text())
    assert doc["format"] == "spurious-labels" and doc["labelers"] == ["ann", "bob"]
    assert doc["agreed_components"] == {"0": [1]}
    assert [(r["id"], r["labelers"]) for r in doc["accepted_images"]] == [("pool/p_0_3_1.png", ["ann", "bob"])]
    assert len(doc["verdicts"]) == 6
    rows = list(csv.DictReader(io.StringIO(store.export_labels(tmp_path / "labels.csv").read_text())))
    assert len(rows) == 6
    review = [r for r in rows if r["task"] == "review"]
    assert [(r["class"], r["class_name"], r["component"], r["labeler"], r["verdict"], r["agreed"]) for r in review] == [
        ("0", "cat", "1", "ann", "spurious", "true"), ("0", "cat", "1", "bob", "spurious", "true"),
        ("1", "dog", "2", "ann", "core", "false")]
    assert review[0]["note"] == 'note by ann, with "quotes"'
    curate = [(r["id"], r["labeler"], r["verdict"], r["agreed"]) for r in rows if r["task"] == "curate"]
    assert curate == [("pool/p_0_3_0.png", "ann", "in", "false"), ("pool/p_0_3_1.png", "ann", "out", "true"),
                      ("pool/p_0_3_1.png", "bob", "out", "true")]
    assert all(r["path"].endswith(r["id"].split("/")[-1]) for r in rows if r["task"] == "curate")
    same = store.export_labels(tmp_path / "plain.txt", format="csv").read_text()
    assert same.splitlines()[0] == \
        "task,class,class_name,component,id,path,labeler,verdict,note,updated,agreed,labeler_kind"
    assert {r["labeler_kind"] for r in rows} == {"name"}  # placed through the API: typed-name identities


# ---------------------------------------------------------------------- durability, concurrency, schema
def test_a_new_store_sees_everything_written_before(ws: Workspace, store: LabelStore) -> None:
    _place_some(store)
    del store
    again = LabelStore(ws.root)  # no sync: what was registered stays registered
    assert again.agreed_components() == {0: [1]}
    assert [r["id"] for r in again.accepted_images()[(0, 3)]] == ["pool/p_0_3_1.png"]
    assert again.component_verdicts(0, 1)["bob"]["note"] == 'note by bob, with "quotes"'
    with sqlite3.connect(again.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _hammer(root: str, labeler: str, n: int) -> None:
    store = LabelStore(root)
    ids = [f"pool/p_0_3_{r}.png" for r in range(4)]
    for i in range(n):
        store.set_image_verdict(labeler, 0, 3, ids[i % 4], IMAGE_VERDICTS[i % 3])
        store.set_component_verdict(labeler, 0, (3, 1, 7)[i % 3], COMPONENT_VERDICTS[i % 3], f"{labeler} {i}")


def test_concurrent_writers_lose_nothing(ws: Workspace, store: LabelStore) -> None:
    n = 60
    threads = [threading.Thread(target=_hammer, args=(str(ws.root), f"t{j}", n)) for j in range(3)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(ws.root), f"p{j}", n)) for j in range(2)]
    for w in [*threads, *procs]:
        w.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    history = store.history()
    assert len(history) == 5 * 2 * n  # every write arrived
    with sqlite3.connect(store.path) as con:
        assert con.execute("SELECT count(*) FROM component_verdicts").fetchone()[0] == 5 * 3
        assert con.execute("SELECT count(*) FROM image_verdicts").fetchone()[0] == 5 * 4
    # the last write of each labeler wins: i = n-1 for component (3, 1, 7)[(n-1) % 3]
    last = (3, 1, 7)[(n - 1) % 3]
    final = store.component_verdicts(0, last)
    for who in ("t0", "t1", "t2", "p0", "p1"):
        assert (final[who]["verdict"], final[who]["note"]) == (COMPONENT_VERDICTS[(n - 1) % 3], f"{who} {n - 1}")


def test_schema_version_is_checked(ws: Workspace, store: LabelStore) -> None:
    assert store.schema_version == 2
    with sqlite3.connect(store.path) as con:
        con.execute("PRAGMA user_version = 7")
    with pytest.raises(ValueError, match=r"label schema version 7, but spurious .* reads up to version 2; upgrade"):
        LabelStore(ws.root)


def test_a_foreign_sqlite_file_is_refused(ws: Workspace) -> None:
    with sqlite3.connect(ws.root / "labels.sqlite") as con:
        con.execute("CREATE TABLE t (x)")
    with pytest.raises(ValueError, match="not a spurious label store"):
        LabelStore(ws.root)


def test_a_file_that_is_not_sqlite_is_refused(ws: Workspace) -> None:
    (ws.root / "labels.sqlite").write_bytes(b"definitely not a database" * 100)
    with pytest.raises(ValueError, match="labels.sqlite is not a usable SQLite database"):
        LabelStore(ws.root)


def test_labels_of_another_model_are_refused(ws: Workspace, store: LabelStore) -> None:
    with sqlite3.connect(store.path) as con:
        con.execute("UPDATE meta SET value = 'feedfeedfeedfeed' WHERE key = 'model_fingerprint'")
    pattern = r"labels for model 'test:label' \(model fingerprint feedfeedfeedfeed\)"
    with pytest.raises(IncompatibleArtifactError, match=pattern):
        LabelStore(ws.root)


def test_store_imports_no_web_code() -> None:
    import subprocess
    import sys

    code = ("import sys; import spurious.label.store, spurious.label; "
            "bad = [m for m in ('fastapi', 'starlette', 'jinja2', 'uvicorn') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
