"""The online linear head (monitor.online_linear=true) is trained by the trainer in every step on
the detached features of the first view, is saved with the checkpoint, and learns."""
from __future__ import annotations

import json

import torch
from PIL import Image

import _toy
from vissl_lite.engine import load_checkpoint
from vissl_lite.methods.base import StepOutput

COLOURS = torch.tensor([[220, 30, 30], [30, 220, 30], [30, 30, 220], [220, 220, 30]])


class ColourImages(torch.utils.data.Dataset):
    """``n`` 8x8 images of 4 classes, each a noisy flat colour: linearly separable features."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 4
        base = COLOURS[self.labels].float().view(n, 3, 1, 1) / 255
        self.images = (base + 0.05 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


class ToyWithEmbedding(_toy.ToyContrastive):
    def training_step(self, batch) -> StepOutput:
        out = super().training_step(batch)
        return StepOutput(out.loss, out.metrics, embedding=self.backbone(batch["views"][0]).detach())


def _write_folder(root, split: str, dataset: ColourImages) -> None:
    for i in range(len(dataset)):
        image, label = dataset[i]
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")


def test_online_linear_head_is_trained_every_step_and_beats_chance(tmp_path):
    data = tmp_path / "data"
    _write_folder(data, "train", ColourImages(32, seed=1))
    _write_folder(data, "test", ColourImages(32, seed=2))
    cfg = _toy.toy_config(tmp_path / "run", "train.epochs=6", "optim.lr=0.05",
                          "monitor.every_epochs=3", "monitor.online_linear=true",
                          "monitor.knn_k=5", f"data.root={data}", "data.image_size=8",
                          "checkpoint.best_metric=online_linear_top1", "train.log_every=4")
    torch.manual_seed(cfg.seed)
    method = ToyWithEmbedding(_toy.ToyEncoder(width=16), cfg.method)
    from vissl_lite.engine import Trainer
    result = Trainer(cfg, method=method, dataset=ColourImages(64),
                     transform=_toy.toy_views).fit()

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    steps = [r for r in records if r["type"] == "step"]
    assert all("online_linear_loss" in r and "online_linear_top1" in r for r in steps)
    assert steps[-1]["online_linear_top1"] > 50.0                # chance: 25 %
    assert result["online_linear_top1"] > 50.0                   # on the held-out test split
    head = load_checkpoint(tmp_path / "run")["online_linear"]["head"]
    assert head["linear.weight"].shape == (4, 16)
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
