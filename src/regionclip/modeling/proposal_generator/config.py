"""Typed configuration of a detectron2-compatible region proposal network.

`RPNConfig` mirrors the detectron2 config keys that change what the offline RPNs of RegionCLIP compute
(``MODEL.RESNETS.*``, ``MODEL.FPN.*``, ``MODEL.ANCHOR_GENERATOR.*``, ``MODEL.RPN.*``, ``MODEL.PIXEL_*``).
Presets reproduce the three released RPNs (docs/official-semantics.md, "Released RPNs"):

* ``RPNConfig.lvis_fpn()``      - ``rpn_lvis_866.pth`` (mask_rcnn_R_50_FPN_1x, FrozenBN, 1-conv head)
* ``RPNConfig.lvis_fpn_lsj()``  - ``rpn_lvis_866_lsj.pth`` (SyncBN in ResNet and FPN, 2-conv head)
* ``RPNConfig.coco_c4()``       - ``rpn_coco_48.pth`` (mask_rcnn_R_50_C4, 15 anchors on res4)

and ``RPNConfig.tiny()`` is a CPU-trainable miniature for tests and the synthetic world.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ...config.base import ConfigBase
from ..box_regression import DEFAULT_SCALE_CLAMP

CAFFE_PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
CAFFE_PIXEL_STD = (1.0, 1.0, 1.0)

RESNET_BLOCKS_BY_DEPTH: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
NORMS = ("FrozenBN", "BN", "SyncBN")
VARIANTS = ("fpn", "c4")

# Stage names and strides of a detectron2 ResNet, and of the FPN levels built on it.
RESNET_STAGE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
FPN_LEVEL_STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


def _tuple_of_tuples(value: Any, name: str) -> tuple[tuple[float, ...], ...]:
    """Normalise ``[32, 64]`` or ``[[32], [64]]`` into a tuple of float tuples (detectron2 broadcast rule)."""
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty list, got {value!r}")
    if not isinstance(value[0], (list, tuple)):
        return (tuple(float(v) for v in value),)
    out = tuple(tuple(float(v) for v in level) for level in value)
    if any(len(level) == 0 for level in out):
        raise ValueError(f"{name} has an empty level: {value!r}")
    return out


@dataclass
class RPNConfig(ConfigBase):
    """Everything that defines a detectron2 ResNet(-FPN) + StandardRPNHead proposal network.

    Units: anchor sizes and ``min_size`` are input-image pixels; ``pixel_mean``/``pixel_std`` are in
    0-255 units and in the channel order given by ``input_format`` (the order the weights expect;
    callers always pass RGB).
    """

    config_label = "RPN config"

    name: str = "R50-FPN"
    variant: str = "fpn"  # "fpn": ResNet res2..res5 + FPN P2..P6; "c4": ResNet res2..res4, RPN on res4
    # ---- ResNet (detectron2 MODEL.RESNETS) ----
    depth: int | None = 50  # 50/101/152 set blocks_per_stage; None = custom spec below
    blocks_per_stage: tuple[int, int, int, int] = (3, 4, 6, 3)  # res2..res5 (C4 uses the first three)
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    bottleneck_channels: int = 64  # NUM_GROUPS * WIDTH_PER_GROUP of res2; doubles per stage
    stride_in_1x1: bool = True  # MSRA weights put the stride in the first 1x1 conv
    norm: str = "FrozenBN"  # ResNet norm: FrozenBN | BN | SyncBN
    # ---- FPN (MODEL.FPN) ----
    fpn_out_channels: int = 256
    fpn_norm: str = ""  # "" = conv with bias, or a norm name (LSJ: SyncBN, convs then have no bias)
    # ---- RPN head (MODEL.RPN.CONV_DIMS): one 3x3 conv+ReLU per entry, -1 = keep the channel count ----
    head_conv_dims: tuple[int, ...] = (-1,)
    # ---- anchors (MODEL.ANCHOR_GENERATOR), one entry per feature level or one broadcast entry ----
    anchor_sizes: tuple[tuple[float, ...], ...] = ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
    anchor_aspect_ratios: tuple[tuple[float, ...], ...] = ((0.5, 1.0, 2.0),)
    anchor_offset: float = 0.0
    # ---- proposal selection (MODEL.RPN, MODEL.PROPOSAL_GENERATOR) ----
    pre_nms_topk_train: int = 2000  # per feature level
    pre_nms_topk_test: int = 1000  # per feature level
    post_nms_topk_train: int = 1000  # per image, over all levels
    post_nms_topk_test: int = 1000
    nms_thresh: float = 0.7
    min_size: float = 0.0  # proposals with a side <= min_size are removed
    box_reg_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    scale_clamp: float = DEFAULT_SCALE_CLAMP
    # ---- training (MODEL.RPN) ----
    iou_thresholds: tuple[float, float] = (0.3, 0.7)  # < lo: background, >= hi: foreground
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    smooth_l1_beta: float = 0.0  # 0 = plain L1
    loss_weight: float = 1.0
    bbox_reg_loss_weight: float = 1.0
    # ---- input (MODEL.PIXEL_MEAN/STD, INPUT.FORMAT, backbone size_divisibility) ----
    pixel_mean: tuple[float, float, float] = CAFFE_PIXEL_MEAN_BGR
    pixel_std: tuple[float, float, float] = CAFFE_PIXEL_STD
    input_format: str = "BGR"
    size_divisibility: int = 32  # FPN: 32 (stride of res5); C4: 0 = pad to the batch maximum only

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.depth is not None:
            if self.depth not in RESNET_BLOCKS_BY_DEPTH:
                raise ValueError(
                    f"depth must be one of {sorted(RESNET_BLOCKS_BY_DEPTH)} or None (custom), got {self.depth}"
                )
            self.blocks_per_stage = RESNET_BLOCKS_BY_DEPTH[self.depth]
        self.blocks_per_stage = tuple(int(b) for b in self.blocks_per_stage)  # type: ignore[assignment]
        if len(self.blocks_per_stage) != 4 or min(self.blocks_per_stage) < 1:
            raise ValueError(f"blocks_per_stage must be four positive counts (res2..res5), got {self.blocks_per_stage}")
        for field_name in ("stem_out_channels", "res2_out_channels", "bottleneck_channels", "fpn_out_channels"):
            if int(getattr(self, field_name)) <= 0:
                raise ValueError(f"{field_name} must be positive, got {getattr(self, field_name)}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.fpn_norm not in ("",) + NORMS:
            raise ValueError(f"fpn_norm must be '' or one of {NORMS}, got {self.fpn_norm!r}")
        self.head_conv_dims = tuple(int(d) for d in self.head_conv_dims)
        if not self.head_conv_dims or any(d == 0 or d < -1 for d in self.head_conv_dims):
            raise ValueError(f"head_conv_dims must be -1 or positive ints, got {self.head_conv_dims}")
        self.anchor_sizes = _tuple_of_tuples(self.anchor_sizes, "anchor_sizes")
        self.anchor_aspect_ratios = _tuple_of_tuples(self.anchor_aspect_ratios, "anchor_aspect_ratios")
        num_levels = len(self.in_features)
        for name, value in (("anchor_sizes", self.anchor_sizes), ("anchor_aspect_ratios", self.anchor_aspect_ratios)):
            if len(value) not in (1, num_levels):
                raise ValueError(f"{name} has {len(value)} levels; the {self.variant} RPN has {num_levels}")
        if any(s <= 0 for level in self.anchor_sizes for s in level) or any(
            r <= 0 for level in self.anchor_aspect_ratios for r in level
        ):
            raise ValueError("anchor sizes and aspect ratios must be positive")
        counts = {len(s) * len(r) for s, r in zip(self.level_anchor_sizes, self.level_anchor_aspect_ratios)}
        if len(counts) != 1:
            raise ValueError("the shared RPN head needs the same number of anchors on every level")
        if not 0.0 <= self.anchor_offset < 1.0:
            raise ValueError(f"anchor_offset must be in [0, 1), got {self.anchor_offset}")
        for field_name in ("pre_nms_topk_train", "pre_nms_topk_test", "post_nms_topk_train", "post_nms_topk_test",
                           "batch_size_per_image"):
            if int(getattr(self, field_name)) <= 0:
                raise ValueError(f"{field_name} must be positive, got {getattr(self, field_name)}")
        if not 0.0 <= self.nms_thresh <= 1.0:
            raise ValueError(f"nms_thresh must be in [0, 1], got {self.nms_thresh}")
        if not 0.0 < self.positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in (0, 1], got {self.positive_fraction}")
        self.iou_thresholds = tuple(float(t) for t in self.iou_thresholds)  # type: ignore[assignment]
        if len(self.iou_thresholds) != 2 or not 0.0 <= self.iou_thresholds[0] <= self.iou_thresholds[1] <= 1.0:
            raise ValueError(f"iou_thresholds must be (lo, hi) with 0 <= lo <= hi <= 1, got {self.iou_thresholds}")
        self.box_reg_weights = tuple(float(w) for w in self.box_reg_weights)  # type: ignore[assignment]
        if len(self.box_reg_weights) != 4 or min(self.box_reg_weights) <= 0:
            raise ValueError(f"box_reg_weights must be four positive numbers, got {self.box_reg_weights}")
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)  # type: ignore[assignment]
        self.pixel_std = tuple(float(v) for v in self.pixel_std)  # type: ignore[assignment]
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError("pixel_mean/pixel_std must have 3 entries, std positive")
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {self.input_format!r}")
        if self.size_divisibility < 0:
            raise ValueError(f"size_divisibility must be >= 0, got {self.size_divisibility}")

    # ---- derived structure ---------------------------------------------------------------------
    @property
    def in_features(self) -> tuple[str, ...]:
        """Feature maps the RPN head runs on (detectron2 ``MODEL.RPN.IN_FEATURES``)."""
        return tuple(FPN_LEVEL_STRIDES) if self.variant == "fpn" else ("res4",)

    @property
    def feature_strides(self) -> tuple[int, ...]:
        table = FPN_LEVEL_STRIDES if self.variant == "fpn" else RESNET_STAGE_STRIDES
        return tuple(table[f] for f in self.in_features)

    @property
    def num_resnet_stages(self) -> int:
        """res2..res5 for FPN, res2..res4 for C4 (res5 belongs to the C4 RoI head)."""
        return 4 if self.variant == "fpn" else 3

    @property
    def level_anchor_sizes(self) -> tuple[tuple[float, ...], ...]:
        n = len(self.in_features)
        return self.anchor_sizes * n if len(self.anchor_sizes) == 1 else self.anchor_sizes

    @property
    def level_anchor_aspect_ratios(self) -> tuple[tuple[float, ...], ...]:
        n = len(self.in_features)
        return self.anchor_aspect_ratios * n if len(self.anchor_aspect_ratios) == 1 else self.anchor_aspect_ratios

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.level_anchor_sizes[0]) * len(self.level_anchor_aspect_ratios[0])

    @property
    def rpn_in_channels(self) -> int:
        if self.variant == "fpn":
            return self.fpn_out_channels
        return self.res2_out_channels * 4  # res4 = res2 * 2 * 2

    # ---- presets -------------------------------------------------------------------------------
    @classmethod
    def lvis_fpn(cls) -> RPNConfig:
        """``rpn_lvis_866.pth``: detectron2 mask_rcnn_R_50_FPN_1x (pretraining and zero-shot proposals).

        RegionCLIP overrides ``nms_thresh`` to 0.5 (pretraining, 300 kept) or 0.9 (zero-shot)."""
        return cls(name="R50-FPN")

    @classmethod
    def lvis_fpn_lsj(cls) -> RPNConfig:
        """``rpn_lvis_866_lsj.pth``: SyncBN in ResNet and FPN, two 3x3 convs in the RPN head."""
        return cls(name="R50-FPN-LSJ", norm="SyncBN", fpn_norm="SyncBN", head_conv_dims=(-1, -1))

    @classmethod
    def coco_c4(cls) -> RPNConfig:
        """``rpn_coco_48.pth``: detectron2 mask_rcnn_R_50_C4 (15 anchors per res4 location)."""
        return cls(
            name="R50-C4",
            variant="c4",
            anchor_sizes=((32.0, 64.0, 128.0, 256.0, 512.0),),
            pre_nms_topk_train=12000,
            pre_nms_topk_test=6000,
            post_nms_topk_train=2000,
            post_nms_topk_test=1000,
            size_divisibility=0,
        )

    @classmethod
    def tiny(cls, variant: str = "fpn") -> RPNConfig:
        """A ~100k-parameter RPN (one block per stage, trainable BatchNorm) for tests and CPU training."""
        base = cls.lvis_fpn() if variant == "fpn" else cls.coco_c4()
        return dataclasses.replace(
            base,
            name=f"tiny-{variant}",
            depth=None,
            blocks_per_stage=(1, 1, 1, 1),
            stem_out_channels=8,
            res2_out_channels=16,
            bottleneck_channels=8,
            norm="BN",
            fpn_out_channels=16,
        )

    @classmethod
    def preset(cls, name: str) -> RPNConfig:
        presets = {
            "lvis_fpn": cls.lvis_fpn,
            "lvis_fpn_lsj": cls.lvis_fpn_lsj,
            "coco_c4": cls.coco_c4,
            "tiny_fpn": lambda: cls.tiny("fpn"),
            "tiny_c4": lambda: cls.tiny("c4"),
        }
        key = name.lower()
        if key not in presets:
            raise ValueError(f"unknown RPN preset {name!r}; choose one of {sorted(presets)}")
        return presets[key]()
