"""Label-server request times at 2k and 10k components: this tree against a baseline tree, side by side.

A synthetic label store is filled directly with SQL (``classes`` x 10 components, two labelers'
verdicts on every component), then one labeler who has labelled nothing yet posts review verdicts
through ``TestClient`` (``POST /api/review/K/L?filter=unlabeled``, which answers the next item of
the filter) and opens review pages (``GET /review/K/L``), then judges the three retrieval
candidates of each of those components (``POST /api/curate/K/L``, the other two labelers have
judged them all) and opens their curate pages (``GET /curate/K/L?filter=unlabeled``); p50 and p95
of each, in milliseconds.

    python bench/bench_label_scale.py --baseline /path/to/old/src      # e.g. a checkout of 6c17aa0

With ``--baseline`` the same measurement runs in a subprocess whose ``PYTHONPATH`` is that source
tree, and both are printed side by side; without it only this tree is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PER_CLASS = 10


def measure(classes: int, requests: int) -> dict[str, float]:
    """p50/p95 (ms) of the review and curate verdict POSTs and pages at ``classes`` x 10 components."""
    import sqlite3

    from fastapi.testclient import TestClient

    from spurious.label import LabelStore
    from spurious.label.app import create_app
    from spurious.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        ws = Workspace.create_from_head(Path(tmp) / "ws", rng.normal(size=(classes, 8)), rng.normal(size=classes),
                                        spec="bench:label", class_names=[f"class{k}" for k in range(classes)])
        store = LabelStore(ws)
        comps = [(k, l, l) for k in range(classes) for l in range(PER_CLASS)]
        verdicts = [(who, k, l, ("spurious", "core", "unsure")[(k + l + i) % 3])
                    for k, l, _ in comps for i, who in enumerate(("bob", "cy"))]
        with sqlite3.connect(store.path) as con:
            con.executemany("INSERT INTO components (class, component, rank, record) VALUES (?, ?, ?, ?)",
                            [(k, l, r, json.dumps({"class": k, "component": l, "rank": r})) for k, l, r in comps])
            con.executemany("INSERT INTO component_verdicts (labeler, class, component, verdict, created, updated) "
                            "VALUES (?, ?, ?, ?, 'now', 'now')", verdicts)
            cands = [(k, l, f"i{j}", j, f"/nowhere/{k}_{l}_{j}.png") for k, l, _ in comps for j in range(3)]
            con.executemany("INSERT INTO candidates (class, component, id, rank, path, record) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            [(k, l, i, j, path, json.dumps({"id": i, "path": path, "rank": j, "alpha": 0.5})) for k, l, i, j, path in cands])
            con.executemany("INSERT INTO image_verdicts (labeler, class, component, id, verdict, created, updated) "
                            "VALUES (?, ?, ?, ?, ?, 'now', 'now')",
                            [(who, k, l, i, ("in", "out")[(k + j + n) % 2]) for k, l, i, j, _ in cands
                             for n, who in enumerate(("bob", "cy"))])
        client = TestClient(create_app(ws, sync=False))
        client.post("/login", data={"name": "ann", "next": "/"})
        start = classes // 2  # the middle of the list
        post, page = [], []
        for i in range(requests):
            k, l = start + i // PER_CLASS, i % PER_CLASS
            t = time.perf_counter()
            r = client.post(f"/api/review/{k}/{l}?filter=unlabeled", json={"verdict": "core"})
            post.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
            t = time.perf_counter()
            r = client.get(f"/review/{k}/{l + 1 if l + 1 < PER_CLASS else 0}?filter=unlabeled")
            page.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
        cpost, cpage = [], []
        for i in range(requests):
            k, l = start + i // PER_CLASS, i % PER_CLASS
            for j in range(3):
                t = time.perf_counter()
                r = client.post(f"/api/curate/{k}/{l}", json={"id": f"i{j}", "verdict": "out"})
                cpost.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            t = time.perf_counter()
            r = client.get(f"/curate/{k}/{l}?filter=unlabeled")
            cpage.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
    ms = {"post": np.array(post) * 1e3, "page": np.array(page) * 1e3,
          "cpost": np.array(cpost) * 1e3, "cpage": np.array(cpage) * 1e3}
    return {f"{name}_{q}": float(np.percentile(v, q)) for name, v in ms.items() for q in (50, 95)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, nargs="+", default=[200, 1000], help="classes (x 10 components)")
    ap.add_argument("--requests", type=int, default=30, help="verdict POSTs (and pages) per size")
    ap.add_argument("--baseline", help="a source tree (its src/ folder) to measure side by side")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the subprocess's output
    args = ap.parse_args()
    here = {str(c): measure(c, args.requests) for c in args.classes}
    if args.json:
        print(json.dumps(here))
        return
    base: dict[str, dict[str, float]] = {}
    if args.baseline:
        env = {**os.environ, "PYTHONPATH": str(Path(args.baseline).resolve())}
        out = subprocess.run([sys.executable, __file__, "--json", "--requests", str(args.requests), "--classes",
                              *map(str, args.classes)], env=env, check=True, capture_output=True, text=True)
        base = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'components':>10}  {'route':<22}{'baseline p50':>13}{'p95':>8}{'this p50':>10}{'p95':>8}  (ms)")
    for c in args.classes:
        for name, route in (("post", "POST /api/review/K/L"), ("page", "GET /review/K/L"),
                            ("cpost", "POST /api/curate/K/L"), ("cpage", "GET /curate/K/L")):
            b = base.get(str(c))
            old = f"{b[f'{name}_50']:>13.1f}{b[f'{name}_95']:>8.1f}" if b else f"{'-':>13}{'-':>8}"
            print(f"{c * PER_CLASS:>10}  {route:<22}{old}{here[str(c)][f'{name}_50']:>10.1f}"
                  f"{here[str(c)][f'{name}_95']:>8.1f}")


if __name__ == "__main__":
    main()
