"""Typed model configuration (YAML / dict / JSON forms from `ConfigBase`).

A `ModelConfig` fully describes a RegionCLIP recognition model: CLIP's ModifiedResNet visual tower
(split into a res4 trunk and a res5+attention-pool region head), the CLIP text tower, input
preprocessing and the zero-shot classifier temperature. Presets: ``rn50``, ``rn50x4`` (the OpenAI
shapes used by the official RegionCLIP) and small custom sizes for tests and the embedded world.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import ConfigBase

CLIP_PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)

# The trunk ends at res4; CLIP's attention pool sees res5 at stride 32.
TRUNK_STRIDE = 16
RES5_STRIDE = 32


@dataclass
class VisionConfig(ConfigBase):
    """CLIP ModifiedResNet shape."""

    config_label = "vision config"

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    image_size: int = 224
    head_width: int = 64

    def __post_init__(self) -> None:
        self.layers = tuple(int(n) for n in self.layers)  # type: ignore[assignment]
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"vision.layers must be four positive block counts, got {self.layers}")
        if self.image_size % RES5_STRIDE:
            raise ValueError(f"vision.image_size must be a multiple of {RES5_STRIDE}, got {self.image_size}")
        if (self.width * 32) % self.head_width:
            raise ValueError("vision.width * 32 must be divisible by vision.head_width")

    @property
    def attnpool_grid(self) -> int:
        """Side of the attention pool's positional-embedding grid (7 for RN50 at 224 px)."""
        return self.image_size // RES5_STRIDE

    @property
    def pooler_resolution(self) -> int:
        """RoIAlign output side on res4, so that res5 gives exactly the attention pool's grid."""
        return 2 * self.attnpool_grid

    @property
    def res4_channels(self) -> int:
        return self.width * 16

    @property
    def res5_channels(self) -> int:
        return self.width * 32

    @property
    def heads(self) -> int:
        return self.width * 32 // self.head_width


@dataclass
class TextConfig(ConfigBase):
    """CLIP text transformer shape."""

    config_label = "text config"

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12


@dataclass
class InputConfig(ConfigBase):
    """Test-time image preprocessing (detectron2 ResizeShortestEdge semantics, CLIP normalisation).

    ``min_size=None`` disables resizing (images are used at their own size).
    """

    config_label = "input config"

    min_size: int | None = 800
    max_size: int = 1333
    pixel_mean: tuple[float, float, float] = CLIP_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = CLIP_PIXEL_STD

    def __post_init__(self) -> None:
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)  # type: ignore[assignment]
        self.pixel_std = tuple(float(v) for v in self.pixel_std)  # type: ignore[assignment]
        if self.min_size is not None and (self.min_size <= 0 or self.max_size < self.min_size):
            raise ValueError(f"need 0 < min_size <= max_size, got {self.min_size}, {self.max_size}")


@dataclass
class ModelConfig(ConfigBase):
    """Everything needed to build a RegionCLIP recognition model."""

    config_label = "model config"

    name: str = "RN50"
    embed_dim: int = 1024
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig | None = field(default_factory=TextConfig)
    input: InputConfig = field(default_factory=InputConfig)
    temperature: float = 0.01

    # ---- presets -------------------------------------------------------------------------------
    @classmethod
    def rn50(cls) -> ModelConfig:
        return cls(name="RN50")

    @classmethod
    def rn50x4(cls) -> ModelConfig:
        return cls(
            name="RN50x4",
            embed_dim=640,
            vision=VisionConfig(layers=(4, 6, 10, 6), width=80, image_size=288),
            text=TextConfig(width=640, heads=10, layers=12),
        )

    @classmethod
    def tiny(cls) -> ModelConfig:
        """A few-hundred-kilobyte model for tests: 64-px CLIP input, 2x2 attention grid."""
        return cls(
            name="tiny",
            embed_dim=32,
            vision=VisionConfig(layers=(1, 1, 1, 1), width=16, image_size=64, head_width=32),
            text=TextConfig(width=32, heads=2, layers=2),
            input=InputConfig(min_size=128, max_size=256),
        )

    @classmethod
    def small(cls) -> ModelConfig:
        """The embedded world's small teacher/student size (CPU-trainable)."""
        return cls(
            name="small",
            embed_dim=128,
            vision=VisionConfig(layers=(1, 1, 2, 1), width=32, image_size=128, head_width=32),
            text=TextConfig(width=128, heads=4, layers=3),
            input=InputConfig(min_size=160, max_size=320),
        )

    @classmethod
    def medium(cls) -> ModelConfig:
        """The embedded world's larger teacher size (appendix Table 2's RN50x4 stand-in)."""
        return cls(
            name="medium",
            embed_dim=128,
            vision=VisionConfig(layers=(2, 2, 3, 2), width=48, image_size=128, head_width=32),
            text=TextConfig(width=128, heads=4, layers=3),
            input=InputConfig(min_size=160, max_size=320),
        )

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        presets = {"rn50": cls.rn50, "rn50x4": cls.rn50x4, "tiny": cls.tiny, "small": cls.small, "medium": cls.medium}
        key = name.lower()
        if key not in presets:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(presets)}")
        return presets[key]()
