"""Image loading and preprocessing."""

from .images import ImageInput, PreparedImage, RangedImage, load_image_file, prepare_image, resized_shape, rgb_pixels

__all__ = ["ImageInput", "PreparedImage", "RangedImage", "load_image_file", "prepare_image", "resized_shape", "rgb_pixels"]
