"""Load detectron2 / RegionCLIP RPN checkpoints into `ProposalNetwork`.

Accepted inputs: a ``.pth`` path (``{"model": state_dict, ...}`` or a bare state dict, read as data by
`regionclip.checkpoints.io.load_pickled_weights`) or an in-memory state dict; NaN/Inf weights are refused.
Two key layouts:

* plain detectron2 (``rpn_lvis_866.pth``, ``rpn_coco_48.pth``, ...): ``backbone.bottom_up.*`` +
  ``backbone.fpn_*`` (FPN) or ``backbone.stem/res2..res4.*`` (C4), and ``proposal_generator.rpn_head.*``;
  ``roi_heads.*`` (box/mask heads, C4 res5) and other keys are reported as *not RPN*.
* RegionCLIP (pretrained / fine-tuned detectors): the same names under ``offline_backbone.*`` and
  ``offline_proposal_generator.*``; ``backbone.*`` (CLIP), ``lang_encoder.*``, ``roi_heads.*``,
  ``teacher_backbone.*`` ... belong to other parts and are reported as *not RPN*.

Without a config the variant is detected from keys and shapes: FPN vs C4, 1-conv vs 2-conv head,
FrozenBN vs (Sync)BN, ResNet depth/widths, FPN width. FrozenBN and BatchNorm compute the same function in
eval mode, so a wrong guess between them cannot change proposals. ``num_batches_tracked`` entries are
ignored for FrozenBN (detectron2's FrozenBN has none) and never reported missing for BatchNorm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..modeling.meta_arch.proposal_network import ProposalNetwork
from ..modeling.proposal_generator.config import RESNET_BLOCKS_BY_DEPTH, RPNConfig
from .io import load_pickled_weights, require_finite, save_detectron2_checkpoint

RPN_PREFIXES = ("backbone.", "proposal_generator.")
REGIONCLIP_PREFIX = "offline_"
HEAD = "proposal_generator.rpn_head."
BN_COUNTER = "num_batches_tracked"


@dataclass
class LoadReport:
    """What happened to every key of the checkpoint. Key names are given as they appear in the file."""

    source_format: str  # "detectron2" or "regionclip" (offline_* keys)
    config: RPNConfig
    config_detected: bool
    loaded_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)  # model weights the file does not provide
    unused_keys: list[str] = field(default_factory=list)  # RPN-prefixed keys the model has no place for
    # (key, shape in the file, shape in the model); such weights are not loaded
    shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    # num_batches_tracked of FrozenBN layers; cell-anchor buffers of old detectron2 files equal to ours
    ignored_keys: list[str] = field(default_factory=list)
    non_rpn_keys: list[str] = field(default_factory=list)  # other parts of a detector (CLIP, RoI heads, text ...)

    @property
    def ok(self) -> bool:
        """True when every model weight was loaded and every RPN key of the file was used."""
        return not (self.missing_keys or self.unused_keys or self.shape_mismatches)

    def summary(self) -> str:
        lines = [
            f"{self.source_format} checkpoint -> {self.config.name} ({self.config.variant}, norm={self.config.norm}, "
            f"head convs={len(self.config.head_conv_dims)}{', detected' if self.config_detected else ''}): "
            f"{len(self.loaded_keys)} loaded, {len(self.missing_keys)} missing, {len(self.unused_keys)} unused, "
            f"{len(self.shape_mismatches)} shape mismatches, {len(self.ignored_keys)} ignored, "
            f"{len(self.non_rpn_keys)} not RPN"
        ]
        for key in self.missing_keys[:10]:
            lines.append(f"  missing: {key}")
        for key in self.unused_keys[:10]:
            lines.append(f"  unused: {key}")
        for key, got, want in self.shape_mismatches[:10]:
            lines.append(f"  shape: {key} file {list(got)} vs model {list(want)}")
        return "\n".join(lines)


def read_detectron2_checkpoint(path_or_state_dict: str | Path | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model state dict of a detectron2 ``.pth`` (``{"model": ...}`` or bare); non-tensor entries dropped,
    NaN/Inf weights refused."""
    if isinstance(path_or_state_dict, (str, Path)):
        path = Path(path_or_state_dict)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        data = load_pickled_weights(path)
    else:
        data = path_or_state_dict
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a state dict or {{'model': state_dict}}, got {type(data).__name__}")
    if "model" in data and isinstance(data["model"], Mapping):
        data = data["model"]
    state = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    source = path_or_state_dict if isinstance(path_or_state_dict, (str, Path)) else "RPN state dict"
    if not state:
        raise ValueError(f"{source}: the checkpoint holds no tensors")
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    require_finite(state, source)
    return state


def split_rpn_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str, str, list[str]]:
    """Separate RPN weights from the rest.

    Returns ``(rpn_state with plain detectron2 names, source_format, file_prefix, non_rpn_keys)`` where
    ``file_prefix`` ("" or "offline_") turns a plain name back into the file's name.
    """
    offline = [k for k in state if k.startswith(tuple(REGIONCLIP_PREFIX + p for p in RPN_PREFIXES))]
    if offline:
        prefix, source = REGIONCLIP_PREFIX, "regionclip"
        rpn = {k[len(prefix) :]: state[k] for k in offline}
    else:
        if not any(k.startswith(HEAD) for k in state):
            raise ValueError(
                "no RPN weights found: expected 'proposal_generator.rpn_head.*' (detectron2) or "
                "'offline_proposal_generator.*' (RegionCLIP) keys; a RegionCLIP checkpoint saved without its "
                "offline RPN needs the separate rpn_*.pth file"
            )
        prefix, source = "", "detectron2"
        rpn = {k: v for k, v in state.items() if k.startswith(RPN_PREFIXES)}
    non_rpn = sorted(k for k in state if (k[len(prefix) :] if k.startswith(prefix) else None) not in rpn)
    return rpn, source, prefix, non_rpn


def _count_blocks(state: Mapping[str, torch.Tensor], stage_prefix: str) -> int:
    indices = {k[len(stage_prefix) :].split(".", 1)[0] for k in state if k.startswith(stage_prefix)}
    return len([i for i in indices if i.isdigit()])


def detect_rpn_config(rpn_state: Mapping[str, torch.Tensor]) -> RPNConfig:
    """Infer an `RPNConfig` from plain detectron2 RPN keys/shapes (anchors and top-k from the matching preset)."""
    if any(k.startswith("backbone.bottom_up.") for k in rpn_state):
        variant, res = "fpn", "backbone.bottom_up."
    elif any(k.startswith(("backbone.stem.", "backbone.res")) for k in rpn_state):
        variant, res = "c4", "backbone."
    else:
        raise ValueError("cannot tell FPN from C4: no 'backbone.bottom_up.*' nor 'backbone.stem.*' keys")

    def shape(key: str) -> torch.Size:
        if key not in rpn_state:
            raise ValueError(f"cannot detect the RPN layout: key {key!r} is missing")
        return rpn_state[key].shape

    num_stages = 4 if variant == "fpn" else 3
    blocks = [_count_blocks(rpn_state, f"{res}res{s}.") for s in range(2, 2 + num_stages)]
    if min(blocks) == 0:
        raise ValueError(f"cannot detect the ResNet depth: blocks per stage {blocks} (a stage is missing)")
    depth = next((d for d, table in RESNET_BLOCKS_BY_DEPTH.items() if list(table[:num_stages]) == blocks), None)
    blocks_per_stage = tuple(blocks + [1] * (4 - num_stages))  # res5 is not part of a C4 RPN

    fpn_norm = ""
    if variant == "fpn" and "backbone.fpn_lateral2.norm.weight" in rpn_state:
        fpn_norm = "SyncBN"
    bn_counters = f"{res}stem.conv1.norm.{BN_COUNTER}" in rpn_state
    # LSJ normalises FPN and ResNet alike (SyncBN); batch counters without an FPN norm mean plain BN.
    norm = "SyncBN" if fpn_norm else ("BN" if bn_counters else "FrozenBN")

    if f"{HEAD}conv.weight" in rpn_state:
        conv_shapes = [shape(f"{HEAD}conv.weight")]
    else:
        conv_shapes = []
        while f"{HEAD}conv.conv{len(conv_shapes)}.weight" in rpn_state:
            conv_shapes.append(rpn_state[f"{HEAD}conv.conv{len(conv_shapes)}.weight"].shape)
        if not conv_shapes:
            raise ValueError(f"no RPN head conv found ('{HEAD}conv.weight' or '{HEAD}conv.conv0.weight')")
    head_conv_dims = tuple(-1 if s[0] == s[1] else int(s[0]) for s in conv_shapes)

    base = RPNConfig.coco_c4() if variant == "c4" else (
        RPNConfig.lvis_fpn_lsj() if len(head_conv_dims) == 2 and fpn_norm else RPNConfig.lvis_fpn()
    )
    num_anchors = int(shape(f"{HEAD}objectness_logits.weight")[0])
    if num_anchors != base.num_anchors_per_location:
        raise ValueError(
            f"the head predicts {num_anchors} anchors per location but the {variant} preset has "
            f"{base.num_anchors_per_location}; pass an RPNConfig with the matching anchor sizes/ratios"
        )
    name = base.name if depth == 50 else f"{'custom' if depth is None else f'R{depth}'}-{variant.upper()}"
    return dataclasses.replace(
        base,
        name=name,
        depth=depth,
        blocks_per_stage=blocks_per_stage,
        stem_out_channels=int(shape(f"{res}stem.conv1.weight")[0]),
        res2_out_channels=int(shape(f"{res}res2.0.conv3.weight")[0]),
        bottleneck_channels=int(shape(f"{res}res2.0.conv1.weight")[0]),
        norm=norm,
        fpn_norm=fpn_norm,
        fpn_out_channels=int(shape("backbone.fpn_output2.weight")[0]) if variant == "fpn" else base.fpn_out_channels,
        head_conv_dims=head_conv_dims,
    )


def _matches_cell_anchors(model: ProposalNetwork, key: str, value: torch.Tensor) -> bool:
    """True for an old detectron2 ``anchor_generator.cell_anchors.i`` buffer equal to our level-i anchors."""
    prefix = "proposal_generator.anchor_generator.cell_anchors."
    if not key.startswith(prefix) or not key[len(prefix) :].isdigit():
        return False
    level = int(key[len(prefix) :])
    generator = model.proposal_generator.anchor_generator
    if level >= len(generator.strides):
        return False
    ours = generator.cell_anchors(level)
    return value.shape == ours.shape and torch.allclose(value.float(), ours, atol=1e-4)


def load_detectron2_rpn(
    path_or_state_dict: str | Path | Mapping[str, Any],
    config: RPNConfig | None = None,
    *,
    strict: bool = False,
) -> tuple[ProposalNetwork, LoadReport]:
    """Build a frozen, eval-mode `ProposalNetwork` and load detectron2/RegionCLIP RPN weights into it.

    ``config=None`` detects the architecture from the file. Weights with a mismatching shape are skipped
    and reported. ``strict=True`` raises ``ValueError`` (with the report) unless ``report.ok``.
    """
    state = read_detectron2_checkpoint(path_or_state_dict)
    rpn_state, source, prefix, non_rpn = split_rpn_state_dict(state)
    detected = config is None
    cfg = detect_rpn_config(rpn_state) if config is None else config
    model = ProposalNetwork(cfg)
    expected = model.state_dict()

    report = LoadReport(source_format=source, config=cfg, config_detected=detected, non_rpn_keys=non_rpn)
    to_load: dict[str, torch.Tensor] = {}
    for key, value in rpn_state.items():
        file_key = prefix + key
        if key not in expected:
            if key.endswith("." + BN_COUNTER) and key.rsplit(".", 1)[0] + ".running_var" in expected:
                report.ignored_keys.append(file_key)  # FrozenBN keeps no batch counter
            elif _matches_cell_anchors(model, key, value):
                report.ignored_keys.append(file_key)  # old detectron2 saved its (derived) cell anchors
            else:
                report.unused_keys.append(file_key)
        elif tuple(value.shape) != tuple(expected[key].shape):
            report.shape_mismatches.append((file_key, tuple(value.shape), tuple(expected[key].shape)))
        else:
            to_load[key] = value
            report.loaded_keys.append(file_key)
    # Mismatched keys are listed once (under shape_mismatches); absent BN counters just start at 0.
    mismatched = {m[0][len(prefix) :] for m in report.shape_mismatches}
    report.missing_keys = sorted(
        prefix + k for k in expected if k not in to_load and k not in mismatched and not k.endswith("." + BN_COUNTER)
    )
    if strict and not report.ok:
        raise ValueError("RPN checkpoint does not match the network:\n" + report.summary())
    model.load_state_dict(to_load, strict=False)
    return model.freeze(), report


def rpn_state_dict_for_detectron2(model: ProposalNetwork, *, regionclip: bool = False) -> dict[str, torch.Tensor]:
    """The network's weights under detectron2 names (``offline_*`` when ``regionclip``), cloned to CPU."""
    prefix = REGIONCLIP_PREFIX if regionclip else ""
    return {prefix + k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_detectron2_rpn(model: ProposalNetwork, path: str | Path, *, regionclip: bool = False) -> Path:
    """Write ``{"model": state_dict}`` with detectron2 (or RegionCLIP ``offline_*``) key names, atomically."""
    return save_detectron2_checkpoint(path, rpn_state_dict_for_detectron2(model, regionclip=regionclip))
