"""Device and rank plumbing shared by the stages (spurious._dist), and two ranks under torchrun: extract,
npca, visualize and score equal one process; a rank-0 rejection fails every rank at once.

Every torchrun command runs in **one** ``torchrun --nproc_per_node=2`` launch (tests/_two_ranks.py runs the jobs
in turn on each rank, in one process group): a launch spends most of its time starting three
interpreters that import torch, so one launch for all stages instead of one per stage. Each test then
checks its job's records and compares with the single-process run (in-process: it needs no process of
its own).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import cli_in_process, tiny_classifier, write_images

from spurious._dist import all_sum, dist_info, resolve_device


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = dist_info()
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
    assert all_sum(7) == 7


def test_model_device_errors() -> None:
    from conftest import tiny_classifier
    from spurious.models import Classifier

    clf = tiny_classifier()
    with pytest.raises(ValueError, match="unknown device"):
        Classifier.from_module(clf.model, clf.preprocessing, device="tpu")


# ---------------------------------------------------------------------------- two ranks under torchrun

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).resolve().parent / "_two_ranks.py"


def _checkpoint(path: Path, seed: int) -> Path:
    import timm

    torch.manual_seed(seed)
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=5).state_dict(), path)
    return path


class TwoRanks:
    """The prepared inputs of every job and, after the launch, each job's record per rank."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs: list[dict[str, Any]] = []
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.inputs: dict[str, Any] = {}

    def add(self, name: str, argv: list[str]) -> None:
        self.jobs.append({"name": name, "argv": argv})

    def launch(self) -> None:
        jobs, out = self.root / "jobs.json", self.root / "records"
        out.mkdir()
        jobs.write_text(json.dumps(self.jobs))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            str(DRIVER), str(jobs), str(out)], capture_output=True, text=True, env=env, cwd=REPO,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        for job in self.jobs:
            self.records[job["name"]] = [json.loads((out / f"{job['name']}.rank{rank}.json").read_text())
                                         for rank in (0, 1)]

    def ok(self, name: str) -> dict[str, Any]:
        """Rank 0's record of a job that both ranks finished with exit code 0."""
        rank0, rank1 = self.records[name]
        assert rank0["code"] == 0, rank0["stderr"][-3000:]
        assert rank1["code"] == 0, rank1["stderr"][-3000:]
        return rank0


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory, demo_models: dict[str, object],
              planted_ws: Path) -> TwoRanks:
    # demo_models: the score job's model is in the session cache before the ranks start (both would train it)
    from test_score import make_bench

    from spurious.extract import extract

    runs = TwoRanks(tmp_path_factory.mktemp("two-ranks"))
    root = runs.root

    # extract: a timm checkpoint on two class folders, shards of 3 split between the ranks
    data = write_images(root / "extract" / "data", {"x": 9, "y": 8}, size=48)
    spec = f"timm:test_resnet@{_checkpoint(root / 'extract' / 'ckpt.pt', 0)}"
    common = ["--model", spec, "--data", str(data), "--shard-size", "3", "--batch-size", "2", "--workers", "0",
              "--no-progress", "--device", "cpu"]
    runs.inputs["extract"] = common
    runs.add("extract", ["extract", str(root / "extract" / "ws_dist"), *common, "--json"])

    # npca: classes of 9, 30 and 6 images split between the ranks
    npca_ws = root / "npca" / "ws"
    extract(npca_ws, model=tiny_classifier(num_classes=3), data=write_images(root / "npca" / "data",
                                                                              {"a": 9, "b": 30, "c": 6}),
            num_workers=0, progress=False, dtype="float32", shard_size=8)
    runs.add("npca", ["npca", str(npca_ws), "--components", "4", "--device", "cpu", "--no-progress"])

    # visualize: the planted workspace without its visualize stage
    vis_ws = root / "visualize" / "ws"
    shutil.copytree(planted_ws, vis_ws, ignore=shutil.ignore_patterns("visualize"))
    runs.add("visualize", ["visualize", str(vis_ws), "--classes", "0", "1", "2", "--candidates", "3", "--keep", "2",
                           "--steps", "2", "--top-images", "2", "--device", "cpu", "--no-progress", "--json"])

    # score: a spurious benchmark and a val folder, chunks of 2 images split between the ranks
    spu, val = make_bench(root / "score")
    score_common = ["--model", "demo:standard-tiny", "--spurious", str(spu), "--val", str(val), "--chunk-size", "2",
                    "--batch-size", "2", "--workers", "0", "--no-progress", "--device", "cpu", "--no-plots",
                    "--class-map", "identity", "--json"]
    runs.inputs["score"] = score_common
    runs.add("score", ["score", "--out", str(root / "score" / "dist"), *score_common])

    # last (it fails): a workspace made with another model, which rank 0 rejects
    rejected_data = write_images(root / "reject" / "data", {"x": 3, "y": 3}, size=32)
    reject_common = ["--data", str(rejected_data), "--workers", "0", "--no-progress", "--device", "cpu"]
    code, _, err = cli_in_process(["extract", str(root / "reject" / "ws"), "--model", spec, *reject_common])
    assert code == 0, err
    other = _checkpoint(root / "reject" / "other.pt", 1)
    runs.add("extract_rejected", ["extract", str(root / "reject" / "ws"), "--model", f"timm:test_resnet@{other}",
                                  *reject_common])

    runs.launch()
    return runs


@pytest.mark.slow
def test_extract_two_processes_equal_one(two_ranks: TwoRanks) -> None:
    from spurious.store import FeatureStore

    summary = json.loads(two_ranks.ok("extract")["stdout"])
    assert summary["world_size"] == 2 and summary["num_rows"] == 17
    root = two_ranks.root / "extract"
    code, _, err = cli_in_process(["extract", str(root / "ws_one"), *two_ranks.inputs["extract"]])
    assert code == 0, err
    a = FeatureStore(root / "ws_dist" / "features" / "train")
    b = FeatureStore(root / "ws_one" / "features" / "train")
    assert a.ids == b.ids
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    np.testing.assert_allclose(a.phi().astype(np.float32), b.phi().astype(np.float32), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(a.topk()[0], b.topk()[0])
    assert (a.path / "index.jsonl").read_bytes() == (b.path / "index.jsonl").read_bytes()


@pytest.mark.slow
def test_extract_rank0_rejection_fails_every_rank_quickly(two_ranks: TwoRanks) -> None:
    """An incompatible workspace is rejected on rank 0; rank 1 must not wait for the group timeout."""
    rank0, rank1 = two_ranks.records["extract_rejected"]
    assert rank0["code"] != 0 and rank1["code"] != 0
    assert rank0["seconds"] < 200 and rank1["seconds"] < 200  # the gloo group's timeout is 30 minutes
    assert "was made with model" in rank0["stderr"]
    assert "rank 0 failed" in rank1["stderr"]


@pytest.mark.slow
def test_npca_two_ranks_split_classes(two_ranks: TwoRanks) -> None:
    from spurious.npca import fit_class, load_npca
    from spurious.workspace import Workspace

    two_ranks.ok("npca")
    ws = two_ranks.root / "npca" / "ws"
    dist = load_npca(ws)
    assert dist.classes == [0, 1, 2]
    store = Workspace.open(ws).feature_store("train")
    for k in dist.classes:
        one = fit_class(store.phi(store.rows_of_class(k)), dist[k].w, dist[k].b, k=k, n_components=4)
        np.testing.assert_allclose(dist[k].lam, one.lam, rtol=1e-5)


@pytest.mark.slow
def test_visualize_two_ranks_split_classes(two_ranks: TwoRanks) -> None:
    rank0 = two_ranks.ok("visualize")
    assert two_ranks.records["visualize"][1]["stdout"] == ""  # only rank 0 prints
    summary = json.loads(rank0["stdout"])
    assert summary["world_size"] == 2 and summary["classes_done"] == 3
    ws = two_ranks.root / "visualize" / "ws"
    manifest = json.loads((ws / "visualize" / "manifest.json").read_text())
    assert [c["class"] for c in manifest["classes"]] == [0, 1, 2]
    for k in (0, 1, 2):
        assert len(json.loads((ws / "visualize" / f"class_{k:05d}" / "components.json").read_text())["components"]) == 2


@pytest.mark.slow
def test_score_two_processes_equal_one(two_ranks: TwoRanks) -> None:
    d = json.loads(two_ranks.ok("score")["stdout"])
    assert d["world_size"] == 2 and d["images_computed"] == 27
    root = two_ranks.root / "score"
    code, out, err = cli_in_process(["score", "--out", str(root / "one"), *two_ranks.inputs["score"]])
    assert code == 0, err[-3000:]
    s = json.loads(out)
    assert d["rows"] == s["rows"]
    assert d["per_class"] == s["per_class"]
    chunks = sorted(p.name for p in (root / "dist" / "cache").rglob("c*.npz"))
    assert chunks == sorted(p.name for p in (root / "one" / "cache").rglob("c*.npz")) and len(chunks) == 14
