"""Load a local weights file into a backbone (``backbone.pretrained_path``); nothing is downloaded.

Accepted files: a plain state dict saved with ``torch.save`` or as ``.safetensors`` (timm / Hugging
Face releases), or a checkpoint that holds one under
``state_dict``, ``model``, ``teacher``, ``target_encoder`` or ``encoder`` (vissl_lite, timm, DINO,
MAE and I-JEPA checkpoints). A common key prefix such as ``module.`` or ``backbone.`` is found and
stripped, classifier weights (``fc.``, ``head.``) are dropped, and learned position embeddings are
resized to the model's patch grid (timm's ``resample_abs_pos_embed``). Anything else that does not
fit ends in one error listing the missing, unexpected and mis-shaped tensors.
"""
from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List

import torch
from torch import nn

from vissl_lite.errors import BackboneError

CONTAINER_KEYS = ("state_dict", "model", "teacher", "target_encoder", "encoder")
CLASSIFIER_PREFIXES = ("fc.", "head.", "fc_norm.", "heads.", "classifier.")


def load_pretrained_weights(model: nn.Module, path: str | Path) -> None:
    """Load the weights in ``path`` into ``model`` (strictly, after the adaptations above)."""
    path = Path(path).expanduser()
    load_state(model, _unwrap(_read(path), path), path)


def load_state(model: nn.Module, state: Dict[str, torch.Tensor], path) -> None:
    """Load ``state`` (tensors from ``path``: a file or an encoder spec) into ``model``."""
    name = getattr(model, "arch_name", type(model).__name__)
    state = _strip_prefix(state, set(model.state_dict()), path)
    state = {k: v for k, v in state.items()
             if not (k.startswith(CLASSIFIER_PREFIXES) and k not in model.state_dict())}
    if getattr(model, "family", "") == "vit":
        state = _adapt_pos_embed(model, state)
    _check_fit(model, state, path, name)
    model.load_state_dict(state, strict=True)


def _read(path: Path):
    if not path.is_file():
        raise BackboneError(f"backbone.pretrained_path: no such file: {path} (give a local weights "
                            f"file saved with torch.save; weights are never downloaded)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file  # installed with timm

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise BackboneError(f"backbone.pretrained_path: cannot read {path} as a safetensors "
                                f"file ({str(e).splitlines()[0]})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a full training checkpoint (e.g. numpy RNG state inside)
        pass
    except Exception as e:
        raise BackboneError(f"backbone.pretrained_path: cannot read {path} as a PyTorch file "
                            f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return torch.load(path, map_location="cpu", weights_only=False)


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj, path: Path) -> Dict[str, torch.Tensor]:
    while isinstance(obj, dict) and not _is_state_dict(obj):
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            keys = ", ".join(map(str, list(obj)[:8]))
            raise BackboneError(f"backbone.pretrained_path: {path} holds no state dict (top-level "
                                f"keys: {keys}); save the backbone with "
                                f"torch.save(backbone.state_dict(), path)")
        obj = inner
    if not _is_state_dict(obj):
        raise BackboneError(f"backbone.pretrained_path: {path} holds a {type(obj).__name__}, not a "
                            f"state dict; save it with torch.save(backbone.state_dict(), path)")
    return obj


def _prefixes(key: str) -> Iterable[str]:
    yield ""
    for i, char in enumerate(key):
        if char == ".":
            yield key[:i + 1]


def _strip_prefix(state: Dict[str, torch.Tensor], model_keys: set,
                  path) -> Dict[str, torch.Tensor]:
    """Keep the tensors under the prefix that names the most model tensors, without the prefix."""
    votes: Counter = Counter()
    for key in state:
        for prefix in _prefixes(key):
            if key[len(prefix):] in model_keys:
                votes[prefix] += 1
                break
    if not votes:
        raise BackboneError(f"{_key(path)}: no tensor in {path} matches this backbone "
                            f"(file has e.g. {_few(state)}; the model expects e.g. "
                            f"{_few(model_keys)}); check backbone.name")
    best = max(votes, key=lambda p: (votes[p], -len(p)))
    return {k[len(best):]: v for k, v in state.items() if k.startswith(best)}


def _adapt_pos_embed(model: nn.Module, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    if "pos_embed" not in state:
        return state
    state = dict(state)
    if model.pos_embed_type == "sincos":  # a function of the grid, recomputed, never loaded
        state["pos_embed"] = model.pos_embed.detach().clone()
    elif state["pos_embed"].shape != model.pos_embed.shape:
        from timm.layers import resample_abs_pos_embed

        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=model.grid_size,
                                                    num_prefix_tokens=model.num_prefix_tokens)
    return state


def _check_fit(model: nn.Module, state: Dict[str, torch.Tensor], path, name: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [f"{k} {tuple(state[k].shape)} in file vs {tuple(v.shape)} in model"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems: List[str] = []
    if missing:
        problems.append(f"{len(missing)} missing ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} with another shape ({'; '.join(mis_shaped[:3])})")
    if problems:
        raise BackboneError(f"{_key(path)}: {path} does not fit {name}: "
                            f"{', '.join(problems)}. Use the backbone.name, cifar_stem, "
                            f"class_token and img_size of the run that saved these weights")


def _key(path) -> str:
    """The config key that named the weights: a file path, or an encoder spec (a string)."""
    return "backbone.pretrained_path" if isinstance(path, Path) else "backbone.pretrained"


def _few(keys: Iterable[str], n: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")
