"""Inference precision: ``"fp32"`` (exact, the official arithmetic), ``"bf16"`` and ``"fp16"`` (CUDA only).

The lower precisions run matrix multiplications and convolutions under ``torch.autocast``; weights stay fp32 and
callers convert outputs back to fp32, so only the arithmetic inside the autocast region changes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, device: torch.device | str | None = None) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (None for fp32): what the training engine's ``autocast`` takes. With a
    ``device``, fp16 off CUDA is refused."""
    if check_precision(precision) == "fp16" and device is not None and torch.device(device).type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA device (got {torch.device(device).type}); use 'bf16' on CPU")
    return _AUTOCAST_DTYPES.get(precision)


def check_precision(precision: str) -> str:
    """``precision`` if it is one of `PRECISIONS`, else a ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (nothing for fp32); fp16 on a CPU is refused."""
    dtype = autocast_dtype(precision, device)
    return nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)
