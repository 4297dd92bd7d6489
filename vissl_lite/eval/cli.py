"""``vissl-lite eval knn|linear|rankme|cluster CHECKPOINT --data PATH``: evaluate a frozen encoder.

CHECKPOINT is a pretraining checkpoint (its method is rebuilt by ``engine.load_pretrained`` and
``backbone_for_eval()`` is frozen) or ``random:<backbone>`` for the randomly initialised baseline.
Features of the train and test splits are extracted once and cached on disk, keyed by the
checkpoint's SHA-256 (or the random backbone's name and seed), the data path, split, image size
and subset; then the evaluator runs on them, a table is printed and ``--out`` gets the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from vissl_lite import distributed as dist
from vissl_lite.eval.cluster import alignment, cluster_evaluate
from vissl_lite.config import global_view_size
from vissl_lite.errors import EvalError
from vissl_lite.eval.features import (cache_key, cached_features, extract_features, file_digest,
                                      resolve_device)
from vissl_lite.eval.knn import BACKENDS, knn_classify
from vissl_lite.eval.linear import DEFAULT_WEIGHT_DECAYS, linear_probe, linear_probe_augmented
from vissl_lite.eval.monitor import _random_subset
from vissl_lite.eval.rankme import rankme_evaluate
from vissl_lite.eval.transforms import eval_transform, resolve_mean_std, train_probe_transform

EVALUATORS = ("knn", "linear", "rankme", "cluster")
NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "stl10": 96}
DEFAULT_CACHE = os.environ.get("VISSL_LITE_CACHE", str(Path.home() / ".cache" / "vissl_lite" / "features"))

EPILOG = """\
examples:
  vissl-lite eval knn runs/simclr_resnet18/checkpoints/last.pt --data cifar10-jpeg.tar.gz
  vissl-lite eval knn random:resnet18 --cifar-stem --data cifar10-jpeg/ --subset-train 2000
  vissl-lite eval linear CKPT --data /data/imagenet --mode standard --epochs 100 --out lin.json
  vissl-lite eval rankme CKPT --dataset cifar10 --data /data/cifar10
"""


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Attach the evaluation arguments to ``parser`` (the ``eval`` sub-command of ``vissl-lite``)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("evaluator", choices=EVALUATORS, help="which evaluation to run")
    parser.add_argument("checkpoint", help="checkpoint file, or random:<backbone> (random init)")
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
    g.add_argument("--cache-dir", default=DEFAULT_CACHE, help=f"feature cache (default {DEFAULT_CACHE})")
    g.add_argument("--no-cache", action="store_true", help="do not read or write cached features")
    g.add_argument("--out", default=None, help="write the configuration and results as JSON here")
    g = parser.add_argument_group("knn")
    g.add_argument("--k", type=int, nargs="+", default=[20, 200])
    g.add_argument("--temperature", type=float, default=0.07)
    g.add_argument("--backend", default="auto", choices=BACKENDS)
    g = parser.add_argument_group("linear")
    g.add_argument("--mode", default="fast", choices=["fast", "standard"],
                   help="fast: logistic regression on cached features with a weight-decay sweep; "
                        "standard: crop+flip through the encoder for --epochs")
    g.add_argument("--weight-decays", type=float, nargs="+", default=list(DEFAULT_WEIGHT_DECAYS))
    g.add_argument("--optimizer", default="lbfgs", choices=["lbfgs", "sgd"], help="fast mode")
    g.add_argument("--epochs", type=int, default=100, help="standard mode, or fast mode with sgd")
    g.add_argument("--lr", type=float, default=0.1, help="SGD lr (standard mode: per 256 images)")
    g = parser.add_argument_group("cluster")
    g.add_argument("--num-clusters", type=int, default=None, help="default: number of classes")
    g.add_argument("--pairs", type=int, default=1000,
                   help="test images whose two augmented views measure alignment (0: skip)")
    return parser


def _load_encoder(spec: str, args) -> Tuple[nn.Module, Dict[str, Any]]:
    """(encoder, info) with info: model_id, image_size (or None), mean, std, augment config."""
    if spec.startswith("random:"):
        from vissl_lite.backbones import build_backbone_from_config
        from vissl_lite.backbones.config import BackboneConfig

        name = spec.split(":", 1)[1]
        size = args.image_size or NATIVE_SIZE.get(args.dataset) or (32 if args.cifar_stem else 224)
        torch.manual_seed(args.seed)
        encoder = build_backbone_from_config(BackboneConfig(name=name, cifar_stem=args.cifar_stem),
                                             image_size=size)
        model_id = f"random:{name}+seed{args.seed}+cifar_stem={args.cifar_stem}"
        return encoder, {"model_id": model_id, "image_size": size, "mean": None, "std": None,
                         "augment": None}
    path = Path(spec)
    if not path.is_file():
        raise EvalError(f"checkpoint not found: {spec} (give a checkpoint file, e.g. "
                        f"runs/<run>/checkpoints/last.pt, or random:<backbone> for a baseline)")
    from vissl_lite.engine import load_pretrained

    method, cfg = load_pretrained(str(path))
    encoder = method.backbone_for_eval()
    augment = cfg.get("augment") if hasattr(cfg, "get") else None
    size = global_view_size(cfg)
    return encoder, {"model_id": f"sha256:{file_digest(path)}", "image_size": int(size),
                     "mean": augment.mean if augment else None,
                     "std": augment.std if augment else None, "augment": augment}


def _data_cfg(args, image_size: int):
    from omegaconf import OmegaConf

    from vissl_lite.data.config import DataConfig

    if not Path(args.data).exists() and args.dataset == "imagefolder":
        raise EvalError(f"data not found: {args.data} (give an ImageFolder directory or .tar.gz "
                        f"with train/ and test/, or --dataset cifar10 with its root)")
    return OmegaConf.structured(DataConfig(name=args.dataset, root=str(args.data),
                                           image_size=image_size, num_workers=args.num_workers))


def _split(data_cfg, split: str, transform, size: Optional[int], seed: int) -> Dataset:
    from vissl_lite.data import build_dataset

    dataset = build_dataset(data_cfg, split, transform=transform)
    if size:
        dataset = Subset(dataset, _random_subset(len(dataset), size, seed))
    return dataset


def _positive_pairs(encoder, data_cfg, info, image_size, args, device) -> Tuple[Dict[str, float], str]:
    """Alignment of two augmented views of ``--pairs`` test images (the pretraining recipe if known)."""
    mean, std = resolve_mean_std(image_size, info["mean"], info["std"])
    try:
        from vissl_lite.augment import build_cpu_views
        from vissl_lite.augment.config import AugmentConfig
        from vissl_lite.augment.spec import ViewSpec

        views = build_cpu_views(ViewSpec("simclr", 2, 0), info["augment"] or AugmentConfig(),
                                image_size)
        recipe = "simclr"
    except ImportError:
        crop = train_probe_transform(image_size, mean, std)
        views, recipe = (lambda img: [crop(img), crop(img)]), "crop+flip"
    pairs = _split(data_cfg, "test", lambda img: torch.stack(views(img)[:2]), args.pairs, args.seed + 2)
    torch.manual_seed(args.seed)
    x = torch.stack([pairs[i][0] for i in range(len(pairs))])
    kw = dict(batch_size=args.batch_size, device=device, precision=args.precision)
    f1, _ = extract_features(encoder, x[:, 0], **kw)
    f2, _ = extract_features(encoder, x[:, 1], **kw)
    return {"alignment": alignment(f1, f2)}, recipe


def _print_table(title: str, rows: Dict[str, Any]) -> None:
    width = max(len(k) for k in rows)
    line = "-" * (width + 14)
    print(f"{title}\n{line}")
    for key, value in rows.items():
        shown = f"{value:10.3f}" if isinstance(value, float) else f"{value!s:>10}"
        print(f"{key:<{width}}  {shown}")
    print(line)


def run_eval_cli(args: argparse.Namespace) -> int:
    """Run one evaluation from parsed ``add_eval_arguments`` arguments; print a table, write JSON."""
    start = time.time()
    device = resolve_device(args.device)
    encoder, info = _load_encoder(args.checkpoint, args)
    encoder = encoder.to(device).eval()
    image_size = int(args.image_size or info["image_size"])
    mean, std = resolve_mean_std(image_size, info["mean"], info["std"])
    data_cfg = _data_cfg(args, image_size)
    test_tf = eval_transform(image_size, mean, std)
    train_set = _split(data_cfg, "train", test_tf, args.subset_train, args.seed)
    test_set = _split(data_cfg, "test", test_tf, args.subset_test, args.seed + 1)
    classes = getattr(getattr(test_set, "dataset", test_set), "classes", None)

    cache_dir = None if args.no_cache else args.cache_dir
    kw = dict(batch_size=args.batch_size, device=device, num_workers=args.num_workers,
              precision=args.precision, progress=dist.is_main())
    feats, cache_hits = {}, {}
    for split, dataset, subset in (("train", train_set, args.subset_train),
                                   ("test", test_set, args.subset_test)):
        key = cache_key(info["model_id"], args.data, split, image_size, subset,
                        extra=f"{args.dataset}|seed{args.seed}|{mean}|{std}")
        feats[split], cache_hits[split] = cached_features(
            cache_dir, key, lambda d=dataset: extract_features(encoder, d, **kw))
    (xtr, ytr), (xte, yte) = feats["train"], feats["test"]
    num_classes = len(classes) if classes else None

    extra: Dict[str, Any] = {}
    if args.evaluator == "knn":
        results = knn_classify(xtr, ytr, xte, yte, k=args.k, temperature=args.temperature,
                               backend=args.backend, num_classes=num_classes, device=device)
    elif args.evaluator == "linear" and args.mode == "fast":
        results = linear_probe(xtr, ytr, xte, yte, weight_decays=args.weight_decays,
                               optimizer=args.optimizer, epochs=args.epochs, lr=args.lr,
                               num_classes=num_classes, device=device, seed=args.seed)
    elif args.evaluator == "linear":
        aug_train = _split(data_cfg, "train", train_probe_transform(image_size, mean, std),
                           args.subset_train, args.seed)
        results = linear_probe_augmented(encoder, aug_train, test_set,
                                         num_classes or int(max(ytr.max(), yte.max())) + 1,
                                         epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                         device=device, num_workers=args.num_workers,
                                         precision=args.precision, seed=args.seed,
                                         progress=dist.is_main())
    elif args.evaluator == "rankme":
        results = rankme_evaluate(xtr, ytr, xte, yte)
    else:
        results = cluster_evaluate(xtr, ytr, xte, yte, num_clusters=args.num_clusters, seed=args.seed)
        if args.pairs:
            pair_results, extra["pair_views"] = _positive_pairs(encoder, data_cfg, info, image_size,
                                                                args, device)
            results.update(pair_results)

    seconds = time.time() - start
    if dist.is_main():
        title = (f"vissl-lite eval {args.evaluator}: {args.checkpoint} on {args.data} "
                 f"({len(xtr)} train / {len(xte)} test, {xtr.shape[1]}-d features, {image_size}px)")
        _print_table(title, results)
        if args.out:
            config = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
            report = {"evaluator": args.evaluator, "checkpoint": args.checkpoint,
                      "model_id": info["model_id"], "config": config,
                      "data": {"path": str(args.data), "dataset": args.dataset,
                               "image_size": image_size, "mean": list(mean), "std": list(std),
                               "num_train": len(xtr), "num_test": len(xte),
                               "feature_dim": int(xtr.shape[1]), "features_cached": cache_hits},
                      "device": str(device), "seconds": round(seconds, 2), **extra,
                      "results": results}
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
            print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    """``python -m vissl_lite.eval.cli ...`` (the same as ``vissl-lite eval ...``)."""
    parser = add_eval_arguments(argparse.ArgumentParser(prog="vissl-lite eval"))
    try:
        return run_eval_cli(parser.parse_args(argv))
    except EvalError as e:
        parser.exit(2, f"vissl-lite eval: error: {e}\n")


if __name__ == "__main__":
    raise SystemExit(main())
