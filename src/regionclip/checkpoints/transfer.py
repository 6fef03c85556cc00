"""Weight files of the open-vocabulary detector (docs/transfer.md, "Checkpoints").

Read, every key accounted for:

* the official fine-tuned layout (``CLIPFastRCNN``, ``{"model": state_dict}``): ``backbone.*`` (CLIP's
  ModifiedResNet, OpenAI names after ``visual.``), the offline C4 or FPN RPN (``offline_backbone.*``,
  ``offline_proposal_generator.*``) and ``roi_heads.box_predictor.{cls_score.weight [K, D], cls_bg_score.weight
  [1, D] (zeros), test_cls_score.weight [K', D] (optional), bbox_pred.{weight [4, D], bias [4]}}``; the COCO RN50
  file has 284 + 221 + 5 = 510 keys;
* initialisations: a RegionCLIP pretraining file (the student ``backbone.*`` is used; read by
  `read_pretraining_checkpoint`, so its teacher, text encoder and RPN are checked too), the OpenAI-CLIP
  teacher/student file, or plain CLIP weights (``visual.*``);
* this project's safetensors (OpenAI names, ``offline_*`` RPN and the same ``roi_heads.box_predictor.*`` keys, the
  configs in the metadata).

Written: the official layout (``.pth``) and this project's safetensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ModelConfig
from .clip_weights import (
    IGNORED_CLIP_KEYS,
    METADATA_FORMAT,
    CheckpointParts,
    infer_config,
    read_state_dict,
    split_checkpoint,
)
from .io import save_detectron2_checkpoint
from .detectron2_rpn import BN_COUNTER, read_detectron2_checkpoint, split_rpn_state_dict
from .pretraining import TEACHER_PREFIX, read_pretraining_checkpoint

PREDICTOR_PREFIX = "roi_heads.box_predictor."
REQUIRED_PREDICTOR_KEYS = ("cls_score.weight", "cls_bg_score.weight", "bbox_pred.weight", "bbox_pred.bias")
OPTIONAL_PREDICTOR_KEYS = ("test_cls_score.weight",)


@dataclass
class TransferWeights:
    """A detector checkpoint split by role. ``parts`` holds the CLIP towers and the RPN (``offline_*`` names);
    the embeddings and ``bbox_pred`` (``{"weight", "bias"}``) are None / empty for an initialisation file."""

    parts: CheckpointParts
    train_embeddings: torch.Tensor | None = None
    test_embeddings: torch.Tensor | None = None
    bbox_pred: dict[str, torch.Tensor] = field(default_factory=dict)
    source_format: str = "official-transfer"  # "official-transfer", "regionclip-pretrain", "clip", "safetensors"


@dataclass
class TransferLoadReport:
    """What a detector checkpoint provided and which embeddings the detector uses."""

    source_format: str
    path: str
    num_keys: int
    notes: list[str] = field(default_factory=list)  # one line per decision (embeddings, RPN, unused parts)

    def summary(self) -> str:
        return "\n".join([f"{self.path}: {self.source_format}, {self.num_keys} keys", *(f"  {n}" for n in self.notes)])


def _rpn_state(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detectron2 / RegionCLIP RPN (file or state dict) under ``offline_*`` names."""
    plain, _, _, _ = split_rpn_state_dict(read_detectron2_checkpoint(source))
    return {"offline_" + k: v for k, v in plain.items()}


def _split_predictor(state: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    predictor = {k[len(PREDICTOR_PREFIX) :]: state.pop(k) for k in list(state) if k.startswith(PREDICTOR_PREFIX)}
    if not predictor:
        return predictor
    unknown = sorted(set(predictor) - set(REQUIRED_PREDICTOR_KEYS) - set(OPTIONAL_PREDICTOR_KEYS))
    missing = [k for k in REQUIRED_PREDICTOR_KEYS if k not in predictor]
    if unknown or missing:
        raise ValueError(
            f"{path}: box predictor keys do not fit the detector: missing {[PREDICTOR_PREFIX + k for k in missing]}, "
            f"unexpected {[PREDICTOR_PREFIX + k for k in unknown]}"
        )
    dim = predictor["cls_score.weight"].shape[-1]
    shapes = {"cls_bg_score.weight": (1, dim), "bbox_pred.weight": (4, dim), "bbox_pred.bias": (4,)}
    for key, shape in shapes.items():
        if tuple(predictor[key].shape) != shape:
            raise ValueError(f"{path}: {PREDICTOR_PREFIX}{key} has shape {list(predictor[key].shape)}, expected {list(shape)}")
    if "test_cls_score.weight" in predictor and predictor["test_cls_score.weight"].shape[-1] != dim:
        raise ValueError(f"{path}: test_cls_score and cls_score have different widths")
    if bool(predictor["cls_bg_score.weight"].any()):
        raise ValueError(f"{path}: cls_bg_score is not zero, so the background logit would not be the constant 0")
    return predictor


def read_transfer_checkpoint(
    path: str | Path, rpn: str | Path | Mapping[str, torch.Tensor] | None = None
) -> tuple[TransferWeights, TransferLoadReport]:
    """Split a detector checkpoint or an initialisation file; raise ``ValueError`` on any key without a place.

    ``rpn``: a detectron2 / RegionCLIP RPN file or state dict that replaces the file's own offline RPN (the report
    says so) or supplies one to a file without it.
    """
    state, metadata = read_state_dict(path)
    report = TransferLoadReport("", str(path), len(state))
    predictor = _split_predictor(state, str(path))
    if any(k.startswith(TEACHER_PREFIX) for k in state):
        pretrained, pretrain_report = read_pretraining_checkpoint(state, rpn=rpn, strict=True)
        config = pretrain_report.student_config
        parts = CheckpointParts("regionclip", pretrained.student, pretrained.text, rpn=pretrained.rpn, config=config)
        source = "regionclip-pretrain"
        report.notes.append(f"initialisation: the student backbone.* of a pretraining file ({pretrain_report.source_format})")
        report.notes.append(f"not used by the detector: {sum(k.startswith(TEACHER_PREFIX) for k in state)} {TEACHER_PREFIX}* keys")
        if rpn is not None:
            report.notes.append("RPN: the one passed (rpn=) replaces the file's")
    else:
        parts = split_checkpoint(state)
        unexpected = [k for k in parts.other if k not in IGNORED_CLIP_KEYS]
        if unexpected:
            raise ValueError(f"{path}: keys with no place in the detector: {unexpected[:8]}")
        parts.metadata = metadata
        if metadata.get("format") == METADATA_FORMAT:
            parts.kind, source = "safetensors", "safetensors"
            parts.config = ModelConfig.from_json(metadata["config"])
        else:
            parts.config = infer_config(parts.visual, parts.text)
            source = "official-transfer" if predictor else ("clip" if parts.kind == "openai" else "regionclip")
        if rpn is not None:
            if parts.rpn:
                report.notes.append(f"RPN: the one passed (rpn=) replaces the file's {len(parts.rpn)} offline_* keys")
            parts.rpn = _rpn_state(rpn)
            parts.metadata.pop("rpn_config", None)  # the stored RPN config describes the replaced network
    if not parts.rpn:
        raise ValueError(f"{path} has no offline RPN (offline_backbone.* / offline_proposal_generator.*): pass rpn=")
    report.source_format = source
    weights = TransferWeights(parts, source_format=source)
    if predictor:
        weights.train_embeddings = predictor["cls_score.weight"].float()
        weights.test_embeddings = predictor.get("test_cls_score.weight")
        weights.bbox_pred = {"weight": predictor["bbox_pred.weight"], "bias": predictor["bbox_pred.bias"]}
    return weights, report


def transfer_state_dict(
    visual: Mapping[str, torch.Tensor],
    rpn: Mapping[str, torch.Tensor],
    train_embeddings: torch.Tensor,
    bbox_pred: Mapping[str, torch.Tensor],
    test_embeddings: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The official fine-tuned layout from OpenAI-named visual weights (``visual.`` prefix optional), an RPN
    (detectron2 or ``offline_*`` names), the embeddings and ``bbox_pred``; CPU tensors, no BatchNorm counters."""
    plain_rpn, _, _, _ = split_rpn_state_dict(rpn)
    dim = train_embeddings.shape[1]
    state = {
        "backbone." + k.removeprefix("visual."): v for k, v in visual.items() if not k.endswith("." + BN_COUNTER)
    }
    state.update({"offline_" + k: v for k, v in plain_rpn.items() if not k.endswith("." + BN_COUNTER)})
    state[PREDICTOR_PREFIX + "cls_score.weight"] = train_embeddings
    state[PREDICTOR_PREFIX + "cls_bg_score.weight"] = train_embeddings.new_zeros(1, dim)
    if test_embeddings is not None:
        state[PREDICTOR_PREFIX + "test_cls_score.weight"] = test_embeddings
    state[PREDICTOR_PREFIX + "bbox_pred.weight"] = bbox_pred["weight"]
    state[PREDICTOR_PREFIX + "bbox_pred.bias"] = bbox_pred["bias"]
    return {k: v.detach().cpu().float().contiguous() for k, v in state.items()}


def save_transfer_checkpoint(path: str | Path, state: Mapping[str, torch.Tensor]) -> Path:
    """Write ``{"model": state}`` (the official ``.pth`` container), atomically."""
    return save_detectron2_checkpoint(path, state)


__all__ = [
    "TransferLoadReport",
    "TransferWeights",
    "read_transfer_checkpoint",
    "save_transfer_checkpoint",
    "transfer_state_dict",
]
