"""Our losses equal lightly 1.6's on identical inputs, values and gradients (lightly: test oracle).

lightly is not a dependency: .ci/run installs it with ``--no-deps`` into ``.oracles/`` (its
hydra-core pin would hold omegaconf below 2.4) and tests/conftest.py puts that folder on the path.
Without it these tests are skipped with the reason shown.
"""
from __future__ import annotations

import pytest
import torch

lightly_loss = pytest.importorskip("lightly.loss", reason="lightly not installed (test-only oracle: "
                                                          "pip install --no-deps --target .oracles "
                                                          "'lightly==1.6.*')")

from _helpers import assert_same_value_and_grads as shared_assert_same  # noqa: E402
from vissl_lite.methods.barlow_twins import barlow_twins_loss  # noqa: E402
from vissl_lite.methods.dino import dino_loss, update_center  # noqa: E402
from vissl_lite.methods.simclr import nt_xent_loss  # noqa: E402


def _leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True) for s in shapes]


def assert_same_value_and_grads(ours_fn, theirs_fn, inputs):
    """Values to 1e-6 and gradients to 1e-5 relative, both sides compared in float64."""
    shared_assert_same(lambda *x: ours_fn(*x).double(), lambda *x: theirs_fn(*x).double(), inputs,
                       value_tol=dict(rtol=1e-6, atol=1e-8), grad_tol=dict(rtol=1e-5, atol=1e-8))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_equals_lightly_ntxent(temperature):
    z_a, z_b = _leaves((16, 8), (16, 8))
    theirs = lightly_loss.NTXentLoss(temperature=temperature)
    assert_same_value_and_grads(lambda a, b: nt_xent_loss(a, b, temperature).double(),
                                lambda a, b: theirs(a.float(), b.float()).double(), [z_a, z_b])


def test_barlow_twins_equals_lightly_barlow_twins():
    z_a, z_b = _leaves((32, 12), (32, 12), seed=1)
    theirs = lightly_loss.BarlowTwinsLoss(lambda_param=0.0051)
    assert_same_value_and_grads(lambda a, b: barlow_twins_loss(a, b, 0.0051).double(),
                                lambda a, b: theirs(a.float(), b.float()).double(), [z_a, z_b])


def test_dino_loss_and_center_equal_lightly_dino():
    """Two global + three local crops; the centre after the update is lightly's too."""
    k, b = 32, 6
    teacher = [t.detach() for t in _leaves((b, k), (b, k), seed=2)]
    student = _leaves(*[(b, k)] * 5, seed=3)
    theirs = lightly_loss.DINOLoss(output_dim=k, teacher_temp=0.04, student_temp=0.1,
                                   center_momentum=0.9)
    center = torch.randn(1, k, dtype=torch.float64) * 0.1
    theirs.center.data = center.float().clone()

    def ours_fn(*s):
        return dino_loss(list(s), teacher, center, 0.04, 0.1)

    def theirs_fn(*s):
        return theirs([t.float() for t in teacher], [x.float() for x in s], teacher_temp=0.04)

    assert_same_value_and_grads(ours_fn, theirs_fn, student)
    update_center(center, torch.cat(teacher), 0.9)
    torch.testing.assert_close(center.float(), theirs.center.data.reshape(center.shape))
