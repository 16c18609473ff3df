"""Weights: reading checkpoint files, and the digests and fingerprints that identify a model.

A checkpoint may be a plain state dict, a dict holding one under ``state_dict`` or ``model``,
with or without DataParallel's ``module.`` prefixes, a ``.safetensors`` file, or a Madry
``robustness`` checkpoint (whose normaliser mean/std are kept). Only tensors and plain containers
are unpickled (``torch.load(weights_only=True)``).

:func:`state_dict_digest` hashes every weight and buffer; :func:`model_fingerprint` combines it
with the preprocessing and the label space into the 16 hex chars every artifact records. The
digest of a checkpoint file is cached per file (path, size, mtime), so a large checkpoint is
hashed once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from spurious._io import FINGERPRINT_SCHEME, cache_dir, read_json, write_json

from ._preprocessing import Preprocessing, float_triple

__all__ = [
    "Checkpoint",
    "cached_checkpoint_digest",
    "load_state_dict",
    "map_by_order",
    "model_fingerprint",
    "read_checkpoint",
    "state_dict_digest",
]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------


def state_dict_digest(state: Mapping[str, Tensor]) -> str:
    """sha256 (hex) of a state dict: every tensor's name, shape and bytes, in key order.

    Floating-point tensors are hashed as float32, so a model cast with ``.double()`` (exact for
    float32 weights) keeps its digest; integer tensors are hashed as they are.
    """
    h = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key]
        if not isinstance(tensor, Tensor):
            continue
        t = tensor.detach().cpu()
        t = (t.float() if t.is_floating_point() else t).contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(weights_digest: str, preprocessing: Preprocessing, class_names: Sequence[str],
                      num_features: int) -> str:
    """16 hex chars over the weights digest, the preprocessing, the label space and ``D``."""
    h = hashlib.sha256()
    h.update(f"spurious-model-v{FINGERPRINT_SCHEME}\0{weights_digest}\0".encode())
    h.update(json.dumps(preprocessing.to_dict(), sort_keys=True).encode())
    h.update(f"\0{len(class_names)}\0{int(num_features)}\0".encode())
    for name in class_names:
        h.update(str(name).encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


_DIGEST_CACHE_FILE = "checkpoint-digests.json"


def cached_checkpoint_digest(path: Path, arch: str, num_classes: int, compute: Callable[[], str]) -> str:
    """The weights digest of the model loaded from ``path``: from the per-file cache, or ``compute()`` once.

    The digest is the content digest (:func:`state_dict_digest`), so a checkpoint loaded by path and
    the same weights loaded by name get the same fingerprint; the cache only saves re-hashing a
    large checkpoint. Key: the file's path, size and mtime, the architecture ``arch`` (the spec
    without ``@PATH``) and ``K``.
    """
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{arch}|{num_classes}"
    cache_file = cache_dir() / _DIGEST_CACHE_FILE
    cache: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = read_json(cache_file)
        cache = loaded if isinstance(loaded, dict) else {}
    if key in cache:
        return str(cache[key])
    digest = compute()
    cache = {k: v for k, v in cache.items() if not k.startswith(f"{path}|")}
    cache[key] = digest
    with contextlib.suppress(OSError):  # a read-only cache only costs the re-hash next time
        write_json(cache_file, cache)
    return digest


# ----------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """The weights of a checkpoint file, and the normaliser of a Madry checkpoint (else ``None``)."""

    path: Path
    state_dict: dict[str, Tensor]
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None



def _strip_prefix(key: str, prefix: str) -> str:
    while key.startswith(prefix):
        key = key[len(prefix) :]
    return key


def _unreadable_checkpoint(path: Path, error: Exception) -> ValueError:
    """One-line error for a file that ``torch.load(weights_only=True)`` / safetensors cannot read."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # torch's weights_only message spans six lines; the one that says what was refused is enough
    detail = next((line for line in lines if "nsupported" in line), lines[0] if lines else "")
    detail = detail.split(". Please use")[0][:200]
    return ValueError(
        f"'{path}' is not a readable checkpoint ({type(error).__name__}: {detail}): expected a state dict "
        f"saved with torch.save(model.state_dict(), ...) or a .safetensors file (only tensors and plain "
        f"containers are read, for safety); if you trust a checkpoint that holds more, re-save its weights: "
        f"sd = torch.load(p, weights_only=False); torch.save(sd.get('model') or sd.get('state_dict') or sd, "
        f"'clean.pt')"
    )


def read_checkpoint(path: Path) -> Checkpoint:
    """Read a plain / wrapped / DataParallel / Madry ``robustness`` checkpoint."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # unreadable file (permissions, ...): its own message names the file
    except Exception as e:  # noqa: BLE001 (any bytes: the unpickler raises KeyError, UnpicklingError, ...)
        raise _unreadable_checkpoint(path, e) from e
    state = obj
    while isinstance(state, Mapping) and not all(
        isinstance(v, Tensor) for v in state.values()
    ):
        if isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
        elif isinstance(state.get("model"), Mapping):
            state = state["model"]
        else:
            break
    if not isinstance(state, Mapping):
        raise ValueError(  # noqa: TRY004 (bad file content, not a bad argument type)
            f"checkpoint '{path}' holds a {type(state).__name__}, not a state dict"
        )
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(
            f"checkpoint '{path}' holds no tensors (keys: {sorted(map(str, state))[:10]}); "
            f"expected a state dict, or a dict with one under 'state_dict' or 'model'"
        )
    tensors = {_strip_prefix(k, "module."): v for k, v in tensors.items()}

    # Madry robustness library: model.* (classifier), attacker.model.* (duplicate),
    # normalizer.new_mean / new_std (shape [3, 1, 1]).
    is_madry = any(k.startswith("model.") for k in tensors) and any(
        k.startswith(("attacker.", "normalizer.")) for k in tensors
    )
    if not is_madry:
        return Checkpoint(path, tensors)
    mean = tensors.get("normalizer.new_mean")
    std = tensors.get("normalizer.new_std")
    classifier = {
        k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")
    }
    logger.info("checkpoint '%s' is in the Madry robustness format", path)
    return Checkpoint(
        path,
        classifier,
        mean=float_triple(mean.flatten().tolist(), "normalizer.new_mean")
        if mean is not None
        else None,
        std=float_triple(std.flatten().tolist(), "normalizer.new_std")
        if std is not None
        else None,
    )


def load_state_dict(model: nn.Module, checkpoint: Checkpoint, arch: str) -> None:
    """Load ``checkpoint`` into ``model``; a missing or unexpected key is a ``ValueError`` naming ``arch``."""
    path = checkpoint.path
    try:
        result = model.load_state_dict(checkpoint.state_dict, strict=False)
    except RuntimeError as e:
        raise ValueError(f"checkpoint '{path}' does not fit {arch!r}: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint '{path}' does not fit {arch!r}: {len(result.missing_keys)} missing keys "
            f"{result.missing_keys[:5]}, {len(result.unexpected_keys)} unexpected keys "
            f"{result.unexpected_keys[:5]}; check that the architecture matches the checkpoint"
        )


def map_by_order(
    source: Mapping[str, Tensor], target: Mapping[str, Tensor], what: str
) -> dict[str, Tensor]:
    """Rename ``source`` onto ``target``'s keys by position, checking shapes and key kinds."""
    if len(source) != len(target):
        raise ValueError(
            f"{what}: {len(source)} tensors in the weights but {len(target)} in the model"
        )
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=False):
        src_kind, dst_kind = src_key.rsplit(".", 1)[-1], dst_key.rsplit(".", 1)[-1]
        if src.shape != dst.shape or src_kind != dst_kind:
            raise ValueError(
                f"{what}: cannot map {src_key!r} {tuple(src.shape)} onto {dst_key!r} "
                f"{tuple(dst.shape)}"
            )
        mapped[dst_key] = src
    return mapped


