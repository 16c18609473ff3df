"""The model registry: every spec goes through one lookup, built-in or registered.

``load_model(spec)`` parses the spec (``ARCH``, ``ARCH@PATH``, a bare ``NAME@PATH``, or ``@PATH``
with the architecture in the config file), finds the :class:`~._source.ModelSource` that serves
it, lets the source build the model, and finishes every model the same way: the preprocessing in
force and where it was stated (options > config file > checkpoint normaliser > the source's
defaults), the class names, the config file, and the cached digest of a checkpoint file.

Sources, in :func:`list_models` order: ``efficientnet_lite0`` (:mod:`._lite0`), ``torchvision:``
(:mod:`._torchvision`), ``timm:`` (:mod:`._timm`), then those added with
:func:`register_model_source` (directly, or by a plugin of the entry-point group
:data:`PLUGIN_GROUP`, such as ``demo:``).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from . import _lite0, _timm, _torchvision
from ._checkpoint import Checkpoint, cached_checkpoint_digest
from ._classifier import Classifier, resolve_model_device
from ._preprocessing import (
    ModelConfig,
    Preprocessing,
    apply_preprocessing_options,
    find_model_config,
    normalise_preprocessing_options,
    read_model_config,
)
from ._source import LoadRequest, ModelSource, Network

__all__ = ["PLUGIN_GROUP", "ModelFactory", "list_models", "load_model", "register_model_source"]

logger = logging.getLogger(__name__)

_BUILTIN: tuple[ModelSource, ...] = (_lite0.SOURCE, _torchvision.SOURCE, _timm.SOURCE)
"""The sources that ship with the core, in :func:`list_models` order."""

_BARE_ARCHITECTURES: tuple[ModelSource, ...] = (_torchvision.SOURCE, _timm.SOURCE)
"""Where an architecture without prefix before a checkpoint (``resnet18@PATH``) is looked up, in order."""

_CONFIG_ARCH_PREFIX = _timm.SOURCE.prefix
"""A config file's ``"architecture"`` without prefix is timm's (the key of timm's ``config.json``)."""

PLUGIN_GROUP = "spurious.model_sources"
"""Entry-point group of model-source plugins: each entry is a function that calls
:func:`register_model_source`. The demo models (``demo:``) come this way, from ``spurious.demo``,
so no core module imports the demo; a package of your own can add a zoo the same way."""

_PLUGIN_PREFIXES = ("demo",)  # reserved for the plugins that ship with spurious
_plugins_loaded = False


# ----------------------------------------------------------------------------
# Registered sources
# ----------------------------------------------------------------------------


class ModelFactory(Protocol):
    """The factory of a registered source: ``factory(NAME, pretrained=..., checkpoint=..., device=...)``."""

    def __call__(
        self, name: str, *, pretrained: bool, checkpoint: Path | None, device: str | torch.device | None
    ) -> Classifier: ...


class _FactorySource:
    """A source added with :func:`register_model_source`: a factory and a list of names."""

    def __init__(self, prefix: str, factory: ModelFactory, names: Callable[[], list[str]]) -> None:
        self.prefix = prefix
        self._factory = factory
        self._names = names

    def names(self) -> list[str]:
        return self._names()

    def has(self, name: str) -> bool:
        return name in self._names()

    def unknown_reason(self, name: str) -> str | None:
        valid_names = self._names()
        if name in valid_names:
            return None
        listed = ", ".join(f"{self.prefix}:{n}" for n in valid_names[:10])
        return f" (not a '{self.prefix}:' model; valid: {listed})"

    def load(self, request: LoadRequest) -> Classifier:
        clf = self._factory(
            request.name, pretrained=request.pretrained, checkpoint=request.checkpoint, device=request.device
        )
        if not isinstance(clf, Classifier):
            raise TypeError(
                f"the factory of '{self.prefix}:' returned {type(clf).__name__}, not a Classifier"
            )
        return clf


_SOURCES: dict[str, ModelSource] = {}
"""The registered sources by prefix, in registration order."""


def _sources() -> tuple[ModelSource, ...]:
    return (*_BUILTIN, *_SOURCES.values())


def _spec_of(source: ModelSource, name: str) -> str:
    return f"{source.prefix}:{name}" if source.prefix else name


def _builtin_keys() -> set[str]:
    """Prefixes and whole specs of the built-in sources (they cannot be replaced)."""
    return {s.prefix for s in _BUILTIN if s.prefix} | {n for s in _BUILTIN if not s.prefix for n in s.names()}


def _load_plugins() -> None:
    """Register the model sources of every installed plugin (once per process)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()()
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the built-in models
            warnings.warn(f"model source plugin {entry.name!r} ({entry.value}) failed to load: "
                          f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=3)


def register_model_source(
    prefix: str,
    factory: ModelFactory,
    names: Callable[[], list[str]],
    *,
    _plugin: bool = False,
) -> None:
    """Add a family of specs ``PREFIX:NAME`` (e.g. a model zoo of your own).

    ``load_model("PREFIX:NAME", ...)`` then calls
    ``factory(NAME, pretrained=..., checkpoint=..., device=...)`` (``checkpoint`` is a
    ``Path`` or ``None``) and :func:`list_models` includes ``PREFIX:`` + each of ``names()``.
    Registering a prefix again replaces it. An installed package can register at start-up through
    the entry-point group :data:`PLUGIN_GROUP`.

    Args:
        prefix: e.g. ``"myzoo"`` (a trailing ``":"`` is ignored); not ``torchvision``/``timm``/``demo``.
        factory: builds the :class:`Classifier` (see :class:`ModelFactory`).
        names: returns the valid ``NAME`` values.

    Raises:
        ValueError: an empty or built-in prefix, or one containing ``":"`` / ``"@"``.
        TypeError: ``factory`` or ``names`` is not callable.
    """
    key = str(prefix).strip()
    key = key.removesuffix(":")
    if not key or ":" in key or "@" in key or key != key.strip():
        raise ValueError(
            f"invalid model source prefix {prefix!r}: use a word such as 'demo'"
        )
    if key in _builtin_keys() or (key in _PLUGIN_PREFIXES and not _plugin):
        raise ValueError(
            f"model source prefix {key!r} is built in and cannot be replaced"
        )
    if not callable(factory) or not callable(names):
        raise TypeError("register_model_source needs callables for factory and names")
    _SOURCES[key] = _FactorySource(key, factory, names)


# ----------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------


def list_models(pattern: str | None = None) -> list[str]:
    """All valid model specs (without checkpoint suffix), optionally filtered.

    Includes ``efficientnet_lite0``, ``torchvision:<name>`` for every torchvision classification
    model, ``timm:<arch>`` and ``timm:<arch>.<pretrained tag>``, and the registered sources.

    Args:
        pattern: shell-style pattern (``fnmatch``, case-sensitive), e.g. ``"timm:convnext*"``.

    Returns:
        matching spec names.
    """
    _load_plugins()
    _load_plugins()
    names = [_spec_of(source, name) for source in _sources() for name in source.names()]
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _unknown_model(spec: str, reason: str = "") -> ValueError:
    names = list_models()
    matches = difflib.get_close_matches(spec, names, n=5, cutoff=0.6)
    bare = spec.split(":", 1)[-1]
    if len(matches) < 5:  # also match on the name alone ("resnet50" -> "timm:resnet50")
        by_bare: dict[str, list[str]] = {}
        for name in names:
            by_bare.setdefault(name.split(":", 1)[-1], []).append(name)
        for hit in difflib.get_close_matches(bare, list(by_bare), n=5, cutoff=0.75):
            matches += [n for n in by_bare[hit] if n not in matches]
    matches = matches[:5]
    hint = (
        f"did you mean: {', '.join(matches)}?" if matches else "no similar name found"
    )
    sources = _sources()
    prefixes = ", ".join(
        [f"'{s.prefix}:'" for s in sources if s.prefix]
        + [f"'{name}'" for s in sources if not s.prefix for name in s.names()]
    )
    return ValueError(
        f"unknown model {spec!r}{reason}; {hint} (valid specs start with {prefixes}; "
        f"see spurious.models.list_models(pattern))"
    )


# ----------------------------------------------------------------------------
# Spec -> source
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _ParsedSpec:
    """A spec taken apart: ``arch`` is ``PREFIX:NAME`` or a whole spec; ``checkpoint`` exists."""

    arch: str
    checkpoint: Path | None
    config: ModelConfig | None


def _is_whole_spec(arch: str) -> bool:
    return any(not s.prefix and s.has(arch) for s in _sources())


def _resolve_bare_arch(arch: str, spec: str) -> str:
    """``resnet18`` (no prefix, with a checkpoint) -> ``torchvision:resnet18``, else ``timm:resnet18``."""
    found = [s for s in _BARE_ARCHITECTURES if s.has(arch)]
    if not found:
        kinds = " or ".join(s.prefix for s in _BARE_ARCHITECTURES)
        raise _unknown_model(arch, f" (not a {kinds} architecture)")
    first = found[0].prefix
    if len(found) > 1:
        other = found[1].prefix
        logger.info("%r: %r is both a %s and a %s model; using %s:%s (write %s:%s@... for %s's)",
                    spec, arch, first, other, first, arch, other, arch, other)
    return f"{first}:{arch}"


def _split_spec(spec: str, checkpoint: str | os.PathLike[str] | None) -> tuple[str, str | os.PathLike[str] | None]:
    arch = spec.strip()
    ckpt_path = checkpoint
    if "@" in arch:
        arch, suffix = arch.split("@", 1)
        if checkpoint is not None:
            raise ValueError(
                f"spec {spec!r} names a checkpoint and checkpoint={str(checkpoint)!r} was also "
                f"given; pass only one"
            )
        ckpt_path = suffix
    return arch.strip(), ckpt_path


def _checked_file(ckpt_path: str | os.PathLike[str], arch: str) -> Path:
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: '{path}' (for model {arch or '?'!r})")
    return path.resolve()



def _read_config(config: str | os.PathLike[str] | bool | None, path: Path | None) -> ModelConfig | None:
    """The given config file, else the one beside the checkpoint (``config=False``: none)."""
    if isinstance(config, (str, os.PathLike)):
        return read_model_config(Path(config).expanduser())
    if config is not False and path is not None:
        found = find_model_config(path)
        return read_model_config(found) if found is not None else None
    return None


def _parse_spec(
    spec: str, checkpoint: str | os.PathLike[str] | None, config: str | os.PathLike[str] | bool | None
) -> _ParsedSpec:
    arch, ckpt_path = _split_spec(spec, checkpoint)
    path = _checked_file(ckpt_path, arch) if ckpt_path is not None else None
    cfg = _read_config(config, path)
    if not arch:
        if cfg is None or not cfg.architecture:
            raise ValueError(
                f"spec {spec!r} names no architecture: write ARCH@PATH (e.g. torchvision:resnet18@{ckpt_path}) "
                f"or put \"architecture\" in a config file beside the checkpoint"
            )
        arch = cfg.architecture
        if ":" not in arch and not _is_whole_spec(arch):
            arch = f"{_CONFIG_ARCH_PREFIX}:{arch}"
    if ":" not in arch and not _is_whole_spec(arch) and path is not None:
        arch = _resolve_bare_arch(arch, spec)
    return _ParsedSpec(arch, path, cfg)


def _find_source(arch: str) -> tuple[ModelSource, str]:
    """The source serving ``arch`` and the name it knows it by; unknown specs list the closest names."""
    prefix, sep, name = arch.partition(":")
    if not sep:
        for source in _sources():
            if not source.prefix and source.has(arch):
                return source, arch
        raise _unknown_model(arch)
    by_prefix = {s.prefix: s for s in _sources() if s.prefix}
    if prefix not in by_prefix:
        raise _unknown_model(arch, f" (unknown prefix '{prefix}:')" if prefix else "")
    source = by_prefix[prefix]
    reason = source.unknown_reason(name)
    if reason is not None:
        raise _unknown_model(arch, reason)
    return source, name


# ----------------------------------------------------------------------------
# Finishing: the same for every source
# ----------------------------------------------------------------------------


def _stated_preprocessing(
    base: Preprocessing,
    base_source: str,
    checkpoint: Checkpoint | None,
    config: ModelConfig | None,
    options: Preprocessing | Mapping[str, object] | None,
) -> tuple[Preprocessing, str]:
    """The preprocessing in force and where it was stated: options > config file > checkpoint > defaults."""
    sources = [base_source]
    if checkpoint is not None and (checkpoint.mean is not None or checkpoint.std is not None):
        base = dataclasses.replace(
            base, mean=checkpoint.mean or base.mean, std=checkpoint.std or base.std
        )
        sources.insert(0, "mean/std from the checkpoint's normaliser")
    if config is not None and config.preprocessing:
        base = apply_preprocessing_options(base, config.preprocessing, f"model config {config.path}")
        sources.insert(0, f"config file {config.path} ({', '.join(config.preprocessing)})")
    if isinstance(options, Preprocessing):
        return options, "given"
    if options:
        stated = normalise_preprocessing_options(options, "preprocessing options")
        if stated:
            base = apply_preprocessing_options(base, stated, "preprocessing options")
            sources.insert(0, f"options ({', '.join(stated)})")
    return base, " over ".join(sources)


def _warn_unstated(spec: str, path: Path, preprocessing: Preprocessing, source: str) -> None:
    partly = "only its mean/std (normaliser)" if source.startswith("mean/std") else "no preprocessing"
    warnings.warn(
        f"checkpoint '{path}' states {partly}: no {path.stem}.json or config.json beside it and "
        f"no options. Assuming {source.split(' over ')[-1]}: {preprocessing.describe()}. If the model was "
        f"trained otherwise its features and scores are wrong: pass --input-size/--resize/--crop-pct/"
        f"--interpolation/--mean/--std/--value-range (Python: preprocessing={{...}}), or write "
        f"{path.with_name(path.stem + '.json')} (see docs/usage.md, 'Your own model'); check with "
        f"`spurious model {spec}`",
        UserWarning,
        stacklevel=3,
    )


def _checked_names(class_names: Sequence[str], k: int, spec: str) -> list[str]:
    names = [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(
            f"got {len(names)} class names for {spec!r} with {k} classes; pass exactly one name per class"
        )
    return names


def _finish_network(
    network: Network,
    request: LoadRequest,
    class_names: Sequence[str] | None,
    names_source: str,
    config: ModelConfig | None,
    options: Preprocessing | Mapping[str, object] | None,
) -> Classifier:
    """Wrap a built-in source's network with the preprocessing in force, and name its classes."""
    spec, checkpoint = request.spec, network.checkpoint
    preprocessing, source = _stated_preprocessing(
        network.preprocessing, network.preprocessing_source, checkpoint, config, options
    )
    if checkpoint is not None and not (config is not None and config.preprocessing) and not options:
        _warn_unstated(spec, checkpoint.path, preprocessing, source)
    clf = Classifier(network.model, preprocessing, None, spec, device=request.device)
    clf.preprocessing_source = source
    if class_names is not None:
        clf.class_names = _checked_names(class_names, clf.num_classes, spec)
        clf.class_names_source = names_source
    else:
        defaults = network.default_names(clf.num_classes)
        if defaults is not None:
            clf.class_names, clf.class_names_source = defaults
    return clf


def _finish_classifier(
    clf: Classifier,
    prefix: str,
    request: LoadRequest,
    class_names: Sequence[str] | None,
    names_source: str,
    config: ModelConfig | None,
    options: Preprocessing | Mapping[str, object] | None,
) -> Classifier:
    """Check a registered source's classifier against the request, then state its preprocessing."""
    spec, num_classes = request.spec, request.num_classes
    if num_classes is not None and clf.num_classes != num_classes:
        raise ValueError(
            f"{spec!r} has {clf.num_classes} classes, not num_classes={num_classes}"
        )
    if class_names is not None:
        clf.class_names = _checked_names(class_names, clf.num_classes, spec)
    clf.spec = spec
    if clf.preprocessing_source == "given":
        clf.preprocessing_source = f"stated by the '{prefix}:' model"
    target = resolve_model_device(request.device)
    if target is not None:
        clf = clf.to(target)
    if class_names is not None:
        clf.class_names_source = names_source
    pre, source = _stated_preprocessing(clf.preprocessing, clf.preprocessing_source, None, config, options)
    if pre != clf.preprocessing or source != clf.preprocessing_source:
        clf.set_preprocessing(pre, source)
    return clf


# ----------------------------------------------------------------------------
# load_model
# ----------------------------------------------------------------------------


def load_model(
    spec: str,
    *,
    pretrained: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
    preprocessing: Preprocessing | Mapping[str, object] | None = None,
    config: str | os.PathLike[str] | bool | None = None,
    seed: int | None = None,
) -> Classifier:
    """Load a classifier from a spec string.

    Specs: ``torchvision:NAME``, ``timm:NAME[.TAG]``, ``efficientnet_lite0`` (bundled ImageNet
    weights, offline), ``PREFIX:NAME`` for registered sources, each optionally followed by
    ``@PATH`` to load weights from a checkpoint file (plain state dict; a dict with it under
    ``state_dict`` or ``model``; ``module.`` prefixes; or a Madry ``robustness`` checkpoint,
    whose normaliser mean/std go into :attr:`Classifier.preprocessing`). With a checkpoint the
    prefix may be left out (``resnet18@PATH``: torchvision's, else timm's), or the whole
    architecture (``@PATH``) when the config file names it (``"architecture"``).

    A checkpoint's preprocessing and class names are *stated*: by ``preprocessing`` (options),
    by a config file beside it (``STEM.json``, else ``config.json``: timm's ``config.json`` keys
    ``pretrained_cfg.input_size/crop_pct/interpolation/mean/std``, ``label_names``,
    ``num_classes``, ``architecture``, plus ``resize_size`` and ``value_range``), in that order of
    precedence over the architecture's defaults. A checkpoint with neither gets a ``UserWarning``
    that names the assumption. :attr:`Classifier.preprocessing_source` says where each came from.

    Args:
        spec: the model spec, e.g. ``"timm:convnext_tiny.fb_in1k"`` or
            ``"torchvision:resnet50@/ckpt/robust.pt"``.
        pretrained: load the hub's pretrained weights (torchvision/timm download them;
            ignored when a checkpoint is given). ``False`` gives random weights.
        checkpoint: weights file; alternative to the ``@PATH`` suffix.
        class_names: ``K`` class names; default the config file's, ImageNet-1k names when
            ``K = 1000``, else ``class_<k>`` (timm ImageNet-22k/12k models get their subset's names).
        num_classes: number of classes ``K``; default the config file's, the architecture's, or
            the checkpoint's head size when that differs.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``"auto"``); default CPU.
        preprocessing: a :class:`Preprocessing`, or some of its fields as a dict (keys
            :data:`PREPROCESSING_OPTIONS`; ``input_size`` as ``N`` or ``[H, W]``) that replace
            the config file's and the defaults.
        config: the config file to read (default: looked up beside the checkpoint; ``False``:
            none).
        seed: with ``pretrained=False`` and no checkpoint, draw the random initialisation from
            ``torch.manual_seed(seed)`` (in a forked RNG: the caller's random state is left as it
            was), so the same seed gives the same weights and fingerprint in every process; the
            seed is kept in :attr:`Classifier.random_weights_seed`. Ignored otherwise.

    Returns:
        the :class:`Classifier` (eval mode).

    Raises:
        ValueError: unknown spec (the message lists the closest valid names), a checkpoint that
            does not fit the architecture or cannot be read safely, wrong ``class_names``, or a
            bad preprocessing option or config file.
        FileNotFoundError: the checkpoint (or the given config file) does not exist.
        WeightsDownloadError (an OSError and a RuntimeError): pretrained weights could not be
            downloaded (offline).
    """
    if not isinstance(spec, str):
        raise TypeError(
            f"spec must be a string such as 'timm:resnet50', got {type(spec).__name__}"
        )
    if num_classes is not None and (
        not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if preprocessing is not None and not isinstance(preprocessing, (Preprocessing, Mapping)):
        raise TypeError(
            f"preprocessing must be a Preprocessing or a dict of its fields, got {type(preprocessing).__name__}"
        )
    _load_plugins()
    parsed = _parse_spec(spec, checkpoint, config)
    source, name = _find_source(parsed.arch)
    cfg, path = parsed.config, parsed.checkpoint
    if cfg is not None:
        if class_names is None and cfg.class_names is not None:
            class_names = cfg.class_names
        if num_classes is None:
            num_classes = cfg.num_classes if cfg.num_classes is not None else (
                len(cfg.class_names) if cfg.class_names else None
            )
    names_source = "config file" if cfg is not None and class_names is cfg.class_names else "given"
    canonical = parsed.arch if path is None else f"{parsed.arch}@{path}"
    request = LoadRequest(name, canonical, pretrained, path, num_classes, device)
    seeded = seed is not None and not pretrained and path is None
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seeded:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))  # type: ignore[arg-type]
            loaded = source.load(request)
    else:
        loaded = source.load(request)
    if isinstance(loaded, Classifier):
        clf = _finish_classifier(loaded, source.prefix, request, class_names, names_source, cfg, preprocessing)
    else:
        clf = _finish_network(loaded, request, class_names, names_source, cfg, preprocessing)
    clf.config_path = None if cfg is None else str(cfg.path)
    clf.random_weights_seed = int(seed) if seeded and seed is not None else None
    if path is not None:
        clf._set_weights_digest(cached_checkpoint_digest(path, parsed.arch, clf.num_classes, clf.weights_digest))
    return clf
