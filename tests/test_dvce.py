"""The diffusion engine of the counterfactual stage (DVCE, paper Appendix H) on a tiny random UNet2DModel.

Oracles: independent autograd of each guidance term (alpha from the basis in float64), diffusers' own
scheduler loop for plain denoising, DDPM's own posterior variance for ``||Sigma_t||``; the stage and the
CLI end to end, resumption, and every documented error (API and CLI)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_demo_out, tiny_classifier, write_images

pytestmark = [pytest.mark.filterwarnings("ignore:the model does not agree with the labels:UserWarning"),  # random nets
              pytest.mark.filterwarnings("ignore:the diffusion model .* cannot denoise these images:UserWarning")]

STEPS, T_START = 10, 0.5  # 5 denoising steps: the mechanics, not the quality


def _save_unet(folder: Path, *, sample_size: int = 32, scheduler: str = "DDPMScheduler", seed: int = 0) -> Path:
    import diffusers

    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=sample_size, block_out_channels=(8, 16), layers_per_block=1,
                                 norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    diffusers.DDPMPipeline(unet=unet, scheduler=getattr(diffusers, scheduler)()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def unets(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("dvce-unets")
    return {"ddpm": _save_unet(root / "ddpm"), "ddim": _save_unet(root / "ddim", scheduler="DDIMScheduler")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A workspace of the conftest tiny CNN (3 classes, D=12, 32 px): train and val splits, npca (L=3)."""
    from spurious.extract import extract
    from spurious.npca import npca

    root = tmp_path_factory.mktemp("dvce-ws")
    clf = tiny_classifier(num_classes=3)
    train = write_images(root / "train", {"a": 6, "b": 6, "c": 6}, seed=1)
    val = write_images(root / "val", {"a": 3, "b": 3, "c": 3}, seed=2)
    for split, data in (("train", train), ("val", val)):
        extract(root / "ws", model=clf, data=f"folder:{data}", split=split, num_workers=0, progress=False,
                dtype="float32", shard_size=8)
    npca(root / "ws", n_components=3, progress=False)
    return root / "ws", clf


def _basis(ws: Path, k: int):  # type: ignore[no-untyped-def]
    from spurious.npca import load_npca

    return load_npca(ws)[k]


def _starts(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1


def _unit_np(g: np.ndarray) -> np.ndarray:
    flat = g.reshape(g.shape[0], -1)
    return (flat / np.linalg.norm(flat, axis=1, keepdims=True)).reshape(g.shape)


# ---------------------------------------------------------------------------- the guidance terms


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_guidance_terms_are_the_normalised_gradients_with_the_documented_signs(tiny, distance: str) -> None:
    from spurious.counterfactual._dvce import DvceSettings, guidance_terms

    ws, clf = tiny
    basis = _basis(ws, 1)
    g = torch.Generator().manual_seed(3)
    x0_hat = torch.rand((3, 3, 32, 32), generator=g) * 2 - 1
    x_orig = torch.rand((3, 3, 32, 32), generator=g) * 2 - 1
    terms = guidance_terms(clf, basis, 2, x0_hat, x_orig, distance=distance)

    # oracle: autograd in float64 of log p_k, of alpha = <1,v> <v, w*phi - mu>, and of the distance
    x = x0_hat.double().requires_grad_(True)
    clf_d = tiny_classifier(num_classes=3).double()  # the same weights (seed 0) in float64
    phi, logits = clf_d.phi_and_logits((x + 1) / 2)
    v = torch.as_tensor(basis.v[2], dtype=torch.float64)
    alpha = v.sum() * ((phi * torch.as_tensor(basis.w, dtype=torch.float64)
                        - torch.as_tensor(basis.mu, dtype=torch.float64)) @ v)
    g_alpha = torch.autograd.grad(alpha.sum(), x, retain_graph=True)[0].numpy()
    g_logp = torch.autograd.grad(torch.log_softmax(logits, 1)[:, 1].sum(), x)[0].numpy()
    y = x0_hat.double().requires_grad_(True)
    d = (y - x_orig.double()).abs().sum() if distance == "l1" else (y - x_orig.double()).flatten(1).norm(dim=1).sum()
    g_dist = torch.autograd.grad(d, y)[0].numpy()
    for got, want in ((terms.log_prob, g_logp), (terms.component, g_alpha), (terms.distance, g_dist)):
        np.testing.assert_allclose(got.flatten(1).norm(dim=1).numpy(), 1.0, rtol=1e-5)
        np.testing.assert_allclose(got.double().numpy(), _unit_np(want), atol=2e-5)

    s = DvceSettings(class_weight=0.3, component_weight=0.7, distance_weight=0.2)
    for sign in (1.0, -1.0):
        shift = terms.shift(sign, s).double().numpy()
        want = 0.3 * _unit_np(g_logp) + sign * 0.7 * _unit_np(g_alpha) - 0.2 * _unit_np(g_dist)
        np.testing.assert_allclose(shift, want, atol=3e-5)
        dots = (shift * _unit_np(g_alpha)).reshape(3, -1).sum(1)
        assert (np.sign(dots) == sign).all()  # add raises alpha, remove lowers it (the other terms are smaller)
    only_d = terms.shift(1.0, DvceSettings(class_weight=0, component_weight=0, distance_weight=1)).double().numpy()
    assert ((only_d * g_dist).reshape(3, -1).sum(1) < 0).all()  # the distance term pulls towards x_orig


def test_sigma_norm_is_ddpm_posterior_variance_times_sqrt_n(unets) -> None:
    import diffusers

    from spurious.counterfactual._dvce import (
        DvceSettings,
        denoise,
        load_diffusion,
        posterior_variance,
    )

    dm = load_diffusion(unets["ddpm"])
    ref = diffusers.DDPMScheduler.from_pretrained(unets["ddpm"] / "scheduler")
    ref.set_timesteps(STEPS)
    for t in ref.timesteps[:-1]:
        prev = int(ref.previous_timestep(t))
        np.testing.assert_allclose(posterior_variance(dm.scheduler, int(t), prev), float(ref._get_variance(t)),
                                   rtol=1e-5)
    # a constant guide direction u: each step adds posterior_variance * sqrt(n) * u to diffusers' prev_sample
    x = _starts(2) * 2 - 1
    u = torch.full_like(x, 0.01)
    got = denoise(dm, x, DvceSettings(steps=STEPS, t_start=T_START), seed=5, guide=lambda x0, i: u)
    gens = [torch.Generator().manual_seed(5) for _ in range(2)]
    noise = torch.cat([torch.randn((1, 3, 32, 32), generator=g) for g in gens])
    run = ref.timesteps[STEPS - 5:]
    y = ref.add_noise(x, noise, run[:1])
    for i, t in enumerate(run):
        with torch.no_grad():
            y = ref.step(dm.unet(y, t).sample, t, y, generator=gens).prev_sample
        if i + 1 < len(run):
            y = y + float(ref._get_variance(t)) * np.sqrt(3 * 32 * 32) * u
        else:  # the last step goes to abar_prev = 1: no variance, no shift
            y = y + 0.0 * u
    torch.testing.assert_close(got, y, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- plain denoising, seeds, batches


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_zero_weights_are_diffusers_plain_denoising(tiny, unets, kind: str) -> None:
    import diffusers

    from spurious.counterfactual._dvce import DvceSettings, dvce_images, load_diffusion

    ws, clf = tiny
    dm = load_diffusion(unets[kind])
    x0 = _starts(2)
    s = DvceSettings(class_weight=0, component_weight=0, distance_weight=0, steps=STEPS, t_start=T_START)
    cf = dvce_images(clf, _basis(ws, 0), 0, x0, dm, mode="add", settings=s, seed=11)
    # diffusers' own loop: same scheduler class and config, same generators, no guidance
    sched = getattr(diffusers, "DDPMScheduler" if kind == "ddpm" else "DDIMScheduler").from_pretrained(
        unets[kind] / "scheduler")
    sched.set_timesteps(STEPS)
    gens = [torch.Generator().manual_seed(11) for _ in range(2)]
    noise = torch.cat([torch.randn((1, 3, 32, 32), generator=g) for g in gens])
    run = sched.timesteps[STEPS - round(STEPS * T_START):]
    x = sched.add_noise(x0 * 2 - 1, noise, run[:1])
    for t in run:
        with torch.no_grad():
            x = sched.step(dm.unet(x, t).sample, t, x, generator=gens).prev_sample
    want = (x.clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(cf.images, want, rtol=0, atol=1e-6)
    assert cf.steps == 5 and cf.norm == "l1" and cf.before.alpha is not None


def test_seeded_batches_are_deterministic_and_batch_independent(tiny, unets) -> None:
    from spurious.counterfactual._dvce import DvceSettings, dvce_images, load_diffusion

    ws, clf = tiny
    dm = load_diffusion(unets["ddpm"])
    basis = _basis(ws, 2)
    x0 = _starts(3)
    s = DvceSettings(steps=STEPS, t_start=T_START, class_weight=0.2, component_weight=0.5)
    a = dvce_images(clf, basis, 1, x0, dm, mode="add", settings=s, seed=0)
    b = dvce_images(clf, basis, 1, x0, dm, mode="add", settings=s, seed=0, batch_size=2)
    one = dvce_images(clf, basis, 1, x0[2:], dm, mode="add", settings=s, seed=0)
    again = dvce_images(clf, basis, 1, x0, dm, mode="add", settings=s, seed=0)
    assert torch.equal(a.images, again.images)  # the same seed: the same images, bit for bit
    assert torch.allclose(a.images, b.images, atol=1e-5) and torch.allclose(a.images[2:], one.images, atol=1e-5)
    c = dvce_images(clf, basis, 1, x0, dm, mode="add", settings=s, seed=1)
    assert not torch.allclose(a.images, c.images)
    l2 = dvce_images(clf, basis, 1, x0, dm, mode="add", settings=DvceSettings(**{**s.to_dict(), "distance": "l2"}))
    assert not torch.allclose(a.images, l2.images) and l2.norm == "l2"
    assert a.images.shape == x0.shape and 0 <= float(a.images.min()) and float(a.images.max()) <= 1
    np.testing.assert_allclose(a.objective, a.after.alpha)  # add: s alpha with s = +1


def test_other_unet_size_runs_at_the_unet_size(tiny, tmp_path: Path) -> None:
    from spurious.counterfactual._dvce import DvceSettings, dvce_images, load_diffusion

    ws, clf = tiny
    dm = load_diffusion(_save_unet(tmp_path / "u16", sample_size=16))
    cf = dvce_images(clf, _basis(ws, 0), 0, _starts(2), dm, settings=DvceSettings(steps=4, t_start=0.5))
    assert cf.images.shape == (2, 3, 32, 32) and dm.image_size((32, 32)) == (16, 16)


# ---------------------------------------------------------------------------- the stage


def test_stage_writes_the_diffusion_pairs_and_resumes(tiny, unets, tmp_path: Path) -> None:
    from spurious.counterfactual import (
        counterfactual,
        counterfactual_pairs,
        read_counterfactual_index,
    )

    src, clf = tiny
    ws = tmp_path / "ws"
    shutil.copytree(src, ws)
    kw = {"engine": "diffusion", "diffusion": unets["ddpm"], "model": clf, "n_images": 2, "confused": 1,
          "diffusion_steps": STEPS, "t_start": T_START, "progress": False}
    r = counterfactual(ws, 1, 0, mode="add", eval_models=[tiny_classifier(num_classes=3, seed=7)], **kw)
    assert r.engine == "diffusion" and r.pairs_done == 2 and r.steps == 5 and r.eps is None
    assert r.diffusion is not None and r.diffusion["class_weight"] == 0.1 and r.diffusion["distance"] == "l1"
    pairs = counterfactual_pairs(ws, 1, 0, mode="add")
    assert len(pairs) == 2 and all(p.record["engine"] == "diffusion" for p in pairs)
    assert "/add-dvce-l1-" in pairs[0].record["run"] and len(pairs[0].models) == 2
    assert pairs[0].record["diffusion"]["fingerprint"] == r.diffusion["fingerprint"]
    assert "DVCE" in Path(r.sheet).read_text() and "DVCE" in summary_text(r)
    again = counterfactual(ws, 1, 0, mode="add", eval_models=[tiny_classifier(num_classes=3, seed=7)], **kw)
    assert again.pairs_done == 0 and again.pairs_reused == 2
    other = counterfactual(ws, 1, 0, mode="add", **{**kw, "class_weight": 0.0})  # another run folder
    assert other.pairs_done == 2 and other.run != r.run
    entries = read_counterfactual_index(ws)["components"]["1/0"]
    assert len(entries) == 4


# ---------------------------------------------------------------------------- can the diffusion model denoise the images?


def test_domain_check_is_the_l1_of_plain_denoising(tiny, unets) -> None:  # type: ignore[no-untyped-def]
    from spurious.counterfactual._dvce import DvceSettings, denoise, domain_check, load_diffusion

    _, clf = tiny
    dm = load_diffusion(unets["ddpm"])
    x = _starts(3, seed=4)
    settings = DvceSettings(steps=STEPS, t_start=T_START)
    check = domain_check(clf, x, dm, settings, n=3, seed=5)
    back = ((denoise(dm, x * 2 - 1, settings, seed=5).clamp(-1, 1) + 1) / 2).double().numpy()  # same seed, same noise
    xs = x.double().numpy()
    assert check.n == 3 and check.t_start == T_START and check.seed == 5
    assert check.l1_reconstruction == pytest.approx(np.abs(back - xs).mean(), rel=1e-5)
    assert check.l1_between == pytest.approx(np.mean([np.abs(xs[i] - xs[i - 1]).mean() for i in range(3)]), rel=1e-5)
    with torch.no_grad():
        kept = (clf(x).argmax(1) == clf(torch.from_numpy(back).float()).argmax(1)).double().mean()
    assert check.top1_kept == pytest.approx(float(kept))
    assert check.ratio == pytest.approx(check.l1_reconstruction / check.l1_between)
    # a random UNet turns every image into noise of its own: it cannot denoise them back
    assert not check.agrees and check.ratio > check.limit and "CANNOT DENOISE" in check.line()
    assert check.to_dict()["agrees"] is False and json.loads(json.dumps(check.to_dict()))["n"] == 3
    with pytest.raises(ValueError, match="at least 2 start images"):
        domain_check(clf, x[:1], dm, settings)
    with pytest.raises(ValueError, match="needs t_start <= 0.75"):
        domain_check(clf, x, dm, DvceSettings(steps=STEPS, t_start=0.9))
    from spurious.counterfactual._dvce import domain_check_skipped

    assert domain_check_skipped(DvceSettings(t_start=0.75), 2) is None  # the limits themselves still run
    assert "at least 2" in str(domain_check_skipped(DvceSettings(t_start=0.75), 1))


def test_domain_check_on_planted_images_passes_the_shipped_model_and_fails_broken_ones() -> None:
    """Planted truth: the shipped diffusion model (trained on these images) denoises them back; the same UNet
    with random weights, or with a scheduler that reads its output as the image instead of the noise
    (``prediction_type="sample"``, a wrong scheduler config), does not."""
    import diffusers

    from spurious.counterfactual import DvceSettings, domain_check, load_diffusion
    from spurious.demo.diffusion import shipped_diffusion_dir
    from spurious.demo.planted import PlantedConfig
    from spurious.demo.planted import _generator as G
    from spurious.models import load_model

    config = PlantedConfig()
    items = [item for item in G._plan(config) if item.split == "val"][::150][:4]  # 4 classes' val images
    x = torch.stack([torch.from_numpy(G._render_item(config, item).image).permute(2, 0, 1).float() / 255
                     for item in items])
    clf = load_model("demo:robust")
    dm = load_diffusion(shipped_diffusion_dir())
    settings = DvceSettings(steps=40, t_start=0.5)  # 20 plain denoising steps
    working = domain_check(clf, x, dm, settings)
    assert working.agrees and working.ratio < 0.4, working  # measured 0.22 (docs/dvce.md)
    trained_scheduler = dm.scheduler
    dm.scheduler = diffusers.DDPMScheduler.from_config(trained_scheduler.config, prediction_type="sample")
    misread = domain_check(clf, x, dm, settings)
    assert not misread.agrees and misread.ratio > 1.0, misread  # measured 1.63
    dm.scheduler = trained_scheduler
    torch.manual_seed(0)
    dm.unet = diffusers.UNet2DModel(**{k: v for k, v in dm.unet.config.items() if not k.startswith("_")}).eval()
    untrained = domain_check(clf, x, dm, settings)
    assert not untrained.agrees and untrained.ratio > 1.0, untrained  # measured 1.13


def test_the_stage_warns_and_keeps_the_check(tiny, unets, tmp_path: Path,  # type: ignore[no-untyped-def]
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import spurious.counterfactual._stage as stage
    from spurious.counterfactual import counterfactual

    src, clf = tiny
    ws = tmp_path / "ws"
    shutil.copytree(src, ws)
    kw = {"engine": "diffusion", "diffusion": unets["ddpm"], "model": clf, "n_images": 2, "confused": 1,
          "diffusion_steps": STEPS, "t_start": T_START, "progress": False}
    with pytest.warns(UserWarning, match="cannot denoise these images"):
        r = counterfactual(ws, 1, 0, mode="add", **kw)
    c = r.diffusion_check
    assert c is not None and c["agrees"] is False and c["n"] == 2 and c["ratio"] > c["limit"]
    assert any(line.startswith("diffusion check") and "CANNOT DENOISE" in line for line in r.summary_lines())
    files = list((ws / "counterfactual" / "diffusion-checks").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["ratio"] == c["ratio"]
    assert json.loads((Path(r.run) / "run.json").read_text())["diffusion_check"]["ratio"] == c["ratio"]
    assert "CANNOT DENOISE them back" in (Path(r.run) / "index.html").read_text()  # the run's sheet says so

    def not_again(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the check of this model, guide and chain is kept, not run again")

    monkeypatch.setattr(stage, "domain_check", not_again)
    with pytest.warns(UserWarning, match="cannot denoise these images"):  # another run folder, the same check
        other = counterfactual(ws, 1, 0, mode="add", **{**kw, "class_weight": 0.0})
    assert other.run != r.run and other.diffusion_check == c
    far = counterfactual(ws, 1, 0, mode="add", **{**kw, "t_start": 0.9})  # no check from that much noise
    assert far.diffusion_check is not None and "t_start 0.9 > 0.75" in far.diffusion_check["not_checked"]
    assert any("diffusion check: not run" in line for line in far.summary_lines())


def summary_text(r) -> str:  # type: ignore[no-untyped-def]
    return "\n".join(r.summary_lines())


def _conditional(folder: Path) -> Path:
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                         "unet": ["diffusers", "UNet2DConditionModel"]}))
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel",
                                                             "sample_size": 64}))
    return folder


def _bad_size(src: Path, folder: Path) -> Path:
    shutil.copytree(src, folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "sample_size": 33}))
    return folder


def _no_unet(folder: Path) -> Path:
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline",
                                                         "scheduler": ["diffusers", "DDPMScheduler"]}))
    return folder


@pytest.mark.parametrize(("case", "error", "match"), [
    ("missing", FileNotFoundError, r"the diffusion model folder .*nowhere does not exist"),
    ("conditional", ValueError, r"is a UNet2DConditionModel, not an unconditional image model"),
    ("no-unet", ValueError, r"has no unet"),
    ("bad-size", ValueError, r"cannot take 33x33 images .* multiples of 2"),
    ("no-folder", ValueError, r"engine='diffusion' needs a diffusion model"),
    ("other-classes", ValueError, r"has 4 classes, the workspace .* 3, and they differ"),
    ("t-start", ValueError, r"t_start must be in \(0, 1\]"),
    ("distance", ValueError, r"unknown distance 'l3'"),
])
def test_bad_diffusion_input_is_one_clear_error(tiny, unets, tmp_path: Path, case: str, error: type,
                                                 match: str) -> None:
    from spurious.counterfactual import counterfactual

    ws, clf = tiny
    kw: dict = {"engine": "diffusion", "diffusion": unets["ddpm"], "model": clf, "n_images": 1,
                "diffusion_steps": 2, "progress": False}
    if case == "missing":
        kw["diffusion"] = tmp_path / "nowhere"
    elif case == "conditional":
        kw["diffusion"] = _conditional(tmp_path / "sd")
    elif case == "no-unet":
        kw["diffusion"] = _no_unet(tmp_path / "empty")
    elif case == "bad-size":
        kw["diffusion"] = _bad_size(unets["ddpm"], tmp_path / "u33")
    elif case == "no-folder":
        kw["diffusion"] = None
    elif case == "other-classes":
        kw["model"] = tiny_classifier(num_classes=4)
    elif case == "t-start":
        kw["t_start"] = 0.0
    else:
        kw["distance"] = "l3"
    with pytest.raises(error, match=match):
        counterfactual(ws, 0, 0, mode="add", **kw)


# ---------------------------------------------------------------------------- the CLI


def _cli(argv: list[str]) -> tuple[int, str, str]:
    from spurious.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_diffusion_engine_on_the_fast_demo(fast_demo, unets, tmp_path: Path) -> None:
    out = copy_demo_out(fast_demo, tmp_path / "demo")
    ws = str(out / "ws-robust")
    base = ["counterfactual", ws, "--class", "0", "--component", "0", "--add", "--n-images", "2",
            "--diffusion-steps", str(STEPS), "--t-start", str(T_START), "--no-progress"]
    code, stdout, err = _cli([*base, "--diffusion", str(unets["ddpm"]), "--eval-model", "demo:standard-tiny",
                              "--class-weight", "0", "--component-weight", "1", "--distance", "l2", "--json"])
    assert code == 0, err
    assert "warning: the diffusion model" in err and "cannot denoise these images" in err  # a random UNet
    summary = json.loads(stdout)
    assert summary["engine"] == "diffusion" and summary["pairs"] == 2 and summary["steps"] == 5
    assert summary["diffusion_check"]["agrees"] is False
    assert summary["diffusion"]["class_weight"] == 0.0 and summary["diffusion"]["distance"] == "l2"
    assert [m["role"] for m in summary["models"]] == ["optimised", "eval"]
    code, stdout, err = _cli([*base, "--engine", "diffusion", "--diffusion", str(unets["ddpm"]), "--eval-model",
                              "demo:standard-tiny", "--class-weight", "0", "--component-weight", "1", "--distance",
                              "l2"])
    assert code == 0 and "(0 done, 2 reused)" in stdout and "DVCE" in stdout, err

    from spurious.models import register_model_source

    register_model_source("dvcetest", lambda name, **kw: tiny_classifier(num_classes=3), lambda: ["three"])
    for extra, match in ((["--diffusion", str(tmp_path / "nowhere")], "does not exist"),
                         (["--diffusion", str(_conditional(tmp_path / "sd"))], "not an unconditional image model"),
                         (["--diffusion", str(_no_unet(tmp_path / "e"))], "has no unet"),
                         (["--diffusion", str(_bad_size(unets["ddpm"], tmp_path / "u33"))], "cannot take 33x33"),
                         (["--diffusion", str(unets["ddpm"]), "--model", "dvcetest:three"], "has 3 classes"),
                         (["--engine", "image", "--diffusion", str(unets["ddpm"])], "is for engine='diffusion'")):
        code, stdout, err = _cli([*base, *extra])
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1 and match in err, err
