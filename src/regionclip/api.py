"""The user-facing model: ``RegionCLIP.from_pretrained(...)`` then ``classify_regions`` / ``embed_regions`` /
``detect``. A façade: the model is `regionclip.modeling.meta_arch.RegionCLIPModel`, weight formats and known names
are `regionclip.checkpoints`, image decoding is `regionclip.data.images`; here user inputs are checked and batched
and outputs become `RegionPredictions`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .checkpoints.clip_weights import (
    CheckpointParts,
    load_checkpoint,
    load_openai_clip,
    model_state_dict,
    openai_state_dict,
    save_safetensors,
)
from .checkpoints.detectron2_rpn import LoadReport, load_detectron2_rpn, rpn_state_dict_for_detectron2
from .checkpoints.registry import KNOWN_WEIGHTS, find_known_weights
from .config import ModelConfig
from .data.images import ImageInput
from .data.inputs import input_batches
from .modeling.layers import fold_batchnorm
from .modeling.meta_arch.region_clip import RegionCLIPModel
from .modeling.proposal_generator import RPNConfig
from .modeling.roi_heads import DetectionConfig, TextEmbeddingClassifier
from .modeling.text_encoder import CLIPTextEncoder
from .precision import autocast
from .results import RegionPredictions
from .text.embedder import TextEmbedder
from .text.vocabulary import Vocabulary

WEIGHTS_FILENAME = "model.safetensors"


def _check_finite_embeddings(class_embeddings: torch.Tensor) -> None:
    bad_rows = (~torch.isfinite(class_embeddings)).flatten(1).any(dim=1).nonzero().flatten().tolist()
    if bad_rows:
        raise ValueError(f"class_embeddings contain NaN/Inf in rows {bad_rows[:10]}{' ...' if len(bad_rows) > 10 else ''}")


class RegionCLIP(RegionCLIPModel):
    """The user-facing RegionCLIP: load weights (`from_pretrained`), embed vocabularies, classify / embed given boxes
    and detect. The model itself (parts, region features, detection of a batch) is `RegionCLIPModel`
    (`regionclip.modeling.meta_arch.region_clip`); weight formats are `regionclip.checkpoints`.

    Attributes beside the model's parts: ``detection_config`` (the default of `detect`), ``checkpoint_parts`` (the
    loaded file's classifier tensors and keys of unused parts, for callers that need them) and ``rpn_load_report``
    (missing / unused keys of the attached RPN), both ``None`` until set by loading."""

    def __init__(
        self,
        config: ModelConfig,
        trunk: nn.Module,
        pooler: nn.Module,
        head: nn.Module,
        text_encoder: CLIPTextEncoder | None = None,
        classifier: TextEmbeddingClassifier | None = None,
        rpn: nn.Module | None = None,
    ) -> None:
        super().__init__(config, trunk, pooler, head, text_encoder, classifier, rpn)
        self.detection_config = DetectionConfig()
        self.checkpoint_parts: CheckpointParts | None = None
        self.rpn_load_report: LoadReport | None = None
        self._embedder: TextEmbedder | None = None

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_parts(cls, parts: CheckpointParts, config: ModelConfig | None = None) -> RegionCLIP:
        """Build from a split checkpoint, loading every visual and text tensor strictly."""
        config = config or parts.config
        if config is None:
            raise ValueError("no model config: pass one or use a checkpoint it can be inferred from")
        if parts.text is None:
            config = ModelConfig.from_dict({**config.to_dict(), "text": None})
        model = cls.from_config(config)
        result = model.load_state_dict(model_state_dict(parts), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"weights do not fit a {config.name} model: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        model.checkpoint_parts = parts
        if parts.rpn:
            rpn_config = RPNConfig.from_dict(json.loads(parts.metadata["rpn_config"])) if "rpn_config" in parts.metadata else None
            model.attach_rpn(parts.rpn, rpn_config)
        return model

    def attach_rpn(self, source: str | Path | dict[str, torch.Tensor], config: RPNConfig | None = None) -> LoadReport:
        """Load a detectron2 / RegionCLIP RPN (file or state dict; architecture detected from the keys) as
        ``self.rpn``, frozen. Returns the load report (missing / unused keys)."""
        rpn, report = load_detectron2_rpn(source, config)
        if report.missing_keys or report.unused_keys or report.shape_mismatches:
            raise ValueError("RPN weights do not fit the detected network:\n" + report.summary())
        self.rpn = rpn.to(self.device)
        self.rpn_load_report = report
        return report

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        branch: str = "student",
        device: str | torch.device | None = None,
        config: ModelConfig | None = None,
        rpn: str | Path | None = None,
        precision: str = "fp32",
    ) -> RegionCLIP:
        """Load weights from a local file or directory, or OpenAI CLIP through open_clip by name (``"RN50"``; the
        known names are `regionclip.checkpoints.registry.KNOWN_WEIGHTS`), as an inference model: the frozen
        BatchNorms of the trunk and region head are folded into their convolutions (`fold_batchnorm`: outputs equal
        within float rounding, state dict unchanged), and ``precision`` is ``"fp32"`` (exact), ``"bf16"`` or
        ``"fp16"`` (CUDA only).

        Files: OpenAI ``RN50.pt`` (TorchScript or state dict), open_clip checkpoints, official RegionCLIP / detectron2
        ``.pth`` (``branch="teacher"`` picks ``teacher_backbone.*``), and this project's ``.safetensors``.
        An RPN inside the file (``offline_*`` keys) is attached; ``rpn=`` loads one from a separate detectron2 file.
        """
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        autocast(precision, device)  # an unknown precision, or fp16 off CUDA, fails before the weights load
        path = Path(name_or_path)
        if path.is_dir():
            path = path / WEIGHTS_FILENAME
        known = find_known_weights(name_or_path)
        if known is not None and known.kind in ("rpn", "embeddings"):
            raise ValueError(f"{path.name} holds no CLIP weights; load it with {known.usage}")
        if path.is_file():
            parts = load_checkpoint(path, branch=branch)
        elif known is not None and known.download:
            parts = load_openai_clip(known.name)
        elif known is not None:
            raise FileNotFoundError(
                f"{name_or_path!r} is the official RegionCLIP file {known.name} but is not on disk: download it from "
                "the RegionCLIP model zoo and pass its path"
            )
        else:
            raise FileNotFoundError(
                f"{name_or_path!r} is neither a weights file/directory nor a known name: {', '.join(KNOWN_WEIGHTS)}"
            )
        model = cls.from_parts(parts, config)
        if rpn is not None:
            model.attach_rpn(rpn)
        fold_batchnorm(model.trunk)
        fold_batchnorm(model.head)
        model = model.to(device)
        model.precision = precision
        return model

    def openai_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under OpenAI CLIP names (``visual.*`` and the text keys)."""
        return openai_state_dict(self.state_dict())

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``model.safetensors`` into a directory (or to a ``.safetensors`` path): OpenAI-named CLIP weights,
        the RPN under RegionCLIP's ``offline_*`` names when attached, and both configs in the metadata."""
        path = Path(path)
        target = path if path.suffix == ".safetensors" else path / WEIGHTS_FILENAME
        state, metadata = self.openai_state_dict(), {}
        if self.rpn is not None:
            state.update(rpn_state_dict_for_detectron2(self.rpn, regionclip=True))
            metadata["rpn_config"] = json.dumps(self.rpn.config.to_dict())
        return save_safetensors(target, state, self.config, metadata)

    # ---- region embeddings -------------------------------------------------------------------------
    @torch.inference_mode()
    def embed_regions(
        self,
        images: ImageInput | Sequence[ImageInput],
        boxes: object,
        normalize: bool = True,
        batch_size: int = 8,
        progress: bool = False,
    ) -> list[torch.Tensor]:
        """Region embeddings ``[R_i, D]`` per image (L2-normalised unless ``normalize=False``). Boxes are xyxy in
        original-image pixels, clipped to the image; for a single image ``boxes`` may be one ``[R, 4]`` array.
        A box that is empty once clipped (zero width or height, or wholly outside) is a ``ValueError``."""
        result = []
        first_image = 0
        batches = input_batches(images, boxes, batch_size, None, progress, self.prepare)
        for items, prepared, batch_boxes, batch_valid in batches:
            for offset, (image, clipped, valid) in enumerate(zip(prepared, batch_boxes, batch_valid)):
                if not valid.all():
                    index = int((~valid).nonzero()[0])
                    raise ValueError(
                        f"box {index} of image {first_image + offset} (0-based) is empty once clipped to the "
                        f"{image.original_size[1]}x{image.original_size[0]} image (clipped: "
                        f"{[round(v, 2) for v in clipped[index].tolist()]}): it has no region to embed"
                    )
            first_image += len(items)
            embeddings = self.encode_boxes(prepared, [p.to_input_boxes(b) for p, b in zip(prepared, batch_boxes)])
            result.extend(F.normalize(e, dim=-1) if normalize else e for e in embeddings)
        return [r.cpu() for r in result]

    # ---- vocabularies ------------------------------------------------------------------------------
    @property
    def text_embedder(self) -> TextEmbedder:
        if self.text_encoder is None:
            raise ValueError(
                "these weights have no text encoder; pass class_embeddings (e.g. "
                "regionclip.checkpoints.load_embedding_file('lvis_1203_cls_emb.pth'))"
            )
        if self._embedder is None or self._embedder.encoder is not self.text_encoder:
            self._embedder = TextEmbedder(self.text_encoder)
        self._embedder.precision = self.precision
        return self._embedder

    def embed_vocabulary(
        self,
        vocabulary: Vocabulary | str | Sequence[str],
        templates: str | Sequence[str] = "ensemble",
        use_cache: bool = True,
        progress: bool = False,
    ) -> torch.Tensor:
        """``[K, D]`` un-normalised class embeddings (81-template ensemble by default), cached on disk."""
        vocabulary = Vocabulary.parse(vocabulary)
        return self.text_embedder.embed_names(vocabulary, templates, use_cache=use_cache, progress=progress)

    def _class_embeddings(self, vocabulary: Vocabulary, class_embeddings: torch.Tensor | None, templates) -> torch.Tensor:
        if class_embeddings is None:
            class_embeddings = self.embed_vocabulary(vocabulary, templates)
        else:
            _check_finite_embeddings(torch.as_tensor(class_embeddings))
        if class_embeddings.shape[0] != len(vocabulary):
            raise ValueError(
                f"{class_embeddings.shape[0]} class embeddings for a vocabulary of {len(vocabulary)} names"
            )
        return class_embeddings.to(self.device)

    def detection_embeddings(
        self, vocabulary: Vocabulary, class_embeddings: torch.Tensor | None, templates: str | Sequence[str]
    ) -> torch.Tensor:
        """The ``[K, D]`` class embeddings `detect` scores with: ``class_embeddings`` if given, else the text
        encoder's embeddings of the names (``templates``)."""
        return self._class_embeddings(vocabulary, class_embeddings, templates)

    # ---- zero-shot classification of given boxes ---------------------------------------------------
    @torch.inference_mode()
    def classify_regions(
        self,
        images: ImageInput | Sequence[ImageInput],
        boxes: object,
        vocabulary: Vocabulary | str | Sequence[str],
        top_k: int = 3,
        templates: str | Sequence[str] = "ensemble",
        class_embeddings: torch.Tensor | None = None,
        batch_size: int = 8,
        image_ids: Sequence[int] | None = None,
        progress: bool = False,
    ) -> list[RegionPredictions]:
        """Top-k vocabulary labels of every given box: ``softmax([cos/τ, 0])`` over the names and background, the
        background dropped from the labels. Boxes are clipped to the image; a box that is then empty (zero width or
        height, or wholly outside) gets ``valid=False`` in its predictions and no labels or scores."""
        vocabulary = Vocabulary.parse(vocabulary)
        if top_k < 1:
            raise ValueError(f"top_k must be ≥ 1, got {top_k}")
        top_k = min(top_k, len(vocabulary))
        weights = self._class_embeddings(vocabulary, class_embeddings, templates)
        predictions = []
        batches = input_batches(images, boxes, batch_size, image_ids, progress, self.prepare)
        for items, prepared, batch_boxes, batch_valid in batches:
            features = self.encode_boxes(
                prepared, [p.to_input_boxes(b[v]) for p, b, v in zip(prepared, batch_boxes, batch_valid)]
            )
            for item, prep, region_boxes, valid, feats in zip(items, prepared, batch_boxes, batch_valid, features):
                scored = valid.to(feats.device)
                scores = torch.zeros(len(region_boxes), top_k, device=feats.device)
                labels = torch.full((len(region_boxes), top_k), -1, dtype=torch.long, device=feats.device)
                scores[scored], labels[scored] = self.classifier.probabilities(feats, weights).topk(top_k, dim=1)
                predictions.append(
                    RegionPredictions.from_tensors(
                        region_boxes, scores, labels, vocabulary, prep.original_size, *item, valid=valid
                    )
                )
        return predictions

    # ---- zero-shot detection -----------------------------------------------------------------------
    @torch.inference_mode()
    def detect(
        self,
        images: ImageInput | Sequence[ImageInput],
        vocabulary: Vocabulary | str | Sequence[str],
        boxes: object | None = None,
        config: DetectionConfig | None = None,
        class_embeddings: torch.Tensor | None = None,
        templates: str | Sequence[str] = "ensemble",
        batch_size: int = 4,
        image_ids: Sequence[int] | None = None,
        progress: bool = False,
    ) -> list[RegionPredictions]:
        """Zero-shot detection: RPN proposals (or the given ``boxes``, official GT mode: no score fusion) →
        region embeddings → class probabilities → score fusion → per-class NMS → top detections per image
        (`RegionCLIPModel.detect_batch`; ``config`` defaults to ``self.detection_config``, the official COCO
        zero-shot settings). One label per detection; a box can be detected under several classes. Given boxes are
        clipped to the image and those then empty (zero width or height, or wholly outside) give no detection."""
        config = config or self.detection_config
        vocabulary = Vocabulary.parse(vocabulary)
        weights = self.detection_embeddings(vocabulary, class_embeddings, templates)
        predictions = []
        batches = input_batches(images, boxes, batch_size, image_ids, progress, self.prepare)
        for items, prepared, batch_boxes, batch_valid in batches:
            nonempty = [b[v] for b, v in zip(batch_boxes, batch_valid)] if batch_boxes is not None else None
            for item, prep, found in zip(items, prepared, self.detect_batch(prepared, nonempty, weights, config)):
                predictions.append(
                    RegionPredictions.from_tensors(
                        found.boxes, found.scores[:, None], found.classes[:, None], vocabulary, prep.original_size,
                        *item, extras=found.extras,
                    )
                )
        return predictions
