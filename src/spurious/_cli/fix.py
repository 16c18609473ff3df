"""``spurious fix``: SpuFix, its transfer to another model, export, and the reference-artifact imports.

One sub-parser with five forms (the first word picks the form; a workspace literally named like a
form word is written ``./transfer``)::

    spurious fix WS --components FILE                                 plain SpuFix of WS's model
    spurious fix WS --method dfr --groups FILE --split SPLIT          DFR: a new last layer (group-balanced)
    spurious fix transfer --source WS|ALPHAS --target WS2 --components FILE
    spurious fix export WS --format torchscript|onnx [--out FILE]
    spurious fix import-components spurious_components.npy --out comps.json
    spurious fix import-alphas DIR --train IMAGENET_TRAIN_DIR --out OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from spurious._cli._common import (
    common_options,
    defaults_of,
    emit,
    emit_result,
    given,
    is_given,
)
from spurious._cli._model_options import add_model_options, model_options

if TYPE_CHECKING:
    from spurious._cli._common import SubParsers
    from spurious.components import ComponentSet

__all__ = ["register"]

_fix_default = defaults_of("spurious.fix:fix")
_transfer_default = defaults_of("spurious.fix:transfer")
_export_default = defaults_of("spurious.fix:export_fix")
_labels_default = defaults_of("spurious.components:components_from_labels")

_FORMS = ("transfer", "export", "import-components", "import-alphas")

_USAGE = (
    "WS (--components FILE | --from-labels [--min-agree N]) [--out DIR] [--precision float32|float64] [--name NAME]",
    "WS --method dfr --groups FILE --split SPLIT [--out DIR] [--precision float32|float64] [--name NAME]",
    "transfer --source WS|ALPHAS_DIR --target WS2 (--components FILE | --from-labels) [--split SPLIT] [--out DIR]",
    "export WS --format torchscript|onnx [--out FILE] [--fix PATH] [--model SPEC] [--device DEV]",
    "import-components spurious_components.npy --out comps.json",
    "import-alphas DIR --train IMAGENET_TRAIN_DIR --out OUT_DIR",
    "(every form also takes --json, -v, --no-progress)",
)

_DESCRIPTION = """\
Remove the dependence on spurious neural PCA components without labels or retraining (SpuFix):
f~_k(x) = f_k(x) - sum_{l in S_k} max(alpha_l^k(x), 0). The fix is written to WS/fix/spufix.safetensors
(+ manifest.json) and is used by `spurious score --fix` and `spurious fix export`.

forms:
  WS                 plain SpuFix of the workspace's model from its neural PCA (`spurious npca WS` first)
  WS --method dfr    the retraining baseline DFR (Kirichenko et al. 2022): a new last layer, L1 logistic regression
                     on standardised features of the held-out images of --groups FILE (in the feature split
                     --split), groups balanced by subsampling; written to WS/dfr/dfr.safetensors, scored and
                     exported like SpuFix (`score --fix WS/dfr`). Needs group labels; SpuFix does not
  transfer           move the components of --source (a workspace with npca, or imported reference alphas)
                     to the model of --target: matched directions over the same training images (by image id)
  export             a fixed model that runs without this package (TorchScript or ONNX; images in [0,1] ->
                     fixed logits); the model is loaded from the fix's model spec (or --model)
  import-components  convert the published spurious_components.npy to a component-set JSON file.
                     WARNING: that file is a Python pickle, and loading a pickle can execute arbitrary code;
                     import only files from a source you trust
  import-alphas      import the published spurious_alphas_train_<kkk>.pt files (rows in the sorted file
                     order of each class's folder of --train), keyed by image id, for `fix transfer --source`

--from-labels: the components that at least --min-agree labelers called "spurious" in `spurious label`
(of WS; for transfer, of the --source workspace).

component-set file (JSON): {"format": "spurious-components", "version": 1, "model_fingerprint": "..." | null,
"classes": {"<k>": [l, ...]}, "source": "..."}, or a plain {"<k>": [l, ...]}; l = 0-based component index
(by eigenvalue). See docs/fix.md."""


def register(sub: SubParsers) -> None:
    """Add the ``fix`` sub-command to the argparse sub-parser action ``sub``."""
    p = sub.add_parser("fix", help="SpuFix: remove spurious components from a model (+ transfer, export, imports)",
                       usage="\n       ".join(f"%(prog)s {u}" if u[0] != "(" else u for u in _USAGE),
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="WS|FORM", help="workspace, or one of: " + ", ".join(_FORMS))
    p.add_argument("path", nargs="?", default=None, metavar="PATH",
                   help="export: the workspace; import-components: the .npy file; import-alphas: the folder")
    p.add_argument("--components", default=None, help="component-set JSON file (WS and transfer)")
    p.add_argument("--method", choices=["spufix", "dfr"], default=None,
                   help="WS: spufix (the default: remove components) or dfr (a new last layer; --groups, --split)")
    p.add_argument("--groups", default=None, metavar="FILE",
                   help="--method dfr: groups file of held-out images (CSV/JSONL: image, class, group or attribute "
                        "columns; see docs/fix.md)")
    p.add_argument("--from-labels", action="store_true",
                   help="WS and transfer: the agreed 'spurious' components of the (source) workspace's label store")
    p.add_argument("--min-agree", type=int, default=_labels_default("min_agree"),
                   help="--from-labels: labelers who must agree (default %(default)s)")
    p.add_argument("--source", default=None, help="transfer: source workspace (with npca) or imported alphas dir")
    p.add_argument("--target", dest="target_ws", default=None, help="transfer: workspace of the model to fix")
    p.add_argument("--split", default=_transfer_default("split"),
                   help="transfer: the target's labelled training split (default %(default)s); --method dfr: the "
                        "split holding the held-out images of --groups (required)")
    p.add_argument("--out", default=None,
                   help="WS/transfer: artifact dir (default WS/fix); export: file (default WS/fix/spufix.pt|.onnx); "
                        "imports: output file/dir (required)")
    p.add_argument("--precision", choices=["float32", "float64"], default=_fix_default("precision"),
                   help="storage dtype of the fix (default %(default)s)")
    p.add_argument("--name", default=None, help="label of the fix in tables (default SpuFix / SpuFix (transfer ...))")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    p.add_argument("--format", choices=["torchscript", "onnx"], default=None, help="export: file format")
    p.add_argument("--fix", dest="fix_path", default=None, help="export: fix artifact (default WS/fix)")
    p.add_argument("--model", default=None, help="export: model spec (default: the fix's model spec)")
    p.add_argument("--device", default=_export_default("device"),
                   help="export: device to trace on (default %(default)s)")
    p.add_argument("--train", default=None, help="import-alphas: the ImageNet training folder (imagenet:DIR)")
    add_model_options(p)
    common_options(p)
    p.set_defaults(func=_cmd_fix)


_MODEL_OPTIONS = ("input_size", "resize", "crop_pct", "interpolation", "mean", "std", "value_range", "model_config")
_OPTIONS = ("method", "groups", "components", "from_labels", "min_agree", "source", "target_ws", "split", "out", "precision", "name",
            "overwrite", "format", "fix_path", "model", "device", "train", *_MODEL_OPTIONS)


def _only(args: argparse.Namespace, form: str, allowed: set[str]) -> None:
    """Refuse options that the chosen form ignores (a silent no-op would hide a typo)."""
    flags = {"target_ws": "--target", "fix_path": "--fix"}
    extra = [flags.get(k, "--" + k.replace("_", "-")) for k in _OPTIONS
             if k not in allowed and is_given(getattr(args, k))]
    if extra:
        raise ValueError(f"`spurious fix {form}` does not take {', '.join(extra)} (see `spurious fix -h`)")


def _components(args: argparse.Namespace, form: str, labelled_ws: str | None) -> str | ComponentSet:
    """The component set of ``--components FILE`` or ``--from-labels`` (exactly one)."""
    if args.from_labels == (args.components is not None):
        raise ValueError(f"`spurious fix {form}` needs exactly one of --components FILE and --from-labels")
    if args.components is not None:
        return str(args.components)
    from spurious.components import components_from_labels

    if labelled_ws is None:
        raise ValueError("--from-labels needs a --source workspace (imported alphas carry no labels)")
    return components_from_labels(labelled_ws, **given(min_agree=args.min_agree))


def _is_workspace(path: str) -> bool:
    from spurious._io import read_json

    manifest = Path(path) / "manifest.json"
    return manifest.is_file() and read_json(manifest).get("format") == "spurious-workspace"


def _need(value: str | None, flag: str, form: str) -> str:
    if value is None:
        raise ValueError(f"`spurious fix {form}` needs {flag}")
    return value


def _cmd_fix(args: argparse.Namespace) -> int:
    form = args.target
    if form == "transfer":
        return _transfer(args)
    if form == "export":
        return _export(args)
    if form == "import-components":
        return _import_components(args)
    if form == "import-alphas":
        return _import_alphas(args)
    return _plain(args)


def _plain(args: argparse.Namespace) -> int:
    from spurious.fix import fix

    if args.path is not None:
        raise ValueError(f"unexpected argument {args.path!r}: `spurious fix WS --components FILE` takes one "
                         f"workspace (other forms: {', '.join(_FORMS)})")
    if args.method == "dfr":
        return _dfr(args)
    _only(args, "WS", {"method", "components", "from_labels", "min_agree", "out", "precision", "name", "overwrite"})
    comps = _components(args, "WS", args.target)
    emit_result(args, fix(args.target, comps, out=args.out, name=args.name, overwrite=args.overwrite,
                          **given(precision=args.precision)))
    return 0


def _dfr(args: argparse.Namespace) -> int:
    from spurious.dfr import dfr

    _only(args, "WS --method dfr", {"method", "groups", "split", "out", "precision", "name", "overwrite"})
    groups = _need(args.groups, "--groups FILE (the held-out images and their groups)", "WS --method dfr")
    if not is_given(args.split):
        raise ValueError("`spurious fix WS --method dfr` needs --split SPLIT: the feature split that holds the "
                         "held-out images of --groups (e.g. val)")
    emit_result(args, dfr(args.target, groups, split=args.split, out=args.out, name=args.name,
                          overwrite=args.overwrite, **given(precision=args.precision)))
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from spurious.fix import transfer

    if args.path is not None:
        raise ValueError(f"unexpected argument {args.path!r}: use --source and --target")
    _only(args, "transfer", {"components", "from_labels", "min_agree", "source", "target_ws", "split", "out",
                             "precision", "name", "overwrite"})
    source = _need(args.source, "--source WS|ALPHAS_DIR", "transfer")
    target = _need(args.target_ws, "--target WS", "transfer")
    comps = _components(args, "transfer", source if _is_workspace(source) else None)
    emit_result(args, transfer(source, target, comps, out=args.out, name=args.name, overwrite=args.overwrite,
                               **given(split=args.split, precision=args.precision)))
    return 0


def _export(args: argparse.Namespace) -> int:
    from spurious.fix import export_fix

    _only(args, "export", {"format", "out", "fix_path", "model", "device", "overwrite", *_MODEL_OPTIONS})
    ws = _need(args.path, "the workspace (spurious fix export WS ...)", "export")
    fmt = cast(Literal["torchscript", "onnx"], _need(args.format, "--format torchscript|onnx", "export"))  # choices
    opts = model_options(args)
    emit_result(args, export_fix(ws, format=fmt, out=args.out, fix_path=args.fix_path, model=args.model,
                                 preprocessing=opts.preprocessing, model_config=opts.config,
                                 overwrite=args.overwrite, **given(device=args.device)))
    return 0
def _import_components(args: argparse.Namespace) -> int:
    from spurious.components import import_components

    _only(args, "import-components", {"out", "overwrite"})
    src = _need(args.path, "the .npy file (spurious fix import-components FILE.npy --out comps.json)",
                "import-components")
    out = Path(_need(args.out, "--out comps.json", "import-components"))
    comps = import_components(src, out, overwrite=args.overwrite)
    emit(args, {"out": str(out), "classes": len(comps.classes), "components": comps.num_components,
                "source": comps.source},
         [f"imported {comps.num_components} components of {len(comps.classes)} classes -> {out}"])
    return 0


def _import_alphas(args: argparse.Namespace) -> int:
    from spurious.fix import import_alphas

    _only(args, "import-alphas", {"out", "train", "overwrite"})
    src = _need(args.path, "the folder of spurious_alphas_train_<kkk>.pt files", "import-alphas")
    a = import_alphas(src, _need(args.train, "--train IMAGENET_TRAIN_DIR", "import-alphas"),
                      _need(args.out, "--out DIR", "import-alphas"), overwrite=args.overwrite)
    emit_result(args, a)
    return 0
