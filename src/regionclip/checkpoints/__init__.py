"""Weight files: OpenAI/open_clip CLIP, official RegionCLIP/detectron2 ``.pth``, concept embeddings, our safetensors."""

from .clip_weights import (
    CheckpointParts,
    infer_config,
    load_checkpoint,
    load_openai_clip,
    read_state_dict,
    save_safetensors,
    split_checkpoint,
)
from .embeddings import load_embedding_file, save_embedding_file
from .registry import KNOWN_WEIGHTS, KnownWeights, find_known_weights, known_weights
from .pretraining import (
    PretrainingLoadReport,
    PretrainingWeights,
    read_pretraining_checkpoint,
    save_pretraining_checkpoint,
)

__all__ = [
    "KNOWN_WEIGHTS",
    "CheckpointParts",
    "KnownWeights",
    "PretrainingLoadReport",
    "PretrainingWeights",
    "find_known_weights",
    "infer_config",
    "known_weights",
    "load_checkpoint",
    "load_openai_clip",
    "load_embedding_file",
    "read_pretraining_checkpoint",
    "read_state_dict",
    "save_embedding_file",
    "save_pretraining_checkpoint",
    "save_safetensors",
    "split_checkpoint",
]
