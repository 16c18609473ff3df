"""The embedded default dataset: drawn class objects with *planted* spurious features.

Every image shows, over a textured background, at most one class object (one shape per class:
star, ring, cross, ...; colour, scale, position and rotation vary, so the *shape* is the class
cue). Four spurious features are planted on known classes at exact rates, so every later stage
(neural PCA, retrieval, scoring, SpuFix) can be checked against the truth:

========  ===============  ============  =======================================================
feature   kind             classes       what it looks like
========  ===============  ============  =======================================================
feeder    class extension  0 (40 %)      bird feeder beside the object (red roof, yellow body,
                                         dark hole; 17-21 px tall at 64 px)
frame     class extension  1 (35 %)      magenta frame along the image border (6 px at 64 px)
water     shared           2 (40 %),     blue wave texture as the background (never drawn as
                           3 (20 %)      a random background otherwise)
scribble  class extension  3 (35 %)      paper label (22-27 x 13-17 px at 64 px) with two lines
                                         of bold, upright handwriting-like strokes
========  ===============  ============  =======================================================

The rates and sizes are chosen so that each feature is a dominant direction of variance within
its class that survives adversarial training of the demo models (see :mod:`spurious.demo.train`): at
the earlier 8-25 % rates and 6-px feeders, neural PCA of the robust model did not isolate the
frame and the scribble, and the feeder's component fired on a star *with* a feeder but hardly
on a feeder alone. Water is planted on two classes, more often on the first (with 25 % vs 8 %
the minor class never received water-only images; v2's 40 % vs 30 % made the two demo models
send them to different classes).

Images without a class object (the spurious-only split and the pool's spurious-only and plain
images) show, in 75 % of cases, one large *stand-in* shape (disk, square, ellipse or bar: no
class's shape) at the scale and in the colours of the class objects. Real spurious-only photos
(a bird feeder without a hummingbird) show other things; an image that contains nothing but the
feature is an extreme the demo models never see in training. Measured on the v2 data (no
stand-ins): the robust model's feeder component rose by ~3 on *any* object (star or another
class's) over an empty background, so on a feeder-only image it was only 0.6 against 3.5 on a
star with a feeder, and SpuFix, which removes the component's positive part, could not remove
the feeder's effect there. With a stand-in shape present the component sees the same "there is
an object" part as on a class image.

A feature never occludes the object: the boxes of a feature and of the object may touch but do
not overlap (the frame is drawn around a layout region that excludes it). The number of train
(and val) images of class ``k`` carrying a feature is exactly ``floor(rate * n + 0.5)``.

Layout written by :func:`generate_planted` under ``out/``::

    train/00_star/00000.png ...   one folder per class, sorted order == class index (image_folder)
    val/00_star/00000.png ...
    spurious/planted_spurious_<k>_<feature>_<j>/00000.png ...   published Spurious ImageNet
        layout: token 2 is the class k, the last token the feature index j into
        PLANTED_FEATURES; the images show the feature but no class object (maybe distractors)
    spurious/timestamp.txt        fixed text (the published layout has one)
    pool/00000.png ...            unlabeled: 15 % class images (with and without features),
                                  45 % spurious-only images (the four features in turn) and
                                  40 % background/distractor images: like a web-scale pool,
                                  where the object of any one class is rare; the last two
                                  kinds have stand-in shapes at the same rate (75 %)
    index.jsonl                   ground truth, one JSON object per image (see below)
    planted.json                  config, class names, features, counts, hashes

Each ``index.jsonl`` line: ``{"id": "train/00_star/00001.png", "split": "train", "label": 0,
"object": true, "object_class": 0, "object_box": [x0, y0, x1, y1], "features": [{"name":
"feeder", "box": [x0, y0, x1, y1]}], "stand_in_box": null, "background": "grass"}``
(``stand_in_box``: the box of the stand-in shape of an image without a class object, or
null). Boxes are pixel coordinates with exclusive ``x1``/``y1`` and are the tight boxes of
every pixel the object, feature or stand-in touches
(the frame's and the water's box is the whole image). ``label`` is the class for train/val, the
folder's class ``k`` for spurious images (what :func:`~spurious.datasets.spurious_imagenet`
assigns; the object is absent) and ``-1`` for the pool.

Determinism: the same config gives byte-identical files with the same numpy and Pillow versions
(each image has its own ``np.random.default_rng([seed, split, ...])`` stream, PNGs are written
with fixed options, the JSON with sorted keys and no timestamps). Other library versions may
change pixels; :meth:`PlantedDataset.verify` checks a tree against its recorded content hash.

The generator is :mod:`spurious.demo.planted._generator`; the pixels come from the drawing kit,
:mod:`spurious.demo.planted._drawing`.

Example:
    >>> ds = generate_planted("planted-data")                          # doctest: +SKIP
    >>> train = image_folder(ds.train)                                 # doctest: +SKIP
    >>> bench = spurious_imagenet(ds.spurious)                         # doctest: +SKIP
"""

from __future__ import annotations

from ._drawing import BACKGROUNDS, CLASS_SHAPES
from ._generator import (
    GROUP_PARTS,
    PLANTED_FEATURES,
    GroundTruthRecord,
    PlantedConfig,
    PlantedDataset,
    PlantedFeatureBox,
    SpuriousFeature,
    config_from_dict,
    generate_planted,
    load_planted,
    write_planted_groups,
)

__all__ = [
    "BACKGROUNDS",
    "GROUP_PARTS",
    "CLASS_SHAPES",
    "PLANTED_FEATURES",
    "GroundTruthRecord",
    "PlantedConfig",
    "PlantedDataset",
    "PlantedFeatureBox",
    "SpuriousFeature",
    "config_from_dict",
    "generate_planted",
    "load_planted",
    "write_planted_groups",
]
