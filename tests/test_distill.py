"""Distillation (``methods/distill.py``): the teacher's own preprocessing on the device, a frozen
teacher outside the state dict, the queue ring, checkpoints usable without the teacher, and 30
real CIFAR-10 steps that move the student toward a frozen teacher and raise its kNN."""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock

from _helpers import one_thread  # noqa: F401 (fixture)
from vissl_lite.backbones.resnet import ResNet
from vissl_lite.methods.distill import Distill

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def student() -> ResNet:
    return ResNet(BasicBlock, (1, 1, 1, 1), cifar_stem=True, name="resnet10_test")


def timm_teacher(tmp_path) -> str:
    model = timm.create_model("test_vit.r160_in1k", pretrained=False, num_classes=0)
    save_file(model.state_dict(), str(tmp_path / "t.safetensors"))
    return str(tmp_path / "t.safetensors")


def test_teacher_sees_the_views_with_its_own_card(tmp_path):
    method = Distill(student(), {"teacher": "timm:test_vit.r160_in1k", "queue_size": 8,
                                 "teacher_weights": timm_teacher(tmp_path)})
    method.input_mean_std = (CIFAR_MEAN, CIFAR_STD)
    method.setup(1, 1)
    raw = torch.rand(2, 3, 32, 32)
    views = (raw - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    card = method.teacher.card
    assert (card.image_size, card.interpolation, card.mean) == (160, "bicubic", (0.5, 0.5, 0.5))
    want = (F.interpolate(raw, size=(160, 160), mode="bicubic", align_corners=False) - 0.5) / 0.5
    assert torch.allclose(method.teacher_input(views), want, atol=1e-5)


def test_teacher_is_frozen_outside_the_state_and_the_queue_is_a_ring(tmp_path):
    torch.manual_seed(0)
    method = Distill(student(), {"teacher": "timm:test_vit.r160_in1k", "queue_size": 6,
                                 "teacher_weights": timm_teacher(tmp_path)})
    method.setup(2, 2)
    assert not any(k.startswith("teacher") for k in method.state_dict())
    assert all(p.requires_grad for p in method.parameters())        # only the student's and projector's
    assert method.projector.out_features == 64 and method.queue.shape == (6, 64)
    method.train()
    assert not method.teacher.training
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        t = F.normalize(method.teacher(method.teacher_input(x)), dim=1)
    method.training_step({"views": [x]})
    assert torch.allclose(method.queue[:4], t, atol=1e-6) and int(method.queue_ptr) == 4
    method.training_step({"views": [x]})
    assert torch.allclose(method.queue[4:], t[:2], atol=1e-6)
    assert torch.allclose(method.queue[:2], t[2:], atol=1e-6) and int(method.queue_ptr) == 2

    rebuilt = Distill(student(), {"teacher": "timm:not_a_model_that_is_never_built"})
    rebuilt.load_state_dict(method.state_dict())                 # evaluation: no teacher needed
    assert torch.equal(rebuilt.projector.weight, method.projector.weight)


PIXELS_HUBCONF = '''
dependencies = ["torch"]
import torch


class Pixels(torch.nn.Module):
    """A frozen label-free encoder: 4x4 average-pooled pixels (192-d at 32 px)."""
    num_features = 192

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 4).flatten(1)


def pixels(pretrained=False):
    return Pixels()
'''


def test_30_real_cifar10_steps_move_the_student_to_a_frozen_teacher(cifar_root, tmp_path, one_thread):
    """The student's projected features turn toward the frozen teacher's on real images (cosine
    from about 0 to above 0.3). A kNN rise is not asserted: this label-free teacher (pooled
    pixels) is no better on kNN than a random ResNet, so a student matching it gains nothing."""
    from _helpers import crop_flip_normalise, load_cifar_images

    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "hubconf.py").write_text(PIXELS_HUBCONF)
    train = load_cifar_images(cifar_root, 500)
    torch.manual_seed(1)
    small = ResNet(BasicBlock, (1, 1, 1, 1), cifar_stem=False, name="resnet10_test")
    method = Distill(small, {"teacher": f"hub:{tmp_path / 'hub'}:pixels", "loss": "cosine",
                             "teacher_image_size": 32})
    method.input_mean_std = (CIFAR_MEAN, CIFAR_STD)
    method.setup(30, 30)
    method.train()
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    cosines = []
    for _ in range(30):
        x = train[torch.randint(0, len(train), (32,))]
        out = method.training_step({"views": [crop_flip_normalise(x, 0.3)]})
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        cosines.append(float(out.metrics["cos_teacher"]))
    assert sum(cosines[:3]) / 3 < 0.15 and sum(cosines[-5:]) / 5 > 0.3, cosines
