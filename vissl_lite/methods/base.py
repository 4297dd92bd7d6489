"""The one interface between the trainer and a self-supervised method.

A ``Method`` is an ``nn.Module`` built from a backbone plus its heads. It tells the augmentation
pipeline which views it needs (``views``), turns a batch of views into a loss (``training_step``),
updates what is not learned by gradient (``on_step_end``: EMA teachers, centers, schedules), and
hands evaluators the encoder to freeze (``backbone_for_eval``). The trainer calls nothing else and
knows no method by name.

Every method is constructed the same way, ``cls(backbone, cfg)``, where ``cfg`` is a dict, an
omegaconf ``DictConfig`` or an instance of the method's ``Config`` dataclass (missing keys take the
dataclass defaults). ``Method.__init__`` validates it into ``self.cfg``, a ``Config`` instance: a
wrong key or type raises :class:`~vissl_lite.errors.ConfigError`, as do the range checks a
``Config`` makes in its ``__post_init__``.

Batch format given to ``training_step`` (built by ``vissl_lite.data.loader``):
    {"views":  [Tensor(B, 3, H_i, W_i), ...]   float, normalised, on the training device;
                                              global views first, then local views
     "labels": Tensor(B) long                 never used for the loss; for online monitors only
     "index":  Tensor(B) long                 position of each sample in the data set
     "boxes":  [Tensor(B, 5), ...]}           only for a ViewSpec with crop_boxes: each view's crop
                                              (top, left, h, w in source pixels, 1 if mirrored)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.config_rules import backbone_mismatch
from vissl_lite.errors import ConfigError
from vissl_lite.shapes import RunShape


@dataclass
class StepOutput:
    """A training step's scalar loss, the numbers to log (0-d tensors or Python floats) and,
    optionally, the detached (B, D) encoder features of the first global view: the online linear
    head (``monitor.online_linear``) trains on them at no extra forward pass."""

    loss: torch.Tensor
    metrics: Dict[str, Any] = field(default_factory=dict)
    embedding: Optional[torch.Tensor] = None


@dataclass
class MethodConfig:
    """The config of a method that has no hyper-parameters of its own."""

    name: str = ""


def method_config(config_cls: type, cfg: Any = None) -> Any:
    """``cfg`` (None, dict, DictConfig or a ``config_cls`` instance) -> a validated ``config_cls``."""
    if isinstance(cfg, config_cls):
        return cfg
    if cfg is None:
        cfg = {}
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    if not isinstance(cfg, (dict, DictConfig)):
        raise ConfigError(f"a method's config must be a dict, a DictConfig or a "
                          f"{config_cls.__name__}, got {type(cfg).__name__}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(config_cls), cfg)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"method.{key}: {str(e).splitlines()[0]}") from None


def check_backbone_family(method_cls: type, backbone: nn.Module, backbone_name: str = "") -> None:
    """Raise if ``method_cls`` cannot train this kind of backbone (e.g. MAE on a ResNet)."""
    family = getattr(backbone, "family", None)
    message = backbone_mismatch(method_cls.Config().name, method_cls.supported_backbones,
                                backbone_name or type(backbone).__name__, family)
    if message:
        raise ConfigError(message)


def per_rank_buffer_names(module: nn.Module) -> List[str]:
    """Fully qualified names of the per-rank buffers of ``module`` and its submodules (an add-on's
    base method included): what the engine hands DDP to leave alone and checkpoints per rank.

    Everything else DDP may broadcast from rank 0: BatchNorm's running statistics and state that
    is equal on every rank by construction (DINO's all-reduced center, step counters)."""
    return [f"{prefix}.{name}" if prefix else name
            for prefix, sub in module.named_modules()
            for name in getattr(type(sub), "per_rank_buffers", ())]


class Method(nn.Module):
    """Base class of every method plugin (see module docstring).

    Subclasses set ``Config`` to a dataclass of their hyper-parameters (with a ``name`` field equal
    to the registered name), are registered with ``@METHODS.register("name")`` and call
    ``super().__init__(backbone, cfg)`` first.
    """

    Config: ClassVar[type] = MethodConfig
    views: ViewSpec = ViewSpec()

    #: minimum global batch the loss is defined for (checked by the trainer before it starts)
    min_batch_size: ClassVar[int] = 2
    #: backbone families the method supports, e.g. ("vit",); empty means any
    supported_backbones: ClassVar[tuple] = ()
    #: config overrides giving a small instance (narrow heads) for the generic tests, which are
    #: parametrised over the registry, and for CPU smoke benchmarks
    tiny_config: ClassVar[Dict[str, Any]] = {}
    #: names of this module's buffers that hold its rank's own data (SwAV's queue): DDP never
    #: broadcasts them and a checkpoint keeps every rank's copy (``per_rank_buffer_names``)
    per_rank_buffers: ClassVar[Tuple[str, ...]] = ()
    #: training_step compiles as one graph (tests/test_step_hygiene.py checks every method), so
    #: ``train.compile=auto`` turns torch.compile on for it on a GPU; set False to opt out
    compile_ok: ClassVar[bool] = True
    #: why this method cannot train under ``train.strategy=fsdp`` (empty: it can); the engine
    #: raises it as one line naming the method (``engine/sharding.py``)
    fsdp_unsupported: ClassVar[str] = ""

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__()
        check_backbone_family(type(self), backbone)
        self.cfg = method_config(self.Config, cfg)
        self.backbone = backbone
        self.total_steps = 0
        self.steps_per_epoch = 0

    @classmethod
    def check_run(cls, cfg: Any, shape: RunShape) -> None:
        """Load-time rules (``vissl_lite.shapes``): ``cfg``, the method section, validated into
        ``Config`` (its range checks run), the smallest batch, then ``check_shape``."""
        c = method_config(cls.Config, cfg)
        shape.check_min_batch(c.name, cls.min_batch_size)
        cls.check_shape(c, shape)

    @classmethod
    def check_shape(cls, cfg: Any, shape: RunShape) -> None:
        """What the method needs of the batch split and view sizes (``cfg`` is its validated
        ``Config``), known from the config alone: raise a ConfigError naming the key and the fix."""

    def setup(self, total_steps: int, steps_per_epoch: int) -> None:
        """Called once by the trainer before the first step (schedules that depend on run length)."""
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch

    def check_data_size(self, num_samples: int) -> None:
        """Called once by the trainer with the training set's size (on the host, before the first
        step); a method whose shapes depend on it (DIET-CP's datum-index head) checks it here."""

    def forward(self, batch: Dict[str, Any]) -> StepOutput:
        return self.training_step(batch)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        raise NotImplementedError

    def on_before_optimizer_step(self, step: int) -> None:
        """Hook after backward, before the optimizer step (e.g. DINO freezes its last layer)."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Hook after the optimizer step (e.g. EMA teacher update)."""

    def clip_groups(self) -> Dict[str, List[nn.Parameter]]:
        """The trainable parameters by part, for ``train.grad_clip_mode=per_module`` (each part's
        gradient is clipped by its own norm, as DINOv2's train.py clips its student's backbone and
        each head). Default: each top-level child module with trainable parameters; the method's
        own parameters (mask tokens, which DINOv2's ViT owns) count with ``backbone``. A method
        whose parts differ overrides this."""
        groups: Dict[str, List[nn.Parameter]] = {}
        seen: set = set()
        for name, child in self.named_children():
            trainable = [p for p in child.parameters() if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in trainable)
            if trainable:
                groups[name] = trainable
        own = [p for p in self.parameters(recurse=False) if p.requires_grad]
        if own:
            groups["backbone"] = groups.get("backbone", []) + own
        return groups

    def backbone_for_eval(self) -> nn.Module:
        """The encoder evaluators freeze: images (B, 3, H, W) -> pooled features (B, D)."""
        return self.backbone

    def extra_state_for_checkpoint(self) -> Dict[str, Any]:
        """Anything outside ``state_dict`` the method must persist (buffers are in state_dict)."""
        return {}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        pass
