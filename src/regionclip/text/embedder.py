"""Class-name embeddings from CLIP's text tower, with prompt ensembling and an on-disk cache."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoints.io import require_finite
from ..precision import autocast, check_precision
from ..utils import atomic_write, progress as progress_bar
from .templates import prompt_name, resolve_templates
from .vocabulary import Vocabulary


def default_cache_dir() -> Path:
    """``$REGIONCLIP_CACHE`` or ``~/.cache/regionclip``."""
    return Path(os.environ.get("REGIONCLIP_CACHE", Path.home() / ".cache" / "regionclip"))


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 1-D: channels_last-safe
    return digest.hexdigest()


# embed_names hands the encoder this many batches of one template's prompts at a time, so that sorting them by
# length groups prompts of similar length into the same batch.
SORT_WINDOW_BATCHES = 32


def _read_cached_embeddings(path: Path, rows: int) -> torch.Tensor | None:
    """The ``[rows, D]`` embeddings of a cache file, or None (with a warning naming the file) when it is damaged,
    so the caller rebuilds it."""
    try:
        embeddings = load_file(path)["embeddings"]
        if embeddings.ndim != 2 or embeddings.shape[0] != rows or not embeddings.is_floating_point():
            raise ValueError(f"holds a {tuple(embeddings.shape)} {embeddings.dtype} tensor, not [{rows}, D] floats")
        require_finite({"embeddings": embeddings}, path)
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        warnings.warn(f"text-embedding cache {path} is unreadable ({error}); rebuilding it", stacklevel=3)
        return None
    return embeddings


class TextEmbedder:
    """Turns names into ``[N, D]`` un-normalised embeddings: the mean of the projected EOT features over the
    prompt templates (official recipe), cached on disk by (text-weights fingerprint, templates, names, and the
    precision when it is not fp32)."""

    def __init__(
        self, encoder: nn.Module, cache_dir: str | Path | None = None, batch_size: int = 256, precision: str = "fp32"
    ) -> None:
        self.encoder = encoder
        self.tokenizer = SimpleTokenizer(context_length=encoder.context_length)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "text_embeddings"
        self.batch_size = batch_size
        self.precision = check_precision(precision)
        self._fingerprint: tuple[int, str] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def fingerprint(self) -> str:
        # Recomputed whenever a parameter changed in place (version counters), e.g. during training.
        version = sum(p._version for p in self.encoder.parameters())
        if self._fingerprint is None or self._fingerprint[0] != version:
            self._fingerprint = (version, module_fingerprint(self.encoder))
        return self._fingerprint[1]

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected EOT features of raw texts, ``[N, D]`` fp32, un-normalised, in the order given.

        Prompts are batched in order of tokenised length, and the encoder runs each batch only up to its longest
        prompt, its shared prefix once and its last block at the EOT rows only (`CLIPTextEncoder`), so the result
        equals the 77-position one within float rounding.
        """
        if not texts:
            raise ValueError("no texts to encode")
        tokens = self.tokenizer(list(texts))
        order = tokens.argmax(dim=-1).argsort(stable=True)  # by EOT position, i.e. by length
        with autocast(self.precision, self.device):
            batches = order.split(self.batch_size)
            features = torch.cat([self.encoder(tokens[batch].to(self.device)).float() for batch in batches])
        restored = torch.empty_like(features)
        restored[order.to(features.device)] = features
        return restored.cpu()

    def cache_path(self, names: Sequence[str], templates: tuple[str, ...]) -> Path:
        fields = {"weights": self.fingerprint(), "templates": list(templates), "names": list(names)}
        if self.precision != "fp32":  # fp32 keeps the key it always had
            fields["precision"] = self.precision
        key = json.dumps(fields)
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.safetensors"

    def embed_names(
        self,
        names: Sequence[str] | Vocabulary,
        templates: str | Sequence[str] = "ensemble",
        use_cache: bool = True,
        progress: bool = False,
    ) -> torch.Tensor:
        """Embeddings ``[N, D]`` of class names (cleaned as the official code does), averaged over templates."""
        prompts = list(names.prompt_names) if isinstance(names, Vocabulary) else [prompt_name(n) for n in names]
        resolved = resolve_templates(templates if isinstance(templates, str) else tuple(templates))
        path = self.cache_path(prompts, resolved) if use_cache else None
        if path is not None and path.is_file():
            cached = _read_cached_embeddings(path, len(prompts))
            if cached is not None:
                return cached
        # one template at a time over a chunk of names: every batch then shares the template's token prefix, which
        # the encoder runs once (modeling/text_encoder.py); the chunk is the window prompts are length-sorted in
        names_per_chunk = self.batch_size * SORT_WINDOW_BATCHES
        rows = []
        for start in progress_bar(
            range(0, len(prompts), names_per_chunk), desc="embedding names", disable=not progress, unit="chunk"
        ):
            chunk = prompts[start : start + names_per_chunk]
            features = torch.stack([self.encode_texts([t.format(name) for name in chunk]) for t in resolved], dim=1)
            rows.append(features.mean(dim=1))
        embeddings = torch.cat(rows)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: save_file({"embeddings": embeddings.contiguous()}, str(tmp)))
        return embeddings
