"""Pretraining image preprocessing: torchvision resize semantics, flip, normalisation, padding, global boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from regionclip.config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from regionclip.data.images import resized_shape
from regionclip.data.pretrain_images import (
    CaptionSample,
    PretrainImage,
    PretrainTransform,
    collate_pretrain,
    global_boxes,
    pad_images,
    pretrain_resized_shape,
)


def _normalised(rgb: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor([(c / 255 - m) / s for c, m, s in zip(rgb, CLIP_PIXEL_MEAN, CLIP_PIXEL_STD)])


def test_300x451_becomes_800x1202_in_pretraining_but_800x1203_in_detection():
    image = Image.new("RGB", (451, 300), (10, 20, 30))  # PIL sizes are (W, H)
    out = PretrainTransform(flip_probability=0.0)(image)
    assert out.size == (800, 1202) and out.original_size == (300, 451)
    assert pretrain_resized_shape(300, 451, 800, 1333) == (800, 1202)
    assert resized_shape(300, 451, 800, 1333) == (800, 1203)  # detectron2 rounds, torchvision floors


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (451, 300, (1202, 800)),  # portrait: the same rule on the other axis
        (100, 1000, (133, 1333)),  # long side capped: short = int(1333 * 800 / 8000)
        (800, 800, (800, 800)),
        (37, 61, (800, 1318)),
    ],
)
def test_resized_shape_formula_matches_the_transform(height, width, expected):
    assert pretrain_resized_shape(height, width, 800, 1333) == expected
    image = Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8))
    assert PretrainTransform(flip_probability=0.0)(image).size == expected


def test_pixels_are_clip_normalised_and_flip_follows_the_generator():
    array = np.zeros((4, 6, 3), dtype=np.uint8)
    array[:, :3] = (200, 0, 0)
    array[:, 3:] = (0, 0, 250)
    transform = PretrainTransform(min_size=None)
    kept = transform(array, torch.Generator().manual_seed(0))
    flip_draws = [bool(torch.rand((), generator=torch.Generator().manual_seed(s)) < 0.5) for s in range(8)]
    assert kept.flipped == flip_draws[0]
    outs = [transform(array, torch.Generator().manual_seed(s)) for s in range(8)]
    assert [o.flipped for o in outs] == flip_draws and any(flip_draws) and not all(flip_draws)
    for out in outs:
        left, right = (_normalised((0, 0, 250)), _normalised((200, 0, 0))) if out.flipped else (
            _normalised((200, 0, 0)), _normalised((0, 0, 250)))
        torch.testing.assert_close(out.pixels[:, 0, 0], left)
        torch.testing.assert_close(out.pixels[:, 3, 5], right)


def test_bicubic_resize_of_a_constant_image_is_exact():
    image = Image.new("RGB", (30, 20), (120, 60, 30))
    out = PretrainTransform(min_size=40, max_size=100, flip_probability=0.0)(image)
    assert out.size == (40, 60)
    torch.testing.assert_close(out.pixels, _normalised((120, 60, 30))[:, None, None].expand(3, 40, 60))


def test_padding_after_normalisation_and_global_boxes():
    a = torch.full((3, 2, 3), -1.5)
    b = torch.full((3, 4, 2), 2.0)
    batch, sizes = pad_images([a, b])
    assert batch.shape == (2, 3, 4, 3) and sizes == [(2, 3), (4, 2)]
    expected_a = torch.zeros(3, 4, 3)
    expected_a[:, :2, :3] = -1.5
    expected_b = torch.zeros(3, 4, 3)
    expected_b[:, :4, :2] = 2.0
    assert torch.equal(batch[0], expected_a) and torch.equal(batch[1], expected_b)
    assert global_boxes(sizes, (4, 3), "padded").tolist() == [[0, 0, 3, 4], [0, 0, 3, 4]]
    assert global_boxes(sizes, (4, 3), "image").tolist() == [[0, 0, 3, 2], [0, 0, 2, 4]]
    with pytest.raises(ValueError, match="global_box"):
        global_boxes(sizes, (4, 3), "whole")


def test_collate_and_box_mapping_into_the_flipped_resized_image():
    samples = [
        CaptionSample(PretrainImage(torch.ones(3, 8, 10), (4, 5), flipped=True), "a cat", "k0", 0),
        CaptionSample(PretrainImage(torch.ones(3, 6, 12), (3, 6), flipped=False), "a dog", "k1", 1),
    ]
    batch = collate_pretrain(samples)
    assert batch.padded_size == (8, 12) and batch.image_sizes == [(8, 10), (6, 12)]
    assert batch.captions == ["a cat", "a dog"] and batch.keys == ["k0", "k1"] and batch.positions == [0, 1]
    assert batch.global_boxes("padded").tolist() == [[0, 0, 12, 8]] * 2
    assert batch.global_boxes("image").tolist() == [[0, 0, 10, 8], [0, 0, 12, 6]]
    box = torch.tensor([[1.0, 1.0, 2.0, 3.0]])
    # image 0: scale 2 on both axes → [2, 2, 4, 6], then flipped in a 10-px wide image → [6, 2, 8, 6]
    assert batch.to_input_boxes(0, box).tolist() == [[6.0, 2.0, 8.0, 6.0]]
    assert batch.to_input_boxes(1, box).tolist() == [[2.0, 2.0, 4.0, 6.0]]


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="min_size"):
        PretrainTransform(min_size=800, max_size=800)
    with pytest.raises(TypeError, match="unsupported image type"):
        PretrainTransform()(42)
    with pytest.raises(ValueError, match="empty batch"):
        pad_images([])
