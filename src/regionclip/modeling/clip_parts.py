"""CLIP's towers (from open_clip) split into the parts a region model needs.

The visual ModifiedResNet is divided as in RegionCLIP's C4 design: a *trunk* (stem → layer3, i.e. res4 at
stride 16) that runs once per image, a RoIAlign *pooler* on res4, and a *region head* (layer4 = res5 → the
attention pool) that runs once per box. Module names follow OpenAI's after ``visual.`` so weights map 1:1.
"""

from __future__ import annotations

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
from open_clip.transformer import text_global_pool
from torch import nn
from torch.nn import functional as F
from torchvision.ops import roi_align

from ..config import TRUNK_STRIDE, ModelConfig
from .frozen_bn import freeze_batchnorm


def build_open_clip(config: ModelConfig) -> CLIP:
    """An open_clip CLIP (ModifiedResNet + text transformer, QuickGELU as OpenAI's) of the configured shape."""
    text = config.text
    if text is None:
        raise ValueError("build_open_clip needs a text config")
    vision_cfg = CLIPVisionCfg(
        layers=config.vision.layers,
        width=config.vision.width,
        image_size=config.vision.image_size,
        head_width=config.vision.head_width,
    )
    text_cfg = CLIPTextCfg(
        context_length=text.context_length,
        vocab_size=text.vocab_size,
        width=text.width,
        heads=text.heads,
        layers=text.layers,
    )
    return CLIP(config.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True)


def build_visual(config: ModelConfig) -> ModifiedResNet:
    """CLIP's ModifiedResNet alone (for checkpoints that carry no text tower)."""
    return ModifiedResNet(
        layers=list(config.vision.layers),
        output_dim=config.embed_dim,
        heads=config.vision.heads,
        image_size=config.vision.image_size,
        width=config.vision.width,
    )


class CLIPResNetTrunk(nn.Module):
    """Stem (three 3x3 convs + avgpool) and layer1..layer3 of CLIP's ModifiedResNet; returns res4 (stride 16)."""

    stride = TRUNK_STRIDE

    def __init__(self, visual: ModifiedResNet) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "avgpool"):
            setattr(self, name, getattr(visual, name))
        self.layer1, self.layer2, self.layer3 = visual.layer1, visual.layer2, visual.layer3

    @property
    def out_channels(self) -> int:
        return self.layer3[-1].conv3.out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.conv1.weight.dtype)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        return self.layer3(self.layer2(self.layer1(x)))


class RoIPooler(nn.Module):
    """RoIAlignV2 on res4: torchvision ``roi_align(aligned=True)``, adaptive sampling, scale 1/16.

    Adaptive sampling (``sampling_ratio=0``) takes ``ceil(bin side in feature pixels)`` samples per bin side, and
    torchvision precomputes every sample's interpolation weights, so time and memory grow with box area (a 1.4e5-px
    box took 82 s and 2.7 GB). Boxes whose grid stays within ``max_sampling_ratio`` samples per bin side (every box
    of an image resized to ≤ 1333 px for RN50 / RN50x4 / the small presets) go through ``roi_align`` unchanged. A
    larger box is computed from the same samples factorised per axis: bilinear weights are a product of a row and
    a column weight, so the bin means are ``Wy @ F @ Wxᵀ`` with ``Wy [S, H]``, ``Wx [S, W]`` the mean interpolation
    weights of each bin's samples. Only samples that land on the feature map are enumerated, so the cost is bounded
    by the feature map (``C·S·H·W`` multiply-adds, ``O(C·H·S)`` memory) however large the box. Deviation from
    ``roi_align`` on random N(0, 1) features: 2.5e-14 of the output's largest magnitude in float64; in float32 up to
    ~3e-5 of it, as large as torchvision's own float32 error (``tests/test_boxes.py``: < 1e-12 and < 1e-4).
    """

    def __init__(
        self,
        output_size: int,
        spatial_scale: float = 1.0 / TRUNK_STRIDE,
        sampling_ratio: int = 0,
        max_sampling_ratio: int = 8,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.max_sampling_ratio = max_sampling_ratio

    def forward(self, features: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """``boxes[i]`` are xyxy boxes of image i in the (resized) input pixel frame; returns ``[sum R, C, S, S]``."""
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)]).to(features.dtype)
        large = self._over_the_cap(rois)
        if not large.any():
            return self._roi_align(features, rois)
        out = features.new_empty(len(rois), features.shape[1], self.output_size, self.output_size)
        out[~large] = self._roi_align(features, rois[~large])
        for index in large.nonzero().flatten().tolist():
            out[index] = self._factorised_roi_align(features, rois[index])
        return out

    def _roi_align(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return roi_align(
            features,
            rois,
            output_size=self.output_size,
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            aligned=True,
        )

    def _over_the_cap(self, rois: torch.Tensor) -> torch.Tensor:
        """Boxes whose adaptive grid (torchvision's ``ceil(roi side / S)``) exceeds the cap on either side."""
        if self.sampling_ratio > 0:
            return torch.zeros(len(rois), dtype=torch.bool, device=rois.device)
        sides = (rois[:, 3:5] - rois[:, 1:3]) * self.spatial_scale
        return (torch.ceil(sides / self.output_size) > self.max_sampling_ratio).any(dim=1)

    def _factorised_roi_align(self, features: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        # box geometry in the features' dtype, as torchvision computes it, so the sample grid is the same
        start = roi[1:3] * self.spatial_scale - 0.5
        extent = roi[3:5] * self.spatial_scale - 0.5 - start
        grid = torch.ceil(extent / self.output_size)
        (x_start, y_start), (x_extent, y_extent), (x_grid, y_grid) = start.tolist(), extent.tolist(), grid.tolist()
        height, width = features.shape[-2:]
        row_weights = self._axis_weights(y_start, y_extent, int(y_grid), height)
        column_weights = self._axis_weights(x_start, x_extent, int(x_grid), width)
        rows = row_weights.any(dim=0).nonzero().flatten()
        columns = column_weights.any(dim=0).nonzero().flatten()
        if not len(rows) or not len(columns):
            return features.new_zeros(features.shape[1], self.output_size, self.output_size)
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1
        crop = features[int(roi[0]), :, r0:r1, c0:c1]
        row_weights = row_weights[:, r0:r1].to(features)
        column_weights = column_weights[:, c0:c1].to(features)
        return row_weights @ (crop @ column_weights.T)  # [C, S, S]

    def _axis_weights(self, start: float, length: float, grid: int, size: int) -> torch.Tensor:
        """``[S, size]``: per output bin along one axis, the mean over its adaptive samples of each feature
        row's (or column's) bilinear weight, with torchvision's border rules (samples beyond one pixel outside the
        map count as zeros; samples in [-1, 0] read the first pixel; past the last pixel read the last)."""
        bins = self.output_size
        bin_size = length / bins
        step = bin_size / grid
        bin_start = start + torch.arange(bins, dtype=torch.float64) * bin_size
        # only samples inside [-1, size] contribute; enumerate those (one spare each side against rounding)
        first = torch.clamp(torch.ceil((-1 - bin_start) / step - 0.5) - 1, min=0)
        last = torch.clamp(torch.floor((size - bin_start) / step - 0.5) + 1, max=grid - 1)
        count = int((last - first + 1).clamp(min=0).max())
        k = first[:, None] + torch.arange(count, dtype=torch.float64)[None, :]
        y = bin_start[:, None] + (k + 0.5) * step
        used = (k <= last[:, None]) & (y >= -1) & (y <= size)
        y = y.clamp(min=0)
        low = torch.floor(y).clamp(max=size - 1)
        at_end = low >= size - 1
        fraction = torch.where(at_end, torch.zeros_like(y), y - low)
        high = torch.where(at_end, low, low + 1)
        weights = torch.zeros(bins, size, dtype=torch.float64)
        weights.scatter_add_(1, low.long(), (1 - fraction) * used)
        weights.scatter_add_(1, high.long(), fraction * used)
        return weights / grid


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


def split_visual(visual: ModifiedResNet, pooler_resolution: int) -> tuple[CLIPResNetTrunk, RoIPooler, Res5AttnPoolHead]:
    """Freeze the BatchNorms and cut the ModifiedResNet into trunk, pooler and region head."""
    freeze_batchnorm(visual)
    return CLIPResNetTrunk(visual), RoIPooler(pooler_resolution), Res5AttnPoolHead(visual)
