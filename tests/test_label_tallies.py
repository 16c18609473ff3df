"""The label store's counters (per-class tallies kept by SQL triggers) and its incremental sync.

Oracles: the counts are recomputed in plain Python from every row of the store's base tables
(registered components and candidates, verdicts) after random writes of every kind (new
verdicts, changed verdicts, deleted verdicts, items unregistered and registered again); the
incremental sync is compared with a sync of a fresh copy of the store that reads everything.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from spurious.label import LabelStore, UnknownItemError
from spurious.label.store import COMPONENT_VERDICTS, FILTERS, IMAGE_VERDICTS, select
from spurious.workspace import Workspace
from tests.test_label_store import make_label_ws

LABELERS = ("ann", "bob", "cy")


def _python_counts(path: Path, me: str, min_agree: int) -> tuple[dict[int, dict[str, int]], dict[str, int]]:
    """The overview's per-class counts and the progress counts, from every row of the base tables."""
    with sqlite3.connect(path) as con:
        comps = {(k, l) for k, l in con.execute("SELECT class, component FROM components")}
        cands = {(k, l, i) for k, l, i in con.execute("SELECT class, component, id FROM candidates")}
        cv = con.execute("SELECT labeler, class, component, verdict FROM component_verdicts").fetchall()
        iv = con.execute("SELECT labeler, class, component, id, verdict FROM image_verdicts").fetchall()
    per: dict[int, Counter[str]] = {}

    def tally(items: set[tuple[object, ...]], verdicts: list[tuple[object, ...]], agreed: str,
              names: tuple[str, str, str, str]) -> None:
        votes: dict[tuple[object, ...], list[tuple[object, str]]] = {}
        for who, *item, verdict in verdicts:
            votes.setdefault(tuple(item), []).append((who, verdict))
        for item in items:
            got = votes.get(item, [])
            c = per.setdefault(int(item[0]), Counter())  # type: ignore[call-overload]
            c[names[0]] += 1
            c[names[1]] += any(who == me for who, _ in got)
            c[names[2]] += sum(v == agreed for _, v in got) >= min_agree
            c[names[3]] += len({v for _, v in got}) > 1

    tally(comps, cv, "spurious", ("components", "mine", "agreed", "disagreements"))
    tally(cands, iv, "out", ("candidates", "judged", "accepted", "c_split"))
    keys = ("components", "mine", "agreed", "disagreements", "candidates", "judged", "accepted")
    classes = {k: {n: c[n] for n in keys} for k, c in sorted(per.items())}
    total = Counter[str]()
    for c in per.values():
        total.update(c)
    progress = {"components": total["components"], "components_mine": total["mine"],
                "components_agreed": total["agreed"], "components_disagreements": total["disagreements"],
                "candidates": total["candidates"], "candidates_mine": total["judged"],
                "candidates_accepted": total["accepted"], "candidates_disagreements": total["c_split"]}
    return classes, progress


def _random_store(root: Path, seed: int) -> LabelStore:
    rng = np.random.default_rng(seed)
    ws = Workspace.create_from_head(root / "ws", rng.normal(size=(6, 4)), rng.normal(size=6), spec="test:label",
                                    class_names=[f"c{i}" for i in range(6)])
    return LabelStore(ws)


@pytest.mark.parametrize("seed", [0])
def test_tallies_equal_python_counts_after_random_writes(tmp_path: Path, seed: int) -> None:
    store = _random_store(tmp_path, seed)
    pick = random.Random(seed)
    comps = [(k, l, pick.randrange(50)) for k in range(6) for l in pick.sample(range(40), 12)]
    cands = [(k, l, f"i{j}", j) for k, l, _ in comps[::2] for j in range(pick.randint(1, 3))]
    with sqlite3.connect(store.path) as con:
        con.executemany("INSERT INTO components (class, component, rank, record) VALUES (?, ?, ?, '{}')", comps)
        con.executemany("INSERT INTO candidates (class, component, id, rank, path, record) "
                        "VALUES (?, ?, ?, ?, 'x.png', '{}')", cands)
    for step in range(300):
        k, l, _ = pick.choice(comps)
        who = pick.choice(LABELERS)
        what = pick.random()
        if what < 0.45:
            with contextlib.suppress(UnknownItemError):  # unregistered by an earlier step
                store.set_component_verdict(who, k, l, pick.choice(COMPONENT_VERDICTS))
        elif what < 0.85:
            ck, cl, ci, _ = pick.choice(cands)
            with contextlib.suppress(UnknownItemError):
                store.set_image_verdict(who, ck, cl, ci, pick.choice(IMAGE_VERDICTS))
        else:  # the rarer writes: a verdict deleted, an item unregistered or registered again
            with sqlite3.connect(store.path) as con:
                if what < 0.9:
                    con.execute("DELETE FROM component_verdicts WHERE labeler = ? AND class = ? AND component = ?",
                                (who, k, l))
                elif what < 0.93:
                    con.execute("DELETE FROM image_verdicts WHERE labeler = ? AND class = ?", (who, k))
                elif what < 0.96:
                    con.execute("DELETE FROM components WHERE class = ? AND component = ?", (k, l))
                    con.execute("DELETE FROM candidates WHERE class = ? AND component = ?", (k, l))
                else:
                    con.executemany("INSERT OR IGNORE INTO components (class, component, rank, record) "
                                    "VALUES (?, ?, ?, '{}')", comps)
                    con.executemany("INSERT OR IGNORE INTO candidates (class, component, id, rank, path, record) "
                                    "VALUES (?, ?, ?, ?, 'x.png', '{}')", cands)
        if step % 30 == 29:
            for me, min_agree in (("ann", 2), ("bob", 1), ("nobody", 3)):
                classes, progress = _python_counts(store.path, me, min_agree)
                want = {k: c for k, c in classes.items() if c["components"] or c["candidates"]}
                assert store.class_counts(me, min_agree=min_agree) == want
                assert store.class_counts(me, min_agree=min_agree, classes=[1, 4]) == {
                    k: c for k, c in want.items() if k in (1, 4)}
                assert store.classes_to_label() == sorted(want)
                assert store.progress(me, min_agree=min_agree) == progress
    # the review order's positions ("i / n" of the review page) against the filtered list
    rows = store.components("ann")
    for filter in FILTERS:
        for cls in (None, 2):
            kept = select(rows, filter, cls)
            for here in rows:
                want = (kept.index(here) + 1 if here in kept else None, len(kept))
                assert store.component_position("ann", here, filter=filter, cls=cls) == want, (filter, cls, here)
    # the counters after all this equal the counters rebuilt from the tables
    with sqlite3.connect(store.path) as con:
        before = sorted(con.execute("SELECT * FROM tallies WHERE n != 0"))
        con.execute("DELETE FROM meta WHERE key = 'derived_version'")
    LabelStore(store.workspace)  # rebuilds the derived tables on open
    with sqlite3.connect(store.path) as con:
        assert sorted(con.execute("SELECT * FROM tallies WHERE n != 0")) == before


def test_split_items_are_found_through_the_partial_index(tmp_path: Path) -> None:
    store = _random_store(tmp_path, 3)
    with sqlite3.connect(store.path) as con:
        plan = " ".join(str(r[-1]) for r in con.execute(
            "EXPLAIN QUERY PLAN SELECT c.class, c.component FROM review_stats d CROSS JOIN components c "
            "ON c.class = d.class AND c.component = d.component WHERE d.registered = 1 AND "
            "((d.n_spurious > 0) + (d.n_core > 0) + (d.n_unsure > 0)) > 1 ORDER BY c.class, c.rank, c.component"))
    assert "review_stats_split" in plan


# ---------------------------------------------------------------------- incremental sync
def _table(con: sqlite3.Connection, sql: str) -> list[tuple[object, ...]]:
    return sorted(con.execute(sql).fetchall())


def _registered(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(path) as con:
        return {"components": _table(con, "SELECT class, component, rank, record FROM components"),
                "candidates": _table(con, "SELECT class, component, id, rank, path, record FROM candidates"),
                "files": _table(con, "SELECT key, path FROM files"),
                "tallies": _table(con, "SELECT * FROM tallies WHERE n != 0")}


def test_sync_reads_only_what_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = make_label_ws(tmp_path / "a")
    store = LabelStore(ws.root, sync=True)
    store.set_component_verdict("ann", 0, 1, "spurious")
    read: list[object] = []
    scan_class, scan_retrieve = LabelStore._scan_class, LabelStore._scan_retrieve
    monkeypatch.setattr(LabelStore, "_scan_class", lambda self, k, *a: read.append(k) or scan_class(self, k, *a))
    monkeypatch.setattr(LabelStore, "_scan_retrieve", lambda self: read.append("retrieve") or scan_retrieve(self))
    first = _registered(store.path)
    assert store.sync().components == 5 and read == []  # nothing changed: nothing read
    # class 1's table changes (a component dropped, one re-ranked): only class 1 is read again
    table = ws.root / "visualize" / "class_00001" / "components.json"
    data = json.loads(table.read_text())
    data["components"] = data["components"][:1]
    data["components"][0]["rank"] = 7
    table.write_text(json.dumps(data))
    assert store.sync().components == 4 and read == [1]
    assert _registered(store.path) != first
    # the same as a sync that reads everything (no fingerprints recorded)
    want = _registered(store.path)
    with sqlite3.connect(store.path) as con:
        con.execute("DELETE FROM sync_state")
    read.clear()
    store.sync()
    assert sorted(map(str, read)) == ["0", "1", "retrieve"] and _registered(store.path) == want
    # candidates change: only they are read; a class folder removed: its components go, the verdicts stay
    read.clear()
    with open(ws.root / "retrieve" / "candidates.jsonl") as fh:
        lines = fh.readlines()
    (ws.root / "retrieve" / "candidates.jsonl").write_text("".join(lines[:2]))
    shutil.rmtree(ws.root / "visualize" / "class_00000")
    r = store.sync()
    assert read == ["retrieve"] and (r.components, r.candidates, r.classes) == (1, 2, [0, 1])
    assert store.review_counts("ann") == {"components": 1, "components_mine": 0, "components_agreed": 0,
                                          "components_disagreements": 0}
    assert store.component_verdicts(0, 1)["ann"]["verdict"] == "spurious"
    assert all(store.file_path(key) is not None for key, _ in _registered(store.path)["files"])
    assert not any("class_00000" in str(path) for _, path in _registered(store.path)["files"])


def test_a_moved_workspace_is_read_again(tmp_path: Path) -> None:
    ws = make_label_ws(tmp_path / "a")
    LabelStore(ws.root, sync=True)
    moved = tmp_path / "b"
    shutil.move(ws.root, moved)
    store = LabelStore(moved, sync=True)
    with sqlite3.connect(store.path) as con:
        paths = [p for (p,) in con.execute("SELECT path FROM files")]
    visual = [p for p in paths if "/visualize/" in p]
    assert visual and all(p.startswith(str(moved.resolve())) for p in visual)
