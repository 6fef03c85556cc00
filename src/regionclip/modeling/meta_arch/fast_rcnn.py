"""`OpenVocabularyDetector`: RegionCLIP's transfer detector, a Fast R-CNN C4 on CLIP's parts (docs/transfer.md).

Image → CLIP trunk (res4) → RoIAlign 14×14 (RN50) on the proposals of a frozen offline RPN → res5 + attention pool →
region feature ``f [D]``, then

* classification: ``[cos(f, t_1..t_K), 0] / 0.01`` over frozen text embeddings with a constant background logit
  (`TextEmbeddingClassifier`); training uses the base classes' embeddings, testing swaps in base + novel ones;
* class-agnostic box regression: ``Linear(D → 4)`` on the **un-normalised** ``f``, deltas with weights
  (10, 10, 5, 5) (`BoxCoder`).

Losses: `regionclip.modeling.roi_heads.fast_rcnn`. Test-time: `RegionCLIP.detect` / `RegionCLIPModel.detect_batch`
with this class's `refine_boxes` (box deltas applied, boxes clipped to the image) before the post-processing of
`regionclip.modeling.roi_heads.postprocessing` (score fusion, NMS / soft-NMS, threshold, top-k).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torchvision.ops import clip_boxes_to_image

from ...api import WEIGHTS_FILENAME, RegionCLIP
from ...checkpoints.clip_weights import save_safetensors
from ...checkpoints.detectron2_rpn import rpn_state_dict_for_detectron2
from ...checkpoints.embeddings import load_embedding_file
from ...checkpoints.transfer import (
    TransferLoadReport,
    read_transfer_checkpoint,
    save_transfer_checkpoint,
    transfer_state_dict,
)
from ...config import ModelConfig
from ...data.images import ImageInput, PreparedImage
from ...data.inputs import as_boxes
from ...text.vocabulary import Vocabulary
from ..box_regression import BoxCoder
from ..roi_heads import DetectionConfig, RoIHeadConfig, fast_rcnn_losses, label_and_sample_proposals

PREDICTOR_PREFIX = "roi_heads.box_predictor."
EmbeddingsInput = torch.Tensor | str | Path | None


def transfer_detection_config(lvis: bool = False, **overrides: Any) -> DetectionConfig:
    """The official transfer evaluation settings: soft-NMS (σ 0.5), offline-RPN NMS 0.7 with 1000 proposals;
    COCO: class probabilities as scores, threshold 0.001, 100 detections; LVIS: ``sqrt(p × objectness logit)``,
    threshold 0.02, 300 detections."""
    base = {"soft_nms": True, "rpn_nms_threshold": 0.7, "num_proposals": 1000}
    if lvis:
        base.update(score_fusion="official", score_threshold=0.02, max_detections=300)
    else:
        base.update(score_fusion="none", score_threshold=0.001, max_detections=100)
    return DetectionConfig(**{**base, **overrides})


def _embeddings(value: EmbeddingsInput) -> torch.Tensor | None:
    if value is None or isinstance(value, torch.Tensor):
        return None if value is None else value.detach().float()
    return load_embedding_file(value)


class OpenVocabularyDetector(RegionCLIP):
    """Fast R-CNN C4 with a text-embedding classifier and class-agnostic box regression.

    Extra attributes beside `RegionCLIP`'s parts: ``bbox_pred`` (``Linear(D, 4)``), ``train_embeddings [K, D]`` /
    ``test_embeddings [K', D]`` (frozen, un-normalised), ``roi_heads_config`` (sampling and losses) and
    ``detection_config`` (test-time post-processing).
    """

    def __init__(
        self,
        config: ModelConfig,
        trunk: nn.Module,
        pooler: nn.Module,
        head: nn.Module,
        text_encoder: nn.Module | None = None,
        classifier: nn.Module | None = None,
        rpn: nn.Module | None = None,
        *,
        roi_heads_config: RoIHeadConfig | None = None,
        detection_config: DetectionConfig | None = None,
    ) -> None:
        super().__init__(config, trunk, pooler, head, text_encoder, classifier, rpn)
        self.roi_heads_config = roi_heads_config or RoIHeadConfig()
        self.detection_config = detection_config or transfer_detection_config()
        self.box_coder = BoxCoder(self.roi_heads_config.box_reg_weights)
        self.bbox_pred = nn.Linear(config.embed_dim, 4)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)
        self.register_buffer("train_embeddings", None, persistent=False)
        self.register_buffer("test_embeddings", None, persistent=False)
        self.load_report: TransferLoadReport | None = None
        self.eval()

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        path: str | Path,
        train_embeddings: EmbeddingsInput = None,
        test_embeddings: EmbeddingsInput = None,
        *,
        rpn: str | Path | None = None,
        config: ModelConfig | None = None,
        roi_heads_config: RoIHeadConfig | None = None,
        detection_config: DetectionConfig | None = None,
        freeze_at: int = 2,
        device: str | torch.device | None = None,
    ) -> OpenVocabularyDetector:
        """Load a fine-tuned detector or initialise one from pretrained weights.

        ``path``: the official fine-tuned ``.pth``, this project's safetensors (file or directory), a RegionCLIP
        pretraining ``.pth`` (student), the OpenAI-CLIP teacher/student file or CLIP weights (``visual.*``).
        ``train_embeddings`` / ``test_embeddings``: ``[K, D]`` tensors or official embedding ``.pth`` files; given
        ones win over those stored in the file, and ``load_report`` says which were used. ``rpn``: a detectron2 /
        RegionCLIP RPN file, required when the weights carry none. ``freeze_at=2`` freezes stem + res2 (official).
        """
        path = Path(path)
        if path.is_dir():
            path = path / WEIGHTS_FILENAME
        weights, report = read_transfer_checkpoint(path, rpn=rpn)
        parts = weights.parts
        if roi_heads_config is None and "roi_heads_config" in parts.metadata:
            roi_heads_config = RoIHeadConfig.from_dict(json.loads(parts.metadata["roi_heads_config"]))
        loaded = RegionCLIP.from_parts(parts, config)  # strict for the CLIP towers and the RPN
        detector = cls(
            loaded.config, loaded.trunk, loaded.pooler, loaded.head, loaded.text_encoder, loaded.classifier, loaded.rpn,
            roi_heads_config=roi_heads_config, detection_config=detection_config,
        )
        if weights.bbox_pred:
            detector.bbox_pred.load_state_dict(weights.bbox_pred)
            report.notes.append("bbox_pred: from the file")
        else:
            report.notes.append("bbox_pred: newly initialised (N(0, 0.001), bias 0)")
        for name, given, stored in (
            ("train", _embeddings(train_embeddings), weights.train_embeddings),
            ("test", _embeddings(test_embeddings), weights.test_embeddings),
        ):
            if given is not None:
                chosen, note = given, f"{name} embeddings: passed {list(given.shape)}"
                if stored is not None:
                    note += f"; the file's {list(stored.shape)} ({'cls_score' if name == 'train' else 'test_cls_score'}) NOT used"
            elif stored is not None:
                chosen, note = stored, f"{name} embeddings: from the file {list(stored.shape)}"
            else:
                chosen, note = None, f"{name} embeddings: none"
            detector.set_embeddings(**{name: chosen})
            report.notes.append(note)
        detector.freeze(freeze_at)
        detector.load_report = report
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return detector.to(device)

    def set_embeddings(self, train: torch.Tensor | None = None, test: torch.Tensor | None = None) -> None:
        """Set (replace) the frozen ``[K, D]`` class embeddings used in training and/or at test time."""
        for name, value in (("train_embeddings", train), ("test_embeddings", test)):
            if value is None:
                continue
            if value.ndim != 2 or value.shape[1] != self.config.embed_dim:
                raise ValueError(f"{name} must be [K, {self.config.embed_dim}], got {list(value.shape)}")
            setattr(self, name, value.detach().float().to(self.device))

    def freeze(self, freeze_at: int = 2) -> OpenVocabularyDetector:
        """Train nothing before stage ``freeze_at`` (1 = stem, 2 = stem + res2); the text encoder and RPN are frozen,
        and every BatchNorm is a FrozenBatchNorm already."""
        stages = [("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"), ("layer1",)]
        for names in stages[:freeze_at]:
            for name in names:
                for param in getattr(self.trunk, name).parameters():
                    param.requires_grad_(False)
        for module in (self.text_encoder, self.rpn):
            if module is not None:
                for param in module.parameters():
                    param.requires_grad_(False)
        return self

    # ---- saving ------------------------------------------------------------------------------------
    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The official ``CLIPFastRCNN`` fine-tuned layout (510 keys for RN50 with the COCO C4 RPN)."""
        if self.train_embeddings is None or self.rpn is None:
            raise ValueError("the official layout needs train embeddings and an RPN")
        visual = {k: v for k, v in self.openai_state_dict().items() if k.startswith("visual.")}
        return transfer_state_dict(
            visual,
            rpn_state_dict_for_detectron2(self.rpn, regionclip=True),
            self.train_embeddings,
            self.bbox_pred.state_dict(),
            self.test_embeddings,
        )

    def save_official(self, path: str | Path) -> Path:
        """Write the official fine-tuned ``.pth`` (``{"model": state_dict}``), atomically."""
        return save_transfer_checkpoint(path, self.official_state_dict())

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``model.safetensors`` (into a directory, or to a ``.safetensors`` path): OpenAI-named CLIP weights,
        the ``offline_*`` RPN, ``roi_heads.box_predictor.*`` and the model, RPN and RoI-head configs."""
        path = Path(path)
        target = path if path.suffix == ".safetensors" else path / WEIGHTS_FILENAME
        state = self.openai_state_dict()
        official = self.official_state_dict()
        state.update({k: v for k, v in official.items() if k.startswith(("offline_", PREDICTOR_PREFIX))})
        metadata = {
            "rpn_config": json.dumps(self.rpn.config.to_dict()),
            "roi_heads_config": json.dumps(self.roi_heads_config.to_dict()),
        }
        return save_safetensors(target, state, self.config, metadata)

    # ---- training ----------------------------------------------------------------------------------
    def forward(
        self,
        images: Sequence[ImageInput | PreparedImage],
        targets: Sequence[dict[str, Any]],
        proposals: Sequence[object] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The training losses (`losses`); a module call, so a DistributedDataParallel wrapper can run it."""
        if self.train_embeddings is None:
            raise ValueError("no training embeddings: pass train_embeddings to from_pretrained or call set_embeddings")
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        prepared = self.prepare(images)
        if proposals is None:
            found = self.propose(prepared, self.detection_config.rpn_nms_threshold, self.detection_config.num_proposals,
                                 pad_together=True)  # the official trainer's offline RPN sees the padded batch
            input_proposals = [p.boxes for p in found]
        else:
            if len(proposals) != len(prepared):
                raise ValueError(f"{len(prepared)} images but {len(proposals)} proposal arrays")
            input_proposals = [p.to_input_boxes(as_boxes(b)).to(self.device) for p, b in zip(prepared, proposals)]
        num_classes = self.train_embeddings.shape[0]
        rois = []
        for image, boxes, target in zip(prepared, input_proposals, targets):
            gt_boxes = image.to_input_boxes(as_boxes(target["boxes"])).to(self.device)
            gt_labels = torch.as_tensor(target["labels"]).reshape(-1)
            nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # no deltas from empty boxes
            rois.append(
                label_and_sample_proposals(boxes[nonempty], gt_boxes, gt_labels, num_classes, self.roi_heads_config, generator)
            )
        features = torch.cat(self.encode_boxes(prepared, [r.boxes for r in rois]))
        logits = self.classifier(features, self.train_embeddings)
        deltas = self.bbox_pred(features)
        return fast_rcnn_losses(logits, deltas, rois, self.box_coder, self.roi_heads_config)

    def losses(
        self,
        images: Sequence[ImageInput | PreparedImage],
        targets: Sequence[dict[str, Any]],
        proposals: Sequence[object] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"loss_cls", "loss_box_reg"}`` of a batch.

        ``targets[i]``: ``{"boxes": [N, 4] xyxy in original pixels, "labels": [N] indices into the training
        embeddings}``. ``images`` are any image inputs (resized as at test time) or `PreparedImage` s (already
        resized/augmented; boxes are mapped with their scale). ``proposals`` (original pixels, per image) are used
        as given instead of the RPN's, before the ground truth is appended and the RoIs sampled; ``generator``
        drives the sampling.
        """
        return self(images, targets, proposals, generator)

    # ---- inference ---------------------------------------------------------------------------------
    def detection_embeddings(
        self, vocabulary: Vocabulary, class_embeddings: torch.Tensor | None, templates: str | Sequence[str]
    ) -> torch.Tensor:
        """The embeddings `detect` scores with: ``class_embeddings`` if given, else the stored test (then training)
        embeddings whose row count matches the vocabulary, else the text encoder's embeddings of the names
        (``templates``). `detect` has the arguments and outputs of `RegionCLIP.detect`, with ``config`` defaulting to
        ``self.detection_config`` and the boxes refined by `refine_boxes`."""
        if class_embeddings is None:
            for stored in (self.test_embeddings, self.train_embeddings):
                if stored is not None and stored.shape[0] == len(vocabulary):
                    return stored
            if self.text_encoder is None:
                raise ValueError(
                    f"no embeddings for a vocabulary of {len(vocabulary)} names: the stored ones have "
                    f"{[e.shape[0] for e in (self.test_embeddings, self.train_embeddings) if e is not None]} rows and "
                    "there is no text encoder; pass class_embeddings"
                )
        return self._class_embeddings(vocabulary, class_embeddings, templates)

    def refine_boxes(self, features: torch.Tensor, boxes: torch.Tensor, image: PreparedImage) -> torch.Tensor:
        """Class-agnostic box regression: ``bbox_pred`` deltas of the un-normalised features applied to the
        input-frame boxes (`BoxCoder`), then clipped to the image."""
        return clip_boxes_to_image(self.box_coder.decode(self.bbox_pred(features), boxes), image.size)
