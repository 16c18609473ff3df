"""The demo classifiers: determinism, checkpoints through the adapter, cache, evidence, PGD, CLI.

Only the tiny variants are trained here (seconds each); the default models are measured by hand
(see the module doc of ``spurious.demo.train``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spurious.cli import main
from spurious.datasets import image_folder, spurious_imagenet
from spurious.demo.planted import PlantedConfig, load_planted
from spurious.demo.train import (
    DEMO_MODEL_NAMES,
    DemoModelInfo,
    DemoNet,
    DemoTrainConfig,
    demo_cache_dir,
    evaluate_demo_model,
    load_demo_checkpoint,
    pgd_l2,
    train_demo_model,
)
from spurious.models import Classifier, Preprocessing, list_models, load_model


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, demo_models: dict[str, DemoModelInfo]) -> Path:
    """A private copy of the session cache with both tiny models trained (some tests here force a retrain)."""
    import shutil

    copy = tmp_path_factory.mktemp("spurious-cache") / "cache"
    shutil.copytree(demo_models["standard"].path.parents[1], copy)
    return copy


@pytest.fixture(scope="module")
def standard_tiny(cache: Path) -> DemoModelInfo:
    return train_demo_model("standard", tiny=True, cache_dir=cache, progress=False)


@pytest.fixture(scope="module")
def robust_tiny(cache: Path) -> DemoModelInfo:
    return train_demo_model("robust", tiny=True, cache_dir=cache, progress=False)


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _raw_net(path: Path) -> tuple[DemoNet, Preprocessing]:
    """The checkpoint's network rebuilt by hand (independent of the adapter)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = DemoNet.from_arch(ckpt["arch"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval(), Preprocessing.from_dict(ckpt["preprocessing"])


# ----------------------------------------------------------------------------- training


def test_same_seed_same_weights_other_seed_other_weights(
    standard_tiny: DemoModelInfo, tmp_path: Path
) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = train_demo_model("standard", tiny=True, cache_dir=tmp_path / "a", progress=False)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG state is left alone
    assert not torch.are_deterministic_algorithms_enabled()
    assert again.trained and again.path != standard_tiny.path
    first, second = _state_dict(standard_tiny.path), _state_dict(again.path)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)

    config = DemoTrainConfig.for_variant("standard", tiny=True, seed=1)
    other = train_demo_model("standard", config=config, cache_dir=tmp_path / "b", progress=False)
    assert other.path.name != standard_tiny.path.name  # the seed is part of the cache key
    third = _state_dict(other.path)
    assert not torch.equal(first["fc.weight"], third["fc.weight"])
    assert not torch.equal(first["stem.0.weight"], third["stem.0.weight"])


def test_checkpoint_format(standard_tiny: DemoModelInfo) -> None:
    ckpt = torch.load(standard_tiny.path, map_location="cpu", weights_only=True)
    assert ckpt["format"] == "spurious-demo-model"
    assert ckpt["arch"] == {"num_classes": 6, "widths": [16, 32, 64], "blocks": [1, 1, 1], "stem_pool": True,
                            "antialias": True}
    assert ckpt["class_names"] == ["star", "ring", "cross", "triangle", "crescent", "heart"]
    pre = Preprocessing.from_dict(ckpt["preprocessing"])
    assert pre.input_size == (32, 32) and pre.resize_size == 32 and pre.crop_pct == 1.0
    meta = ckpt["metadata"]
    assert meta["planted_config_hash"] == PlantedConfig.tiny().config_hash()
    assert DemoTrainConfig.from_dict(meta["train_config"]) == DemoTrainConfig.for_variant("standard", tiny=True)
    assert meta["seconds"] > 0 and meta["evidence"] == standard_tiny.evidence
    assert standard_tiny.path.parent.name == "models"
    assert standard_tiny.planted_root == standard_tiny.path.parents[1] / "planted" / meta["planted_config_hash"]
    assert not list(standard_tiny.path.parent.glob("*.tmp"))  # atomic write left no temp file


def test_load_model_gives_the_raw_network_logits(
    standard_tiny: DemoModelInfo, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPURIOUS_CACHE", str(cache))
    mtime = standard_tiny.path.stat().st_mtime_ns
    clf = load_model("demo:standard-tiny")
    assert standard_tiny.path.stat().st_mtime_ns == mtime  # loaded, not retrained
    assert clf.spec == "demo:standard-tiny" and clf.num_classes == 6 and clf.num_features == 64
    assert clf.class_names == load_planted(standard_tiny.planted_root).class_names

    net, pre = _raw_net(standard_tiny.path)
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        native = net((x - mean) / std)
        phi_raw = net.forward_head(net.forward_features((x - mean) / std), pre_logits=True)
        phi, logits = clf.phi_and_logits(x)
    weight, bias = clf.head()
    torch.testing.assert_close(weight, net.fc.weight)
    torch.testing.assert_close(phi, phi_raw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(phi @ weight.T + bias, native, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, native, rtol=1e-5, atol=1e-5)


def test_load_model_with_checkpoint_suffix(standard_tiny: DemoModelInfo) -> None:
    clf = load_model(f"demo:standard-tiny@{standard_tiny.path}")
    assert clf.spec == f"demo:standard-tiny@{standard_tiny.path.resolve()}"
    net, _ = _raw_net(standard_tiny.path)
    torch.testing.assert_close(clf.head()[0], net.fc.weight)


def test_load_demo_checkpoint_default_spec_loads_the_same_model(standard_tiny: DemoModelInfo) -> None:
    from spurious.demo.train import load_demo_checkpoint

    clf = load_demo_checkpoint(standard_tiny.path)
    assert clf.spec == f"demo:standard@{standard_tiny.path.resolve()}"
    again = load_model(clf.spec)  # a workspace stores the spec; later stages load the model from it
    torch.testing.assert_close(again.head()[0], clf.head()[0], rtol=0, atol=0)


def test_missing_demo_model_is_trained_with_a_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    standard_tiny: DemoModelInfo,
) -> None:
    monkeypatch.setenv("SPURIOUS_CACHE", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="spurious.demo"):
        clf = load_model("demo:standard-tiny")
    text = caplog.text
    assert "demo:standard-tiny is not cached yet: training it now" in text and str(tmp_path) in text
    ckpts = list((tmp_path / "models").glob("demo-standard-*.pt"))
    assert [p.name for p in ckpts] == [standard_tiny.path.name]
    # same config and seed -> the same weights as the module's model
    torch.testing.assert_close(clf.head()[0], _state_dict(standard_tiny.path)["fc.weight"], rtol=0, atol=0)


def test_random_weights_need_no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPURIOUS_CACHE", str(tmp_path))
    clf = load_model("demo:robust", pretrained=False)
    assert clf.num_classes == 10 and clf.num_features == 128 and clf.input_size == (3, 64, 64)
    assert clf.preprocessing.crop_pct == 1.0 and clf.preprocessing.resize_size == 64
    assert not any(tmp_path.iterdir())


def test_cache_is_reused_and_force_retrains(standard_tiny: DemoModelInfo, cache: Path) -> None:
    mtime = standard_tiny.path.stat().st_mtime_ns
    again = train_demo_model("standard", tiny=True, cache_dir=cache, progress=False)
    assert not again.trained and again.path == standard_tiny.path
    assert standard_tiny.path.stat().st_mtime_ns == mtime
    assert again.evidence == standard_tiny.evidence and again.seconds == standard_tiny.seconds
    forced = train_demo_model("standard", tiny=True, cache_dir=cache, force=True, progress=False)
    assert forced.trained and forced.path == standard_tiny.path
    assert forced.evidence == standard_tiny.evidence  # deterministic


def test_corrupt_checkpoint_is_retrained(tmp_path: Path, standard_tiny: DemoModelInfo) -> None:
    path = tmp_path / "models" / standard_tiny.path.name
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    info = train_demo_model("standard", tiny=True, cache_dir=tmp_path, progress=False)
    assert info.trained and info.path == path
    assert torch.load(path, weights_only=True)["format"] == "spurious-demo-model"


def test_demo_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPURIOUS_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert demo_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SPURIOUS_CACHE")
    assert demo_cache_dir() == tmp_path / "x" / "spurious"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert demo_cache_dir() == tmp_path / "home" / ".cache" / "spurious"


def test_list_models_has_the_demo_specs() -> None:
    assert list_models("demo:*") == [f"demo:{n}" for n in DEMO_MODEL_NAMES]


# ----------------------------------------------------------------------------- evidence


def test_evidence_matches_an_independent_count(standard_tiny: DemoModelInfo) -> None:
    planted = load_planted(standard_tiny.planted_root)
    clf = load_demo_checkpoint(standard_tiny.path)
    evidence = evaluate_demo_model(clf, planted)
    assert evidence == standard_tiny.evidence

    bench = spurious_imagenet(planted.spurious, transform=clf.preprocessing)
    images = torch.stack([bench[i][1] for i in range(len(bench))])
    with torch.no_grad():
        pred = clf(images).argmax(1).numpy()
    folders = np.array([r.meta["folder"] for r in bench.records])
    labels = bench.labels()
    rows = {row["folder"]: row for row in evidence["spurious"]}
    assert set(rows) == set(folders) and len(rows) == 5
    for folder, row in rows.items():
        mask = folders == folder
        assert row["num_images"] == int(mask.sum()) == 8
        assert labels[mask][0] == row["class"]
        assert row["predicted_as_class"] == pytest.approx(float(np.mean(pred[mask] == row["class"])))

    val = image_folder(planted.val, transform=clf.preprocessing)
    x = torch.stack([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        val_pred = clf(x).argmax(1).numpy()
    assert evidence["num_val"] == 48
    assert evidence["val_accuracy"] == pytest.approx(float(np.mean(val_pred == val.labels())))
    assert evidence["chance"] == pytest.approx(1 / 6)


def test_evaluate_refuses_another_label_space(standard_tiny: DemoModelInfo, tmp_path: Path) -> None:
    from conftest import tiny_classifier

    planted = load_planted(standard_tiny.planted_root)
    with pytest.raises(ValueError, match="has 3 classes but the planted dataset"):
        evaluate_demo_model(tiny_classifier(3), planted)


# ----------------------------------------------------------------------------- PGD


class _Linear(torch.nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_pgd_stays_in_the_ball_and_the_box_and_increases_the_loss() -> None:
    from conftest import TinyNet

    torch.manual_seed(0)
    model = TinyNet(num_classes=4).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 16, 16, generator=g)
    x[:, :, :4] = 0.0  # pixels on the box boundary
    x[:, :, -4:] = 1.0
    x_before = x.clone()
    y = torch.arange(8) % 4
    eps = 0.8
    adv = pgd_l2(model, x, y, eps=eps, steps=10, generator=g)
    assert torch.equal(x, x_before)
    assert adv.shape == x.shape and not adv.requires_grad
    norms = (adv - x).flatten(1).norm(dim=1)
    assert float(norms.max()) <= eps * (1 + 1e-5)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        attacked = F.cross_entropy(model(adv), y, reduction="none")
    assert bool((attacked > clean).all())
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_pgd_finds_the_closed_form_optimum_of_a_linear_model() -> None:
    # Two classes, logits linear in x: the loss depends on x only through the margin
    # <w_0 - w_1, x>, so inside the box the best L2 perturbation is -eps * (w_0 - w_1) / ||w_0 - w_1||.
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(2, 3 * 8 * 8, generator=g)
    model = _Linear(weight, torch.tensor([0.3, -0.1]))
    x = torch.full((1, 3, 8, 8), 0.5)
    y = torch.tensor([0])
    eps = 0.2  # small enough that the box is not active at the optimum
    direction = (weight[0] - weight[1]) / (weight[0] - weight[1]).norm()
    best = x - eps * direction.view(1, 3, 8, 8)
    adv = pgd_l2(model, x, y, eps=eps, steps=20, step_size=0.05, random_start=False)
    with torch.no_grad():
        best_loss = float(F.cross_entropy(model(best), y))
        adv_loss = float(F.cross_entropy(model(adv), y))
    assert adv_loss == pytest.approx(best_loss, rel=1e-4)
    torch.testing.assert_close(adv, best, rtol=0, atol=1e-4)


def test_pgd_zero_budget_and_errors() -> None:
    model = _Linear(torch.eye(2, 12), torch.zeros(2))
    x = torch.rand(2, 3, 2, 2)
    y = torch.tensor([0, 1])
    assert torch.equal(pgd_l2(model, x, y, eps=0.0, steps=5), x)
    with pytest.raises(ValueError, match="need eps >= 0"):
        pgd_l2(model, x, y, eps=-1.0, steps=5)
    with pytest.raises(ValueError, match="need eps >= 0 and an int steps >= 0"):
        pgd_l2(model, x, y, eps=1.0, steps=-1)
    with pytest.raises(ValueError, match="y must be a label tensor"):
        pgd_l2(model, x, y[:1], eps=1.0, steps=1)


def test_robust_tiny_model_resists_an_l2_attack_better(
    standard_tiny: DemoModelInfo, robust_tiny: DemoModelInfo
) -> None:
    planted = load_planted(standard_tiny.planted_root)
    eps = robust_tiny.config.eps
    losses = {}
    for info in (standard_tiny, robust_tiny):
        clf = load_demo_checkpoint(info.path)
        val = image_folder(planted.val, transform=clf.preprocessing)
        x = torch.stack([val[i][1] for i in range(len(val))])
        y = torch.from_numpy(val.labels())
        adv = pgd_l2(clf, x, y, eps=eps, steps=10, random_start=False)
        with torch.no_grad():
            losses[info.variant] = float(F.cross_entropy(clf(adv), y) - F.cross_entropy(clf(x), y))
    assert losses["robust"] < losses["standard"]


# ----------------------------------------------------------------------------- API errors


def test_unknown_variant_and_bad_configs() -> None:
    with pytest.raises(ValueError, match="unknown variant 'fancy'; valid variants: standard, robust"):
        train_demo_model("fancy", tiny=True)
    with pytest.raises(ValueError, match="unknown variant 'fancy'"):
        DemoTrainConfig.for_variant("fancy")
    with pytest.raises(ValueError, match="the robust variant needs eps > 0"):
        DemoTrainConfig(variant="robust", eps=0.0, pgd_steps=3)
    with pytest.raises(ValueError, match="config.variant='standard' with variant='robust'"):
        train_demo_model("robust", config=DemoTrainConfig.for_variant("standard", tiny=True))
    with pytest.raises(ValueError, match="blocks must give a positive block count"):
        DemoNet(3, widths=(8, 16), blocks=(1,))


def test_unknown_demo_spec() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'demo:xyz'.*valid: demo:standard, demo:robust"):
        load_model("demo:xyz")
    from spurious.demo.train import load_demo_model

    with pytest.raises(ValueError, match="unknown demo model 'tiny'; valid demo models: demo:standard"):
        load_demo_model("tiny")


def test_load_demo_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="demo checkpoint not found"):
        load_demo_checkpoint(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="is not a 'spurious-demo-model' checkpoint"):
        load_demo_checkpoint(plain)


def test_demo_net_contract() -> None:
    net = DemoNet(7, widths=(8, 16, 24), blocks=(1, 2, 1)).eval()
    assert DemoNet.from_arch(net.arch()).arch() == net.arch()
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        phi = net.forward_head(net.forward_features(x), pre_logits=True)
        assert phi.shape == (2, 24) and net.num_features == 24
        torch.testing.assert_close(net(x), net.fc(phi))
    pre = Preprocessing(input_size=(40, 40), resize_size=40, crop_pct=1.0)
    clf = Classifier.from_module(net, pre)
    assert clf._head_parts[0].name == "fc"


@pytest.mark.parametrize("antialias", [True, False])
def test_downsampling_covers_the_input_evenly_only_when_antialiased(antialias: bool) -> None:
    # With every conv weight 1, BN at its identity init and a positive input, each down-sampling
    # step is linear and positive; d(sum of the output)/d(input) then counts how often each input
    # pixel is used. Antialiased: the same count for every interior pixel of every block (so
    # input gradients have no stride pattern); the earlier layout (3x3 stride-2 convs, max-pool,
    # 1x1 stride-2 shortcut) uses some pixels 2-4x as often as others, or not at all.
    net = DemoNet(3, widths=(4, 4, 4), antialias=antialias).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.fill_(1.0)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) + 1.0
    x.requires_grad_(True)
    block = net.stages[1][0]
    for part in (net.stem, block.conv1, block.shortcut):
        inp = x if part is net.stem else torch.ones(1, 4, 16, 16, requires_grad=True)
        (grad,) = torch.autograd.grad(part(inp).sum(), inp)
        inner = grad[0, 0, 4:-4, 4:-4]
        spread = float(inner.max() / inner.min().clamp_min(1e-12))
        if antialias:
            assert spread == pytest.approx(1.0, abs=1e-4), part
        elif part is not net.stem:  # the max-pool's pattern depends on the input; the convs' does not
            assert spread > 1.5, part
    assert net.arch()["antialias"] is antialias
    legacy = {k: v for k, v in net.arch().items() if k != "antialias"}
    assert DemoNet.from_arch(legacy).antialias is False  # checkpoints written before the flag existed


# ----------------------------------------------------------------------------- CLI


def test_cli_data_planted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "planted"
    assert main(["data", "planted", "--out", str(out), "--tiny", "--seed", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["train"] == 6 * 20 and summary["counts"]["val"] == 6 * 8
    assert summary["config"]["seed"] == 2
    assert summary["config_hash"] == PlantedConfig.tiny(seed=2).config_hash()
    assert load_planted(out).config == PlantedConfig.tiny(seed=2)
    # another config into the same folder: one-line error, exit 2
    assert main(["data", "planted", "--out", str(out), "--tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spurious data: error:") and "already holds a planted dataset" in err


def test_cli_train_demo(
    standard_tiny: DemoModelInfo, robust_tiny: DemoModelInfo, cache: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SPURIOUS_CACHE", str(cache))
    assert main(["train", "demo", "--tiny", "--variant", "standard", "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    (model,) = summary["models"]
    assert model["trained"] is False and model["path"] == str(standard_tiny.path)
    assert model["evidence"] == json.loads(json.dumps(standard_tiny.evidence))
    assert main(["train", "demo", "--tiny", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "demo:standard-tiny (cached" in out and "demo:robust-tiny (cached" in out
    assert out.count("val accuracy") == 2 and "scribble" in out
    assert math.isfinite(robust_tiny.seconds)
    with pytest.raises(SystemExit):
        main(["train", "demo", "--variant", "fancy"])


# ---------------------------------------------------------------------------- shipped weights


@pytest.mark.parametrize("variant", ["standard", "robust"])
def test_default_demo_models_load_the_shipped_weights_without_training(
    variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from spurious.demo import _models

    monkeypatch.setattr(_models, "train_net", lambda *a, **k: pytest.fail("the shipped weights must not be retrained"))
    info = _models.train_demo_model(variant, cache_dir=tmp_path / "cache", progress=False)
    manifest = json.loads((_models.SHIPPED_DIR / "manifest.json").read_text())
    entry = manifest["files"][info.path.name]
    assert info.shipped and not info.trained and info.path.parent == _models.SHIPPED_DIR
    assert hashlib.sha256(info.path.read_bytes()).hexdigest() == entry["sha256"]
    # shipped for the current recipe: the file's key is the default config's cache key
    config = DemoTrainConfig.for_variant(variant)
    assert info.path.name == f"demo-{variant}-{config.cache_key()}.pt"
    assert info.metadata["train_config"] == config.to_dict()
    assert info.spec == f"demo:{variant}"
    monkeypatch.setenv("SPURIOUS_CACHE", str(tmp_path / "cache"))
    clf = load_model(f"demo:{variant}")
    assert clf.spec == f"demo:{variant}" and clf.fingerprint() == load_model(f"demo:{variant}@{info.path}").fingerprint()
    assert not (tmp_path / "cache" / "models").exists()  # nothing trained, nothing cached


def test_damaged_shipped_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from spurious.demo import _models

    shipped = tmp_path / "weights"
    shutil.copytree(_models.SHIPPED_DIR, shipped)
    name = f"demo-robust-{DemoTrainConfig.for_variant('robust').cache_key()}.pt"
    data = bytearray((shipped / name).read_bytes())
    data[-100] ^= 0xFF
    (shipped / name).write_bytes(bytes(data))
    monkeypatch.setattr(_models, "SHIPPED_DIR", shipped)
    with pytest.raises(ValueError, match="damaged.*reinstall"):
        _models.train_demo_model("robust", cache_dir=tmp_path / "cache", progress=False)


def test_no_shipped_weights_for_tiny_or_retrain(standard_tiny: DemoModelInfo, cache: Path) -> None:
    from spurious.demo import _models

    assert _models.shipped_checkpoint(DemoTrainConfig.for_variant("standard", tiny=True)) is None
    again = _models.train_demo_model("standard", tiny=True, cache_dir=cache, progress=False, use_shipped=False)
    assert not again.shipped and again.path == standard_tiny.path and "@" in again.spec


def test_demo_configs_from_dict_round_trip_and_name_unknown_keys() -> None:
    from spurious.demo.diffusion import DemoDiffusionConfig
    from spurious.demo.planted import config_from_dict

    for config in (DemoTrainConfig.for_variant("robust", tiny=True), DemoDiffusionConfig.tiny()):
        d = json.loads(json.dumps(config.to_dict()))  # as a JSON file holds it: the planted config a dict
        assert isinstance(d["planted"], dict)
        back = type(config).from_dict(d)
        assert back == config and isinstance(back.planted, PlantedConfig)
        assert config_from_dict(type(config), {**d, "planted": config.planted}) == config
        with pytest.raises(ValueError, match=rf"unknown {type(config).__name__} keys \['nope'\]; valid keys: .*'seed'"):
            type(config).from_dict({**d, "nope": 1})
