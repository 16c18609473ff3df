"""The review and curate pages' indexed lookups (neighbour, position, progress) against the list they replace.

The oracle is the list-based way the server used to place an item: list every component
(:meth:`LabelStore.components` or :meth:`LabelStore.curate_components`), keep those of the
filter (:func:`select`), and walk the list.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from spurious.label import LabelStore
from spurious.label.store import (
    COMPONENT_VERDICTS,
    FILTERS,
    IMAGE_VERDICTS,
    ComponentRow,
    CurateRow,
    curate_progress,
    review_progress,
    select,
)
from spurious.workspace import Workspace

LABELERS = ("ann", "bob", "cy", "dee")


def _key(row: ComponentRow) -> tuple[int, int, int]:
    return (row.cls, row.rank, row.component)


def _oracle(rows: list[ComponentRow], k: int, l: int, filter: str, cls: int | None,
            ) -> tuple[ComponentRow | None, ComponentRow | None, int | None, int]:
    """Previous, next, 1-based position (None: not in the list) and length of the filtered list."""
    here = next(r for r in rows if (r.cls, r.component) == (k, l))
    kept = select(rows, filter, cls)
    before = [r for r in kept if _key(r) < _key(here)]
    after = [r for r in kept if _key(r) > _key(here)]
    position = kept.index(here) + 1 if here in kept else None
    return (before[-1] if before else None), (after[0] if after else None), position, len(kept)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> LabelStore:
    """~300 components over 7 classes (ranks shuffled, so rank order differs from component order),
    random verdicts of four labelers, and a few verdicts on components that are not registered;
    retrieval candidates (1-4) for about half of them and for a few unreviewed components of class
    7, random image verdicts, and a few on candidates that are not registered."""
    root: Path = tmp_path_factory.mktemp("neighbours")
    rng = np.random.default_rng(1)
    ws = Workspace.create_from_head(root / "ws", rng.normal(size=(8, 4)), rng.normal(size=8), spec="test:label",
                                    class_names=[f"c{i}" for i in range(8)])
    s = LabelStore(ws)
    pick = random.Random(7)
    comps = []
    for k in range(7):  # class 7 has no component
        ls = pick.sample(range(200), 30 + 5 * k)
        comps += [(k, l, rank) for rank, l in enumerate(ls)]
    verdicts = []
    for k, l, _ in comps:
        for who in LABELERS:
            if pick.random() < 0.45:
                verdicts.append((who, k, l, pick.choice(COMPONENT_VERDICTS)))
    verdicts += [("ann", 0, 500, "spurious"), ("bob", 0, 500, "spurious"), ("cy", 0, 500, "core")]
    cands, image_verdicts = [], []
    items = [(k, l) for k, l, _ in comps if pick.random() < 0.5] + [(7, l) for l in (3, 9, 40)]
    for k, l in items:
        for rank in range(pick.randint(1, 4)):
            cands.append((k, l, f"i{rank}", rank))
            for who in LABELERS:
                if pick.random() < 0.6:  # dense: many components fully judged by one labeler
                    image_verdicts.append((who, k, l, f"i{rank}", pick.choice(IMAGE_VERDICTS)))
    image_verdicts += [("ann", 0, 500, "i0", "out"), ("bob", 0, 500, "i0", "out"), ("ann", *items[0], "gone", "in")]
    with sqlite3.connect(s.path) as con:
        con.executemany("INSERT INTO components (class, component, rank, record) VALUES (?, ?, ?, '{}')", comps)
        con.executemany("INSERT INTO component_verdicts (labeler, class, component, verdict, created, updated) "
                        "VALUES (?, ?, ?, ?, 'now', 'now')", verdicts)
        con.executemany("INSERT INTO candidates (class, component, id, rank, path, record) "
                        "VALUES (?, ?, ?, ?, 'x.png', '{}')", cands)
        con.executemany("INSERT INTO image_verdicts (labeler, class, component, id, verdict, created, updated) "
                        "VALUES (?, ?, ?, ?, ?, 'now', 'now')", image_verdicts)
    # the web server's way (one connection per thread, kept): the thousands of lookups below stay fast
    return LabelStore(ws, keep_connections=True)


@pytest.mark.parametrize(("me", "min_agree"), [("ann", 2), ("dee", 1), ("nobody", 2)])
def test_neighbours_positions_and_counts_equal_the_list(store: LabelStore, me: str, min_agree: int) -> None:
    rows = store.components(me, min_agree=min_agree)
    assert len(rows) > 250
    for here in rows[::4]:  # one row's lookup does not depend on the filter
        assert store.component_row(me, here.cls, here.component, min_agree=min_agree) == here
    assert store.review_counts(me, min_agree=min_agree) == review_progress(rows)
    for filter in FILTERS:
        for cls in (None, 0, 3, 6, 7):
            kept = select(rows, filter, cls)
            assert store.component_neighbour(me, None, filter=filter, cls=cls, min_agree=min_agree) == \
                (kept[0] if kept else None)
            assert store.component_neighbour(me, None, before=True, filter=filter, cls=cls,
                                             min_agree=min_agree) == (kept[-1] if kept else None)
            for here in rows[::4]:
                prev, nxt, position, total = _oracle(rows, here.cls, here.component, filter, cls)
                got = (store.component_neighbour(me, _key(here), before=True, filter=filter, cls=cls,
                                                 min_agree=min_agree),
                       store.component_neighbour(me, _key(here), filter=filter, cls=cls, min_agree=min_agree))
                assert got == (prev, nxt), (filter, cls, here)
                assert store.component_position(me, here, filter=filter, cls=cls) == (position, total)


def _curate_oracle(rows: list[CurateRow], here: CurateRow, filter: str, cls: int | None,
                   ) -> tuple[CurateRow | None, CurateRow | None]:
    kept = select(rows, filter, cls)
    before = [r for r in kept if (r.cls, r.component) < (here.cls, here.component)]
    after = [r for r in kept if (r.cls, r.component) > (here.cls, here.component)]
    return (before[-1] if before else None), (after[0] if after else None)


@pytest.mark.parametrize(("me", "min_agree"), [("ann", 2), ("dee", 1), ("bob", 3), ("nobody", 2)])
def test_curate_neighbours_and_counts_equal_the_list(store: LabelStore, me: str, min_agree: int) -> None:
    rows = store.curate_components(me, min_agree=min_agree)
    assert len(rows) > 120
    for here in rows[::3]:  # one row's lookup does not depend on the filter
        assert store.curate_row(me, here.cls, here.component, min_agree=min_agree) == here
    assert store.curate_counts(me, min_agree=min_agree) == curate_progress(rows)
    for filter in FILTERS:
        for cls in (None, 0, 3, 6, 7):
            kept = select(rows, filter, cls)
            if filter != "all" and cls is None and me != "nobody":
                assert 0 < len(kept) < len(rows)  # the filters do keep some and drop some
            assert store.curate_neighbour(me, None, filter=filter, cls=cls, min_agree=min_agree) == \
                (kept[0] if kept else None)
            assert store.curate_neighbour(me, None, before=True, filter=filter, cls=cls,
                                          min_agree=min_agree) == (kept[-1] if kept else None)
            for here in rows[::3]:
                got = (store.curate_neighbour(me, (here.cls, here.component), before=True, filter=filter, cls=cls,
                                              min_agree=min_agree),
                       store.curate_neighbour(me, (here.cls, here.component), filter=filter, cls=cls,
                                              min_agree=min_agree))
                assert got == _curate_oracle(rows, here, filter, cls), (filter, cls, here)


def test_unregistered_item_and_unknown_filter(store: LabelStore) -> None:
    assert store.component_row("ann", 0, 500) is None  # verdicts, but not registered
    assert store.component_row("ann", 0, 2**70) is None
    with pytest.raises(ValueError, match="unknown filter"):
        store.component_neighbour("ann", None, filter="mine")
    assert store.curate_row("ann", 0, 500) is None  # image verdicts, but no candidates
    assert store.curate_row("ann", 0, 2**70) is None
    assert store.curate_neighbour("ann", None, cls=2**70) is None
    with pytest.raises(ValueError, match="unknown filter"):
        store.curate_neighbour("ann", None, filter="mine")


def test_lookup_indexes_are_added_to_an_existing_database(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ws = Workspace.create_from_head(tmp_path / "ws", rng.normal(size=(2, 4)), rng.normal(size=2), spec="test:label",
                                    class_names=["a", "b"])
    s = LabelStore(ws)
    with sqlite3.connect(s.path) as con:  # as a database written before these indexes existed
        con.execute("DROP INDEX components_order")
        con.execute("DROP INDEX component_verdicts_votes")
        con.execute("DROP INDEX image_verdicts_votes")
    LabelStore(ws)
    with sqlite3.connect(s.path) as con:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        plan = " ".join(str(r[-1]) for r in con.execute(
            "EXPLAIN QUERY PLAN SELECT class, component FROM components c WHERE (class, rank, component) > (0, 0, 0) "
            "ORDER BY class, rank, component LIMIT 1"))
    assert {"components_order", "component_verdicts_votes", "image_verdicts_votes"} <= names
    assert "components_order" in plan
