"""``spurious counterfactual WS``: add or remove a neural PCA component in real images."""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING

from spurious._cli._common import (
    common_options,
    defaults_of,
    emit_result,
    given,
    is_given,
    resolve,
)

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers

__all__ = ["register"]

_default = defaults_of("spurious.counterfactual:counterfactual")


def register(sub: SubParsers) -> None:
    """Add the ``counterfactual`` sub-command to the argparse sub-parser action ``sub``."""

    p = sub.add_parser(
        "counterfactual", help="add or remove a component in real images (APGD in a ball around each photo)",
        description="Feature counterfactuals of component L of class K: starting from real images, maximise "
                    "(--add) or minimise (--remove) alpha_l^k inside the --norm ball of radius --eps around each "
                    "image, in [0, 1]. Writes the original, the counterfactual, a signed difference and a heatmap "
                    "of the change per image, with alpha, p(k) and the top-1 class before and after on the "
                    "optimising model and every --eval-model, to WS/counterfactual/ (resumable) and an HTML "
                    "sheet. Start images: --images / --data, else the component's max-activating training images "
                    "(--remove) or val images of the classes most confused with K (--add). Only meaningful on an "
                    "adversarially robust model (--model), as the NPFV. --engine diffusion (DVCE, paper Appendix H) "
                    "instead noises each image part-way and denoises it with an unconditional diffusion model "
                    "(--diffusion DIR, a diffusers folder; 'demo' = the embedded planted-data model), the mean of "
                    "each step shifted along the normalised gradients of log p(k), alpha_l^k and -distance.")
    p.add_argument("workspace", help="workspace with npca")
    p.add_argument("--class", dest="k", required=True, help="class index or name")
    p.add_argument("--component", type=int, required=True, help="component index l (0-based, by eigenvalue)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--add", action="store_const", const="add", dest="mode", help="maximise alpha_l^k")
    what.add_argument("--remove", action="store_const", const="remove", dest="mode", help="minimise alpha_l^k")
    p.add_argument("--images", nargs="+", default=None, metavar="PATH", help="start image files")
    p.add_argument("--data", default=_default("data"),
                   help="a dataset spec: its first --n-images images are the start images")
    p.add_argument("--n-images", type=int, default=_default("n_images"),
                   help="start images chosen by default or from --data (default %(default)s)")
    p.add_argument("--norm", choices=["l2", "linf", "l1"], default=_default("norm"),
                   help="ball of the edit (default %(default)s)")
    p.add_argument("--eps", type=float, default=_default("eps"),
                   help="radius (default: L2 30*sqrt(n/(3*224*224)); L-inf that / sqrt(n); L1 that * sqrt(n/100))")
    p.add_argument("--steps", type=int, default=_default("steps"), help="APGD steps (default %(default)s)")
    p.add_argument("--keep-weight", type=float, default=_default("keep_weight"),
                   help="weight of the penalty keeping the other components and classes at their start values "
                        "(default %(default)s: off)")
    p.add_argument("--logprob-weight", type=float, default=_default("logprob_weight"),
                   help="weight of the class log-probability term (default %(default)s: off)")
    p.add_argument("--model", default=_default("model"),
                   help="optimising model spec (default: the workspace's model)")
    p.add_argument("--eval-model", action="append", default=[], metavar="SPEC",
                   help="also score the images on this model (repeatable)")
    p.add_argument("--split", default=_default("split"),
                   help="training split of the max-activating images (default %(default)s)")
    p.add_argument("--val-split", default=_default("val_split"),
                   help="split of the default --add start images (default %(default)s)")
    p.add_argument("--confused", type=int, default=_default("confused"),
                   help="classes the default --add start images come from (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=_default("batch_size"),
                   help="images per APGD batch (default: all)")
    p.add_argument("--device", default=_default("device"), help="auto | cpu | cuda | cuda:N (default %(default)s)")
    p.add_argument("--seed", type=int, default=_default("seed"), help="APGD seed (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="discard counterfactuals made for another model/npca")
    dv = p.add_argument_group("diffusion engine (DVCE; see docs/dvce.md)")
    dv.add_argument("--engine", choices=["image", "diffusion"], default=_default("engine"),
                    help="image: APGD in a ball around each image; diffusion: DVCE (default %(default)s; "
                         "--diffusion alone implies diffusion)")
    dv.add_argument("--diffusion", default=_default("diffusion"), metavar="DIR",
                    help="diffusers folder (model_index.json, unet/, scheduler/) of an unconditional UNet2DModel, "
                         "or 'demo' (the embedded model trained on the planted images; the default of --engine "
                         "diffusion)")
    dv.add_argument("--class-weight", type=float, default=_default("class_weight"),
                    help="C_c, weight of the normalised gradient of log p(k) (default %(default)s, DVCE's; "
                         "0 = a pure component edit)")
    dv.add_argument("--component-weight", type=float, default=_default("component_weight"),
                    help="C_a, weight of the normalised gradient of alpha_l^k, + for --add, - for --remove "
                         "(default %(default)s)")
    dv.add_argument("--distance-weight", type=float, default=_default("distance_weight"),
                    help="C_d, weight of the normalised gradient of -d(x0_hat, x_orig) (default %(default)s, DVCE's)")
    dv.add_argument("--distance", choices=["l1", "l2"], default=_default("distance"),
                    help="d: L1 (DVCE's) or L2 (default %(default)s)")
    dv.add_argument("--diffusion-steps", type=int, default=_default("diffusion_steps"),
                    help="length of the scheduler's chain (default %(default)s, DVCE's)")
    dv.add_argument("--t-start", type=float, default=_default("t_start"),
                    help="share of the chain run from the noised image (default %(default)s: DVCE's last 100 of 200)")
    common_options(p)
    p.set_defaults(func=_cmd_counterfactual)


def _diffusion_folder(args: argparse.Namespace) -> str | None:
    """``--diffusion`` as a folder: ``demo`` (also the default of ``--engine diffusion``) is the embedded model."""
    engine, folder = resolve(args.engine), resolve(args.diffusion)
    if folder is None and engine == "diffusion":
        folder = "demo"
    if folder != "demo":
        return str(folder) if folder is not None else None
    try:  # the embedded model lives in the demo package (built separately); only the CLI reaches into it
        demo_diffusion_dir = importlib.import_module("spurious.demo.diffusion").demo_diffusion_dir
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--diffusion demo needs the embedded demo diffusion model (spurious.demo.diffusion), which "
                         f"cannot be imported here ({err}); pass a diffusers folder with --diffusion DIR") from None
    return str(demo_diffusion_dir())


def _cmd_counterfactual(args: argparse.Namespace) -> int:
    from spurious.counterfactual import counterfactual

    diffusion = _diffusion_folder(args)
    engine = "diffusion" if diffusion is not None and not is_given(args.engine) else args.engine
    emit_result(args, counterfactual(
        args.workspace, args.k, args.component, mode=args.mode, images=args.images, eval_models=args.eval_model,
        overwrite=args.overwrite, progress=not args.no_progress, diffusion=diffusion,
        **given(data=args.data, n_images=args.n_images, norm=args.norm, eps=args.eps, steps=args.steps,
                keep_weight=args.keep_weight, logprob_weight=args.logprob_weight, model=args.model,
                split=args.split, val_split=args.val_split, confused=args.confused, batch_size=args.batch_size,
                device=args.device, seed=args.seed, engine=engine, class_weight=args.class_weight,
                component_weight=args.component_weight, distance_weight=args.distance_weight,
                distance=args.distance, diffusion_steps=args.diffusion_steps, t_start=args.t_start)))
    return 0
