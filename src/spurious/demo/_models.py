"""The demo classifiers as models: train-or-reuse, the checkpoint cache, the shipped weights, loading.

:func:`train_demo_model` returns a :class:`DemoModelInfo` for a recipe: the weights that ship in
the package (:data:`SHIPPED_DIR`) when they exist for it, else the cached checkpoint, else it
trains one (:func:`~spurious.demo._training.train_net`), evaluates it
(:func:`~spurious.demo._evidence.evaluate_demo_model`) and caches it. :func:`load_demo_model`
is what ``load_model("demo:<name>")`` calls (through the ``demo:`` plugin,
:mod:`spurious.demo._source`).

Checkpoints are cached under :func:`demo_cache_dir` (``$SPURIOUS_CACHE``, else
``$XDG_CACHE_HOME/spurious`` or ``~/.cache/spurious``)::

    planted/<planted config hash>/              the generated dataset
    models/demo-<variant>-<train key>.pt        one checkpoint per training config

The train key hashes the whole :class:`DemoTrainConfig` (including the planted config hash) and
a version of this training code, so a changed recipe never reuses a stale checkpoint.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch

from spurious._io import atomic_path, read_json, sha256_file
from spurious._io import cache_dir as _default_cache_dir
from spurious.demo._evidence import DemoEvidence, evaluate_demo_model, evidence_lines
from spurious.demo._network import DemoNet
from spurious.demo._training import (
    TRAIN_CODE_VERSION,
    VARIANTS,
    DemoTrainConfig,
    TrainStats,
    train_net,
)
from spurious.demo.planted import CLASS_SHAPES, PlantedConfig, generate_planted
from spurious.models import Classifier, Preprocessing

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEMO_MODEL_NAMES",
    "SHIPPED_DIR",
    "DemoCheckpointMetadata",
    "DemoModelInfo",
    "demo_cache_dir",
    "demo_model_names",
    "load_demo_checkpoint",
    "load_demo_model",
    "shipped_checkpoint",
    "train_demo_model",
]

logger = logging.getLogger(__name__)

DEMO_MODEL_NAMES: tuple[str, ...] = ("standard", "robust", "standard-tiny", "robust-tiny")
"""The ``NAME`` of every ``demo:NAME`` model spec."""

CHECKPOINT_FORMAT = "spurious-demo-model"
_CHECKPOINT_VERSION = 1


class DemoCheckpointMetadata(TypedDict):
    """The ``metadata`` of a demo checkpoint (also :attr:`DemoModelInfo.metadata`)."""

    name: str
    train_config: dict[str, object]  # DemoTrainConfig.to_dict()
    train_key: str  # DemoTrainConfig.cache_key()
    planted_config_hash: str
    planted_content_hash: str
    seconds: float  # training time
    evidence: DemoEvidence
    train_stats: TrainStats
    torch_version: str
    num_threads: int
    train_code_version: int


def demo_model_names() -> list[str]:
    """The valid ``NAME`` of ``demo:NAME`` specs: standard, robust, standard-tiny, robust-tiny."""
    return list(DEMO_MODEL_NAMES)


def _parse_name(name: str) -> tuple[str, bool]:
    if name not in DEMO_MODEL_NAMES:
        valid = ", ".join(f"demo:{n}" for n in DEMO_MODEL_NAMES)
        raise ValueError(f"unknown demo model {name!r}; valid demo models: {valid}")
    variant, _, suffix = name.partition("-")
    return variant, suffix == "tiny"



# ----------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------


def demo_cache_dir() -> Path:
    """Where planted data and demo checkpoints are cached.

    ``$SPURIOUS_CACHE`` if set, else ``$XDG_CACHE_HOME/spurious``, else ``~/.cache/spurious``.
    The folder is not created here.
    """
    return _default_cache_dir()


def _resolve_cache(cache_dir: str | os.PathLike[str] | None) -> Path:
    return (Path(cache_dir).expanduser() if cache_dir is not None else demo_cache_dir()).resolve()


def _planted_dir(cache: Path, planted: PlantedConfig) -> Path:
    return cache / "planted" / planted.config_hash()


def _checkpoint_path(cache: Path, config: DemoTrainConfig) -> Path:
    return cache / "models" / f"demo-{config.variant}-{config.cache_key()}.pt"


# ----------------------------------------------------------------------------
# Shipped weights
# ----------------------------------------------------------------------------

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
"""The demo classifiers' weights that ship in the package (``manifest.json`` lists them with their sha256).

CPU training is not bitwise reproducible across machines (thread scheduling changes the float sums),
so ``demo:standard`` / ``demo:robust`` load these files, trained once by :func:`train_demo_model` with
the recipe in their metadata, and every documented demo figure comes from them. ``spurious demo
--retrain`` / ``spurious train demo`` train new ones into the cache instead.
"""


def shipped_checkpoint(config: DemoTrainConfig, shipped_dir: Path | None = None) -> Path | None:
    """The shipped checkpoint of ``config`` (a default config's recipe), or ``None`` when none ships.

    Raises:
        ValueError: the file is listed but its sha256 differs from the manifest (a damaged install).
    """
    root = SHIPPED_DIR if shipped_dir is None else Path(shipped_dir)
    name = f"demo-{config.variant}-{config.cache_key()}.pt"
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        return None
    entry = read_json(manifest_path).get("files", {}).get(name)
    path = root / name
    if entry is None or not path.is_file():
        return None
    digest = _sha256_file(path)
    if digest != entry["sha256"]:
        raise ValueError(
            f"the shipped demo weights {path} are damaged (sha256 {digest[:16]}..., expected "
            f"{entry['sha256'][:16]}...): reinstall spurious, or train new ones with `spurious demo --retrain`"
        )
    return path


@functools.lru_cache(maxsize=8)
def _sha256_file_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _sha256_file(path: Path) -> str:
    stat = path.stat()
    return _sha256_file_cached(str(path), stat.st_size, stat.st_mtime_ns)


# ----------------------------------------------------------------------------
# Train or reuse
# ----------------------------------------------------------------------------


@dataclass
class DemoModelInfo:
    """A trained (or cached) demo model, returned by :func:`train_demo_model`.

    Attributes:
        name: ``demo:`` name (``"robust"``, ``"standard-tiny"``) for default configs, else
            ``"<variant>-<cache key>"``.
        variant: ``"standard"`` or ``"robust"``.
        path: the checkpoint file.
        config: the training config.
        planted_root: the planted dataset it was trained on.
        trained: ``True`` if this call trained it, ``False`` if the cached checkpoint was reused.
        seconds: training time in seconds (of the run that made the checkpoint).
        evidence: :func:`evaluate_demo_model` of the trained model.
        metadata: the checkpoint's full ``metadata`` dict.
    """

    name: str
    variant: str
    path: Path
    config: DemoTrainConfig
    planted_root: Path
    trained: bool
    seconds: float
    evidence: DemoEvidence
    metadata: DemoCheckpointMetadata
    shipped: bool = False

    @property
    def spec(self) -> str:
        """Model spec loading exactly this checkpoint: ``demo:<variant>[-tiny]@<path>``.

        The shipped weights are what ``demo:<variant>`` loads, so their spec is just that.
        """
        tiny = self.config.planted == PlantedConfig.tiny(self.config.planted.seed)
        base = f"demo:{self.variant}{'-tiny' if tiny else ''}"
        return base if self.shipped else f"{base}@{self.path}"

    def to_dict(self) -> dict[str, object]:
        """JSON-able summary (``--json`` of ``spurious train demo``)."""
        return {
            "name": self.name,
            "variant": self.variant,
            "path": str(self.path),
            "spec": self.spec,
            "trained": self.trained,
            "shipped": self.shipped,
            "seconds": self.seconds,
            "config": self.config.to_dict(),
            "planted_root": str(self.planted_root),
            "evidence": self.evidence,
        }

    def summary_lines(self) -> list[str]:
        """Human-readable summary with the evidence table."""
        how = f"trained in {self.seconds:.1f} s" if self.trained else \
            f"{'shipped' if self.shipped else 'cached'} (trained in {self.seconds:.1f} s)"
        return [f"demo:{self.name} ({how}) -> {self.path}", *evidence_lines(self.evidence)]


def _default_name(config: DemoTrainConfig) -> str:
    for tiny in (False, True):
        if config == DemoTrainConfig.for_variant(config.variant, tiny=tiny):
            return f"{config.variant}{'-tiny' if tiny else ''}"
    return f"{config.variant}-{config.cache_key()}"


def _atomic_save(obj: object, path: Path) -> None:
    with atomic_path(path) as tmp:  # honours the umask (not mkstemp's 0600)
        torch.save(obj, tmp)


def _read_demo_checkpoint(path: Path) -> dict[str, Any]:
    """Read and check a ``spurious-demo-model`` checkpoint (ValueError when it is not one)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError,
            ImportError) as e:
        raise ValueError(f"cannot read demo checkpoint '{path}': {e}") from e
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"'{path}' is not a {CHECKPOINT_FORMAT!r} checkpoint (write one with "
            f"spurious.demo.train.train_demo_model)"
        )
    missing = [k for k in ("state_dict", "arch", "class_names", "preprocessing", "metadata") if k not in obj]
    if missing:
        raise ValueError(f"demo checkpoint '{path}' lacks the keys {missing}; retrain it with force=True")
    return obj


def train_demo_model(
    variant: str,
    *,
    tiny: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = True,
    config: DemoTrainConfig | None = None,
    use_shipped: bool = True,
) -> DemoModelInfo:
    """Train a demo classifier on the planted dataset, or reuse its shipped or cached checkpoint.

    With ``use_shipped`` (default) and no ``force``, the weights that ship in the package for this
    recipe (:data:`SHIPPED_DIR`; the default standard and robust configs) are used as they are:
    the demo's figures are reproducible on any machine. Otherwise the cached checkpoint, else training.

    Generates the planted dataset under ``<cache>/planted/<config hash>`` if needed, trains on
    the CPU (deterministic for a given config, see the module doc), evaluates it with
    :func:`evaluate_demo_model`, logs the evidence, and writes the checkpoint atomically to
    ``<cache>/models/demo-<variant>-<train key>.pt``. The checkpoint is a ``torch.save`` dict
    readable with ``torch.load(weights_only=True)``: ``format``, ``version``, ``state_dict``,
    ``arch`` (:meth:`DemoNet.arch`), ``class_names``, ``preprocessing``
    (:meth:`Preprocessing.to_dict`) and ``metadata`` (train config, planted config hash,
    training seconds, evidence, torch version, threads).

    Args:
        variant: ``"standard"`` or ``"robust"``.
        tiny: the tiny planted data and a few epochs (seconds; for tests).
        cache_dir: cache folder; default :func:`demo_cache_dir`.
        force: retrain even if a checkpoint of this config is cached (never uses the shipped one).
        use_shipped: use the shipped weights when they exist for this recipe.
        progress: show a progress bar on stderr.
        config: a full training config instead of :meth:`DemoTrainConfig.for_variant`
            (``variant`` must match ``config.variant`` and ``tiny`` must be false).

    Returns:
        the checkpoint path, config, evidence and whether this call trained it.

    Raises:
        ValueError: unknown ``variant``, or a ``config`` that contradicts ``variant``/``tiny``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    if config is None:
        config = DemoTrainConfig.for_variant(variant, tiny=tiny)
    elif not isinstance(config, DemoTrainConfig):
        raise TypeError(f"config must be a DemoTrainConfig, got {type(config).__name__}")
    elif config.variant != variant or tiny:
        raise ValueError(
            f"config.variant={config.variant!r} with variant={variant!r}, tiny={tiny}: pass a "
            f"config whose variant matches, and set its planted config instead of tiny"
        )
    cache = _resolve_cache(cache_dir)
    path = _checkpoint_path(cache, config)
    name = _default_name(config)
    planted_root = _planted_dir(cache, config.planted)
    shipped = shipped_checkpoint(config) if use_shipped and not force else None
    if shipped is not None:
        meta: DemoCheckpointMetadata = _read_demo_checkpoint(shipped)["metadata"]
        logger.info("demo:%s: using the shipped weights %s", name, shipped)
        return DemoModelInfo(name, variant, shipped, config, planted_root, False,
                             float(meta.get("seconds", float("nan"))), meta["evidence"].copy(), meta.copy(),
                             shipped=True)
    if path.is_file() and not force:
        try:
            ckpt = _read_demo_checkpoint(path)
        except ValueError as e:
            logger.warning("%s; training again", e)
        else:
            meta = ckpt["metadata"]
            logger.info("demo:%s: using the cached checkpoint %s", name, path)
            return DemoModelInfo(name, variant, path, config, planted_root, False,
                                 float(meta.get("seconds", float("nan"))), meta["evidence"].copy(), meta.copy())

    planted = generate_planted(planted_root, config.planted)
    logger.info("demo:%s: training on %s (%d train images, %d threads); checkpoint -> %s",
                name, planted.root, planted.counts.get("train", 0), torch.get_num_threads(), path)
    start = time.perf_counter()
    net, stats = train_net(config, planted, progress=progress)
    seconds = time.perf_counter() - start
    preprocessing = config.preprocessing()
    classifier = Classifier.from_module(net, preprocessing, planted.class_names, f"demo:{name}")
    evidence = evaluate_demo_model(classifier, planted)
    metadata: DemoCheckpointMetadata = {
        "name": name,
        "train_config": config.to_dict(),
        "train_key": config.cache_key(),
        "planted_config_hash": config.planted.config_hash(),
        "planted_content_hash": planted.content_hash,
        "seconds": seconds,
        "evidence": evidence,
        "train_stats": stats,
        "torch_version": str(torch.__version__),
        "num_threads": torch.get_num_threads(),
        "train_code_version": TRAIN_CODE_VERSION,
    }
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "version": _CHECKPOINT_VERSION,
        "state_dict": {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()},
        "arch": net.arch(),
        "class_names": list(planted.class_names),
        "preprocessing": preprocessing.to_dict(),
        "metadata": metadata,
    }
    _atomic_save(checkpoint, path)
    logger.info("demo:%s trained in %.1f s -> %s", name, seconds, path)
    for line in evidence_lines(evidence):
        logger.info("demo:%s %s", name, line)
    return DemoModelInfo(name, variant, path, config, planted.root, True, seconds, evidence, metadata)


# ----------------------------------------------------------------------------
# Loading (the ``demo:`` model source)
# ----------------------------------------------------------------------------


def load_demo_checkpoint(
    path: str | os.PathLike[str],
    *,
    spec: str | None = None,
    device: str | torch.device | None = None,
) -> Classifier:
    """Wrap a checkpoint written by :func:`train_demo_model` in a :class:`Classifier`.

    Args:
        path: the ``.pt`` file.
        spec: stored as :attr:`Classifier.spec` (default ``"demo:<variant>@<path>"``, a spec that
            :func:`spurious.models.load_model` resolves to this checkpoint again).
        device: where to put the model (default CPU).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a demo checkpoint, or its weights do not fit its ``arch``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"demo checkpoint not found: '{path}'")
    ckpt = _read_demo_checkpoint(path)
    net = DemoNet.from_arch(ckpt["arch"])
    try:
        net.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"demo checkpoint '{path}' does not fit its arch {ckpt['arch']}: {e}") from e
    preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
    return Classifier.from_module(net.eval(), preprocessing, ckpt["class_names"],
                                  spec or _checkpoint_spec(ckpt, path), device=device)


def _checkpoint_spec(ckpt: Mapping[str, Any], path: Path) -> str:
    """``demo:<variant>@<path>``: ``load_model`` loads the file with the architecture it stores."""
    variant = ckpt.get("metadata", {}).get("train_config", {}).get("variant")
    return f"demo:{variant if variant in VARIANTS else 'standard'}@{path.resolve()}"


def load_demo_model(
    name: str,
    *,
    pretrained: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Classifier:
    """The ``demo:<name>`` classifier (what ``load_model("demo:<name>")`` returns).

    Loads the cached checkpoint of the default config of ``name``, training it first (logged
    at INFO level, with the cache path) when missing.

    Args:
        name: one of :data:`DEMO_MODEL_NAMES` (``standard``, ``robust``, ``standard-tiny``,
            ``robust-tiny``).
        pretrained: ``False`` gives a randomly initialised :class:`DemoNet` of the same
            architecture (no data, no training).
        checkpoint: load this demo checkpoint instead of the cached one.
        device: where to put the model (default CPU).
        cache_dir: default :func:`demo_cache_dir`.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones).
    """
    variant, tiny = _parse_name(name)
    spec = f"demo:{name}"
    if checkpoint is not None:
        return load_demo_checkpoint(checkpoint, spec=f"{spec}@{Path(checkpoint)}", device=device)
    config = DemoTrainConfig.for_variant(variant, tiny=tiny)
    if not pretrained:
        net = DemoNet(config.planted.num_classes, config.widths, config.blocks, stem_pool=config.stem_pool,
                      antialias=config.antialias)
        return Classifier.from_module(net.eval(), config.preprocessing(),
                                      list(CLASS_SHAPES[: config.planted.num_classes]), spec, device=device)
    cache = _resolve_cache(cache_dir)
    path = _checkpoint_path(cache, config)
    if not path.is_file() and shipped_checkpoint(config) is None:
        logger.info("%s is not cached yet: training it now on the CPU (tiny: seconds, default: a few "
                    "minutes); it will be cached at %s", spec, path)
    info = train_demo_model(variant, tiny=tiny, cache_dir=cache, progress=True)
    return load_demo_checkpoint(info.path, spec=spec, device=device)
