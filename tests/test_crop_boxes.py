"""Crop boxes out of both view pipelines (``ViewSpec.crop_boxes``): each box is where its view was
cut from, mirror included, and the loaders put them into the batch as ``boxes``.

The source image is a coordinate ramp: red = 4 x (row + 0.5), green = 4 x (column + 0.5), so a
view pixel's red and green values read back the source position it was resampled from; the box
predicts that position for every view pixel: y = top + (i + 0.5) h / S, x = left + (j + 0.5) w / S
(x = left + w - (j + 0.5) w / S where mirrored)."""
from __future__ import annotations

import torch

from vissl_lite.augment import ViewSpec, build_cpu_views, build_gpu_views
from vissl_lite.augment.boxes import CroppedViews, batch_entries
from vissl_lite.augment.cpu import CPUViews
from vissl_lite.augment.gpu import GPUViews
from vissl_lite.augment.recipes import ViewParams
from vissl_lite.data.loader import CPULoader, DeviceLoader
from vissl_lite.data.memory import UInt8TensorDataset

H = 64
SIZE = 16
PLAIN = ViewParams(size=SIZE, scale=(0.2, 1.0), flip_p=0.5, mean=(0.0, 0.0, 0.0),
                   std=(1.0, 1.0, 1.0))                 # crop, resize, mirror; nothing else


def ramp(n: int = 1) -> torch.Tensor:
    idx = 4 * torch.arange(H) + 2
    image = torch.stack([idx[:, None].expand(H, H), idx[None, :].expand(H, H),
                         torch.zeros(H, H, dtype=torch.long)]).to(torch.uint8)
    return image.expand(n, 3, H, H).contiguous()


def expected_position(box: torch.Tensor) -> torch.Tensor:
    """(2, S, S): the source (row, column) in pixels that each view pixel shows."""
    top, left, h, w, flipped = box.tolist()
    centre = (torch.arange(SIZE) + 0.5) / SIZE
    y = top + centre * h
    x = left + (1 - centre) * w if flipped else left + centre * w
    return torch.stack([y[:, None].expand(SIZE, SIZE), x[None, :].expand(SIZE, SIZE)])


def shown_position(view: torch.Tensor) -> torch.Tensor:
    return view[:2] * 255 / 4


def test_gpu_boxes_are_where_each_view_was_cut_from_mirror_included():
    out = GPUViews([PLAIN, PLAIN], crop_boxes=True)(ramp(16), torch.Generator().manual_seed(0))
    assert isinstance(out, CroppedViews) and len(out.boxes) == 2
    boxes = torch.cat(out.boxes)
    assert boxes.shape == (32, 5) and boxes.dtype == torch.float32
    assert 0 < boxes[:, 4].sum() < 32                          # some mirrored, some not
    for view, box in zip(torch.cat(out.views), boxes):
        # the resize clamps to the box's outer pixel centres: half a source pixel at the edges
        torch.testing.assert_close(shown_position(view), expected_position(box), rtol=0,
                                   atol=0.5 + 1e-3)


def test_cpu_boxes_are_where_each_view_was_cut_from_mirror_included():
    views = CPUViews([PLAIN], crop_boxes=True)
    torch.manual_seed(0)
    flips = 0
    for _ in range(12):
        out = views(ramp()[0])
        (view,), (box,) = out.views, out.boxes
        flips += int(box[4])
        inner = (slice(None), slice(1, -1), slice(1, -1))      # PIL's filter at the box's edges
        torch.testing.assert_close(shown_position(view)[inner], expected_position(box)[inner],
                                   rtol=0, atol=0.5)
    assert 0 < flips < 12


def test_without_crop_boxes_the_pipelines_return_the_views_alone():
    spec = ViewSpec("byol", 2, 0)
    assert isinstance(build_gpu_views(spec, None, 32)(ramp(2)), list)
    assert isinstance(build_cpu_views(spec, None, 32)(ramp()[0]), list)
    assert batch_entries([torch.zeros(1)]).keys() == {"views"}


def test_both_loaders_put_the_boxes_in_the_batch():
    spec = ViewSpec("byol", 2, 0, crop_boxes=True)
    images, labels = ramp(8), torch.arange(8)
    loaders = [DeviceLoader(images, labels, build_gpu_views(spec, None, H), batch_size=4),
               CPULoader(UInt8TensorDataset(images, labels), build_cpu_views(spec, None, H), 4)]
    for loader in loaders:
        batch = next(iter(loader))
        assert len(batch["boxes"]) == 2 and len(batch["views"]) == 2
        for box in batch["boxes"]:
            assert box.shape == (4, 5)
            top, left, h, w, flipped = box.T
            assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
            assert (top + h <= H).all() and (left + w <= H).all()
            assert set(flipped.tolist()) <= {0.0, 1.0}
