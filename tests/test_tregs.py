"""T-REGS: the MST length equals scipy's, its gradient flows through the chosen edges, the
standalone loss and the add-on against their formulas, one graph per step."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.sparse.csgraph import minimum_spanning_tree

from _helpers import tiny_method, views_batch
from _je import assert_one_graph
from vissl_lite.errors import ConfigError
from vissl_lite.methods.tregs import mst_length, t_reg


def scipy_mst(z: torch.Tensor):
    """(length, edges) of the MST of the rows of z by scipy."""
    dist = torch.cdist(z.double(), z.double()).numpy()
    tree = minimum_spanning_tree(dist).tocoo()
    return float(tree.sum()), list(zip(tree.row.tolist(), tree.col.tolist()))


@pytest.mark.parametrize("b,d", [(2, 3), (9, 4), (33, 8)])
def test_mst_length_equals_scipy(b, d):
    z = torch.randn(b, d)
    assert mst_length(z).item() == pytest.approx(scipy_mst(z)[0], rel=1e-5)


def test_gradient_flows_through_the_chosen_edges():
    z = torch.randn(12, 5, requires_grad=True)
    mst_length(z).backward()
    ref = z.detach().clone().requires_grad_(True)
    _, edges = scipy_mst(ref.detach())
    sum((ref[i] - ref[j]).norm() for i, j in edges).backward()
    torch.testing.assert_close(z.grad, ref.grad)


def test_t_reg_formula():
    z = torch.randn(10, 4)
    length, _ = scipy_mst(z)
    sphere = float(((z.double().norm(dim=1) - 1) ** 2).sum())
    assert t_reg(z, 0.3, 2.0).item() == pytest.approx(-0.3 * length + 2.0 * sphere, rel=1e-5)
    assert t_reg(z, 0.3, 2.0, "mean").item() == pytest.approx((-0.3 * length + 2.0 * sphere) / 10, rel=1e-5)


def test_standalone_step_matches_formula():
    torch.manual_seed(0)
    method = tiny_method("tregs", gamma=0.5, lam=2.0, inv_coeff=3.0, reduction="sum")
    method.train()
    batch = views_batch(method, batch=8)
    out = method.training_step(batch)
    with torch.no_grad():
        z_a, z_b = (method.projector(method.backbone(v)) for v in batch["views"])
    expected = 3.0 * F.mse_loss(z_a, z_b).item()
    for z in (z_a, z_b):
        expected += -0.5 * scipy_mst(z)[0] + 2.0 * float(((z.norm(dim=1) - 1) ** 2).sum())
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)


def test_add_on_regularises_the_base_projections_and_is_exact_when_off():
    base = {"name": "simclr", "proj_hidden_dim": 32, "proj_output_dim": 16}
    torch.manual_seed(0)
    plain = tiny_method("simclr", proj_hidden_dim=32, proj_output_dim=16)
    on = tiny_method("treg", base=base, gamma=0.5)
    off = tiny_method("treg", base=base, gamma=0.0, lam=0.0)
    for m in (on, off):
        m.base.load_state_dict(plain.state_dict())
        m.train()
    plain.train()
    batch = views_batch(plain, batch=8)
    base_loss = plain.training_step(batch).loss
    assert torch.equal(off.training_step(batch).loss, base_loss)
    out = on.training_step(batch)
    with torch.no_grad():
        z = plain.projector(plain.backbone(torch.cat(batch["views"])))
    expected = base_loss.item() + sum(t_reg(v, 0.5, 1.0, "mean").item() for v in z.chunk(2))
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ConfigError, match="embedding"):
        tiny_method("treg", base=base, embedding="nope")
    with pytest.raises(ConfigError, match="reduction"):
        tiny_method("tregs", reduction="max")


def test_steps_are_one_graph():
    for name in ("tregs", "treg"):
        method = tiny_method(name)
        assert_one_graph(method, views_batch(method, batch=4))
