"""The adapter ``f(x) = W phi(x) + b`` around any classifier module, and the discovery of its head.

:class:`Classifier` exposes

* ``phi(x)``: the penultimate features, i.e. the input of the last linear layer, ``[N, D]``;
* ``head()``: the last layer ``(W [K, D], b [K])`` so that ``f(x) = W phi(x) + b`` (DESIGN.md, "Math");
* ``preprocessing``: resize / center crop / mean / std / interpolation of the weights;
* ``class_names``: one readable name per logit.

The head is *discovered*, not looked up in a table of layer names: one forward pass on a dummy
batch with forward hooks on every ``nn.Linear`` and every 1x1 ``nn.Conv2d`` finds the module whose
output equals the model's logits (a 1x1 conv on a ``[N, D, 1, 1]`` input, as in timm ResNetV2/BiT,
counts as linear), or a pair of heads whose average equals the logits (distilled DeiT / LeViT in
eval mode). At run time a forward *pre*-hook captures the head input without detaching it, so
``phi`` is differentiable w.r.t. the input image; every hook is removed in a ``finally`` block.

Images enter as ``[N, 3, H, W]`` float tensors in ``[0, 1]``; the normalisation with the model's
mean/std happens inside :class:`Classifier`.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spurious._dist import resolve_device

from ._checkpoint import model_fingerprint, state_dict_digest
from ._preprocessing import Preprocessing

__all__ = ["Classifier", "infer_num_classes", "resolve_model_device"]

# Relative tolerance used to decide that a head reproduces the model's logits.
_HEAD_RTOL = 1e-4


# ----------------------------------------------------------------------------
# Head discovery
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _HeadPart:
    """One linear layer contributing ``coef * (W_i phi_i + b_i)`` to the logits."""

    name: str  # qualified module name inside the wrapped model ("" = the model itself)
    call: int  # which call of that module within one forward pass (0-based)
    coef: float
    is_conv: bool  # 1x1 Conv2d on a [N, D, 1, 1] input


@dataclass
class _Record:
    name: str
    call: int
    is_conv: bool
    inp: Tensor  # [N, D]
    out: Tensor  # [N, K]


def _is_head_candidate(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and tuple(module.kernel_size) == (1, 1)
        and module.groups == 1
    )


def _module_weight_bias(
    module: nn.Module, is_conv: bool
) -> tuple[Tensor, Tensor | None]:
    # a Linear or 1x1 Conv2d (see _is_head_candidate); nn.Module types attributes loosely
    weight = cast(Tensor, module.weight)
    if is_conv:
        weight = weight.flatten(1)  # [K, D, 1, 1] -> [K, D]
    return weight, cast("Tensor | None", module.bias)


def _close(a: Tensor, b: Tensor, scale: float) -> bool:
    return a.shape == b.shape and torch.allclose(
        a, b, rtol=_HEAD_RTOL, atol=_HEAD_RTOL * scale
    )


def _discover_head(model: nn.Module, dummy: Tensor) -> list[_HeadPart]:
    """Find the linear head(s) of ``model`` by one forward pass on ``dummy`` (eval mode)."""
    records: list[_Record] = []
    calls: dict[str, int] = {}
    handles = []

    def make_hook(name: str, is_conv: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[object, ...], out: object) -> None:
            call = calls.get(name, 0)
            calls[name] = call + 1
            if (
                not args
                or not isinstance(args[0], Tensor)
                or not isinstance(out, Tensor)
            ):
                return
            inp = args[0]
            if is_conv:
                if inp.dim() != 4 or inp.shape[2:] != (1, 1) or out.shape[2:] != (1, 1):
                    return
                inp, out = inp.flatten(1), out.flatten(1)
            elif inp.dim() != 2 or out.dim() != 2:
                return
            records.append(_Record(name, call, is_conv, inp.detach(), out.detach()))

        return hook

    try:
        for name, module in model.named_modules():
            if _is_head_candidate(module):
                is_conv = isinstance(module, nn.Conv2d)
                handles.append(module.register_forward_hook(make_hook(name, is_conv)))
        with torch.no_grad():
            logits = model(dummy)
    finally:
        for handle in handles:
            handle.remove()

    kind = type(model).__name__
    if (
        not isinstance(logits, Tensor)
        or logits.dim() != 2
        or logits.shape[0] != dummy.shape[0]
    ):
        got = (
            tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        )
        raise ValueError(
            f"{kind} must return a logits tensor [N, K] in eval mode; got {got} for an input "
            f"{tuple(dummy.shape)}. Wrap the model so that forward() returns the logits."
        )
    logits = logits.detach()
    scale = max(1.0, float(logits.abs().max()))
    candidates = [r for r in records if r.out.shape == logits.shape]

    singles = [r for r in candidates if _close(r.out, logits, scale)]
    if singles:
        if len(singles) > 1 and len({(r.name, r.call) for r in singles}) > 1:
            warnings.warn(
                f"{kind}: {len(singles)} layers reproduce the logits (constant or duplicated "
                f"outputs, e.g. a zero-initialised head); using the last one, "
                f"{singles[-1].name!r}",
                RuntimeWarning,
                stacklevel=3,
            )
        chosen = singles[-1]  # the last layer executed
        parts = [_HeadPart(chosen.name, chosen.call, 1.0, chosen.is_conv)]
        recs = [chosen]
    else:
        parts, recs = [], []
        # Two heads combined, as in distilled DeiT/LeViT: (head(cls) + head_dist(dist)) / 2.
        for first, second in itertools.combinations(reversed(candidates), 2):
            for coef in (0.5, 1.0):
                if _close(coef * (first.out + second.out), logits, scale):
                    first, second = sorted((first, second), key=records.index)
                    parts = [
                        _HeadPart(r.name, r.call, coef, r.is_conv)
                        for r in (first, second)
                    ]
                    recs = [first, second]
                    break
            if parts:
                break
    if not parts:
        raise ValueError(
            f"{kind} has no linear head: no nn.Linear or 1x1 nn.Conv2d produces the model's "
            f"logits [N, {logits.shape[1]}] (alone, or as the average of two heads as in distilled "
            f"DeiT). The adapter needs f(x) = W phi(x) + b with a linear last layer; wrap the "
            f"model so that its last operation is an nn.Linear."
        )

    # Verify f(x) = W phi(x) + b on the recorded inputs.
    phi = torch.cat([r.inp for r in recs], dim=1)
    weight, bias = _combine_head(model, parts)
    rebuilt = F.linear(phi.to(weight.dtype), weight, bias).detach()
    if not _close(rebuilt.to(logits.dtype), logits, scale):
        raise ValueError(
            f"{kind}: the discovered head {[p.name for p in parts]} does not reproduce the "
            f"model's logits (max abs error {float((rebuilt - logits).abs().max()):.3g})"
        )
    return parts


def _combine_head(
    model: nn.Module, parts: Sequence[_HeadPart]
) -> tuple[Tensor, Tensor]:
    """Live (non-detached) ``W [K, D]`` and ``b [K]`` of the combined head."""
    weights, biases = [], []
    for part in parts:
        weight, bias = _module_weight_bias(model.get_submodule(part.name), part.is_conv)
        if bias is None:
            bias = weight.new_zeros(weight.shape[0])
        weights.append(weight if part.coef == 1.0 else part.coef * weight)
        biases.append(bias if part.coef == 1.0 else part.coef * bias)
    if len(parts) == 1:
        return weights[0], biases[0]
    return torch.cat(weights, dim=1), torch.stack(biases).sum(0)


def infer_num_classes(
    model: nn.Module, state_dict: Mapping[str, Tensor], default_k: int
) -> int | None:
    """K of the head in ``state_dict`` when it differs from ``model``'s ``default_k`` (else ``None``)."""
    for name, module in model.named_modules():
        if not _is_head_candidate(module):
            continue
        out = (
            module.out_features
            if isinstance(module, nn.Linear)
            else module.out_channels
        )
        if out != default_k:
            continue
        weight = state_dict.get(f"{name}.weight" if name else "weight")
        if weight is not None and weight.dim() >= 2 and weight.shape[0] != default_k:
            return int(weight.shape[0])
    return None


# ----------------------------------------------------------------------------
# Classifier
# ----------------------------------------------------------------------------


def resolve_model_device(device: str | torch.device | None) -> torch.device | None:
    """``None`` keeps the model where it is; anything else as :func:`spurious._dist.resolve_device`."""
    return None if device is None else resolve_device(device)


class Classifier(nn.Module):
    """A classifier ``f(x) = W phi(x) + b`` with its preprocessing and class names.

    Build one with :func:`load_model` (from a spec string) or :meth:`from_module` (any
    ``nn.Module`` whose last operation is linear). The wrapped model is put in eval mode.

    Attributes:
        spec: canonical spec string the classifier was loaded from.
        model: the wrapped original model (eval mode).
        preprocessing: eval-time preprocessing of the weights (resize, crop, mean, std).
        class_names: ``K`` readable class names, index-aligned with the logits.
        num_classes: ``K``.
        num_features: ``D``, the dimension of ``phi``.
        input_size: ``(3, H, W)`` network input size.
    """

    spec: str
    model: nn.Module
    preprocessing: Preprocessing
    class_names: list[str]
    num_classes: int
    num_features: int
    input_size: tuple[int, int, int]

    def __init__(
        self,
        model: nn.Module,
        preprocessing: Preprocessing,
        class_names: Sequence[str] | None = None,
        spec: str = "module",
        *,
        device: str | torch.device | None = None,
    ) -> None:
        """Wrap ``model`` and discover its linear head (see :meth:`from_module`)."""
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module, got {type(model).__name__}"
            )
        if not isinstance(preprocessing, Preprocessing):
            raise TypeError(
                f"preprocessing must be a Preprocessing, got {type(preprocessing).__name__}"
            )
        self.spec = str(spec)
        self.model = model.eval()
        self.preprocessing = preprocessing
        self.preprocessing_source = "given"
        self.class_names_source = "given" if class_names is not None else "none"
        self.config_path: str | None = None
        # the seed of a random initialisation (load_model(..., pretrained=False, seed=...)); None otherwise
        self.random_weights_seed: int | None = None
        self._weights_digest: tuple[tuple[tuple[int, int], ...], str] | None = None
        self.register_buffer("_mean", None, persistent=False)
        self.register_buffer("_std", None, persistent=False)
        self._set_normalisation(preprocessing, torch.device("cpu"))
        target = resolve_model_device(device)
        if target is not None:
            self.to(target)
        self.input_size = (3, *preprocessing.input_size)

        generator = torch.Generator().manual_seed(0)
        dummy = torch.rand((1, *self.input_size), generator=generator).to(
            self._mean.device
        )
        dtype = next(
            (p.dtype for p in self.model.parameters() if p.is_floating_point()), None
        )
        self._head_parts: tuple[_HeadPart, ...] = tuple(
            _discover_head(
                self.model, self._normalize(dummy).to(dtype or torch.float32)
            )
        )
        weight, _ = _combine_head(self.model, self._head_parts)
        self.num_classes, self.num_features = int(weight.shape[0]), int(weight.shape[1])

        if class_names is None:
            names = [f"class_{k}" for k in range(self.num_classes)]
        else:
            names = [str(c) for c in class_names]
            if len(names) != self.num_classes:
                raise ValueError(
                    f"got {len(names)} class names for a model with {self.num_classes} logits; "
                    f"pass exactly one name per class (or none for 'class_<k>' names)"
                )
        self.class_names = names
        self.train(False)

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        preprocessing: Preprocessing,
        class_names: Sequence[str] | None = None,
        spec: str = "module",
        *,
        device: str | torch.device | None = None,
    ) -> Classifier:
        """Wrap an arbitrary classifier module.

        The head is discovered with one forward pass on a dummy image ``[1, 3, H, W]``: the
        ``nn.Linear`` (or 1x1 ``nn.Conv2d`` on a ``[N, D, 1, 1]`` input) whose output equals the
        logits, or two such layers whose average equals them (distilled DeiT).

        Args:
            module: a model mapping normalised images ``[N, 3, H, W]`` to logits ``[N, K]``.
            preprocessing: its preprocessing; ``input_size`` sets the dummy input size.
            class_names: ``K`` class names; default ``class_0 ... class_{K-1}``.
            spec: a name stored as :attr:`spec`.
            device: move the module there first (default: leave it where it is).

        Raises:
            ValueError: the module's output is not ``[N, K]``, or no linear layer produces it.
        """
        return cls(module, preprocessing, class_names, spec, device=device)

    # -- helpers --

    @property
    def device(self) -> torch.device:
        """Device of the wrapped model (where inputs are moved)."""
        return self._mean.device

    @property
    def has_class_names(self) -> bool:
        """Whether :attr:`class_names` are real names (not the ``class_<k>`` placeholders)."""
        return self.class_names_source != "none"

    def set_preprocessing(self, preprocessing: Preprocessing, source: str = "given") -> None:
        """Replace the preprocessing (and the normalisation applied inside :meth:`phi`).

        Args:
            preprocessing: the new preprocessing.
            source: where it was stated (shown by ``spurious model``), e.g. ``"config file X"``.
        """
        if not isinstance(preprocessing, Preprocessing):
            raise TypeError(f"preprocessing must be a Preprocessing, got {type(preprocessing).__name__}")
        self._set_normalisation(preprocessing, self.device)
        self.preprocessing = preprocessing
        self.preprocessing_source = str(source)
        self.input_size = (3, *preprocessing.input_size)

    def _set_normalisation(self, preprocessing: Preprocessing, device: torch.device) -> None:
        """The ``_mean`` / ``_std`` buffers (value range folded in) that :meth:`_normalize` applies."""
        mean, std = preprocessing.normalisation()
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def _normalize(self, x: Tensor) -> Tensor:
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def _check_input(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(
                f"x must be a torch.Tensor [N, 3, H, W], got {type(x).__name__}"
            )
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"x must be a batch of RGB images [N, 3, H, W] in [0, 1], got shape "
                f"{tuple(x.shape)} (add a batch dimension with x[None] for one image)"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"x must be a float tensor with values in [0, 1], got {x.dtype}"
            )
        return x.to(self.device)

    @contextlib.contextmanager
    def _capture_head_inputs(self) -> Iterator[dict[int, Tensor]]:
        """Pre-hooks storing (without detaching) each head part's input of one forward pass."""
        captured: dict[int, Tensor] = {}
        handles = []

        def make_hook(index: int, call: int) -> Callable[..., None]:
            seen = [0]

            def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
                if seen[0] == call:
                    captured[index] = args[0]
                seen[0] += 1

            return hook

        try:
            for index, part in enumerate(self._head_parts):
                module = self.model.get_submodule(part.name)
                handles.append(
                    module.register_forward_pre_hook(make_hook(index, part.call))
                )
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    # -- public API --

    def phi_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Penultimate features and logits from one forward pass.

        Args:
            x: images ``[N, 3, H, W]``, float in ``[0, 1]`` (normalised inside); moved to
                :attr:`device`.

        Returns:
            ``phi [N, D]`` (differentiable w.r.t. ``x``) and ``logits = W phi + b [N, K]``.
        """
        x = self._check_input(x)
        with self._capture_head_inputs() as captured:
            self.model(self._normalize(x))
        if len(captured) != len(self._head_parts):
            raise RuntimeError(
                f"the head layer(s) {[p.name for p in self._head_parts]} of {self.spec!r} were not "
                f"called in the forward pass; the model's control flow differs from the one seen "
                f"when the head was discovered"
            )
        feats = []
        for index, part in enumerate(self._head_parts):
            inp = captured[index]
            feats.append(inp.flatten(1) if part.is_conv else inp)
        phi = feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)
        weight, bias = _combine_head(self.model, self._head_parts)
        return phi, F.linear(phi, weight.to(phi.dtype), bias.to(phi.dtype))

    def phi(self, x: Tensor) -> Tensor:
        """Penultimate features ``phi(x)``, the input of the last linear layer.

        Args:
            x: images ``[N, 3, H, W]``, float in ``[0, 1]``.

        Returns:
            ``[N, D]``; differentiable w.r.t. ``x`` (no detach), e.g. for feature visualization.
        """
        return self.phi_and_logits(x)[0]

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``f(x) = W phi(x) + b``.

        Args:
            x: images ``[N, 3, H, W]``, float in ``[0, 1]``.

        Returns:
            logits ``[N, K]``.
        """
        return self.phi_and_logits(x)[1]

    def native_logits(self, x: Tensor) -> Tensor:
        """The wrapped model's own output on the normalised ``x`` (for checks): ``[N, K]``."""
        x = self._check_input(x)
        return self.model(self._normalize(x))

    def head(self) -> tuple[Tensor, Tensor]:
        """The last linear layer as ``(W [K, D], b [K])``: float32, detached, on :attr:`device`.

        For a 1x1 conv head ``W = weight[:, :, 0, 0]``; for a distilled two-head model
        ``W = 0.5 [W1, W2]`` and ``b = 0.5 (b1 + b2)`` (matching ``phi = [phi1, phi2]``).
        """
        weight, bias = _combine_head(self.model, self._head_parts)
        return (
            weight.detach().to(torch.float32).clone(),
            bias.detach().to(torch.float32).clone(),
        )

    def _state_key(self) -> tuple[tuple[int, int], ...]:
        """Cheap identity of the current weights: storage and in-place version counter of each tensor."""
        return tuple((t.data_ptr(), t._version) for t in self.model.state_dict().values() if isinstance(t, Tensor))

    def _set_weights_digest(self, digest: str) -> None:
        self._weights_digest = (self._state_key(), digest)

    def weights_digest(self) -> str:
        """sha256 (hex) of every weight and buffer of the wrapped model, streamed tensor by tensor.

        Cached until a weight changes (in place or replaced); ``load_model`` fills the cache from
        the per-file digest of a checkpoint, so a large checkpoint is hashed once per file.
        """
        key = self._state_key()
        if self._weights_digest is None or self._weights_digest[0] != key:
            self._weights_digest = (key, state_dict_digest(self.model.state_dict()))
        return self._weights_digest[1]

    def fingerprint(self) -> str:
        """16 hex chars identifying everything that changes results: weights, preprocessing, labels.

        sha256 over :meth:`weights_digest` (all weights, not only the head), the preprocessing
        (:meth:`Preprocessing.to_dict`), the class names and ``K``, ``D``. Stages store it in every
        artifact and refuse to mix artifacts of different fingerprints, so one checkpoint loaded
        with two preprocessings, or with two label spaces, is two models.
        """
        return model_fingerprint(
            self.weights_digest(), self.preprocessing, self.class_names, self.num_features
        )

    def describe(self) -> dict[str, Any]:
        """What ``spurious model SPEC`` prints: preprocessing, head, feature dimension, label space."""
        parts = [
            {"layer": p.name or "(model)", "kind": "1x1 conv" if p.is_conv else "linear", "coef": p.coef}
            for p in self._head_parts
        ]
        return {
            "spec": self.spec,
            "fingerprint": self.fingerprint(),
            "num_features": self.num_features,
            "num_classes": self.num_classes,
            "head": parts,
            "preprocessing": self.preprocessing.to_dict(),
            "preprocessing_text": self.preprocessing.describe(),
            "preprocessing_source": self.preprocessing_source,
            "config_file": self.config_path,
            "class_names_source": self.class_names_source,
            "class_names": list(self.class_names),
        }

    def summary_lines(self) -> list[str]:
        """:meth:`describe` as the lines ``spurious model SPEC`` prints."""
        d = self.describe()
        names = d["class_names"]
        shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
        head = " + ".join(f"{h['coef']:g} x {h['kind']} '{h['layer']}'" if h["coef"] != 1 else f"{h['kind']} "
                          f"'{h['layer']}'" for h in d["head"])
        return [
            f"model          {d['spec']}",
            f"fingerprint    {d['fingerprint']}",
            f"preprocessing  {d['preprocessing_text']}",
            f"  stated by    {d['preprocessing_source']}",
            f"config file    {d['config_file'] or 'none'}",
            f"features       D = {d['num_features']} (input of the head)",
            f"head           {head}: W [{d['num_classes']}, {d['num_features']}], b [{d['num_classes']}]",
            f"label space    K = {d['num_classes']}, names: "
            + ("none (class_<k> placeholders: folders are read in sorted order)" if d["class_names_source"] == "none"
               else f"{d['class_names_source']}: {shown}"),
        ]

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, num_classes={self.num_classes}, num_features={self.num_features}"


