"""Boxes validated against the image (shape, clipping, empty boxes), NaN class embeddings, bounded RoIAlign cost."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from regionclip.modeling import poolers
from regionclip.modeling.poolers import RoIPooler
from regionclip.viz import draw_predictions

VOCABULARY = ["cat", "dog", "car"]


@pytest.fixture()
def embeddings(tiny_model) -> torch.Tensor:
    return torch.randn(len(VOCABULARY), tiny_model.config.embed_dim, generator=torch.Generator().manual_seed(0))


def test_a_row_of_eight_numbers_is_an_error_not_two_boxes(tiny_model, sample_images, embeddings):
    with pytest.raises(ValueError, match=r"\[N, 4\].*shape \(1, 8\)"):
        tiny_model.classify_regions(str(sample_images[0]), [[0, 0, 10, 10, 20, 20, 30, 30]], VOCABULARY, class_embeddings=embeddings)
    with pytest.raises(ValueError, match=r"\[N, 4\].*shape \(4,\)"):
        tiny_model.embed_regions(str(sample_images[0]), [0, 0, 10, 10])


def test_empty_and_outside_boxes_are_flagged_in_every_format(tiny_model, sample_images, embeddings):
    path = str(sample_images[0])  # 128 x 96
    boxes = [[10, 20, 60, 70], [30, 30, 30, 80], [200, 10, 260, 50], [-40, -30, 300, 200]]
    pred = tiny_model.classify_regions(path, boxes, VOCABULARY, top_k=2, class_embeddings=embeddings, image_ids=[7])[0]
    assert pred.valid.tolist() == [True, False, False, True]
    assert pred.labels[1:3].tolist() == [[-1, -1], [-1, -1]] and pred.scores[1:3].tolist() == [[0, 0], [0, 0]]
    # boxes are reported clipped to the image; a partly-outside box is scored as its clipped self
    assert pred.boxes.tolist() == [[10, 20, 60, 70], [30, 30, 30, 80], [128, 10, 128, 50], [0, 0, 128, 96]]
    alone = tiny_model.classify_regions(path, [[10, 20, 60, 70], [0, 0, 128, 96]], VOCABULARY, top_k=2, class_embeddings=embeddings)[0]
    assert np.array_equal(pred.scores[[0, 3]], alone.scores) and np.array_equal(pred.labels[[0, 3]], alone.labels)

    regions = json.loads(json.dumps(pred.to_json()))["regions"]
    assert [r["valid"] for r in regions] == [True, False, False, True]
    assert regions[1] == {"box": [30.0, 30.0, 30.0, 80.0], "valid": False, "labels": [], "category_ids": [], "scores": []}
    assert len(regions[0]["labels"]) == 2
    assert {tuple(e["bbox"]) for e in pred.to_coco()} == {(10.0, 20.0, 50.0, 50.0), (0.0, 0.0, 128.0, 96.0)}
    assert len(pred.to_coco()) == 4 and len(pred.to_hf()) == 4
    detections = pred.to_supervision()  # the two valid boxes, top-1 label each
    assert detections.xyxy.tolist() == [[10, 20, 60, 70], [0, 0, 128, 96]]
    assert np.array_equal(detections.class_id, pred.labels[[0, 3], 0])
    assert np.array_equal(detections.confidence, pred.scores[[0, 3], 0])
    processor = pred.to_processor_dict()
    assert processor["valid"].tolist() == [True, False, False, True]
    assert processor["text_labels"][1] is None and processor["text_labels"][0] == VOCABULARY[int(processor["labels"][0])]
    assert pred.class_names[2] == []
    drawn = draw_predictions(path, pred)  # only the scored boxes are drawn and labelled
    assert drawn.size == draw_predictions(path, pred.subset(pred.valid)).size


def test_empty_boxes_give_no_detection_and_no_embedding(tiny_model, sample_images, embeddings):
    path = str(sample_images[0])
    detections = tiny_model.detect(path, VOCABULARY, boxes=[[10, 20, 60, 70], [30, 30, 30, 80]], class_embeddings=embeddings)[0]
    assert len(detections) and np.allclose(detections.boxes, [[10, 20, 60, 70]] * len(detections), atol=1e-4)
    with pytest.raises(ValueError, match=r"box 1 of image 1 \(0-based\) is empty once clipped to the 80x120 image"):
        tiny_model.embed_regions([path, str(sample_images[2])], [[[0, 0, 5, 5]], [[0, 0, 5, 5], [90, 0, 95, 5]]])


def test_nan_class_embeddings_are_refused(tiny_model, sample_images, embeddings):
    embeddings[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"class_embeddings contain NaN/Inf in rows \[1\]"):
        tiny_model.classify_regions(str(sample_images[0]), [[0, 0, 50, 50]], VOCABULARY, class_embeddings=embeddings)
    embeddings[1, 3], embeddings[2, 0] = 0.0, float("inf")
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        tiny_model.detect(str(sample_images[0]), VOCABULARY, boxes=[[0, 0, 50, 50]], class_embeddings=embeddings)


def _random_boxes(generator: torch.Generator, count: int, height: int, width: int, dtype) -> torch.Tensor:
    """Boxes in the 16x input frame of an HxW feature map, reaching up to 30 % past each border."""
    span = torch.tensor([width, height, width, height], dtype=dtype) * 16
    corners = torch.rand(count, 4, generator=generator, dtype=dtype) * span * 1.6 - span * 0.3
    x, y = corners[:, [0, 2]].sort(dim=1).values, corners[:, [1, 3]].sort(dim=1).values
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def test_ordinary_boxes_pool_exactly_as_roi_align(tiny_model):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 8, 50, 70, generator=generator)
    boxes = [_random_boxes(generator, 5, 50, 70, torch.float32) / 10, torch.tensor([[0.0, 0.0, 1120.0, 800.0]])]
    pooler = RoIPooler(14)
    assert not pooler._over_the_cap(torch.cat([torch.zeros(6, 1), torch.cat(boxes)], dim=1)).any()
    assert torch.equal(pooler(features, boxes), roi_align(features, boxes, 14, 1 / 16, 0, aligned=True))


def test_boxes_over_the_sampling_cap_match_roi_align_at_bounded_cost(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    pooler = RoIPooler(14, max_sampling_ratio=8)
    for height, width in ((60, 300), (250, 130)):
        features = torch.randn(2, 6, height, width, generator=generator, dtype=torch.float64)
        boxes = [_random_boxes(generator, 4, height, width, torch.float64) for _ in range(2)]
        rois = torch.cat([torch.cat([torch.full((4, 1), float(i), dtype=torch.float64), b], dim=1) for i, b in enumerate(boxes)])
        over = pooler._over_the_cap(rois)
        assert over.any() and not over.all()
        reference = roi_align(features, boxes, 14, 1 / 16, 0, aligned=True)
        scale = reference.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-9)  # boxes wholly outside pool zeros
        assert ((pooler(features, boxes) - reference).abs() / scale).max().item() < 1e-12  # same samples, same weights
        single = pooler(features.float(), [b.float() for b in boxes])
        assert ((single.double() - reference).abs() / scale).max().item() < 1e-4  # float32 summation order only

    # torchvision's roi_align (whose memory grows with the sampling grid) never sees a box over the cap
    grids = []

    def recording_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned):
        grids.append(torch.ceil((rois[:, 3:5] - rois[:, 1:3]) * spatial_scale / output_size).max().item() if len(rois) else 0)
        return roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)

    monkeypatch.setattr(poolers, "roi_align", recording_roi_align)
    features = torch.randn(1, 4, 64, 64, generator=generator)
    huge = torch.tensor([[-1e5, -1e5, 1.4e5, 1.4e5], [0.0, 0.0, 200.0, 300.0]])  # the first once took 82 s and 2.7 GB
    pooled = pooler(features, [huge])
    assert torch.isfinite(pooled).all() and pooled[0].abs().max() > 0
    assert grids and max(grids) <= 8
