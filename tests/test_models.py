"""Tests for the model adapter ``spurious.models`` (CPU, offline, random or bundled weights)."""

from __future__ import annotations

import dataclasses
import json
import warnings
import re
import urllib.error

import numpy as np
import pytest
import timm
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn

from spurious import imagenet, models
from spurious.models import _checkpoint, _classifier, _registry, _torchvision
from spurious.models import (
    Classifier,
    Preprocessing,
    list_models,
    load_model,
    register_model_source,
)

RTOL, ATOL = 1e-4, 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine oversubscribed OpenMP threads make
    these forward passes ~5x slower; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomize_zero_params(module: nn.Module) -> None:
    """Zero-initialised heads (torchvision ViT) would make the logit check trivial."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))


def _assert_no_hooks(module: nn.Module) -> None:
    for name, m in module.named_modules():
        assert not m._forward_hooks, f"forward hook left on {name!r}"
        assert not m._forward_pre_hooks, f"forward pre-hook left on {name!r}"
        assert not m._backward_hooks, f"backward hook left on {name!r}"


# ----------------------------------------------------------------------------
# f(x) = W phi(x) + b against the native logits
# ----------------------------------------------------------------------------

# spec -> expected D, from the libraries' own metadata / the architecture papers.
TIMM_CASES = {
    "timm:resnet18": 512,
    "timm:convnext_atto": 320,
    "timm:vit_tiny_patch16_224": 192,
    "timm:deit_tiny_distilled_patch16_224": 2 * 192,  # concat(cls, dist) features
    "timm:resnetv2_18": 512,  # 1x1 Conv2d head, as in BiT
    "timm:test_efficientnet": None,
    "timm:swin_tiny_patch4_window7_224": 768,
}
TORCHVISION_CASES = {
    "torchvision:resnet18": 512,
    "torchvision:convnext_tiny": 768,
    "torchvision:vit_b_32": 768,
    "torchvision:efficientnet_b0": 1280,
    "torchvision:swin_t": 768,
    "torchvision:mobilenet_v3_small": 1024,
    "torchvision:regnet_y_400mf": 440,
}


@pytest.mark.parametrize("spec", [*TIMM_CASES, *TORCHVISION_CASES])
def test_linear_head_reproduces_native_logits(spec: str) -> None:
    torch.manual_seed(0)
    clf = load_model(spec, pretrained=False)
    _randomize_zero_params(clf.model)
    expected_d = {**TIMM_CASES, **TORCHVISION_CASES}[spec]
    if expected_d is None:
        expected_d = clf.model.num_features
    x = torch.rand(2, *clf.input_size)
    with torch.no_grad():
        phi, logits = clf.phi_and_logits(x)
        native = clf.native_logits(x)
    weight, bias = clf.head()

    assert clf.num_classes == 1000 and clf.num_features == expected_d
    assert phi.shape == (2, expected_d) and logits.shape == (2, 1000)
    assert weight.shape == (1000, expected_d) and bias.shape == (1000,)
    assert weight.dtype == bias.dtype == torch.float32 and not weight.requires_grad
    torch.testing.assert_close(phi @ weight.T + bias, native, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(logits, native, rtol=RTOL, atol=ATOL)
    assert native.std() > 0  # a non-trivial check
    assert clf.class_names == imagenet.class_names()
    assert clf.input_size == (3, *clf.preprocessing.input_size)
    _assert_no_hooks(clf)


def test_one_by_one_conv_head_is_flattened() -> None:
    clf = load_model("timm:resnetv2_18", pretrained=False)
    conv = clf.model.get_classifier()
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
    weight, bias = clf.head()
    torch.testing.assert_close(weight, conv.weight.detach()[:, :, 0, 0], rtol=0, atol=0)
    torch.testing.assert_close(bias, conv.bias.detach(), rtol=0, atol=0)


def test_distilled_heads_are_merged() -> None:
    clf = load_model("timm:deit_tiny_distilled_patch16_224", pretrained=False)
    m = clf.model
    weight, bias = clf.head()
    expected_w = 0.5 * torch.cat([m.head.weight, m.head_dist.weight], dim=1).detach()
    torch.testing.assert_close(weight, expected_w, rtol=0, atol=0)
    torch.testing.assert_close(bias, 0.5 * (m.head.bias + m.head_dist.bias).detach())
    # phi is [cls token features, distillation token features]
    x = torch.rand(2, *clf.input_size)
    with torch.no_grad():
        phi = clf.phi(x)
        tokens = m.forward_features(clf._normalize(x))
    torch.testing.assert_close(phi, torch.cat([tokens[:, 0], tokens[:, 1]], dim=1))


# ----------------------------------------------------------------------------
# Toy models with hand-set weights: exact expected values
# ----------------------------------------------------------------------------

TOY_PRE = Preprocessing(
    input_size=(4, 4),
    resize_size=4,
    crop_pct=1.0,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.5, 1.0),
)


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3, 2)
        self.head_dist = nn.Linear(3, 2)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("boom inside forward")
        feats = self.pool(x).flatten(1)
        return (self.head(feats) + self.head_dist(feats.square())) / 2


def _toy_linear() -> nn.Sequential:
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]]))
        model[2].bias.copy_(torch.tensor([0.25, -1.0]))
    return model


def _channel_means(x: torch.Tensor) -> np.ndarray:
    """numpy oracle: per-channel means of the normalised images, [N, 3]."""
    xn = (x.numpy() - np.array(TOY_PRE.mean)[None, :, None, None]) / np.array(
        TOY_PRE.std
    )[None, :, None, None]
    return xn.mean(axis=(2, 3))


def test_toy_linear_head_exact() -> None:
    clf = Classifier.from_module(_toy_linear(), TOY_PRE, ["a", "b"], "toy")
    x = torch.rand(3, 3, 4, 4)
    phi, logits = clf.phi_and_logits(x)
    w = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    expected_phi = _channel_means(x)
    np.testing.assert_allclose(phi.detach().numpy(), expected_phi, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        logits.detach().numpy(), expected_phi @ w.T + [0.25, -1.0], rtol=1e-5, atol=1e-5
    )
    assert clf.class_names == ["a", "b"] and clf.spec == "toy"
    assert (clf.num_classes, clf.num_features, clf.input_size) == (2, 3, (3, 4, 4))


def test_toy_conv_head_exact() -> None:
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(3, 2, 1), nn.Flatten())
    clf = Classifier.from_module(model, TOY_PRE)
    weight, bias = clf.head()
    np.testing.assert_array_equal(
        weight.numpy(), model[1].weight.detach().numpy()[:, :, 0, 0]
    )
    x = torch.rand(2, 3, 4, 4)
    expected = _channel_means(x) @ weight.numpy().T + bias.numpy()
    np.testing.assert_allclose(clf(x).detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    assert clf.class_names == ["class_0", "class_1"]


def test_toy_two_heads_exact() -> None:
    model = _TwoHeads()
    clf = Classifier.from_module(model, TOY_PRE)
    assert clf.num_features == 6
    x = torch.rand(2, 3, 4, 4)
    means = _channel_means(x)
    np.testing.assert_allclose(
        clf.phi(x).detach().numpy(),
        np.concatenate([means, means**2], axis=1),
        rtol=1e-5,
        atol=1e-6,
    )
    w1, b1 = model.head.weight.detach().numpy(), model.head.bias.detach().numpy()
    w2, b2 = (
        model.head_dist.weight.detach().numpy(),
        model.head_dist.bias.detach().numpy(),
    )
    weight, bias = clf.head()
    np.testing.assert_allclose(weight.numpy(), 0.5 * np.concatenate([w1, w2], axis=1))
    np.testing.assert_allclose(bias.numpy(), 0.5 * (b1 + b2), rtol=1e-6)


def test_no_linear_head_raises() -> None:
    model = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4), nn.ReLU()
    )
    with pytest.raises(ValueError, match="has no linear head"):
        Classifier.from_module(model, TOY_PRE)
    _assert_no_hooks(model)


def test_non_logit_output_raises() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 1))  # [N, 2, 4, 4]
    with pytest.raises(ValueError, match=r"must return a logits tensor \[N, K\]"):
        Classifier.from_module(model, TOY_PRE)


def test_wrong_number_of_class_names_raises() -> None:
    with pytest.raises(ValueError, match="got 3 class names for a model with 2 logits"):
        Classifier.from_module(_toy_linear(), TOY_PRE, ["a", "b", "c"])


def test_bad_input_shape_raises() -> None:
    clf = Classifier.from_module(_toy_linear(), TOY_PRE)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        clf(torch.rand(3, 4, 4))
    with pytest.raises(TypeError, match="float tensor"):
        clf(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


# ----------------------------------------------------------------------------
# Gradients and hooks
# ----------------------------------------------------------------------------


def test_phi_is_differentiable_and_leaves_no_hooks() -> None:
    torch.manual_seed(0)
    clf = load_model("timm:test_vit", pretrained=False)
    x = torch.rand(2, *clf.input_size, requires_grad=True)
    x_before = x.detach().clone()
    clf.phi(x).sum().backward()
    assert (
        x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    )
    torch.testing.assert_close(x.detach(), x_before, rtol=0, atol=0)  # input untouched
    clf(x.detach())
    clf.native_logits(x.detach())
    clf.fingerprint()
    _assert_no_hooks(clf)
    assert not clf.training and not clf.model.training


def test_no_hooks_after_exception_in_forward() -> None:
    model = _TwoHeads()
    clf = Classifier.from_module(model, TOY_PRE)
    model.fail = True
    for call in (clf.phi, clf.forward, clf.phi_and_logits):
        with pytest.raises(RuntimeError, match="boom inside forward"):
            call(torch.rand(1, 3, 4, 4))
        _assert_no_hooks(clf)
    model.fail = False
    assert clf(torch.rand(1, 3, 4, 4)).shape == (1, 2)


def test_head_called_once_per_forward() -> None:
    calls = []
    model = _toy_linear()
    clf = Classifier.from_module(model, TOY_PRE)
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        clf.phi_and_logits(torch.rand(2, 3, 4, 4))
    finally:
        handle.remove()
    assert len(calls) == 1


def test_fingerprint() -> None:
    clf = Classifier.from_module(_toy_linear(), TOY_PRE)
    fp = clf.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert Classifier.from_module(_toy_linear(), TOY_PRE).fingerprint() == fp
    with torch.no_grad():
        clf.model[2].bias[0] += 1e-3
    assert clf.fingerprint() != fp


# ----------------------------------------------------------------------------
# The real EfficientNet-Lite0 (bundled ImageNet weights)
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0() -> Classifier:
    return load_model("efficientnet_lite0")


def test_efficientnet_lite0_predicts_real_images(lite0: Classifier) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    pre = lite0.preprocessing
    assert pre == Preprocessing(
        (224, 224), 256, 0.875, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    )
    x = torch.stack(
        [
            pre(Image.fromarray(skimage_data.coffee())),
            pre(Image.fromarray(skimage_data.chelsea())),
        ]
    )
    with torch.no_grad():
        logits = lite0(x)
        torch.testing.assert_close(logits, lite0.native_logits(x), rtol=RTOL, atol=ATOL)
    assert int(logits[0].argmax()) == 967 and lite0.class_names[967] == "espresso"
    top3 = set(logits[1].topk(3).indices.tolist())
    assert top3 & set(range(281, 286)), f"no cat class in top-3 {top3}"
    assert (lite0.num_classes, lite0.num_features) == (1000, 1280)
    assert lite0.spec == "efficientnet_lite0"


def test_efficientnet_lite0_weight_mapping_fails_loudly() -> None:
    source = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    with pytest.raises(ValueError, match="cannot map 'a.weight'"):
        _checkpoint.map_by_order(
            source, {"b.weight": torch.zeros(3, 3), "b.bias": torch.zeros(3)}, "test"
        )
    with pytest.raises(ValueError, match="2 tensors in the weights but 1 in the model"):
        _checkpoint.map_by_order(source, {"b.weight": torch.zeros(2, 3)}, "test")


# ----------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_source() -> nn.Module:
    torch.manual_seed(123)
    return torchvision.models.resnet18().eval()


def _source_logits(model: nn.Module, x: torch.Tensor, mean, std) -> torch.Tensor:
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((x - mean_t) / std_t)


@pytest.mark.parametrize("layout", ["plain", "state_dict_module", "model_key"])
def test_checkpoint_layouts(tmp_path, resnet18_source: nn.Module, layout: str) -> None:
    sd = resnet18_source.state_dict()
    if layout == "plain":
        obj = sd
    elif layout == "state_dict_module":
        obj = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}
    else:
        obj = {"model": sd, "epoch": 3}
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)

    clf = load_model(f"torchvision:resnet18@{path}")
    assert clf.spec == f"torchvision:resnet18@{path.resolve()}"
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        got = clf(x)
    expected = _source_logits(
        resnet18_source, x, models.IMAGENET_MEAN, models.IMAGENET_STD
    )
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


def test_madry_checkpoint(tmp_path, resnet18_source: nn.Module) -> None:
    sd = resnet18_source.state_dict()
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    madry = {f"module.model.{k}": v for k, v in sd.items()}
    # the attacker's copy must be ignored: give it different values
    madry |= {f"module.attacker.model.{k}": torch.zeros_like(v) for k, v in sd.items()}
    madry["module.normalizer.new_mean"] = torch.tensor(mean).view(3, 1, 1)
    madry["module.normalizer.new_std"] = torch.tensor(std).view(3, 1, 1)
    madry["module.attacker.normalizer.new_mean"] = torch.tensor(mean).view(3, 1, 1)
    madry["module.attacker.normalizer.new_std"] = torch.tensor(std).view(3, 1, 1)
    path = tmp_path / "madry.pt"
    torch.save({"model": madry, "epoch": 90}, path)

    clf = load_model("torchvision:resnet18", checkpoint=path)
    assert clf.preprocessing.mean == pytest.approx(
        mean
    ) and clf.preprocessing.std == pytest.approx(std)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        got = clf(x)
    torch.testing.assert_close(
        got, _source_logits(resnet18_source, x, mean, std), rtol=RTOL, atol=ATOL
    )


def test_checkpoint_with_other_num_classes(tmp_path) -> None:
    torch.manual_seed(7)
    source = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "ten.pt"
    torch.save(source.state_dict(), path)
    clf = load_model(f"torchvision:resnet18@{path}")
    assert clf.num_classes == 10 and clf.class_names == [
        f"class_{k}" for k in range(10)
    ]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        got = clf(x)
    expected = _source_logits(source, x, models.IMAGENET_MEAN, models.IMAGENET_STD)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    names = [f"c{k}" for k in range(10)]
    assert (
        load_model(f"torchvision:resnet18@{path}", class_names=names).class_names
        == names
    )


def test_load_model_class_names_must_match() -> None:
    with pytest.raises(
        ValueError, match="got 2 class names for 'timm:test_vit' with 1000 classes"
    ):
        load_model("timm:test_vit", pretrained=False, class_names=["a", "b"])


def test_timm_checkpoint_with_other_num_classes(tmp_path) -> None:
    torch.manual_seed(3)
    source = timm.create_model("test_vit", pretrained=False, num_classes=5).eval()
    path = tmp_path / "vit.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    clf = load_model("timm:test_vit", checkpoint=str(path))
    assert clf.num_classes == 5
    x = torch.rand(2, *clf.input_size)
    mean, std = clf.preprocessing.mean, clf.preprocessing.std
    with torch.no_grad():
        torch.testing.assert_close(
            clf(x), _source_logits(source, x, mean, std), rtol=RTOL, atol=ATOL
        )


def test_checkpoint_errors(tmp_path, resnet18_source: nn.Module) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_model(f"torchvision:resnet18@{missing}")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model("timm:resnet18", checkpoint=missing)

    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage.pt' is not a readable checkpoint \(.*torch.save\(model.state_dict"):
        load_model(f"torchvision:resnet18@{garbage}")

    wrong_arch = tmp_path / "r18.pt"
    torch.save(resnet18_source.state_dict(), wrong_arch)
    with pytest.raises(ValueError, match="does not fit 'torchvision:resnet34"):
        load_model(f"torchvision:resnet34@{wrong_arch}")
    with pytest.raises(ValueError, match="pass only one"):
        load_model(f"torchvision:resnet18@{wrong_arch}", checkpoint=wrong_arch)


# ----------------------------------------------------------------------------
# Specs, registry and errors
# ----------------------------------------------------------------------------


def test_list_models() -> None:
    names = list_models()
    assert {
        "efficientnet_lite0",
        "torchvision:resnet50",
        "timm:resnet50",
        "timm:convnext_tiny.fb_in1k",
    } <= set(names)
    subset = list_models("torchvision:resnet*")
    assert "torchvision:resnet18" in subset and all(
        n.startswith("torchvision:resnet") for n in subset
    )
    assert list_models("no-such-*") == []


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        (
            "timm:resnet5O",
            r"unknown model 'timm:resnet5O'.*did you mean: .*timm:resnet50\b",
        ),
        (
            "torchvision:resnet5O",
            r"unknown model 'torchvision:resnet5O'.*torchvision:resnet50\b",
        ),
        (
            "timm:resnet18.no_such_tag",
            r"unknown model 'timm:resnet18\.no_such_tag'.*timm:resnet18",
        ),
        ("tv:resnet50", r"unknown prefix 'tv:'.*did you mean: .*resnet50"),
        ("resnet50", r"unknown model 'resnet50'.*(timm|torchvision):resnet50\b"),
    ],
)
def test_unknown_spec_raises(spec: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        load_model(spec, pretrained=False)


def test_pretrained_download_failure_raises(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(
        RuntimeError,
        match=r"could not download the pretrained weights of 'torchvision:resnet18'.*pretrained=False",
    ) as info:
        load_model("torchvision:resnet18")
    # a user error (the CLI exits with 2), still a RuntimeError for callers that caught that
    assert isinstance(info.value, models.WeightsDownloadError) and isinstance(info.value, OSError)
    assert "\n" not in str(info.value)

    real_create = timm.create_model

    def create_offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_offline)
    with pytest.raises(
        RuntimeError, match=r"could not download.*'timm:test_vit@/path/to/weights.pt'"
    ):
        load_model("timm:test_vit")


def test_registered_source(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(_registry, "_SOURCES", {})
    seen = {}

    def factory(name, *, pretrained, checkpoint, device):
        seen.update(
            name=name, pretrained=pretrained, checkpoint=checkpoint, device=device
        )
        return Classifier.from_module(_toy_linear(), TOY_PRE, spec=f"whatever:{name}")

    register_model_source("toy:", factory, lambda: ["small", "large"])
    assert list_models("toy:*") == ["toy:small", "toy:large"]
    clf = load_model("toy:small", pretrained=False, class_names=["x", "y"])
    assert clf.spec == "toy:small" and clf.class_names == ["x", "y"]
    assert seen == {
        "name": "small",
        "pretrained": False,
        "checkpoint": None,
        "device": None,
    }

    ckpt = tmp_path / "toy.pt"
    ckpt.write_bytes(b"")
    assert load_model(f"toy:large@{ckpt}").spec == f"toy:large@{ckpt.resolve()}"
    assert seen["checkpoint"] == ckpt.resolve()

    with pytest.raises(ValueError, match=r"unknown model 'toy:smal'.*toy:small"):
        load_model("toy:smal")
    with pytest.raises(ValueError, match="built in"):
        register_model_source("timm", factory, list)
    with pytest.raises(TypeError, match="callables"):
        register_model_source("other", factory, ["a"])  # type: ignore[arg-type]


def test_torchvision_and_timm_preprocessing() -> None:
    tv = torchvision.models.get_model_weights("swin_t").DEFAULT.transforms()
    pre = _torchvision.weights_preprocessing("swin_t")
    assert (
        pre.input_size == (tv.crop_size[0],) * 2
        and pre.resize_size == tv.resize_size[0]
    )
    assert pre.interpolation == "bicubic" and pre.mean == pytest.approx(tv.mean)
    clf = load_model("timm:test_vit", pretrained=False)
    cfg = timm.data.resolve_data_config({}, model=clf.model)
    assert clf.input_size == cfg["input_size"]
    assert clf.preprocessing.resize_size == int(cfg["input_size"][1] / cfg["crop_pct"])
    assert clf.preprocessing.interpolation == cfg["interpolation"]
    assert clf.preprocessing.mean == pytest.approx(cfg["mean"])


# ----------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize(
    ("width", "height", "crop"),
    [(300, 200, (224, 224)), (150, 331, (224, 224)), (256, 256, (200, 240))],
)
def test_preprocessing_matches_torchvision(interpolation, width, height, crop) -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    pre = Preprocessing(
        input_size=crop, resize_size=256, crop_pct=0.875, interpolation=interpolation
    )
    out = pre(img)
    assert out.shape == (3, *crop) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    mode = TF.InterpolationMode(interpolation)
    expected = TF.to_tensor(
        TF.center_crop(TF.resize(img, 256, interpolation=mode), list(crop))
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_preprocessing_converts_modes_and_roundtrips() -> None:
    pre = Preprocessing()
    gray = Image.fromarray(np.full((300, 280), 128, dtype=np.uint8), mode="L")
    out = pre(gray)
    assert out.shape == (3, 224, 224)
    torch.testing.assert_close(out, torch.full_like(out, 128 / 255))
    d = json.loads(json.dumps(pre.to_dict()))
    assert Preprocessing.from_dict(d) == pre
    with pytest.raises(ValueError, match="interpolation must be one of"):
        Preprocessing(interpolation="cubic-ish")
    with pytest.raises(ValueError, match="unknown Preprocessing keys"):
        Preprocessing.from_dict({**d, "size": 3})
    with pytest.raises(TypeError, match="PIL"):
        pre(np.zeros((4, 4, 3)))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- stated preprocessing


def test_value_range_normalisation_matches_closed_form() -> None:
    pre = Preprocessing(input_size=(4, 4), resize_size=4, crop_pct=1.0, mean=(100.0, 120.0, 140.0),
                        std=(50.0, 60.0, 70.0), value_range=(0, 255))
    clf = Classifier.from_module(_toy_linear(), pre)
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    seen = {}
    clf.model.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].clone()))
    clf(x)
    expected = (x.numpy() * 255.0 - np.array(pre.mean)[None, :, None, None]) / np.array(pre.std)[None, :, None, None]
    np.testing.assert_allclose(seen["x"].numpy(), expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="lo < hi"):
        Preprocessing(value_range=(1, 0))


def _save_resnet(tmp_path, num_classes: int = 3):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    path = tmp_path / "net.pt"
    torch.save(torchvision.models.resnet18(num_classes=num_classes).state_dict(), path)
    return path


def test_config_file_beside_the_checkpoint_timm_format(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = _save_resnet(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({
        "architecture": "resnet18", "num_classes": 3, "label_names": ["a", "b", "c"],
        "pretrained_cfg": {"input_size": [3, 48, 40], "crop_pct": 0.8, "interpolation": "bicubic",
                           "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "crop_mode": "center",
                           "hf_hub_id": "ignored"}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf = load_model(f"torchvision:resnet18@{path}")
    p = clf.preprocessing
    assert p.input_size == (48, 40) and p.resize_size == 60 and p.crop_pct == pytest.approx(0.8)
    assert p.interpolation == "bicubic" and p.mean == (0.1, 0.2, 0.3) and p.std == (0.4, 0.5, 0.6)
    assert clf.class_names == ["a", "b", "c"] and clf.class_names_source == "config file"
    assert clf.config_path == str(tmp_path / "config.json")
    # STEM.json wins over config.json
    (tmp_path / "net.json").write_text(json.dumps({"input_size": 32, "crop_pct": 1.0}))
    clf2 = load_model(f"torchvision:resnet18@{path}")
    assert clf2.preprocessing.input_size == (32, 32) and clf2.preprocessing.resize_size == 32
    # the architecture can come from the config (timm's names)
    clf3 = load_model(f"@{path}", config=tmp_path / "config.json")
    assert clf3.spec == f"timm:resnet18@{path.resolve()}"
    assert load_model(f"torchvision:resnet18@{path}", config=False, num_classes=3).preprocessing.input_size == (224, 224)


@pytest.mark.parametrize(("content", "match"), [
    ("{nope", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"input_size": [1, 2, 3, 4]}', "input_size"),
    ('{"mean": [0.5, 0.5]}', "3 values"),
    ('{"crop_mode": "squash"}', "crop_mode"),
    ('{"class_names": ["a"], "num_classes": 3}', "1 class names but num_classes 3"),
    ('{"interpolation": "fancy"}', "interpolation"),
    ('{"value_range": [255, 0]}', "lo < hi"),
])
def test_bad_config_files(tmp_path, content: str, match: str) -> None:  # type: ignore[no-untyped-def]
    path = _save_resnet(tmp_path)
    (tmp_path / "net.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        load_model(f"torchvision:resnet18@{path}")


def test_preprocessing_options(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = _save_resnet(tmp_path)
    clf = load_model(f"torchvision:resnet18@{path}", preprocessing={"input_size": [64, 48], "resize": 80})
    assert clf.preprocessing.input_size == (64, 48) and clf.preprocessing.resize_size == 80
    assert clf.preprocessing.crop_pct == pytest.approx(64 / 80)
    assert clf.preprocessing_source.startswith("options (input_size, resize_size) over defaults of torchvision")
    with pytest.raises(ValueError, match="unknown preprocessing key 'men'.*did you mean 'mean'"):
        load_model(f"torchvision:resnet18@{path}", preprocessing={"men": 0.5})
    with pytest.raises(ValueError, match="disagree"):
        load_model(f"torchvision:resnet18@{path}", preprocessing={"input_size": 64, "resize": 100, "crop_pct": 1.0})
    with pytest.raises(TypeError, match="preprocessing must be"):
        load_model(f"torchvision:resnet18@{path}", preprocessing="imagenet")  # type: ignore[arg-type]


def test_bare_architecture_with_a_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = _save_resnet(tmp_path)
    with pytest.warns(UserWarning, match="states no preprocessing"):
        clf = load_model(f"resnet18@{path}")
    assert clf.spec == f"torchvision:resnet18@{path.resolve()}" and clf.num_classes == 3
    with pytest.raises(ValueError, match="unknown model 'resnet1800'"):
        load_model(f"resnet1800@{path}")
    with pytest.raises(ValueError, match="names no architecture"):
        load_model(f"@{path}")


def test_fingerprint_covers_backbone_preprocessing_and_labels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    clf = Classifier.from_module(net, TOY_PRE, ["x", "y"])
    fp = clf.fingerprint()
    with torch.no_grad():
        net[0].weight[0, 0] += 1.0  # backbone only: the head is untouched
    assert clf.fingerprint() != fp
    fp_backbone = clf.fingerprint()
    clf.class_names = ["y", "x"]
    assert clf.fingerprint() != fp_backbone
    clf.class_names = ["x", "y"]
    clf.set_preprocessing(dataclasses.replace(TOY_PRE, interpolation="bicubic"))
    assert clf.fingerprint() != fp_backbone


def test_checkpoint_digest_is_cached_per_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SPURIOUS_CACHE", str(tmp_path / "cache"))
    path = _save_resnet(tmp_path)
    a = load_model(f"torchvision:resnet18@{path}", preprocessing={"input_size": 32})
    cache = json.loads((tmp_path / "cache" / "checkpoint-digests.json").read_text())
    assert [k.split("|")[0] for k in cache] == [str(path.resolve())]
    calls = []
    monkeypatch.setattr(_classifier, "state_dict_digest", lambda sd: calls.append(1) or "x")
    b = load_model(f"torchvision:resnet18@{path}", preprocessing={"input_size": 32})
    assert a.fingerprint() == b.fingerprint() and not calls  # the file digest came from the cache


def test_state_dict_digest_identifies_weights_not_their_storage() -> None:
    from spurious.models import state_dict_digest

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    sd = net.state_dict()
    digest = state_dict_digest(sd)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    # key order, a float64 copy of float32 weights (exact) and another device-free copy: same weights
    assert state_dict_digest(dict(reversed(list(sd.items())))) == digest
    assert state_dict_digest({k: v.double() if v.is_floating_point() else v for k, v in sd.items()}) == digest
    # one value changed by one ulp, or a renamed tensor, or a buffer counter: other weights
    bumped = {k: v.clone() for k, v in sd.items()}
    bumped["3.bias"][0] = torch.nextafter(bumped["3.bias"][0], torch.tensor(1e9))
    renamed = {("x." + k if k == "3.bias" else k): v for k, v in sd.items()}
    counted = {k: (v + 1 if k.endswith("num_batches_tracked") else v) for k, v in sd.items()}
    assert len({digest, state_dict_digest(bumped), state_dict_digest(renamed), state_dict_digest(counted)}) == 4
