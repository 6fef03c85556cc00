"""CLIP's text tower as its own module (open_clip's ``CLIP.encode_text``), with exact shortcuts for inference.

Under CLIP's causal mask a position never attends to later ones, and only the EOT position's output is used. Three
shortcuts follow, each exact up to float rounding: positions after a batch's last EOT are dropped (trimming); the
token prefix that every prompt of a batch shares (the template's "a photo of a" when one template is encoded over
many names) is run once, its keys and values reused by every prompt (a KV cache); and the last block computes only
the EOT rows.
"""

from __future__ import annotations

import torch
from open_clip.model import CLIP
from open_clip.transformer import ResidualAttentionBlock, text_global_pool
from torch import nn
from torch.nn import functional as F


class CLIPTextEncoder(nn.Module):
    """CLIP's text tower: tokens ``[N, context]`` → projected EOT features ``[N, D]`` (un-normalised).

    Same computation as open_clip's ``CLIP.encode_text`` (EOT = argmax of the token ids), held as its own module
    so the visual tower can be swapped or absent; by default trimmed to the batch's longest prompt.
    """

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    @property
    def out_channels(self) -> int:
        return self.text_projection.shape[1]

    def forward(self, tokens: torch.Tensor, trim: bool = True) -> torch.Tensor:
        """EOT features; ``trim`` takes the exact shortcuts of `encode_eot_features` (equal within float rounding),
        ``trim=False`` runs all ``context_length`` positions as open_clip does."""
        if trim:
            return encode_eot_features(self, tokens)
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        return text_global_pool(x, tokens, "argmax") @ self.text_projection


def encode_text_trimmed(tower: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's ``encode_text`` run on the shortest token prefix that holds every EOT of the batch.

    ``tower`` is an open_clip ``CLIP`` or a `CLIPTextEncoder` (anything with CLIP's text attributes). Under the
    causal mask a position never attends to later ones, so the padding after the EOT cannot change the EOT
    features: dropping it is exact up to float rounding, and prompts of ~10–20 tokens run on that many positions
    instead of 77.
    """
    length = int(tokens.argmax(dim=-1).max()) + 1 if len(tokens) else tokens.shape[1]
    tokens = tokens[:, :length]
    x = tower.token_embedding(tokens) + tower.positional_embedding[:length]
    x = tower.ln_final(tower.transformer(x, attn_mask=tower.attn_mask[:length, :length]))
    return text_global_pool(x, tokens, "argmax") @ tower.text_projection


def _heads(block: ResidualAttentionBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values ``[B, H, L, d]`` of a block's attention for the (pre-normalised) input ``x``."""
    heads = block.attn.num_heads
    q, k, v = F.linear(x, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
    return tuple(t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))  # type: ignore[return-value]


def _finish_block(block: ResidualAttentionBlock, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """The rest of a residual block after attention: output projection, residual, MLP, residual."""
    x = x + block.ls_1(block.attn.out_proj(attended.transpose(1, 2).flatten(2)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def encode_eot_features(tower: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``encode_text`` of a batch with the three exact inference shortcuts of this module (trim, shared-prefix KV
    cache, EOT-only last block); falls back to `encode_text_trimmed` for blocks other than open_clip's default."""
    blocks = tower.transformer.resblocks
    if not len(tokens) or not all(type(b) is ResidualAttentionBlock for b in blocks) or not tower.transformer.batch_first:
        return encode_text_trimmed(tower, tokens)
    eot = tokens.argmax(dim=-1)
    length = int(eot.max()) + 1
    tokens = tokens[:, :length]
    # the longest prefix all prompts share, ending before the first EOT (so every prompt keeps a suffix)
    differs = (tokens != tokens[:1]).any(dim=0).nonzero()
    prefix = min(int(eot.min()), int(differs[0]) if len(differs) else length)
    x = tower.token_embedding(tokens[:1, :prefix]) + tower.positional_embedding[:prefix]
    y = tower.token_embedding(tokens[:, prefix:]) + tower.positional_embedding[prefix:length]
    suffix = length - prefix
    # suffix row i (position prefix + i) sees the whole prefix and suffix rows j <= i
    visible = torch.ones(suffix, length, dtype=torch.bool, device=tokens.device).tril(diagonal=prefix)
    rows = torch.arange(len(tokens), device=tokens.device)
    for index, block in enumerate(blocks):
        q_prefix, k_prefix, v_prefix = _heads(block, block.ln_1(x))
        q, k, v = _heads(block, block.ln_1(y))
        keys = torch.cat([k_prefix.expand(len(tokens), -1, -1, -1), k], dim=2)
        values = torch.cat([v_prefix.expand(len(tokens), -1, -1, -1), v], dim=2)
        if index == len(blocks) - 1:  # only the EOT rows are read: one query per prompt
            last = eot - prefix
            q = q[rows, :, last].unsqueeze(2)
            mask = visible[last].unsqueeze(1).unsqueeze(1)
            y = y[rows, last].unsqueeze(1)
            y = _finish_block(block, y, F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))
            break
        x = _finish_block(block, x, F.scaled_dot_product_attention(q_prefix, k_prefix, v_prefix, is_causal=True))
        y = _finish_block(block, y, F.scaled_dot_product_attention(q, keys, values, attn_mask=visible))
    return tower.ln_final(y[:, 0]) @ tower.text_projection
