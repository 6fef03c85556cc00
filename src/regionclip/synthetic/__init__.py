"""An embedded, seed-determined synthetic world for training and testing RegionCLIP on CPU.

52 procedurally drawn categories with synonyms and plurals, an LVIS-like frequency long tail
(f / c / r) and an OV-COCO-like base / novel split; images with occlusion, clutter and varied
backgrounds (the pretraining split also has iconic single-object close-ups, as web image-text data
does); realistic captions; COCO instances / captions json, JPEG files and webdataset shards.

Typical use::

    from regionclip.synthetic import WorldConfig, generate_world
    world = generate_world(WorldConfig.default(), "~/.cache/regionclip/worlds")
    coco = world.load_instances("val")
"""

from .captions import spatial_relation
from .categories import CATEGORIES, CATEGORY_BY_NAME, CategorySpec, category_names, sampling_probabilities
from .config import GENERATOR_VERSION, PRESETS, SPLITS, WorldConfig
from .render import ObjectRecord, encode_jpeg, image_id, render_image, tight_bbox, visible_masks
from .world import MARKER, World, generate_world

__all__ = [
    "CATEGORIES",
    "CATEGORY_BY_NAME",
    "GENERATOR_VERSION",
    "MARKER",
    "PRESETS",
    "SPLITS",
    "CategorySpec",
    "ObjectRecord",
    "World",
    "WorldConfig",
    "category_names",
    "encode_jpeg",
    "generate_world",
    "image_id",
    "render_image",
    "sampling_probabilities",
    "spatial_relation",
    "tight_bbox",
    "visible_masks",
]
