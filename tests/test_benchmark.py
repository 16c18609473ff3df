"""Benchmark builder: Spurious ImageNet layout read back by the dataset reader, provenance, determinism,
atomic replacement, the label store as the source, errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from spurious.benchmark import benchmark_folder_name, build_benchmark, read_accepted
from spurious.cli import main
from spurious.datasets import parse_spurious_folder, spurious_imagenet
from spurious.npca import npca
from spurious.retrieve import load_candidates, retrieve
from spurious.workspace import import_features
from spurious.workspace import Workspace

NAMES = ["tabby_cat", "bird feeder!", "c"]
K, D = 3, 8


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace whose pool features point at real image files, with a finished retrieval."""
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    pool = root / "pool"
    ids = []
    for i in range(36):
        rel = f"sub/img_{i:03d}.jpg" if i % 4 == 0 else f"img_{i:03d}.png"
        (pool / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(pool / rel)
        ids.append(rel)
    W = rng.standard_normal((K, D)).astype(np.float32)
    pool_phi = np.abs(rng.standard_normal((36, D))).astype(np.float32)
    b = -np.median(pool_phi @ W.T, axis=0).astype(np.float32)  # every class wins on about a third of the pool
    Workspace.create_from_head(root / "ws", W, b, spec="synth:bench", class_names=NAMES)
    phi = np.abs(rng.standard_normal((30 * K, D))).astype(np.float32)
    import_features(root / "ws", phi, np.repeat(np.arange(K), 30), [f"t{i}" for i in range(30 * K)])
    npca(root / "ws", n_components=3, device="cpu", progress=False)
    import_features(root / "ws", pool_phi, np.full(36, -1), ids,
                    split="pool", data_spec=f"pool:{pool}")
    retrieve(root / "ws", top_components=2, min_votes=1, top_n=6, progress=False)
    return root / "ws"


Picked = dict[tuple[int, int], list[dict[str, Any]]]


def _accept(ws: Path, path: Path, pick: dict[tuple[int, int], list[int]]) -> Picked:
    """Write an accepted-images file (only class, component, id; shuffled) and return the candidates it names."""
    cands = load_candidates(ws)
    chosen: Picked = {}
    for (k, l), ranks in pick.items():
        recs = [c for c in cands if (c["class"], c["component"]) == (k, l)]
        chosen[(k, l)] = [recs[r] for r in ranks]
    lines = [{"class": k, "component": l, "id": r["id"]} for (k, l), rs in chosen.items() for r in rs]
    np.random.default_rng(1).shuffle(lines)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return chosen


def _full_pairs(cands: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(class, component) pairs with 6 candidates, of two different classes first."""
    pairs = sorted({(c["class"], c["component"]) for c in cands})
    full = [p for p in pairs if sum((c["class"], c["component"]) == p for c in cands) == 6]
    assert len({k for k, _ in full}) >= 2
    return sorted(full, key=lambda p: (p[1], p[0]))


def test_build_reads_back_with_the_right_classes_and_provenance(ws: Path, tmp_path: Path) -> None:
    cands = load_candidates(ws)
    pairs = _full_pairs(cands)
    pick = {pairs[0]: [5, 0, 3, 1], pairs[1]: [2, 4]}
    chosen = _accept(ws, tmp_path / "acc.jsonl", pick)
    out = tmp_path / "bench"
    with pytest.warns(UserWarning, match="fewer than 3 accepted images"):
        r = build_benchmark(ws, out, per_component=3, accept=tmp_path / "acc.jsonl")
    assert r.images == 5 and r.components == 2 and r.short == [f"{pairs[1][0]}/{pairs[1][1]}: 2"]
    # the dataset reader sees the classes and components (folder names parsed from the layout)
    ds = spurious_imagenet(out, class_names=NAMES)
    assert len(ds) == 5
    for rec in ds.records:
        folder = rec.id.split("/")[0]
        assert "_" not in folder.split("_", 3)[3].rsplit("_", 1)[0]  # the class name is sanitised
        assert parse_spurious_folder(folder) == (rec.label, rec.meta["component"])
    assert sorted({(rec.label, rec.meta["component"]) for rec in ds.records}) == sorted(pick)
    # per component: the first 3 by rank (oracle: sort the picked candidates by rank), bytes copied
    manifest = json.loads((out / "manifest.json").read_text())
    for (k, l), recs in chosen.items():
        want = sorted(recs, key=lambda c: c["rank"])[:3]
        got = [im for im in manifest["images"] if (im["class"], im["component"]) == (k, l)]
        assert [g["id"] for g in got] == [w["id"] for w in want]
        for g, w in zip(got, want):
            assert g["alpha"] == w["alpha"] and g["votes"] == w["votes"] and g["labelers"] == []
            assert (out / g["file"]).read_bytes() == Path(w["path"]).read_bytes()
            assert g["sha256"] == _sha(Path(w["path"]))
            assert Path(g["file"]).suffix == Path(w["path"]).suffix
    assert manifest["model"]["fingerprint"] == Workspace.open(ws).model_fingerprint
    assert manifest["retrieve"]["min_votes"] == 1
    readme = (out / "README.md").read_text()
    assert "2 components of 2 classes, 5 images" in readme and "Licence" in readme
    assert (out / "timestamp.txt").is_file()
    assert benchmark_folder_name(0, "tabby_cat", 3) == "spurious_imagenet_0_tabby-cat_3"
    assert benchmark_folder_name(1, "bird feeder!", 0, "planted_spurious") == "planted_spurious_1_bird-feeder_0"


@pytest.mark.filterwarnings("ignore:.*fewer than")
def test_reading_a_built_benchmark_skips_nothing_and_warns_nothing(ws: Path, tmp_path: Path) -> None:
    """README.md, manifest.json and timestamp.txt at the top are the builder's, not stray files: the
    reader skips nothing, and extracting the benchmark (which warns about skipped files) stays silent."""
    import warnings

    from conftest import tiny_classifier

    from spurious.extract import extract

    pairs = _full_pairs(load_candidates(ws))
    _accept(ws, tmp_path / "acc.jsonl", {pairs[0]: [0, 1], pairs[1]: [2]})
    out = tmp_path / "bench"
    build_benchmark(ws, out, per_component=2, accept=tmp_path / "acc.jsonl")
    assert {p.name for p in out.iterdir() if p.is_file()} == {"README.md", "manifest.json", "timestamp.txt"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = spurious_imagenet(out, class_names=NAMES)
        r = extract(tmp_path / "ews", model=tiny_classifier(num_classes=K), data=ds, num_workers=0, progress=False)
    assert ds.skipped == [] and len(ds) == 3
    manifest = json.loads((Path(r.path) / "manifest.json").read_text())
    assert manifest["skipped_files"]["count"] == 0 and manifest["num_rows"] == 3


@pytest.mark.filterwarnings("ignore:.*fewer than")
def test_deterministic_and_atomic(ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cands = load_candidates(ws)
    pairs = _full_pairs(cands)
    _accept(ws, tmp_path / "acc.jsonl", {pairs[0]: [0, 1, 2], pairs[1]: [3, 4]})
    a, b = tmp_path / "a", tmp_path / "b"
    build_benchmark(ws, a, per_component=2, accept=tmp_path / "acc.jsonl")
    build_benchmark(ws, b, per_component=2, accept=tmp_path / "acc.jsonl", link=True)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    for f in files:
        if f != "timestamp.txt":
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    # an existing folder is refused, and kept whole when a replacement fails half-way
    with pytest.raises(ValueError, match="already exists"):
        build_benchmark(ws, a, per_component=2, accept=tmp_path / "acc.jsonl")
    before = {f: (a / f).read_bytes() for f in files}
    calls = {"n": 0}
    real = shutil.copyfile

    def failing(src: Any, dst: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(shutil, "copyfile", failing)
    with pytest.raises(OSError, match="disk full"):
        build_benchmark(ws, a, per_component=3, accept=tmp_path / "acc.jsonl", overwrite=True)
    monkeypatch.setattr(shutil, "copyfile", real)
    assert {f: (a / f).read_bytes() for f in files} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    r = build_benchmark(ws, a, per_component=3, accept=tmp_path / "acc.jsonl", overwrite=True)
    assert r.images == 5 and len(spurious_imagenet(a, class_names=NAMES)) == 5


@pytest.mark.filterwarnings("ignore:.*fewer than")
def test_build_from_the_label_store(ws: Path, tmp_path: Path) -> None:
    from spurious.label.store import LabelStore

    store = LabelStore(ws, sync=True)
    try:
        cands = load_candidates(ws)
        k, l = cands[0]["class"], cands[0]["component"]
        recs = [c for c in cands if (c["class"], c["component"]) == (k, l)]
        for c in recs[:4]:
            store.set_image_verdict("alice", k, l, c["id"], "out")
        for c in recs[1:3]:
            store.set_image_verdict("bob", k, l, c["id"], "out")
        store.set_image_verdict("bob", k, l, recs[0]["id"], "in")
        r = build_benchmark(ws, tmp_path / "b", per_component=75)
        manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
        assert r.images == 2 and [im["id"] for im in manifest["images"]] == [recs[1]["id"], recs[2]["id"]]
        assert all(im["labelers"] == ["alice", "bob"] for im in manifest["images"])
        assert "label store" in manifest["source"]
        # one labeler is enough when asked
        assert build_benchmark(ws, tmp_path / "c", min_agree=1).images == 4
    finally:
        (ws / "labels.sqlite").unlink()
        for extra in ws.glob("labels.sqlite-*"):
            extra.unlink()


def test_errors(ws: Path, tmp_path: Path) -> None:
    acc = tmp_path / "acc.jsonl"
    with pytest.raises(FileNotFoundError, match="has no label store"):
        build_benchmark(ws, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_benchmark(ws, tmp_path / "o", accept=acc)
    acc.write_text('{"class": 0, "id": "img_001.png"}\n')
    with pytest.raises(ValueError, match="record 0 must be an object with 'class', 'component' and 'id'"):
        build_benchmark(ws, tmp_path / "o", accept=acc)
    acc.write_text('{"class": 0, "component": 0, "id": "nope.png"}\n')
    with pytest.raises(ValueError, match="'nope.png' is not a retrieval candidate"):
        build_benchmark(ws, tmp_path / "o", accept=acc)
    acc.write_text('{"class": 0, "component": 0, "id": "x", "path": "/nonexistent/x.png"}\n')
    with pytest.raises(FileNotFoundError, match="x.png' does not exist"):
        build_benchmark(ws, tmp_path / "o", accept=acc)
    acc.write_text('{"class": 0, "component": 0, "id": "x", "path": null}\n')
    with pytest.raises(FileNotFoundError, match="'x' of class 0, component 0 has no file: the pool was imported"):
        build_benchmark(ws, tmp_path / "o", accept=acc)
    with pytest.raises(ValueError, match="no component has at least 2 accepted images"):
        build_benchmark(ws, tmp_path / "o", accept=acc, min_per_component=2)
    acc.write_text("")
    with pytest.raises(ValueError, match="no accepted images"):
        build_benchmark(ws, tmp_path / "o", accept=acc)
    acc.write_text("not json\n")
    with pytest.raises(ValueError, match="acc.jsonl:1: not JSON"):
        read_accepted(acc)
    with pytest.raises(ValueError, match="per_component must be an integer >= 1"):
        build_benchmark(ws, tmp_path / "o", accept=acc, per_component=0)
    with pytest.raises(ValueError, match="prefix 'spurious' must be two tokens"):
        build_benchmark(ws, tmp_path / "o", accept=acc, prefix="spurious")
    with pytest.raises(ValueError, match=r"class index 1000 does not fit .*0\.\.999"):
        benchmark_folder_name(1000, "x", 0)
    assert not (tmp_path / "o").exists()


def test_cli(ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cands = load_candidates(ws)
    (tmp_path / "acc.jsonl").write_text(json.dumps({k: cands[0][k] for k in ("class", "component", "id")}) + "\n")
    code = main(["benchmark", "build", str(ws), "--out", str(tmp_path / "o"), "--accept", str(tmp_path / "acc.jsonl"),
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["images"] == 1
    code = main(["benchmark", "build", str(ws), "--out", str(tmp_path / "o"), "--accept", str(tmp_path / "acc.jsonl")])
    out, err = capsys.readouterr()
    assert code == 2 and "already exists" in err and err.strip().count("\n") == 0
