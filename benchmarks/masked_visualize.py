"""Visual check of the masked methods: a PNG grid of MAE reconstructions and I-JEPA masks.

MAE rows (He et al. 2022, Fig. 2): the original view, the view with the masked patches greyed
out, the decoder's reconstruction of every patch, and the reconstruction with the visible
patches pasted back. I-JEPA rows (Assran et al. 2023, Fig. 4): the context block (other patches
dimmed) and the target blocks (one colour each); N-JEPA draws as I-JEPA. CNN-JEPA rows (Kalapos &
Gyires-Toth 2024): the same, with the blocks on the ResNet's output grid upsampled to the input
(cells of ``stride`` pixels). DINOv2 row (Oquab et al. 2023): a student global crop with its
masked patches greyed out (they enter the ViT as the mask token). CAPI row (Darcet et al. 2025):
the student's visible patches, the masked ones greyed out and the predicted subset in red. DTM
draws as MAE, Franca as DINOv2. SimMIM rows (Xie et al. 2022, Fig. 1): the view with its masked
mask patches greyed out, the linear decoder's prediction of every patch, and the prediction on
the masked patches pasted into the view.

    python benchmarks/masked_visualize.py --random --data ../shared/datasets/cifar10-jpeg.tar.gz --out grid.png
    python benchmarks/masked_visualize.py --checkpoint runs/mae_vit_tiny_patch4/checkpoints/last.pt --out grid.png

``--random`` builds the methods at random initialisation from their presets (``--mae-config``,
``--ijepa-config``, ``--extra-configs``); ``--checkpoint`` loads one trained run of any of these
methods and draws its panel
(its own data set unless ``--data`` is given). With ``norm_pix_loss`` the MAE predicts
standardised patches; to draw them, each predicted patch gets the mean and standard deviation of
the true patch back (as the usual MAE visualisations do: the shapes are the model's, the patch
brightness is not).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vissl_lite.augment.masks import random_patch_mask  # noqa: E402
from vissl_lite.config import load_config  # noqa: E402
from vissl_lite.data import build_dataset  # noqa: E402
from vissl_lite.eval.transforms import eval_transform, resolve_mean_std  # noqa: E402
from vissl_lite.methods import build_method  # noqa: E402
from vissl_lite.methods.capi import CAPI  # noqa: E402
from vissl_lite.methods.cnnjepa import CNNJEPA  # noqa: E402
from vissl_lite.methods.dinov2 import DINOv2  # noqa: E402
from vissl_lite.methods.ijepa import IJEPA  # noqa: E402
from vissl_lite.methods.mae import MAE, patchify, unpatchify  # noqa: E402
from vissl_lite.methods.simmim import SimMIM  # noqa: E402

TARGET_COLOURS = torch.tensor([[1.0, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.4, 1.0], [1.0, 0.8, 0.1],
                               [0.9, 0.3, 0.9], [0.1, 0.9, 0.9]])
Rows = List[Tuple[str, torch.Tensor]]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a MAE or I-JEPA checkpoint (e.g. .../checkpoints/last.pt)")
    src.add_argument("--random", action="store_true", help="the methods at random initialisation")
    p.add_argument("--data", help="ImageFolder folder or .tar/.tar.gz (default: the run's data)")
    p.add_argument("--split", default="test", help="train | test")
    p.add_argument("--out", default="masked_grid.png")
    p.add_argument("--num", type=int, default=8, help="number of images (columns)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks")
    p.add_argument("--mae-config", default=str(REPO / "configs/mae/cifar10_vit_tiny.yaml"))
    p.add_argument("--ijepa-config", default=str(REPO / "configs/ijepa/cifar10_vit_tiny.yaml"))
    p.add_argument("--extra-configs", nargs="*", default=[
        str(REPO / "configs/cnnjepa/cifar10_resnet18.yaml"),
        str(REPO / "configs/dinov2/cifar10_vit_tiny.yaml"),
        str(REPO / "configs/simmim/cifar10_vit_tiny.yaml"),
        str(REPO / "configs/capi/cifar10_vit_tiny.yaml")],
        help="more masked-method presets drawn with --random (CNN-JEPA, DINOv2, SimMIM, N-JEPA, CAPI)")
    return p.parse_args(argv)


def load_methods(args: argparse.Namespace):
    """[(method, cfg)] in eval mode: one from the checkpoint, or both presets at random init."""
    if args.checkpoint:
        from vissl_lite.engine import load_pretrained

        method, cfg = load_pretrained(args.checkpoint)
        if not isinstance(method, DRAWN):
            sys.exit(f"{args.checkpoint} is a '{cfg.method.name}' checkpoint; this script draws "
                     f"MAE, I-JEPA / N-JEPA, CNN-JEPA, DINOv2 and SimMIM runs only")
        return [(method, cfg)]
    if not args.data:
        sys.exit("--random needs --data (an ImageFolder folder or .tar/.tar.gz of images)")
    out = []
    for path in (args.mae_config, args.ijepa_config, *args.extra_configs):
        cfg = load_config(path, [f"data.root={args.data}"])
        out.append((build_method(cfg).eval(), cfg))
    return out


def load_images(cfg, data: Optional[str], split: str, num: int, image_size: int):
    """``num`` images spread over the split, normalised as in pretraining, and the mean/std."""
    data_cfg = dict(cfg.data)
    if data:
        data_cfg.update(root=data, name="imagefolder")
    mean, std = resolve_mean_std(image_size, cfg.augment.mean, cfg.augment.std)
    dataset = build_dataset(data_cfg, split, transform=eval_transform(image_size, mean, std))
    stride = max(len(dataset) // num, 1)
    images = torch.stack([dataset[i * stride][0] for i in range(min(num, len(dataset)))])
    return images, torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


DRAWN = (MAE, IJEPA, CNNJEPA, DINOv2, CAPI, SimMIM)


def patch_mask_image(idx: torch.Tensor, grid: Tuple[int, int], patch: int) -> torch.Tensor:
    """(B, K) patch indices -> (B, 1, H, W) boolean pixel mask."""
    mask = torch.zeros(idx.shape[0], grid[0] * grid[1], dtype=torch.bool)
    mask.scatter_(1, idx.cpu(), True)
    mask = mask.view(-1, 1, *grid)
    return mask.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def predicted_image(method, pred: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(B, N, p*p*3) predicted patches -> (B, 3, H, W); standardised predictions (norm_pix_loss)
    get the true patch's mean and standard deviation back."""
    if method.cfg.norm_pix_loss:
        target = patchify(images, method.patch_size)
        pred = pred * (target.var(-1, keepdim=True) + 1e-6).sqrt() + target.mean(-1, keepdim=True)
    return unpatchify(pred, method.patch_size, method.grid_size)


@torch.no_grad()
def mae_rows(method: MAE, images: torch.Tensor, mean, std, seed: int) -> Rows:
    pred, _, mask_idx = method.reconstruct(images, generator=torch.Generator().manual_seed(seed))
    recon = predicted_image(method, pred, images)
    masked = patch_mask_image(mask_idx, method.grid_size, method.patch_size)
    rgb = lambda x: (x * std + mean).clamp(0, 1)  # noqa: E731
    grey = torch.full_like(images, 0.5)
    ratio = f"{100 * mask_idx.shape[1] / method.num_patches:.0f}%"
    return [("original", rgb(images)),
            (f"masked {ratio}", torch.where(masked, grey, rgb(images))),
            ("reconstruction", rgb(recon)),
            ("recon. + visible", torch.where(masked, rgb(recon), rgb(images)))]


@torch.no_grad()
def ijepa_rows(method, images: torch.Tensor, mean, std, seed: int) -> Rows:
    """Context and target blocks of I-JEPA / N-JEPA (patch grid) or CNN-JEPA (feature grid)."""
    generator = torch.Generator().manual_seed(seed)
    if isinstance(method, CNNJEPA):
        masks = method.sample_masks(images, generator=generator)
        grid, patch = method.grid(images), method.stride
    else:
        masks = method.sample_masks(images.shape[0], torch.device("cpu"), generator=generator)
        grid, patch = method.grid_size, method.backbone.patch_size
    rgb = (images * std + mean).clamp(0, 1)
    context = patch_mask_image(masks.context_idx, grid, patch)
    targets = 0.35 * rgb
    for k, idx in enumerate(masks.target_idx):
        inside = patch_mask_image(idx, grid, patch)
        colour = TARGET_COLOURS[k % len(TARGET_COLOURS)].view(1, 3, 1, 1)
        targets = torch.where(inside, 0.5 * rgb + 0.5 * colour, targets)
    kc, kt = masks.context_idx.shape[1], masks.target_idx[0].shape[1]
    return [(f"context ({kc} p.)", torch.where(context, rgb, 0.2 * rgb)),
            (f"{len(masks.target_idx)} targets ({kt} p.)", targets)]


@torch.no_grad()
def dinov2_rows(method: DINOv2, images: torch.Tensor, mean, std, seed: int) -> Rows:
    """A student global crop: its masked patches (a fixed number per crop) greyed out."""
    vit = method.backbone
    masks = random_patch_mask(images.shape[0], vit.num_patches, method.cfg.mask_ratio,
                              generator=torch.Generator().manual_seed(seed))
    rgb = (images * std + mean).clamp(0, 1)
    masked = patch_mask_image(masks.mask_idx, vit.grid_size, vit.patch_size)
    return [(f"student, {masks.mask_idx.shape[1]} mask tok.", torch.where(masked, 0.5, rgb))]


@torch.no_grad()
def capi_rows(method: CAPI, images: torch.Tensor, mean, std, seed: int) -> Rows:
    """CAPI: the student's visible patches, the masked ones greyed, the predicted subset red."""
    torch.manual_seed(seed)
    keep_idx, predict_idx = method.sample_masks(images.shape[0], torch.device("cpu"))
    vit = method.backbone
    rgb = (images * std + mean).clamp(0, 1)
    visible = patch_mask_image(keep_idx, vit.grid_size, vit.patch_size)
    predicted = patch_mask_image(predict_idx, vit.grid_size, vit.patch_size)
    colour = TARGET_COLOURS[0].view(1, 3, 1, 1)
    shown = torch.where(predicted, colour, torch.where(visible, rgb, 0.5))
    return [(f"{keep_idx.shape[1]} visible, {predict_idx.shape[1]} pred.", shown)]


@torch.no_grad()
def simmim_rows(method: SimMIM, images: torch.Tensor, mean, std, seed: int) -> Rows:
    """The masked view, the prediction of every patch, and the prediction pasted where masked."""
    mask = method.sample_mask(images.shape[0], generator=torch.Generator().manual_seed(seed))
    recon = predicted_image(method, method.reconstruct(images, mask), images)
    p = method.patch_size
    masked = mask.view(-1, 1, *method.grid_size).repeat_interleave(p, 2).repeat_interleave(p, 3)
    rgb = lambda x: (x * std + mean).clamp(0, 1)  # noqa: E731
    ratio = f"{100 * mask.float().mean():.0f}%"
    return [(f"masked {ratio}", torch.where(masked, 0.5, rgb(images))),
            ("prediction", rgb(recon)),
            ("pred. + visible", torch.where(masked, rgb(recon), rgb(images)))]


def draw(rows: Rows, out: Path, title: str) -> None:
    num = rows[0][1].shape[0]
    fig, axes = plt.subplots(len(rows), num, figsize=(1.3 * num + 1.2, 1.35 * len(rows) + 0.4),
                             squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(num):
            ax = axes[r, c]
            ax.imshow(imgs[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    rows: Rows = []
    names = []
    for method, cfg in load_methods(args):
        size = getattr(method.backbone, "img_size", (cfg.data.image_size,))[0]
        images, mean, std = load_images(cfg, args.data, args.split, args.num, size)
        if isinstance(method, MAE):
            rows += mae_rows(method, images, mean, std, args.seed)
        elif isinstance(method, DINOv2):
            rows += dinov2_rows(method, images, mean, std, args.seed)
        elif isinstance(method, CAPI):
            rows += capi_rows(method, images, mean, std, args.seed)
        elif isinstance(method, SimMIM):
            rows += simmim_rows(method, images, mean, std, args.seed)
        else:
            rows += ijepa_rows(method, images, mean, std, args.seed)
        names.append(f"{cfg.method.name} / {cfg.backbone.name}")
    state = "random init" if args.random else Path(args.checkpoint).name
    out = Path(args.out)
    draw(rows, out, f"{', '.join(names)} ({state}, {args.split} split, mask seed {args.seed})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
