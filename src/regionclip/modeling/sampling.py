"""Foreground / background sampling of labelled boxes (detectron2 ``subsample_labels`` semantics).

At most ``int(batch_size * positive_fraction)`` random foreground boxes are kept, and random background boxes fill
the rest of ``batch_size``; when there is too little foreground, more background is taken. The RPN samples 256
anchors at 50 %, the Fast R-CNN head 512 proposals at 25 %.
"""

from __future__ import annotations

import torch


def sample_foreground_background(
    foreground: torch.Tensor,
    background: torch.Tensor,
    batch_size: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (ascending) of the sampled foreground and background boxes, from boolean masks ``[B]`` (neither =
    ignored)."""
    positive = torch.nonzero(foreground, as_tuple=True)[0]
    negative = torch.nonzero(background, as_tuple=True)[0]
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    pos_pick = positive[torch.randperm(positive.numel(), generator=generator)[:num_pos].to(positive.device)]
    neg_pick = negative[torch.randperm(negative.numel(), generator=generator)[:num_neg].to(negative.device)]
    # in box order: when every box fits, the sample (and any sum over it) does not depend on the random stream
    return pos_pick.sort().values, neg_pick.sort().values
