"""``vissl-lite eval EVALUATOR CHECKPOINT --data PATH``: evaluate a frozen encoder.

The evaluators, their help, options and what runs come from ``vissl_lite.registry.EVALUATORS``
(``eval/evaluator.py`` has the interface): this module only adds the options every evaluator
shares, loads the encoder, and prints/writes what the evaluator returns.

ENCODER is any encoder spec (``backbones/specs.py``): a pretraining checkpoint or run folder (its
method rebuilt, ``backbone_for_eval()`` frozen), ``timm:<model>``, ``torchvision:<model>[:<weights>]``,
``hub:<repo dir>:<entry>`` (``--weights FILE`` for local weights), or ``random:<backbone>`` (the
random-init baseline at the size of ``--like CKPT``). Its preprocessing card is printed and
recorded, and the command line overrides any field of it. Features of each split are extracted once and cached on
disk, keyed by what determines them: the checkpoint's SHA-256 (or the random backbone's name and
seed), the data's files (names, sizes, mtimes), split, transform, image size and subset.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Dict, Tuple

from torch import nn

from vissl_lite import distributed as dist
from vissl_lite.numbers import tidy
from vissl_lite.errors import BackboneError, EvalError, VisslLiteError
from vissl_lite.eval.evaluator import EvalContext, EvalResult
from vissl_lite.eval.features import EvalWarning
from vissl_lite.host_memory import reused_host_memory
from vissl_lite.registry import EVALUATORS
from vissl_lite.backbones.card import INTERPOLATIONS
from vissl_lite.backbones.encoder import FEATURES
from vissl_lite.backbones.specs import (checkpoint_encoder, find_checkpoint, parse_spec,
                                        resolve_encoder)

NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "stl10": 96}
DEFAULT_CACHE = os.environ.get("VISSL_LITE_CACHE", str(Path.home() / ".cache" / "vissl_lite" / "features"))
LAST = "last.pt"

EPILOG = """\
examples:
  vissl-lite eval knn runs/simclr_resnet18/checkpoints/last.pt --data cifar10-jpeg.tar.gz
  vissl-lite eval knn random:resnet18 --cifar-stem --data cifar10-jpeg/ --subset-train 2000
  vissl-lite eval linear runs/simclr_resnet18 --data /data/imagenet --mode standard --out lin.json
  vissl-lite eval report runs/simclr_resnet18 --data cifar10-jpeg.tar.gz --report-dir report/
  vissl-lite eval sslmem CKPT_WITH CKPT_WITHOUT --data DIR --candidates idx.txt

`vissl-lite eval EVALUATOR -h` lists an evaluator's own options.
"""


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's ``(default: X)``, but not where the help text states its default already, nor
    for options that are off (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def add_common_arguments(parser: argparse.ArgumentParser, needs_data: bool = True) -> None:
    """The options every evaluator shares: data, model and runtime, outputs."""
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=needs_data, help="ImageFolder dir or .tar/.tar.gz with train/ and "
                                                 "test/, or the root of a --dataset")
    g.add_argument("--dataset", default="imagefolder",
                   help="imagefolder | cifar10 | cifar100 | stl10 (default: imagefolder)")
    g.add_argument("--subset-train", type=int, default=None, metavar="N",
                   help="a fixed random N images of train (quick runs)")
    g.add_argument("--subset-test", type=int, default=None, metavar="N")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader workers (default: min(4, CPU cores))")
    g = parser.add_argument_group("model and runtime")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    g.add_argument("--cache-dir", default=DEFAULT_CACHE, help="feature cache folder")
    g.add_argument("--no-cache", action="store_true", help="do not read or write cached features")
    g.add_argument("--out", default=None,
                   help="write the configuration and results as JSON here (figures beside it)")
    add_encoder_arguments(parser)


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """How the encoder spec is resolved and its preprocessing card overridden (eval and embed)."""
    g = parser.add_argument_group("encoder")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="timm:/torchvision:/hub: specs: local weights (.pth or .safetensors)")
    g.add_argument("--feature", default=None, choices=FEATURES,
                   help="the global feature (default per family: pool; DINOv2 hub: cls+mean)")
    g.add_argument("--like", default=None, metavar="CKPT",
                   help="random:<backbone>: take the image size, stem and normalisation of this run")
    g.add_argument("--cifar-stem", action="store_true", help="random:<resnet>: 3x3 stem, no "
                                                             "max-pool (32 px unless --image-size)")
    g = parser.add_argument_group("preprocessing (default: the encoder's card)")
    g.add_argument("--image-size", type=int, default=None,
                   help="center-crop size (default: the encoder's card: a checkpoint's training "
                        "size, timm's pretrained_cfg, ...)")
    g.add_argument("--resize", type=int, default=None, help="short side before the center crop")
    g.add_argument("--interpolation", default=None, choices=INTERPOLATIONS)
    g.add_argument("--mean", type=float, nargs=3, default=None)
    g.add_argument("--std", type=float, nargs=3, default=None)


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Attach ``EVALUATOR ...`` to ``parser`` (the ``eval`` sub-command of ``vissl-lite``): one
    sub-command per registered evaluator, with the common options and the evaluator's own."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    sub = parser.add_subparsers(dest="evaluator", metavar="EVALUATOR", required=True,
                                help="one of: " + ", ".join(EVALUATORS.names()))
    for name, cls in EVALUATORS.items():
        p = sub.add_parser(name, help=EVALUATORS.describe(name), description=EVALUATORS.describe(name),
                           formatter_class=DefaultsOnceFormatter)
        for dest, text in cls.positionals:
            p.add_argument(dest, help=text)
        add_common_arguments(p, cls.needs_data)
        cls.add_arguments(p)
    return parser


def resolve_checkpoint(spec: str) -> Path:
    """A checkpoint file, or a run folder's ``checkpoints/last.pt`` (as ``resume=`` accepts)."""
    try:
        return find_checkpoint(spec)
    except BackboneError as e:
        raise EvalError(str(e)) from None


def load_encoder(spec: str, args: argparse.Namespace) -> Tuple[nn.Module, Dict[str, Any]]:
    """(encoder, info) of any encoder spec (``backbones/specs.py``), with the preprocessing card
    overridden by the command line; info: model_id, image_size, mean, std, augment, card, encoder.
    The card is printed (rank 0) as the evaluation's header."""
    native = NATIVE_SIZE.get(getattr(args, "dataset", None))
    random_size = args.image_size or (None if args.like else native) or (
        32 if args.cifar_stem and spec.startswith("random:") else None)
    try:
        path = None
        if parse_spec(spec)[0] == "checkpoint":
            path = str(find_checkpoint(spec))
            encoder, cfg = checkpoint_encoder(spec, args.feature)
            augment = cfg.get("augment") if hasattr(cfg, "get") else None
            if hasattr(args, "evaluator"):
                _monitor_note(cfg, args)
        else:
            encoder = resolve_encoder(spec, weights=args.weights, feature=args.feature,
                                      like=args.like, image_size=random_size,
                                      cifar_stem=args.cifar_stem, seed=getattr(args, "seed", 0))
            augment = None
        card = encoder.card.replace(image_size=args.image_size, resize=args.resize,
                                    interpolation=args.interpolation, mean=args.mean, std=args.std)
    except BackboneError as e:
        raise EvalError(str(e)) from None
    described = {"spec": spec, "feature": encoder.feature, "num_features": encoder.num_features,
                 "family": encoder.family, "preprocessing": card.as_dict()}
    if dist.is_main():
        print(f"encoder {spec}: {encoder.family}, feature {encoder.feature} "
              f"({encoder.num_features}-d); preprocessing: {card.describe()}")
    return encoder, {"model_id": encoder.model_id, "image_size": card.image_size,
                     "mean": card.mean, "std": card.std, "augment": augment, "card": card,
                     "encoder": described, "path": path}


def _monitor_note(cfg: Any, args: argparse.Namespace) -> None:
    """Say whether this run's subsets are the online monitor's (same rule: seed, seed + 1)."""
    monitor = cfg.get("monitor") if hasattr(cfg, "get") else None
    if monitor is None or not dist.is_main():
        return
    seed = int(cfg.get("seed", 0))
    mine = (args.subset_train, args.subset_test, args.seed)
    theirs = (monitor.get("train_subset"), monitor.get("test_subset"), seed)
    if mine != theirs:
        print(f"note: the online monitor's kNN used train/test subsets {theirs[0]}/{theirs[1]} "
              f"with seed {seed}; this evaluation uses {mine[0] or 'all'}/{mine[1] or 'all'} with "
              f"seed {args.seed} (the same images: --subset-train {theirs[0]} --subset-test "
              f"{theirs[1]} --seed {seed})")


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:10.2e}" if 0 < abs(value) < 1e-2 else f"{value:10.3f}"
    return f"{value!s:>10}"


def print_table(title: str, rows: Dict[str, Any]) -> None:
    width = max([len(k) for k in rows] + [10])
    line = "-" * (width + 14)
    print(f"{title}\n{line}")
    for key, value in rows.items():
        print(f"{key:<{width}}  {_show(value)}")
    print(line)


def print_result(title: str, result: EvalResult) -> None:
    print_table(title, result.metrics)
    for name, rows in result.tables.items():
        if rows and len(rows) <= 30:
            cols = list(rows[0])
            print(f"{name}:\n  " + "  ".join(f"{c:>12}" for c in cols))
            for row in rows:
                print("  " + "  ".join(f"{_show(row[c]).strip():>12}" for c in cols))
    for note in result.notes:
        print(f"note: {note}")
    for caption, path in result.figures.items():
        print(f"wrote {path} ({caption})")


def result_record(args: argparse.Namespace, ctx: EvalContext, result: EvalResult,
                  seconds: float) -> Dict[str, Any]:
    """The JSON written by ``--out``: configuration, data, model and results."""
    config = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    info = ctx.info if ctx.checkpoint and ctx.encoder_loaded else {}
    return {"evaluator": args.evaluator, "checkpoint": ctx.checkpoint,
            "model_id": info.get("model_id"), "encoder": info.get("encoder"), "config": config,
            "data": ctx.describe_data(), "device": str(ctx.device), "seconds": round(seconds, 2),
            **result.extra, "results": result.metrics, "tables": result.tables,
            "figures": result.figures, "notes": result.notes}


@contextlib.contextmanager
def one_line_warnings():
    """Show ``EvalWarning``s as ``vissl-lite: warning: <message>`` on stderr, each time."""
    shown = warnings.showwarning

    def show(message, category, *rest, **kw):
        if issubclass(category, EvalWarning):
            print(f"vissl-lite: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *rest, **kw)

    with warnings.catch_warnings():
        warnings.simplefilter("always", EvalWarning)
        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = shown


def run_eval_cli(args: argparse.Namespace) -> int:
    """Run one evaluator from parsed ``add_eval_arguments`` arguments; print a table, write JSON."""
    start = time.time()
    cls = EVALUATORS.get(args.evaluator)
    reason = cls.unavailable()
    if reason:
        raise EvalError(f"eval {args.evaluator}: {reason}")
    out = Path(args.out) if args.out else None
    ctx = EvalContext(args, partial(load_encoder, args=args),
                      figure_dir=out.parent if out else None,
                      figure_prefix=f"{out.stem}_" if out else "")
    with one_line_warnings(), reused_host_memory(ctx.device.type == "cpu"):
        result = cls().run(ctx)
    if dist.is_main():
        data = ctx.describe_data()
        sizes = " / ".join(f"{data[k]} {k[4:]}" for k in ("num_train", "num_test") if k in data)
        where = f" on {args.data} ({sizes})" if args.data is not None else ""
        title = f"vissl-lite eval {args.evaluator}: {ctx.checkpoint}{where}"
        print_result(title, result)
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            record = result_record(args, ctx, result, time.time() - start)
            out.write_text(json.dumps(tidy(record), indent=2, default=str) + "\n")
            print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    """``python -m vissl_lite.eval.cli ...`` (the same as ``vissl-lite eval ...``)."""
    parser = add_eval_arguments(argparse.ArgumentParser(prog="vissl-lite eval"))
    try:
        return run_eval_cli(parser.parse_args(argv))
    except VisslLiteError as e:
        parser.exit(2, f"vissl-lite eval: error: {e}\n")


if __name__ == "__main__":
    raise SystemExit(main())
