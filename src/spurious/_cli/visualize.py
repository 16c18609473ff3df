"""``spurious visualize WS``: NPFVs, component selection, max-activating images, heatmaps, neuron baseline."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from spurious._cli._common import common_options, defaults_of, emit_result, given

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers

__all__ = ["register"]

_default = defaults_of("spurious.visualize:visualize")


def register(sub: SubParsers) -> None:
    """Add the ``visualize`` sub-command to the argparse sub-parser action ``sub``."""
    p = sub.add_parser(
        "visualize", help="NPFVs, max-activating images and GradCAM of each class's components -> WS/visualize",
        description="For each class: feature visualizations (NPFV, L2 APGD from the gray image) of the top "
                    "--candidates neural PCA components, ranked by the class probability at the NPFV; the first "
                    "--keep get their max-activating training images and GradCAM heatmaps, next to the "
                    "Salient ImageNet neuron baseline. Writes PNGs, components.json and an HTML sheet per class, "
                    "and WS/visualize/index.html. Resumable per class; under torchrun classes are split over ranks. "
                    "NPFVs are only meaningful for an adversarially robust model.")
    p.add_argument("workspace", help="workspace with features of --split and npca fitted on them")
    p.add_argument("--classes", nargs="+", default=_default("classes"), help="class indices or names (default: all with components)")
    p.add_argument("--candidates", type=int, default=_default("candidates"),
                   help="components per class that get an NPFV, top by eigenvalue (default %(default)s)")
    p.add_argument("--keep", type=int, default=_default("keep"),
                   help="components kept per class, by NPFV class probability (default %(default)s)")
    p.add_argument("--eps", type=float, default=_default("eps"),
                   help="L2 budget of the NPFV (default 30*sqrt(n/(3*224*224)), n = input values: 30 at 224 px)")
    p.add_argument("--steps", type=int, default=_default("steps"), help="APGD steps (default %(default)s)")
    p.add_argument("--top-images", type=int, default=_default("top_images"),
                   help="max-activating images per component (default %(default)s)")
    p.add_argument("--split", default=_default("split"),
                   help="labelled feature split npca was fitted on (default: %(default)s)")
    p.add_argument("--data", default=_default("data"),
                   help="where the training images are now (default: the dataset recorded at extraction)")
    p.add_argument("--device", default=_default("device"), help="auto | cpu | cuda | cuda:N (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=_default("batch_size"),
                   help="images per APGD/GradCAM batch (default: all components of a class in one batch)")
    p.add_argument("--seed", type=int, default=_default("seed"), help="APGD seed (default %(default)s)")
    p.add_argument("--cam-layer", default=_default("cam_layer"), metavar="MODULE",
                   help="module whose output GradCAM uses (default: the last spatial block; an earlier, finer "
                        "one localises better on small inputs, e.g. stages.1 for the 64 px demo models)")
    p.add_argument("--overwrite", action="store_true", help="discard visualizations made with other settings")
    common_options(p)
    p.set_defaults(func=_cmd_visualize)


def _cmd_visualize(args: argparse.Namespace) -> int:
    from spurious._dist import dist_info
    from spurious.visualize import visualize

    r = visualize(args.workspace, overwrite=args.overwrite, progress=not args.no_progress,
                  **given(classes=args.classes, split=args.split, candidates=args.candidates, keep=args.keep,
                          eps=args.eps, steps=args.steps, top_images=args.top_images, device=args.device,
                          batch_size=args.batch_size, seed=args.seed, cam_layer=args.cam_layer, data=args.data))
    if not dist_info().is_main:  # under torchrun rank 0 reports
        return 0
    emit_result(args, r)
    return 0
