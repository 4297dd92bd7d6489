"""DIET-CP: the loss is label-smoothed cross-entropy of the datum-index head written out, the
data-set-size check is one ConfigError before the first step, one graph per step."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _helpers import tiny_method, views_batch
from _je import assert_one_graph
from vissl_lite.errors import ConfigError
from vissl_lite.methods.dietcp import diet_loss


def test_loss_is_label_smoothed_cross_entropy_written_out():
    logits = torch.randn(6, 10, dtype=torch.float64)
    index = torch.tensor([0, 3, 9, 2, 2, 7])
    ls = 0.3
    log_p = logits.log_softmax(dim=1)
    expected = ((1 - ls) * -log_p[torch.arange(6), index] + ls * -log_p.mean(dim=1)).mean()
    torch.testing.assert_close(diet_loss(logits, index, ls), expected.float())


def test_training_step_classifies_the_datum_index():
    torch.manual_seed(0)
    method = tiny_method("dietcp", num_data=20, label_smoothing=0.3)
    method.train()
    batch = views_batch(method, batch=8)
    batch["index"] = torch.tensor([19, 0, 5, 5, 11, 3, 8, 1])
    out = method.training_step(batch)
    h = method.backbone(batch["views"][0])
    expected = F.cross_entropy(method.head(h), batch["index"], label_smoothing=0.3)
    torch.testing.assert_close(out.loss, expected)
    assert method.head.out_features == 20 and out.embedding.shape == h.shape
    out.loss.backward()
    assert method.head.weight.grad is not None


def test_data_set_larger_than_num_data_is_one_config_error():
    method = tiny_method("dietcp", num_data=64)
    method.check_data_size(64)                      # exactly the head's size is fine
    with pytest.raises(ConfigError, match=r"method.num_data=64 but the training set has 100 images; "
                                          r"set method.num_data=100"):
        method.check_data_size(100)
    with pytest.raises(ConfigError, match="num_data"):
        tiny_method("dietcp", num_data=1)
    with pytest.raises(ConfigError, match="label_smoothing"):
        tiny_method("dietcp", label_smoothing=1.0)


def test_trainer_checks_the_data_set_size_before_the_first_step(tmp_path):
    import _toy
    from vissl_lite.config import default_config
    from vissl_lite.engine import Trainer
    from vissl_lite.methods.dietcp import DIETCP
    cfg = default_config("dietcp", [*_toy.BASE, f"output_dir={tmp_path}", "method.num_data=16"])
    method = DIETCP(_toy.ToyEncoder(), cfg.method)
    with pytest.raises(ConfigError, match="set method.num_data=32"):
        Trainer(cfg, method=method, dataset=_toy.ToyImages(32), transform=_toy.toy_views).fit()


def test_one_graph_per_step():
    method = tiny_method("dietcp")
    method.train()
    assert_one_graph(method, views_batch(method, batch=8))
