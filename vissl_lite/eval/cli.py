"""``vissl-lite eval EVALUATOR CHECKPOINT --data PATH``: evaluate a frozen encoder.

The evaluators, their help, options and what runs come from ``vissl_lite.registry.EVALUATORS``
(``eval/evaluator.py`` has the interface): this module only adds the options every evaluator
shares, loads the encoder, and prints/writes what the evaluator returns.

CHECKPOINT is a pretraining checkpoint or a run folder (its ``checkpoints/last.pt``); its method
is rebuilt by ``engine.load_pretrained`` and ``backbone_for_eval()`` is frozen. ``random:<backbone>``
is the randomly initialised baseline. Features of each split are extracted once and cached on
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

import torch
from torch import nn

from vissl_lite import distributed as dist
from vissl_lite.config import global_view_size
from vissl_lite.numbers import tidy
from vissl_lite.errors import EvalError, VisslLiteError
from vissl_lite.eval.evaluator import EvalContext, EvalResult
from vissl_lite.eval.features import EvalWarning, file_digest
from vissl_lite.registry import EVALUATORS
from vissl_lite.backbones import build_backbone_from_config
from vissl_lite.backbones.config import BackboneConfig
from vissl_lite.engine import load_pretrained

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


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every evaluator shares: data, model and runtime, outputs."""
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True, help="ImageFolder dir or .tar/.tar.gz with train/ and "
                                                 "test/, or the root of a --dataset")
    g.add_argument("--dataset", default="imagefolder",
                   help="imagefolder | cifar10 | cifar100 | stl10 (default: imagefolder)")
    g.add_argument("--image-size", type=int, default=None,
                   help="evaluation size (default: the checkpoint's training size, else native)")
    g.add_argument("--subset-train", type=int, default=None, metavar="N",
                   help="a fixed random N images of train (quick runs)")
    g.add_argument("--subset-test", type=int, default=None, metavar="N")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader workers (default: min(4, CPU cores))")
    g = parser.add_argument_group("model and runtime")
    g.add_argument("--cifar-stem", action="store_true", help="random:<resnet>: 3x3 stem, no max-pool")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    g.add_argument("--cache-dir", default=DEFAULT_CACHE, help="feature cache folder")
    g.add_argument("--no-cache", action="store_true", help="do not read or write cached features")
    g.add_argument("--out", default=None,
                   help="write the configuration and results as JSON here (figures beside it)")


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
        add_common_arguments(p)
        cls.add_arguments(p)
    return parser


def resolve_checkpoint(spec: str) -> Path:
    """A checkpoint file, or a run folder's ``checkpoints/last.pt`` (as ``resume=`` accepts)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / LAST, path / LAST):
            if candidate.is_file():
                return candidate
        raise EvalError(f"{spec} is a folder without checkpoints/{LAST}; give a checkpoint file or "
                        f"a run folder written by vissl-lite pretrain")
    if not path.is_file():
        raise EvalError(f"checkpoint not found: {spec} (give a checkpoint file, e.g. "
                        f"runs/<run>/checkpoints/last.pt, a run folder, or random:<backbone> for a "
                        f"baseline)")
    return path


def load_encoder(spec: str, args: argparse.Namespace) -> Tuple[nn.Module, Dict[str, Any]]:
    """(encoder, info) with info: model_id, image_size (or None), mean, std, augment config."""
    if spec.startswith("random:"):
        name = spec.split(":", 1)[1]
        size = args.image_size or NATIVE_SIZE.get(args.dataset) or (32 if args.cifar_stem else 224)
        torch.manual_seed(args.seed)
        encoder = build_backbone_from_config(BackboneConfig(name=name, cifar_stem=args.cifar_stem),
                                             image_size=size)
        model_id = f"random:{name}+seed{args.seed}+cifar_stem={args.cifar_stem}"
        return encoder, {"model_id": model_id, "image_size": size, "mean": None, "std": None,
                         "augment": None}
    path = resolve_checkpoint(spec)

    method, cfg = load_pretrained(str(path))
    encoder = method.backbone_for_eval()
    augment = cfg.get("augment") if hasattr(cfg, "get") else None
    return encoder, {"model_id": f"sha256:{file_digest(path)}", "image_size": int(global_view_size(cfg)),
                     "mean": augment.mean if augment else None,
                     "std": augment.std if augment else None, "augment": augment,
                     "path": str(path)}


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
    return {"evaluator": args.evaluator, "checkpoint": ctx.checkpoint,
            "model_id": ctx.info.get("model_id") if ctx.checkpoint else None, "config": config,
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
    with one_line_warnings():
        result = cls().run(ctx)
    if dist.is_main():
        data = ctx.describe_data()
        sizes = " / ".join(f"{data[k]} {k[4:]}" for k in ("num_train", "num_test") if k in data)
        title = f"vissl-lite eval {args.evaluator}: {ctx.checkpoint} on {args.data} ({sizes})"
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
