"""Image–text retrieval recall@1 (and its chance level) and top-k classification accuracy."""

from __future__ import annotations

from typing import Sequence

import torch


def _text_owner(text_to_image: Sequence[int] | torch.Tensor, num_images: int, num_texts: int) -> torch.Tensor:
    owner = torch.as_tensor(text_to_image, dtype=torch.int64)
    if owner.shape != (num_texts,):
        raise ValueError(f"text_to_image needs one image index per text ({num_texts}), got shape {tuple(owner.shape)}")
    if num_texts and (owner.min() < 0 or owner.max() >= num_images):
        raise ValueError(f"text_to_image indices must lie in [0, {num_images})")
    return owner


def retrieval_recall_at_1(similarity: torch.Tensor, text_to_image: Sequence[int] | torch.Tensor) -> dict[str, float]:
    """Image→text and text→image recall@1 of an ``[images, texts]`` similarity matrix.

    ``text_to_image[j]`` is the image that text j describes (an image may own several texts). Image→text: the
    best-scoring text of an image is one of its own; text→image: the best-scoring image of a text is its owner.
    Ties resolve to the lowest index.
    """
    if similarity.dim() != 2 or 0 in similarity.shape:
        raise ValueError(f"similarity must be a non-empty [images, texts] matrix, got {tuple(similarity.shape)}")
    num_images, num_texts = similarity.shape
    owner = _text_owner(text_to_image, num_images, num_texts)
    best_text = similarity.argmax(dim=1)
    best_image = similarity.argmax(dim=0)
    return {
        "image_to_text": (owner[best_text] == torch.arange(num_images)).float().mean().item(),
        "text_to_image": (best_image == owner).float().mean().item(),
    }


def retrieval_chance(text_to_image: Sequence[int] | torch.Tensor, num_images: int) -> dict[str, float]:
    """Expected recall@1 of random scores: image→text = mean over images of (own texts / all texts);
    text→image = 1 / images."""
    owner = torch.as_tensor(text_to_image, dtype=torch.int64)
    counts = torch.bincount(owner, minlength=num_images).float()
    return {"image_to_text": (counts / len(owner)).mean().item(), "text_to_image": 1.0 / num_images}


def topk_accuracy(logits: torch.Tensor, targets: Sequence[int] | torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose target is among the ``k`` highest logits."""
    targets = torch.as_tensor(targets, dtype=torch.int64)
    if logits.dim() != 2 or logits.shape[0] != len(targets):
        raise ValueError(f"logits must be [N, K] with N = {len(targets)} targets, got {tuple(logits.shape)}")
    if len(targets) == 0:
        raise ValueError("no samples to score")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == targets[:, None]).any(dim=1).float().mean().item()
