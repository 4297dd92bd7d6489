"""Peak memory per rank, DDP vs FSDP (``train.strategy``), beside docs/distributed.md's formula.

    torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_memory.py ddp  [backbone] [steps]
    torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_memory.py fsdp [backbone] [steps]

Each gloo rank builds the backbone (default ViT-S/8 on 32x32 images) with a linear head, AdamW,
wraps it as the trainer does (``DistributedDataParallel`` or ``engine.sharding.shard_method``), runs
a few optimizer steps on a batch of 4 random images, and prints its peak resident set (``ru_maxrss``)
above the RSS before the model was built and above the RSS with the built (full) model, with the
formula's model-state bytes (CPU stands in for the GPU: the ratio is what carries over).
"""
from __future__ import annotations

import resource
import sys

import torch
import torch.distributed as dist
from torch import nn

from vissl_lite.backbones.build import build_backbone
from vissl_lite.engine.sharding import shard_method


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    strategy = sys.argv[1]
    name = sys.argv[2] if len(sys.argv) > 2 else "vit_small_patch8"
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    base = rss_mb()
    torch.manual_seed(0)
    model = nn.Sequential(build_backbone(name, img_size=32), nn.LazyLinear(10))
    model(torch.zeros(1, 3, 32, 32))
    params = sum(p.numel() for p in model.parameters())
    built = rss_mb()   # the full model, built on every rank (no meta-device initialisation here)
    if strategy == "fsdp":
        shard_method(model, torch.device("cpu"), world, "fp32")
    else:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32)
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak, after_build = peak - base, peak - built
    shards = world if strategy == "fsdp" else 1
    formula = 16 * params / shards / 2**20   # fp32 params + grads + AdamW's 2 moments
    out = [None] * world
    dist.all_gather_object(out, (round(peak), round(after_build), round(built - base)))
    if rank == 0:
        print(f"{strategy}: {name} {params / 1e6:.1f}M params, {world} ranks; model states by the "
              f"formula {formula:.0f} MiB per rank; per rank (peak RSS above start, peak above "
              f"the built model, the built model) MiB: {out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
