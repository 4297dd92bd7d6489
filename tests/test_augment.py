"""View pipelines: shapes, recipe defaults, GPU ops vs torchvision, sampled distributions vs p."""
from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from omegaconf import OmegaConf
from torchvision import transforms as T1
from torchvision.transforms.v2 import functional as TF

from vissl_lite.augment import (AugmentConfigError, ViewSpec, build_cpu_views, build_gpu_views,
                                resolve_views, sample_crop_boxes)
from vissl_lite.augment.config import AugmentConfig
from vissl_lite.augment.gpu import (adjust_hue, color_jitter, gaussian_blur, grayscale,
                                    resized_crop, solarize)

SPECS = [ViewSpec("simclr", 2, 0), ViewSpec("byol", 2, 0), ViewSpec("dino", 2, 6),
         ViewSpec("mae", 1, 0), ViewSpec("ijepa", 1, 0)]


def cfg(**kw):
    """An ``augment`` section as the trainer passes it: a DictConfig of the schema."""
    return OmegaConf.merge(OmegaConf.structured(AugmentConfig), kw)


@pytest.fixture(scope="module")
def cifar_batch(cifar_images):
    return torch.stack([TF.pil_to_tensor(im) for im in cifar_images])


def binomial_ok(count, n, p, sigmas=4.5):
    return abs(count / n - p) <= sigmas * math.sqrt(max(p * (1 - p), 1e-4) / n) + 1e-9


# ----------------------------------------------------------------------- shapes and defaults --

@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.recipe)
@pytest.mark.parametrize("size", [32, 96])
def test_every_recipe_gives_its_views_on_both_paths(spec, size, cifar_images, cifar_batch):
    params = resolve_views(spec, None, size)
    expected = [(3, p.size, p.size) for p in params]
    assert len(expected) == spec.num_global + spec.num_local
    assert params[0].size == size
    if spec.num_local:
        assert params[-1].size == size // 2 and params[-1].size < params[0].size

    cpu = build_cpu_views(spec, cfg(), size)
    for image in (cifar_images[0], TF.pil_to_tensor(cifar_images[1])):
        views = cpu(image)
        assert [tuple(v.shape) for v in views] == expected
        assert all(type(v) is torch.Tensor and v.dtype == torch.float32 for v in views)
        assert all(torch.isfinite(v).all() for v in views)

    batch = TF.resize(cifar_batch[:8], [size, size], antialias=True)
    views = build_gpu_views(spec, cfg(), size)(batch, generator=torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(8, *e) for e in expected]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)


def test_published_defaults_by_recipe_and_input_size():
    simclr32 = resolve_views(ViewSpec("simclr"), None, 32)
    assert simclr32[0].jitter == pytest.approx((0.4, 0.4, 0.4, 0.1))
    assert [v.blur_p for v in simclr32] == [0.0, 0.0]
    assert simclr32[0].mean == pytest.approx((0.4914, 0.4822, 0.4465))
    simclr224 = resolve_views(ViewSpec("simclr"), None, 224)
    assert simclr224[0].jitter == pytest.approx((0.8, 0.8, 0.8, 0.2))
    assert [v.blur_p for v in simclr224] == [0.5, 0.5] and simclr224[0].blur_kernel == 23
    assert simclr224[0].mean == pytest.approx((0.485, 0.456, 0.406))
    byol = resolve_views(ViewSpec("byol"), None, 224)
    assert [v.blur_p for v in byol] == [1.0, 0.1] and [v.solarize_p for v in byol] == [0.0, 0.2]
    assert [v.solarize_p for v in resolve_views(ViewSpec("byol"), None, 32)] == [0.0, 0.2]
    dino = resolve_views(ViewSpec("dino", 2, 8), None, 224)
    assert [v.size for v in dino] == [224, 224] + [96] * 8
    assert dino[0].scale == (0.4, 1.0) and dino[-1].scale == (0.05, 0.4) and dino[-1].blur_p == 0.5
    assert len(resolve_views(ViewSpec("dino", 2, 8), cfg(num_local=2), 224)) == 4
    mae = resolve_views(ViewSpec("mae", 1), None, 224)[0]
    assert (mae.scale, mae.interpolation, mae.jitter_p, mae.flip_p) == ((0.2, 1.0), "bicubic", 0.0, 0.5)
    assert resolve_views(ViewSpec("ijepa", 1), None, 224)[0].flip_p == 0.0
    assert resolve_views(ViewSpec("simclr"), None, 32, dataset="cifar100")[0].mean[0] == 0.5071


def test_config_values_override_the_recipe():
    views = resolve_views(ViewSpec("byol"), cfg(global_scale=[0.2, 0.9], jitter_strength=0.5,
                                                  blur_p=[0.3], solarize_p=[0.1, 0.4],
                                                  mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2]), 64)
    assert views[0].scale == (0.2, 0.9)
    assert views[0].jitter == pytest.approx((0.2, 0.2, 0.1, 0.05))
    assert [v.blur_p for v in views] == [0.3, 0.3] and [v.solarize_p for v in views] == [0.1, 0.4]
    assert views[1].std == (0.2, 0.2, 0.2)


@pytest.mark.parametrize("bad, key", [(dict(flip_p=1.5), "augment.flip_p"),
                                      (dict(global_scale=[0.9, 0.1]), "augment.global_scale"),
                                      (dict(blur_p=[0.1, 0.2, 0.3]), "augment.blur_p"),
                                      (dict(solarize_p=[]), "augment.solarize_p"),
                                      (dict(jitter=[0.4, 0.4]), "augment.jitter")])
def test_bad_config_values_name_the_key(bad, key):
    with pytest.raises(AugmentConfigError, match=key.replace(".", r"\.")):
        resolve_views(ViewSpec("byol", 2), cfg(**bad), 224)


def test_identity_views_agree_between_paths_and_normalise_cifar(cifar_images, cifar_batch):
    """With every random op off and full-image crops, both paths give the normalised image."""
    off = cfg(global_scale=[1.0, 1.0], flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=[0.0],
              solarize_p=[0.0])
    gpu_views = build_gpu_views(ViewSpec("simclr"), off, 32)(cifar_batch)
    cpu = build_cpu_views(ViewSpec("simclr"), off, 32)
    cpu_views = torch.stack([cpu(im)[1] for im in cifar_images])
    torch.testing.assert_close(gpu_views[1], cpu_views, atol=1e-5, rtol=0)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    torch.testing.assert_close(gpu_views[0] * std + mean, cifar_batch.float() / 255, atol=1e-5, rtol=0)
    channel_mean = gpu_views[0].mean(dim=(0, 2, 3))
    assert channel_mean.abs().max() < 0.25  # real CIFAR images normalised by CIFAR statistics


def test_interpolation_config_resizes_bicubically_on_both_paths(cifar_images, cifar_batch):
    """augment.interpolation=bicubic (BYOL, VICReg, Barlow Twins, DINO): the CPU path resizes with
    PIL's bicubic filter, the GPU path's grid_sample follows it more closely than bilinear does."""
    off = dict(global_scale=[1.0, 1.0], flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=[0.0],
               solarize_p=[0.0], global_size=48, mean=[0.0] * 3, std=[1.0] * 3)
    assert resolve_views(ViewSpec("byol"), cfg(**off), 32)[0].interpolation == "bilinear"
    views = resolve_views(ViewSpec("dino", 2, 2), cfg(interpolation="bicubic", **off), 32)
    assert [v.interpolation for v in views] == ["bicubic"] * 4
    with pytest.raises(AugmentConfigError, match=r"augment\.interpolation='nearest'"):
        resolve_views(ViewSpec("byol"), cfg(interpolation="nearest"), 32)
    images = cifar_images[:4]
    out = {}
    for mode in ("bilinear", "bicubic"):
        cpu = build_cpu_views(ViewSpec("byol"), cfg(interpolation=mode, **off), 32)
        out["cpu", mode] = torch.stack([cpu(im)[0] for im in images])
        out["gpu", mode] = build_gpu_views(ViewSpec("byol"), cfg(interpolation=mode, **off), 32)(
            cifar_batch[:4])[0]
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
    for mode in ("bilinear", "bicubic"):
        expected = torch.stack([TF.pil_to_tensor(im.resize((48, 48), resample[mode])) for im in images])
        torch.testing.assert_close(out["cpu", mode], expected.float() / 255, atol=1e-6, rtol=0)
    assert not torch.allclose(out["cpu", "bicubic"], out["cpu", "bilinear"], atol=1e-3)
    err = {m: (out["gpu", "bicubic"] - out["cpu", m]).abs().mean() for m in ("bilinear", "bicubic")}
    assert err["bicubic"] < 0.5 * err["bilinear"], err


# ----------------------------------------------------------- GPU ops against torchvision -------

def test_batched_ops_match_torchvision_per_sample():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (6, 3, 20, 24), dtype=torch.uint8, generator=g)
    xf = x.float() / 255

    boxes = torch.tensor([[3, 5, 8, 10], [0, 0, 20, 24], [10, 2, 10, 7]] * 2)
    flip = torch.tensor([False, True, False, True, True, False])
    crops = resized_crop(xf, boxes, 16, flip)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(xf[i], top, left, h, w, [16, 16], antialias=False)
        torch.testing.assert_close(crops[i], ref.flip(-1) if flip[i] else ref, atol=1e-5, rtol=0)

    factors = torch.tensor([[1.3, 0.6, 1.5, 0.1], [0.7, 1.4, 0.2, -0.3]] * 3)
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(6)])
    active = torch.tensor([True, True, True, False, True, True])
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    jittered = color_jitter(xf.clone(), factors, order, active)
    for i in range(6):
        ref = xf[i]
        for op in (order[i].tolist() if active[i] else []):
            ref = ops[op](ref, factors[i, op].item())
        torch.testing.assert_close(jittered[i], ref, atol=1e-5, rtol=0)

    shifts = torch.linspace(-0.5, 0.5, 6)
    hue = adjust_hue(xf, shifts)
    for i in range(6):
        torch.testing.assert_close(hue[i], TF.adjust_hue(xf[i], shifts[i].item()), atol=1e-5, rtol=0)

    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 0.0, 1.5])
    blurred = gaussian_blur(xf, sigma, 7)
    for i, s in enumerate(sigma.tolist()):
        ref = TF.gaussian_blur(xf[i], [7, 7], [s, s]) if s > 0 else xf[i]
        torch.testing.assert_close(blurred[i], ref, atol=1e-5, rtol=0)

    on = torch.tensor([True, False] * 3)
    gray = grayscale(xf, on)
    torch.testing.assert_close(gray[on], TF.rgb_to_grayscale(xf[on], 3), atol=1e-6, rtol=0)
    assert torch.equal(gray[~on], xf[~on])
    sol = solarize(xf, on)
    torch.testing.assert_close(sol[on] * 255, TF.solarize(x[on], 128).float(), atol=1e-3, rtol=0)
    assert torch.equal(sol[~on], xf[~on])


# ---------------------------------------------------- sampled distributions vs the CPU path ----

def _crop_stats(boxes, height, width):
    boxes = boxes.double()
    area = boxes[:, 2] * boxes[:, 3] / (height * width)
    log_aspect = torch.log(boxes[:, 3] / boxes[:, 2])
    q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    return area.mean(), area.quantile(q), log_aspect.mean(), log_aspect.std()


@pytest.mark.parametrize("height, width, scale", [(32, 32, (0.08, 1.0)), (224, 224, (0.05, 0.4)),
                                                  (20, 80, (0.2, 1.0))])
def test_crop_boxes_follow_torchvision_random_resized_crop(height, width, scale):
    n = 3000
    ratio = (3 / 4, 4 / 3)
    ours = sample_crop_boxes(n, height, width, scale, ratio, torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    image = torch.zeros(3, height, width)
    theirs = torch.tensor([T1.RandomResizedCrop.get_params(image, list(scale), list(ratio))
                           for _ in range(n)])
    top, left, h, w = ours.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all()

    mean_o, quant_o, la_mean_o, la_std_o = _crop_stats(ours, height, width)
    mean_t, quant_t, la_mean_t, la_std_t = _crop_stats(theirs, height, width)
    assert abs(mean_o - mean_t) < 0.02
    assert (quant_o - quant_t).abs().max() < 0.04
    assert abs(la_mean_o - la_mean_t) < 0.03 and abs(la_std_o - la_std_t) < 0.03
    fallback = lambda b: ((b[:, 2] == b[:, 2].new_tensor(height)) & (b[:, 3] == width)).float().mean()
    centred = lambda b: (b[:, 0] == (height - b[:, 2]) // 2).float().mean()
    if width / height > 4 / 3:  # the 10 tries often fail: centre crop of the widest allowed box
        assert abs(centred(ours) - centred(theirs)) < 0.04
        assert ((ours[:, 2] == height) & (ours[:, 3] == round(height * 4 / 3))).float().mean() > 0.1
    else:
        assert abs(fallback(ours) - fallback(theirs)) < 0.02


def test_sampled_probabilities_and_jitter_factors_match_the_config():
    b = 3000
    aug = cfg(flip_p=0.3, jitter_p=0.6, grayscale_p=0.25, blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2])
    pipe = build_gpu_views(ViewSpec("byol"), aug, 96)
    (params,) = pipe.sample_params(b, 96, 96, generator=torch.Generator().manual_seed(0))
    first, second = slice(0, b), slice(b, 2 * b)
    for rows in (first, second):
        assert binomial_ok(params.flip[rows].sum().item(), b, 0.3)
        assert binomial_ok(params.jitter[rows].sum().item(), b, 0.6)
        assert binomial_ok(params.gray[rows].sum().item(), b, 0.25)
    assert params.blur[first].all() and binomial_ok(params.blur[second].sum().item(), b, 0.1)
    assert not params.solarize[first].any() and binomial_ok(params.solarize[second].sum().item(), b, 0.2)

    sigma = params.sigma[params.blur]
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0 and abs(sigma.mean() - 1.05) < 0.03
    assert (params.sigma[~params.blur] == 0).all()
    lo = torch.tensor([0.6, 0.6, 0.8, -0.1])
    hi = torch.tensor([1.4, 1.4, 1.2, 0.1])
    f = params.factors
    assert (f >= lo - 1e-6).all() and (f <= hi + 1e-6).all()
    torch.testing.assert_close(f.mean(0), (lo + hi) / 2, atol=0.01, rtol=0)
    torch.testing.assert_close(f.std(0), (hi - lo) / math.sqrt(12), atol=0.01, rtol=0)
    assert (params.order.sort(dim=1).values == torch.arange(4)).all()
    first_op = torch.bincount(params.order[:, 0], minlength=4)
    assert all(binomial_ok(c.item(), 2 * b, 0.25) for c in first_op)


def _op_images(op):
    x = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    if op == "flip":
        x[..., :4] = 255
    elif op == "gray":
        x[:, 0], x[:, 1], x[:, 2] = 200, 60, 30
    elif op == "blur":
        x[..., 4:] = 255
    else:
        x[:] = 200
    return x


def _op_applied(op, out):
    """Whether each rendered view (N, 3, 8, 8), back in [0, 1], shows ``op``."""
    if op == "flip":
        return out[:, :, :, 0].mean(dim=(1, 2)) < out[:, :, :, -1].mean(dim=(1, 2))
    if op == "gray":
        return (out[:, 0] - out[:, 2]).abs().amax(dim=(1, 2)) < 1e-3
    if op == "solarize":
        return out.mean(dim=(1, 2, 3)) < 0.5
    if op == "blur":
        return (out[:, :, :, 3] - 0).abs().amax(dim=(1, 2)) > 0.01
    return (out - 200 / 255).abs().amax(dim=(1, 2, 3)) > 1e-3  # jitter (brightness only)


@pytest.mark.parametrize("path", ["gpu", "cpu"])
@pytest.mark.parametrize("op, p", [("flip", 0.3), ("gray", 0.25), ("solarize", 0.2),
                                   ("blur", 0.4), ("jitter", 0.6)])
def test_each_op_is_applied_with_its_probability(path, op, p):
    """Measured on rendered views of images where the op is visible, with all other ops off."""
    probs = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=[0.0], solarize_p=[0.0])
    probs.update({"flip": dict(flip_p=p), "gray": dict(grayscale_p=p), "solarize": dict(solarize_p=[p]),
                  "blur": dict(blur_p=[p], blur_sigma=[1.0, 2.0]),
                  "jitter": dict(jitter_p=p, jitter=[0.5, 0.0, 0.0, 0.0])}[op])
    aug = cfg(global_scale=[1.0, 1.0], mean=[0.0] * 3, std=[1.0] * 3, **probs)
    image = _op_images(op)
    if path == "gpu":
        n = 2000
        views = build_gpu_views(ViewSpec("simclr", 1), aug, 8)(
            image.expand(n, -1, -1, -1), generator=torch.Generator().manual_seed(0))
        out = views[0]
    else:
        n = 400
        pipe = build_cpu_views(ViewSpec("simclr", 1), aug, 8)
        out = torch.stack([pipe(image[0])[0] for _ in range(n)])
    assert binomial_ok(_op_applied(op, out).sum().item(), n, p)


# ------------------------------------------------------------------------------ determinism ----

def test_seeded_generator_makes_views_reproducible_and_samples_independent(cifar_batch):
    pipe = build_gpu_views(ViewSpec("dino", 2, 2), cfg(), 32)
    batch = cifar_batch[:1].expand(16, -1, -1, -1)
    a = pipe(batch, generator=torch.Generator().manual_seed(7))
    b = pipe(batch, generator=torch.Generator().manual_seed(7))
    c = pipe(batch, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    for view in a:  # the same image gives a different view in every row
        flat = view.flatten(1)
        assert torch.cdist(flat, flat).add(torch.eye(16) * 1e9).min() > 1e-3


def test_gpu_views_reject_non_rgb_batches():
    with pytest.raises(ValueError, match="RGB"):
        build_gpu_views(ViewSpec("simclr"), None, 32)(torch.zeros(4, 32, 32, dtype=torch.uint8))
