"""Known weight names: the OpenAI CLIP models open_clip downloads by name, and the official RegionCLIP release files
by their released names, each with the architecture, branch and RPN config it needs.

Official files are not downloaded (they live on the authors' Google Drive): pass their path; the registry says what
a file is, so a file given to the wrong loader gets a one-line error naming the right one. Not listed:
``rpn_lvis_1203_clipbackbone.pth`` (an FPN on a CLIP ResNet, which `ProposalNetwork` does not build).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ModelConfig
from ..modeling.proposal_generator import RPNConfig

# what each kind of file is loaded with
USAGE = {
    "clip": "RegionCLIP.from_pretrained(name)",
    "pretrained": (
        "RegionCLIP.from_pretrained(path, branch=...) or OpenVocabularyDetector.from_pretrained(path, rpn=...)"
    ),
    "finetuned": "OpenVocabularyDetector.from_pretrained(path)",
    "rpn": "rpn=path (RegionCLIP / OpenVocabularyDetector .from_pretrained) or load_detectron2_rpn(path)",
    "embeddings": "class_embeddings=load_embedding_file(path)",
}


@dataclass(frozen=True)
class KnownWeights:
    """One known weight name. ``model``: the CLIP architecture of the weights (OpenAI name; ``None`` for RPN files);
    ``branch``: the branch `RegionCLIP.from_pretrained` reads by default (``student`` = RegionCLIP-pretrained; the
    pretraining files also hold the OpenAI CLIP ``teacher``); ``rpn``: the `RPNConfig` preset of the RPN the file is
    or bundles; ``classes``: rows of an embedding file; ``download``: open_clip fetches it by name."""

    name: str
    kind: str  # a key of USAGE
    model: str | None = None
    branch: str | None = None
    rpn: str | None = None
    classes: int | None = None
    download: bool = False

    @property
    def usage(self) -> str:
        return USAGE[self.kind]

    def model_config(self) -> ModelConfig | None:
        """The preset `ModelConfig` of ``model`` when this package has one (RN50, RN50x4); otherwise the shape is
        inferred from the weights when they load."""
        if self.model is None or self.model.lower() not in ("rn50", "rn50x4"):
            return None
        return ModelConfig.preset(self.model)

    def rpn_config(self) -> RPNConfig | None:
        return RPNConfig.preset(self.rpn) if self.rpn is not None else None


OPENAI_CLIP = ("RN50", "RN50x4", "RN101", "RN50x16", "RN50x64")
RPN_FILES = {"rpn_coco_48.pth": "coco_c4", "rpn_coco_65.pth": "coco_c4", "rpn_coco_80.pth": "coco_c4",
             "rpn_lvis_866.pth": "lvis_fpn", "rpn_lvis_866_lsj.pth": "lvis_fpn_lsj"}  # fmt: skip
# the transfer detectors bundle the RPN they were trained with: COCO the C4 one of rpn_coco_48, LVIS the LSJ FPN
FINETUNED_RPN = {"coco": "coco_c4", "lvis": "lvis_fpn_lsj"}
EMBEDDING_FILES = {"coco_48_base_cls_emb": 48, "coco_17_target_cls_emb": 17, "coco_65_cls_emb": 65,
                   "lvis_866_base_cls_emb": 866, "lvis_1203_cls_emb": 1203, "coco_nouns_4764_emb": 4764,
                   "googlecc_nouns_6250_emb": 6250}  # fmt: skip


def _known() -> dict[str, KnownWeights]:
    entries = [KnownWeights(name, "clip", model=name, download=True) for name in OPENAI_CLIP]
    for model, suffix in (("RN50", "rn50"), ("RN50x4", "rn50x4")):
        pretrained = f"regionclip_pretrained-cc_{suffix}.pth"
        entries.append(KnownWeights(pretrained, "pretrained", model, "student", "lvis_fpn"))
        entries.append(KnownWeights(f"teacher_{model}_student_{model}_OAI_CLIP.pth", "pretrained", model, "student"))
        for dataset, rpn in FINETUNED_RPN.items():
            finetuned = f"regionclip_finetuned-{dataset}_{suffix}.pth"
            entries.append(KnownWeights(finetuned, "finetuned", model, "student", rpn))
        for stem, classes in EMBEDDING_FILES.items():
            name = f"{stem}.pth" if model == "RN50" else f"{stem}_rn50x4.pth"
            entries.append(KnownWeights(name, "embeddings", model, classes=classes))
    entries += [KnownWeights(name, "rpn", rpn=preset) for name, preset in RPN_FILES.items()]
    return {entry.name: entry for entry in entries}


KNOWN_WEIGHTS = _known()


def find_known_weights(name_or_path: str | Path) -> KnownWeights | None:
    """The entry of a known name, or of a path whose file name is a released name; ``None`` otherwise."""
    text = str(name_or_path)
    return KNOWN_WEIGHTS.get(text) or KNOWN_WEIGHTS.get(Path(text).name)


def known_weights(name_or_path: str | Path) -> KnownWeights:
    """Like `find_known_weights`, but an unknown name is a ``ValueError`` listing the known ones."""
    entry = find_known_weights(name_or_path)
    if entry is None:
        raise ValueError(f"unknown weights {str(name_or_path)!r}; known names: {', '.join(KNOWN_WEIGHTS)}")
    return entry
