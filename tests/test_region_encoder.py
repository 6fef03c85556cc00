"""The region encoder: exactness against open_clip, batching, preprocessing, input types, the classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from regionclip import ModelConfig, RegionCLIP
from regionclip.data.images import prepare_image, resized_shape
from regionclip.modeling.roi_heads import TextEmbeddingClassifier
from regionclip.modeling.backbone import build_open_clip


def _clip_reference(model: RegionCLIP, image_u8: torch.Tensor) -> torch.Tensor:
    """open_clip's encode_image on the same weights and CLIP-normalised pixels."""
    clip = build_open_clip(model.config)
    state = model.openai_state_dict()
    result = clip.load_state_dict(state, strict=False)
    assert result.missing_keys == ["logit_scale"] and not result.unexpected_keys
    clip.eval()
    mean = torch.tensor(model.config.input.pixel_mean).view(3, 1, 1)
    std = torch.tensor(model.config.input.pixel_std).view(3, 1, 1)
    with torch.no_grad():
        return clip.encode_image(((image_u8.float() / 255.0 - mean) / std)[None])[0]


@pytest.mark.parametrize("preset", ["tiny", "rn50"])
def test_whole_image_box_equals_clip_image_embedding(preset, make_model):
    config = ModelConfig.preset(preset)
    config.input.min_size = None  # the 224-px image is used as is, like CLIP's own input
    model = make_model(config, seed=3)
    side = config.vision.image_size
    image = torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    region = model.embed_regions(image, [[0, 0, side, side]], normalize=False)[0][0]
    reference = _clip_reference(model, image)
    assert region.shape == (config.embed_dim,)
    assert (region - reference).abs().max().item() <= 1e-5
    assert reference.abs().max().item() > 1e-3  # the comparison is not between two zero vectors


def test_pooler_resolution_matches_attention_grid():
    assert ModelConfig.rn50().vision.pooler_resolution == 14
    assert ModelConfig.rn50x4().vision.pooler_resolution == 18
    assert ModelConfig.rn50x4().vision.heads == 40 and ModelConfig.rn50().vision.heads == 32


def test_batch_equals_one_at_a_time(tiny_model, sample_images):
    boxes = [[[0, 0, 60, 50], [10, 20, 120, 90]], [[5, 5, 40, 40]], [[0, 0, 80, 120], [30, 10, 70, 100], [1, 1, 9, 9]]]
    batched = tiny_model.embed_regions([str(p) for p in sample_images], boxes)
    for path, image_boxes, together in zip(sample_images, boxes, batched):
        alone = tiny_model.embed_regions(str(path), image_boxes)[0]
        assert together.shape == (len(image_boxes), tiny_model.config.embed_dim)
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_embeddings_are_l2_normalised_unless_asked(tiny_model, sample_images):
    normalised = tiny_model.embed_regions(str(sample_images[0]), [[0, 0, 50, 50]])[0]
    raw = tiny_model.embed_regions(str(sample_images[0]), [[0, 0, 50, 50]], normalize=False)[0]
    torch.testing.assert_close(normalised.norm(dim=-1), torch.ones(1))
    torch.testing.assert_close(normalised, raw / raw.norm(dim=-1, keepdim=True))


def test_detectron2_resize_rule():
    # docs/official-semantics.md, "Test-time resizing": a 300x451 image becomes 800x1203 at test time
    assert resized_shape(300, 451, 800, 1333) == (800, 1203)
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)  # long side capped
    assert resized_shape(77, 99, None, 1333) == (77, 99)


def test_boxes_are_mapped_to_the_resized_frame_and_back():
    prepared = prepare_image(Image.new("RGB", (451, 300)), 800, 1333)
    assert prepared.size == (800, 1203)
    boxes = torch.tensor([[10.0, 20.0, 451.0, 300.0]])
    input_boxes = prepared.to_input_boxes(boxes)
    torch.testing.assert_close(input_boxes, torch.tensor([[10 * 1203 / 451, 20 * 800 / 300, 1203.0, 800.0]]))
    torch.testing.assert_close(prepared.to_original_boxes(input_boxes), boxes)


def test_all_input_types_give_the_same_embeddings(tiny_model, sample_images):
    path = sample_images[2]
    pil = Image.open(path).convert("RGB")
    array = np.asarray(pil)
    boxes = [[4, 8, 60, 100]]
    reference = tiny_model.embed_regions(str(path), boxes)[0]
    for image in (path, pil, array, torch.from_numpy(array.copy()).permute(2, 0, 1)):
        torch.testing.assert_close(tiny_model.embed_regions(image, boxes)[0], reference)
    # float tensors follow torchvision's [0, 1] convention; resized by torch instead of PIL, so close, not equal
    as_float = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255
    assert torch.nn.functional.cosine_similarity(tiny_model.embed_regions(as_float, boxes)[0], reference).item() > 0.98


def test_bad_inputs_raise_clear_errors(tiny_model, sample_images):
    with pytest.raises(FileNotFoundError):
        tiny_model.embed_regions("no/such/image.png", [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="xyxy"):
        tiny_model.embed_regions(str(sample_images[0]), [[10, 10, 5, 5]])
    with pytest.raises(ValueError, match="one box array per image"):
        tiny_model.embed_regions([str(sample_images[0])] * 2, [[[0, 0, 1, 1]]])
    with pytest.raises(ValueError, match="tensor images"):
        tiny_model.embed_regions(torch.zeros(4, 8, 8), [[0, 0, 1, 1]])


def test_classifier_matches_hand_computed_softmax():
    classifier = TextEmbeddingClassifier(temperature=0.01)
    region = torch.tensor([[1.0, 0.0]])
    names = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # cosines 1 and 1/sqrt(2); magnitudes must not matter
    logits = classifier(region, names)
    torch.testing.assert_close(logits, torch.tensor([[100.0, 100 / math.sqrt(2), 0.0]]))
    exps = [math.exp(100.0), math.exp(100 / math.sqrt(2)), 1.0]
    expected = torch.tensor([[exps[0] / sum(exps), exps[1] / sum(exps)]])
    torch.testing.assert_close(classifier.probabilities(region, names), expected)
    with pytest.raises(ValueError, match="another model"):
        classifier(region, torch.zeros(3, 5))


def test_empty_box_list_gives_empty_embeddings(tiny_model, sample_images):
    out = tiny_model.embed_regions(str(sample_images[0]), np.zeros((0, 4)))
    assert out[0].shape == (0, tiny_model.config.embed_dim)


def test_first_token_attention_pool_equals_open_clip_attnpool(tiny_model):
    from regionclip.modeling.roi_heads.region_head import attention_pool_first_token

    attnpool = tiny_model.head.attnpool
    x = torch.randn(5, attnpool.k_proj.in_features, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(attention_pool_first_token(attnpool, x), attnpool(x), atol=1e-5, rtol=1e-5)


def test_model_forward_gives_the_region_features_of_embed_regions(make_model):
    """`RegionCLIPModel.forward(images, boxes)`: un-normalised features of boxes in original pixels, the same
    numbers as `embed_regions(..., normalize=False)`; a batch of prepared images passes through as given."""
    model = make_model(ModelConfig.tiny(), seed=5)
    generator = torch.Generator().manual_seed(2)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in ((90, 120), (70, 70))]
    boxes = [torch.tensor([[0.0, 0.0, 60.0, 50.0], [10.0, 20.0, 119.0, 89.0]]), torch.tensor([[5.0, 5.0, 40.0, 65.0]])]
    with torch.inference_mode():
        features = model(images, boxes)
        from_prepared = model(model.prepare(images), boxes)
    expected = model.embed_regions(images, boxes, normalize=False)
    assert [f.shape for f in features] == [(2, 32), (1, 32)]
    assert all(torch.equal(f, e) and torch.equal(p, e) for f, p, e in zip(features, from_prepared, expected))
    with pytest.raises(ValueError, match="2 images but 1 box arrays"):
        model(images, boxes[:1])
