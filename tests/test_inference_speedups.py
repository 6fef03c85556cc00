"""Inference speed-ups that keep the exact mode: trimmed text encoding, folded BatchNorms, and the precision setting."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from regionclip import ModelConfig, RegionCLIP
from regionclip.modeling.backbone import build_open_clip
from regionclip.modeling.text_encoder import CLIPTextEncoder
from regionclip.modeling.layers import BatchNormFoldedConv2d, FrozenBatchNorm2d, fold_batchnorm
from regionclip.text.embedder import TextEmbedder, module_fingerprint
from regionclip.text.templates import resolve_templates

PROMPTS = [  # deliberately not in length order, lengths 4 … 77 tokens (the last one is cut at the context)
    "a photo of a large striped umbrella standing to the left of two small red cars.",
    "cat",
    "a photo of a dog.",
    " ".join(["word"] * 90),
    "itap of a traffic light.",
    "a bad photo of the hard to see teddy bear.",
]


@pytest.fixture(scope="module")
def rn50_text_clip():
    """An RN50-shaped CLIP (12-layer, 512-wide text transformer) with its random initial weights."""
    torch.manual_seed(0)
    return build_open_clip(ModelConfig.rn50()).eval()


def test_trimmed_text_encoder_equals_the_77_position_one(rn50_text_clip):
    encoder = CLIPTextEncoder(rn50_text_clip)
    embedder = TextEmbedder(encoder, batch_size=2)
    tokens = embedder.tokenizer(PROMPTS)
    lengths = (tokens.argmax(dim=-1) + 1).tolist()
    assert len(set(lengths)) == len(PROMPTS) and max(lengths) == 77 and min(lengths) == 3
    with torch.no_grad():
        reference = rn50_text_clip.encode_text(tokens)  # open_clip: all 77 positions
    assert reference.abs().max() > 0.1
    with torch.inference_mode():
        torch.testing.assert_close(encoder(tokens), reference, atol=1e-5, rtol=0)
        torch.testing.assert_close(encoder(tokens, trim=False), reference, atol=1e-5, rtol=0)

    run_lengths = []  # the first block's keys span the batch's positions (prefix + suffix)
    first = encoder.transformer.resblocks[0].ln_1
    hook = first.register_forward_hook(lambda module, args, out: run_lengths.append(args[0].shape[1]))
    try:
        features = embedder.encode_texts(PROMPTS)  # sorted by length into batches of 2, order restored
    finally:
        hook.remove()
    torch.testing.assert_close(features, reference, atol=1e-5, rtol=0)
    sorted_lengths = sorted(lengths)
    run_lengths = [a + b for a, b in zip(run_lengths[::2], run_lengths[1::2])]  # ln_1 runs on prefix, then suffix
    assert run_lengths == [sorted_lengths[1], sorted_lengths[3], sorted_lengths[5]]  # each batch only to its longest


def test_shared_prefix_and_eot_only_last_block_are_exact(rn50_text_clip):
    encoder = CLIPTextEncoder(rn50_text_clip)
    embedder = TextEmbedder(encoder, batch_size=8)
    names = ["cat", "traffic light", "a very long name with many words in it", "dog", "x"]
    tokens = embedder.tokenizer([f"a photo of a {name}." for name in names])
    with torch.no_grad():
        reference = rn50_text_clip.encode_text(tokens)
    prefixes = []  # the first block's normalised inputs: the shared prefix once, then the suffixes
    hook = encoder.transformer.resblocks[0].ln_1.register_forward_hook(lambda m, args, out: prefixes.append(args[0]))
    queries = []  # the last block's attention output projection sees one row per prompt
    last = encoder.transformer.resblocks[-1].attn.out_proj
    hook_last = last.register_forward_hook(lambda m, args, out: queries.append(args[0].shape))
    try:
        with torch.inference_mode():
            features = encoder(tokens)
    finally:
        hook.remove()
        hook_last.remove()
    torch.testing.assert_close(features, reference, atol=1e-5, rtol=0)
    assert prefixes[0].shape[:2] == (1, 5)  # <start> a photo of a
    assert prefixes[1].shape[0] == len(names) and queries == [torch.Size([len(names), 1, 512])]
    # one template over many names equals the mixed-template, 77-position average
    embeddings = embedder.embed_names(names, ("a photo of a {}.", "itap of the {}."), use_cache=False)
    with torch.no_grad():
        mixed = embedder.tokenizer([t.format(n) for n in names for t in ("a photo of a {}.", "itap of the {}.")])
        expected = rn50_text_clip.encode_text(mixed).view(len(names), 2, -1).mean(dim=1)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=0)


def test_text_cache_key_and_file_format_are_unchanged(tiny_model):
    names, templates = ["cat", "traffic light"], resolve_templates("ensemble")
    embedder = tiny_model.text_embedder
    embeddings = embedder.embed_names(names, "ensemble")
    key = json.dumps({"weights": module_fingerprint(tiny_model.text_encoder), "templates": list(templates), "names": names})
    path = embedder.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.safetensors"
    stored = load_file(path)
    assert list(stored) == ["embeddings"] and stored["embeddings"].dtype == torch.float32
    assert torch.equal(stored["embeddings"], embeddings)
    with torch.no_grad():
        tokens = embedder.tokenizer([t.format(n) for n in names for t in templates])
        expected = tiny_model.text_encoder(tokens, trim=False).view(len(names), len(templates), -1).mean(dim=1)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=0)

    tiny_model.precision = "bf16"  # other precisions never share the fp32 cache entry
    bf16_path = tiny_model.text_embedder.cache_path(names, templates)
    assert bf16_path != path
    bf16 = tiny_model.embed_vocabulary(names)
    assert bf16.dtype == torch.float32 and bf16_path.is_file()
    assert F.cosine_similarity(bf16, embeddings).min() > 0.99


def _rn50_model(make_model) -> RegionCLIP:
    config = ModelConfig.rn50()
    config.input.min_size = None
    return make_model(config, seed=3)  # random weights, randomised BatchNorm statistics


REGIONS = [[0, 0, 224, 224], [10, 20, 120, 200], [50, 50, 100, 90], [0, 100, 224, 224], [30, 5, 200, 60]]


def _image() -> torch.Tensor:
    return torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_folded_batchnorm_matches_unfolded_and_keeps_the_state_dict(tmp_path, make_model):
    model = _rn50_model(make_model)
    image = _image()
    unfolded = model.embed_regions(image, REGIONS, normalize=False)[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fold_batchnorm(model.trunk)
    fold_batchnorm(model.head)
    convs = [m for m in model.modules() if isinstance(m, BatchNormFoldedConv2d)]
    bns = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(convs) == len(bns) == 3 + 3 * 16 + 4 and all(bn.folded for bn in bns)  # stem, 16 blocks, 4 downsamples
    assert all(c.folded_weight.is_contiguous(memory_format=torch.channels_last) for c in model.head.modules()
               if isinstance(c, BatchNormFoldedConv2d))  # the region head stays channels-last
    folded = model.embed_regions(image, REGIONS, normalize=False)[0]
    # measured max abs difference 2.4e-7 on values up to 0.72 (float rounding of the folded products)
    torch.testing.assert_close(folded, unfolded, atol=2e-6, rtol=0)

    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)
    model.save_pretrained(tmp_path)
    loaded = RegionCLIP.from_pretrained(tmp_path, device="cpu")  # folds at load
    assert any(isinstance(m, BatchNormFoldedConv2d) for m in loaded.head.modules())
    saved = loaded.openai_state_dict()
    original = model.openai_state_dict()
    assert list(saved) == list(original) and all(torch.equal(saved[k], original[k]) for k in original)
    torch.testing.assert_close(loaded.embed_regions(image, REGIONS, normalize=False)[0], folded, atol=0, rtol=0)


def test_folded_model_follows_newly_loaded_weights_and_trains_unfolded(make_model):
    model = make_model(ModelConfig.tiny(), seed=0)
    other = make_model(ModelConfig.tiny(), seed=1)
    image = _image()
    fold_batchnorm(model.trunk)
    fold_batchnorm(model.head)
    model.load_state_dict(other.state_dict())  # refolds from the new weights
    torch.testing.assert_close(
        model.embed_regions(image, REGIONS, normalize=False)[0], other.embed_regions(image, REGIONS, normalize=False)[0],
        atol=1e-6, rtol=0,
    )
    conv = model.trunk.conv1
    batch = model.normalize(image.float())[None]
    conv.train()
    output = conv(batch)
    output.sum().backward()  # training mode: the original weight gets the gradient
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    torch.testing.assert_close(output.detach(), model.trunk.bn1.normalize(F.conv2d(batch, conv.weight, None, conv.stride, conv.padding)))
    with torch.no_grad():
        conv.weight.mul_(2.0)
    conv.eval()  # back to inference: folded again from the changed weight
    torch.testing.assert_close(conv(batch), model.trunk.bn1.normalize(F.conv2d(batch, conv.weight, None, conv.stride, conv.padding)),
                               atol=1e-5, rtol=0)


def test_whole_image_box_equals_clip_image_embedding_when_folded(make_model):
    model = _rn50_model(make_model)
    fold_batchnorm(model.trunk)
    fold_batchnorm(model.head)
    clip = build_open_clip(model.config)
    clip.load_state_dict(model.openai_state_dict(), strict=False)
    image = _image()
    mean = torch.tensor(model.config.input.pixel_mean).view(3, 1, 1)
    std = torch.tensor(model.config.input.pixel_std).view(3, 1, 1)
    with torch.no_grad():
        reference = clip.eval().encode_image(((image.float() / 255.0 - mean) / std)[None])[0]
    region = model.embed_regions(image, [[0, 0, 224, 224]], normalize=False)[0][0]
    assert (region - reference).abs().max().item() <= 1e-5


def test_bf16_outputs_are_fp32_and_close_to_fp32(sample_images, make_model):
    model = make_model(ModelConfig.tiny(), seed=0)
    boxes = [[[0, 0, 60, 50], [10, 20, 120, 90], [30, 40, 100, 95]], [[5, 5, 40, 40]], [[0, 0, 80, 120], [30, 10, 70, 100]]]
    images = [str(p) for p in sample_images]
    vocabulary = "cat,dog,car,traffic light,umbrella"
    exact = model.embed_regions(images, boxes)
    exact_labels = model.classify_regions(images, boxes, vocabulary, top_k=1)
    model.precision = "bf16"
    reduced = model.embed_regions(images, boxes)
    reduced_labels = model.classify_regions(images, boxes, vocabulary, top_k=1)
    for a, b, la, lb in zip(exact, reduced, exact_labels, reduced_labels):
        assert b.dtype == torch.float32
        # measured: cosine ≥ 0.99998 on this example; 0.99 is the stated bf16 tolerance
        assert F.cosine_similarity(a, b).min() > 0.99
        assert lb.scores.dtype == la.scores.dtype
        assert (la.labels == lb.labels).all()  # top-1 agreement


def test_trunk_runs_channels_last_only_off_fp32(sample_images, make_model):
    model = make_model(ModelConfig.tiny(), seed=0)
    layouts = []
    model.trunk.register_forward_pre_hook(
        lambda module, inputs: layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last)
                                              and not inputs[0].is_contiguous())
    )
    exact = model.embed_regions(str(sample_images[0]), [[0, 0, 60, 50]], normalize=False)[0]
    model.precision = "bf16"
    reduced = model.embed_regions(str(sample_images[0]), [[0, 0, 60, 50]], normalize=False)[0]
    assert layouts == [False, True]  # fp32 keeps the contiguous (pinned) layout; bf16 runs channels_last
    assert F.cosine_similarity(exact, reduced).min() > 0.99  # the stated bf16 tolerance


def test_precision_values_and_fp16_on_cpu_are_checked(tiny_model, tmp_path):
    assert tiny_model.precision == "fp32"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        tiny_model.precision = "fp16"
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny_model.precision = "int8"
    assert tiny_model.precision == "fp32"
    tiny_model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        RegionCLIP.from_pretrained(tmp_path, device="cpu", precision="fp16")
    assert RegionCLIP.from_pretrained(tmp_path, device="cpu", precision="bf16").precision == "bf16"
