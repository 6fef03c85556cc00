"""`RegionTextPretraining`: RegionCLIP's region–text pretraining model (docs/pretraining.md, "Model and trainer").

A trainable *student* (CLIP trunk → RoIAlign → res5 + attention pool) learns from a frozen *teacher* of the same
route, a frozen text encoder and a frozen class-agnostic RPN. One batch:

1. images → the pretraining transform (bicubic resize, flip only in training with a generator, CLIP normalisation)
   → one zero-padded batch tensor (bottom/right, after normalisation); both trunks run on the padded tensor;
2. regions: the given proposals (original-image pixels, used as they are), or the frozen RPN's (NMS 0.5, top 300
   after NMS, 100 drawn at random per image with the given generator);
3. the student embeds the regions and one whole-image ("global") box per image by the same RoI route; the teacher
   embeds the regions; the text encoder embeds the captions (EOT);
4. `region_text_losses`: teacher pseudo-labels, ``region_distill``, ``concept_contrastive``, ``image_text``.

One module over 300 lines on purpose: it is one class (construction from the four weight formats, batch
preparation, features, losses, pseudo-labels); the loss arithmetic itself lives in `regionclip.modeling.region_text_losses`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from ...api import WEIGHTS_FILENAME, RegionCLIP
from ...data.inputs import as_boxes
from ...checkpoints.clip_weights import METADATA_FORMAT, CheckpointParts, read_state_dict
from ...checkpoints.detectron2_rpn import load_detectron2_rpn, rpn_state_dict_for_detectron2
from ...checkpoints.embeddings import load_embedding_file
from ...checkpoints.pretraining import PretrainingLoadReport, PretrainingWeights, read_pretraining_checkpoint, save_pretraining_checkpoint
from ...config import ModelConfig
from ...data.images import ImageInput
from ...data.pretrain_images import CaptionSample, PretrainBatch, PretrainTransform, collate_pretrain
from ...text.vocabulary import Vocabulary
from ..region_text_losses import PseudoLabels, RegionTextLossConfig, region_text_losses, teacher_pseudo_labels
from ..proposal_generator import RPNConfig
from .proposal_network import ProposalNetwork

ConceptPool = torch.Tensor | Vocabulary | str | Path
TRUNK_STAGES = (("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"), ("layer1",))  # stem, res2


@dataclass(frozen=True)
class ProposalSampling:
    """Regions drawn from the frozen RPN when no proposals are given (official: NMS 0.5, top 300, 100 sampled)."""

    nms_threshold: float = 0.5
    top_k: int = 300
    per_image: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.nms_threshold <= 1 or self.top_k < 1 or self.per_image < 1:
            raise ValueError(f"need 0 < nms_threshold <= 1, top_k >= 1, per_image >= 1; got {self}")


@dataclass
class RegionPseudoLabels:
    """The teacher's verdict on the regions of one image: ``boxes [R, 4]`` (xyxy, original-image pixels),
    ``concepts [R]`` (top-1 concept index), ``scores [R]`` (its probability) and ``keep [R]`` (whether the region
    enters the region losses: top-1 probability above the threshold, or every region when none of the batch is)."""

    boxes: torch.Tensor
    concepts: torch.Tensor
    scores: torch.Tensor
    keep: torch.Tensor


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length: int) -> SimpleTokenizer:
    """One OpenAI BPE tokenizer per context length (reading its merges takes most of a second)."""
    return SimpleTokenizer(context_length=context_length)


def _frozen(module: nn.Module) -> nn.Module:
    for param in module.parameters():
        param.requires_grad_(False)
    return module.eval()


def _visual_state(trunk: nn.Module, head: nn.Module) -> dict[str, torch.Tensor]:
    """OpenAI visual names (without ``visual.``): the trunk's and head's keys are OpenAI's already."""
    return {**trunk.state_dict(), **head.state_dict()}


def _to_original_boxes(batch: PretrainBatch, index: int, boxes: torch.Tensor) -> torch.Tensor:
    """The inverse of `PretrainBatch.to_input_boxes`: un-mirror, then scale back to the original pixels."""
    (height, width), (orig_h, orig_w) = batch.image_sizes[index], batch.original_sizes[index]
    if batch.flipped[index]:
        boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    return boxes * boxes.new_tensor([orig_w / width, orig_h / height, orig_w / width, orig_h / height])


class RegionTextPretraining(nn.Module):
    """Student (``trunk``, ``pooler``, ``head``; trainable from res3 on), frozen teacher (``teacher_trunk``,
    ``teacher_pooler``, ``teacher_head``), frozen ``text_encoder`` and frozen ``rpn``; ``concept_embeddings [K, D]``
    (un-normalised, frozen, not saved) is the concept pool of the student and, unless ``teacher_concept_embeddings``
    is given, of the teacher.

    ``transform``: the pretraining image transform (`PretrainTransform`: short side 800 / long ≤ 1333 bicubic by
    default; smaller sizes for small worlds); ``sampling``: `ProposalSampling`; ``loss_config``:
    `RegionTextLossConfig` (temperatures, threshold, weights); ``freeze_at``: 2 freezes stem + res2 (official).
    """

    def __init__(
        self,
        student: RegionCLIP,
        teacher: RegionCLIP,
        concept_embeddings: torch.Tensor,
        rpn: ProposalNetwork | None = None,
        *,
        teacher_concept_embeddings: torch.Tensor | None = None,
        transform: PretrainTransform | None = None,
        sampling: ProposalSampling | None = None,
        loss_config: RegionTextLossConfig | None = None,
        freeze_at: int = 2,
    ) -> None:
        super().__init__()
        if student.text_encoder is None:
            raise ValueError("the student needs a text encoder (for the captions)")
        if not 0 <= freeze_at <= len(TRUNK_STAGES):
            raise ValueError(f"freeze_at must be 0, 1 or 2, got {freeze_at}")
        self.config, self.teacher_config = student.config, teacher.config
        self.trunk, self.pooler, self.head = student.trunk, student.pooler, student.head
        self.teacher_trunk, self.teacher_pooler = _frozen(teacher.trunk), teacher.pooler
        self.teacher_head = _frozen(teacher.head)
        self.text_encoder = _frozen(student.text_encoder)
        self.rpn = rpn.freeze() if rpn is not None else None
        for names in TRUNK_STAGES[:freeze_at]:
            for name in names:
                _frozen(getattr(self.trunk, name))
        self.transform = transform or PretrainTransform()
        self.sampling = sampling or ProposalSampling()
        self.loss_config = loss_config or RegionTextLossConfig()
        self.register_buffer("concept_embeddings", None, persistent=False)
        self.register_buffer("teacher_concept_embeddings", None, persistent=False)
        self.set_concepts(concept_embeddings, teacher_concept_embeddings)
        self.tokenizer = _tokenizer(self.text_encoder.context_length)
        self.load_report: PretrainingLoadReport | None = None
        self.eval()  # as RegionCLIP: training is asked for explicitly (the trainer does)

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        concept_embeddings: ConceptPool,
        *,
        rpn: str | Path | dict[str, torch.Tensor] | None = None,
        config: ModelConfig | None = None,
        teacher_config: ModelConfig | None = None,
        teacher_concept_embeddings: torch.Tensor | str | Path | None = None,
        transform: PretrainTransform | None = None,
        sampling: ProposalSampling | None = None,
        loss_config: RegionTextLossConfig | None = None,
        freeze_at: int = 2,
        device: str | torch.device | None = None,
    ) -> RegionTextPretraining:
        """Build from a weight file (or a directory holding ``model.safetensors``), read strictly:

        * the official pretraining layout (``backbone.*`` student, ``teacher_backbone.*``, ``lang_encoder.*``,
          ``offline_*`` RPN; 1004 keys for RN50), which continues a pretraining;
        * the OpenAI-CLIP teacher/student initialisation file (``teacher_RN50_student_RN50_OAI_CLIP.pth``; needs
          ``rpn=``);
        * CLIP weights: this project's RegionCLIP safetensors (its stored config and RPN are used) or OpenAI's;
          student and teacher both start from them.

        ``rpn``: a detectron2 / RegionCLIP RPN file or state dict; it replaces the file's own. ``config`` /
        ``teacher_config``: model shapes for files without a stored config (inferred from the tensors otherwise;
        the teacher's defaults to the student's). ``concept_embeddings``: ``[K, D]`` tensor, an official
        embedding ``.pth``, or a `Vocabulary` (or anything `Vocabulary.parse` reads: a pool file such as
        ``coco_nouns_4764.txt``) embedded by the frozen text encoder with the 81-template ensemble (cached).
        """
        path = Path(path)
        if path.is_dir():
            path = path / WEIGHTS_FILENAME
        state, metadata = read_state_dict(path)
        stored = ModelConfig.from_json(metadata["config"]) if metadata.get("format") == METADATA_FORMAT else None
        config = config or stored
        teacher_config = teacher_config or config
        rpn_config = (
            RPNConfig.from_dict(json.loads(metadata["rpn_config"])) if rpn is None and "rpn_config" in metadata else None
        )
        weights, report = read_pretraining_checkpoint(
            state, rpn=rpn, student_config=config, teacher_config=teacher_config, rpn_config=rpn_config
        )
        student = RegionCLIP.from_parts(CheckpointParts("openai", weights.student, weights.text), report.student_config)
        teacher = RegionCLIP.from_parts(CheckpointParts("openai", weights.teacher, None), report.teacher_config)
        proposal_network, _ = load_detectron2_rpn(weights.rpn, report.config, strict=True)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        student, teacher, proposal_network = student.to(device), teacher.to(device), proposal_network.to(device)
        pool = _concept_pool(student, concept_embeddings)
        teacher_pool = None if teacher_concept_embeddings is None else _concept_pool(student, teacher_concept_embeddings)
        model = cls(
            student, teacher, pool, proposal_network, teacher_concept_embeddings=teacher_pool, transform=transform,
            sampling=sampling, loss_config=loss_config, freeze_at=freeze_at,
        )
        model.load_report = report
        return model.to(device)

    def set_concepts(self, concept_embeddings: torch.Tensor, teacher_concept_embeddings: torch.Tensor | None = None) -> None:
        """Replace the concept pool(s): ``[K, D]`` un-normalised embeddings (the teacher's pool lists the same K
        concepts in the teacher's embedding space)."""
        pools = (("concept_embeddings", concept_embeddings, self.config), ("teacher_concept_embeddings", teacher_concept_embeddings, self.teacher_config))
        for name, value, config in pools:
            if value is None:
                continue
            value = torch.as_tensor(value)
            if value.ndim != 2 or value.shape[1] != config.embed_dim or not len(value):
                raise ValueError(f"{name} must be [K, {config.embed_dim}] with K >= 1, got {list(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} contain NaN/Inf")
            setattr(self, name, value.detach().float().to(self.concept_device))
        teacher_pool = self.teacher_concept_embeddings
        if teacher_pool is None and self.teacher_config.embed_dim != self.config.embed_dim:
            raise ValueError("the teacher embeds into another dimension: pass teacher_concept_embeddings")
        if teacher_pool is not None and teacher_pool.shape[0] != self.concept_embeddings.shape[0]:
            raise ValueError("the teacher's concept pool must list the same concepts as the student's")

    @property
    def concept_device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    @property
    def device(self) -> torch.device:
        return self.concept_device

    def train(self, mode: bool = True) -> RegionTextPretraining:
        """Only the student changes mode; the teacher, text encoder and RPN stay in eval mode."""
        super().train(mode)
        for frozen in (self.teacher_trunk, self.teacher_head, self.text_encoder, self.rpn):
            if frozen is not None:
                frozen.eval()
        return self

    # ---- weights out -------------------------------------------------------------------------------
    def student_regionclip(self) -> RegionCLIP:
        """A copy of the student as a zero-shot `RegionCLIP` (trunk, pooler, head, text encoder, RPN), eval mode."""
        model = RegionCLIP(
            self.config, copy.deepcopy(self.trunk), copy.deepcopy(self.pooler), copy.deepcopy(self.head),
            copy.deepcopy(self.text_encoder), rpn=copy.deepcopy(self.rpn),
        )
        for param in model.parameters():
            param.requires_grad_(False)
        return model.to(self.device).eval()

    def pretraining_weights(self) -> PretrainingWeights:
        """Student, teacher, text encoder and RPN under the official names (`PretrainingWeights`)."""
        if self.rpn is None:
            raise ValueError("the official pretraining layout needs an RPN")
        text = {k: v for k, v in self.text_encoder.state_dict().items()}
        return PretrainingWeights(
            student=_visual_state(self.trunk, self.head),
            teacher=_visual_state(self.teacher_trunk, self.teacher_head),
            text=text,
            rpn=rpn_state_dict_for_detectron2(self.rpn, regionclip=True),
        )

    def save_official(self, path: str | Path, extra: dict[str, object] | None = None) -> Path:
        """The official ``{"model": state_dict, **extra}`` ``.pth`` (``PretrainFastRCNN`` layout), atomically."""
        return save_pretraining_checkpoint(path, self.pretraining_weights(), extra)

    def save_pretrained(self, path: str | Path) -> Path:
        """The student as this project's RegionCLIP safetensors (with the RPN), which `RegionCLIP.from_pretrained`
        loads for zero-shot use and `from_pretrained` reads back (student = teacher = these weights)."""
        return self.student_regionclip().save_pretrained(path)

    # ---- inputs ------------------------------------------------------------------------------------
    def prepare_batch(self, images: Sequence[ImageInput] | ImageInput | PretrainBatch, generator: torch.Generator | None = None) -> PretrainBatch:
        """Images → a padded `PretrainBatch` (a `PretrainBatch` passes through as it is). Flips are drawn (one draw
        per image from ``generator``) only in training mode with a generator; otherwise nothing is flipped."""
        if isinstance(images, PretrainBatch):
            return images
        image_list = list(images) if isinstance(images, (list, tuple)) else [images]
        if not image_list:
            raise ValueError("no images given")
        flipping = self.training and generator is not None
        transform = self.transform if flipping else dataclasses.replace(self.transform, flip_probability=0.0)
        draws = generator if flipping else torch.Generator()  # never touch the global random stream
        samples = [CaptionSample(transform(image, draws), "", str(i), i) for i, image in enumerate(image_list)]
        return collate_pretrain(samples)

    def tokenize(self, captions: Sequence[str] | torch.Tensor, batch_size: int) -> torch.Tensor:
        """Captions (strings, or ``[B, context]`` token ids as given) → token ids on the model's device."""
        if isinstance(captions, torch.Tensor):
            tokens = captions
            if tokens.ndim != 2 or tokens.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"caption tokens must be an integer [B, {self.text_encoder.context_length}] tensor")
        else:
            captions = [captions] if isinstance(captions, str) else list(captions)
            tokens = self.tokenizer(captions)
        if len(tokens) != batch_size:
            raise ValueError(f"{batch_size} images but {len(tokens)} captions")
        return tokens.long().to(self.device)

    def region_boxes(
        self, batch: PretrainBatch, proposals: Sequence[object] | None = None, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """Each image's regions in its input frame (resized, flipped as drawn): the given ``proposals`` (original
        pixels) mapped as they are, else the frozen RPN's top ``sampling.top_k`` after NMS, of which
        ``sampling.per_image`` are drawn by ``torch.randperm(n, generator=generator)`` (all when fewer)."""
        if proposals is not None:
            if len(proposals) != len(batch):
                raise ValueError(f"{len(batch)} images but {len(proposals)} proposal arrays")
            return [batch.to_input_boxes(i, as_boxes(b)).to(self.device) for i, b in enumerate(proposals)]
        if self.rpn is None:
            raise ValueError("no RPN: load one (from_pretrained(..., rpn=...)) or pass proposals")
        mean = batch.images.new_tensor(self.transform.pixel_mean).view(3, 1, 1)
        std = batch.images.new_tensor(self.transform.pixel_std).view(3, 1, 1)
        # the RPN takes 0-255 RGB: undo the CLIP normalisation of the unpadded images (official: x * 255 of ToTensor)
        pixels = [(batch.images[i, :, :h, :w] * std + mean) * 255.0 for i, (h, w) in enumerate(batch.image_sizes)]
        with torch.no_grad():
            found = self.rpn(pixels, nms_thresh=self.sampling.nms_threshold, post_nms_topk=self.sampling.top_k)
        sampled = []
        for proposal in found:
            pick = torch.randperm(len(proposal), generator=generator)[: self.sampling.per_image]
            sampled.append(proposal.boxes[pick.to(proposal.boxes.device)].float().to(self.device))
        return sampled

    # ---- features ----------------------------------------------------------------------------------
    def _embed(self, trunk: nn.Module, pooler: nn.Module, head: nn.Module, pixels: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """``[ΣR, D]`` fp32 embeddings of the boxes of each image of the padded batch (trunk on the padded tensor,
        RoIAlign on res4, res5 + attention pool)."""
        if not sum(len(b) for b in boxes):
            return pixels.new_zeros(0, head.out_channels)
        pooled = pooler(trunk(pixels), boxes).contiguous(memory_format=torch.channels_last)
        return head(pooled).float()

    def features(
        self,
        batch: PretrainBatch,
        regions: list[torch.Tensor],
        global_box: str = "padded",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(student region features [ΣR, D], teacher region features [ΣR, D_t], student global features [B, D])``.
        The student pools every image's regions and its global box (`PretrainBatch.global_boxes`) from one res4
        map, the teacher the same regions from its own."""
        pixels = batch.images.to(self.device)
        global_boxes = batch.global_boxes(global_box).to(self.device)
        student_boxes = [torch.cat([r, g[None]]) for r, g in zip(regions, global_boxes)]
        student = self._embed(self.trunk, self.pooler, self.head, pixels, student_boxes)
        is_global = torch.cat([torch.arange(len(b), device=self.device) == len(b) - 1 for b in student_boxes])
        with torch.no_grad():
            teacher = self._embed(self.teacher_trunk, self.teacher_pooler, self.teacher_head, pixels, regions)
        return student[~is_global], teacher, student[is_global]

    # ---- losses ------------------------------------------------------------------------------------
    def forward(
        self,
        images: Sequence[ImageInput] | ImageInput | PretrainBatch,
        captions: Sequence[str] | torch.Tensor | None = None,
        proposals: Sequence[object] | None = None,
        global_box: str = "padded",
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The losses (`losses`); a module call, so a DistributedDataParallel wrapper can run it."""
        batch = self.prepare_batch(images, generator)
        if captions is None:
            if not any(batch.captions):
                raise ValueError("no captions given")
            captions = batch.captions
        tokens = self.tokenize(captions, len(batch))
        regions = self.region_boxes(batch, proposals, generator)
        student, teacher, global_features = self.features(batch, regions, global_box)
        with torch.no_grad():
            caption_features = self.text_encoder(tokens).float()
        # the losses in fp32 under any autocast: at τ = 0.01 a bf16 cosine would move the logits by ~0.4
        with torch.autocast(self.device.type, enabled=False):
            return region_text_losses(
                student, teacher, self.concept_embeddings, global_features, caption_features, self.loss_config,
                self.teacher_concept_embeddings,
            )

    def losses(
        self,
        images: Sequence[ImageInput] | ImageInput | PretrainBatch,
        captions: Sequence[str] | torch.Tensor | None = None,
        proposals: Sequence[object] | None = None,
        global_box: str = "padded",
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"region_distill", "concept_contrastive", "image_text"}`` (weighted; the objective is their sum).

        ``images``: any image inputs (transformed by ``self.transform``, padded into one batch) or a `PretrainBatch`
        (used as it is; its captions when ``captions`` is None). ``captions``: one string per image or ``[B, 77]``
        token ids. ``proposals``: per-image ``[R, 4]`` xyxy boxes in original-image pixels, used as they are (no
        RPN, no sampling): then, without flips, the losses are a deterministic function of the inputs. Without
        them the frozen RPN proposes and ``generator`` draws the sample. ``global_box``: ``"padded"`` (official:
        the padded batch tensor) or ``"image"`` (each image's own extent). ``image_text`` is gathered over all
        ranks when a process group is initialised."""
        return self(images, captions, proposals, global_box, generator)

    @torch.no_grad()
    def pseudo_labels(
        self,
        images: Sequence[ImageInput] | ImageInput | PretrainBatch,
        proposals: Sequence[object] | None = None,
        generator: torch.Generator | None = None,
    ) -> list[RegionPseudoLabels]:
        """The teacher's pseudo-labels of each image's regions, as the losses use them (keep mask over the batch)."""
        batch = self.prepare_batch(images, generator)
        regions = self.region_boxes(batch, proposals, generator)
        pixels = batch.images.to(self.device)
        teacher = self._embed(self.teacher_trunk, self.teacher_pooler, self.teacher_head, pixels, regions)
        pool = self.concept_embeddings if self.teacher_concept_embeddings is None else self.teacher_concept_embeddings
        with torch.autocast(self.device.type, enabled=False):
            labels: PseudoLabels = teacher_pseudo_labels(
                teacher, pool, self.loss_config.teacher_temperature, self.loss_config.concept_threshold
            )
        scores = labels.probs.max(dim=-1).values if len(labels.probs) else labels.probs.new_zeros(0)
        out, start = [], 0
        for index, boxes in enumerate(regions):
            stop = start + len(boxes)
            out.append(RegionPseudoLabels(
                boxes=_to_original_boxes(batch, index, boxes).cpu(),
                concepts=labels.targets[start:stop].cpu(),
                scores=scores[start:stop].cpu(),
                keep=labels.keep[start:stop].cpu(),
            ))
            start = stop
        return out


def _concept_pool(model: RegionCLIP, pool: ConceptPool) -> torch.Tensor:
    """``[K, D]`` embeddings from a tensor, an official embedding ``.pth``, or a vocabulary (embedded by the text
    encoder, 81-template ensemble, cached)."""
    if isinstance(pool, torch.Tensor):
        return pool.detach().float()
    if isinstance(pool, (str, Path)) and str(pool).endswith(".pth"):
        return load_embedding_file(pool)
    vocabulary = Vocabulary.parse(pool if not isinstance(pool, Path) else str(pool))
    return model.embed_vocabulary(vocabulary)


__all__ = ["ProposalSampling", "RegionPseudoLabels", "RegionTextPretraining"]
