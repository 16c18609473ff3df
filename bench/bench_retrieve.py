"""Ranking a simulated pool on disk: images/s and peak RSS, against the bare matrix product in RAM.

Writes a feature store of ``--rows`` x ``--dim`` float16 features (shards of 4096 rows, like
``extract``), then ranks it for ``--components`` directions with :func:`spurious.retrieve.rank_pool`
(top ``--keep`` each) in a fresh child process per measurement, twice: on the first quarter of the
rows and on all of them (peak RSS must not grow with the pool), once with the shard files evicted
from the page cache (``posix_fadvise(DONTNEED)``: read from disk) and once warm. The bare
reference is ``A @ X.T`` on float32 chunks already in RAM (same chunk size): measured in the same
child right after each ranking (the load of a shared machine changes by the minute), and in a
separate child over ``--bare-rows`` rows, with and without the float16 -> float32 cast. Rows with a
planted top score check that the ranking is right.

    python bench/bench_retrieve.py --rows 2000000          # ~8.4 GB on disk in --dir, deleted after
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402

SHARD = 4096


def _directions(components: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(123)
    return rng.standard_normal((components, dim)).astype(np.float32), rng.standard_normal(components).astype(np.float32)


def planted_rows(rows: int, components: int) -> np.ndarray:
    """Row that carries the planted top score of each direction (spread over the pool)."""
    return (np.arange(components, dtype=np.int64) * 7919 * SHARD + 17) % rows


def write_store(path: Path, rows: int, dim: int, components: int) -> None:
    """A feature store (manifest + float16 shards) of uniform [0, 1) features with planted rows."""
    from spurious.store import shard_name

    A, _ = _directions(components, dim)
    planted = planted_rows(rows, components)
    (path / "shards").mkdir(parents=True)
    rng = np.random.default_rng(0)
    shards = []
    for i, start in enumerate(range(0, rows, SHARD)):
        n = min(SHARD, rows - start)
        x = rng.random((n, dim), dtype=np.float32)
        for j in np.flatnonzero((planted >= start) & (planted < start + n)):
            x[planted[j] - start] = np.where(A[j] > 0, 60.0, 0.0)  # score 60 * sum(A_j > 0): far above any other
        np.save(path / "shards" / f"{shard_name(i)}.phi.npy", x.astype(np.float16))
        shards.append({"index": i, "start": start, "stop": start + n, "rows": n})
    manifest = {"format": "spurious-features", "version": 1, "num_rows": rows, "dim": dim, "dtype": "float16",
                "model": {"spec": "bench", "fingerprint": "bench"}, "data": {"spec": "bench", "fingerprint": "bench"},
                "shards": shards}
    (path / "manifest.json").write_text(json.dumps(manifest))


def subset_store(src: Path, dst: Path, rows: int) -> None:
    """The first ``rows`` rows of ``src`` as another store (hard links, no extra disk)."""
    m = json.loads((src / "manifest.json").read_text())
    m["shards"] = [s for s in m["shards"] if s["stop"] <= rows]
    m["num_rows"] = sum(s["rows"] for s in m["shards"])
    (dst / "shards").mkdir(parents=True)
    for s in m["shards"]:
        name = f"{s['index']:05d}.phi.npy"
        os.link(src / "shards" / name, dst / "shards" / name)
    (dst / "manifest.json").write_text(json.dumps(m))


def evict(path: Path) -> None:
    for f in (path / "shards").iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------- child processes


def _child_rank(store_dir: str, components: int, keep: int, chunk_rows: int, full_rows: int) -> dict:
    from spurious.retrieve import rank_pool
    from spurious.store import FeatureStore

    store = FeatureStore(store_dir)
    A, c = _directions(components, store.dim)
    t0 = time.perf_counter()
    r = rank_pool(store, A, c, keep, chunk_rows=chunk_rows)
    dt = time.perf_counter() - t0
    planted = planted_rows(full_rows, components)  # where write_store put them
    inside = planted < len(store)
    ok = bool((r.rows[inside, 0] == planted[inside]).all())
    rss = _rss_mib()
    # the bare product right after, in the same process (the load of a shared machine changes by the minute)
    X = np.random.default_rng(2).random((chunk_rows, store.dim), dtype=np.float32)
    A @ X.T  # warm-up
    t1, reps = time.perf_counter(), 8
    for _ in range(reps):
        scores = A @ X.T
        scores -= c[:, None]
    bare = reps * chunk_rows / (time.perf_counter() - t1)
    return {"rows": len(store), "seconds": round(dt, 2), "images_per_second": round(len(store) / dt),
            "bare_float32_in_ram_same_process": round(bare), "ratio_to_bare": round(len(store) / dt / bare, 3),
            "planted_rows_checked": int(inside.sum()), "planted_rows_ranked_first": ok, "peak_rss_mib": round(rss)}


def _child_bare(rows: int, dim: int, components: int, chunk_rows: int) -> dict:
    import torch  # noqa: F401  (same libraries loaded as the ranking child, for a fair RSS baseline)

    A, c = _directions(components, dim)
    rng = np.random.default_rng(1)
    X16 = rng.random((rows, dim), dtype=np.float32).astype(np.float16)
    X32 = X16.astype(np.float32)
    buf = np.empty((chunk_rows, dim), np.float32)
    out: dict = {"rows": rows}
    for name, cast in (("float32_in_ram", False), ("float16_in_ram_numpy_cast", True)):
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            for s in range(0, rows, chunk_rows):
                if cast:
                    np.copyto(buf[: min(chunk_rows, rows - s)], X16[s:s + chunk_rows])
                    x = buf[: min(chunk_rows, rows - s)]
                else:
                    x = X32[s:s + chunk_rows]
                scores = A @ x.T
                scores -= c[:, None]
            best = max(best, rows / (time.perf_counter() - t0))
        out[name] = round(best)
    out["peak_rss_mib_incl_data"] = round(_rss_mib())
    return out


def _child_baseline() -> dict:
    import torch  # noqa: F401

    import spurious.retrieve  # noqa: F401

    return {"peak_rss_mib": round(_rss_mib())}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "rank":
            res = _child_rank(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]))
        elif kind == "bare":
            res = _child_bare(int(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]))
        else:
            res = _child_baseline()
        print(json.dumps(res))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000, help="pool size (the paper's pool: 9M)")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--components", type=int, default=100)
    p.add_argument("--keep", type=int, default=625)
    p.add_argument("--chunk-rows", type=int, default=16384)
    p.add_argument("--bare-rows", type=int, default=131072, help="rows of the in-RAM reference")
    p.add_argument("--dir", default=None, help="where to write the pool (default: a temp dir; deleted after)")
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-retrieve-", dir=args.dir))
    res: dict = {"benchmark": "retrieve_rank", "rows": args.rows, "dim": args.dim, "components": args.components,
                 "keep": args.keep, "chunk_rows": args.chunk_rows, "cpus": len(os.sched_getaffinity(0)),
                 "disk_gb": round(args.rows * args.dim * 2 / 1e9, 2)}
    try:
        t0 = time.perf_counter()
        write_store(root / "full", args.rows, args.dim, args.components)
        subset_store(root / "full", root / "quarter", args.rows // 4)
        res["write_seconds"] = round(time.perf_counter() - t0, 1)
        res["baseline_rss_mib"] = _run_child("baseline")["peak_rss_mib"]
        runs = []
        for name in ("quarter", "full"):
            for cache in ("cold", "warm"):
                if cache == "cold":
                    evict(root / name)
                r = _run_child("rank", str(root / name), str(args.components), str(args.keep), str(args.chunk_rows),
                               str(args.rows))
                runs.append({"store": name, "page_cache": cache, **r})
        res["rank"] = runs
        res["bare"] = _run_child("bare", str(args.bare_rows), str(args.dim), str(args.components), str(args.chunk_rows))
        warm = [r for r in runs if r["store"] == "full" and r["page_cache"] == "warm"][0]
        res["ratio_full_warm_to_separate_bare"] = round(warm["images_per_second"] / res["bare"]["float32_in_ram"], 3)
        res["peak_rss_mib_max"] = max(r["peak_rss_mib"] for r in runs)
        res["projected_9M_seconds_at_full_warm_rate"] = round(9_000_000 / warm["images_per_second"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    emit(res)


if __name__ == "__main__":
    main()
