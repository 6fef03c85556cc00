"""`ProposalNetwork`: a detectron2-compatible ResNet(-FPN) backbone + RPN, key-for-key.

``ProposalNetwork(cfg).state_dict()`` has exactly the keys of a detectron2 GeneralizedRCNN's
``backbone.*`` and ``proposal_generator.*`` (anchors and pixel statistics are non-persistent buffers),
so detectron2 checkpoints load without renaming (see ``regionclip.checkpoints.detectron2_rpn``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..backbone import FPN, ResNet
from ..proposal_generator import RPN, Proposals, RPNConfig, label_and_sample_anchors, rpn_losses, select_top_proposals

PixelImages = torch.Tensor | Sequence[torch.Tensor]  # RGB 0-255 tensors: [3, H, W] each, or a padded [B, 3, H, W]


class ProposalNetwork(nn.Module):
    """Class-agnostic region proposals from RGB images, with detectron2's exact inference semantics.

    Modules: ``backbone`` (FPN with ``bottom_up`` ResNet, or a C4 ResNet) and ``proposal_generator``.
    """

    def __init__(self, config: RPNConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else RPNConfig.lvis_fpn()
        self.backbone: nn.Module = FPN(self.config) if self.config.variant == "fpn" else ResNet(self.config)
        self.proposal_generator = RPN(self.config)
        self.register_buffer("pixel_mean", torch.tensor(self.config.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.config.pixel_std).view(3, 1, 1), persistent=False)
        self._frozen = False

    # ---- input -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def freeze(self) -> ProposalNetwork:
        """No gradients and eval mode that survives a parent's ``.train()`` (RegionCLIP's offline RPN is
        forced to eval in every forward, so test-time top-k and BN running statistics always apply)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        return self.eval()

    def unfreeze(self) -> ProposalNetwork:
        """Undo `freeze` (e.g. to fine-tune a loaded RPN); the mode is left as it is."""
        self._frozen = False
        for p in self.parameters():
            p.requires_grad_(True)
        return self

    @property
    def frozen(self) -> bool:
        return self._frozen

    def train(self, mode: bool = True) -> ProposalNetwork:
        return super().train(mode and not self.frozen)

    def _as_image_list(self, images: PixelImages, image_sizes: Sequence[tuple[int, int]] | None) -> list[torch.Tensor]:
        if isinstance(images, torch.Tensor):
            if images.dim() == 3:
                images = images.unsqueeze(0)
            if images.dim() != 4:
                raise ValueError(
                    f"images must be [3, H, W], [B, 3, H, W] or a list of [3, H, W]; got {tuple(images.shape)}"
                )
            batch = list(images.unbind(0))
            if image_sizes is not None:
                if len(image_sizes) != len(batch):
                    raise ValueError(f"{len(image_sizes)} image_sizes for {len(batch)} images")
                batch = [img[:, : int(h), : int(w)] for img, (h, w) in zip(batch, image_sizes)]
        else:
            batch = list(images)
            if image_sizes is not None:
                raise ValueError("image_sizes only applies to a padded batch tensor")
        if not batch:
            raise ValueError("no images given")
        for img in batch:
            if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.shape[0] != 3:
                shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
                raise ValueError(f"each image must be an RGB tensor [3, H, W] with values in 0..255, got {shape}")
            if img.shape[1] < 1 or img.shape[2] < 1:
                raise ValueError(f"empty image of shape {tuple(img.shape)}")
        return batch

    def preprocess(
        self, images: PixelImages, image_sizes: Sequence[tuple[int, int]] | None = None
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """RGB 0-255 images -> (normalised, zero-padded batch ``[B, 3, Hp, Wp]``, unpadded sizes).

        Channels are flipped to BGR when ``config.input_format == "BGR"``; ``(x - mean) / std`` is applied
        before padding, so padding is 0 in normalised space (detectron2 ImageList). Padding is bottom/right
        to the batch maximum rounded up to ``size_divisibility``.
        """
        batch = self._as_image_list(images, image_sizes)
        normalised = []
        for img in batch:
            x = img.to(device=self.device, dtype=self.pixel_mean.dtype)
            if self.config.input_format == "BGR":
                x = x.flip(0)
            normalised.append((x - self.pixel_mean) / self.pixel_std)
        sizes = [(int(x.shape[1]), int(x.shape[2])) for x in normalised]
        max_h, max_w = max(s[0] for s in sizes), max(s[1] for s in sizes)
        div = self.config.size_divisibility
        if div > 1:
            max_h, max_w = -(-max_h // div) * div, -(-max_w // div) * div
        out = normalised[0].new_zeros((len(normalised), 3, max_h, max_w))
        for i, x in enumerate(normalised):
            out[i, :, : x.shape[1], : x.shape[2]] = x
        return out, sizes

    # ---- forward -----------------------------------------------------------------------------------
    def features(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Backbone feature maps the RPN runs on (P2..P6 for FPN, res4 for C4), from a preprocessed batch."""
        feats = self.backbone(batch)
        return [feats[name] for name in self.config.in_features]

    def forward(
        self,
        images: PixelImages,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        *,
        nms_thresh: float | None = None,
        pre_nms_topk: int | None = None,
        post_nms_topk: int | None = None,
    ) -> list[Proposals]:
        """Proposals per image for RGB 0-255 float images (list of ``[3, H, W]`` or a ``[B, 3, H, W]`` batch).

        Top-k values follow ``self.training`` (train or test config) unless overridden; RegionCLIP uses
        ``nms_thresh=0.9`` (zero-shot) or ``0.5`` with ``post_nms_topk=300`` (pretraining).
        """
        batch, sizes = self.preprocess(images, image_sizes)
        with torch.no_grad():
            return self._propose(self.features(batch), sizes, nms_thresh, pre_nms_topk, post_nms_topk)

    def _propose(
        self,
        feats: Sequence[torch.Tensor],
        sizes: Sequence[tuple[int, int]],
        nms_thresh: float | None = None,
        pre_nms_topk: int | None = None,
        post_nms_topk: int | None = None,
        predictions: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> list[Proposals]:
        cfg = self.config
        anchors, logits, deltas = predictions if predictions is not None else self.proposal_generator.predict(feats)
        with torch.no_grad():
            boxes = self.proposal_generator.decode(anchors, [d.detach() for d in deltas])
            return select_top_proposals(
                boxes,
                [x.detach() for x in logits],
                sizes,
                nms_thresh=cfg.nms_thresh if nms_thresh is None else nms_thresh,
                pre_nms_topk=pre_nms_topk or (cfg.pre_nms_topk_train if self.training else cfg.pre_nms_topk_test),
                post_nms_topk=post_nms_topk or (cfg.post_nms_topk_train if self.training else cfg.post_nms_topk_test),
                min_size=cfg.min_size,
                training=self.training,
            )

    def forward_train(
        self,
        images: PixelImages,
        gt_boxes_per_image: Sequence[torch.Tensor],
        *,
        generator: torch.Generator | None = None,
        with_proposals: bool = True,
    ) -> tuple[list[Proposals], dict[str, torch.Tensor]]:
        """One pass giving proposals (train top-k when in train mode) and the RPN losses.

        ``gt_boxes_per_image``: one ``[M, 4]`` xyxy tensor per image, in input-image pixels (M may be 0).
        ``generator`` seeds the anchor sampling; ``with_proposals=False`` skips NMS (returns ``[]``).
        """
        batch, sizes = self.preprocess(images)
        if len(gt_boxes_per_image) != len(sizes):
            raise ValueError(f"{len(gt_boxes_per_image)} ground-truth sets for {len(sizes)} images")
        feats = self.features(batch)
        anchors, logits, deltas = self.proposal_generator.predict(feats)
        cfg = self.config
        all_anchors = torch.cat(anchors, dim=0)
        gt_labels, matched = label_and_sample_anchors(
            all_anchors,
            [torch.as_tensor(b, dtype=torch.float32) for b in gt_boxes_per_image],
            iou_thresholds=cfg.iou_thresholds,
            batch_size_per_image=cfg.batch_size_per_image,
            positive_fraction=cfg.positive_fraction,
            generator=generator,
        )
        losses = rpn_losses(
            all_anchors,
            torch.cat(logits, dim=1),
            torch.cat(deltas, dim=1),
            gt_labels,
            matched,
            self.proposal_generator.box_coder,
            batch_size_per_image=cfg.batch_size_per_image,
            smooth_l1_beta=cfg.smooth_l1_beta,
            loss_weight=cfg.loss_weight,
            bbox_reg_loss_weight=cfg.bbox_reg_loss_weight,
        )
        proposals = self._propose(feats, sizes, predictions=(anchors, logits, deltas)) if with_proposals else []
        return proposals, losses

    def losses(
        self,
        images: PixelImages,
        gt_boxes_per_image: Sequence[torch.Tensor],
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """detectron2 RPN losses ``{"loss_rpn_cls", "loss_rpn_loc"}`` (differentiable)."""
        return self.forward_train(images, gt_boxes_per_image, generator=generator, with_proposals=False)[1]
