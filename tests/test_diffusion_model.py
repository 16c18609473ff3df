"""The embedded diffusion model: the shipped folder, the cache key, deterministic and atomic training, quality."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from spurious.cli import main
from spurious.demo.diffusion import (
    DIFFUSION_METADATA,
    DemoDiffusionConfig,
    demo_diffusion_dir,
    quality_check,
    shipped_diffusion_dir,
    train_demo_diffusion,
)
from spurious.demo.planted import PlantedConfig


def _cache_with_tiny_planted(root: Path, session_cache: Path) -> Path:
    """A fresh cache that links the session's tiny planted data (no regeneration)."""
    root.mkdir(parents=True)
    (root / "planted").symlink_to(session_cache / "planted", target_is_directory=True)
    return root


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_shipped_model_is_a_ddpm_pipeline_folder_of_the_default_config() -> None:
    from diffusers import DDIMScheduler, DDPMPipeline

    config = DemoDiffusionConfig()
    folder = shipped_diffusion_dir()
    assert folder is not None and folder.name == f"diffusion-{config.cache_key()}"
    assert demo_diffusion_dir() == folder  # the shipped copy wins: no training
    meta = json.loads((folder / DIFFUSION_METADATA).read_text())
    assert meta["key"] == config.cache_key()
    assert DemoDiffusionConfig.from_dict(meta["config"]) == config  # the recipe it records is the default
    assert meta["planted_config_hash"] == PlantedConfig().config_hash()
    pipe = DDPMPipeline.from_pretrained(folder)
    assert pipe.unet.config.sample_size == config.image_size == 64
    assert tuple(pipe.unet.config.block_out_channels) == config.block_out_channels
    assert pipe.scheduler.config.num_train_timesteps == config.train_timesteps
    DDIMScheduler.from_config(pipe.scheduler.config)  # the sampler the quality check uses takes its schedule
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 8e6, size  # ships in the wheel


def test_tiny_training_is_deterministic_atomic_and_cached(tmp_path: Path, session_cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config = DemoDiffusionConfig.tiny()
    a = train_demo_diffusion(config, cache_dir=_cache_with_tiny_planted(tmp_path / "a", session_cache), progress=False)
    b = train_demo_diffusion(config, cache_dir=_cache_with_tiny_planted(tmp_path / "b", session_cache), progress=False)
    assert a.trained and b.trained and a.path.name == f"diffusion-{config.cache_key()}"
    wa, wb = _weights(a.path), _weights(b.path)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # the checkpoints in between were removed; nothing half-written is left next to the folder
    assert sorted(p.name for p in a.path.parent.iterdir()) == [a.path.name]
    again = train_demo_diffusion(config, cache_dir=tmp_path / "a", progress=False)
    assert not again.trained and again.path == a.path
    other = train_demo_diffusion(dataclasses.replace(config, seed=1), cache_dir=tmp_path / "a", progress=False)
    assert other.path != a.path
    assert not all(torch.equal(wa[k], w) for k, w in _weights(other.path).items())

    # a failure while saving leaves no folder (and no temporary one)
    from diffusers import DDPMPipeline

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(DDPMPipeline, "save_pretrained", boom)
    failing = dataclasses.replace(config, seed=2)
    with pytest.raises(OSError, match="disk full"):
        train_demo_diffusion(failing, cache_dir=tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / "models" / failing.folder_name()).exists()
    assert not [p for p in (tmp_path / "a" / "models").iterdir() if p.name.startswith(".tmp-")]


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, session_cache: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import spurious.demo.diffusion as diffusion

    config = dataclasses.replace(DemoDiffusionConfig.tiny(), steps=6, checkpoint_every=2)
    whole = train_demo_diffusion(config, cache_dir=_cache_with_tiny_planted(tmp_path / "a", session_cache),
                                 progress=False)
    cache = _cache_with_tiny_planted(tmp_path / "b", session_cache)
    real_lr = diffusion._lr_at

    def stop_at_5(step: int, c: DemoDiffusionConfig) -> float:
        if step == 5:
            raise KeyboardInterrupt
        return real_lr(step, c)

    monkeypatch.setattr(diffusion, "_lr_at", stop_at_5)
    with pytest.raises(KeyboardInterrupt):
        train_demo_diffusion(config, cache_dir=cache, progress=False)
    partial = cache / "models" / f"{config.folder_name()}.partial.pt"
    assert partial.is_file() and not (cache / "models" / config.folder_name()).exists()
    monkeypatch.setattr(diffusion, "_lr_at", real_lr)
    resumed = train_demo_diffusion(config, cache_dir=cache, progress=False)
    assert resumed.metadata["train_stats"]["resumed_at"] == [4] and not partial.exists()
    wa, wb = _weights(whole.path), _weights(resumed.path)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("bad,match", [
    ({"image_size": 60}, "divisible by 8"),
    ({"norm_num_groups": 6}, "norm_num_groups=6 must divide"),
    ({"beta_schedule": "cubic"}, "unknown beta_schedule 'cubic'"),
    ({"steps": 0}, "steps >= 1"),
    ({"ema_decay": 1.0}, "ema_decay must lie in"),
    ({"attention_levels": (5,)}, "attention_levels"),
    ({"lr": -1.0}, "lr > 0"),
    ({"min_snr_gamma": -1.0}, "min_snr_gamma must be >= 0"),
    ({"prediction_type": "sample"}, "unknown prediction_type 'sample'"),
])
def test_bad_config_values_get_one_line_errors(bad: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        DemoDiffusionConfig(**bad)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_min_snr_loss_is_the_closed_form() -> None:
    import numpy as np

    from spurious.demo.diffusion import _make_scheduler, _diffusion_loss

    g = torch.Generator().manual_seed(0)
    pred, noise = torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    abar = _make_scheduler(DemoDiffusionConfig()).alphas_cumprod[t].to(torch.float32)
    a, mse = abar.double().numpy(), ((pred - noise).double().numpy() ** 2).mean(axis=(1, 2, 3))
    snr = a / (1 - a)
    for gamma in (1.0, 5.0):
        expected = np.mean(np.minimum(snr, gamma) / snr * mse)
        assert float(_diffusion_loss(pred, noise, abar, gamma)) == pytest.approx(expected, rel=1e-5)
    # both ends of the schedule: high SNR (t = 0) is weighted down, low SNR (t = 999) keeps weight 1
    assert snr[0] > 5 > snr[-1]
    assert float(_diffusion_loss(pred, noise, abar, 0.0)) == pytest.approx(mse.mean(), rel=1e-5)
    # a v target: the weight min(SNR, gamma) / (SNR + 1)
    expected = np.mean(np.minimum(snr, 5.0) / (snr + 1) * mse)
    assert float(_diffusion_loss(pred, noise, abar, 5.0, v_prediction=True)) == pytest.approx(expected, rel=1e-5)


def test_v_target_is_the_schedulers_velocity() -> None:
    from spurious.demo.diffusion import _make_scheduler, _target

    config = DemoDiffusionConfig(prediction_type="v_prediction")
    scheduler = _make_scheduler(config)
    assert scheduler.config.prediction_type == "v_prediction"  # every diffusers sampler reads it from there
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([3, 250, 600, 990])
    abar = scheduler.alphas_cumprod[t].to(torch.float32).view(-1, 1, 1, 1)
    torch.testing.assert_close(_target(x0, noise, abar, True), scheduler.get_velocity(x0, noise, t))
    assert torch.equal(_target(x0, noise, abar, False), noise)


def test_min_snr_v_recipe_trains_from_the_cli_under_its_own_key(tmp_path: Path, session_cache: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # left at their old values (epsilon, no weights) the options keep the keys of the recipes trained before
    # they existed: the first shipped folder's recipe still has its key
    assert DemoDiffusionConfig(steps=1500, prediction_type="epsilon", min_snr_gamma=0.0).cache_key() == "eb6dab7148d06f79"
    weighted = dataclasses.replace(DemoDiffusionConfig.tiny(), block_out_channels=(8, 8), min_snr_gamma=5.0,
                                   prediction_type="v_prediction")
    assert weighted.cache_key() != dataclasses.replace(weighted, min_snr_gamma=0.0).cache_key()
    assert weighted.cache_key() != dataclasses.replace(weighted, prediction_type="epsilon").cache_key()
    caches = [_cache_with_tiny_planted(tmp_path / name, session_cache) for name in ("plain", "weighted")]
    runs = []
    plain_options = ["--min-snr-gamma", "0", "--prediction-type", "epsilon"]
    for cache, extra in zip(caches, (plain_options, ["--min-snr-gamma", "5", "--prediction-type", "v_prediction"]),
                            strict=True):
        code = main(["train-diffusion", "--tiny", "--block-out-channels", "8,8", *extra,
                     "--cache-dir", str(cache), "--json", "--no-progress"])
        out, err = capsys.readouterr()
        assert code == 0, err
        runs.append(json.loads(out)["model"])
    assert runs[1]["key"] == weighted.cache_key() and runs[1]["config"]["min_snr_gamma"] == 5.0
    assert json.loads((Path(runs[1]["path"]) / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] \
        == "v_prediction"
    assert runs[0]["config"]["block_out_channels"] == [8, 8] and runs[0]["config"]["min_snr_gamma"] == 0.0
    assert runs[0]["config"]["prediction_type"] == "epsilon"
    plain, other = (_weights(Path(r["path"])) for r in runs)
    assert not all(torch.equal(plain[k], other[k]) for k in plain)  # same seed and data: only the loss differs


def test_cli_bad_values_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as parse_error:  # argparse's own error: usage and one line, exit 2
        main(["train-diffusion", "--block-out-channels", "16,x"])
    assert parse_error.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
    assert main(["train-diffusion", "--image-size", "60", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "image_size=60 must be >= 8 and divisible by 8" in err
    assert main(["train-diffusion", "--out", str(tmp_path)]) == 2
    assert "give --samples N too" in capsys.readouterr().err
    assert main(["train-diffusion", "--samples", "0"]) == 2
    assert "--samples must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is not a diffusers pipeline folder"):
        quality_check(tmp_path, n=2)


def test_shipped_model_samples_spread_over_classes_unlike_noise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """32 samples with 25 DDIM steps against 32 images of uniform noise, judged by the same classifier.

    ``demo:standard`` gives uniform noise p >= 0.8 too, all in one class, so the yardstick is the spread
    over the classes, not the confidence.

    The issue's target (>= 70 % of 256 samples at p >= 0.8, no class above twice its share) is NOT met by
    the shipped model (47.3 %, 2.03x; docs/planted.md says why): this only checks that sampling works end to
    end and that the samples carry class evidence that noise does not.
    """
    from spurious.models import load_model

    code = main(["train-diffusion", "--samples", "32", "--sample-steps", "25", "--out", str(tmp_path), "--json",
                 "--no-progress"])
    assert code == 0
    q = json.loads(capsys.readouterr().out)["quality"]
    assert q["n"] == 32 and Path(q["grid"]).is_file()
    assert len(q["class_shares"]) == 10 and abs(sum(q["class_shares"].values()) - 1) < 1e-3  # shares rounded to 4 places
    clf = load_model("demo:standard")
    with torch.inference_mode():
        noise = torch.rand(32, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        noise_top = torch.softmax(clf(noise), 1).argmax(1)
    noise_ratio = float(torch.bincount(noise_top, minlength=10).max()) / 32 * 10
    assert noise_ratio >= 8  # the classifier sends (nearly) all noise to one class, confidently
    assert q["max_share_ratio"] <= noise_ratio / 2, (q, noise_ratio)
    assert sum(share > 0 for share in q["class_shares"].values()) >= 4, q  # samples of several classes
