"""Vocabularies, prompt templates and class-name embeddings."""

from .embedder import TextEmbedder
from .templates import ENSEMBLE_TEMPLATES, SINGLE_TEMPLATE, prompt_name
from .vocabulary import Vocabulary

__all__ = ["ENSEMBLE_TEMPLATES", "SINGLE_TEMPLATE", "TextEmbedder", "Vocabulary", "prompt_name"]
