"""Image loading and preprocessing; image–caption data for pretraining."""

from .captions import (
    CaptionPairs,
    CaptionShardStream,
    CocoCaptionPairs,
    SplitCaptionPairs,
    StepPlan,
    caption_loader,
)
from .images import ImageInput, PreparedImage, RangedImage, load_image_file, prepare_image, resized_shape, rgb_pixels
from .pretrain_images import (
    CaptionSample,
    PretrainBatch,
    PretrainImage,
    PretrainTransform,
    collate_pretrain,
    global_boxes,
    pad_images,
    pretrain_resized_shape,
)

__all__ = [
    "CaptionPairs",
    "CaptionSample",
    "CaptionShardStream",
    "CocoCaptionPairs",
    "ImageInput",
    "RangedImage",
    "load_image_file",
    "rgb_pixels",
    "PreparedImage",
    "PretrainBatch",
    "PretrainImage",
    "PretrainTransform",
    "SplitCaptionPairs",
    "StepPlan",
    "caption_loader",
    "collate_pretrain",
    "global_boxes",
    "pad_images",
    "prepare_image",
    "pretrain_resized_shape",
    "resized_shape",
]
