"""Images/s of each training data path on an ImageNet-like folder of JPEGs, beside lightly's.

The data: CIFAR-10 training images upscaled to 256x256 (bicubic) and saved as JPEGs (quality 90)
in an ImageFolder tree, ``--num`` of them (class-balanced), generated once into ``--work``. Each
path turns files into SimCLR's two 224-px views (crop, flip, colour jitter, grayscale, blur,
normalise) in a DataLoader with ``--workers`` processes; "images/s" counts source images (each
yields both views), after one warm-up batch. ``--view-size 32`` instead re-saves the CIFAR images
at 32x32 and makes the recipe's CIFAR views (jitter strength 0.5, no blur; lightly's
``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)``).

    python benchmarks/data_throughput.py --data ../shared/datasets/cifar10-jpeg.tar.gz
    PYTHONPATH=/tmp/lightly_site python benchmarks/data_throughput.py --workers 0 2    # + lightly

Paths:
  folder      vissl_lite's CPU path: ImageFolder files -> PIL decode -> PIL-op views
              (augment/cpu.py; CPULoader, per-sample seeded), what ``augment.path=cpu`` trains with.
  shards      the same views from tar shards (``data.name=shards``, ``vissl-lite shard``).
  lightly     lightly 1.6's ``SimCLRTransform(input_size=224)`` (the CIFAR settings above at 32)
              over torchvision's ImageFolder in a plain DataLoader (only when lightly imports).
  hybrid      ``data.gpu_decode=true``: workers read bytes, ``decode_jpeg`` of the batch and the
              batched GPU views on the device (CUDA when present, else CPU tensors, labelled).
  decode      PIL decode alone (``Image.open().convert("RGB")``), the floor of every CPU path.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vissl_lite.augment import ViewSpec, build_cpu_views, build_gpu_views  # noqa: E402
from vissl_lite.data import build_dataset  # noqa: E402
from vissl_lite.data.hybrid import HybridLoader  # noqa: E402
from vissl_lite.data.loader import CPULoader  # noqa: E402
from vissl_lite.data.shards import ShardLoader, write_shards  # noqa: E402

try:
    from benchmarks._common import default_data
except ImportError:  # run as a script from benchmarks/
    from _common import default_data  # type: ignore[no-redef]


def make_folder(source: str, out: Path, num: int, size: int = 256) -> Path:
    """``num`` class-balanced CIFAR-10 train images upscaled to ``size`` px JPEGs (once)."""
    done = out / f".complete-{num}-{size}"
    if done.is_file():
        return out
    data = build_dataset({"root": source, "subset": num}, "train")
    for i in range(len(data)):
        image, label = data[i]
        folder = out / "train" / data.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        image.resize((size, size), Image.BICUBIC).save(folder / f"{i:06d}.jpg", quality=90)
    done.write_text("ok\n")
    return out


def rate(batches, batch_size: int, steps: int) -> float:
    """Source images per second over ``steps`` batches after the first (warm-up)."""
    it = iter(batches)
    next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch_size / (time.perf_counter() - start)


class _DecodeOnly(torch.utils.data.Dataset):
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        with Image.open(self.samples[i][0]) as im:
            im.convert("RGB")
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=default_data(), help="CIFAR-10 ImageFolder dir or .tar.gz")
    ap.add_argument("--work", default="/tmp/vissl_data_throughput", help="generated data folder")
    ap.add_argument("--num", type=int, default=2000, help="images to generate")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8, help="timed batches per measurement")
    ap.add_argument("--view-size", type=int, default=224, choices=[224, 32],
                    help="224: views of 256-px JPEGs; 32: CIFAR views of 32-px JPEGs")
    ap.add_argument("--paths", nargs="+", default=["decode", "folder", "shards", "hybrid",
                                                   "lightly"])
    args = ap.parse_args()

    work = Path(args.work)
    size = args.view_size
    source = 256 if size == 224 else 32
    folder = make_folder(args.data, work / ("jpeg" if size == 224 else "jpeg32"), args.num, source)
    shards = work / ("shards" if size == 224 else "shards32")
    if not (shards / "index.json").is_file():
        write_shards(build_dataset({"root": str(folder)}, "train"), shards, shard_size=100)
    views = build_cpu_views(ViewSpec("simclr", 2, 0), None, size)
    dataset = build_dataset({"root": str(folder)}, "train")
    try:
        from lightly.transforms import SimCLRTransform
        from torchvision.datasets import ImageFolder
    except ImportError:
        SimCLRTransform = None

    lightly_kw = {} if size == 224 else dict(cj_strength=0.5, gaussian_blur=0.0)
    print(f"{len(dataset)} JPEGs of {source}x{source} in {folder}; SimCLR 2 views at {size}; batch "
          f"{args.batch_size}; {os.cpu_count()} CPU cores; torch {torch.__version__}")
    print(f"{'path':<14} {'workers':>7} {'images/s':>9}")
    for workers in args.workers:
        rows = {
            "decode": lambda: DataLoader(_DecodeOnly(dataset.samples), batch_size=args.batch_size,
                                         shuffle=True, num_workers=workers),
            "folder": lambda: _epoch(CPULoader(dataset, views, args.batch_size, seed=0,
                                               num_workers=workers)),
            "shards": lambda: _epoch(ShardLoader(shards, views, args.batch_size, seed=0,
                                                 num_workers=workers, shuffle_buffer=200)),
        }
        device = "cuda" if torch.cuda.is_available() else "cpu"
        rows["hybrid"] = lambda: _epoch(HybridLoader(
            dataset, build_gpu_views(ViewSpec("simclr", 2, 0), None, size), args.batch_size, source,
            seed=0, num_workers=workers, device=device))
        if SimCLRTransform is not None:
            rows["lightly"] = lambda: DataLoader(
                ImageFolder(str(folder / "train"),
                            transform=SimCLRTransform(input_size=size, **lightly_kw)),
                batch_size=args.batch_size, shuffle=True, num_workers=workers, drop_last=True)
        for name, make in rows.items():
            if name not in args.paths:
                continue
            label = f"{name} ({device})" if name == "hybrid" else name
            print(f"{label:<14} {workers:>7} {rate(make(), args.batch_size, args.steps):>9.1f}",
                  flush=True)
    if SimCLRTransform is None:
        print("lightly: not importable (install it on the side, see benchmarks/_common.py)")
    if not torch.cuda.is_available():
        print("no CUDA here: the hybrid row decoded and augmented on CPU tensors; GPU figures "
              "were not measured")


def _epoch(loader):
    loader.set_epoch(0)
    return loader


if __name__ == "__main__":
    main()
