"""Images/s of the view pipelines: CPU path (DataLoader workers) vs batched GPU path.

For SimCLR two-view and DINO multi-crop at each input size, prints one row per CPU worker count
and one for the GPU path (on CUDA when present, else on CPU tensors, labelled). Images are held
decoded in memory as uint8 for both paths, so the table compares augmentation alone (JPEG
decoding would slow the CPU path further). "images/s" counts source images; each yields all its
views.

    python benchmarks/augment_throughput.py --data ../shared/datasets/cifar10-jpeg.tar.gz
    python benchmarks/augment_throughput.py --sizes 32 --workers 0 2 4 8 16 --gpu-batch 1024
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from vissl_lite.augment import ViewSpec, build_cpu_views, build_gpu_views
from vissl_lite.data import load_uint8


def load_images(data: str | None, num: int):
    """(N, 3, H, W) uint8: a class-balanced ``num`` of the train split of an ImageFolder archive
    or folder, through the decode-once uint8 cache that training uses; else synthetic 32x32."""
    if not data:
        return torch.randint(0, 256, (num, 3, 32, 32), dtype=torch.uint8), "synthetic"
    images, _ = load_uint8({"name": "imagefolder", "root": data, "subset": num}, "train")
    return images, f"{Path(data).name} ({len(images)} images)"


class InMemory(Dataset):
    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i])


def cpu_rate(images, spec, size, workers, batch, batches):
    loader = DataLoader(InMemory(images, build_cpu_views(spec, None, size)), batch_size=batch,
                        shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=False)
    it = iter(loader)
    next(it)  # worker start-up and first batch excluded
    start = time.perf_counter()
    done = 0
    for _ in range(batches):
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            next(it)
        done += batch
    return done / (time.perf_counter() - start)


def gpu_rate(images, spec, size, batch, batches, device):
    pipe = build_gpu_views(spec, None, size)
    images = images.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    pipe(images[:batch])
    sync()
    start = time.perf_counter()
    for _ in range(batches):
        idx = torch.randint(0, len(images), (batch,), device=device)
        pipe(images[idx])
    sync()
    return batch * batches / (time.perf_counter() - start)


def main():
    cores = os.cpu_count() or 1
    default_workers = sorted({0, 1, 2, *[2 ** k for k in range(2, 8) if 2 ** k < cores], cores})
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    ap.add_argument("--workers", type=int, nargs="+", default=default_workers)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
    ap.add_argument("--gpu-batch", type=int, default=None,
                    help="batch of the GPU path (default: --batch); larger batches amortise "
                         "kernel launches")
    ap.add_argument("--gpu-batches", type=int, default=None, help="default: --batches")
    ap.add_argument("--num-local", type=int, default=8, help="DINO local crops")
    ap.add_argument("--num-images", type=int, default=2048)
    ap.add_argument("--pipelines", nargs="+", default=["simclr", "dino"], choices=["simclr", "dino"])
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu (for the GPU path)")
    ap.add_argument("--data", default=None, help="CIFAR-10 JPEG archive or folder (default: synthetic)")
    args = ap.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    gpu_label = ("gpu path" if device.type == "cuda"
                 else f"gpu path on CPU tensors ({torch.get_num_threads()} threads)")
    base, source = load_images(args.data, args.num_images)
    print(f"data: {source}; batch {args.batch}; {args.batches} timed batches; {cores} CPU cores; "
          f"GPU path device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    print(f"{'pipeline':<22}{'size':>6}  {'path':<44}{'images/s':>12}")
    specs = {"simclr": ViewSpec("simclr", 2, 0), "dino": ViewSpec("dino", 2, args.num_local)}
    for size in args.sizes:
        images = base if base.shape[-1] == size else TF.resize(base, [size, size], antialias=True)
        for name in args.pipelines:
            spec = specs[name]
            label = "SimCLR 2 views" if name == "simclr" else f"DINO 2+{args.num_local} crops"
            best_cpu = 0.0
            for w in args.workers:
                rate = cpu_rate(images, spec, size, w, args.batch, args.batches)
                best_cpu = max(best_cpu, rate)
                print(f"{label:<22}{size:>6}  {f'cpu path, {w} workers':<44}{rate:>12,.0f}", flush=True)
            gpu_batch = args.gpu_batch or args.batch
            rate = gpu_rate(images, spec, size, gpu_batch, args.gpu_batches or args.batches, device)
            print(f"{label:<22}{size:>6}  {f'{gpu_label}, batch {gpu_batch}':<44}{rate:>12,.0f}"
                  f"  ({rate / best_cpu:.1f}x the best cpu row)", flush=True)


if __name__ == "__main__":
    main()
