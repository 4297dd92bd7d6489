"""Label-preserving (Gaussian-centred) crops: centre statistics match alpha, boxes stay in the
image, config errors, and both pipelines use the shared sampler."""
from __future__ import annotations

import pytest
import torch

from vissl_lite.augment import build_cpu_views, build_gpu_views
from vissl_lite.augment.crops import sample_gaussian_boxes
from vissl_lite.augment.spec import ViewSpec
from vissl_lite.errors import AugmentConfigError


def centres(boxes: torch.Tensor) -> torch.Tensor:
    top, left, h, w = boxes.double().unbind(1)
    return torch.stack([top + h / 2, left + w / 2], dim=1)


@pytest.mark.parametrize("mode", ["gcc", "cgcc"])
@pytest.mark.parametrize("alpha", [0.03, 0.08])
def test_centre_statistics_match_alpha(mode, alpha):
    g = torch.Generator().manual_seed(0)
    boxes = sample_gaussian_boxes(20000, 1000, 800, mode, 0.2, alpha, generator=g)
    c = centres(boxes)
    torch.testing.assert_close(c.mean(0), torch.tensor([500.0, 400.0], dtype=torch.float64),
                               atol=0.05 * alpha * 1000, rtol=0)
    torch.testing.assert_close(c.std(0), torch.tensor([alpha * 1000, alpha * 800], dtype=torch.float64),
                               rtol=0.03, atol=0.6)
    assert (boxes[:, 2:] == torch.tensor([200, 160])).all()       # no clipping at this spread


def test_alpha_zero_is_the_centre_crop():
    boxes = sample_gaussian_boxes(5, 32, 32, "cgcc", 0.5, 0.0)
    assert boxes.tolist() == [[8, 8, 16, 16]] * 5


def test_boxes_stay_in_the_image():
    g = torch.Generator().manual_seed(1)
    corrected = sample_gaussian_boxes(5000, 32, 40, "cgcc", 0.5, 0.6, generator=g)
    assert (corrected[:, 2:] == torch.tensor([16, 20])).all()     # fixed size, shifted inside
    assert (corrected[:, :2] >= 0).all() and (corrected[:, 0] + 16 <= 32).all()
    assert (corrected[:, 1] + 20 <= 40).all()
    clipped = sample_gaussian_boxes(5000, 32, 40, "gcc", 0.5, 0.6, generator=g)
    top, left, h, w = clipped.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= 32).all() and (left + w <= 40).all() and (h <= 16).all() and (w <= 20).all()
    assert (h < 16).any()                                          # cut at the borders


def test_mgcc_moves_the_mean_uniformly():
    g = torch.Generator().manual_seed(2)
    c = centres(sample_gaussian_boxes(20000, 1000, 1000, "mgcc", 0.1, 0.0, (0.2, 0.1), generator=g))
    assert c[:, 0].min() < 310 and c[:, 0].max() > 690 and c[:, 0].std() == pytest.approx(400 / 12 ** 0.5, rel=0.03)
    assert c[:, 1].min() >= 399 and c[:, 1].max() <= 601


def test_config_errors():
    spec = ViewSpec("simclr", 2, 0)
    with pytest.raises(AugmentConfigError, match="crop_frac"):
        build_cpu_views(spec, {"crop": "gcc"}, 32)
    with pytest.raises(AugmentConfigError, match="crop_shift"):
        build_cpu_views(spec, {"crop": "mgcc", "crop_frac": 0.5, "crop_alpha": 0.1}, 32)
    with pytest.raises(AugmentConfigError, match="rrc"):
        build_cpu_views(spec, {"crop": "nope"}, 32)


def test_both_pipelines_use_the_sampler_for_global_views_only():
    cfg = {"crop": "cgcc", "crop_frac": 0.5, "crop_alpha": 0.2}
    spec = ViewSpec("dino", 2, 2)
    cpu = build_cpu_views(spec, cfg, 32)
    assert [v.crop for v in cpu.views] == ["cgcc", "cgcc", "rrc", "rrc"]
    views = cpu(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2
    gpu = build_gpu_views(spec, cfg, 32)
    params = gpu.sample_params(6, 32, 32, generator=torch.Generator().manual_seed(3))
    expected = sample_gaussian_boxes(12, 32, 32, "cgcc", 0.5, 0.2,
                                     generator=torch.Generator().manual_seed(3))
    assert torch.equal(params[0].boxes, expected)
    out = gpu(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8))
    assert [tuple(v.shape) for v in out] == [(6, 3, 32, 32)] * 2 + [(6, 3, 16, 16)] * 2
