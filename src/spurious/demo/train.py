"""The embedded demo classifiers: small ResNets trained on the planted dataset, on the CPU.

Two variants are trained on :mod:`spurious.demo.planted` data (generated on first use):

* ``standard``: plain empirical risk minimisation (cross-entropy, SGD with Nesterov momentum,
  warm-up + cosine learning rate, random crop + flip);
* ``robust``: L2 PGD adversarial training (Madry et al. 2018): after a few clean epochs, every
  training batch is replaced by ``x' ~ argmax CE(f(x'), y)`` over ``||x' - x||_2 <= eps``,
  ``x' in [0, 1]^n``, found by :func:`pgd_l2`. Feature visualizations (NPFV, DESIGN.md "Math")
  are only meaningful on such a model.

Both learn the planted spurious features (feeder -> class 0, frame -> class 1, water -> classes 2
and 3, scribble -> class 3): :func:`evaluate_demo_model` measures the validation accuracy and,
for every spurious (class, feature) pair, the fraction of its spurious-only images (feature, no
object) that the model assigns to that class. The numbers are logged and stored in the
checkpoint's metadata.

Model specs (``spurious.models.load_model``)::

    demo:standard        default planted data (10 classes, 64 px), 18 epochs
    demo:robust          the same data, 4 clean + 12 adversarial epochs (eps = 1.0)
    demo:standard-tiny   PlantedConfig.tiny() (6 classes, 32 px), 12 epochs, seconds (for tests)
    demo:robust-tiny     the same, eps = 0.5

Measured (torch 2.14, 2 CPU threads, planted generator v4; the figures are also in each
checkpoint's metadata): ``demo:robust`` trained in 235 s (including ~20 s of data generation)
and ``demo:standard`` in 94 s. Val accuracy 0.915 (standard) and 0.837 (robust); spurious-only
images predicted as the feature's class, standard / robust: feeder 0.48 / 0.77, frame
0.50 / 0.68, scribble 0.43 / 0.82, water 0.45 / 0.98 (class 2) and 0.27 / 0.02 (class 3). Chance
is 0.1; 75 % of the spurious-only images also show a large non-class stand-in shape that competes
for the prediction. Under a 10-step L2 PGD attack on the val images the generator v2 models kept
0.80 / 0.57 / 0.21 / 0.02 (standard) and 0.77 / 0.70 / 0.53 / 0.25 (robust) accuracy at ``eps``
0.25 / 0.5 / 1.0 / 2.0. The tiny models reach only ~0.2-0.3 val accuracy (120 training images;
chance 0.17); they exist to exercise the code.

Where the code lives: the network in :mod:`spurious.demo._network`, the recipe (config, PGD,
training loop) in :mod:`spurious.demo._training`, the evidence in :mod:`spurious.demo._evidence`,
the checkpoint cache, shipped weights and loading in :mod:`spurious.demo._models`. The ``demo:``
model source (:mod:`spurious.demo._source`) loads them for :func:`spurious.models.load_model`.

Example:
    >>> info = train_demo_model("robust")                      # doctest: +SKIP
    >>> clf = spurious.models.load_model("demo:robust")         # doctest: +SKIP
"""

from __future__ import annotations

from spurious.demo._evidence import (
    DemoEvidence,
    SpuriousEvidence,
    evaluate_demo_model,
    evidence_lines,
)
from spurious.demo._models import (
    CHECKPOINT_FORMAT,
    DEMO_MODEL_NAMES,
    SHIPPED_DIR,
    DemoCheckpointMetadata,
    DemoModelInfo,
    demo_cache_dir,
    demo_model_names,
    load_demo_checkpoint,
    load_demo_model,
    shipped_checkpoint,
    train_demo_model,
)
from spurious.demo._network import DemoNet, DemoNetArch
from spurious.demo._training import (
    DEMO_MEAN,
    DEMO_STD,
    VARIANTS,
    DemoTrainConfig,
    EpochStats,
    TrainStats,
    pgd_l2,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEMO_MEAN",
    "DEMO_MODEL_NAMES",
    "DEMO_STD",
    "SHIPPED_DIR",
    "VARIANTS",
    "DemoCheckpointMetadata",
    "DemoEvidence",
    "DemoModelInfo",
    "DemoNet",
    "DemoNetArch",
    "DemoTrainConfig",
    "EpochStats",
    "SpuriousEvidence",
    "TrainStats",
    "demo_cache_dir",
    "demo_model_names",
    "evaluate_demo_model",
    "evidence_lines",
    "load_demo_checkpoint",
    "load_demo_model",
    "pgd_l2",
    "shipped_checkpoint",
    "train_demo_model",
]
