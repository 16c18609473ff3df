"""GradCAM against closed forms on toy models with hand-set weights, plus layer discovery on real nets."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from spurious.gradcam import GradCAM, _grid_of, find_target_layer, overlay
from spurious.models import Classifier, Preprocessing, load_model

SIZE = 16


def _identity_pre(size: int = SIZE) -> Preprocessing:
    return Preprocessing(input_size=(size, size), resize_size=size, crop_pct=1.0, interpolation="bilinear",
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class ConvGapNet(nn.Module):
    """conv (kernel = stride = s) -> ReLU -> global average pool -> linear; counts its forward calls."""

    def __init__(self, conv_w: np.ndarray, conv_b: np.ndarray, fc_w: np.ndarray, fc_b: np.ndarray) -> None:
        super().__init__()
        c, _, s, _ = conv_w.shape
        self.conv = nn.Conv2d(3, c, s, stride=s)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(c, fc_w.shape[0])
        with torch.no_grad():
            for p, v in ((self.conv.weight, conv_w), (self.conv.bias, conv_b), (self.fc.weight, fc_w),
                         (self.fc.bias, fc_b)):
                p.copy_(torch.from_numpy(v))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(self.flat(self.pool(self.act(self.conv(x)))))


class _PrependCls(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.linspace(-1, 1, dim).view(1, 1, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.expand(t.shape[0], -1, -1), t], dim=1)


class TokenNet(nn.Module):
    """ViT-like: p x p patches (row-major) -> linear embedding -> cls token first -> mean of patch tokens -> fc."""

    def __init__(self, embed_w: np.ndarray, fc_w: np.ndarray, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(embed_w.shape[1], embed_w.shape[0])
        self.cls = _PrependCls(embed_w.shape[0])
        self.fc = nn.Linear(embed_w.shape[0], fc_w.shape[0])
        with torch.no_grad():
            self.embed.weight.copy_(torch.from_numpy(embed_w))
            self.embed.bias.zero_()
            self.fc.weight.copy_(torch.from_numpy(fc_w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.patch
        patches = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, -1, c * p * p)
        tokens = self.cls(self.embed(patches))
        return self.fc(tokens[:, 1:].mean(dim=1))


def _conv_classifier(stride: int = 1, channels: int = 5, classes: int = 4, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 1, (channels, 3, stride, stride)).astype(np.float32)
    conv_b = rng.normal(0, 0.5, channels).astype(np.float32)
    fc_w = rng.normal(0, 1, (classes, channels)).astype(np.float32)
    fc_b = rng.normal(0, 1, classes).astype(np.float32)
    net = ConvGapNet(conv_w, conv_b, fc_w, fc_b)
    return Classifier.from_module(net, _identity_pre(), spec="test:convgap"), (conv_w, conv_b, fc_w, fc_b)


def _np_conv_relu(x: np.ndarray, conv_w: np.ndarray, conv_b: np.ndarray) -> np.ndarray:
    """ReLU(conv) with kernel = stride = s, in numpy: [N, 3, H, W] -> [N, C, H/s, W/s]."""
    n, _, height, width = x.shape
    s = conv_w.shape[2]
    blocks = x.reshape(n, 3, height // s, s, width // s, s)
    out = np.einsum("cjuv,njhuwv->nchw", conv_w, blocks) + conv_b[None, :, None, None]
    return np.maximum(out, 0.0)


def _np_upsample(m: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize [h, w] -> [size, size], half-pixel centres (align_corners=False)."""
    def weights(n_in: int) -> np.ndarray:
        out = np.zeros((size, n_in))
        for o in range(size):
            src = max((o + 0.5) * n_in / size - 0.5, 0.0)
            i0 = int(np.floor(src))
            i1 = min(i0 + 1, n_in - 1)
            frac = src - i0
            out[o, i0] += 1 - frac
            out[o, i1] += frac
        return out
    return weights(m.shape[0]) @ m @ weights(m.shape[1]).T


def _np_gradcam(a: np.ndarray, g: np.ndarray, size: int) -> np.ndarray:
    """ReLU(sum_c g_c A_c), upsampled and divided by its max. a [N, C, h, w], g [N, C] = d target / d phi."""
    cams = np.maximum(np.einsum("nc,nchw->nhw", g, a), 0.0)
    out = np.stack([_np_upsample(c, size) if c.shape[0] != size else c for c in cams])
    peak = out.reshape(len(out), -1).max(axis=1)
    return np.where(peak[:, None, None] > 0, out / np.where(peak > 0, peak, 1)[:, None, None], 0.0)


def _images(n: int, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed))


def _no_hooks(module: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in module.modules())


# ----------------------------------------------------------------------------
# Closed forms
# ----------------------------------------------------------------------------


def test_gradcam_of_a_logit_matches_closed_form() -> None:
    clf, (conv_w, conv_b, fc_w, _) = _conv_classifier()
    assert find_target_layer(clf) == "act"
    x = _images(3)
    ks = torch.tensor([0, 2, 3])
    cam = GradCAM(clf)
    assert cam.layer == "act"
    calls = clf.model.calls
    maps = cam.attribute(x, lambda phi, logits: logits.gather(1, ks[:, None])[:, 0])
    a = _np_conv_relu(x.numpy().astype(np.float64), conv_w, conv_b)
    expected = _np_gradcam(a, fc_w[ks.numpy()].astype(np.float64), SIZE)
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == torch.float32
    np.testing.assert_allclose(maps.numpy(), expected, atol=1e-5)
    assert clf.model.calls == calls + 1  # one forward pass for the whole batch


def test_gradcam_target_any_function_of_phi_and_logits() -> None:
    clf, (conv_w, conv_b, fc_w, fc_b) = _conv_classifier(seed=1)
    x = _images(4, seed=1)

    def target(phi: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits, dim=1)[:, 1] + 0.5 * phi[:, 0] ** 2

    maps = GradCAM(clf).attribute(x, target)
    a = _np_conv_relu(x.numpy().astype(np.float64), conv_w, conv_b)
    phi = a.mean(axis=(2, 3))
    logits = phi @ fc_w.T + fc_b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = fc_w[1][None, :] - p @ fc_w  # d log_softmax_1 / d phi
    g[:, 0] += phi[:, 0]
    np.testing.assert_allclose(maps.numpy(), _np_gradcam(a, g, SIZE), atol=1e-5)


def test_gradcam_upsamples_a_coarse_map_bilinearly() -> None:
    clf, (conv_w, conv_b, fc_w, _) = _conv_classifier(stride=4, seed=2)  # 16x16 -> 4x4 map
    x = _images(2, seed=2)
    maps = GradCAM(clf, layer="act").attribute(x, lambda phi, logits: logits[:, 0])
    a = _np_conv_relu(x.numpy().astype(np.float64), conv_w, conv_b)
    expected = _np_gradcam(a, np.repeat(fc_w[:1], 2, axis=0).astype(np.float64), SIZE)
    np.testing.assert_allclose(maps.numpy(), expected, atol=1e-5)


def test_gradcam_token_grid_strips_the_cls_token() -> None:
    rng = np.random.default_rng(3)
    patch, dim = 4, 6
    embed_w = rng.normal(0, 0.3, (dim, 3 * patch * patch)).astype(np.float32)
    fc_w = rng.normal(0, 1, (3, dim)).astype(np.float32)
    clf = Classifier.from_module(TokenNet(embed_w, fc_w, patch), _identity_pre(), spec="test:tokens")
    assert find_target_layer(clf) == "cls"  # [N, 1 + 4*4, dim]: the last token grid
    x = _images(2, seed=3)
    maps = GradCAM(clf).attribute(x, lambda phi, logits: logits[:, 2])
    xn = x.numpy().astype(np.float64)
    grid = SIZE // patch
    blocks = xn.reshape(2, 3, grid, patch, grid, patch).transpose(0, 2, 4, 1, 3, 5).reshape(2, grid, grid, -1)
    a = np.einsum("nhwk,ck->nchw", blocks, embed_w)  # patch tokens as a [C, h, w] map
    expected = _np_gradcam(a, np.repeat(fc_w[2:3], 2, axis=0).astype(np.float64), SIZE)
    np.testing.assert_allclose(maps.numpy(), expected, atol=1e-5)


def test_heatmap_lands_on_a_planted_feature() -> None:
    # channel 0 detects red 4x4 patches, channel 1 gray ones; class 0 = red - 0.2 * gray
    conv_w = np.zeros((2, 3, 4, 4), np.float32)
    conv_w[0, 0], conv_w[0, 1], conv_w[0, 2] = 1.0, -0.5, -0.5
    conv_w[1] = 1.0 / 3
    net = ConvGapNet(conv_w, np.array([-2.0, 0.0], np.float32), np.array([[1.0, -0.2], [0.0, 1.0]], np.float32),
                     np.zeros(2, np.float32))
    size = 48
    clf = Classifier.from_module(net, _identity_pre(size), spec="test:red")
    rng = np.random.default_rng(4)
    x = 0.4 + 0.2 * rng.random((5, 3, size, size))
    boxes = []
    for i in range(5):
        top, left = rng.integers(0, size - 10, size=2)
        x[i, :, top:top + 10, left:left + 10] = np.array([0.9, 0.1, 0.1])[:, None, None]
        boxes.append((top, left))
    maps = GradCAM(clf).attribute(torch.from_numpy(x).float(), lambda phi, logits: logits[:, 0]).numpy()
    for m, (top, left) in zip(maps, boxes):
        r, c = np.unravel_index(np.argmax(m), m.shape)
        assert top <= r < top + 10 and left <= c < left + 10
        near = m[max(top - 4, 0):top + 14, max(left - 4, 0):left + 14].sum()
        assert near / m.sum() >= 0.9


# ----------------------------------------------------------------------------
# Layer discovery on real architectures (random weights)
# ----------------------------------------------------------------------------


def test_resnet_target_layer_is_the_last_block() -> None:
    torch.manual_seed(0)
    clf = load_model("torchvision:resnet18", pretrained=False)
    assert find_target_layer(clf) == "layer4"


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_vit_token_grid(arch: str) -> None:
    import timm

    # the real timm classes (1 cls token / cls + distillation token), shrunk to 2 blocks at 64 px
    torch.manual_seed(0)
    net = timm.create_model(arch, pretrained=False, img_size=64, depth=2, num_classes=5)
    clf = Classifier.from_module(net, _identity_pre(64), spec=f"test:{arch}")
    layer = find_target_layer(clf)
    # the final token grid ("norm") reaches the head through the cls token only: zero patch gradient
    assert layer == "blocks.1.norm1"
    x = _images(2, seed=5, size=64)
    u = torch.randn(clf.num_features, generator=torch.Generator().manual_seed(0))
    maps = GradCAM(clf, layer).attribute(x, lambda phi, logits: phi @ u)
    assert maps.shape == (2, 64, 64)
    assert float(maps.min()) >= 0.0 and torch.allclose(maps.flatten(1).amax(1), torch.ones(2))
    dead = GradCAM(clf, "norm").attribute(x, lambda phi, logits: phi @ u)
    assert dead.shape == (2, 64, 64) and float(dead.abs().max()) == 0.0  # all-zero maps stay zero


def test_vit_full_size_target_layer() -> None:
    torch.manual_seed(0)
    clf = load_model("timm:vit_tiny_patch16_224", pretrained=False)
    assert find_target_layer(clf) == "blocks.11.norm1"
    maps = GradCAM(clf, "blocks.11.norm1").attribute(_images(1, seed=6, size=224), lambda phi, logits: logits[:, 0])
    assert maps.shape == (1, 224, 224) and float(maps.max()) == 1.0


def test_grid_shapes() -> None:
    assert _grid_of((2, 197, 192), 224, 224) == _grid_of((2, 197, 192), 224, 224)
    g = _grid_of((2, 198, 192), 224, 224)
    assert g is not None and (g.layout, g.extra, g.h, g.w, g.channels) == ("tokens", 2, 14, 14, 192)
    g = _grid_of((2, 7, 7, 768), 224, 224)  # channels-last (Swin)
    assert g is not None and (g.layout, g.h, g.w, g.channels) == ("nhwc", 7, 7, 768)
    g = _grid_of((2, 2048, 7, 5), 224, 160)
    assert g is not None and (g.layout, g.h, g.w) == ("nchw", 7, 5)
    assert _grid_of((2, 3, 197, 64), 224, 224) is None  # attention heads, not a map
    assert _grid_of((2, 2048, 1, 1), 224, 224) is None  # pooled
    assert _grid_of((2, 2048), 224, 224) is None


# ----------------------------------------------------------------------------
# State, hooks, batch independence
# ----------------------------------------------------------------------------


def test_state_restored_and_hooks_removed_also_after_an_error() -> None:
    clf, _ = _conv_classifier(seed=6)
    clf.model.act.train()  # a mixed state must come back as it was
    modes = {name: m.training for name, m in clf.named_modules()}
    x = _images(2, seed=6)
    x_before = x.clone()
    cam = GradCAM(clf)
    maps = cam.attribute(x, lambda phi, logits: logits[:, 0])
    assert _no_hooks(clf) and {n: m.training for n, m in clf.named_modules()} == modes
    assert torch.equal(x, x_before) and not x.requires_grad
    assert all(p.grad is None and p.requires_grad for p in clf.parameters())

    def broken(phi: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        cam.attribute(x, broken)
    assert _no_hooks(clf) and {n: m.training for n, m in clf.named_modules()} == modes
    with pytest.raises(ValueError, match="must return one float per image"):
        cam.attribute(x, lambda phi, logits: logits)
    assert _no_hooks(clf)
    # frozen parameters: same maps (the graph comes from the input), flags left as they were
    for p in clf.parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(cam.attribute(x, lambda phi, logits: logits[:, 0]), maps)
    assert all(not p.requires_grad for p in clf.parameters())
    with torch.no_grad():  # works inside a caller's no_grad block too
        torch.testing.assert_close(cam.attribute(x, lambda phi, logits: logits[:, 0]), maps)


def test_images_are_independent_of_the_batch() -> None:
    clf, _ = _conv_classifier(stride=2, seed=7)
    x = _images(3, seed=7)
    cam = GradCAM(clf)
    ks = torch.tensor([1, 0, 3])
    maps = cam.attribute(x, lambda phi, logits: logits.gather(1, ks[:, None])[:, 0])
    for i in range(3):
        one = cam.attribute(x[i:i + 1], lambda phi, logits, i=i: logits[:, int(ks[i])])
        torch.testing.assert_close(maps[i:i + 1], one, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


def test_bad_inputs() -> None:
    clf, _ = _conv_classifier()
    with pytest.raises(TypeError, match="must be a spurious.models.Classifier"):
        GradCAM(nn.Conv2d(3, 3, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="did you mean: act"):
        GradCAM(clf, layer="actt")
    cam_flat = GradCAM(clf, layer="flat")
    with pytest.raises(ValueError, match="not a spatial map"):
        cam_flat.attribute(_images(1), lambda phi, logits: logits[:, 0])
    cam = GradCAM(clf)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        cam.attribute(_images(1) * 2, lambda phi, logits: logits[:, 0])
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        cam.attribute(_images(1)[0], lambda phi, logits: logits[:, 0])
    with pytest.raises(TypeError, match="float torch.Tensor"):
        cam.attribute((_images(1) * 255).to(torch.uint8), lambda phi, logits: logits[:, 0])
    with pytest.raises(TypeError, match="target must be callable"):
        cam.attribute(_images(1), "logit")  # type: ignore[arg-type]
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="no layer of 'test:mlp' outputs a spatial map"):
        find_target_layer(Classifier.from_module(mlp, _identity_pre(), spec="test:mlp"))


# ----------------------------------------------------------------------------
# overlay
# ----------------------------------------------------------------------------


def test_overlay() -> None:
    image = _images(1, seed=8, size=12)[0, :, :, :10]  # H=12, W=10
    heat = torch.zeros(12, 10)
    heat[3, 4] = 1.0
    out = overlay(image, heat, alpha=0.5)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (10, 12)
    img255 = image.permute(1, 2, 0).numpy() * 255
    np.testing.assert_allclose(np.asarray(overlay(image, heat, alpha=0.0)), np.round(img255), atol=0.51)
    full = np.asarray(overlay(image, heat, alpha=1.0))
    assert tuple(full[3, 4]) == (128, 0, 0)  # jet(1) = (0.5, 0, 0)
    assert tuple(full[0, 0]) == (0, 0, 128)  # jet(0) = (0, 0, 0.5)
    half = np.asarray(out).astype(float)
    jet = np.asarray(matplotlib.colormaps["viridis"](1.0))[:3] * 255
    v = np.asarray(overlay(image, heat, alpha=0.5, colormap="viridis")).astype(float)
    np.testing.assert_allclose(v[3, 4], np.round(0.5 * img255[3, 4] + 0.5 * jet), atol=1.01)
    assert np.abs(half - full).max() > 0
    with pytest.raises(ValueError, match="heatmap must be a tensor"):
        overlay(image, heat[:5])
    with pytest.raises(ValueError, match=r"image must be a tensor \[3, H, W\]"):
        overlay(image[None], heat)
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
        overlay(image, heat, alpha=1.5)
    with pytest.raises(ValueError, match=r"heatmap values must lie in \[0, 1\]"):
        overlay(image, heat * 2)
    with pytest.raises(ValueError, match="unknown matplotlib colormap"):
        overlay(image, heat, colormap="no-such-map")
