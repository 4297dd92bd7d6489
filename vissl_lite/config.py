"""Experiment configuration: YAML presets + command-line overrides, validated against schemas.

A preset may inherit from others with a ``defaults`` list of paths relative to itself or preset
names; they are merged in order, then the file's own keys, then ``key=value`` overrides from the
command line (omegaconf dotlist syntax; ``~key`` removes a key the files set). Reading the files
and the command line is ``config_sources.py``; the method/backbone check that comes before the
rest is ``config_rules.py``. Every source is validated on its own against the typed schemas (the
``method`` section against the chosen method's ``Config`` dataclass), so an error names the key
and the file (or override) it came from, in one line:

    configs/simclr/cifar10_resnet18.yaml: unknown key 'optim.lrr' (did you mean 'optim.lr'?)
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (ConfigKeyError, OmegaConfBaseException,
                              ValidationError)

from vissl_lite.augment.config import AugmentConfig
from vissl_lite.backbones.config import BackboneConfig
from vissl_lite.data.config import DEFAULT_ROOT_DATASETS, DataConfig
from vissl_lite.engine.config import CheckpointConfig, LoggerConfig, OptimConfig, TrainConfig
from vissl_lite.eval.config import MonitorConfig
from vissl_lite.errors import ConfigError, RegistryError
from vissl_lite.config_rules import check_method_backbone
from vissl_lite.config_sources import (FOLDER_KEYS, collect_sources, parse_overrides,
                                       remove_key)
from vissl_lite.presets import resolve_preset
from vissl_lite.registry import METHODS, add_plugins, plugin_specs
from vissl_lite.shapes import check_run_shape


@dataclass
class ExperimentConfig:
    method: Any = field(default_factory=lambda: {"name": "simclr"})
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    seed: int = 0
    deterministic: bool = False
    output_dir: str = "runs/${method.name}_${backbone.name}"
    resume: Optional[str] = None      # null | auto | path to a checkpoint
    overwrite: bool = False           # a new run may delete the run files already in output_dir
    plugins: List[str] = field(default_factory=list)  # folders/.py files of one's own plugins
    configs: List[str] = field(default_factory=list)  # folders of one's own presets


REQUIRED = ("data.root",)

#: keys whose value must be one of a few words (checked after merging, with the list in the error)
CHOICES = {
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.channels_last": ("auto", True, False),
    "train.compile": ("auto", True, False),
    "train.reuse_host_memory": ("auto", True, False),
    "data.num_workers": ("auto", int),
    "train.device": ("auto", "cpu", "cuda"),
    "augment.path": ("auto", "cpu", "gpu"),
    "data.on_corrupt": ("error", "skip"),
    "optim.name": ("sgd", "adamw", "lars"),
    "optim.lars_denominator": ("norm_of_sum", "sum_of_norms"),
    "train.grad_clip_mode": ("global", "per_param", "per_module"),
    "train.activation_checkpointing": ("none", "blocks", "selective"),
    "train.strategy": ("ddp", "fsdp", "auto"),
    "logger.wandb.mode": ("online", "offline", "disabled"),
    "backbone.global_pool": ("avg", "token"),
    "checkpoint.best_metric": ("knn_top1", "knn_top5", "rankme", "online_linear_top1",
                               "online_linear_top5"),
}

#: numeric keys that pass type validation but must not go below a bound (null values are skipped)
MINIMUMS = {
    "optim.lr": 0,
    "optim.weight_decay": 0,
    "optim.exclude_lr_scale": 0,
    "data.num_workers": 0,
    "data.image_size": 1,
    "train.epochs": 1,
    "train.max_steps": 1,
    "checkpoint.every_minutes": 0,
}


def _method_class(name: str) -> type:
    """The method's class, or its stand-in read from the source (no torch: ``plugin_scan.py``)."""
    try:
        return METHODS.light(name)
    except RegistryError as e:
        raise ConfigError(f"method.name: {e}") from None


def _method_schema(name: str) -> DictConfig:
    return OmegaConf.structured(_method_class(name).Config)


def _check_known(key: str, source: str) -> None:
    """A ``~key`` must name a key of the schema (a typo would remove nothing, silently)."""
    section, _, leaf = key.rpartition(".")
    node = OmegaConf.select(OmegaConf.structured(ExperimentConfig), section) if section else None
    if section == "method" or key in FOLDER_KEYS or (isinstance(node, DictConfig) and leaf in node):
        return
    if not section and leaf in OmegaConf.structured(ExperimentConfig):
        return
    known = [f"{section}.{k}" if section else str(k)
             for k in (node if isinstance(node, DictConfig)
                       else OmegaConf.structured(ExperimentConfig))]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '~{close[0]}'?" if close else "`vissl-lite config CONFIG` shows the keys"
    raise ConfigError(f"{source}: unknown key '{key}' ({hint})")


def _schema(method_name: str, base_name: Optional[str] = None) -> DictConfig:
    schema = OmegaConf.structured(ExperimentConfig)
    OmegaConf.set_struct(schema, False)
    schema.method = _method_schema(method_name)
    if base_name is not None and "base" in schema.method:
        # an add-on method (methods/addon.py) nests the config of the method it wraps
        schema.method.base = _method_schema(base_name)
    OmegaConf.set_struct(schema, True)
    return schema


def _known_keys(schema: DictConfig, full_key: str) -> List[str]:
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    node = OmegaConf.select(schema, parent) if parent else schema
    if not isinstance(node, DictConfig):
        return []
    return [f"{parent}.{k}" if parent else str(k) for k in node.keys()]


def _explain(e: OmegaConfBaseException, source: str, schema: DictConfig) -> ConfigError:
    key = getattr(e, "full_key", None) or "?"
    if isinstance(e, ConfigKeyError):
        close = difflib.get_close_matches(key, _known_keys(schema, key), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return ConfigError(f"{source}: unknown key '{key}'{hint}")
    if isinstance(e, ValidationError):
        msg = str(e).splitlines()[0]
        return ConfigError(f"{source}: wrong type for '{key}': {msg}")
    return ConfigError(f"{source}: invalid value for '{key}': {str(e).splitlines()[0]}")


def _validate(schema: DictConfig, raw: DictConfig, source: str) -> None:
    try:
        OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as e:
        raise _explain(e, source, schema) from None


def load_config(path: Optional[str | os.PathLike] = None, overrides: Sequence[str] = (),
                require: Sequence[str] = REQUIRED) -> DictConfig:
    """Load a preset, apply overrides, validate, and return a resolved read-only ``DictConfig``."""
    sources = collect_sources(resolve_preset(path)) if path else []
    items, removals = parse_overrides(overrides)
    for position, key, source in removals:  # ~key: from what the files and earlier items set
        _check_known(key, source)
        remove_key([*sources, *items[:position]], key)
    sources += items

    raw_merged = OmegaConf.merge(*[c for _, c in sources]) if sources else OmegaConf.create()
    add_plugins(list(raw_merged.get("plugins") or []))
    method_name = OmegaConf.select(raw_merged, "method.name", default="simclr")
    if not isinstance(method_name, str):
        raise ConfigError("method.name must be a string naming a method (see `vissl-lite list`)")
    base_name = OmegaConf.select(raw_merged, "method.base.name", default=None)
    schema = _schema(method_name, base_name if isinstance(base_name, str) else None)
    supported = getattr(_method_class(method_name), "supported_backbones", ())
    check_method_backbone(sources, method_name, supported)

    for source, raw in sources:
        _validate(schema, raw, source)
    cfg = OmegaConf.merge(schema, *[c for _, c in sources])
    # validated against the (maybe stand-in) Config; the method checks its own values when built
    cfg.method = OmegaConf.create(OmegaConf.to_container(cfg.method))
    cfg.plugins = plugin_specs()  # all that was searched (--plugins, $VISSL_LITE_PLUGINS): recorded

    for key in require:
        if key == "data.root" and OmegaConf.select(cfg, "data.name") in DEFAULT_ROOT_DATASETS:
            continue  # downloaded into / read from $VISSL_LITE_DATA
        if OmegaConf.is_missing(cfg, key) or OmegaConf.select(cfg, key) is None:
            origin = f"in {sources[-1][0]} or " if sources and path else ""
            raise ConfigError(f"missing required value '{key}': set it {origin}on the command "
                              f"line, e.g. {key}=/path/to/data")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if not _allowed(value, allowed):
            words = ", ".join("an integer" if a is int else str(a).lower() for a in allowed)
            raise ConfigError(f"invalid value {key}={value!r}: choose one of {words}")
    for key, minimum in MINIMUMS.items():
        value = OmegaConf.select(cfg, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < minimum:
            raise ConfigError(f"invalid value {key}={value!r}: it must be >= {minimum}")
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve interpolation at '{getattr(e, 'full_key', '?')}': "
                          f"{str(e).splitlines()[0]}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing required value '{missing[0]}': set it in the config file or "
                          f"on the command line ({missing[0]}=...)")
    check_run_shape(cfg, global_view_size(cfg))
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _allowed(value: Any, allowed: Sequence[Any]) -> bool:
    """``value`` is one of ``allowed`` (the type ``int`` admits any integer, whose range
    ``MINIMUMS`` checks; booleans only match booleans)."""
    for a in allowed:
        if a is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if isinstance(a, bool) and isinstance(value, bool) and a == value:
            return True
        if isinstance(a, str) and isinstance(value, str) and a == value:
            return True
    return False


def default_config(method: str = "simclr", overrides: Sequence[str] = ()) -> DictConfig:
    """A validated config from the schema defaults alone (handy in notebooks and tests)."""
    return load_config(None, [f"method.name={method}", *overrides], require=())


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically), next to a run's outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, path)


def to_dict(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _sizes(cfg: Any) -> Tuple[Optional[int], Optional[int]]:
    augment, data = cfg.get("augment") or {}, cfg.get("data") or {}
    return augment.get("global_size"), data.get("image_size")


def global_view_size(cfg: Any) -> int:
    """The side of the global views a run trains on (what the model and the evaluators see):
    ``augment.global_size``, else ``data.image_size``, else 32. ``cfg`` is a full experiment
    config or its dict (a checkpoint's ``config``)."""
    global_size, image_size = _sizes(cfg)
    return int(global_size or image_size or 32)


def data_image_size(cfg: Any) -> int:
    """The side of the images the data pipeline decodes (before cropping to the views):
    ``data.image_size``, else ``augment.global_size``, else 32."""
    global_size, image_size = _sizes(cfg)
    return int(image_size or global_size or 32)


def dataclass_from(section: DictConfig, cls: type):
    """Instantiate a schema dataclass from a validated config section."""
    names = {f.name for f in dataclasses.fields(cls)}
    data = OmegaConf.to_container(section, resolve=True)
    return cls(**{k: v for k, v in data.items() if k in names})
