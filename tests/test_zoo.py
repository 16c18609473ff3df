"""``spurious score --zoo``: the paper's zoo resolves offline, 21k heads map by wnid, the runner resumes per model,
skips a failing model with its reason and puts our figures beside the published ones (issue 20, items 1 and 5)."""

from __future__ import annotations

import csv
import importlib.resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import cli_in_process, write_images

from spurious.score import PAPER_ZOO, paper_zoo, read_zoo, score_zoo

pytestmark = pytest.mark.filterwarnings("ignore:the model does not agree with the labels:UserWarning")  # random nets

CHECKPOINT_IDS = {"robust_resnet", "resnet_salient_imagenet"}  # the reference's two robust ResNet-50s


def _synsets(file: str) -> list[str]:
    return (importlib.resources.files("timm.data") / "_info" / file).read_text().split()


def test_every_paper_zoo_id_resolves_to_a_model_the_installed_timm_knows() -> None:
    """Without downloading anything: timm's name lists and pretrained cfgs only."""
    import timm
    import timm.models

    from spurious.models import list_models

    zoo = paper_zoo()
    assert len(zoo) == 77 and len({m.id for m in zoo}) == 77
    pretrained = set(timm.list_models(pretrained=True))
    for m in zoo:
        if m.checkpoint is not None:
            assert m.id in CHECKPOINT_IDS and m.spec == f"torchvision:resnet50@{{{m.id}}}", m
            assert "torchvision:resnet50" in list_models()
            continue
        prefix, name = m.spec.split(":", 1)
        assert prefix == "timm" and "." in name, m.spec  # every timm model with its pretrained tag
        assert name in pretrained and timm.models.is_model(name), m.spec
        assert timm.models.get_pretrained_cfg(name) is not None, m.spec
    assert {m.id for m in zoo if m.checkpoint} == CHECKPOINT_IDS
    # a few figures as printed in the paper's table
    by_id = {m.id: m for m in zoo}
    p = by_id["robust_resnet"].paper
    assert p is not None and (p.acc, p.spu, p.spufix_acc, p.spufix_spu) == (57.4, 0.630, 56.8, 0.763)
    p = by_id["beitv2_large_patch16_224.in1k_ft_in22k"].paper
    assert p is not None and (p.acc, p.spu, p.spufix_acc, p.spufix_spu) == (None, 0.951, None, 0.951)
    assert by_id["ssl_resnet50"].spec == "timm:resnet50.fb_ssl_yfcc100m_ft_in1k"  # timm's rename of the old id
    assert by_id["volo_d3_224"].spec == "timm:volo_d3_224.sail_in1k"  # printed "VOLO-D5 224": see the note
    assert read_zoo(PAPER_ZOO) == zoo


def test_imagenet_21k_heads_of_the_zoo_map_the_1k_classes_by_wnid() -> None:
    import timm.models

    from spurious import imagenet
    from spurious.score._inputs import Benchmark, class_map_for

    one_k = _synsets("imagenet_synsets.txt")
    assert one_k == imagenet.wnids()
    heads = {}
    for m in paper_zoo():
        if m.checkpoint is None:
            k = int(timm.models.get_pretrained_cfg(m.spec.split(":", 1)[1]).num_classes)
            if k != 1000:
                heads[m.id] = k
    # the ImageNet-21k section of the table, and only it, has other heads than 1000 classes
    assert set(heads) == {m.id for m in paper_zoo() if m.section == "ImageNet21k"} and len(heads) == 14
    files = {21843: "imagenet21k_goog_synsets.txt", 21841: "imagenet22k_synsets.txt"}
    bench = Benchmark(None, None, imagenet.class_names(), True, [0])  # type: ignore[arg-type]
    assert set(heads.values()) <= set(files), heads
    for k in sorted(set(heads.values())):  # one map per head size (the heads of one size share their outputs)
        synsets = _synsets(files[k])
        assert len(synsets) == k
        clf = SimpleNamespace(num_classes=k, spec=f"a {k}-class head")
        cmap, how = class_map_for(clf, None, bench)  # type: ignore[arg-type]
        assert how == "wnid"
        mapped = np.flatnonzero(cmap >= 0)
        assert all(synsets[cmap[c]] == one_k[c] for c in mapped)
        missing = {one_k[c] for c in np.flatnonzero(cmap < 0)}
        assert missing == {w for w in one_k if w not in set(synsets)} == {"n04399382"}  # teddy bear: not in fall11
        assert cmap[281] == synsets.index("n02123045")  # tabby cat
        assert len(np.unique(cmap[mapped])) == mapped.size


def _bench(root: Path) -> tuple[Path, Path]:
    """ImageNet layout: wnid folders of tabby (281) and espresso (967), spurious folders for both."""
    val = write_images(root / "val", {"n02123045": 3, "n07920052": 3}, seed=1)
    spu = write_images(root / "spurious", {"spurious_imagenet_281_tabby_0": 3, "spurious_imagenet_967_espresso_2": 3},
                       seed=2)
    return spu, val


def _csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["model"]: r for r in csv.DictReader(fh)}


def test_zoo_runner_end_to_end_resumes_skips_failures_and_compares_with_the_paper(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import spurious.models
    from spurious.fix import FixHead
    from spurious.models import load_model

    spu, val = _bench(tmp_path)
    vit = load_model("timm:test_vit", pretrained=False, seed=0)
    torch.manual_seed(0)
    head = FixHead(torch.randn(1, vit.num_features), torch.zeros(1), torch.tensor([281]), torch.tensor([0]),
                   num_classes=1000, model_spec=vit.spec, model_fingerprint=vit.fingerprint(), name="SpuFix")
    del vit
    broken = tmp_path / "broken.pt"
    broken.write_text("not a checkpoint")
    zoo = tmp_path / "zoo.tsv"
    zoo.write_text("model_id\tspec\tacc\tspu\tspufix_acc\tspufix_spu\n"
                   "vit\ttimm:test_vit\t80.0\t0.9\t79.0\t0.95\n"
                   "effnet\ttimm:test_efficientnet\t-\t0.8\t-\t0.8\n"
                   "broken\ttorchvision:resnet18@{broken}\t1\t0.5\t1\t0.5\n"
                   "robust\ttorchvision:resnet18@{robust}\t1\t0.5\t1\t0.5\n")
    loads: list[str] = []
    real_load = spurious.models.load_model

    def counting_load(spec: str, **kw: object) -> object:
        loads.append(spec)
        return real_load(spec, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(spurious.models, "load_model", counting_load)
    out = tmp_path / "zoo-out"
    kw = {"spurious": spu, "val": val, "out": out, "pretrained": False, "fixes": [head], "num_workers": 0,
          "progress": False, "device": "cpu", "checkpoints": {"broken": broken}}
    with pytest.warns(UserWarning) as record:
        r = score_zoo(zoo, plots=True, **kw)  # type: ignore[arg-type]
    messages = [str(w.message) for w in record]
    assert any("broken" in m and "failed and is skipped" in m for m in messages)
    assert any("robust skipped" in m and "--checkpoint robust=PATH" in m for m in messages)
    assert r.protocols == ["model", "reference"] and len(r.rows) == 8
    assert sorted(loads) == sorted(["timm:test_vit", "timm:test_efficientnet", f"torchvision:resnet18@{broken.resolve()}"])
    failures = {f["id"]: f for f in r.failures}
    assert set(failures) == {"broken", "robust"}
    assert failures["broken"]["status"] == "failed" and "\n" not in str(failures["broken"]["reason"])
    assert failures["robust"]["status"] == "skipped"
    for protocol in r.protocols:
        table = _csv_rows(out / protocol / "scores.csv")  # the usual table of the protocol: finished models only
        assert set(table) == {"timm:test_vit", "timm:test_vit + SpuFix", "timm:test_efficientnet"}
        v, fixed, e = r.row("vit", protocol), r.row("effnet", protocol), table["timm:test_vit + SpuFix"]
        ours = table["timm:test_vit"]
        assert v.status == "ok" and not v.cached and v.fix == "SpuFix"
        assert v.mauc == pytest.approx(float(ours["mauc"]), abs=1e-6)
        assert v.map == pytest.approx(float(ours["map"]), abs=1e-6)
        assert v.acc == pytest.approx(100 * float(ours["val_accuracy"]), abs=1e-4)
        assert v.d_mauc == pytest.approx(float(ours["mauc"]) - 0.9, abs=1e-6)
        assert v.d_map == pytest.approx(float(ours["map"]) - 0.9, abs=1e-6)
        assert v.d_acc == pytest.approx(100 * float(ours["val_accuracy"]) - 80.0, abs=1e-4)
        assert v.spufix_mauc == pytest.approx(float(e["mauc"]), abs=1e-6)
        assert v.d_spufix_mauc == pytest.approx(float(e["mauc"]) - 0.95, abs=1e-6)
        assert v.d_spufix_acc == pytest.approx(100 * float(e["val_accuracy"]) - 79.0, abs=1e-4)
        assert fixed.paper_acc is None and fixed.d_acc is None and fixed.paper_spu == 0.8 and fixed.fix == ""
        assert fixed.d_mauc == pytest.approx(float(table["timm:test_efficientnet"]["mauc"]) - 0.8, abs=1e-6)
        assert r.row("broken", protocol).status == "failed" and r.row("broken", protocol).mauc is None
        assert (out / protocol / "per_class.csv").is_file() and (out / protocol / "scores.md").is_file()
    with open(out / "zoo.csv", newline="", encoding="utf-8") as fh:
        zoo_csv = list(csv.DictReader(fh))
    assert [(z["id"], z["protocol"], z["status"]) for z in zoo_csv] == [(x.id, x.protocol, x.status) for x in r.rows]
    assert {"paper_spu", "d_mauc", "d_map", "paper_spufix_spu", "d_spufix_mauc"} <= set(zoo_csv[0])
    assert "| vit (`vit`) |" in (out / "zoo.md").read_text() and (out / "report.html").is_file()
    assert r.images_computed > 0 and r.models_computed == 2

    # a second run loads no finished model and computes nothing; the failed one is tried again
    loads.clear()
    with pytest.warns(UserWarning) as record:
        again = score_zoo(zoo, plots=False, **kw)  # type: ignore[arg-type]
    zoo_warnings = [str(w.message).split(" ")[1] for w in record if str(w.message).startswith("zoo: ")]
    assert sorted(zoo_warnings) == ["broken", "robust"]  # the failed one is retried, the other still skipped
    assert loads == [f"torchvision:resnet18@{broken.resolve()}"]
    assert again.images_computed == 0 and again.models_cached == 2 and again.models_computed == 0
    assert again.row("vit", "reference").cached and again.row("vit", "reference").mauc == r.row("vit", "reference").mauc

    # a run killed after the first protocol of a model: that model alone runs again, from its cached chunks
    (out / "models" / "vit" / "zoo-reference.json").unlink()
    loads.clear()
    with pytest.warns(UserWarning) as record:
        resumed = score_zoo(zoo, plots=False, **kw)  # type: ignore[arg-type]
    zoo_warnings = [str(w.message).split(" ")[1] for w in record if str(w.message).startswith("zoo: ")]
    assert sorted(zoo_warnings) == ["broken", "robust"]  # the failed one is retried, the other still skipped
    assert sorted(loads) == sorted(["timm:test_vit", f"torchvision:resnet18@{broken.resolve()}"])
    assert resumed.images_computed == 0 and resumed.models_computed == 1
    assert resumed.row("vit", "reference").mauc == r.row("vit", "reference").mauc


def test_zoo_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "zoo.txt"
    bad.write_text("# my zoo\nresnet50\ntimm:resnet5O.a1_in1k\nconvnext_bas.fb_in1k\ntimm:test_vit\n")
    with pytest.raises(ValueError, match=r"2 unknown model ids: 'timm:resnet5O.a1_in1k' \(did you mean "
                                         r"timm:resnet50.a1_in1k.*'convnext_bas.fb_in1k' \(did you mean "
                                         r"convnext_base.fb_in1k") as err:
        read_zoo(bad)
    assert "\n" not in str(err.value)
    good = tmp_path / "good.txt"
    good.write_text("resnet50\nconvnext_tiny\ntimm:test_vit\n")
    models = read_zoo(good)
    assert [m.spec for m in models] == ["timm:resnet50.a1_in1k", "timm:convnext_tiny", "timm:test_vit"]
    assert models[0].paper is not None and models[0].paper.spu == 0.851 and models[2].paper is None
    (tmp_path / "dup.txt").write_text("timm:test_vit\ntimm:test_vit\n")
    with pytest.raises(ValueError, match="'timm:test_vit' is listed twice"):
        read_zoo(tmp_path / "dup.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists no model"):
        read_zoo(tmp_path / "empty.txt")
    (tmp_path / "figures.tsv").write_text("model_id\tspu\ntimm:test_vit\thigh\n")
    with pytest.raises(ValueError, match="column spu: 'high' is not a number"):
        read_zoo(tmp_path / "figures.tsv")
    with pytest.raises(FileNotFoundError, match="zoo file .* does not exist"):
        read_zoo(tmp_path / "missing.txt")
    spu, val = _bench(tmp_path)
    with pytest.raises(ValueError, match="checkpoint 'robust' is not used by any model of the zoo; the zoo's "
                                         "checkpoints: resnet_salient_imagenet, robust_resnet"):
        score_zoo(PAPER_ZOO, spurious=spu, val=val, out=tmp_path / "o", checkpoints={"robust": bad})
    with pytest.raises(ValueError, match="protocols must be some of"):
        score_zoo(good, spurious=spu, val=val, out=tmp_path / "o", protocols=["stretch"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not a zoo output folder"):
        score_zoo(good, spurious=spu, val=val, out=tmp_path / "other")

    # the command line: one line, exit status 2
    code, _, stderr = cli_in_process(["score", "--zoo", str(bad), "--spurious", str(spu), "--val", str(val),
                                      "--out", str(tmp_path / "cli")])
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "2 unknown model ids" in lines[0] and "did you mean" in lines[0]
    code, _, stderr = cli_in_process(["score", "--zoo", "paper", "--model", "timm:test_vit", "--spurious", str(spu),
                                      "--val", str(val)])
    assert code == 2 and "either --zoo or --model" in stderr
    code, _, stderr = cli_in_process(["score", "--spurious", str(spu), "--val", str(val)])
    assert code == 2 and "--model SPEC" in stderr
    code, _, stderr = cli_in_process(["score", "--zoo", "paper", "--checkpoint", "robust_resnet", "--spurious",
                                      str(spu), "--val", str(val)])
    assert code == 2 and "expected NAME=PATH" in stderr
