"""The CPU view pipeline (augment/cpu.py): its draws are the GPU path's, its PIL ops are
torchvision's colour functions on PIL images, its blur is the GPU path's Gaussian, and views are
a function of the torch seed."""
from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms.v2 import functional as TF

from vissl_lite.augment import AugmentConfigError, ViewSpec, build_cpu_views, build_gpu_views
from vissl_lite.augment.cpu import (DRAWS, ViewDraw, ViewPipeline, brightness, contrast, crop_box,
                                    hue, saturation, solarize, view_draws)
from vissl_lite.augment.recipes import ViewParams

NO_OPS = dict(flip=False, jitter=False, factors=(1.0, 1.0, 1.0, 0.0), order=(0, 1, 2, 3),
              gray=False, blur=False, sigma=0.0, solarize=False)


@pytest.fixture(scope="module")
def photos(cifar_images):
    """Real images at 96 px (CIFAR-10 upscaled), where blur and jitter have texture to act on."""
    return [im.resize((96, 96), Image.BICUBIC) for im in cifar_images[:8]]


@pytest.mark.parametrize("height, width", [(32, 32), (96, 160), (200, 40)])
def test_cpu_draws_are_the_gpu_paths_for_the_same_uniforms(height, width):
    aug = dict(flip_p=0.3, jitter_p=0.6, grayscale_p=0.25, blur_p=[0.4], solarize_p=[0.2],
               global_scale=[0.1, 0.9], jitter=[0.4, 0.3, 0.2, 0.1])
    gpu = build_gpu_views(ViewSpec("simclr", 1), aug, 64)
    view = build_cpu_views(ViewSpec("simclr", 1), aug, 64).views[0]
    n = 500
    g = torch.Generator().manual_seed(height)
    box_u = torch.rand(n, DRAWS - 14, generator=g, dtype=torch.float64)
    u = torch.rand(n, 14, generator=g)
    (p,) = gpu.params_from([(box_u, u)], n, height, width)
    for i in range(n):
        box = crop_box(box_u[i].tolist(), height, width, view.scale, view.ratio)
        assert box == tuple(p.boxes[i].tolist())
        d = view_draws(view, u[i].tolist(), box)
        assert (d.flip, d.jitter, d.gray, d.blur, d.solarize) == (
            p.flip[i].item(), p.jitter[i].item(), p.gray[i].item(), p.blur[i].item(),
            p.solarize[i].item())
        assert d.factors == pytest.approx(p.factors[i].tolist(), abs=1e-6)
        assert d.sigma == pytest.approx(p.sigma[i].item(), abs=1e-6)
        assert d.order == tuple(p.order[i].tolist())


@pytest.mark.parametrize("factor", [0.0, 0.55, 1.7])
def test_jitter_ops_are_torchvisions_on_pil_images(photos, factor):
    for image in photos:
        for ours, theirs, f in ((brightness, TF.adjust_brightness, factor),
                                (contrast, TF.adjust_contrast, factor),
                                (saturation, TF.adjust_saturation, factor),
                                (hue, TF.adjust_hue, factor / 4 - 0.2)):
            assert ours(image, f).tobytes() == theirs(image, f).tobytes(), ours.__name__
        assert solarize(image).tobytes() == ImageOps.solarize(image, 128).tobytes()


def _render(view: ViewParams, image: Image.Image, **ops) -> torch.Tensor:
    """The view of the whole image with the given ops, back in uint8 levels (mean 0, std 1)."""
    draw = ViewDraw(box=(0, 0, image.height, image.width), **{**NO_OPS, **ops})
    return ViewPipeline(view).render(image, draw) * 255


def test_jitter_runs_the_drawn_order_and_skips_zero_strengths(photos):
    view = ViewParams(size=96, scale=(1.0, 1.0), jitter=(0.4, 0.4, 0.0, 0.1), mean=(0.0,) * 3,
                      std=(1.0,) * 3)
    image = photos[0]
    factors = (1.3, 0.6, 0.2, 0.05)   # saturation has strength 0: its factor must not be used
    for order in ((0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2)):
        expected = image
        for op in order:
            if op != 2:
                expected = (brightness, contrast, saturation, hue)[op](expected, factors[op])
        out = _render(view, image, jitter=True, factors=factors, order=order)
        torch.testing.assert_close(out, TF.pil_to_tensor(expected).float(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("size, sigma, pil", [(96, 1.0, True), (224, 2.0, True), (96, 1.9, False),
                                              (32, 1.5, False)])
def test_blur_is_the_gpu_paths_gaussian(photos, size, sigma, pil):
    """Where the 10% kernel spans +-3 sigma, PIL's blur stays within a level of the exact kernel
    on average; where it truncates the Gaussian, the exact kernel runs."""
    view = ViewParams(size=size, scale=(1.0, 1.0), mean=(0.0,) * 3, std=(1.0,) * 3)
    assert (view.blur_kernel // 2 >= 3 * sigma) == pil
    for image in photos[:4]:
        image = image.resize((size, size), Image.BICUBIC)
        exact = TF.gaussian_blur(TF.pil_to_tensor(image).float(), [view.blur_kernel] * 2,
                                 [sigma] * 2)
        out = _render(view, image, blur=True, sigma=sigma)
        assert (out - exact).abs().mean() < 0.8 and (out - exact).abs().max() <= 20
        box = TF.pil_to_tensor(image.filter(ImageFilter.GaussianBlur(sigma))).float()
        assert torch.equal(out.round(), box) == pil


def test_views_are_a_function_of_the_torch_seed(cifar_images):
    pipe = build_cpu_views(ViewSpec("byol", 2, 0), {"blur_p": [0.5], "solarize_p": [0.5]}, 32)
    image = cifar_images[3]

    def views(seed, x):
        torch.manual_seed(seed)
        return pipe(x)

    a, b = views(5, image), views(5, TF.pil_to_tensor(image))
    assert all(torch.equal(x, y) for x, y in zip(a, b))      # PIL and uint8 tensor inputs alike
    assert not torch.equal(views(6, image)[0], a[0])
    assert all(v.is_contiguous() and v.shape == (3, 32, 32) for v in a)


def test_unsupported_inputs_name_the_fix():
    pipe = build_cpu_views(ViewSpec("simclr"), None, 32)
    with pytest.raises(AugmentConfigError, match="uint8"):
        pipe(torch.rand(3, 32, 32))
    gray = pipe(Image.new("L", (40, 40), 90))                 # gray images become RGB views
    assert [tuple(v.shape) for v in gray] == [(3, 32, 32)] * 2
