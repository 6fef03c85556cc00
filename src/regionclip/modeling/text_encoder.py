"""CLIP's text tower as its own module (open_clip's ``CLIP.encode_text``), with exact trimming of the padding."""

from __future__ import annotations

import torch
from open_clip.model import CLIP
from open_clip.transformer import text_global_pool
from torch import nn


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
        """EOT features; ``trim`` runs only the positions up to the batch's last EOT (`encode_text_trimmed`,
        equal within float rounding), ``trim=False`` all ``context_length`` positions as open_clip does."""
        if trim:
            return encode_text_trimmed(self, tokens)
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
