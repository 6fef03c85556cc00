"""Configuration of the synthetic world (a typed, frozen dataclass with presets; YAML I/O from `ConfigBase`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

from ..config.base import ConfigBase

#: Bump when the generator's output for a given config changes (it is part of the cache key).
GENERATOR_VERSION = "1"

#: Split names, in generation order.
SPLITS: tuple[str, ...] = ("pretrain", "det_train", "val")


@dataclass(frozen=True)
class WorldConfig(ConfigBase):
    """Everything that determines the generated world (same config → byte-identical files).

    The default image side is 160 px: large enough that the smallest object (12 % of the side,
    ~19 px) still covers more than one stride-16 feature cell of the CLIP ResNet, and small enough
    that teacher / RPN / student training on 2 CPU cores stays within minutes (160² is 0.51× the
    pixels of 224²) and 10,000 images generate in well under two minutes.
    """

    config_label = "world config"

    seed: int = 0
    image_size: int = 160
    num_pretrain: int = 3000
    num_det_train: int = 1500
    num_val: int = 500
    min_objects: int = 2
    max_objects: int = 6
    #: object size = longer side of its (unrotated) extent, as a fraction of the image side
    min_object_size: float = 0.12
    max_object_size: float = 0.5
    min_clutter: int = 1
    max_clutter: int = 4
    #: objects with a smaller visible fraction are neither annotated nor mentioned in captions
    min_visible_fraction: float = 0.3
    #: fraction of pretraining images that show a single, large object (upper half of the size range) - the
    #: iconic close-ups common in web image-text data; det_train and val are unaffected
    pretrain_iconic_fraction: float = 0.5
    min_captions: int = 1
    max_captions: int = 3
    jpeg_quality: int = 90
    #: samples per webdataset shard of the pretrain split
    shard_size: int = 1000
    #: val image i (i < number of categories) is guaranteed a fully visible instance of category i+1,
    #: so every category, even the rarest, occurs in validation
    val_covers_all_categories: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "bool": bool}[str(f.type)]
            if isinstance(value, bool) and f.type != "bool" or not isinstance(value, expected):
                raise TypeError(f"WorldConfig.{f.name} must be {f.type}, got {value!r}")
            if f.type == "float":  # 1 and 1.0 must give the same cache key
                object.__setattr__(self, f.name, float(value))
        if self.image_size < 64:
            raise ValueError(f"image_size must be >= 64, got {self.image_size}")
        for name in ("num_pretrain", "num_det_train", "num_val"):
            n = getattr(self, name)
            if not 0 <= n < 1_000_000:
                raise ValueError(f"{name} must be in [0, 1e6), got {n}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0.05 <= self.min_object_size <= self.max_object_size <= 0.7:
            raise ValueError(
                f"need 0.05 <= min_object_size <= max_object_size <= 0.7, "
                f"got {self.min_object_size}, {self.max_object_size}"
            )
        if not 0 <= self.min_clutter <= self.max_clutter:
            raise ValueError(f"need 0 <= min_clutter <= max_clutter, got {self.min_clutter}, {self.max_clutter}")
        if not 0.0 < self.min_visible_fraction <= 1.0:
            raise ValueError(f"min_visible_fraction must be in (0, 1], got {self.min_visible_fraction}")
        if not 0.0 <= self.pretrain_iconic_fraction <= 1.0:
            raise ValueError(f"pretrain_iconic_fraction must be in [0, 1], got {self.pretrain_iconic_fraction}")
        if not 1 <= self.min_captions <= self.max_captions:
            raise ValueError(f"need 1 <= min_captions <= max_captions, got {self.min_captions}, {self.max_captions}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")

    # ---- presets -------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **overrides: Any) -> "WorldConfig":
        """Tens of images per split, for tests (val still covers all 52 categories)."""
        return cls(**{"num_pretrain": 48, "num_det_train": 32, "num_val": 52, "shard_size": 20, **overrides})

    @classmethod
    def default(cls, **overrides: Any) -> "WorldConfig":
        """The project demo's world: 3000 pretrain / 1500 det_train / 500 val images."""
        return cls(**overrides)

    @classmethod
    def full(cls, **overrides: Any) -> "WorldConfig":
        """A larger world: 10,000 pretrain / 3000 det_train / 1000 val images."""
        return cls(**{"num_pretrain": 10_000, "num_det_train": 3000, "num_val": 1000, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "WorldConfig":
        """Config of a named preset (``"tiny"``, ``"default"`` or ``"full"``), with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return getattr(cls, name)(**overrides)

    # ---- derived ---------------------------------------------------------------------------------
    def num_images(self, split: str) -> int:
        """Number of images of ``split``."""
        check_split(split)
        return {"pretrain": self.num_pretrain, "det_train": self.num_det_train, "val": self.num_val}[split]

    def replace(self, **changes: Any) -> "WorldConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def hash(self) -> str:
        """Cache key: 16 hex digits of SHA-256 over the config, the generator version and the category table."""
        from .categories import CATEGORIES  # local: avoid an import cycle at module load

        table = [[c.name, list(c.synonyms), c.plural, c.frequency, c.split, c.weight] for c in CATEGORIES]
        payload = json.dumps({"version": GENERATOR_VERSION, "config": self.to_dict(), "categories": table}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    # ---- (de)serialisation: ConfigBase --------------------------------------------------------------
    @classmethod
    def expand_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A ``preset:`` key selects a preset whose fields the other keys override."""
        preset = data.pop("preset", None)
        return data if preset is None else {**cls.preset(preset).to_dict(), **data}


PRESETS: tuple[str, ...] = ("tiny", "default", "full")


def check_split(split: str) -> str:
    """Validate a split name and return it."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split
