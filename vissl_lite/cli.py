"""``vissl-lite``: the command line.

    vissl-lite pretrain CONFIG [key=value ...]       train a method from a YAML file or preset name
    vissl-lite eval EVALUATOR CKPT --data PATH
    vissl-lite compare RUN_OR_RESULTS...              runs side by side (curves, numbers, config)
    vissl-lite config CONFIG [key=value ...]         print the resolved, validated config
    vissl-lite list [methods|backbones|datasets|evaluators|presets] [--markdown]
    vissl-lite embed ENCODER --data DIR --out FILE.npy  the embedding of every image, resumable
    vissl-lite export CKPT --format timm|torchvision|safetensors --out FILE   the encoder alone
    vissl-lite shard DATA --out DIR --shard-size N     tar shards for data.name=shards
    vissl-lite submit CONFIG [key=value ...] --nodes N --gpus-per-node G --partition P --time T
                                                     SLURM jobs (submitit); --local, --sweep

User errors (every ``vissl_lite.errors.VisslLiteError``: bad config key, missing data, wrong
checkpoint) end in one line on stderr and exit status 2; anything else is a bug and keeps its
traceback. What the commands can name (methods, presets, ...) comes from the registries and the
preset folders, so a new method file shows up here without an edit; ``--plugins DIR`` and
``--configs DIR`` add a project's own method files and presets.

``--version``, ``--help``, ``list``, ``config`` and config errors import no torch (2.5 s): the
trainer, the evaluators, data and export are reached through the packages' lazy exports
(``engine.Trainer``, ...), loaded when a command runs; ``benchmarks/cli_startup.py`` times them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf

import vissl_lite
from vissl_lite import data, engine
from vissl_lite import eval as evaluation
from vissl_lite.config import load_config
from vissl_lite.engine.submit_cli import add_submit_parser
from vissl_lite.errors import VisslLiteError, print_user_error
from vissl_lite.presets import add_preset_roots, list_presets, preset_roots
from vissl_lite.recipe_cards import read_card, recipes_markdown
from vissl_lite.registry import ALL_REGISTRIES, METHODS, add_plugins, plugin_sources


PRETRAIN_EPILOG = """\
examples:
  vissl-lite pretrain simclr/cifar10_resnet18
  vissl-lite pretrain configs/simclr/cifar10_resnet18.yaml optim.lr=0.6 train.epochs=100
  vissl-lite pretrain configs/dino/cifar10_resnet18.yaml data.root=/data/cifar10 resume=auto
  torchrun --nproc_per_node=8 -m vissl_lite.cli pretrain configs/dino/imagenet_vit_small.yaml

overrides are omegaconf dotlist items (section.key=value); `vissl-lite config CONFIG` shows every
key with its resolved value. resume=auto continues from OUTPUT_DIR/checkpoints/last.pt if present.
"""


def cmd_pretrain(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    engine.Trainer(cfg).fit()
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides, require=())
    print(OmegaConf.to_yaml(cfg), end="")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    wanted = args.what.rstrip("s") if args.what else None
    if wanted is None:
        print("plugins from: " + "; ".join(plugin_sources()))
        print("presets from: " + "; ".join(_display(r) for r in preset_roots()))
    for kind, registry in ALL_REGISTRIES.items():
        if wanted in (None, kind):
            print(f"{kind}s:")
            for name in registry.names():
                print(f"  {name:<24} {registry.describe(name)}".rstrip())
    if wanted in (None, "preset"):
        print("presets:")
        for name, path in list_presets().items():
            card = read_card(path)
            n = len(card.deviations)
            listed = f" ({n} deviation{'s' * (n > 1)} listed)" if n else ""
            print(f"  {name:<32} {_display(path)}\n  {'':<32} source: {card.source or '(no recipe card)'}{listed}")
    return 0


def cmd_methods_table(args: argparse.Namespace) -> int:
    """The docs' table of methods, generated from the registry and the preset folders."""
    print("| method | what it does | backbones | presets |\n|---|---|---|---|")
    for name in METHODS.names():
        backbones = ", ".join(METHODS.light(name).supported_backbones) or "any"
        presets = ", ".join(f"`{p}`" for p in list_presets(name)) or "-"
        print(f"| `{name}` | {METHODS.describe(name)} | {backbones} | {presets} |")
    return 0


def cmd_list_markdown(args: argparse.Namespace) -> int:
    if not args.markdown:
        return cmd_list(args)
    if args.what == "presets":
        print(recipes_markdown())
        return 0
    return cmd_methods_table(args)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def cmd_export(args: argparse.Namespace) -> int:
    how = vissl_lite.export_backbone(args.checkpoint, args.format, args.out)
    print(f"wrote the backbone of {args.checkpoint}; load it with:\n{how}")
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    """The data set ``--name`` at DATA -> tar shards in ``--out``."""
    started = time.perf_counter()
    dataset = data.build_dataset({"name": args.name, "root": args.data}, args.split)
    data.write_shards(dataset, args.out, args.shard_size)
    print(f"wrote {len(dataset):,} images of {args.data} ({args.name}, split '{args.split}') as "
          f"{-(-len(dataset) // args.shard_size)} shards into {args.out} in "
          f"{time.perf_counter() - started:.1f} s; train on them with data.name=shards "
          f"data.root={args.out}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed every image of a folder or tar archive with any encoder spec."""
    encoder, info = evaluation.load_encoder(args.encoder, args)
    encoder.card = info["card"]  # with the command line's overrides
    summary = evaluation.embed_images(encoder, args.data, args.out, batch_size=args.batch_size,
                           num_workers=args.num_workers, device=args.device,
                           precision=args.precision, chunk=args.chunk, progress=not args.quiet)
    skipped = f" ({summary['skipped_chunks']} chunks already written)" if summary[
        "skipped_chunks"] else ""
    print(f"wrote {summary['images']:,} embeddings ({summary['dim']}-d) of {args.data} to "
          f"{summary['out']}{skipped}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    return evaluation.run_eval_cli(args) or 0


def _folders() -> argparse.ArgumentParser:
    """``--plugins DIR`` and ``--configs DIR``, which every sub-command takes."""
    parent = argparse.ArgumentParser(add_help=False)
    g = parent.add_argument_group("project folders")
    g.add_argument("--plugins", action="append", default=[], metavar="DIR",
                   help="a folder (or .py file) of your own method/evaluator/dataset plugins; "
                        "repeatable, like $VISSL_LITE_PLUGINS")
    g.add_argument("--configs", action="append", default=[], metavar="DIR",
                   help="a folder of your own presets (<method>/<name>.yaml); repeatable, like "
                        "$VISSL_LITE_CONFIGS")
    return parent


def build_parser(with_evaluators: bool = True) -> argparse.ArgumentParser:
    """The command line; ``with_evaluators=False`` leaves the evaluators' and encoders' own
    options out (they import torch), for every command but ``eval`` and ``embed``."""
    folders = _folders()
    parser = argparse.ArgumentParser(
        prog="vissl-lite",
        description="Self-supervised pretraining and evaluation from YAML presets. "
                    "`vissl-lite list` shows the methods, backbones, data sets, evaluators and "
                    "presets there are.")
    parser.add_argument("--version", action="version",
                        version=f"vissl_lite {vissl_lite.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("pretrain", help="train a method from a YAML preset", parents=[folders],
                       description="Pretrain an encoder without labels. Writes config.yaml, "
                                   "metrics.jsonl, checkpoints/ and curves.png to output_dir.",
                       epilog=PRETRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML file or preset name, e.g. simclr/cifar10_resnet18 "
                                  "(see `vissl-lite list presets`)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval", help="evaluate a checkpoint's frozen encoder", parents=[folders],
                       description="Evaluate the frozen encoder of a pretraining checkpoint "
                                   "(or random:<backbone> for a random-init baseline).")
    if with_evaluators:
        evaluation.add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="runs side by side: curves, final numbers, config diffs",
                       parents=[folders],
                       description="Compare runs: training curves overlaid, every evaluator's "
                                   "final numbers with the best marked, the config differences; "
                                   "Markdown, one-file HTML and PNG.")
    p.add_argument("runs", nargs="+", metavar="RUN_OR_RESULTS",
                   help="run folders, checkpoints or results JSON files (two or more)")
    p.add_argument("--out", default="compare",
                   help="folder for compare.md, compare.html, compare.json and the PNGs")
    p.set_defaults(func=lambda args: evaluation.run_compare(args))

    p = sub.add_parser("embed", help="embed every image of a folder or tar with any encoder",
                       parents=[folders],
                       description="Write the embedding of every image of a folder or tar (sorted "
                                   "by path) with its path: FILE.npy + FILE.csv, .parquet or "
                                   ".safetensors. Resumable: a rerun skips the chunks written.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("encoder", help="an encoder spec: a checkpoint or run folder, timm:<model>, "
                                   "torchvision:<model>[:<weights>], hub:<dir>:<entry>, random:<name>")
    p.add_argument("--data", required=True, help="a folder of images (any nesting) or a .tar/.tar.gz")
    p.add_argument("--out", required=True, help="FILE.npy (+ FILE.csv), .parquet or .safetensors")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--chunk", type=int, default=4096, help="images per resumable part")
    p.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if with_evaluators:
        evaluation.add_encoder_arguments(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("export", help="write a checkpoint's backbone alone (timm, torchvision, "
                                      "safetensors)", parents=[folders],
                       description="Write the pretrained encoder of a checkpoint alone, loadable "
                                   "with timm.create_model(..., pretrained_cfg_overlay=dict(file="
                                   "FILE)), torchvision's load_state_dict or safetensors; prints "
                                   "the Python that loads it. From Python: "
                                   "vissl_lite.load_backbone(CHECKPOINT).")
    p.add_argument("checkpoint", help="a checkpoint .pt file or a run folder")
    p.add_argument("--format", required=True, choices=["timm", "torchvision", "safetensors"])
    p.add_argument("--out", required=True, help="output file (.pth, or .safetensors)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("shard", help="write a data set as tar shards (data that does not fit in "
                                     "memory)", parents=[folders],
                       description="Write a data set as webdataset-style tar shards (<key>.jpg + "
                                   "<key>.cls) with an index.json; train on them with "
                                   "data.name=shards data.root=DIR.")
    p.add_argument("data", help="what data.root takes: an ImageFolder dir, a folder of images, a "
                                ".tar/.tar.gz")
    p.add_argument("--out", required=True, help="output folder (empty or new)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--name", default="imagefolder", help="data.name of DATA (default imagefolder; "
                                                         "folder for unlabelled images)")
    p.add_argument("--split", default="train", help="split to write (default train)")
    p.set_defaults(func=cmd_shard)

    add_submit_parser(sub, folders)

    p = sub.add_parser("config", help="print a preset's resolved and validated config",
                       parents=[folders],
                       description="Load, merge and validate a preset with overrides, print YAML.")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("list", parents=[folders],
                       help="list registered methods, backbones, data sets, evaluators, presets",
                       description="List what a config can name.")
    p.add_argument("what", nargs="?", choices=["methods", "backbones", "datasets", "evaluators",
                                               "presets"])
    p.add_argument("--markdown", action="store_true",
                   help="with 'methods': the Markdown table of methods and their presets; with "
                        "'presets': docs/recipes.md's table of sources and deviations")
    p.set_defaults(func=cmd_list_markdown)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(with_evaluators=argv[:1] in (["eval"], ["embed"]))
    args, rest = parser.parse_known_args(argv)
    if rest and isinstance(getattr(args, "overrides", None), list):  # overrides after --plugins DIR
        args.overrides += [r for r in rest if "=" in r or r.startswith("~")]
        rest = [r for r in rest if not ("=" in r or r.startswith("~"))]
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        add_plugins(args.plugins)
        add_preset_roots(args.configs)
        return args.func(args)
    except VisslLiteError as e:  # only user errors are shortened; bugs keep their traceback
        print_user_error(e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
