"""`RegionCLIPModel`: the assembled region model of RegionCLIP's recognition branch (docs/region-recognition.md).

image → CLIP trunk (stem → res4, stride 16) → RoIAlign on the boxes → res5 + attention pool → region feature
``[D]``; a text-embedding classifier turns features into class probabilities, and a frozen offline RPN gives
proposals for detection. The user-facing methods (loading, vocabularies, predictions) are in `regionclip.RegionCLIP`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple, Sequence

import torch
from torch import nn

from ...config import ModelConfig
from ...data.images import ImageInput, PreparedImage, prepare_image
from ...precision import autocast
from ..backbone import build_open_clip, build_visual, split_visual
from ..proposal_generator import Proposals
from ..roi_heads import DetectionConfig, TextEmbeddingClassifier, fuse_scores, select_detections
from ..text_encoder import CLIPTextEncoder


class ImageDetections(NamedTuple):
    """Detections of one image: boxes in original pixels ``[M, 4]``, ``scores [M]``, class indices ``[M]`` and
    per-detection extras (``class_probability``, and ``objectness_logit`` with RPN proposals)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    extras: dict[str, torch.Tensor]


def indices_by_size(prepared: Sequence[PreparedImage]) -> dict[tuple[int, int], list[int]]:
    """Positions of the images of each (height, width), sizes in order of first appearance."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(prepared):
        by_size.setdefault(image.size, []).append(index)
    return by_size


class RegionCLIPModel(nn.Module):
    """CLIP's visual tower applied to regions (trunk → RoIAlign → res5 + attention pool), CLIP's text tower for
    vocabularies, and the zero-shot classifier. Parts are swappable attributes: ``trunk``, ``pooler``, ``head``,
    ``text_encoder``, ``classifier``, ``rpn`` (class-agnostic proposal network, frozen, used for detection).

    ``precision`` (`regionclip.precision`): ``"fp32"`` (default, exact) or ``"bf16"`` / ``"fp16"`` (CUDA only),
    applied as autocast around the trunk (channels-last), the region head, the RPN and the text encoder; RoIAlign
    stays fp32, weights stay fp32 and every output is fp32."""

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
        self.rpn = rpn
        self.register_buffer("pixel_mean", torch.tensor(config.input.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.input.pixel_std).view(3, 1, 1), persistent=False)
        self.region_batch_size = 256  # regions per res5 + attention-pool call; bounds peak memory
        # channels_last makes the per-region res5 convolutions ~25 % faster on CPU (benchmarks/zeroshot_inference.py)
        self.head.to(memory_format=torch.channels_last)
        self._precision = "fp32"
        self.eval()

    @classmethod
    def from_config(cls, config: ModelConfig) -> RegionCLIPModel:
        """Randomly initialised model of the given shape."""
        if config.text is not None:
            clip = build_open_clip(config)
            visual, text_encoder = clip.visual, CLIPTextEncoder(clip)
        else:
            visual, text_encoder = build_visual(config), None
        trunk, pooler, head = split_visual(visual, config.vision.pooler_resolution)
        return cls(config, trunk, pooler, head, text_encoder)

    # ---- precision and device ----------------------------------------------------------------------
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

    @contextmanager
    def using_precision(self, precision: str | None):
        """``self.precision`` set to ``precision`` (None: unchanged) inside the block, restored after it."""
        previous = self.precision
        if precision is not None:
            self.precision = precision
        try:
            yield
        finally:
            self._precision = previous

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---- images → region features ------------------------------------------------------------------
    def prepare(self, images: Sequence[ImageInput | PreparedImage]) -> list[PreparedImage]:
        """Images decoded and resized for the model (test-time shortest-edge resize); prepared ones pass as given."""
        size = self.config.input
        return [im if isinstance(im, PreparedImage) else prepare_image(im, size.min_size, size.max_size) for im in images]

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """0–255 RGB → CLIP-normalised input (same operation order as ToTensor + Normalize)."""
        return (pixels.to(self.device) / 255.0 - self.pixel_mean) / self.pixel_std

    def forward(self, images: Sequence[ImageInput | PreparedImage], boxes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Un-normalised region features ``[R_i, D]`` of each image's xyxy ``boxes`` (original-image pixels)."""
        if len(boxes) != len(images):
            raise ValueError(f"{len(images)} images but {len(boxes)} box arrays")
        prepared = self.prepare(images)
        return self.encode_boxes(prepared, [p.to_input_boxes(torch.as_tensor(b).float()) for p, b in zip(prepared, boxes)])

    def encode_boxes(
        self,
        prepared: Sequence[PreparedImage],
        input_boxes: Sequence[torch.Tensor],
        across_images: bool = False,
        sampling_ratio: int | None = None,
    ) -> list[torch.Tensor]:
        """Un-normalised region embeddings for boxes given in each image's *resized* input frame.

        Images of equal size share one trunk batch; different sizes run separately instead of being padded to a
        common size, so an image's features never depend on what it was batched with. Regions go through RoIAlign
        and the region head ``region_batch_size`` at a time, so peak memory is bounded however many boxes there are
        (RoIAlign is per region, so chunking it changes nothing). ``across_images`` fills those chunks with the
        regions of every image of the call, not one image size at a time (fewer, fuller head calls); a positive
        ``sampling_ratio`` replaces RoIAlign's adaptive sampling (`RoIPooler.pool`).
        """
        by_size = indices_by_size(prepared)
        # every region as (size group, row of its roi among the group's): the order of the outputs
        features, rois, regions = [], [], []
        for group, indices in enumerate(by_size.values()):
            batch = torch.stack([self.normalize(prepared[i].pixels) for i in indices])
            features.append(self._run_trunk(batch))
            rois.append(self.pooler.rois(features[-1], [input_boxes[i].to(self.device) for i in indices]))
            regions.append([(group, row) for row in range(len(rois[-1]))])
        runs = [[region for group in regions for region in group]] if across_images else regions
        chunks = [run[start : start + self.region_batch_size]
                  for run in runs for start in range(0, len(run), self.region_batch_size)]
        embeddings = [self._embed_regions(features, rois, chunk, sampling_ratio) for chunk in chunks]
        flat = torch.cat(embeddings) if embeddings else torch.zeros(0, self.config.embed_dim, device=self.device)
        # back to image order: flat follows the group order, each group its images in order
        order = [i for indices in by_size.values() for i in indices]
        outputs: list[torch.Tensor | None] = [None] * len(prepared)
        for i, chunk in zip(order, flat.split([len(input_boxes[i]) for i in order])):
            outputs[i] = chunk
        return outputs  # type: ignore[return-value]

    def _run_trunk(self, batch: torch.Tensor) -> torch.Tensor:
        """res4 features (float32) of a normalised image batch. fp32 runs the trunk contiguous, the exact layout the
        pinned outputs hold (channels-last convolutions round differently, ~1e-6); a lower precision runs it
        channels-last under autocast, where the oneDNN convolutions are fastest (RN50, 800x1333: 1.38 s
        channels-last fp32 vs 0.65 s under bf16 autocast, benchmarks/results/zeroshot_inference_cpu.json)."""
        if self.precision == "fp32":
            return self.trunk(batch)
        with self.autocast():
            return self.trunk(batch.contiguous(memory_format=torch.channels_last)).float()

    def _embed_regions(
        self, features: list[torch.Tensor], rois: list[torch.Tensor], chunk: list[tuple[int, int]], sampling_ratio: int | None
    ) -> torch.Tensor:
        """Pooled and embedded regions of one chunk (float32), ``chunk`` listing (size group, roi row) pairs."""
        rows = torch.tensor([row for _, row in chunk], device=self.device)
        groups = torch.tensor([group for group, _ in chunk], device=self.device)
        pooled = torch.cat([
            self.pooler.pool(features[group], rois[group][rows[groups == group]], sampling_ratio)
            for group in dict.fromkeys(group for group, _ in chunk)
        ]).contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return self.head(pooled).float()

    # ---- proposals and detection -------------------------------------------------------------------
    def propose(
        self, prepared: Sequence[PreparedImage], nms_threshold: float, num_proposals: int, pad_together: bool = False
    ) -> list[Proposals]:
        """The RPN's proposals (input frame, float32, on the model's device): NMS at ``nms_threshold``, at most
        ``num_proposals`` per image. The offline RPN always runs with its test-time settings, in training too.

        Images of one size share an RPN batch; different sizes run separately, as the official evaluation runs one
        image at a time (padded to a larger image, an image's FPN features and so its proposals would change).
        ``pad_together`` pads all of them into one batch instead, as the official trainers do."""
        if self.rpn is None:
            raise ValueError(
                "no RPN for proposals: attach one (model.rpn or from_pretrained(..., rpn=...)) or pass boxes / proposals"
            )
        self.rpn.eval()
        groups = [list(range(len(prepared)))] if pad_together else list(indices_by_size(prepared).values())
        found: list[Proposals] = [None] * len(prepared)  # type: ignore[list-item]
        with self.autocast():
            for indices in groups:
                batch = self.rpn([prepared[i].pixels for i in indices], nms_thresh=nms_threshold, post_nms_topk=num_proposals)
                for i, proposals in zip(indices, batch):
                    found[i] = proposals.to(self.device, torch.float32)
        return found

    def refine_boxes(self, features: torch.Tensor, boxes: torch.Tensor, image: PreparedImage) -> torch.Tensor:
        """The boxes detections are reported with, from the region features and the input-frame boxes they were
        pooled from: unchanged here (zero-shot recognition has no box regression); a detector applies its deltas."""
        return boxes

    def detect_batch(
        self,
        prepared: Sequence[PreparedImage],
        given_boxes: Sequence[torch.Tensor] | None,
        class_embeddings: torch.Tensor,
        config: DetectionConfig,
    ) -> list[ImageDetections]:
        """Detections of a batch: RPN proposals (or ``given_boxes`` in original pixels, official GT mode: no score
        fusion) → region features → class probabilities → `refine_boxes` → score fusion → per-class (soft-)NMS →
        top detections. One label per detection; a box can be detected under several classes."""
        with self.using_precision(config.precision):
            if given_boxes is None:
                proposals = self.propose(prepared, config.rpn_nms_threshold, config.num_proposals)
                input_boxes = [p.boxes for p in proposals]
                objectness: list[torch.Tensor | None] = [p.objectness_logits for p in proposals]
                fusion = config.score_fusion
            else:
                input_boxes = [p.to_input_boxes(b).to(self.device) for p, b in zip(prepared, given_boxes)]
                objectness, fusion = [None] * len(prepared), "none"
            features = self.encode_boxes(
                prepared, input_boxes, config.batch_regions_across_images, config.roi_sampling_ratio
            )
        out = []
        for image, boxes, logits, feats in zip(prepared, input_boxes, objectness, features):
            probabilities = self.classifier.probabilities(feats, class_embeddings)
            scores = fuse_scores(probabilities, logits, fusion)
            boxes = self.refine_boxes(feats, boxes, image)
            box_index, class_index, final_scores = select_detections(boxes, scores, config)
            extras = {"class_probability": probabilities[box_index, class_index]}
            if logits is not None:
                extras["objectness_logit"] = logits[box_index]
            original_boxes = image.to_original_boxes(boxes[box_index])
            out.append(ImageDetections(original_boxes, final_scores, class_index, extras))
        return out
