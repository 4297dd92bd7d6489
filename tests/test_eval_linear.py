"""Linear probes: known answers, agreement with scikit-learn, the augmented (standard) protocol."""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

import _helpers
from vissl_lite.eval import linear_probe, linear_probe_augmented
from vissl_lite.eval.transforms import eval_transform, train_probe_transform


gaussian_clusters = partial(_helpers.gaussian_clusters, num_classes=5, dim=16, center_seed=7, center_scale=2.0)


def test_separable_gives_100_and_random_labels_give_chance():
    xtr, ytr = gaussian_clusters(600, seed=1)
    xte, yte = gaussian_clusters(300, seed=2)
    res = linear_probe(xtr, ytr, xte, yte, weight_decays=(1e-4, 1e-2), max_iter=100, device="cpu")
    assert res["linear_top1"] == 100.0 and res["linear_val_top1"] == 100.0
    g = torch.Generator().manual_seed(3)
    rand = linear_probe(xtr, torch.randint(0, 5, (600,), generator=g), xte,
                        torch.randint(0, 5, (300,), generator=g), weight_decays=(1e-2,), device="cpu")
    assert 12.0 < rand["linear_top1"] < 28.0          # chance 20%; 300 samples: sd 2.3


def test_agrees_with_sklearn_logistic_regression():
    xtr, ytr = gaussian_clusters(800, spread=5.0, seed=4)   # overlapping classes
    xte, yte = gaussian_clusters(400, spread=5.0, seed=5)
    wd = 1e-3
    ours = linear_probe(xtr, ytr, xte, yte, weight_decays=(wd,), device="cpu")["linear_top1"]
    scaler = StandardScaler().fit(xtr.numpy())
    sk = LogisticRegression(C=1.0 / (wd * len(xtr)), max_iter=5000, tol=1e-8)
    sk.fit(scaler.transform(xtr.numpy()), ytr.numpy())
    sk_acc = 100.0 * np.mean(sk.predict(scaler.transform(xte.numpy())) == yte.numpy())
    assert 40.0 < sk_acc < 95.0
    assert abs(ours - sk_acc) <= 1.0


def test_sweep_picks_by_held_out_accuracy_and_sgd_works():
    xtr, ytr = gaussian_clusters(400, spread=5.0, seed=6)
    xte, yte = gaussian_clusters(200, spread=5.0, seed=7)
    res = linear_probe(xtr, ytr, xte, yte, weight_decays=(10.0, 1e-3), max_iter=100, device="cpu")
    assert res["linear_weight_decay"] == 1e-3          # wd=10 squashes the weights to ~0
    sgd = linear_probe(xtr, ytr, xte, yte, weight_decays=(1e-3,), optimizer="sgd", epochs=20,
                       batch_size=64, device="cpu")
    lbfgs = linear_probe(xtr, ytr, xte, yte, weight_decays=(1e-3,), device="cpu")
    assert abs(sgd["linear_top1"] - lbfgs["linear_top1"]) <= 3.0


class ColourImages(torch.utils.data.Dataset):
    """Class 0: reddish, class 1: bluish 32x32 PIL images with noise."""

    def __init__(self, n, transform, seed):
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 2, n)
        self.images = []
        for y in self.labels:
            base = np.array([170, 60, 60] if y == 0 else [60, 60, 170], dtype=np.float32)
            pixels = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            self.images.append(Image.fromarray(pixels))
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def test_augmented_probe_through_frozen_encoder():
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    before = [p.clone() for p in encoder.parameters()]
    train = ColourImages(96, train_probe_transform(32), seed=0)
    test = ColourImages(64, eval_transform(32), seed=1)
    res = linear_probe_augmented(encoder, train, test, num_classes=2, epochs=3, batch_size=16,
                                 device="cpu", num_workers=0)
    assert res["linear_top1"] == 100.0
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters()))
