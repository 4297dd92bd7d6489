"""SSLMem (arXiv 2401.12233): the score against its definition, f = g, and a memorised image."""
from __future__ import annotations

import itertools

import pytest
import torch
from _helpers import one_thread  # noqa: F401 (fixture)
from torch import nn

from vissl_lite.errors import EvalError
from vissl_lite.eval.sslmem import alignment_per_image, read_candidates, sslmem_scores

pytestmark = pytest.mark.usefixtures("one_thread")


class RandomProjection(nn.Module):
    """g: a fixed random linear map of the pixels (not invariant to the augmentations)."""

    def __init__(self, seed=0):
        super().__init__()
        self.proj = nn.Linear(3 * 8 * 8, 16)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(16, 192, generator=torch.Generator().manual_seed(seed)))
            self.proj.bias.zero_()

    def forward(self, x):
        return self.proj(x.flatten(1))


class Memorised(RandomProjection):
    """f: g, except that images near ``template`` (the candidate f was trained on) map to one
    constant embedding, whatever the augmentation: f aligns that image's views perfectly."""

    def __init__(self, template, seed=0):
        super().__init__(seed)
        self.register_buffer("template", template.mean((1, 2)))

    def forward(self, x):
        near = ((x.mean((2, 3)) - self.template).norm(dim=1) < 0.05).float().unsqueeze(1)
        return (1 - near) * super().forward(x) + near * torch.ones(1, 16)


def augment(images, num_views, seed=0):
    """(N, V, 3, 8, 8): random flips and small noise of each image."""
    g = torch.Generator().manual_seed(seed)
    views = images.unsqueeze(1).repeat(1, num_views, 1, 1, 1)
    flip = torch.rand(views.shape[:2], generator=g) < 0.5
    views[flip] = views[flip].flip(-1)
    return views + 0.01 * torch.randn(views.shape, generator=g)


def test_alignment_is_the_mean_pairwise_distance_of_normalised_views():
    f = torch.randn(3, 4, 5)
    z = f / f.norm(dim=-1, keepdim=True)
    expected = [sum(float((z[i, a] - z[i, b]).norm()) for a, b in itertools.permutations(range(4), 2)) / 12
                for i in range(3)]
    torch.testing.assert_close(alignment_per_image(f), torch.tensor(expected, dtype=torch.float64))


def test_identical_encoders_score_zero():
    images = torch.rand(6, 3, 8, 8)
    g = RandomProjection()
    res = sslmem_scores(augment(images, 4), g, g, device="cpu")
    assert torch.equal(res["raw"], torch.zeros(6, dtype=torch.float64))
    assert torch.equal(res["score"], torch.zeros(6, dtype=torch.float64))


def test_an_image_seen_only_by_one_encoder_scores_highest():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(8, 3, 8, 8, generator=g)
    images[3] = images[3] * 0.2 + 0.8                       # its colour is unlike the others
    f = Memorised(images[3])
    res = sslmem_scores(augment(images, 6), f, RandomProjection(), device="cpu")
    assert int(res["score"].argmax()) == 3
    assert res["align_with"][3] == 0 and res["align_without"][3] > 0
    others = torch.cat([res["score"][:3], res["score"][4:]])
    assert torch.allclose(others, torch.zeros(7, dtype=torch.float64))   # f = g elsewhere
    assert float(res["score"].max() - res["score"].min()) == pytest.approx(1.0)


def test_candidates_from_a_file_or_a_range(tmp_path):
    path = tmp_path / "idx.txt"
    path.write_text("# candidates\n3, 5\n7\n")
    assert read_candidates(str(path), 10) == [3, 5, 7]
    assert read_candidates("2:5", 10) == [2, 3, 4]
    with pytest.raises(EvalError, match="outside the train split of 6"):
        read_candidates(str(path), 6)
    with pytest.raises(EvalError, match="no such file"):
        read_candidates(str(tmp_path / "missing.txt"), 6)
    with pytest.raises(EvalError, match="V >= 2"):
        sslmem_scores(torch.rand(2, 1, 3, 8, 8), RandomProjection(), RandomProjection())


def test_candidates_from_a_folder_of_images(tmp_path):
    from PIL import Image

    from vissl_lite.eval.sslmem import folder_images

    (tmp_path / "sub").mkdir()
    for name in ("b.png", "sub/a.jpg"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in folder_images(str(tmp_path))] == ["b.png", "a.jpg"]
    with pytest.raises(EvalError, match="a folder without images"):
        folder_images(str(tmp_path / "sub" / "missing"))
