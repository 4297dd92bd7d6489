"""Per image, one thread: our CPU SimCLR views (``build_cpu_views``) beside lightly's transform.

Decoded PIL images in memory (no file reads, no DataLoader): two SimCLR views per image at 224 px
from 256-px JPEGs (``data_throughput.py``'s folder, made on first use) against lightly 1.6's
``SimCLRTransform(input_size=224)``, and at 32 px from CIFAR-10 images against
``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)`` (the recipe's CIFAR
defaults on both sides). Rows alternate within each of ``--repeat`` rounds, so a busy machine
slows both alike; the ratio is per round, the range is over rounds.

    PYTHONPATH=.:/tmp/lightly_site python benchmarks/cpu_views.py --repeat 5   # lightly: _common.py
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vissl_lite.augment import ViewSpec, build_cpu_views  # noqa: E402
from vissl_lite.data import build_dataset  # noqa: E402

try:
    from benchmarks._common import LIGHTLY_INSTALL, default_data
    from benchmarks.data_throughput import make_folder
except ImportError:  # run as a script from benchmarks/
    from _common import LIGHTLY_INSTALL, default_data  # type: ignore[no-redef]
    from data_throughput import make_folder  # type: ignore[no-redef]


def per_image_ms(transform, images) -> float:
    start = time.perf_counter()
    for image in images:
        transform(image)
    return (time.perf_counter() - start) / len(images) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=default_data(), help="CIFAR-10 ImageFolder dir or .tar.gz")
    ap.add_argument("--work", default="/tmp/vissl_data_throughput", help="generated data folder")
    ap.add_argument("--images", type=int, default=200, help="images per size and round")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        from lightly.transforms import SimCLRTransform
    except ImportError:
        raise SystemExit(LIGHTLY_INSTALL.format(script="benchmarks/cpu_views.py"))

    folder = build_dataset({"root": str(make_folder(args.data, Path(args.work) / "jpeg", 2000))},
                           "train")
    step = max(1, len(folder) // args.images)
    large = [folder[i][0] for i in range(0, len(folder), step)][:args.images]
    cifar = build_dataset({"root": args.data, "subset": args.images}, "train")
    small = [cifar[i][0] for i in range(len(cifar))]
    assert all(im.size == (256, 256) for im in large) and small[0].size == (32, 32)
    cases = {
        224: (large, build_cpu_views(ViewSpec("simclr", 2, 0), None, 224),
              SimCLRTransform(input_size=224)),
        32: (small, build_cpu_views(ViewSpec("simclr", 2, 0), None, 32),
             SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)),
    }
    print(f"two SimCLR views per image, one thread, {args.images} decoded images per size and "
          f"round, {args.repeat} rounds; torch {torch.__version__}, PIL {Image.__version__}")
    print(f"{'size':>4}  {'ours ms/img':>14}  {'lightly ms/img':>14}  {'lightly/ours':>14}")
    for size, (images, ours, theirs) in cases.items():
        torch.manual_seed(0)
        per_image_ms(ours, images[:20]), per_image_ms(theirs, images[:20])  # warm-up
        rows = []
        for _ in range(args.repeat):
            rows.append((per_image_ms(ours, images), per_image_ms(theirs, images)))
        a, b = zip(*rows)
        ratio = [t / o for o, t in rows]
        print(f"{size:>4}  {statistics.median(a):>6.2f} [{min(a):.2f}-{max(a):.2f}]"
              f"  {statistics.median(b):>6.2f} [{min(b):.2f}-{max(b):.2f}]"
              f"  {statistics.median(ratio):>5.2f}x [{min(ratio):.2f}-{max(ratio):.2f}]", flush=True)


if __name__ == "__main__":
    main()
