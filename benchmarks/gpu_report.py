"""One-command GPU speed report: everything needed to judge vissl_lite's hot path on one GPU.

    python benchmarks/gpu_report.py --out results/gpu_report            # one GPU, < 10 minutes
    python benchmarks/gpu_report.py --toy --out /tmp/gpu_report         # CPU smoke run, seconds

Prints and writes ``report.md`` and ``report.json`` (in ``--out``):

1. Environment: device, driver, CUDA, torch, timm, torchvision.
2. End to end (the real ``Trainer``, benchmarks/throughput.py ``run_ours``; lightly's pipeline
   via its ``run_lightly``), images/s median and 95% interval over windows of steps, ms/step:
   the headline method (SimCLR, ResNet-18, CIFAR-10, batch 512) as lightly 1.6's reference,
   ours with the CPU path, ours with the GPU path at fp32 / bf16 / bf16+channels_last /
   bf16+channels_last+compile; then every registered method at its fast setting (GPU path, bf16,
   channels_last for ResNets; ``--compile-methods`` adds torch.compile) beside lightly's where
   lightly has the method.
3. Per method, in this process on resident data (GPU path, same fast setting): the model alone
   (training step + backward + optimizer on views made once), the augmentation alone, per-stage
   device times from CUDA events (index+augment, forward, backward, optimizer, EMA = the method's
   ``on_step_end``; host idle = wall time per step minus the device stages, i.e. time the device
   waited for the host), host-device syncs per step (``torch.cuda.set_sync_debug_mode("warn")``
   and a warnings catcher), graphs and graph breaks of ``training_step`` at its first step and
   its compiles over 3 steps (one ``torch.compile`` trace with a counting backend), peak memory.
4. kNN top-1 (k=200) on CIFAR-10 after ``--knn-epochs`` epochs: ours (the Trainer on the
   headline preset) against the lightly-recipe reference trained as long.
5. kNN search speed: 50k x 10k features (512-d), top-200, torch backend (no faiss needed).
6. PASS / FAIL lines against the targets below (SKIP where a figure cannot judge them: CPU, toy).

Targets: SimCLR ResNet-18 CIFAR-10 batch 512 >= 20,000 img/s end to end and >= 5x lightly side
by side; every method >= 3x lightly; augmentation alone >= 3x the end-to-end rate; kNN over
50k x 10k features top-200 < 0.1 s.

``--toy``: tiny sizes, a few steps, synthetic images (a small ImageFolder written to a temporary
folder), the methods' ``tiny_config`` heads and small backbones, everything in this process: it
checks that the script runs (tests/test_gpu_report.py), its figures judge nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as tp  # noqa: E402
from _common import (check_data, command_line, default_data, device_description,  # noqa: E402
                     fmt_rate, lightly_available, markdown_table, peak_memory_gb, pick_device,
                     preset, reset_peak_memory, run_child, sync, write_text)

HEADLINE = "simclr"
TARGETS = {"e2e_images_per_s": 20_000, "vs_lightly_headline": 5.0, "vs_lightly_method": 3.0,
           "augment_vs_e2e": 3.0, "knn_seconds": 0.1}
VARIANTS = [("fp32", dict(precision="fp32", channels_last=False, compile=False)),
            ("bf16", dict(precision="bf16", channels_last=False, compile=False)),
            ("bf16+channels_last", dict(precision="bf16", channels_last=True, compile=False)),
            ("bf16+channels_last+compile", dict(precision="bf16", channels_last=True,
                                                compile=True))]


# ------------------------------------------------------------------------------ helpers ------

def registered_methods() -> List[str]:
    from vissl_lite.registry import METHODS
    return [n for n, cls in METHODS.items() if cls.__module__.startswith("vissl_lite.methods")]


def interval(rates: List[float]) -> Dict[str, float]:
    """Median and the 2.5 / 97.5 percentiles of per-window rates."""
    if not rates:
        return {"median": float("nan"), "lo": float("nan"), "hi": float("nan")}
    s = sorted(rates)
    pick = lambda q: s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]  # noqa: E731
    return {"median": statistics.median(s), "lo": pick(0.025), "hi": pick(0.975)}


def window_rates(marks: List[float], batch: int, windows: int = 10) -> List[float]:
    """Images/s over consecutive windows of steps from per-step timestamps."""
    steps = len(marks) - 1
    w = max(1, steps // windows)
    return [w * batch / (marks[i + w] - marks[i]) for i in range(0, steps - w + 1, w)
            if marks[i + w] > marks[i]]


def fmt_interval(iv: Dict[str, float]) -> str:
    return f"{fmt_rate(iv['median'])} [{fmt_rate(iv['lo'])}, {fmt_rate(iv['hi'])}]"


def small_overrides(method: str, toy: bool) -> List[str]:
    """Toy runs: the method's tiny heads and a small backbone of a family it supports."""
    if not toy:
        return []
    from vissl_lite.registry import METHODS
    cls = METHODS.get(method)
    o = [f"method.{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"
         for k, v in cls.tiny_config.items()]
    if cls.supported_backbones and "resnet" not in cls.supported_backbones:
        return o + ["backbone.name=vit_tiny_patch4"]
    return o + ["augment.global_size=8"]     # a ResNet-18 on 8 px views: cheap on a CPU


def fast_setting(method: str, device: torch.device, compile_methods: bool) -> Dict[str, Any]:
    """What ``auto`` gives on this device (compile only with ``--compile-methods``)."""
    from vissl_lite.autoconf import resolve_auto
    from vissl_lite.config import load_config
    cfg = resolve_auto(load_config(preset(method), ["data.name=cifar10", *ALL_AUTO],
                                   require=()), device)
    return dict(precision=cfg.train.precision, channels_last=bool(cfg.train.channels_last),
                compile=bool(cfg.train.compile) and compile_methods)


ALL_AUTO = ["train.precision=auto", "train.channels_last=auto", "train.compile=auto"]


def write_toy_imagefolder(root: Path, n: int = 16, size: int = 16, classes: int = 4) -> Path:
    """A tiny ImageFolder (train/ and test/) of random PNGs: smooth colour blobs per class."""
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", n), ("test", n // 2)):
        for i in range(count):
            c = i % classes
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            base = torch.tensor([60 + 50 * c, 200 - 40 * c, 100 + 30 * (c % 2)]).view(3, 1, 1)
            img = (base + torch.randint(-40, 40, (3, size, size), generator=g)).clamp(0, 255)
            Image.fromarray(img.byte().permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return root


# ------------------------------------------------------------- end to end (the Trainer) ------

def e2e_job(args, method: str, path: str, setting: Dict[str, Any]) -> Dict[str, Any]:
    return dict(method=method, data=args.data, batch_size=args.batch_size, steps=args.steps,
                warmup=args.warmup, workers=args.workers, image_size=args.image_size,
                subset=args.subset, backbone=None, path=path,
                overrides=["data.name=imagefolder", f"data.cache_dir={args.cache_dir}",
                           *small_overrides(method, args.toy)], **setting)


def run_e2e(args, job: Dict[str, Any]) -> Dict[str, Any]:
    """One end-to-end row: in a child process (its own peak memory), in-process for --toy."""
    started = time.perf_counter()
    if args.toy:
        r = tp.run_lightly(job) if job["path"] == "lightly" else tp.run_ours(job)
    else:
        script = Path(tp.__file__).resolve()
        r = run_child(script, job, args.lightly_path if job["path"] == "lightly" else None)
    if "error" in r:
        return r
    iv = interval(window_rates(r.pop("step_marks", []), job["batch_size"]))
    r.update(interval=iv, ms_per_step=1000 * job["batch_size"] / r["images_per_s"],
             wall_s=time.perf_counter() - started)
    return r


# ------------------------------------------------- the step in this process, per stage -------

class StageTimer:
    """Device times of named stages (CUDA events; on CPU the host clock, the ops being
    synchronous there)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: List[Any] = []

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append(e)
        else:
            self.marks.append(time.perf_counter())

    def elapsed_ms(self) -> List[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [1000 * (b - a) for a, b in zip(self.marks, self.marks[1:])]


STAGES = ("index+augment", "forward", "backward", "optimizer", "EMA")


def build_parts(args, method_name: str, setting: Dict[str, Any], device: torch.device):
    from vissl_lite.augment import build_gpu_views
    from vissl_lite.config import global_view_size, load_config
    from vissl_lite.engine.optim import build_optimizer, scaled_lr
    from vissl_lite.methods import build_method
    cfg = load_config(preset(method_name), [
        "data.name=imagefolder", f"train.batch_size={args.batch_size}",
        *([f"data.image_size={args.image_size}"] if args.image_size else []),
        *small_overrides(method_name, args.toy)], require=())
    method = build_method(cfg).to(device)
    if setting["channels_last"]:
        method.to(memory_format=torch.channels_last)
    method.setup(total_steps=10_000, steps_per_epoch=100)
    method.train()
    views = build_gpu_views(method.views, cfg.augment, global_view_size(cfg))
    optimizer = build_optimizer(cfg.optim, method, scaled_lr(cfg.optim, args.batch_size))
    return cfg, method, views, optimizer


def measure_step(args, method_name: str, setting: Dict[str, Any], images: torch.Tensor,
                 device: torch.device) -> Dict[str, Any]:
    """Model alone, augmentation alone, stage times, syncs per step and peak memory."""
    cfg, method, views_fn, optimizer = build_parts(args, method_name, setting, device)
    b, n = args.batch_size, images.shape[0]
    memory_format = torch.channels_last if setting["channels_last"] else torch.contiguous_format
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=setting["precision"] == "bf16")
    step_fn = torch.compile(method) if setting["compile"] else method
    gen = torch.Generator(device=device).manual_seed(0)
    order = torch.randperm(n, device=device, generator=gen)

    def batch_views(i: int):
        start = (i * b) % max(1, n - b + 1)
        idx = order[start:start + b]
        vs = views_fn(images.index_select(0, idx), generator=gen)
        return {"views": [v.contiguous(memory_format=memory_format) for v in vs],
                "labels": idx, "index": idx}

    def train_step(batch, step: int, timer: Optional[StageTimer] = None):
        with autocast:
            out = step_fn(batch)
        timer and timer.mark()
        out.loss.backward()
        timer and timer.mark()
        method.on_before_optimizer_step(step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer and timer.mark()
        method.on_step_end(step, 10_000)
        timer and timer.mark()
        return out.loss

    for i in range(args.warmup):                                  # compile, autotune, caches
        train_step(batch_views(i), i)
    sync(device)
    reset_peak_memory(device)

    # the whole step, per stage, syncs counted
    stage_ms: List[List[float]] = []
    walls: List[float] = []
    sync_warnings = 0
    debug = device.type == "cuda"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if debug:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            for i in range(args.steps):
                timer = StageTimer(device)
                t0 = time.perf_counter()
                timer.mark()
                batch = batch_views(args.warmup + i)
                timer.mark()
                train_step(batch, args.warmup + i, timer)
                if debug:
                    torch.cuda.set_sync_debug_mode(0)
                stage_ms.append(timer.elapsed_ms())                # synchronises (not counted)
                walls.append(1000 * (time.perf_counter() - t0))
                if debug:
                    torch.cuda.set_sync_debug_mode("warn")
        finally:
            if debug:
                torch.cuda.set_sync_debug_mode(0)
        sync_warnings = sum("synchroniz" in str(w.message).lower() for w in caught)
    stages = {name: statistics.median(s[k] for s in stage_ms) for k, name in enumerate(STAGES)}
    wall = statistics.median(walls)
    stages["host idle"] = max(0.0, wall - sum(stages.values()))
    peak = peak_memory_gb(device)

    # the model alone: one batch of views made once, reused
    fixed = batch_views(0)
    model_rates = timed_windows(lambda i: train_step(fixed, i), args, device, b)
    # the augmentation alone on resident uint8
    aug_rates = timed_windows(lambda i: batch_views(i), args, device, b)
    return {"stages_ms": stages, "wall_ms": wall, "syncs_per_step": sync_warnings / args.steps
            if debug else None, "peak_gb": peak, "model_alone": interval(model_rates),
            "augment_alone": interval(aug_rates), **setting}


def timed_windows(fn: Callable[[int], Any], args, device: torch.device, batch: int) -> List[float]:
    """Images/s of ``fn`` over windows of steps (device synchronised at window edges only)."""
    windows = 2 if args.toy else 5
    per = max(1, args.steps // windows)
    rates = []
    sync(device)
    for w in range(windows):
        t0 = time.perf_counter()
        for i in range(per):
            fn(w * per + i)
        sync(device)
        rates.append(per * batch / (time.perf_counter() - t0))
    return rates


def graph_report(args, method_name: str) -> Dict[str, Any]:
    """Graphs and graph breaks of ``training_step`` at the first step and compiles over 3 steps,
    from one trace with a counting backend (on CPU tensors, small batch and the method's tiny
    heads: what dynamo captures does not depend on the device or the widths)."""
    import torch._dynamo
    from vissl_lite.config import global_view_size
    small = argparse.Namespace(**{**vars(args), "toy": True, "batch_size": 4})
    compiles: List[Any] = []
    out: Dict[str, Any] = {}
    try:   # a config the load-time checks refuse at batch 4 (W-MSE's w_size) is a finding too
        cfg, method, views_fn, _ = build_parts(small, method_name, VARIANTS[0][1],
                                               torch.device("cpu"))
        size = global_view_size(cfg)
        images = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)
        torch._dynamo.reset()
        fn = torch.compile(method.training_step,
                           backend=lambda gm, _: compiles.append(gm) or gm.forward)
        for step in range(3):
            fn({"views": views_fn(images), "labels": torch.zeros(4, dtype=torch.long),
                "index": torch.arange(4)})
            method.on_step_end(step, 10)
            if step == 0:
                out.update(graphs=len(compiles), graph_breaks=max(0, len(compiles) - 1))
        out["compiles_in_3_steps"] = len(compiles) - out["graphs"] + 1
    except Exception as e:  # a failure to trace is itself the finding
        out.update(error=str(e).splitlines()[0][:200])
    torch._dynamo.reset()
    return out


# ------------------------------------------------------------------------------- kNN ---------

def knn_accuracy_ours(args, device: torch.device, data) -> Dict[str, Any]:
    """The Trainer on the headline preset for --knn-epochs epochs, then kNN on its encoder."""
    from vissl_lite.config import load_config
    from vissl_lite.engine.trainer import Trainer
    with tempfile.TemporaryDirectory(prefix="vissl_gpu_report_") as out:
        job = e2e_job(args, HEADLINE, "gpu" if device.type == "cuda" else "cpu",
                      fast_setting(HEADLINE, device, True))
        o = tp.our_overrides({**job, "warmup": 0, "steps": 10 ** 9}, out)
        o = [x for x in o if not x.startswith(("train.max_steps", "train.epochs"))]
        cfg = load_config(preset(HEADLINE), [*o, f"train.epochs={args.knn_epochs}"])
        started = time.perf_counter()
        trainer = Trainer(cfg)
        trainer.fit()
        seconds = time.perf_counter() - started
        encoder = trainer.components.method.backbone_for_eval()
    return {"top1": knn_top1(encoder, data, device), "train_seconds": seconds,
            "epochs": args.knn_epochs}


def knn_accuracy_lightly(args, device: torch.device, data) -> Dict[str, Any]:
    """lightly's SimCLR recipe (throughput.lightly_parts) trained --knn-epochs epochs."""
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader
    from vissl_lite.data import build_dataset
    from vissl_lite.data.config import DataConfig
    torch.manual_seed(0)
    transform, model = tp.lightly_parts(HEADLINE, "resnet18", args.image_size or 32)
    dataset = build_dataset(OmegaConf.structured(DataConfig(
        name="imagefolder", root=args.data, subset=args.subset)), "train", transform=transform)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0)
    model.to(device).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                lr=0.06 * args.batch_size / 128, momentum=0.9, weight_decay=5e-4)
    started = time.perf_counter()
    for _ in range(args.knn_epochs):
        for views, _ in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model([v.to(device, non_blocking=True) for v in views])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return {"top1": knn_top1(model.backbone, data, device),
            "train_seconds": time.perf_counter() - started, "epochs": args.knn_epochs}


def knn_top1(encoder, data, device: torch.device) -> float:
    from vissl_lite.eval.features import extract_features
    from vissl_lite.eval.knn import knn_classify
    (train_x, train_y), (test_x, test_y) = data
    kw = dict(device=device, mean=tp.CIFAR_MEAN, std=tp.CIFAR_STD, batch_size=512)
    tr = extract_features(encoder, train_x, labels=train_y, **kw)
    te = extract_features(encoder, test_x, labels=test_y, **kw)
    res = knn_classify(tr[0], tr[1], te[0], te[1], k=200, backend="torch", device=device)
    return res[f"knn_top1@{min(200, len(tr[0]))}"]


def knn_speed(device: torch.device, toy: bool) -> Dict[str, Any]:
    from vissl_lite.eval.knn import nearest_neighbors
    n, q, d, k = (500, 100, 64, 20) if toy else (50_000, 10_000, 512, 200)
    g = torch.Generator(device=device).manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(n, d, device=device, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(q, d, device=device, generator=g), dim=1)
    nearest_neighbors(bank, queries, k, "torch", device=device)          # warm-up
    times = []
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        nearest_neighbors(bank, queries, k, "torch", device=device)
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"bank": n, "queries": q, "dim": d, "k": k, "seconds": statistics.median(times)}


# ----------------------------------------------------------------------------- driver --------

def environment(device: torch.device) -> Dict[str, str]:
    import timm
    import torchvision
    env = {"device": device_description(device), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "timm": timm.__version__,
           "cuda": str(torch.version.cuda)}
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            import subprocess
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
    return env


def verdicts(report: Dict[str, Any], judged: bool) -> List[str]:
    """PASS / FAIL / SKIP lines against TARGETS."""
    lines = []

    def check(name: str, ok: Optional[bool], detail: str):
        status = "SKIP" if ok is None or not judged else ("PASS" if ok else "FAIL")
        lines.append(f"{status}  {name}: {detail}")

    head = report["headline"]
    best = max((r["images_per_s"] for k, r in head.items() if k.startswith("gpu") and
                "error" not in r), default=None)
    ref = head.get("lightly", {}).get("images_per_s")
    check("SimCLR R18 CIFAR-10 b512 end to end >= 20,000 img/s",
          None if best is None else best >= TARGETS["e2e_images_per_s"],
          f"best GPU-path row {fmt_rate(best) if best else 'n/a'} img/s")
    check(">= 5x lightly side by side (SimCLR)",
          None if not (best and ref) else best / ref >= TARGETS["vs_lightly_headline"],
          f"{best / ref:.2f}x" if best and ref else "lightly row missing")
    for m, r in report["methods"].items():
        mine, theirs = r.get("e2e", {}).get("images_per_s"), r.get("lightly", {}).get(
            "images_per_s")
        if theirs:
            check(f">= 3x lightly ({m})", None if not mine else mine / theirs >= 3.0,
                  f"{mine / theirs:.2f}x" if mine else "our row failed")
    aug = report["methods"].get(HEADLINE, {}).get("step", {}).get("augment_alone", {})
    check("augmentation alone >= 3x end to end (SimCLR)",
          None if not (aug and best) else aug["median"] >= 3 * best,
          f"{fmt_rate(aug['median'])} vs {fmt_rate(best)} img/s" if aug and best else "n/a")
    ks = report.get("knn_speed", {})
    check("kNN 50k x 10k top-200 < 0.1 s", None if not ks else ks["seconds"] < 0.1,
          f"{ks['seconds']:.4f} s ({ks['bank']} x {ks['queries']}, k={ks['k']})" if ks else "n/a")
    for m, r in report["methods"].items():
        g = r.get("graphs", {})
        check(f"{m}: one graph, no break, no recompile",
              g.get("graphs") == 1 and g.get("graph_breaks") == 0
              and g.get("compiles_in_3_steps") == 1,
              f"graphs {g.get('graphs')}, breaks {g.get('graph_breaks')}, compiles in 3 steps "
              f"{g.get('compiles_in_3_steps')}{' (' + g['error'] + ')' if 'error' in g else ''}")
        spp = r.get("step", {}).get("syncs_per_step")
        if spp is not None:
            check(f"{m}: no host-device sync in a step", spp == 0, f"{spp:g} syncs/step")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", action="store_true", help="CPU smoke run: tiny sizes, seconds")
    ap.add_argument("--methods", nargs="+", default=None,
                    help="per-method rows (default: every registered method)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 512 (toy: 4)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 50; toy: 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 10; toy 1)")
    ap.add_argument("--workers", type=int, default=min(cores or 1, 16))
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--subset", type=int, default=None)
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--cache-dir", default=None, help="uint8 cache (default: a temporary folder)")
    ap.add_argument("--knn-epochs", type=int, default=None, help="default 5 (toy: 1)")
    ap.add_argument("--compile-methods", action="store_true",
                    help="torch.compile the per-method rows too (adds compile time)")
    ap.add_argument("--lightly-path", default=os.environ.get("LIGHTLY_SITE"))
    ap.add_argument("--out", default="gpu_report", help="folder for report.md and report.json")
    args = ap.parse_args(argv)
    toy = args.toy
    args.batch_size = args.batch_size or (4 if toy else 512)
    args.steps = args.steps or (2 if toy else 50)
    args.warmup = args.warmup or (1 if toy else 10)
    args.knn_epochs = args.knn_epochs or (1 if toy else 5)
    if toy:
        args.workers, args.image_size = 0, args.image_size or 16
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cpu") if args.toy else pick_device()
    if args.toy:
        torch.set_num_threads(1)      # a smoke run on a shared CPU: no thread oversubscription
    torch.manual_seed(0)
    out_dir = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="vissl_gpu_report_") as tmp:
        if args.toy:
            args.data = str(write_toy_imagefolder(Path(tmp) / "toy"))
        args.data = check_data(args.data)
        args.cache_dir = args.cache_dir or str(Path(tmp) / "cache")
        report = run_report(args, device)
    judged = device.type == "cuda" and not args.toy
    lines = verdicts(report, judged)
    report["verdicts"] = lines
    text = render(report, args, lines)
    print(text)
    write_text(str(out_dir / "report.md"), f"`{command_line()}`\n\n{text}\n")
    write_text(str(out_dir / "report.json"), json.dumps(report, indent=2, default=str) + "\n")
    return 1 if any(line.startswith("FAIL") for line in lines) else 0


def run_report(args, device: torch.device) -> Dict[str, Any]:
    from omegaconf import OmegaConf
    from vissl_lite.data import load_uint8
    from vissl_lite.data.config import DataConfig
    has_lightly = lightly_available(args.lightly_path)
    report: Dict[str, Any] = {"environment": environment(device), "toy": args.toy,
                              "batch_size": args.batch_size, "steps": args.steps,
                              "lightly": has_lightly, "headline": {}, "methods": {}}
    cpu_setting = dict(precision="fp32", channels_last=False, compile=False)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    # 2. the headline, end to end
    head = report["headline"]
    plan = [("lightly", "lightly", dict(cpu_setting, precision="bf16" if device.type == "cuda"
                                        else "fp32"))] if has_lightly else []
    plan += [("cpu path", "cpu", cpu_setting)]
    plan += [(f"gpu path {label}", "gpu", s) for label, s in VARIANTS[:1 if args.toy else None]]
    for label, path, setting in plan:
        log(f"end to end: {HEADLINE} / {label}")
        head[label] = run_e2e(args, e2e_job(args, HEADLINE, path, setting))

    # 3. per method
    data_cfg = OmegaConf.structured(DataConfig(name="imagefolder", root=args.data,
                                               subset=args.subset, image_size=args.image_size,
                                               cache_dir=args.cache_dir))
    train = load_uint8(data_cfg, "train")
    images = train[0].to(device)
    for m in args.methods or registered_methods():
        row: Dict[str, Any] = {}
        setting = fast_setting(m, device, args.compile_methods) if not args.toy else cpu_setting
        if not args.toy:
            log(f"end to end: {m} / gpu path {setting}")
            row["e2e"] = run_e2e(args, e2e_job(args, m, "gpu", setting))
            if has_lightly and m in tp.LIGHTLY_METHODS:
                row["lightly"] = (head.get("lightly") if m == HEADLINE else run_e2e(
                    args, e2e_job(args, m, "lightly", dict(cpu_setting, precision="bf16"))))
        log(f"in process: {m}")
        try:
            row["step"] = measure_step(args, m, setting, images, device)
        except Exception as e:  # noqa: BLE001 - report and go on with the other methods
            row["step"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        log(f"graphs: {m}")
        row["graphs"] = graph_report(args, m)
        report["methods"][m] = row

    # 4. / 5. kNN
    test = load_uint8(data_cfg, "test")
    data = (train, test)
    log("kNN accuracy: ours")
    report["knn_accuracy"] = {"ours": knn_accuracy_ours(args, device, data)}
    if has_lightly:
        log("kNN accuracy: lightly recipe")
        report["knn_accuracy"]["lightly"] = knn_accuracy_lightly(args, device, data)
    log("kNN speed")
    report["knn_speed"] = knn_speed(device, args.toy)
    return report


def render(report: Dict[str, Any], args, lines: List[str]) -> str:
    env = report["environment"]
    out = ["# vissl_lite GPU report" + (" (toy run: figures judge nothing)" if args.toy else ""),
           "", "\n".join(f"- {k}: {v}" for k, v in env.items()), "",
           f"Batch {args.batch_size}, {args.warmup} warm-up + {args.steps} timed steps; "
           f"images/s as median [95% interval] over windows of steps.", "",
           f"## End to end: {HEADLINE} (Trainer; lightly 1.6 reference pipeline)", ""]
    rows = []
    ref = report["headline"].get("lightly", {}).get("images_per_s")
    for label, r in report["headline"].items():
        if "error" in r:
            rows.append([label, "failed", "-", "-", "-"])
            continue
        rows.append([label, fmt_interval(r["interval"]), f"{r['ms_per_step']:.1f}",
                     f"{r['peak_gb']:.2f}", f"{r['images_per_s'] / ref:.2f}x" if ref else "-"])
    out += [markdown_table(["pipeline", "images/s", "ms/step", "peak GB", "vs lightly"], rows), ""]

    out += ["## Per method", ""]
    rows = []
    for m, r in report["methods"].items():
        e2e, lt, st = r.get("e2e", {}), r.get("lightly") or {}, r.get("step", {})
        g = r.get("graphs", {})
        setting = "+".join(k if k != "precision" else st.get("precision", "?")
                           for k in ("precision", "channels_last", "compile") if st.get(k))
        rows.append([
            m, setting or "-",
            fmt_interval(e2e["interval"]) if "interval" in e2e else "-",
            f"{e2e['images_per_s'] / lt['images_per_s']:.2f}x"
            if "images_per_s" in e2e and "images_per_s" in lt else "-",
            fmt_interval(st["model_alone"]) if "model_alone" in st else st.get("error", "-"),
            fmt_interval(st["augment_alone"]) if "augment_alone" in st else "-",
            "-" if st.get("syncs_per_step") is None else f"{st['syncs_per_step']:g}",
            f"{g.get('graphs')}/{g.get('graph_breaks')}/{g.get('compiles_in_3_steps')}",
            f"{st['peak_gb']:.2f}" if "peak_gb" in st else "-"])
    out += [markdown_table(["method", "setting", "end to end img/s", "vs lightly",
                            "model alone img/s", "augment alone img/s", "syncs/step",
                            "graphs/breaks/compiles", "peak GB"], rows), ""]
    out += ["### Stage times per step (ms, median)", ""]
    rows = [[m, *(f"{r['step']['stages_ms'][s]:.2f}" for s in (*STAGES, "host idle")),
             f"{r['step']['wall_ms']:.2f}"]
            for m, r in report["methods"].items() if "stages_ms" in r.get("step", {})]
    out += [markdown_table(["method", *STAGES, "host idle", "wall"], rows), ""]

    ka = report.get("knn_accuracy", {})
    out += [f"## kNN (k=200) top-1 after {args.knn_epochs} epoch(s), {HEADLINE}", ""]
    out += [markdown_table(["run", "top-1 %", "train s"],
                           [[k, f"{v['top1']:.2f}", f"{v['train_seconds']:.1f}"]
                            for k, v in ka.items()]), ""]
    ks = report["knn_speed"]
    out += [f"kNN search: {ks['bank']} x {ks['queries']} ({ks['dim']}-d), top-{ks['k']}: "
            f"{ks['seconds'] * 1000:.1f} ms (torch backend)", "", "## Targets", ""]
    out += [f"    {line}" for line in lines]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
