"""End-to-end pretraining throughput (images/s) and peak memory, vissl_lite against lightly.

"End to end" means what one training step costs in a real run: reading and decoding the images,
augmenting them into views, forward, backward and the optimizer step (plus the method's own
updates, e.g. DINO's EMA teacher). The first ``--warmup`` steps (DataLoader worker start-up,
cuDNN autotuning, ``torch.compile``) are left out of the timing; images/s counts source images
(each yields all its views) over the ``--steps`` timed steps.

Rows, per method, all on the current device (CUDA when present, else CPU, with no code change):

* ``vissl_lite cpu-aug``: our real ``Trainer`` (vissl_lite/engine) on the method's CIFAR-10 preset
  with ``augment.path=cpu``: JPEG decoding and ``build_cpu_views`` in DataLoader workers
  (data/loader.py ``build_train_loader``).
* ``vissl_lite gpu-aug``: the same with ``augment.path=gpu``: the split held in memory as uint8
  (data/memory.py ``load_uint8``, decoded once and cached on disk) on the device, and the batched
  ``build_gpu_views`` on each batch. Without a GPU the same batched code runs on CPU tensors.
* ``lightly``: the reference of issue 8, the same model through lightly 1.6.0's components, as
  its CIFAR-10 benchmark builds it minus pytorch-lightning: lightly's transform (SimCLRTransform,
  BYOLTransform, DINOTransform at 32 px, no blur) in a torch DataLoader over the same ImageFolder
  data (read by vissl_lite's ``build_dataset``, so both sides decode the same JPEGs the same way),
  a torchvision ResNet-18 with the CIFAR stem up to 64 px and the ImageNet stem above (our row
  gets the same ``backbone.cifar_stem``), lightly's heads and losses, torch SGD, and a plain
  training loop. Only for simclr, barlow_twins and dino with a torchvision ResNet.

Each row runs in its own process, so peak memory is per row: CUDA ``max_memory_allocated`` over
the timed steps, or on CPU the peak resident set size of the training process (its DataLoader
workers not included). The last column is our images/s over lightly's for the same method.

lightly is not a dependency of vissl_lite (it pulls hydra-core, which holds omegaconf < 2.4);
without it the script says how to install it on the side and prints our rows alone.

    python benchmarks/throughput.py --methods simclr --batch-size 64 --steps 5     # CPU scale
    PYTHONPATH=/tmp/lightly_site python benchmarks/throughput.py --batch-size 512 --steps 50 \\
        --workers 16 --precision bf16 --channels-last --markdown throughput.md      # one GPU
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (LIGHTLY_INSTALL, check_data, command_line, default_data,  # noqa: E402
                     device_description, emit_result, fmt_rate, lightly_available, markdown_table,
                     memory_label, peak_memory_gb, pick_device, preset, reset_peak_memory,
                     run_child, sync, write_text)

LIGHTLY_METHODS = ("simclr", "barlow_twins", "dino")
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


# --------------------------------------------------------------------------- vissl_lite rows

def process_usage() -> List[float]:
    """[user CPU s, system CPU s, minor page faults] of this (the training) process so far: the
    per-step split of where the main process spends its time, beside the wall-clock marks."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return [u.ru_utime, u.ru_stime, float(u.ru_minflt)]


def usage_per_step(usage: List[List[float]]) -> Dict[str, Any]:
    """Mean user / system CPU seconds and minor page faults per timed step (and the faults of
    each step, in the JSON)."""
    steps = max(len(usage) - 1, 1)
    user, system, faults = (usage[-1][k] - usage[0][k] for k in range(3))
    return {"user_s_per_step": user / steps, "sys_s_per_step": system / steps,
            "minflt_per_step": faults / steps,
            "minflt_steps": [int(b[2] - a[2]) for a, b in zip(usage, usage[1:])]}


def our_overrides(job: Dict[str, Any], output_dir: str) -> List[str]:
    """Config overrides that turn a method's CIFAR-10 preset into one throughput measurement."""
    o = [f"data.root={job['data']}", f"data.num_workers={job['workers']}",
         f"augment.path={job['path']}", f"train.batch_size={job['batch_size']}",
         f"train.max_steps={job['warmup'] + job['steps']}", "train.epochs=100000",
         f"train.precision={job['precision']}", f"train.channels_last={job['channels_last']}",
         f"train.compile={job['compile']}", "train.log_every=1000000000",
         "logger.progress=false", "logger.wandb.mode=disabled", "logger.plot=false",
         "monitor.every_epochs=0", "checkpoint.every_epochs=0", "checkpoint.save_best=false",
         "checkpoint.keep_last=0", f"output_dir={output_dir}", "seed=0"]
    if job["subset"]:
        o.append(f"data.subset={job['subset']}")
    if job["image_size"]:
        o.append(f"data.image_size={job['image_size']}")
        o.append(f"backbone.cifar_stem={cifar_stem(job['image_size'])}")
    if job["backbone"]:
        o.append(f"backbone.name={job['backbone']}")
    return o + list(job["overrides"])


def run_ours(job: Dict[str, Any]) -> Dict[str, Any]:
    from vissl_lite.config import load_config
    from vissl_lite.engine.trainer import Trainer

    class TimedTrainer(Trainer):
        """The real Trainer, with a timestamp after each optimizer step. The device is
        synchronised only at the end of the warm-up and after the last step, so that the timing
        keeps the Trainer's own overlap of host and device work."""

        marks: List[float] = []
        usage: List[List[float]] = []

        def _step(self, batches):
            stats = super()._step(batches)
            device = self.components.runtime.device
            if len(self.marks) + 1 in (job["warmup"], self.components.total_steps):
                sync(device)
            self.marks.append(time.perf_counter())
            self.usage.append(process_usage())
            if len(self.marks) == job["warmup"]:
                reset_peak_memory(device)
            return stats

    with tempfile.TemporaryDirectory(prefix="vissl_throughput_") as out:
        cfg = load_config(preset(job["method"]), our_overrides(job, out))
        trainer = TimedTrainer(cfg)
        trainer.marks, trainer.usage = [], []
        trainer.fit()
        device = trainer.components.runtime.device
        marks = trainer.marks
        timed = len(marks) - job["warmup"]
        if timed < 1:
            raise SystemExit(f"only {len(marks)} steps ran; need more than --warmup "
                             f"{job['warmup']} (is the data set smaller than a batch?)")
        seconds = marks[-1] - marks[job["warmup"] - 1]
        return {"images_per_s": timed * cfg.train.batch_size / seconds, "seconds": seconds,
                "timed_steps": timed, "peak_gb": peak_memory_gb(device),
                "backbone": cfg.backbone.name, "device": str(device),
                "step_marks": marks[job["warmup"] - 1:],
                **usage_per_step(trainer.usage[job["warmup"] - 1:])}


# --------------------------------------------------------------------------- lightly rows

CIFAR_STEM_MAX_SIZE = 64


def cifar_stem(size: int) -> bool:
    """Both rows use the CIFAR stem (3x3 stride-1 conv, no max-pool) up to 64 px and the ImageNet
    stem (7x7 stride-2 conv and max-pool) above: a CIFAR stem at 224 px would run the first stage
    at 224x224, which no recipe does."""
    return size <= CIFAR_STEM_MAX_SIZE


def _resnet(name: str, size: int) -> torch.nn.Module:
    """A torchvision ResNet without its classifier, with the stem ``cifar_stem(size)`` picks."""
    import torchvision
    from torch import nn

    net = getattr(torchvision.models, name)()
    if cifar_stem(size):
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    net.num_features = net.fc.in_features
    net.fc = nn.Identity()
    return net


def lightly_parts(method: str, backbone_name: str, size: int):
    """(transform, model) as lightly's CIFAR-10 benchmark builds them; ``model(views) -> loss``.

    Heads as in that benchmark (docs/source/getting_started/benchmarks/cifar10_benchmark.py):
    SimCLR 512-512-128; Barlow Twins 2 layers 512-2048-2048; DINO a 2-layer MLP 512-2048-256
    then 2048 prototypes, EMA momentum 0.99. Views at ``size`` px without blur; SimCLR's colour
    jitter at strength 0.5 (as configs/simclr/cifar10_resnet18.yaml).
    """
    from torch import nn
    from lightly.loss import BarlowTwinsLoss, DINOLoss, NTXentLoss
    from lightly.models.modules import DINOProjectionHead, SimCLRProjectionHead
    from lightly.models.modules.heads import ProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import BYOLTransform, DINOTransform, SimCLRTransform
    from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform

    norm = {"mean": CIFAR_MEAN, "std": CIFAR_STD}
    backbone = _resnet(backbone_name, size)
    dim = backbone.num_features

    class TwoView(nn.Module):
        def __init__(self, head, criterion):
            super().__init__()
            self.backbone, self.head, self.criterion = backbone, head, criterion

        def forward(self, views):
            z0 = self.head(self.backbone(views[0]))
            z1 = self.head(self.backbone(views[1]))
            return self.criterion(z0, z1)

        def after_step(self):
            pass

    def dino_head():
        head = DINOProjectionHead(dim, 2048, 256, 2048, batch_norm=True)
        head.layers = ProjectionHead([(dim, 2048, nn.BatchNorm1d(2048), nn.GELU()),
                                      (2048, 256, None, None)]).layers  # 2 layers on CIFAR-10
        return head

    class DINO(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.head = dino_head()
            self.teacher_backbone = copy.deepcopy(backbone)
            self.teacher_head = dino_head()
            deactivate_requires_grad(self.teacher_backbone)
            deactivate_requires_grad(self.teacher_head)
            self.criterion = DINOLoss(output_dim=2048, warmup_teacher_temp_epochs=30)

        def forward(self, views):
            with torch.no_grad():
                teacher = [self.teacher_head(self.teacher_backbone(v)) for v in views[:2]]
            student = [self.head(self.backbone(v)) for v in views]
            return self.criterion(teacher, student, epoch=0)

        def after_step(self):
            update_momentum(self.backbone, self.teacher_backbone, m=0.99)
            update_momentum(self.head, self.teacher_head, m=0.99)

    if method == "simclr":
        transform = SimCLRTransform(input_size=size, cj_strength=0.5, gaussian_blur=0.0,
                                    normalize=norm)
        model = TwoView(SimCLRProjectionHead(dim, 512, 128), NTXentLoss(temperature=0.5))
    elif method == "barlow_twins":
        transform = BYOLTransform(BYOLView1Transform(input_size=size, gaussian_blur=0.0,
                                                     normalize=norm),
                                  BYOLView2Transform(input_size=size, gaussian_blur=0.0,
                                                     normalize=norm))
        projector = ProjectionHead([(dim, 2048, nn.BatchNorm1d(2048), nn.ReLU(inplace=True)),
                                    (2048, 2048, None, None)])  # 2 layers on CIFAR-10
        model = TwoView(projector, BarlowTwinsLoss(lambda_param=5e-3))
    elif method == "dino":
        transform = DINOTransform(global_crop_size=size, n_local_views=0,
                                  gaussian_blur=(0.0, 0.0, 0.0), normalize=norm)
        model = DINO()
    else:
        raise SystemExit(f"no lightly baseline for method '{method}'")
    return transform, model


def run_lightly(job: Dict[str, Any]) -> Dict[str, Any]:
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from vissl_lite.data import build_dataset
    from vissl_lite.data.config import DataConfig

    device = pick_device()
    torch.manual_seed(0)
    size = job["image_size"] or 32
    transform, model = lightly_parts(job["method"], job["backbone"] or "resnet18", size)
    data_cfg = OmegaConf.structured(DataConfig(name="imagefolder", root=job["data"],
                                               subset=job["subset"] or None))
    dataset = build_dataset(data_cfg, "train", transform=transform)
    workers = job["workers"]
    loader = DataLoader(dataset, batch_size=job["batch_size"], shuffle=True, drop_last=True,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0)
    model.to(device)
    memory_format = torch.channels_last if job["channels_last"] else torch.contiguous_format
    if job["channels_last"]:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.06 * job["batch_size"] / 128, momentum=0.9,
                                weight_decay=5e-4)
    step_model = torch.compile(model) if job["compile"] else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=job["precision"] == "bf16")
    if job["precision"] not in ("fp32", "bf16"):
        raise SystemExit("the lightly baseline runs fp32 or bf16")

    batches = iter(loader)
    total = job["warmup"] + job["steps"]
    start, marks, usage = None, [], []
    model.train()
    for i in range(total):
        try:
            views, _ = next(batches)
        except StopIteration:
            batches = iter(loader)
            views, _ = next(batches)
        views = [v.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                 for v in views]
        with autocast:
            loss = step_model(views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.after_step()
        if i == job["warmup"] - 1:
            sync(device)
            reset_peak_memory(device)
            start = time.perf_counter()
        if i >= job["warmup"] - 1:
            marks.append(time.perf_counter())
            usage.append(process_usage())
    sync(device)
    marks[-1] = time.perf_counter()
    usage[-1] = process_usage()
    seconds = time.perf_counter() - start
    if not torch.isfinite(loss.detach()).item():
        raise SystemExit(f"lightly baseline: non-finite loss {loss.item()}")
    return {"images_per_s": job["steps"] * job["batch_size"] / seconds, "seconds": seconds,
            "timed_steps": job["steps"], "peak_gb": peak_memory_gb(device),
            "backbone": job["backbone"] or "resnet18", "device": str(device), "step_marks": marks,
            **usage_per_step(usage)}


# --------------------------------------------------------------------------- driver

def parse_args(argv=None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[-2:]))
    ap.add_argument("--methods", nargs="+", default=list(LIGHTLY_METHODS),
                    help="methods (CIFAR-10 presets in configs/; default: %(default)s)")
    ap.add_argument("--backbone", default=None,
                    help="backbone.name override (default: each preset's, ResNet-18 CIFAR stem "
                         "for simclr / barlow_twins / dino)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=50, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (>= 1)")
    ap.add_argument("--workers", type=int, default=min(cores or 1, 16),
                    help="DataLoader workers of the CPU paths (default: cores, at most 16)")
    ap.add_argument("--image-size", type=int, default=None,
                    help="view size (default: the preset's, 32)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--data", default=default_data(),
                    help="CIFAR-10 ImageFolder dir or .tar.gz (default: $CIFAR10_ROOT, else "
                         "../shared/datasets/cifar10-jpeg.tar.gz beside the repository)")
    ap.add_argument("--subset", type=int, default=None,
                    help="train on a class-balanced subset of N images (default: all)")
    ap.add_argument("--paths", nargs="+", default=["cpu", "gpu", "lightly"],
                    choices=["cpu", "gpu", "lightly"], help="which rows to run")
    ap.add_argument("--lightly-path", default=os.environ.get("LIGHTLY_SITE"),
                    help="folder added to PYTHONPATH of the lightly rows (e.g. /tmp/lightly_site)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every row N times, interleaved, and report the median images/s")
    ap.add_argument("--markdown", default=None, metavar="OUT", help="also write the table here")
    ap.add_argument("--json", default=None, metavar="OUT", help="write the raw results here")
    ap.add_argument("-o", "--override", dest="overrides", nargs="+", action="extend", default=[],
                    metavar="KEY=VALUE", help="extra config overrides for our rows")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.repeat < 1:
        ap.error("--warmup, --steps and --repeat must be >= 1")
    return args


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One row from repeated runs: the median images/s (robust to a noisy neighbour on a shared
    machine), the largest peak memory; an error if any run failed."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    rates = sorted(r["images_per_s"] for r in runs)
    mid = len(rates) // 2
    median = rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2
    return {**runs[0], "images_per_s": median, "peak_gb": max(r["peak_gb"] for r in runs),
            "all_images_per_s": rates}


ROW_LABEL = {"cpu": "vissl_lite, augment.path=cpu", "gpu": "vissl_lite, augment.path=gpu",
             "lightly": "lightly 1.6.0 reference"}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.job:
        job = json.loads(args.job)
        emit_result(run_lightly(job) if job["path"] == "lightly" else run_ours(job))
        return 0

    data = check_data(args.data)
    device = pick_device()
    script = Path(__file__).resolve()
    want_lightly = "lightly" in args.paths
    has_lightly = want_lightly and lightly_available(args.lightly_path)
    if want_lightly and not has_lightly:
        print(LIGHTLY_INSTALL.format(script="benchmarks/throughput.py"), file=sys.stderr)
    gpu_label = ROW_LABEL["gpu"] + ("" if device.type == "cuda" else " (batched, on CPU tensors)")

    header = (f"device: {device_description(device)}\n"
              f"data: {data}{f' (subset {args.subset})' if args.subset else ''}; batch "
              f"{args.batch_size}; {args.warmup} warm-up + {args.steps} timed steps; "
              f"{args.workers} DataLoader workers; {args.precision}"
              f"{', channels_last' if args.channels_last else ''}"
              f"{', torch.compile' if args.compile else ''}"
              f"{f'; median of {args.repeat} interleaved runs' if args.repeat > 1 else ''}")
    print(header, flush=True)
    headers = ["method", "backbone", "pipeline", "images/s", memory_label(device),
               "ours / lightly"]
    rows, results = [], []
    for method in args.methods:
        base = dict(method=method, data=data, batch_size=args.batch_size, steps=args.steps,
                    warmup=args.warmup, workers=args.workers, image_size=args.image_size,
                    precision=args.precision, channels_last=args.channels_last,
                    compile=args.compile, subset=args.subset, backbone=args.backbone,
                    overrides=args.overrides)
        plan = [p for p in ("cpu", "gpu") if p in args.paths]
        backbone = args.backbone or "resnet18"
        if has_lightly and method in LIGHTLY_METHODS and backbone.startswith("resnet"):
            plan.append("lightly")
        if not plan:
            continue
        runs: Dict[str, List[Dict[str, Any]]] = {p: [] for p in plan}
        for rep in range(args.repeat):
            for path in plan[rep % len(plan):] + plan[:rep % len(plan)]:
                started = time.perf_counter()
                r = run_child(script, {**base, "path": path},
                              args.lightly_path if path == "lightly" else None)
                r.update(method=method, path=path, repeat=rep,
                         wall_s=time.perf_counter() - started)
                runs[path].append(r)
                results.append(r)
                if "error" in r:
                    print(f"{method} / {path}: FAILED\n{r['error']}", file=sys.stderr, flush=True)
                else:
                    print(f"{method:<14}{path:<9}{r['images_per_s']:>10,.1f} img/s  "
                          f"{r['peak_gb']:.2f} GB  ({r['wall_s']:.0f} s); main process per "
                          f"step: {r['user_s_per_step']:.2f} s user, {r['sys_s_per_step']:.2f} s "
                          f"sys, {r['minflt_per_step']:,.0f} minor faults", flush=True)
        method_rows = {path: summarize(rs) for path, rs in runs.items()}
        ref = method_rows.get("lightly", {}).get("images_per_s")
        for path, r in method_rows.items():
            label = gpu_label if path == "gpu" else ROW_LABEL[path]
            if "error" in r:
                rows.append([method, r.get("backbone", backbone), label, "failed", "-", "-"])
                continue
            ratio = (f"{r['images_per_s'] / ref:.2f}x" if ref and path != "lightly"
                     else "-")
            rows.append([method, r["backbone"], label, fmt_rate(r['images_per_s']),
                         f"{r['peak_gb']:.2f}", ratio])

    table = markdown_table(headers, rows)
    print("\n" + table)
    note = ("" if has_lightly or not want_lightly
            else "\n(lightly rows skipped: lightly is not importable; see the message above)\n")
    write_text(args.markdown, f"`{command_line()}`\n\n{header}\n\n{table}\n{note}")
    write_text(args.json, json.dumps({"header": header, "results": results}, indent=2) + "\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
