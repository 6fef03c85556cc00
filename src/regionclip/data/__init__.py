"""Image loading and preprocessing."""

from .images import ImageInput, PreparedImage, prepare_image, resized_shape

__all__ = ["ImageInput", "PreparedImage", "prepare_image", "resized_shape"]
