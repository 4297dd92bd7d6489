"""CIFAR-10 accuracy benchmark: pretrain each method, then kNN and linear probe, against wall time.

For each method, its CIFAR-10 preset (configs/<method>/cifar10_*.yaml: ResNet-18 with the CIFAR
stem for simclr, barlow_twins and dino, ViT-Tiny/4 for mae and ijepa) is pretrained by the real
``Trainer`` for ``--epochs`` at ``--batch-size`` (any other config key can be overridden with
``-o key=value``). Every ``--eval-every`` epochs and at the end, the encoder the method hands to
evaluators (``backbone_for_eval()``: the EMA teacher for DINO and I-JEPA) is evaluated on frozen
features (vissl_lite/eval):

* weighted kNN (``knn_classify``): cosine similarity, votes weighted by exp(sim / T), with
  k = 200 and T = 0.1 as lightly's CIFAR-10 benchmark (the reference of issue 8: 0.848 SimCLR,
  0.819 Barlow Twins, 0.813 DINO at 200 epochs, batch 512), and k = 20 at the same T;
* the fast linear probe (``linear_probe``): L-BFGS logistic regression on standardised features
  with a weight-decay sweep chosen on a held-out tenth of train.

The kNN bank and the probe's training set are the pretraining images (train split, or its
``--subset``), centre-cropped and normalised as in pretraining; the test split (or its subset)
is the query set. Images come from the in-memory uint8 cache (data/memory.py), so evaluation
does not decode JPEGs again. Evaluation time is not counted in the wall time.

Output in ``--out``: ``results.md`` (method, epochs, batch, kNN, linear top-1, wall time,
images/s, peak memory), ``results.json`` (also every evaluation along the way),
``accuracy_vs_time.png`` and each run's folder ``runs/<method>/`` (config, metrics.jsonl,
checkpoints). Wall time is the whole ``Trainer.fit()`` (set-up, data loading, training,
checkpoints) less our evaluations; images/s is images trained on over that wall time; peak memory
is CUDA ``max_memory_allocated`` or, on CPU, the training process's peak RSS. Each method runs in
its own process.

    python benchmarks/cifar10.py --methods simclr --epochs 1 --batch-size 128 \\
        --subset 2000 1000 --out /tmp/cifar10_cpu                                  # CPU scale
    python benchmarks/cifar10.py --epochs 200 --batch-size 512 --eval-every 20 \\
        -o train.precision=bf16 train.channels_last=true --out results/cifar10     # one GPU
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (check_data, cifar10_methods, command_line, default_data, device_description,  # noqa: E402
                     emit_result, fmt_rate, markdown_table, memory_label, peak_memory_gb, pick_device,
                     preset, reset_peak_memory, run_child, sync, write_text)

LIGHTLY_REFERENCE = {"simclr": 0.848, "barlow_twins": 0.819, "dino": 0.813}


# --------------------------------------------------------------------------- one method (child)

class Evaluator:
    """kNN and linear probe of a frozen encoder on uint8 train/test tensors held in memory."""

    def __init__(self, cfg, test_subset: Optional[int], device: torch.device, k=(20, 200),
                 temperature: float = 0.1):
        from omegaconf import OmegaConf

        from vissl_lite.data import load_uint8
        from vissl_lite.eval.transforms import resolve_mean_std

        test_cfg = OmegaConf.merge(cfg.data, {"subset": test_subset})
        self.train = load_uint8(cfg.data, "train")
        self.test = load_uint8(test_cfg, "test")
        size = int(cfg.data.image_size or self.train[0].shape[-1])
        if self.train[0].shape[-1] != size:
            raise SystemExit(f"the cached images are {self.train[0].shape[-1]} px, not {size}")
        self.mean, self.std = resolve_mean_std(size, cfg.augment.mean, cfg.augment.std)
        self.device, self.k, self.temperature = device, tuple(k), temperature

    def __call__(self, encoder) -> Dict[str, float]:
        from vissl_lite.eval import extract_features, knn_classify, linear_probe

        kw = dict(batch_size=512, device=self.device, mean=self.mean, std=self.std)
        xtr, ytr = extract_features(encoder, self.train[0], labels=self.train[1], **kw)
        xte, yte = extract_features(encoder, self.test[0], labels=self.test[1], **kw)
        out: Dict[str, float] = {}
        knn = knn_classify(xtr, ytr, xte, yte, k=self.k, temperature=self.temperature,
                           num_classes=10, device=self.device)
        for k in self.k:
            kk = min(k, len(xtr))
            out[f"knn{k}"] = knn[f"knn_top1@{kk}"] / 100
        out["linear"] = linear_probe(xtr, ytr, xte, yte, num_classes=10,
                                     device=self.device)["linear_top1"] / 100
        return out


def run_method(job: Dict[str, Any]) -> Dict[str, Any]:
    from vissl_lite.config import load_config
    from vissl_lite.engine.trainer import Trainer
    from vissl_lite.rng import preserved_rng

    cfg = load_config(preset(job["method"]), job["overrides"])
    curve: List[Dict[str, Any]] = []
    clock = {"start": 0.0, "eval": 0.0, "peak": 0.0}

    class EvalTrainer(Trainer):
        """The real Trainer, evaluating the frozen encoder every ``eval_every`` epochs."""

        evaluator: Optional[Evaluator] = None

        def _end_epoch(self, force_save: bool = False) -> None:
            super()._end_epoch(force_save)
            epoch, last = self.state.epoch, self.state.step >= self.components.total_steps
            every = job["eval_every"]
            if last or (every and epoch % every == 0):
                self.evaluate()

        def evaluate(self) -> None:
            device, method = self.components.runtime.device, self.components.method
            sync(device)
            now = time.perf_counter()
            wall = now - clock["start"] - clock["eval"]
            clock["peak"] = max(clock["peak"], peak_memory_gb(device))
            if self.evaluator is None:
                self.evaluator = Evaluator(self.cfg, job["test_subset"], device, job["knn_k"],
                                           job["knn_t"])
            with preserved_rng():
                scores = self.evaluator(method.backbone_for_eval())
            method.train()
            curve.append({"epoch": self.state.epoch, "step": self.state.step,
                          "wall_s": wall, **scores})
            print(f"{job['method']} epoch {self.state.epoch} step {self.state.step}: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
                  + f" (train wall {wall:.0f} s)", flush=True)
            reset_peak_memory(device)
            clock["eval"] += time.perf_counter() - now

    trainer = EvalTrainer(cfg)
    device = pick_device() if cfg.train.device == "auto" else torch.device(cfg.train.device)
    reset_peak_memory(device)
    clock["start"] = time.perf_counter()
    result = trainer.fit()
    if not curve or curve[-1]["step"] != result["step"]:
        trainer.evaluate()  # training stopped mid-epoch (train.max_steps)
    final = curve[-1]
    epochs = result["step"] / trainer.components.steps_per_epoch  # fractional if stopped mid-epoch
    return {"method": job["method"], "backbone": cfg.backbone.name,
            "epochs": int(epochs) if epochs == int(epochs) else round(epochs, 2),
            "steps": result["step"], "batch_size": cfg.train.batch_size,
            "augment_path": cfg.augment.path, "precision": cfg.train.precision,
            "train_images": len(trainer.evaluator.train[0]),
            "test_images": len(trainer.evaluator.test[0]),
            "wall_s": final["wall_s"],
            "images_per_s": result["step"] * cfg.train.batch_size / final["wall_s"],
            "peak_gb": clock["peak"], "loss": result.get("loss"), "curve": curve,
            "final": {k: v for k, v in final.items() if k not in ("epoch", "step", "wall_s")},
            "output_dir": str(cfg.output_dir)}


# --------------------------------------------------------------------------- driver

def overrides_for(args, method: str, data: str, out: Path) -> List[str]:
    o = [f"data.root={data}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
         f"data.num_workers={args.workers}", "monitor.every_epochs=0", "logger.progress=false",
         "logger.wandb.mode=disabled", "checkpoint.every_epochs=0", "checkpoint.keep_last=1",
         "checkpoint.save_best=false", f"output_dir={out / 'runs' / method}", "resume=null"]
    if args.augment_path:
        o.append(f"augment.path={args.augment_path}")
    if args.subset:
        o.append(f"data.subset={args.subset[0]}")
    return o + list(args.overrides)


def plot(results: List[Dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(results):
        color = f"C{i}"
        minutes = [p["wall_s"] / 60 for p in r["curve"]]
        ax.plot(minutes, [p["knn200"] for p in r["curve"]], "o-", color=color,
                label=f"{r['method']} kNN (k=200)")
        ax.plot(minutes, [p["linear"] for p in r["curve"]], "s--", color=color,
                label=f"{r['method']} linear")
        ref = LIGHTLY_REFERENCE.get(r["method"])
        if ref is not None and r["epochs"] >= 200:
            ax.axhline(ref, color=color, lw=0.8, ls=":")
    ax.set_xlabel("pretraining wall time (minutes, evaluation excluded)")
    ax.set_ylabel("CIFAR-10 test top-1")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def parse_args(argv=None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n")[-1])
    ap.add_argument("--methods", nargs="+", default=cifar10_methods(), metavar='METHOD',
                    help="default: every method with a CIFAR-10 preset (%(default)s)")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--subset", type=int, nargs="+", default=None, metavar="N",
                    help="TRAIN [TEST]: class-balanced subsets for quick runs (default: all "
                         "50,000 / 10,000); the test split is whole unless TEST is given")
    ap.add_argument("--eval-every", type=int, default=0, metavar="EPOCHS",
                    help="also evaluate every N epochs (default: only at the end)")
    ap.add_argument("--workers", type=int, default=min(cores or 1, 16),
                    help="DataLoader workers (data.num_workers; default: cores, at most 16)")
    ap.add_argument("--augment-path", choices=["cpu", "gpu"],
                    default="gpu" if torch.cuda.is_available() else "cpu",
                    help="augment.path (default: gpu when CUDA is present, else cpu)")
    ap.add_argument("--knn-k", type=int, nargs="+", default=[20, 200])
    ap.add_argument("--knn-t", type=float, default=0.1, help="kNN temperature (lightly: 0.1)")
    ap.add_argument("--data", default=default_data(),
                    help="CIFAR-10 ImageFolder dir or .tar.gz (default: $CIFAR10_ROOT, else "
                         "../shared/datasets/cifar10-jpeg.tar.gz beside the repository)")
    ap.add_argument("--out", default="runs/benchmarks/cifar10",
                    help="output folder (default: %(default)s, ignored by git)")
    ap.add_argument("-o", "--override", dest="overrides", nargs="+", action="extend", default=[],
                    metavar="KEY=VALUE", help="extra config overrides for every method")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.subset and len(args.subset) > 2:
        ap.error("--subset takes TRAIN [TEST]")
    if 200 not in args.knn_k:
        args.knn_k.append(200)  # the column compared with lightly's benchmark
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.job:
        emit_result(run_method(json.loads(args.job)))
        return 0
    data = check_data(args.data)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    script = Path(__file__).resolve()
    test_subset = args.subset[1] if args.subset and len(args.subset) > 1 else None
    subset_note = (f"train subset {args.subset[0]}, test "
                   f"{'subset ' + str(test_subset) if test_subset else 'all'}"
                   if args.subset else "all 50,000 train / 10,000 test images")
    header = (f"device: {device_description(device)}\ndata: {data} ({subset_note}); "
              f"augment.path={args.augment_path}; {args.workers} DataLoader workers"
              + (f"; overrides: {' '.join(args.overrides)}" if args.overrides else ""))
    print(header, flush=True)

    results, failed = [], []
    for method in args.methods:
        preset(method)
        job = {"method": method, "overrides": overrides_for(args, method, data, out),
               "eval_every": args.eval_every, "test_subset": test_subset,
               "knn_k": args.knn_k, "knn_t": args.knn_t}
        started = time.perf_counter()
        r = run_child(script, job, quiet=False)
        if "error" in r:
            print(f"{method}: FAILED\n{r['error']}", file=sys.stderr, flush=True)
            failed.append(method)
            continue
        r["process_s"] = time.perf_counter() - started
        results.append(r)

    k_small = min(args.knn_k)
    headers = ["method", "backbone", "epochs", "batch", "kNN top-1 (k=200)",
               f"kNN top-1 (k={k_small})", "linear top-1", "wall time (min)", "images/s",
               memory_label(device)]
    rows = [[r["method"], r["backbone"], r["epochs"], r["batch_size"],
             f"{r['final']['knn200']:.3f}", f"{r['final'][f'knn{k_small}']:.3f}",
             f"{r['final']['linear']:.3f}", f"{r['wall_s'] / 60:.1f}",
             fmt_rate(r['images_per_s']), f"{r['peak_gb']:.2f}"] for r in results]
    table = markdown_table(headers, rows)
    print("\n" + table)
    notes = (f"kNN: cosine, temperature {args.knn_t}, bank = the pretraining images "
             f"({results[0]['train_images'] if results else '?'}), queries = "
             f"{results[0]['test_images'] if results else '?'} test images. Linear: fast probe "
             f"(L-BFGS logistic regression, weight decay chosen on a held-out tenth of train). "
             f"Accuracies are fractions (0.848 = 84.8%).")
    if results and results[0]["train_images"] < max(args.knn_k):
        notes += (f" The bank has fewer images than k: k is clipped to "
                  f"{results[0]['train_images']}.")
    write_text(str(out / "results.md"),
               f"`{command_line()}`\n\n{header}\n\n{table}\n\n{notes}\n"
               + (f"\nfailed: {', '.join(failed)}\n" if failed else ""))
    write_text(str(out / "results.json"),
               json.dumps({"header": header, "args": {k: v for k, v in vars(args).items()
                                                      if k != "job"},
                           "results": results, "failed": failed}, indent=2) + "\n")
    if results:
        plot(results, out / "accuracy_vs_time.png",
             f"CIFAR-10, {args.epochs} epoch(s), batch {args.batch_size}, {subset_note}\n"
             f"{device_description(device)[:90]}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
