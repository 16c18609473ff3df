"""Counterfactual pairs shown where people decide: the inspection sheet of the class and the label UI's
component review page show, under a selected component, its remove-pair and its add-pair (issue 18, item 3)."""

from __future__ import annotations

import html.parser
import json
import os
from pathlib import Path

import pytest
from conftest import copy_demo_out
from fastapi.testclient import TestClient
from PIL import Image

from spurious.counterfactual import counterfactual, shown_pairs
from spurious.visualize import read_sheet_table, refresh_sheets, sheet_classes

pytestmark = pytest.mark.filterwarnings("ignore:the model does not agree with the labels:UserWarning")  # tiny models


class _Images(html.parser.HTMLParser):
    """The ``src`` of every ``<img>`` after the first ``<h4>Counterfactuals on real images</h4>``."""

    def __init__(self) -> None:
        super().__init__()
        self.after, self.heading, self.srcs = False, False, []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.heading = tag == "h4"
        if tag == "img" and self.after:
            self.srcs.append(dict(attrs)["src"])

    def handle_data(self, data: str) -> None:
        if self.heading and data.strip() == "Counterfactuals on real images":
            self.after = True


@pytest.fixture(scope="module")
def ws_with_pairs(fast_demo, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A copy of the fast demo's robust workspace where one selected component got a remove- and an add-pair."""
    out = copy_demo_out(fast_demo, tmp_path_factory.mktemp("cf-shown") / "demo")
    ws = out / "ws-robust"
    k = sheet_classes(ws)[0]
    l = read_sheet_table(ws, k).selected[0]
    for mode in ("remove", "add"):
        counterfactual(ws, k, l, mode=mode, n_images=1, steps=3, progress=False)
    return ws, k, l


def test_shown_pairs_are_the_first_remove_then_the_first_add(ws_with_pairs) -> None:  # type: ignore[no-untyped-def]
    ws, k, l = ws_with_pairs
    index = json.loads((ws / "counterfactual" / "index.json").read_text())
    shown = shown_pairs(ws)
    for (kk, ll), pairs in shown.items():
        entries = index["components"][f"{kk}/{ll}"]
        image = [e for e in entries if e.get("engine", "image") == "image"]
        dvce = [e for e in entries if e.get("engine") == "diffusion"]
        expected = [next(e for e in image if e["mode"] == m) for m in ("remove", "add") if any(e["mode"] == m for e in image)]
        expected += dvce[:1]
        assert [(p.mode, p.engine, p.image_id) for p in pairs] == [
            (e["mode"], e.get("engine", "image"), e["id"]) for e in expected]
        for p, e in zip(pairs, expected, strict=True):
            assert p.original == ws / "counterfactual" / e["files"]["original"]
    assert [(p.mode, p.engine) for p in shown[(k, l)][:2]] == [("remove", "image"), ("add", "image")]
    assert shown_pairs(ws.parent / "ws-standard") == {}  # the stage never ran there


def test_the_class_sheet_shows_the_pairs_under_the_component(ws_with_pairs) -> None:  # type: ignore[no-untyped-def]
    ws, k, l = ws_with_pairs
    sheet = read_sheet_table(ws, k).folder / "index.html"
    parser = _Images()
    parser.feed(sheet.read_text(encoding="utf-8"))
    want = [p for pair in shown_pairs(ws)[(k, l)]
            for p in (pair.original, pair.counterfactual, pair.difference, pair.heatmap)]
    got = [(sheet.parent / src).resolve() for src in parser.srcs[:8]]
    assert got == [p.resolve() for p in want]
    assert all(not os.path.isabs(src) for src in parser.srcs)  # the folder can be moved as a whole
    for p in got:
        with Image.open(p) as im:
            assert im.size[0] > 0
    # a refresh without new pairs rewrites the same page
    before = sheet.read_bytes()
    assert refresh_sheets(ws, [k]) == [sheet] and sheet.read_bytes() == before


def test_the_review_page_shows_and_serves_the_pairs(ws_with_pairs) -> None:  # type: ignore[no-untyped-def]
    from spurious.label import LabelStore
    from spurious.label.app import create_app

    ws, k, l = ws_with_pairs
    rec = LabelStore(ws, sync=True).component(k, l)
    assert [c["mode"] for c in rec["counterfactuals"]] == ["remove", "add"]
    c = TestClient(create_app(ws))
    assert c.post("/login", data={"name": "ann", "next": "/"}, follow_redirects=False).status_code == 303
    page = c.get(f"/review/{k}/{l}")
    assert page.status_code == 200 and "Counterfactuals on real images" in page.text
    pair = shown_pairs(ws)[(k, l)][0]
    for shown in rec["counterfactuals"]:
        for name, path in shown["files"].items():
            from spurious.label.store import file_key

            key = file_key(path)
            assert f"/img/{key}" in page.text, name
            r = c.get(f"/img/{key}")
            assert r.status_code == 200 and r.content == Path(path).read_bytes()
    before = pair.optimised["before"]["probability"]
    assert f"{before:.3f}"[:4] in page.text


def test_the_demo_report_card_shows_the_pairs(ws_with_pairs) -> None:  # type: ignore[no-untyped-def]
    from spurious.demo._pipeline import _FAST, FoundComponent, _counterfactuals
    from spurious.demo._report import _found_card

    ws, k, l = ws_with_pairs
    out = ws.parent
    f = FoundComponent(k, f"class {k}", l, None, 0.0, 0.5)
    card = _found_card(f, out, out, shown_pairs(ws))
    for pair in shown_pairs(ws)[(k, l)]:
        for path in (pair.original, pair.counterfactual, pair.difference, pair.heatmap):
            assert f'src="{path.relative_to(out).as_posix()}"' in card
    assert "DVCE" not in card
    # the demo's own step: an image-space remove- and add-pair and a DVCE add-pair (the diffusion engine on
    # the tiny diffusion recipe under --fast) per found component, scored on the standard model too
    _counterfactuals(ws, [f], _FAST, "demo:standard-tiny", progress=False)
    entries = json.loads((ws / "counterfactual" / "index.json").read_text())["components"][f"{k}/{l}"]
    runs = {e["run"] for e in entries}
    assert len(runs) == 5  # the fixture's two runs (3 steps, no eval model) and the demo's three (other settings)
    assert any([m["role"] for m in e["models"]] == ["optimised", "eval"] for e in entries)
    pairs = shown_pairs(ws)[(k, l)]
    assert [(p.mode, p.engine) for p in pairs] == [("remove", "image"), ("add", "image"), ("add", "diffusion")]
    dvce = pairs[-1]
    assert dvce.record["diffusion"]["component_weight"] > 0 and dvce.record["steps"] == _FAST.dvce_steps
    assert [m["role"] for m in dvce.models] == ["optimised", "eval"]
    assert Image.open(dvce.counterfactual).size == Image.open(dvce.original).size
    card = _found_card(f, out, out, shown_pairs(ws))
    assert card.count("DVCE add: p(k)") == 1
    assert f'src="{dvce.counterfactual.relative_to(out).as_posix()}"' in card
