"""The official concept-embedding files: ``torch.save`` of an un-normalised ``[N, D]`` float tensor."""

from __future__ import annotations

from pathlib import Path

import torch

from ..utils import atomic_write
from .io import load_pickled_weights, require_finite


def load_embedding_file(path: str | Path) -> torch.Tensor:
    """``[N, D]`` embeddings from an official ``.pth`` (a single concept saved as ``[D]`` is promoted), read as data;
    NaN/Inf values are refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file not found: {path}")
    tensor = load_pickled_weights(path)
    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (1, 2) or not tensor.is_floating_point():
        raise ValueError(f"{path}: expected a float tensor of shape [N, D], got {type(tensor).__name__}")
    require_finite({"embeddings": tensor}, path)
    return (tensor[None] if tensor.ndim == 1 else tensor).float()


def save_embedding_file(path: str | Path, embeddings: torch.Tensor) -> Path:
    """Write ``[N, D]`` embeddings as the official code does (``torch.save`` of the tensor), atomically."""
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {tuple(embeddings.shape)}")
    tensor = embeddings.detach().cpu().float().contiguous()
    return atomic_write(path, lambda tmp: torch.save(tensor, tmp))
