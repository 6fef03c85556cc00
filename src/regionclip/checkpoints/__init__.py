"""Weight files: OpenAI/open_clip CLIP, official RegionCLIP/detectron2 ``.pth``, concept embeddings, our safetensors."""

from .clip_weights import CheckpointParts, infer_config, load_checkpoint, read_state_dict, save_safetensors, split_checkpoint
from .embeddings import load_embedding_file, save_embedding_file
from .pretraining import (
    PretrainingLoadReport,
    PretrainingWeights,
    read_pretraining_checkpoint,
    save_pretraining_checkpoint,
)

__all__ = [
    "CheckpointParts",
    "PretrainingLoadReport",
    "PretrainingWeights",
    "infer_config",
    "load_checkpoint",
    "load_embedding_file",
    "read_pretraining_checkpoint",
    "read_state_dict",
    "save_embedding_file",
    "save_pretraining_checkpoint",
    "save_safetensors",
    "split_checkpoint",
]
