"""The user-facing model: ``RegionCLIP.from_pretrained(...)`` then ``classify_regions`` / ``embed_regions``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import clip_boxes_to_image
from tqdm.auto import tqdm

from .checkpoints.detectron2_rpn import LoadReport, load_detectron2_rpn, rpn_state_dict_for_detectron2
from .checkpoints.clip_weights import CheckpointParts, infer_config, load_checkpoint, save_safetensors, split_checkpoint
from .config import ModelConfig
from .data.images import ImageInput, PreparedImage, prepare_image
from .detection import DetectionConfig, fuse_scores, select_detections
from .modeling.classifier import TextEmbeddingClassifier
from .modeling.clip_parts import CLIPTextEncoder, build_open_clip, build_visual, split_visual
from .modeling.frozen_bn import fold_batchnorm
from .modeling.rpn import RPNConfig
from .precision import autocast
from .results import RegionPredictions
from .text.embedder import TextEmbedder
from .text.vocabulary import Vocabulary

OPENAI_NAMES = ("RN50", "RN50x4", "RN101", "RN50x16", "RN50x64")
WEIGHTS_FILENAME = "model.safetensors"


def _as_boxes(boxes: object) -> torch.Tensor:
    """One image's boxes as a float ``[N, 4]`` tensor; any other shape (e.g. a row of 8 numbers) is an error."""
    if not isinstance(boxes, torch.Tensor):
        try:
            boxes = np.asarray(boxes, dtype=np.float32)
        except (TypeError, ValueError) as error:  # ragged rows, non-numbers
            raise ValueError(f"boxes must be an [N, 4] array of xyxy numbers: {error}") from None
    tensor = torch.as_tensor(boxes).float()
    if not tensor.numel():
        return tensor.reshape(0, 4)
    if tensor.ndim != 2 or tensor.shape[1] != 4:
        raise ValueError(
            f"boxes must be an [N, 4] array of xyxy boxes (one box: [[x1, y1, x2, y2]]), got shape {tuple(tensor.shape)}"
        )
    if not torch.isfinite(tensor).all():
        raise ValueError("boxes contain non-finite values")
    if (tensor[:, 2] < tensor[:, 0]).any() or (tensor[:, 3] < tensor[:, 1]).any():
        raise ValueError("boxes must be xyxy with x2 >= x1 and y2 >= y1 (original-image pixels)")
    return tensor


def clip_to_image(boxes: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes clipped to ``[0, W] x [0, H]`` (torchvision ``clip_boxes_to_image``) and a ``[N]`` flag of those with
    positive width and height afterwards: zero-area and wholly-outside boxes hold no image to recognise."""
    clipped = clip_boxes_to_image(boxes, image_size)
    return clipped, (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])


def _check_finite_embeddings(class_embeddings: torch.Tensor) -> None:
    bad_rows = (~torch.isfinite(class_embeddings)).flatten(1).any(dim=1).nonzero().flatten().tolist()
    if bad_rows:
        raise ValueError(f"class_embeddings contain NaN/Inf in rows {bad_rows[:10]}{' ...' if len(bad_rows) > 10 else ''}")


class RegionCLIP(nn.Module):
    """CLIP's visual tower applied to regions (trunk → RoIAlign → res5 + attention pool), CLIP's text tower for
    vocabularies, and the zero-shot classifier. Parts are swappable attributes: ``trunk``, ``pooler``, ``head``,
    ``text_encoder``, ``classifier``.

    ``precision`` (`regionclip.precision`): ``"fp32"`` (default, exact) or ``"bf16"`` / ``"fp16"`` (CUDA only),
    applied as autocast around the region head, the RPN and the text encoder; the trunk and RoIAlign stay fp32,
    weights stay fp32 and every output is fp32."""

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
        super().__init__()
        self.config = config
        self.trunk, self.pooler, self.head = trunk, pooler, head
        self.text_encoder = text_encoder
        self.classifier = classifier or TextEmbeddingClassifier(config.temperature)
        self.rpn = rpn  # class-agnostic proposal network (frozen, eval), used by detect()
        self.register_buffer("pixel_mean", torch.tensor(config.input.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.input.pixel_std).view(3, 1, 1), persistent=False)
        self.region_batch_size = 256  # regions per res5 + attention-pool call; bounds peak memory
        # channels_last makes the per-region res5 convolutions ~25 % faster on CPU (benchmarks/zeroshot_inference.py)
        self.head.to(memory_format=torch.channels_last)
        self._embedder: TextEmbedder | None = None
        self._precision = "fp32"
        self.eval()

    @property
    def precision(self) -> str:
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        autocast(value, self.device)  # refuses unknown names and fp16 off CUDA before anything runs
        self._precision = value

    def autocast(self):
        """The autocast context of ``self.precision`` on the model's device (nothing for fp32)."""
        return autocast(self.precision, self.device)

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ModelConfig) -> RegionCLIP:
        """Randomly initialised model of the given shape."""
        if config.text is not None:
            clip = build_open_clip(config)
            visual, text_encoder = clip.visual, CLIPTextEncoder(clip)
        else:
            visual, text_encoder = build_visual(config), None
        trunk, pooler, head = split_visual(visual, config.vision.pooler_resolution)
        return cls(config, trunk, pooler, head, text_encoder)

    @classmethod
    def from_parts(cls, parts: CheckpointParts, config: ModelConfig | None = None) -> RegionCLIP:
        """Build from a split checkpoint, loading every visual and text tensor strictly."""
        config = config or parts.config
        if config is None:
            raise ValueError("no model config: pass one or use a checkpoint it can be inferred from")
        if parts.text is None:
            config = ModelConfig.from_dict({**config.to_dict(), "text": None})
        model = cls.from_config(config)
        visual_state = {f"trunk.{k}" if not k.startswith(("layer4.", "attnpool.")) else f"head.{k}": v for k, v in parts.visual.items()}
        text_state = {f"text_encoder.{k}": v for k, v in (parts.text or {}).items()}
        result = model.load_state_dict({**visual_state, **text_state}, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"weights do not fit a {config.name} model: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        model.checkpoint_parts = parts  # classifier tensors and keys of unused parts, for callers that need them
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
        """Load weights from a local file or directory, or OpenAI CLIP through open_clip by name (``"RN50"``),
        as an inference model: the frozen BatchNorms of the trunk and region head are folded into their
        convolutions (`fold_batchnorm`: outputs equal within float rounding, state dict unchanged), and
        ``precision`` is ``"fp32"`` (exact), ``"bf16"`` or ``"fp16"`` (CUDA only).

        Files: OpenAI ``RN50.pt`` (TorchScript or state dict), open_clip checkpoints, official RegionCLIP / detectron2
        ``.pth`` (``branch="teacher"`` picks ``teacher_backbone.*``), and this project's ``.safetensors``.
        An RPN inside the file (``offline_*`` keys) is attached; ``rpn=`` loads one from a separate detectron2 file.
        """
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        autocast(precision, device)  # an unknown precision, or fp16 off CUDA, fails before the weights load
        path = Path(name_or_path)
        if path.is_dir():
            path = path / WEIGHTS_FILENAME
        if path.is_file():
            parts = load_checkpoint(path, branch=branch)
        elif str(name_or_path) in OPENAI_NAMES:
            parts = _openai_parts(str(name_or_path))
        else:
            raise FileNotFoundError(
                f"{name_or_path!r} is neither a weights file/directory nor one of the OpenAI models {OPENAI_NAMES}"
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
        state = {}
        for key, value in self.state_dict().items():
            part, _, rest = key.partition(".")
            if part in ("trunk", "head"):
                state[f"visual.{rest}"] = value
            elif part == "text_encoder":
                state[rest] = value
        return state

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

    # ---- images → region embeddings ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def prepare(self, images: Sequence[ImageInput]) -> list[PreparedImage]:
        return [prepare_image(im, self.config.input.min_size, self.config.input.max_size) for im in images]

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """0–255 RGB → CLIP-normalised input (same operation order as ToTensor + Normalize)."""
        return (pixels.to(self.device) / 255.0 - self.pixel_mean) / self.pixel_std

    def encode_boxes(self, prepared: Sequence[PreparedImage], input_boxes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Un-normalised region embeddings for boxes given in each image's *resized* input frame.

        Images of equal size share one trunk batch; different sizes run separately instead of being padded to a
        common size, so an image's features never depend on what it was batched with.
        """
        outputs: list[torch.Tensor | None] = [None] * len(prepared)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(prepared):
            by_size.setdefault(image.size, []).append(index)
        for indices in by_size.values():
            batch = torch.stack([self.normalize(prepared[i].pixels) for i in indices])
            features = self.trunk(batch)
            pooled = self.pooler(features, [input_boxes[i].to(self.device) for i in indices])
            pooled = pooled.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                embeddings = torch.cat(
                    [self.head(chunk).float() for chunk in pooled.split(self.region_batch_size)]
                ) if len(pooled) else pooled.new_zeros(0, self.config.embed_dim)
            for i, chunk in zip(indices, embeddings.split([len(input_boxes[i]) for i in indices])):
                outputs[i] = chunk.float()
        return outputs  # type: ignore[return-value]

    def _batches(
        self, images: object, boxes: object | None, batch_size: int, image_ids: Sequence[int] | None, progress: bool
    ):
        """Yield ``(items, prepared, boxes, valid)`` per batch: ``items`` are (image, image id) pairs, ``boxes`` the
        given boxes of each image in original pixels clipped to the image and ``valid`` their non-empty flags
        (both ``None`` when no boxes were given)."""
        image_list = [images] if not isinstance(images, (list, tuple)) else list(images)
        box_list = _pair_images_boxes(images, boxes)[1] if boxes is not None else None
        if image_ids is not None and len(image_ids) != len(image_list):
            raise ValueError("image_ids must have one id per image")
        ids = list(image_ids) if image_ids is not None else [None] * len(image_list)
        for start in tqdm(range(0, len(image_list), batch_size), disable=not progress, desc="images", unit="batch"):
            stop = start + batch_size
            items = list(zip(image_list[start:stop], ids[start:stop]))
            prepared = self.prepare(image_list[start:stop])
            if box_list is None:
                yield items, prepared, None, None
            else:
                clipped = [clip_to_image(b, p.original_size) for p, b in zip(prepared, box_list[start:stop])]
                yield items, prepared, [c for c, _ in clipped], [v for _, v in clipped]

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
        for items, prepared, batch_boxes, batch_valid in self._batches(images, boxes, batch_size, None, progress):
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
        for items, prepared, batch_boxes, batch_valid in self._batches(images, boxes, batch_size, image_ids, progress):
            features = self.encode_boxes(
                prepared, [p.to_input_boxes(b[v]) for p, b, v in zip(prepared, batch_boxes, batch_valid)]
            )
            for item, prep, region_boxes, valid, feats in zip(items, prepared, batch_boxes, batch_valid, features):
                scored = valid.to(feats.device)
                scores = torch.zeros(len(region_boxes), top_k, device=feats.device)
                labels = torch.full((len(region_boxes), top_k), -1, dtype=torch.long, device=feats.device)
                scores[scored], labels[scored] = self.classifier.probabilities(feats, weights).topk(top_k, dim=1)
                predictions.append(_predictions(item, prep, vocabulary, region_boxes, scores, labels, valid=valid))
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
        region embeddings → class probabilities → score fusion → per-class NMS → top detections per image.
        One label per detection; a box can be detected under several classes. Given boxes are clipped to the image
        and those then empty (zero width or height, or wholly outside) give no detection."""
        config = config or DetectionConfig()
        vocabulary = Vocabulary.parse(vocabulary)
        weights = self._class_embeddings(vocabulary, class_embeddings, templates)
        predictions = []
        for items, prepared, batch_boxes, batch_valid in self._batches(images, boxes, batch_size, image_ids, progress):
            nonempty = [b[v] for b, v in zip(batch_boxes, batch_valid)] if batch_boxes is not None else None
            for item, prep, (det_boxes, scores, classes, extras) in zip(
                items, prepared, _detect_batch(self, prepared, nonempty, weights, config)
            ):
                predictions.append(_predictions(item, prep, vocabulary, det_boxes, scores[:, None], classes[:, None], extras))
        return predictions


def _predictions(
    item: tuple[ImageInput, int | None],
    prepared: PreparedImage,
    vocabulary: Vocabulary,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    extras: dict[str, torch.Tensor] | None = None,
    valid: torch.Tensor | None = None,
) -> RegionPredictions:
    image, image_id = item
    return RegionPredictions(
        boxes=boxes.cpu().numpy(),
        scores=scores.cpu().numpy(),
        labels=labels.cpu().numpy(),
        vocabulary=vocabulary,
        image_size=prepared.original_size,
        image_id=image_id,
        source=str(image) if isinstance(image, (str, Path)) else None,
        extras={k: v.cpu().numpy() for k, v in (extras or {}).items()},
        valid=valid.cpu().numpy() if valid is not None else None,
    )


def _pair_images_boxes(images: object, boxes: object) -> tuple[list[ImageInput], list[torch.Tensor]]:
    single = not isinstance(images, (list, tuple))
    image_list = [images] if single else list(images)
    if single:
        box_list = [_as_boxes(boxes)]
    else:
        if not isinstance(boxes, (list, tuple)) or len(boxes) != len(image_list):
            raise ValueError(f"give one box array per image: {len(image_list)} images")
        box_list = [_as_boxes(b) for b in boxes]
    return image_list, box_list


def _openai_parts(name: str) -> CheckpointParts:
    """OpenAI CLIP weights through open_clip (downloads unless cached)."""
    import open_clip

    try:
        clip = open_clip.create_model(name, pretrained="openai")
    except Exception as error:  # network / hub failures surface with many exception types
        raise RuntimeError(
            f"could not load OpenAI {name} through open_clip ({error}). Offline? Put the OpenAI file "
            f"(e.g. {name}.pt) on disk and pass its path."
        ) from error
    parts = split_checkpoint(clip.state_dict())
    parts.config = infer_config(parts.visual, parts.text)
    return parts


def _detect_batch(
    model: RegionCLIP,
    prepared: list[PreparedImage],
    given_boxes: list[torch.Tensor] | None,
    weights: torch.Tensor,
    config: DetectionConfig,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
    """(boxes in original pixels, scores, class indices, extras) per image of one batch."""
    if given_boxes is None:
        if model.rpn is None:
            raise ValueError("detect() needs proposals: attach an RPN (model.rpn or from_pretrained(..., rpn=...)) or pass boxes")
        model.rpn.eval()
        with model.autocast():
            proposals = model.rpn(
                [p.pixels for p in prepared], nms_thresh=config.rpn_nms_threshold, post_nms_topk=config.num_proposals
            )
        input_boxes = [p.boxes.to(model.device, torch.float32) for p in proposals]
        objectness: list[torch.Tensor | None] = [p.objectness_logits.to(model.device, torch.float32) for p in proposals]
        fusion = config.score_fusion
    else:
        input_boxes = [p.to_input_boxes(b).to(model.device) for p, b in zip(prepared, given_boxes)]
        objectness, fusion = [None] * len(prepared), "none"
    features = model.encode_boxes(prepared, input_boxes)
    out = []
    for image, boxes, logits, feats in zip(prepared, input_boxes, objectness, features):
        probabilities = model.classifier.probabilities(feats, weights)
        scores = fuse_scores(probabilities, logits, fusion)
        box_index, class_index, final_scores = select_detections(boxes, scores, config)
        extras = {"class_probability": probabilities[box_index, class_index]}
        if logits is not None:
            extras["objectness_logit"] = logits[box_index]
        out.append((image.to_original_boxes(boxes[box_index]), final_scores, class_index, extras))
    return out
