"""The official pretraining checkpoint layout (``PretrainFastRCNN``), read strictly and written back.

A RegionCLIP pretraining checkpoint is a ``.pth`` file ``{"model": state_dict, ...}`` whose state dict has four
parts (docs/pretraining-data.md, "Checkpoint layout"):

* ``backbone.*``          the student: CLIP's ModifiedResNet with OpenAI's names after ``visual.`` (incl. layer4 and
  the attention pool); FrozenBN entries have no ``num_batches_tracked``;
* ``teacher_backbone.*``  the frozen teacher, the same names (its shape may differ from the student's);
* ``lang_encoder.*``      the frozen CLIP text encoder with OpenAI's text names, without ``logit_scale``;
* ``offline_backbone.*`` + ``offline_proposal_generator.*``  the frozen offline RPN (detectron2 names).

An RN50 file holds 284 + 284 + 149 + 287 = 1004 keys. The reader also takes the OpenAI-CLIP initialisation file
(``teacher_RN50_student_RN50_OAI_CLIP.pth``: student, teacher, ``lang_encoder.*``, ``teacher_lang_encoder.*`` and
``logit_scale`` entries, no RPN) and plain CLIP files (``visual.*``; student = teacher); both need the RPN from a
separate detectron2 file (``rpn=``), as the official ``BB_RPN_WEIGHTS`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig
from ..modeling.backbone import build_open_clip, build_visual
from ..modeling.meta_arch.proposal_network import ProposalNetwork
from ..modeling.proposal_generator import RPNConfig
from .clip_weights import IGNORED_CLIP_KEYS, TEXT_PREFIXES, infer_config, read_state_dict, split_checkpoint
from .io import save_detectron2_checkpoint
from .detectron2_rpn import BN_COUNTER, LoadReport, detect_rpn_config, read_detectron2_checkpoint, split_rpn_state_dict

STUDENT_PREFIX = "backbone."
TEACHER_PREFIX = "teacher_backbone."
TEXT_PREFIX = "lang_encoder."
# Entries of the OpenAI-CLIP initialisation file that the pretraining model has no place for: the teacher's copy
# of the (shared, frozen) text encoder and CLIP's learned temperatures (the losses use a fixed 0.01).
INIT_FILE_EXTRA_PREFIXES = ("teacher_lang_encoder.", "teacher.")


@dataclass
class PretrainingWeights:
    """The four parts of a pretraining checkpoint.

    ``student`` / ``teacher``: OpenAI visual names without ``visual.``; ``text``: OpenAI text names;
    ``rpn``: the file's ``offline_backbone.*`` / ``offline_proposal_generator.*`` names (what
    ``load_detectron2_rpn`` accepts).
    """

    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]
    text: dict[str, torch.Tensor]
    rpn: dict[str, torch.Tensor]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The official key layout (the inverse of `read_pretraining_checkpoint`)."""
        return pretraining_state_dict(self.student, self.teacher, self.text, self.rpn)


@dataclass
class PretrainingLoadReport(LoadReport):
    """`LoadReport` over every key of a pretraining file; ``config`` is the offline RPN's."""

    student_config: ModelConfig | None = None
    teacher_config: ModelConfig | None = None

    def summary(self) -> str:
        names = f"student {self.student_config.name if self.student_config else '?'}, teacher " + (
            self.teacher_config.name if self.teacher_config else "?"
        )
        return f"{names}; " + super().summary()


def _visual_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):  # shapes only: nothing is allocated
        visual = build_visual(config)
    return {k: v.shape for k, v in visual.state_dict().items() if not k.endswith(BN_COUNTER)}


def _text_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        clip = build_open_clip(config)
    return {k: v.shape for k, v in clip.state_dict().items() if not k.startswith("visual.") and k not in IGNORED_CLIP_KEYS}


def _rpn_shapes(config: RPNConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        network = ProposalNetwork(config)
    return {k: v.shape for k, v in network.state_dict().items() if not k.endswith(BN_COUNTER)}


def _check_part(
    report: LoadReport,
    part: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Size],
    file_prefix: str,
) -> dict[str, torch.Tensor]:
    """Record every key of ``part`` in ``report`` and return the ones that fit ``expected``."""
    kept = {}
    for key, value in part.items():
        file_key = file_prefix + key
        if key not in expected:
            counter = key.endswith("." + BN_COUNTER) and key.rsplit(".", 1)[0] + ".running_var" in expected
            if counter or key in IGNORED_CLIP_KEYS:  # OpenAI BatchNorm counters (FrozenBN keeps none), logit_scale
                report.ignored_keys.append(file_key)
            else:
                report.unused_keys.append(file_key)
        elif tuple(value.shape) != tuple(expected[key]):
            report.shape_mismatches.append((file_key, tuple(value.shape), tuple(expected[key])))
        else:
            kept[key] = value
            report.loaded_keys.append(file_key)
    mismatched = {m[0] for m in report.shape_mismatches}
    report.missing_keys.extend(
        file_prefix + k for k in expected if k not in kept and file_prefix + k not in mismatched
    )
    return kept


def _rpn_from(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An RPN state dict (detectron2 or ``offline_*`` names, file or dict) under ``offline_*`` names."""
    rpn, _, _, _ = split_rpn_state_dict(read_detectron2_checkpoint(source))
    return {"offline_" + k: v for k, v in rpn.items()}


def read_pretraining_checkpoint(
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    rpn: str | Path | Mapping[str, torch.Tensor] | None = None,
    student_config: ModelConfig | None = None,
    teacher_config: ModelConfig | None = None,
    rpn_config: RPNConfig | None = None,
    strict: bool = True,
) -> tuple[PretrainingWeights, PretrainingLoadReport]:
    """Split a pretraining checkpoint into student, teacher, text and RPN weights and check every key.

    ``source``: a pretraining ``.pth`` (the official layout), the OpenAI-CLIP teacher/student initialisation file, a
    plain CLIP file (student = teacher = its visual tower), or such a state dict. ``rpn``: a detectron2 /
    RegionCLIP RPN file or state dict, required when ``source`` has no ``offline_*`` keys (and then the only RPN
    used). Configs not given are inferred from the tensors (the RPN's from its keys and shapes).

    Every file key ends up in exactly one of the report's lists: loaded, unused (no place in the model), shape
    mismatch, or ignored (BatchNorm counters, and the initialisation file's ``teacher_lang_encoder.*`` /
    ``logit_scale`` entries). ``missing_keys`` lists model weights the file lacks. ``strict=True`` raises
    ``ValueError`` with the summary unless ``report.ok``; the returned weights hold only the keys that fit.
    """
    state = dict(read_state_dict(source)[0] if isinstance(source, (str, Path)) else source)
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("a pretraining checkpoint must be a non-empty state dict of tensors")
    student_parts = split_checkpoint(state, "student")
    if student_parts.kind == "regionclip":
        teacher_visual = split_checkpoint(state, "teacher").visual
        source_format = "regionclip-pretrain"
    else:  # plain CLIP: the student starts as a copy of the teacher
        teacher_visual = student_parts.visual
        source_format = "clip"
    if not student_parts.text:
        raise ValueError(f"the checkpoint has no text encoder ({TEXT_PREFIX}* or OpenAI text keys)")
    if rpn is not None:
        rpn_state = _rpn_from(rpn)
        replaced = [k for k in student_parts.rpn]  # the file's own RPN is superseded by the one passed
    elif student_parts.rpn:
        rpn_state, replaced = dict(student_parts.rpn), []
    else:
        raise ValueError(
            "the checkpoint has no offline RPN (offline_backbone.* / offline_proposal_generator.*): pass rpn= "
            "with a detectron2 RPN file such as rpn_lvis_866.pth"
        )
    plain_rpn, _, _, _ = split_rpn_state_dict(rpn_state)
    rpn_detected = rpn_config is None
    rpn_config = detect_rpn_config(plain_rpn) if rpn_config is None else rpn_config
    student_config = student_config or infer_config(student_parts.visual, student_parts.text)
    teacher_config = teacher_config or infer_config(teacher_visual, student_parts.text)

    report = PretrainingLoadReport(
        source_format=source_format,
        config=rpn_config,
        config_detected=rpn_detected,
        student_config=student_config,
        teacher_config=teacher_config,
    )
    student_prefix, teacher_prefix, text_prefix = (
        (STUDENT_PREFIX, TEACHER_PREFIX, TEXT_PREFIX) if source_format == "regionclip-pretrain" else ("visual.", "visual.", "")
    )
    weights = PretrainingWeights(
        student=_check_part(report, student_parts.visual, _visual_shapes(student_config), student_prefix),
        teacher=_check_part(report, teacher_visual, _visual_shapes(teacher_config), teacher_prefix),
        text=_check_part(report, student_parts.text, _text_shapes(student_config), text_prefix),
        rpn={},
    )
    kept_rpn = _check_part(report, plain_rpn, _rpn_shapes(rpn_config), "offline_")
    weights.rpn = {"offline_" + k: v for k, v in kept_rpn.items()}
    report.ignored_keys.extend(replaced)
    for key in student_parts.other:
        if key.startswith(TEACHER_PREFIX):
            continue  # read above as the teacher
        if key.startswith(INIT_FILE_EXTRA_PREFIXES) or key in IGNORED_CLIP_KEYS:
            report.ignored_keys.append(key)
        else:
            report.unused_keys.append(key)
    report.unused_keys.extend(f"roi_heads.box_predictor.{k}" for k in student_parts.classifier)
    if source_format == "clip":  # each visual key was checked for the student and again for the teacher
        for name in ("loaded_keys", "missing_keys", "unused_keys", "shape_mismatches", "ignored_keys"):
            setattr(report, name, list(dict.fromkeys(getattr(report, name))))
    if strict and not report.ok:
        raise ValueError("checkpoint does not fit the pretraining model:\n" + report.summary())
    return weights, report


def pretraining_state_dict(
    student: Mapping[str, torch.Tensor],
    teacher: Mapping[str, torch.Tensor],
    text: Mapping[str, torch.Tensor],
    rpn: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The official pretraining layout from OpenAI-named parts (``visual.`` prefixes optional).

    BatchNorm counters and CLIP's ``logit_scale`` are dropped (the official file has neither); RPN keys may carry
    plain detectron2 or ``offline_*`` names. Tensors are detached and moved to the CPU.
    """

    def visual(part: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        return {
            prefix + k.removeprefix("visual."): v for k, v in part.items() if not k.endswith("." + BN_COUNTER)
        }

    unknown_text = [k for k in text if not k.startswith(TEXT_PREFIXES) and k not in IGNORED_CLIP_KEYS]
    if unknown_text:
        raise ValueError(f"not CLIP text-encoder keys: {unknown_text[:5]}")
    plain_rpn, _, _, _ = split_rpn_state_dict(rpn)
    state = {
        **visual(student, STUDENT_PREFIX),
        **visual(teacher, TEACHER_PREFIX),
        **{TEXT_PREFIX + k: v for k, v in text.items() if k.startswith(TEXT_PREFIXES)},
        **{"offline_" + k: v for k, v in plain_rpn.items() if not k.endswith("." + BN_COUNTER)},
    }
    return {k: v.detach().cpu() for k, v in state.items()}


def save_pretraining_checkpoint(
    path: str | Path, weights: PretrainingWeights, extra: Mapping[str, object] | None = None
) -> Path:
    """Write ``{"model": state_dict, **extra}`` in the official layout, atomically (``extra``: e.g. ``iteration``)."""
    return save_detectron2_checkpoint(path, weights.state_dict(), extra)


__all__ = [
    "PretrainingLoadReport",
    "PretrainingWeights",
    "pretraining_state_dict",
    "read_pretraining_checkpoint",
    "save_pretraining_checkpoint",
]
