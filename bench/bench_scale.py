"""ImageNet's class count end to end: `npca` / `fix` / `retrieve` at 1000 classes, and the label server
at 2k and 10k components with two concurrent labelers over real HTTP.

Pipeline (1000 classes, minimal settings): a head-only workspace (random linear head, no image
model: the stages read features only) with simulated training features (``--per-class`` rows of
``--dim`` float16 per class, a power-law spectrum) and a simulated unlabelled pool
(``--pool`` rows); then ``spurious npca --components 10``, ``spurious fix`` (one component per
class) and ``spurious retrieve --top-components 10 --top 3 --min-votes 1``, each in its own process
under ``/usr/bin/time`` (seconds, peak RSS).

Label server (``--label-classes``, default 200 and 1000 classes x 10 components = 2k and 10k):
a workspace with a ``visualize`` table per class (10 component records, no image files) and
three retrieval candidates per component; ``spurious label WS --no-browser`` runs as its own
process (uvicorn on 127.0.0.1); start-up is the time until ``/login`` answers, first (a new label
store: every class table read) and second (nothing changed). Two other labelers' verdicts on every
component and candidate are then written (so the "disagreements" filter and the counts have
work), and two labeler threads, each with its own keep-alive HTTP connection and session, run at
the same time on different parts of the list:

* verdict phase: ``POST /api/review/K/L?filter=unlabeled`` back to back -> verdicts/s of both together;
* mixed phase, per item: the verdict POST, the next review page, three ``POST /api/curate/K/L``,
  the curate page, and every fifth item the overview ``/``, ``/class/K``, ``/api/progress`` and
  ``/review?filter=disagreements``; p50/p95 per route.

    python bench/bench_scale.py                      # ~5 minutes on 2 busy cores
    python bench/bench_scale.py --skip-pipeline      # the label server only

Prints one JSON document, then a table with the p95 ratio (10k / 2k) per route.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import simulate_features  # noqa: E402

PER_CLASS = 10  # components per class
CANDIDATES = 3  # retrieval candidates per component
SPURIOUS = [sys.executable, "-m", "spurious"]


# ---------------------------------------------------------------------------- pipeline
def _timed(cmd: list[str], log: Path) -> dict[str, float]:
    """Run a CLI command in its own process; its wall seconds and peak RSS (MiB)."""
    stats = log.with_suffix(".time")
    t0 = time.perf_counter()
    if Path("/usr/bin/time").is_file():
        with open(log, "w") as fh:
            subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(stats), *cmd], check=True, stdout=fh,
                           stderr=subprocess.STDOUT)
        rss = float(stats.read_text().split()[-1]) / 1024
    else:  # getrusage of the children: the largest child so far
        import resource

        with open(log, "w") as fh:
            subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(rss)}


def pipeline(root: Path, classes: int, per_class: int, dim: int, pool: int) -> dict[str, object]:
    from spurious.workspace import Workspace, import_features

    ws_dir = root / "pipeline"
    t0 = time.perf_counter()
    phi, labels, W, b = simulate_features(root / "phi.npy", classes, per_class, dim, seed=0)
    ws = Workspace.create_from_head(ws_dir, W, b, spec="bench:scale", class_names=[f"class{k}" for k in range(classes)])
    import_features(ws_dir, phi, labels, [f"train/{i}" for i in range(len(labels))], split="train")
    rng = np.random.default_rng(1)
    pool_phi = np.lib.format.open_memmap(root / "pool.npy", mode="w+", dtype=np.float16, shape=(pool, dim))
    for s in range(0, pool, 65536):  # pool images: training-like rows of random classes, more noise
        n = min(65536, pool - s)
        pool_phi[s:s + n] = (phi[rng.integers(0, len(labels), n)] + rng.normal(0, 0.3, (n, dim))).astype(np.float16)
    pool_phi.flush()
    import_features(ws_dir, np.load(root / "pool.npy", mmap_mode="r"), np.full(pool, -1),
                    [f"pool/{i}" for i in range(pool)], split="pool")
    out: dict[str, object] = {"classes": classes, "train_rows": int(len(labels)), "dim": dim, "pool_rows": pool,
                              "workspace_seconds": round(time.perf_counter() - t0, 1)}
    del ws
    comps = root / "comps.json"
    comps.write_text(json.dumps({str(k): [0] for k in range(classes)}))
    ws_arg = str(ws_dir)
    out["npca"] = _timed([*SPURIOUS, "npca", ws_arg, "--components", str(PER_CLASS), "--no-progress", "--json"],
                         root / "npca.log")
    out["fix"] = _timed([*SPURIOUS, "fix", ws_arg, "--components", str(comps), "--no-progress", "--json"],
                        root / "fix.log")
    out["retrieve"] = _timed([*SPURIOUS, "retrieve", ws_arg, "--top-components", str(PER_CLASS), "--top",
                              str(CANDIDATES), "--min-votes", "1", "--no-progress", "--json"], root / "retrieve.log")
    with open(ws_dir / "retrieve" / "candidates.jsonl") as fh:
        out["retrieve"]["candidates"] = sum(1 for line in fh if line.strip())  # type: ignore[index]
    out["retrieve"]["gallery_files"] = sum(1 for _ in (ws_dir / "retrieve").rglob("*.html"))  # type: ignore[index]
    return out


# ---------------------------------------------------------------------------- label server
def label_workspace(root: Path, classes: int) -> Path:
    """A head-only workspace with a visualize table per class and a candidates file (no image files)."""
    from spurious.workspace import Workspace

    rng = np.random.default_rng(0)
    ws = Workspace.create_from_head(root, rng.normal(size=(classes, 8)), rng.normal(size=classes),
                                    spec="bench:label", class_names=[f"class{k}" for k in range(classes)])
    vis = ws.root / "visualize"
    vis.mkdir()
    (vis / "manifest.json").write_text(json.dumps({"format": "spurious-visualize", "version": 1,
                                                   "model_fingerprint": ws.model_fingerprint}))
    lines = []
    for k in range(classes):
        folder = vis / f"class_{k:05d}"
        folder.mkdir()
        recs = [{"rank": r + 1, "component": l, "eigenvalue": 10.0 / (r + 1), "npfv_probability": 0.5,
                 "npfv_alpha": 3.0, "npfv_top3": [{"class": k, "name": f"class{k}", "probability": 0.7}],
                 "npfv_png": f"npfv_l{l:04d}.png", "npfv_heatmap_png": f"npfv_l{l:04d}_cam.png",
                 "top_images": [{"id": f"train/{k}/{l}_{j}", "row": j, "alpha": 5.0 - j, "probability": 0.9,
                                 "png": f"top_l{l:04d}_{j}.png", "heatmap_png": f"top_l{l:04d}_{j}_cam.png",
                                 "error": None} for j in range(5)]}
                for r, l in enumerate(range(PER_CLASS))]
        (folder / "components.json").write_text(json.dumps({"format": "spurious-visualize-class", "version": 1,
                                                            "class": k, "name": f"class{k}", "components": recs}))
        for l in range(PER_CLASS):
            for j in range(CANDIDATES):
                lines.append(json.dumps({"class": k, "component": l, "rank": j, "id": f"pool/{k}_{l}_{j}",
                                         "path": None, "alpha": 9.0 - j, "votes": 1, "models": 1}))
    ret = ws.root / "retrieve"
    ret.mkdir()
    (ret / "manifest.json").write_text(json.dumps({"format": "spurious-retrieve",
                                                   "model_fingerprint": ws.model_fingerprint}))
    (ret / "candidates.jsonl").write_text("\n".join(lines) + "\n")
    return ws.root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``spurious label WS --no-browser`` in its own process; ``seconds``: until ``/login`` answered."""

    def __init__(self, ws: Path) -> None:
        self.port = _free_port()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([*SPURIOUS, "label", str(ws), "--no-browser", "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the label server exited with {self.proc.returncode}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/login")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.02)
        self.seconds = time.perf_counter() - t0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class Labeler:
    """One labeler: a keep-alive connection, a session, latencies per route."""

    def __init__(self, port: int, name: str) -> None:
        self.con = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.times: dict[str, list[float]] = {}
        body = f"name={name}&next=/"
        self.con.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
        r = self.con.getresponse()
        r.read()
        self.cookie = r.getheader("set-cookie", "").split(";")[0]
        assert self.cookie.startswith("spurious_session="), r.status

    def call(self, route: str, method: str, path: str, body: object = None) -> bytes:
        headers = {"Cookie": self.cookie}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body), "application/json"
        t0 = time.perf_counter()
        self.con.request(method, path, data, headers)
        r = self.con.getresponse()
        out = r.read()
        self.times.setdefault(route, []).append(time.perf_counter() - t0)
        assert r.status in (200, 303), (path, r.status, out[:200])
        return out


def _run_both(work: list[threading.Thread]) -> float:
    t0 = time.perf_counter()
    for t in work:
        t.start()
    for t in work:
        t.join()
    return time.perf_counter() - t0


def label_server(root: Path, classes: int, verdicts: int, items: int) -> dict[str, object]:
    ws = label_workspace(root / f"label{classes}", classes)
    first = Server(ws)
    first.stop()
    second = Server(ws)
    second.stop()
    # two other labelers' verdicts on everything (written directly, like an earlier day of labelling)
    with sqlite3.connect(ws / "labels.sqlite") as con:
        con.executemany("INSERT INTO component_verdicts (labeler, class, component, verdict, created, updated) "
                        "VALUES (?, ?, ?, ?, 'now', 'now')",
                        [(who, k, l, ("spurious", "core", "unsure")[(k + l * (i + 1)) % 3])
                         for k in range(classes) for l in range(PER_CLASS) for i, who in enumerate(("bob", "cy"))])
        con.executemany("INSERT INTO image_verdicts (labeler, class, component, id, verdict, created, updated) "
                        "VALUES (?, ?, ?, ?, ?, 'now', 'now')",
                        [(who, k, l, f"pool/{k}_{l}_{j}", ("in", "out")[(k + j + i) % 2]) for k in range(classes)
                         for l in range(PER_CLASS) for j in range(CANDIDATES) for i, who in enumerate(("bob", "cy"))])
    # the store's part of a start in this process: open + sync with nothing changed, then with one class changed
    from spurious.label import LabelStore

    t0 = time.perf_counter()
    LabelStore(ws, sync=True)
    sync_unchanged = time.perf_counter() - t0
    table = ws / "visualize" / "class_00000" / "components.json"
    data = json.loads(table.read_text())
    data["components"][0]["eigenvalue"] = 11.0
    table.write_text(json.dumps(data))
    t0 = time.perf_counter()
    LabelStore(ws, sync=True)
    sync_one_changed = time.perf_counter() - t0
    server = Server(ws)
    try:
        labelers = [Labeler(server.port, name) for name in ("ann", "dee")]
        starts = [classes // 4, (3 * classes) // 4]  # two parts of the list, so they do not judge the same items

        def verdict_phase(who: Labeler, start: int) -> None:
            for i in range(verdicts):
                k, l = start + i // PER_CLASS, i % PER_CLASS
                who.call("POST /api/review/K/L (verdict phase)", "POST", f"/api/review/{k}/{l}?filter=unlabeled",
                         {"verdict": ("spurious", "core")[i % 2]})

        wall = _run_both([threading.Thread(target=verdict_phase, args=a) for a in zip(labelers, starts, strict=True)])
        rate = 2 * verdicts / wall

        def mixed(who: Labeler, start: int) -> None:
            for i in range(verdicts, verdicts + items):
                k, l = start + i // PER_CLASS, i % PER_CLASS
                who.call("POST /api/review/K/L", "POST", f"/api/review/{k}/{l}?filter=unlabeled",
                         {"verdict": "core", "note": "bench"})
                nk, nl = (k, l + 1) if l + 1 < PER_CLASS else (k + 1, 0)
                who.call("GET /review/K/L", "GET", f"/review/{nk}/{nl}?filter=unlabeled")
                for j in range(CANDIDATES):
                    who.call("POST /api/curate/K/L", "POST", f"/api/curate/{k}/{l}",
                             {"id": f"pool/{k}_{l}_{j}", "verdict": ("in", "out", "trash")[j]})
                who.call("GET /curate/K/L", "GET", f"/curate/{k}/{l}?filter=unlabeled")
                if i % 5 == 0:
                    who.call("GET /", "GET", f"/?page={1 + k // 50}")
                    who.call("GET /class/K", "GET", f"/class/{k}")
                    who.call("GET /api/progress", "GET", "/api/progress")
                    who.call("GET /review?filter=disagreements", "GET", f"/review?filter=disagreements&cls={k}")

        mixed_wall = _run_both([threading.Thread(target=mixed, args=a) for a in zip(labelers, starts, strict=True)])
    finally:
        server.stop()
    routes: dict[str, dict[str, float]] = {}
    for name in labelers[0].times:
        ms = np.array(labelers[0].times[name] + labelers[1].times[name]) * 1e3
        routes[name] = {"n": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 1),
                        "p95_ms": round(float(np.percentile(ms, 95)), 1)}
    requests = sum(len(v) for who in labelers for k, v in who.times.items() if "verdict phase" not in k)
    return {"components": classes * PER_CLASS, "candidates": classes * PER_CLASS * CANDIDATES,
            "startup_first_s": round(first.seconds, 2), "startup_second_s": round(second.seconds, 2),
            "startup_third_s": round(server.seconds, 2), "store_open_sync_unchanged_s": round(sync_unchanged, 3),
            "store_open_sync_one_class_changed_s": round(sync_one_changed, 3),
            "verdicts_per_s_two_labelers": round(rate, 1), "mixed_requests_per_s": round(requests / mixed_wall, 1),
            "routes": routes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=1000, help="pipeline classes")
    ap.add_argument("--per-class", type=int, default=50, help="training rows per class")
    ap.add_argument("--dim", type=int, default=64, help="feature dimension")
    ap.add_argument("--pool", type=int, default=100_000, help="pool rows")
    ap.add_argument("--label-classes", type=int, nargs="+", default=[200, 1000], help="x 10 components")
    ap.add_argument("--verdicts", type=int, default=150, help="verdict POSTs per labeler (verdict phase)")
    ap.add_argument("--items", type=int, default=40, help="items per labeler (mixed phase)")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir; deleted after)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.dir))
    res: dict[str, object] = {"benchmark": "scale", "cpus": len(os.sched_getaffinity(0))}
    try:
        if not args.skip_pipeline:
            res["pipeline"] = pipeline(root, args.classes, args.per_class, args.dim, args.pool)
        res["label"] = {str(c * PER_CLASS): label_server(root, c, args.verdicts, args.items)
                        for c in args.label_classes}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(res, indent=1))
    label: dict[str, dict[str, object]] = res["label"]  # type: ignore[assignment]
    sizes = list(label)
    print(f"\n{'route':<40}" + "".join(f"{s + ' p50':>12}{'p95':>8}" for s in sizes)
          + (f"{'p95 ratio':>11}" if len(sizes) > 1 else ""))
    for route in label[sizes[0]]["routes"]:  # type: ignore[union-attr]
        cells = [label[s]["routes"][route] for s in sizes]  # type: ignore[index]
        line = f"{route:<40}" + "".join(f"{c['p50_ms']:>12}{c['p95_ms']:>8}" for c in cells)
        if len(sizes) > 1:
            line += f"{cells[-1]['p95_ms'] / cells[0]['p95_ms']:>11.2f}"
        print(line)
    for key in ("verdicts_per_s_two_labelers", "mixed_requests_per_s", "startup_first_s", "startup_second_s",
                "store_open_sync_unchanged_s", "store_open_sync_one_class_changed_s"):
        print(f"{key:<40}" + "".join(f"{label[s][key]:>20}" for s in sizes))


if __name__ == "__main__":
    main()
