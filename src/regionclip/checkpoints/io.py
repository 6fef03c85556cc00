"""What every weight reader and writer shares: opening a pickled PyTorch file as data only, refusing non-finite
weights, and writing the detectron2 ``{"model": state_dict}`` container atomically."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from ..utils import atomic_write
from .torchscript import is_torchscript_archive, read_torchscript_state_dict


def _reason(error: BaseException) -> str:
    """What a ``torch.load`` error says is wrong, without torch's advice to turn the safe loader off."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    kept = [line for line in lines if "weights_only" not in line and not line.startswith("Check the documentation")]
    return "; ".join(kept) or type(error).__name__


def load_pickled_weights(path: str | Path) -> object:
    """The object stored in a ``.pt`` / ``.pth`` file, read as data: TorchScript archives through
    `read_torchscript_state_dict` (their state dict), everything else with ``torch.load(weights_only=True)``.
    Failures are one-line ``ValueError``s naming the file."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): no weights to load")
    if is_torchscript_archive(path):
        return read_torchscript_state_dict(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} is not a plain file of tensors: it holds content that loading as data refuses ({_reason(error)}); "
            "save it as a state dict of tensors (e.g. convert a detectron2 .pkl of numpy arrays)"
        ) from None
    except (EOFError, RuntimeError, ValueError) as error:
        raise ValueError(f"{path} is not a readable PyTorch weight file ({_reason(error)})") from None

def require_finite(tensors: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Raise a one-line ``ValueError`` naming the first floating tensor that holds NaN or ±Inf. Additive attention
    masks (``*attn_mask``, e.g. the causal mask in OpenAI's archives) mark blocked positions with -inf, which is
    allowed there."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            valid = torch.isfinite(tensor)
            if name.rpartition(".")[2] == "attn_mask":
                valid |= tensor == float("-inf")
            if not bool(valid.all()):
                raise ValueError(
                    f"{source}: tensor {name!r} holds {int((~valid).sum())} NaN/Inf value(s) out of "
                    f"{tensor.numel()}; the weights are corrupt"
                )


def save_detectron2_checkpoint(
    path: str | Path, state: Mapping[str, torch.Tensor], extra: Mapping[str, object] | None = None
) -> Path:
    """Write ``{"model": state, **extra}`` (the detectron2 / official RegionCLIP ``.pth`` container; ``extra``: e.g.
    ``iteration``) atomically."""
    payload = {**dict(extra or {}), "model": dict(state)}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))
