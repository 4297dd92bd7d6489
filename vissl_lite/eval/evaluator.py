"""The evaluator plugin interface: one registered class per evaluation, and the context it runs in.

An evaluator is ONE file in ``vissl_lite/eval/`` with a class registered in
``vissl_lite.registry.EVALUATORS``::

    @EVALUATORS.register("knn", help="one line for `vissl-lite list` and `vissl-lite eval -h`")
    class KNNEvaluator(Evaluator):
        needs_labels = True                        # skipped (with the reason) on label-free data

        @classmethod
        def add_arguments(cls, parser): ...        # its own options of `vissl-lite eval knn`

        def run(self, ctx: EvalContext) -> EvalResult: ...

``vissl-lite eval <name>`` takes its choices, help, options and dispatch from the registry
(``eval/cli.py``); ``vissl-lite eval report`` runs every evaluator that applies to the data.
``EvalContext`` gives an evaluator what it needs without knowing where it comes from: the frozen
encoder, the data sets of each split, their features (extracted once, cached on disk, shared by
every evaluator of one run), whether labels exist, and where to write figures.
"""
from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from vissl_lite import distributed as dist
from vissl_lite.errors import DataError, EvalError
from vissl_lite.eval.features import (EvalWarning, cache_key, cached_features, data_fingerprint,
                                      extract_features, random_subset, resolve_device)
from vissl_lite.eval.transforms import card_transform, eval_transform, resolve_mean_std
from vissl_lite.backbones.specs import GRAMMAR
from vissl_lite.data.config import DataConfig
from vissl_lite.data import build_dataset

#: encoder, info = load_encoder("runs/x/checkpoints/last.pt" | "random:resnet18");
#: info: model_id, image_size, mean, std, augment (the pretraining recipe's config or None)
EncoderLoader = Callable[[str], Tuple[nn.Module, Dict[str, Any]]]


@dataclass
class EvalResult:
    """What one evaluator found: numbers, and optionally tables, figures and notes for the report."""

    metrics: Dict[str, Any]
    tables: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)   # title -> rows
    figures: Dict[str, str] = field(default_factory=dict)                  # caption -> PNG path
    notes: List[str] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)                    # more JSON


class Evaluator:
    """Base class of an evaluator (see the module docstring)."""

    needs_labels: ClassVar[bool] = False    # labelled train (and test) split
    needs_test: ClassVar[bool] = False      # a test split besides train
    needs_data: ClassVar[bool] = True       # --data is required (False: the evaluator finds its own)
    #: the positional arguments of `vissl-lite eval <name>`: (dest, help)
    positionals: ClassVar[Tuple[Tuple[str, str], ...]] = (
        ("checkpoint", f"the encoder: {GRAMMAR}"),)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this evaluator's own options (names unique across evaluators: `report` adds several)."""

    @classmethod
    def unavailable(cls) -> Optional[str]:
        """Why this evaluator cannot run here (a missing optional package), or None."""
        return None

    def run(self, ctx: "EvalContext") -> EvalResult:
        raise NotImplementedError


class Transformed(Dataset):
    """``(transform(image), label)`` of a data set that yields (image, label)."""

    def __init__(self, dataset: Dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return self.transform(image), label


class EvalContext:
    """The encoder, data and features of one evaluation run (built by ``eval/cli.py``).

    ``args`` holds the common options of ``vissl-lite eval`` (data, dataset, image_size,
    subset_train, subset_test, batch_size, num_workers, seed, device, precision, cache_dir,
    no_cache) and the evaluator's own; ``load_encoder`` turns a checkpoint spec into an encoder;
    figures go to ``figure_dir`` (None: no figures) with ``figure_prefix`` in front of their names.
    """

    def __init__(self, args: argparse.Namespace, load_encoder: EncoderLoader,
                 figure_dir: Optional[Path] = None, figure_prefix: str = "",
                 checkpoint: Optional[str] = None):
        self.args = args
        self.load_encoder = load_encoder
        self.figure_dir = Path(figure_dir) if figure_dir is not None else None
        self.figure_prefix = figure_prefix
        self.device = resolve_device(args.device)
        self.checkpoint = checkpoint or getattr(args, "checkpoint", None)
        self._encoder: Optional[nn.Module] = None
        self._info: Dict[str, Any] = {}
        self._features: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._base: Dict[str, Dataset] = {}   # each split read once (an archive is decoded once)
        self._missing: Dict[str, str] = {}
        self._data_ids: Dict[str, str] = {}
        self.cache_hits: Dict[str, bool] = {}
        #: results one evaluator computes and another reuses (the fast linear probe: ``risk``)
        self.memo: Dict[str, Any] = {}

    def sibling(self, load_encoder: EncoderLoader, checkpoint: str) -> "EvalContext":
        """Another encoder on the same data and options (the data sets are read once for both);
        no figures."""
        other = EvalContext(self.args, load_encoder, checkpoint=checkpoint)
        other._base, other._missing, other._data_ids = self._base, self._missing, self._data_ids
        return other

    def on_data(self, args: argparse.Namespace, splits: Dict[str, Dataset],
                data_ids: Dict[str, str]) -> "EvalContext":
        """The same encoder on other data (``splits``: split -> Dataset of (image, label);
        ``data_ids``: what identifies each split's images in the feature cache); no figures."""
        other = EvalContext(args, lambda _spec: (self.encoder, self.info), checkpoint=self.checkpoint)
        other._base, other._data_ids = dict(splits), dict(data_ids)
        return other

    # -- encoder --------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._encoder is None:
            if not self.checkpoint:
                raise EvalError("this evaluation needs a checkpoint")
            encoder, self._info = self.load_encoder(self.checkpoint)
            self._encoder = encoder.to(self.device).eval()

    @property
    def encoder(self) -> nn.Module:
        self._load()
        return self._encoder

    @property
    def info(self) -> Dict[str, Any]:
        self._load()
        return self._info

    @property
    def encoder_loaded(self) -> bool:
        return self._encoder is not None

    @property
    def image_size(self) -> int:
        return int(self.args.image_size or self.info["image_size"])

    @property
    def mean_std(self) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        return resolve_mean_std(self.image_size, self.info["mean"], self.info["std"])

    def eval_transform(self):
        """The deterministic transform of the encoder's card (resize, crop, interpolation, norm)."""
        card = self.info.get("card")
        return card_transform(card) if card is not None else eval_transform(self.image_size,
                                                                             *self.mean_std)

    # -- data -----------------------------------------------------------------------------------
    def data_cfg(self):
        from omegaconf import OmegaConf

        if not Path(self.args.data).exists() and self.args.dataset == "imagefolder":
            raise EvalError(f"data not found: {self.args.data} (give an ImageFolder directory or "
                            f".tar.gz with train/ and test/, or --dataset cifar10 with its root)")
        return OmegaConf.structured(DataConfig(name=self.args.dataset, root=str(self.args.data),
                                               image_size=self.image_size,
                                               num_workers=self.args.num_workers))

    def subset_size(self, split: str) -> Optional[int]:
        return getattr(self.args, f"subset_{split}", None)

    def subset_seed(self, split: str) -> int:
        return self.args.seed + (0 if split == "train" else 1)

    def dataset(self, split: str, transform=None, subset: Optional[int] = None,
                seed: Optional[int] = None, required: bool = True) -> Optional[Dataset]:
        """``split`` with ``transform`` (default: the evaluation transform), ``--subset-<split>``
        random images of it; None when the split does not exist and ``required`` is False."""
        if split in self._missing:
            if required:
                raise EvalError(self._missing[split])
            return None
        if transform is None:
            transform = self.eval_transform()
        if split not in self._base:
            try:
                self._base[split] = build_dataset(self.data_cfg(), split)
            except DataError as e:
                if required:
                    raise
                self._missing[split] = f"no {split} split ({e})"
                return None
            self._data_ids[split] = data_fingerprint(self.args.data, self._base[split])
        dataset = Transformed(self._base[split], transform)
        size = self.subset_size(split) if subset is None else subset
        if size:
            dataset = Subset(dataset, random_subset(len(dataset), size,
                                                     self.subset_seed(split) if seed is None else seed))
        return dataset

    def has_split(self, split: str) -> bool:
        return split in self._features or self.dataset(split, required=False) is not None

    def missing_reason(self, split: str) -> str:
        return self._missing.get(split, "")

    def classes(self) -> Optional[List[str]]:
        self.dataset("train")
        classes = getattr(self._base["train"], "classes", None)
        return list(classes) if classes else None

    def has_labels(self, split: str = "train") -> bool:
        """Every image of ``split`` has a label (>= 0); unlabelled images carry -1."""
        return self.has_split(split) and bool((self.features(split)[1] >= 0).all())

    def num_classes(self) -> Optional[int]:
        classes = self.classes()
        if classes:
            return len(classes)
        labels = [self.features(s)[1] for s in ("train", "test") if self.has_split(s)]
        top = max(int(y.max()) for y in labels) if labels else -1
        return top + 1 if top >= 0 else None

    # -- features -------------------------------------------------------------------------------
    def extract(self, data, **kw) -> Tuple[torch.Tensor, torch.Tensor]:
        """Features of ``data`` (a Dataset or tensor) through the frozen encoder, not cached."""
        opts = dict(batch_size=self.args.batch_size, device=self.device,
                    num_workers=self.args.num_workers, precision=self.args.precision)
        opts.update(kw)
        return extract_features(self.encoder, data, **opts)

    def features(self, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D), labels (N,)) of ``split`` with the evaluation transform, cached."""
        if split not in self._features:
            dataset = self.dataset(split)
            mean, std = self.mean_std
            transform = repr(self.eval_transform())
            extra = f"{self.args.dataset}|seed{self.subset_seed(split)}|{mean}|{std}|{transform}"
            key = cache_key(self.info["model_id"], self._data_ids[split], split, self.image_size,
                            self.subset_size(split), extra=extra)
            cache_dir = None if self.args.no_cache else self.args.cache_dir
            self._features[split], self.cache_hits[split] = cached_features(
                cache_dir, key, lambda: self.extract(dataset, progress=dist.is_main()))
        return self._features[split]

    def labelled_features(self):
        """(xtr, ytr, xte, yte), or an EvalError naming what is missing."""
        if not self.has_split("test"):
            raise EvalError(f"this evaluation needs a test split: {self.missing_reason('test')}")
        (xtr, ytr), (xte, yte) = self.features("train"), self.features("test")
        if not self.has_labels("train") or not self.has_labels("test"):
            raise EvalError("this evaluation needs labels, but the data has unlabelled images "
                            "(label -1); run a label-free evaluator (rankme, umap_cluster)")
        return xtr, ytr, xte, yte

    # -- outputs --------------------------------------------------------------------------------
    def figure_path(self, name: str) -> Optional[Path]:
        """Where to write the figure ``name`` (a .png), or None when figures are off."""
        if self.figure_dir is None or not dist.is_main():
            return None
        self.figure_dir.mkdir(parents=True, exist_ok=True)
        return self.figure_dir / f"{self.figure_prefix}{name}"

    def warn(self, message: str) -> None:
        warnings.warn(message, EvalWarning, stacklevel=2)

    def describe_data(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"path": str(self.args.data), "dataset": self.args.dataset}
        try:
            mean, std = self.mean_std   # loads the encoder if no evaluator has
            out.update(image_size=self.image_size, mean=list(mean), std=list(std))
        except EvalError:               # none given, or a spec that cannot load (said elsewhere)
            pass
        for split, (x, _) in self._features.items():
            out[f"num_{split}"] = len(x)
            out["feature_dim"] = int(x.shape[1])
        out["features_cached"] = dict(self.cache_hits)
        return out
