"""The zero-shot region classifier: cosine similarity to class embeddings plus a constant background."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TextEmbeddingClassifier(nn.Module):
    """``logits = [cos(region, name_1..K), 0] / temperature``.

    The official background logit is the dot product with a frozen all-zero embedding, i.e. the constant 0
    (docs/region-recognition.md); CLIP's learned ``logit_scale`` is not used. Class embeddings are passed per call so a
    vocabulary can be swapped at run time without rebuilding the model.
    """

    def __init__(self, temperature: float = 0.01, background: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.background = background

    def forward(self, region_features: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        if region_features.shape[-1] != class_embeddings.shape[-1]:
            raise ValueError(
                f"region features are {region_features.shape[-1]}-d but class embeddings are "
                f"{class_embeddings.shape[-1]}-d: the vocabulary was embedded with another model"
            )
        cosine = F.normalize(region_features, dim=-1) @ F.normalize(class_embeddings, dim=-1).T
        if self.background:
            cosine = torch.cat([cosine, cosine.new_zeros(cosine.shape[0], 1)], dim=1)
        return cosine / self.temperature

    def probabilities(self, region_features: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """Softmax over the K classes and background, with the background column dropped: ``[R, K]``."""
        probs = self.forward(region_features, class_embeddings).softmax(dim=-1)
        return probs[:, :-1] if self.background else probs
