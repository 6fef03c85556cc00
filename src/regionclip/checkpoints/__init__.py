"""Weight files: OpenAI/open_clip CLIP, official RegionCLIP/detectron2 ``.pth``, concept embeddings, our safetensors."""

from .clip_weights import CheckpointParts, infer_config, load_checkpoint, read_state_dict, save_safetensors, split_checkpoint
from .embeddings import load_embedding_file, save_embedding_file

__all__ = [
    "CheckpointParts",
    "infer_config",
    "load_checkpoint",
    "load_embedding_file",
    "read_state_dict",
    "save_embedding_file",
    "save_safetensors",
    "split_checkpoint",
]
