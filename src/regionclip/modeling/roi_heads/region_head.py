"""The region head of the C4 design: res5 (CLIP's ``layer4``) and CLIP's attention pool, run once per pooled box."""

from __future__ import annotations

import torch
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
from torch import nn
from torch.nn import functional as F


def attention_pool_first_token(attnpool: AttentionPool2d, x: torch.Tensor) -> torch.Tensor:
    """CLIP's attention pool computing only what it returns: the query and output projection of the mean token.

    Same result as ``attnpool(x)`` (attention rows are independent), without the query and ``c_proj`` work for the
    other g² tokens, which is ~16 % of an RN50 region head.
    """
    tokens = x.flatten(2).permute(2, 0, 1)  # (HW, N, C)
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0) + attnpool.positional_embedding[:, None, :].to(x.dtype)
    length, batch, channels = tokens.shape
    heads = attnpool.num_heads
    head_dim = channels // heads
    query = F.linear(tokens[:1], attnpool.q_proj.weight, attnpool.q_proj.bias)
    key = F.linear(tokens, attnpool.k_proj.weight, attnpool.k_proj.bias)
    value = F.linear(tokens, attnpool.v_proj.weight, attnpool.v_proj.bias)
    query = query.reshape(1, batch * heads, head_dim).transpose(0, 1)
    key = key.reshape(length, batch * heads, head_dim).transpose(0, 1)
    value = value.reshape(length, batch * heads, head_dim).transpose(0, 1)
    pooled = F.scaled_dot_product_attention(query, key, value)  # (N * heads, 1, head_dim)
    return F.linear(pooled.transpose(0, 1).reshape(batch, channels), attnpool.c_proj.weight, attnpool.c_proj.bias)


class Res5AttnPoolHead(nn.Module):
    """layer4 (res5) followed by CLIP's attention pool; maps pooled res4 regions to embeddings."""

    def __init__(self, visual: ModifiedResNet) -> None:
        super().__init__()
        self.layer4 = visual.layer4
        self.attnpool = visual.attnpool

    @property
    def out_channels(self) -> int:
        return self.attnpool.c_proj.out_features

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return attention_pool_first_token(self.attnpool, self.layer4(pooled))
