"""Small pieces shared by several test files: a tiny encoder, real CIFAR-10 tensors, 2-rank runs."""
from __future__ import annotations

import functools
import socket
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torchvision import datasets
from torchvision.transforms import v2

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class TinyNet(nn.Module):
    """A one-conv encoder with the backbone interface (``family``, ``num_features``)."""

    family = "resnet"
    num_features = 16

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten())

    def forward(self, x):
        return self.net(x)


@functools.lru_cache(maxsize=4)
def _image_folder(path: str) -> datasets.ImageFolder:
    """The file listing of an ImageFolder split, scanned once per test session."""
    return datasets.ImageFolder(path)


def load_cifar_images(root: Path, count: int, split: str = "train") -> torch.Tensor:
    """``count`` real images spread over all classes, as a float tensor in [0, 1]."""
    data = _image_folder(str(root / split))
    step = len(data) // count
    to_tensor = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)])
    return torch.stack([to_tensor(data[i * step][0]) for i in range(count)])


def load_cifar_labels(root: Path, count: int, split: str = "train") -> torch.Tensor:
    """The class labels of the images ``load_cifar_images(root, count, split)`` returns."""
    data = _image_folder(str(root / split))
    step = len(data) // count
    return torch.tensor([data.targets[i * step] for i in range(count)])


def crop_flip_normalise(images: torch.Tensor, min_scale: float) -> torch.Tensor:
    """A light random-resized-crop + flip view of each 32x32 image, CIFAR-normalised."""
    crop_flip = v2.Compose([v2.RandomResizedCrop(32, scale=(min_scale, 1.0), antialias=True),
                            v2.RandomHorizontalFlip()])
    return v2.functional.normalize(torch.stack([crop_flip(im) for im in images]),
                                   CIFAR_MEAN, CIFAR_STD)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_worker(rank, world, port, loss_fn, inputs, args, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        shards = []
        for x in inputs:
            n = x.shape[0] // world
            shards.append(x[rank * n:(rank + 1) * n].clone().requires_grad_(True))
        loss = loss_fn(*shards, *args)
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": [s.grad for s in shards]},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def loss_on_ranks(loss_fn: Callable, inputs, args: tuple, out_dir: Path,
                  world: int = 2) -> List[Dict]:
    """Each gloo rank gets a contiguous shard (dim 0) of every input and computes
    ``loss_fn(*shards, *args)``; returns every rank's loss and gradients w.r.t. its shards."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    mp.spawn(_loss_worker, args=(world, free_port(), loss_fn, list(inputs), args, str(out_dir)),
             nprocs=world, join=True)
    return [torch.load(Path(out_dir) / f"rank{r}.pt") for r in range(world)]


def pair_loss_on_ranks(loss_fn: Callable, z_a: torch.Tensor, z_b: torch.Tensor, args: tuple,
                       out_dir: Path, world: int = 2) -> List[Dict[str, torch.Tensor]]:
    """``loss_on_ranks`` of a two-view loss ``loss_fn(a, b, *args)``, gradients as grad_a/grad_b."""
    return [{"loss": p["loss"], "grad_a": p["grads"][0], "grad_b": p["grads"][1]}
            for p in loss_on_ranks(loss_fn, (z_a, z_b), args, out_dir, world)]


def gaussian_clusters(n: int, num_classes: int, dim: int, spread: float = 0.5, seed: int = 0,
                      center_seed: int = 123, center_scale: float = 3.0):
    """``n`` points around ``num_classes`` fixed random centres, and their class labels."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(center_seed))
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return centers[labels] * center_scale + spread * torch.randn(n, dim, generator=g), labels


def registered_methods() -> List[str]:
    """The names of the methods shipped in vissl_lite/methods (test-only plugins excluded)."""
    from vissl_lite.registry import METHODS
    return [name for name, cls in METHODS.items() if cls.__module__.startswith("vissl_lite.methods")]


def tiny_backbone(method_cls) -> nn.Module:
    """The smallest real backbone of a family the method supports: a 1-block ViT on 32x32
    (patch 4, any input size) for ViT methods, a ResNet with one block per stage otherwise."""
    from torchvision.models.resnet import BasicBlock

    from vissl_lite.backbones.resnet import ResNet
    from vissl_lite.backbones.vit import ViT

    if method_cls.supported_backbones and "resnet" not in method_cls.supported_backbones:
        return ViT(patch_size=4, embed_dim=48, depth=1, num_heads=3, img_size=32, pos_embed="sincos",
                   dynamic_img_size=True, name="vit_test")
    options = getattr(method_cls, "tiny_backbone_options", {})  # e.g. CNN-JEPA's cifar_stem
    return ResNet(BasicBlock, (1, 1, 1, 1), name="resnet10_test", **options)


def tiny_method(name: str, **overrides):
    """A registered method built with its ``tiny_config`` (plus ``overrides``) on a tiny backbone."""
    from vissl_lite.registry import METHODS
    cls = METHODS.get(name)
    return cls(tiny_backbone(cls), {**cls.tiny_config, **overrides})


def views_batch(method, batch: int = 8, global_size: int = 32, local_size: int = 16,
                seed: int = 0) -> Dict[str, object]:
    """A batch in the trainer's format with the views ``method.views`` asks for (random pixels)."""
    g = torch.Generator().manual_seed(seed)
    spec = method.views
    sizes = [global_size] * spec.num_global + [local_size] * spec.num_local
    views = [torch.randn(batch, 3, s, s, generator=g) for s in sizes]
    out = {"views": views, "labels": torch.zeros(batch, dtype=torch.long),
           "index": torch.arange(batch)}
    if spec.crop_boxes:                 # crops of a 48-px source image, some of them mirrored
        from vissl_lite.augment.boxes import sample_crop_boxes, view_boxes
        out["boxes"] = [view_boxes(sample_crop_boxes(batch, 48, 48, (0.2, 1.0), generator=g),
                                   torch.rand(batch, generator=g) < 0.5) for _ in sizes]
    return out


def base_and_addon(addon: str, base: dict, **options):
    """A base method (``base``: its config with ``name``) and the add-on ``addon`` wrapping an
    identical copy of it, both set up and in training mode."""
    torch.manual_seed(0)
    plain = tiny_method(base["name"], **{k: v for k, v in base.items() if k != "name"})
    wrapped = tiny_method(addon, base=base, **options)
    wrapped.base.load_state_dict(plain.state_dict())
    for m in (plain, wrapped):
        m.setup(total_steps=10, steps_per_epoch=5)
        m.train()
    return plain, wrapped


def assert_addon_is_base(plain, wrapped, batch) -> None:
    """The add-on ``wrapped`` gives the same loss and gradients as ``plain``, bitwise."""
    torch.manual_seed(3)
    loss_plain = plain.training_step(batch).loss
    torch.manual_seed(3)
    loss_wrapped = wrapped.training_step(batch).loss
    assert torch.equal(loss_plain, loss_wrapped)
    loss_plain.backward()
    loss_wrapped.backward()
    for (name, p), q in zip(plain.named_parameters(), wrapped.base.parameters()):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad), name


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: small L-BFGS/UMAP problems on a loaded 2-core machine are
    many times slower with two threads contending (import the fixture into a test module)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def real_cifar_losses(method, images: torch.Tensor, steps: int, batch: int, lr: float,
                      num_views: int = 1, min_scale: float = 0.3) -> List[float]:
    """Train ``method`` with AdamW for ``steps`` steps on random batches of ``images`` (each view a
    crop-flip of it); returns the loss of every step."""
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr)
    method.setup(total_steps=steps, steps_per_epoch=steps)
    losses = []
    for step in range(steps):
        x = images[torch.randint(0, len(images), (batch,))]
        loss = method.training_step({"views": [crop_flip_normalise(x, min_scale)
                                               for _ in range(num_views)]}).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_step_end(step, steps)
        losses.append(loss.item())
    return losses


def assert_same_value_and_grads(ours_fn: Callable, theirs_fn: Callable, inputs, value_tol=None,
                                grad_tol=None):
    """``ours_fn(*a) == theirs_fn(*b)`` and ``d/da == d/db``, where ``a`` and ``b`` are separate
    leaf copies of ``inputs``: a loss equal to a reference (lightly's, the official code's) in its
    value and in the gradient of every input. ``*_tol``: ``assert_close``'s rtol/atol. Returns
    ``(a, b)`` for further checks on the gradients."""
    ours_in = [x.detach().clone().requires_grad_(True) for x in inputs]
    theirs_in = [x.detach().clone().requires_grad_(True) for x in inputs]
    ours, theirs = ours_fn(*ours_in), theirs_fn(*theirs_in)
    torch.testing.assert_close(ours, theirs.reshape(ours.shape), **(value_tol or {}))
    ours.backward()
    theirs.backward()
    for a, b in zip(ours_in, theirs_in):
        torch.testing.assert_close(a.grad, b.grad, **(grad_tol or {}))
    return ours_in, theirs_in
