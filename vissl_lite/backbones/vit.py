"""Vision Transformers (Dosovitskiy et al. 2021) from timm, with the token-level calls SSL needs.

``ViT`` subclasses timm's ``VisionTransformer`` (so timm's blocks, drop-path, initialisation,
``no_weight_decay`` and parameter names are reused) and adds what MAE and I-JEPA need on top:

- ``forward_tokens(x, keep_idx)`` encodes only the kept patches, as the MAE encoder does
  (He et al. 2022, Sec. 3) and the I-JEPA context encoder does (Assran et al. 2023, Sec. 3):
  patchify, add position embeddings, keep the selected patches, prepend the CLS token (with its own
  position embedding), run the blocks and the final norm, drop the CLS token again;
- fixed 2-D sin-cos position embeddings (``pos_embed="sincos"``, a buffer, never trained);
- register tokens (``reg_tokens``, Darcet et al. 2024, arXiv:2309.16588): extra learned prefix
  tokens after the CLS token, without position embedding, dropped from every output but the
  full token sequence of ``forward_all_tokens``;
- masked patches (``forward_all_tokens(x, mask, mask_token)``): the embeddings of masked patches
  are replaced by a mask token before the position embeddings are added (iBOT / DINOv2);
- pooling of the final-normed tokens: ``"avg"`` (mean of patch tokens, MAE/I-JEPA evaluation)
  or ``"token"`` (CLS token, DINO). Both read the same weights, so an encoder trained with one
  can be evaluated with the other.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer

from vissl_lite.errors import BackboneError
from vissl_lite.backbones.pos_embed import sincos_2d_pos_embed

GLOBAL_POOLS = ("avg", "token")
POS_EMBEDS = ("learn", "sincos")


class ViT(VisionTransformer):
    """timm ViT without a classifier; ``forward(x) -> (B, embed_dim)`` pooled features."""

    family = "vit"

    def __init__(self, *, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 img_size: int, drop_path_rate: float = 0.0, global_pool: str = "avg",
                 pos_embed: str = "learn", class_token: bool = True,
                 dynamic_img_size: bool = False, reg_tokens: int = 0, name: str = "vit"):
        _check_options(name, img_size, patch_size, global_pool, pos_embed, class_token)
        super().__init__(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim,
                         depth=depth, num_heads=num_heads, num_classes=0, global_pool="",
                         class_token=class_token, fc_norm=False, drop_path_rate=drop_path_rate,
                         reg_tokens=reg_tokens)
        self.global_pool = global_pool
        self.arch_name = name
        self.patch_size = patch_size
        self.pos_embed_type = pos_embed
        self.any_img_size = dynamic_img_size
        self.patch_embed.strict_img_size = not dynamic_img_size
        if pos_embed == "sincos":
            fixed = sincos_2d_pos_embed(embed_dim, self.grid_size, cls_token=class_token)
            if reg_tokens:  # zero rows for the registers, which take no position embedding
                c = int(class_token)
                fixed = torch.cat([fixed[:, :c], fixed.new_zeros(1, reg_tokens, embed_dim),
                                   fixed[:, c:]], dim=1)
            del self.pos_embed
            self.register_buffer("pos_embed", fixed)

    @property
    def img_size(self) -> Tuple[int, int]:
        return tuple(self.patch_embed.img_size)

    @property
    def grid_size(self) -> Tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def pos_embed_patches(self) -> torch.Tensor:
        """``(1, N, D)`` position embeddings of the patch grid (without the CLS slot)."""
        return self.pos_embed[:, self.num_prefix_tokens:]

    def patch_embed_with_pos(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                             mask_token: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, N, D)``: linear patch embeddings plus their position embeddings;
        with ``mask`` (B, N) bool, masked patches' embeddings are ``mask_token`` (1, D) instead.

        With ``dynamic_img_size`` other input sizes (multiples of the patch size, e.g. DINO's local
        crops) get the position embeddings resampled to their grid, as in DINO's
        ``interpolate_pos_encoding`` (Caron et al. 2021)."""
        size = tuple(x.shape[-2:])
        p = self.patch_size
        if size != self.img_size and (not self.any_img_size or size[0] % p or size[1] % p):
            h, w = self.img_size
            raise BackboneError(
                f"{self.arch_name} was built for {h}x{w} images (img_size={h}) but got "
                f"{size[0]}x{size[1]} input; set backbone.img_size={size[0]} in the config (or "
                f"img_size={size[0]} in build_backbone), or backbone.dynamic_img_size=true for "
                f"inputs of several sizes (multiples of the patch size {p})")
        pos = self.pos_embed_patches()
        if size != self.img_size:
            pos = resample_abs_pos_embed(pos, new_size=(size[0] // p, size[1] // p),
                                         old_size=self.grid_size, num_prefix_tokens=0)
        patches = self.patch_embed(x)
        if mask is not None:
            patches = torch.where(mask.unsqueeze(-1), mask_token.to(patches.dtype), patches)
        return patches + pos

    def _prefix_tokens(self, batch: int) -> Optional[torch.Tensor]:
        prefix = []
        if self.cls_token is not None:
            prefix.append(self.cls_token + self.pos_embed[:, :1])
        if self.reg_token is not None:
            prefix.append(self.reg_token)
        return torch.cat(prefix, dim=1).expand(batch, -1, -1) if prefix else None

    def embed_tokens(self, x: torch.Tensor, keep_idx: Optional[torch.Tensor] = None,
                     mask: Optional[torch.Tensor] = None,
                     mask_token: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The sequence the blocks take ``(B, P + K or N, D)``: prefix tokens, then the (kept,
        masked) patch embeddings with their positions (methods that read each block's output
        run ``self.blocks`` on it themselves)."""
        tokens = self.patch_embed_with_pos(x, mask, mask_token)
        if keep_idx is not None:
            if keep_idx.dim() != 2 or keep_idx.shape[0] != tokens.shape[0]:
                raise BackboneError(f"keep_idx must be a (B, K) index tensor with B="
                                    f"{tokens.shape[0]}, got shape {tuple(keep_idx.shape)}")
            index = keep_idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, 1, index)
        prefix = self._prefix_tokens(tokens.shape[0])
        if prefix is not None:
            tokens = torch.cat([prefix, tokens], dim=1)
        return self.norm_pre(self.pos_drop(tokens))

    def _encode(self, x: torch.Tensor, keep_idx: Optional[torch.Tensor],
                mask: Optional[torch.Tensor] = None,
                mask_token: Optional[torch.Tensor] = None) -> torch.Tensor:
        """All tokens (prefix first) after the blocks and the final norm."""
        tokens = self.embed_tokens(x, keep_idx, mask, mask_token)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            tokens = checkpoint_seq(self.blocks, tokens)
        else:
            tokens = self.blocks(tokens)
        return self.norm(tokens)

    def forward_tokens(self, x: torch.Tensor,
                       keep_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Patch tokens ``(B, K or N, D)`` after the final norm; with ``keep_idx`` (B, K) (indices
        into the row-major patch grid) only those patches enter the transformer."""
        return self._encode(x, keep_idx)[:, self.num_prefix_tokens:]

    def forward_all_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                           mask_token: Optional[torch.Tensor] = None,
                           keep_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Every token ``(B, P + N, D)`` after the final norm: the ``P = num_prefix_tokens`` CLS
        and register tokens, then the patches; with ``mask`` (B, N) bool the masked patches enter
        as ``mask_token`` (1, D) plus their position embedding; with ``keep_idx`` (B, K) only
        those patches follow the prefix tokens (B, P + K, D)."""
        return self._encode(x, keep_idx, mask, mask_token)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self._encode(x, None)
        if self.global_pool == "token":
            return tokens[:, 0]
        return tokens[:, self.num_prefix_tokens:].mean(dim=1)


def _check_options(name: str, img_size: int, patch_size: int, global_pool: str, pos_embed: str,
                   class_token: bool) -> None:
    if not isinstance(img_size, int) or img_size <= 0 or img_size % patch_size:
        raise BackboneError(f"{name}: img_size={img_size} must be a positive multiple of the patch "
                            f"size {patch_size}; set backbone.img_size accordingly")
    if global_pool not in GLOBAL_POOLS:
        raise BackboneError(f"{name}: global_pool={global_pool!r} is not one of {GLOBAL_POOLS}; "
                            f"set backbone.global_pool")
    if pos_embed not in POS_EMBEDS:
        raise BackboneError(f"{name}: pos_embed={pos_embed!r} is not one of {POS_EMBEDS}; "
                            f"set backbone.pos_embed")
    if global_pool == "token" and not class_token:
        raise BackboneError(f"{name}: global_pool='token' needs the CLS token; set "
                            f"backbone.class_token=true or backbone.global_pool=avg")
