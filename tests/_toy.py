"""A toy method and data set for the engine tests, independent of the real backbones/augmentations.

``toy_contrastive``: a small conv encoder, a projector, an NT-Xent loss over the batch gathered
from all ranks (``gather_with_grad``), optional dropout (exercises the RNG state), an EMA copy of
the projector (exercises teacher state), a step counter buffer (method buffers), an optional NaN
at a given step and an optional sleep per step (so that a subprocess can be killed mid-run).

Run as a script it trains with the Trainer (also under torchrun):
    python tests/_toy.py OUTPUT_DIR key=value ...
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vissl_lite.augment.spec import ViewSpec  # noqa: E402
from vissl_lite.distributed import gather_with_grad  # noqa: E402
from vissl_lite.schedules import cosine_schedule  # noqa: E402
from vissl_lite.methods.base import Method, StepOutput  # noqa: E402
from vissl_lite.registry import BACKBONES, METHODS  # noqa: E402


@BACKBONES.register("toy_wide", help="the toy encoder under a second name (checkpoint mismatch tests)")
@BACKBONES.register("toy", help="toy conv encoder for the engine tests")
class ToyEncoder(nn.Module):
    family = "resnet"

    def __init__(self, width: int = 8, batch_norm: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width) if batch_norm else nn.Identity()
        self.num_features = width

    def forward(self, x):
        return F.relu(self.norm(self.conv(x))).mean(dim=(2, 3))


def nt_xent(za: torch.Tensor, zb: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(torch.cat([za, zb]), dim=1)
    n = za.shape[0]
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


@dataclass
class ToyConfig:
    name: str = "toy_contrastive"
    temperature: float = 0.5
    dropout: float = 0.0
    batch_norm: bool = False
    nan_at_step: int = -1
    sleep: float = 0.0


@METHODS.register("toy_contrastive")
class ToyContrastive(Method):
    """Tiny SimCLR-like method used by the engine tests."""

    Config = ToyConfig
    views = ViewSpec("simclr", 2, 0)
    min_batch_size = 4

    def __init__(self, backbone: nn.Module, cfg):
        super().__init__(backbone, cfg)
        self.projector = nn.Sequential(nn.Linear(backbone.num_features, 16), nn.ReLU(),
                                       nn.Linear(16, 8))
        self.dropout = nn.Dropout(cfg.dropout)
        self.target = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def training_step(self, batch) -> StepOutput:
        if self.cfg.sleep:
            time.sleep(self.cfg.sleep)
        va, vb = batch["views"][:2]
        za = self.projector(self.dropout(self.backbone(va)))
        zb = self.projector(self.dropout(self.backbone(vb)))
        loss = nt_xent(gather_with_grad(za), gather_with_grad(zb), self.cfg.temperature)
        if int(self.steps_done) == self.cfg.nan_at_step:
            loss = loss * float("nan")
        return StepOutput(loss, {"z_std": F.normalize(za.detach(), dim=1).std(0).mean()})

    def on_step_end(self, step, total_steps):
        m = cosine_schedule(step, total_steps, 0.9, 1.0)
        with torch.no_grad():
            for t, o in zip(self.target.parameters(), self.projector.parameters()):
                t.mul_(m).add_(o, alpha=1 - m)
        self.steps_done += 1


class ToyImages(torch.utils.data.Dataset):
    """``n`` fixed random 3x8x8 images with labels (what a real data set yields, as tensors)."""

    def __init__(self, n: int = 64, size: int = 8, seed: int = 123):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.labels = torch.randint(0, 4, (n,), generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def toy_views(image: torch.Tensor):
    """Two random views from the global torch RNG (seeded per sample by the loader)."""
    return [image + 0.1 * torch.randn_like(image),
            image.flip(-1) + 0.1 * torch.randn_like(image)]


BASE = ["train.device=cpu", "train.batch_size=16", "train.epochs=2", "train.log_every=1",
        "optim.lr=0.1", "optim.weight_decay=1e-4", "optim.warmup_epochs=0.5",
        "data.num_workers=0", "logger.wandb.mode=disabled", "logger.progress=false",
        "logger.plot=false", "deterministic=true", "backbone.name=toy"]


def toy_config(output_dir, *overrides):
    from vissl_lite.config import default_config
    return default_config("toy_contrastive", [*BASE, f"output_dir={output_dir}", *overrides])


def build_toy(cfg) -> ToyContrastive:
    torch.manual_seed(cfg.seed)
    return ToyContrastive(ToyEncoder(batch_norm=cfg.method.batch_norm), cfg.method)


def pil_toy_views(image):
    """``toy_views`` of a decoded image (what a tar-shard data set yields)."""
    from torchvision.transforms.v2.functional import pil_to_tensor
    return toy_views(pil_to_tensor(image).float() / 255)


def run(output_dir, *overrides, n: int = 64):
    """Train the toy method; on ``ToyImages(n)``, or with ``data.name=shards`` on the shards in
    ``data.root`` (written by ``write_toy_shards``), read by the configured shard loader."""
    from vissl_lite.engine import Trainer
    cfg = toy_config(output_dir, *overrides)
    if cfg.data.name == "shards":
        return Trainer(cfg, method=build_toy(cfg), transform=pil_toy_views).fit()
    return Trainer(cfg, method=build_toy(cfg), dataset=ToyImages(n), transform=toy_views).fit()


def write_toy_shards(out, n: int = 64, shard_size: int = 16):
    """``ToyImages(n)`` as JPEG tar shards (``vissl-lite shard``'s layout) in ``out``."""
    from PIL import Image

    from vissl_lite.data.shard_writer import write_shards
    data = ToyImages(n)
    items = [(Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy()), int(y))
             for x, y in zip(data.images, data.labels)]
    return write_shards(items, out, shard_size, progress=False)


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1], *sys.argv[2:])
