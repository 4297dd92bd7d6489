"""N-JEPA: I-JEPA with diffusion noise on the predictor's mask tokens (Qiu, Zhu & Chen 2025,
"Improving Joint Embedding Predictive Architecture with Diffusion Noise", arXiv:2507.15216).

Everything is I-JEPA (``vissl_lite/methods/ijepa.py``: block masks, EMA target encoder on the full
image, smooth-L1 on layer-normalised target tokens) except the predictor's queries. In I-JEPA a
query is the learned mask token plus the fixed sin-cos position ``p`` of the target patch; N-JEPA
puts diffusion noise into that position embedding, at a level drawn per sample and target block
from a multi-level schedule ``s_1 < ... < s_L`` (variance-preserving, as a DDPM forward step with
``sqrt(alpha_bar) = sqrt(1 - s^2)``):

    s ~ Uniform{noise_levels}                 one level per (target block, sample), on the device
    q = mask_token + sqrt(1 - s^2) * p + s * eps,        eps ~ N(0, I)
    loss = I-JEPA's loss with these queries

Level 0 leaves ``q = mask_token + p`` bit for bit, so ``noise_levels=[0.0]`` is I-JEPA exactly.
The paper's code is not released; the form of the noise above (added to the masked tokens'
position embeddings, several levels) follows its abstract and Sec. 3 description, and the
default levels are our choice, not the paper's values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Sequence

import torch
from torch import nn

from vissl_lite.errors import ConfigError
from vissl_lite.methods.ijepa import IJEPA, JEPAPredictor
from vissl_lite.methods.vit_blocks import gather_tokens
from vissl_lite.registry import METHODS


def noisy_positions(pos: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``sqrt(1 - s^2) * pos + s * eps`` with one level ``s`` per row of ``pos`` (R*B, K, D), drawn
    uniformly from ``levels`` (L,) on the device (no host sync)."""
    pick = torch.randint(0, levels.numel(), (pos.shape[0], 1, 1), device=pos.device)
    s = levels.to(pos.dtype)[pick]
    return (1 - s * s).sqrt() * pos + s * torch.randn_like(pos)


class NoisyJEPAPredictor(JEPAPredictor):
    """I-JEPA's predictor whose mask tokens carry noisy position embeddings (see module doc)."""

    def __init__(self, *args, noise_levels: Sequence[float] = (0.0,), **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("noise_levels", torch.tensor(list(noise_levels), dtype=torch.float32),
                             persistent=False)

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor,
                target_idx: torch.Tensor) -> torch.Tensor:
        """As ``JEPAPredictor.forward``, with ``noisy_positions`` applied to the queries' positions."""
        repeats = target_idx.shape[0] // context.shape[0]
        z = self.embed(context)
        pos = self.pos_embed.to(z.dtype).expand(z.shape[0], -1, -1)
        z = (z + gather_tokens(pos, context_idx)).repeat(repeats, 1, 1)
        query_pos = noisy_positions(gather_tokens(pos.repeat(repeats, 1, 1), target_idx),
                                    self.noise_levels)
        queries = self.mask_token.to(z.dtype) + query_pos
        out = self.transformer(torch.cat([z, queries], dim=1))
        return self.proj(out[:, z.shape[1]:])


@METHODS.register("njepa", help="N-JEPA: I-JEPA with multi-level diffusion noise on the predictor's mask tokens")
class NJEPA(IJEPA):
    """N-JEPA (arXiv:2507.15216); see the module docstring for the algorithm."""

    @dataclass
    class Config(IJEPA.Config):
        name: str = "njepa"
        noise_levels: List[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75])

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        levels = list(self.cfg.noise_levels)
        if not levels or not all(0.0 <= s <= 1.0 for s in levels):
            raise ConfigError(f"method.noise_levels={levels} must be a non-empty list of noise "
                              f"levels in [0, 1] (0 is I-JEPA's noise-free mask token)")
        c = self.cfg
        plain = self.predictor
        self.predictor = NoisyJEPAPredictor(backbone.embed_dim, self.grid_size, dim=c.predictor_dim,
                                            depth=c.predictor_depth, num_heads=c.predictor_heads,
                                            noise_levels=levels)
        self.predictor.load_state_dict(plain.state_dict())  # the same initial weights as I-JEPA
