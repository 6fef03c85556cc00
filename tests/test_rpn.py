"""detectron2-compatible RPNs: checkpoint layouts, anchors, box coding, preprocessing, inference, losses.

References are built independently in this file: checkpoint key lists from detectron2's module layout,
anchors and box decoding from the formulas, and a functional (F.conv2d) forward pass + per-level NMS for
end-to-end inference.
"""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from regionclip.checkpoints.detectron2_rpn import (
    detect_rpn_config,
    load_detectron2_rpn,
    rpn_state_dict_for_detectron2,
    save_detectron2_rpn,
)
from regionclip.modeling.anchor_generator import cell_anchors
from regionclip.modeling.box_regression import BoxCoder
from regionclip.modeling.meta_arch import ProposalNetwork
from regionclip.modeling.proposal_generator import (
    RPNConfig,
    label_and_sample_anchors,
    match_anchors,
    rpn_losses,
    select_top_proposals,
    subsample_labels,
)

CAFFE_MEAN_BGR = (103.530, 116.280, 123.675)
HEAD = "proposal_generator.rpn_head."


# ---------------------------------------------------------------------------------------------------
# Independent description of detectron2's key layout
# ---------------------------------------------------------------------------------------------------
def d2_rpn_spec(
    variant: str = "fpn",
    blocks: tuple[int, ...] = (1, 1, 1, 1),
    stem: int = 8,
    res2: int = 16,
    bottleneck: int = 8,
    fpn_out: int = 16,
    fpn_norm: bool = False,
    bn_counters: bool = False,
    head_convs: int = 1,
    num_anchors: int = 3,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a detectron2 GeneralizedRCNN's backbone + proposal_generator."""
    spec: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cout: int, cin: int, k: int, bias: bool = False, norm: bool = True) -> None:
        spec[f"{name}.weight"] = (cout, cin, k, k)
        if bias:
            spec[f"{name}.bias"] = (cout,)
        if norm:
            for p in ("weight", "bias", "running_mean", "running_var"):
                spec[f"{name}.norm.{p}"] = (cout,)
            if bn_counters:
                spec[f"{name}.norm.num_batches_tracked"] = ()

    fpn = variant == "fpn"
    res = "backbone.bottom_up." if fpn else "backbone."
    conv(f"{res}stem.conv1", stem, 3, 7)
    cin, cout, b = stem, res2, bottleneck
    for s in range(4 if fpn else 3):
        for i in range(blocks[s]):
            p = f"{res}res{s + 2}.{i}"
            block_in = cin if i == 0 else cout
            if block_in != cout:
                conv(f"{p}.shortcut", cout, block_in, 1)
            conv(f"{p}.conv1", b, block_in, 1)
            conv(f"{p}.conv2", b, b, 3)
            conv(f"{p}.conv3", cout, b, 1)
        cin, cout, b = cout, cout * 2, b * 2
    if fpn:
        for s in range(4):
            conv(f"backbone.fpn_lateral{s + 2}", fpn_out, res2 * 2**s, 1, bias=not fpn_norm, norm=fpn_norm)
            conv(f"backbone.fpn_output{s + 2}", fpn_out, fpn_out, 3, bias=not fpn_norm, norm=fpn_norm)
    c = fpn_out if fpn else res2 * 4
    if head_convs == 1:
        conv(f"{HEAD}conv", c, c, 3, bias=True, norm=False)
    else:
        for k in range(head_convs):
            conv(f"{HEAD}conv.conv{k}", c, c, 3, bias=True, norm=False)
    conv(f"{HEAD}objectness_logits", num_anchors, c, 1, bias=True, norm=False)
    conv(f"{HEAD}anchor_deltas", 4 * num_anchors, c, 1, bias=True, norm=False)
    return spec


def random_weights(spec: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Well-scaled random weights (activations stay O(1), proposals stay inside the image)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in spec.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("norm.weight"):
            out[key] = torch.rand(shape, generator=g) * 0.5 + 0.5
        elif key.endswith("norm.running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("norm.bias", "norm.running_mean")) or key.endswith(".bias"):
            out[key] = torch.randn(shape, generator=g) * 0.1
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            scale = 0.1 if "anchor_deltas" in key else 1.0
            out[key] = torch.randn(shape, generator=g) * scale / math.sqrt(fan_in)
    return out


def test_model_keys_match_detectron2_layout_at_real_size() -> None:
    # 287 = official facts §11.1 (575 keys of the zero-shot model with FPN RPN - 288 without it).
    fpn = ProposalNetwork(RPNConfig.lvis_fpn()).state_dict()
    want = d2_rpn_spec("fpn", (3, 4, 6, 3), 64, 256, 64, 256)
    assert len(fpn) == len(want) == 287
    assert {k: tuple(v.shape) for k, v in fpn.items()} == want

    lsj = ProposalNetwork(RPNConfig.lvis_fpn_lsj()).state_dict()
    want = d2_rpn_spec("fpn", (3, 4, 6, 3), 64, 256, 64, 256, fpn_norm=True, bn_counters=True, head_convs=2)
    assert {k: tuple(v.shape) for k, v in lsj.items()} == want
    assert "proposal_generator.rpn_head.conv.conv1.weight" in lsj and "backbone.fpn_lateral3.bias" not in lsj

    c4 = ProposalNetwork(RPNConfig.coco_c4()).state_dict()
    want = d2_rpn_spec("c4", (3, 4, 6), 64, 256, 64, num_anchors=15)
    assert {k: tuple(v.shape) for k, v in c4.items()} == want
    assert c4[f"{HEAD}objectness_logits.weight"].shape == (15, 1024, 1, 1)


# ---------------------------------------------------------------------------------------------------
# Checkpoint formats
# ---------------------------------------------------------------------------------------------------
FORMATS = {
    # name: (spec kwargs, expected detected config fields)
    "plain_fpn": (dict(variant="fpn"), dict(variant="fpn", norm="FrozenBN", fpn_norm="", head_conv_dims=(-1,))),
    "lsj_fpn": (
        dict(variant="fpn", fpn_norm=True, bn_counters=True, head_convs=2),
        dict(variant="fpn", norm="SyncBN", fpn_norm="SyncBN", head_conv_dims=(-1, -1)),
    ),
    "c4": (
        dict(variant="c4", blocks=(1, 2, 1), num_anchors=15),
        dict(variant="c4", norm="FrozenBN", head_conv_dims=(-1,)),
    ),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("regionclip", [False, True])
def test_checkpoint_formats_load_completely_and_round_trip(fmt: str, regionclip: bool, tmp_path) -> None:
    spec_kwargs, want = FORMATS[fmt]
    weights = random_weights(d2_rpn_spec(**spec_kwargs), seed=1)
    if regionclip:
        state = {"offline_" + k: v for k, v in weights.items()}
        others = {
            "backbone.conv1.weight": torch.zeros(32, 3, 3, 3),  # CLIP student
            "backbone.attnpool.c_proj.weight": torch.zeros(8, 8),
            "lang_encoder.token_embedding.weight": torch.zeros(4, 4),
            "teacher_backbone.conv1.weight": torch.zeros(32, 3, 3, 3),
            "roi_heads.box_predictor.cls_score.weight": torch.zeros(5, 8),
        }
    else:
        state = dict(weights)
        others = {"roi_heads.box_predictor.bbox_pred.weight": torch.zeros(4, 8)}
        if fmt == "c4":
            others["roi_heads.res5.0.conv1.weight"] = torch.zeros(8, 16, 1, 1)
    state.update(others)
    path = tmp_path / "rpn.pth"
    torch.save({"model": state, "iteration": 5}, path)

    model, report = load_detectron2_rpn(path)
    assert report.ok, report.summary()
    assert report.missing_keys == [] and report.unused_keys == [] and report.shape_mismatches == []
    assert report.source_format == ("regionclip" if regionclip else "detectron2")
    assert sorted(report.non_rpn_keys) == sorted(others)
    assert report.config_detected
    for field_name, value in want.items():
        assert getattr(report.config, field_name) == value, field_name
    assert report.config.blocks_per_stage[: 3] == tuple(spec_kwargs.get("blocks", (1, 1, 1)))[:3]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    parent = torch.nn.Sequential(model).train()  # a frozen RPN stays in eval mode inside a training model
    assert model.frozen and not model.training and not any(m.training for m in model.modules())
    assert model.unfreeze().train().training and parent[0] is model

    loaded = model.state_dict()
    for key, value in weights.items():
        if key.endswith("num_batches_tracked"):
            assert int(loaded[key]) == 7
        else:
            assert torch.equal(loaded[key], value), key
    # exporting gives back the file's RPN keys and values exactly
    exported = rpn_state_dict_for_detectron2(model, regionclip=regionclip)
    rpn_file_keys = {k: v for k, v in state.items() if k not in others}
    assert set(exported) == set(rpn_file_keys)
    assert all(torch.equal(exported[k], rpn_file_keys[k]) for k in exported)


def test_frozen_bn_checkpoint_with_batch_counters_is_accepted() -> None:
    weights = random_weights(d2_rpn_spec("fpn", bn_counters=True), seed=2)
    model, report = load_detectron2_rpn(weights, dataclasses.replace(RPNConfig.tiny("fpn"), norm="FrozenBN"))
    assert report.ok
    assert len(report.ignored_keys) == sum(k.endswith("num_batches_tracked") for k in weights) > 0
    assert "backbone.bottom_up.stem.conv1.norm.num_batches_tracked" not in model.state_dict()
    # cell anchors saved by old detectron2 versions are ignored when they equal ours, unused otherwise
    cell = "proposal_generator.anchor_generator.cell_anchors."
    weights[cell + "1"] = cell_anchors((64.0,), (0.5, 1.0, 2.0))
    weights[cell + "2"] = cell_anchors((64.0,), (0.5, 1.0, 2.0))
    _, report = load_detectron2_rpn(weights, dataclasses.replace(RPNConfig.tiny("fpn"), norm="FrozenBN"))
    assert cell + "1" in report.ignored_keys and report.unused_keys == [cell + "2"]


def test_incomplete_checkpoint_is_reported_and_strict_raises() -> None:
    cfg = dataclasses.replace(RPNConfig.tiny("fpn"), norm="FrozenBN")
    weights = random_weights(d2_rpn_spec("fpn"), seed=3)
    del weights["backbone.fpn_output3.weight"]
    weights[f"{HEAD}objectness_logits.weight"] = torch.zeros(5, 16, 1, 1)
    weights["backbone.fpn_extra.weight"] = torch.zeros(1)
    _, report = load_detectron2_rpn(weights, cfg)
    assert report.missing_keys == ["backbone.fpn_output3.weight"]
    assert report.unused_keys == ["backbone.fpn_extra.weight"]
    assert report.shape_mismatches == [(f"{HEAD}objectness_logits.weight", (5, 16, 1, 1), (3, 16, 1, 1))]
    assert not report.ok
    with pytest.raises(ValueError, match="does not match"):
        load_detectron2_rpn(weights, cfg, strict=True)


def test_checkpoint_without_rpn_is_rejected() -> None:
    with pytest.raises(ValueError, match="no RPN weights"):
        load_detectron2_rpn({"model": {"backbone.conv1.weight": torch.zeros(2, 3, 3, 3)}})


def test_detected_real_size_configs_equal_presets() -> None:
    for preset, spec in (
        (RPNConfig.lvis_fpn(), d2_rpn_spec("fpn", (3, 4, 6, 3), 64, 256, 64, 256)),
        (RPNConfig.lvis_fpn_lsj(), d2_rpn_spec("fpn", (3, 4, 6, 3), 64, 256, 64, 256, True, True, 2)),
        (RPNConfig.coco_c4(), d2_rpn_spec("c4", (3, 4, 6), 64, 256, 64, num_anchors=15)),
    ):
        shapes_only = {k: torch.empty(s) if s else torch.tensor(0) for k, s in spec.items()}
        assert detect_rpn_config(shapes_only) == preset


# ---------------------------------------------------------------------------------------------------
# Anchors and box coding
# ---------------------------------------------------------------------------------------------------
def test_anchors_match_hand_formula_and_order() -> None:
    stride, size, ratios, (h, w) = 8, 64.0, (0.5, 1.0, 2.0), (2, 3)
    cfg = dataclasses.replace(
        RPNConfig.tiny("fpn"), anchor_sizes=((32.0,), (size,), (128.0,), (256.0,), (512.0,))
    )
    gen = ProposalNetwork(cfg).proposal_generator.anchor_generator
    feats = [torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, h, w)] + [torch.zeros(1, 1, 1, 1)] * 3
    got = gen(feats)[1]  # P3: stride 8, size 64
    expected = []
    for y in range(h):
        for x in range(w):
            for r in ratios:
                aw = math.sqrt(size * size / r)
                ah = r * aw
                base = torch.tensor([-aw / 2, -ah / 2, aw / 2, ah / 2], dtype=torch.float32)
                expected.append(base + torch.tensor([x * stride, y * stride] * 2, dtype=torch.float32))
    assert torch.equal(got, torch.stack(expected))
    # no rounding: ratio 0.5 gives width sqrt(8192) = 90.5097
    assert got[0, 2].item() == pytest.approx(math.sqrt(8192) / 2, abs=1e-5)
    # C4 cell anchors are size-major: index 4 = size 64, ratio 1
    c4_cells = cell_anchors((32, 64, 128, 256, 512), ratios)
    assert c4_cells.shape == (15, 4)
    assert torch.equal(c4_cells[4], torch.tensor([-32.0, -32.0, 32.0, 32.0]))


def test_head_outputs_map_to_their_anchors() -> None:
    net = ProposalNetwork(RPNConfig.tiny("c4"))
    rpn = net.proposal_generator
    h, w, a = 2, 3, 15

    def fake_head(features):
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        logits = torch.stack([100 * ys + 10 * xs + k for k in range(a)]).float()[None]
        deltas = torch.stack([1000 * ys + 100 * xs + 10 * k + c for k in range(a) for c in range(4)]).float()[None]
        return [logits], [deltas]

    rpn.rpn_head.forward = fake_head
    anchors, logits, deltas = rpn.predict([torch.zeros(1, 64, h, w)])
    for y in range(h):
        for x in range(w):
            for k in range(a):
                i = (y * w + x) * a + k
                assert logits[0][0, i].item() == 100 * y + 10 * x + k
                assert deltas[0][0, i].tolist() == [1000 * y + 100 * x + 10 * k + c for c in range(4)]
                centre = (anchors[0][i, :2] + anchors[0][i, 2:]) / 2
                assert centre.tolist() == [x * 16.0, y * 16.0]


def test_box_decoding_hand_computed_with_clamp() -> None:
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0], [10.0, 10.0, 20.0, 20.0]])
    deltas = torch.tensor([[0.1, -0.2, math.log(2.0), 0.0], [0.0, 0.0, 10.0, -1.0]])
    got = coder.decode(deltas, anchors)
    # box 0: centre (5, 10) -> (6, 6); size (10, 20) -> (20, 20)
    # box 1: dw clamped to log(1000/16): width 10 * 62.5 = 625; height 10 * e^-1
    h1 = 10 * math.exp(-1.0)
    want = torch.tensor([[-4.0, -4.0, 16.0, 16.0], [15 - 312.5, 15 - h1 / 2, 15 + 312.5, 15 + h1 / 2]])
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-6)
    # weights (10, 10, 5, 5) divide the deltas; encode inverts decode
    coder2 = BoxCoder((10.0, 10.0, 5.0, 5.0))
    got2 = coder2.decode(torch.tensor([[1.0, -2.0, 5 * math.log(2.0), 0.0]]), anchors[:1])
    assert torch.allclose(got2, want[:1], atol=1e-5)
    targets = torch.tensor([[1.0, 2.0, 7.0, 30.0], [12.0, 11.0, 30.0, 13.0]])
    assert torch.allclose(coder2.decode(coder2.encode(anchors, targets), anchors), targets, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------
def test_bgr_caffe_normalisation_and_padding() -> None:
    net = ProposalNetwork(RPNConfig.tiny("fpn"))
    img = torch.arange(3 * 5 * 7, dtype=torch.float32).reshape(3, 5, 7) * 2.0
    batch, sizes = net.preprocess([img])
    assert batch.shape == (1, 3, 32, 32) and sizes == [(5, 7)]
    for c in range(3):  # BGR channel c = RGB channel 2 - c
        assert torch.equal(batch[0, c, :5, :7], img[2 - c] - CAFFE_MEAN_BGR[c])
    assert batch[0, :, 5:, :].abs().sum() == 0 and batch[0, :, :, 7:].abs().sum() == 0
    # uint8 input is the same as its float value
    assert torch.equal(net.preprocess([img.to(torch.uint8)])[0], net.preprocess([img.to(torch.uint8).float()])[0])

    # C4: no size divisibility, pad to the batch maximum only
    c4 = ProposalNetwork(RPNConfig.tiny("c4"))
    batch, sizes = c4.preprocess([torch.full((3, 5, 7), 200.0), torch.full((3, 9, 4), 100.0)])
    assert batch.shape == (2, 3, 9, 7) and sizes == [(5, 7), (9, 4)]
    assert batch[0, :, 5:].abs().sum() == 0 and batch[1, :, :, 4:].abs().sum() == 0
    assert torch.allclose(batch[1, :, 0, 0], torch.tensor([100.0 - m for m in CAFFE_MEAN_BGR]))

    # a padded batch with image_sizes re-pads in normalised space
    padded = torch.zeros(1, 3, 8, 8)
    padded[0, :, :5, :7] = img
    assert torch.equal(net.preprocess(padded, image_sizes=[(5, 7)])[0], net.preprocess([img])[0])
    with pytest.raises(ValueError, match="RGB"):
        net.preprocess([torch.zeros(1, 5, 5)])


# ---------------------------------------------------------------------------------------------------
# Proposal selection
# ---------------------------------------------------------------------------------------------------
def test_selection_follows_detectron2_rules() -> None:
    nan = float("nan")
    level0 = torch.tensor(
        [[[0, 0, 10, 10], [1, 1, 11, 11], [5, 5, 5, 9], [nan, 0, 1, 1], [-5, -5, 30, 8]]], dtype=torch.float32
    )
    logits0 = torch.tensor([[3.0, 2.0, 9.0, 8.0, 1.0]])
    level1 = torch.tensor([[[0, 0, 10, 10], [40, 40, 50, 50]]], dtype=torch.float32)
    logits1 = torch.tensor([[2.5, -1.0]])
    out = select_top_proposals(
        [level0, level1], [logits0, logits1], [(20, 20)],
        nms_thresh=0.7, pre_nms_topk=4, post_nms_topk=10, min_size=0.0, training=False,
    )[0]
    # level 0 top-4: logits 9 (empty box: removed), 8 (NaN: removed), 3, 2 (IoU 0.68 with the first: kept);
    # logit 1 is beyond pre-NMS top-4. Level 1: both; its duplicate of [0,0,10,10] survives (NMS is per level);
    # [40,40,50,50] is clipped to [20,20,20,20], which is empty and removed.
    assert out.objectness_logits.tolist() == [3.0, 2.5, 2.0]
    assert out.boxes.tolist() == [[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11]]
    out = select_top_proposals(
        [level0], [logits0], [(20, 20)], nms_thresh=0.5, pre_nms_topk=5, post_nms_topk=1, min_size=0.0, training=False
    )[0]
    assert out.boxes.tolist() == [[0, 0, 10, 10]]  # post-NMS top-1 over all
    with pytest.raises(FloatingPointError):
        select_top_proposals([level0], [logits0], [(20, 20)], nms_thresh=0.7, pre_nms_topk=5, post_nms_topk=5,
                             min_size=0.0, training=True)
    clipped = select_top_proposals([level0[:, 4:]], [logits0[:, 4:]], [(20, 20)], nms_thresh=0.7, pre_nms_topk=5,
                                   post_nms_topk=5, min_size=0.0, training=False)[0]
    assert clipped.boxes.tolist() == [[0, 0, 20, 8]]


# ---------------------------------------------------------------------------------------------------
# End-to-end inference against a functional reference
# ---------------------------------------------------------------------------------------------------
def _ref_conv(sd, name, x, stride=1, padding=0, relu=False):
    x = F.conv2d(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"), stride, padding)
    if f"{name}.norm.weight" in sd:
        scale = sd[f"{name}.norm.weight"] / torch.sqrt(sd[f"{name}.norm.running_var"] + 1e-5)
        shift = sd[f"{name}.norm.bias"] - sd[f"{name}.norm.running_mean"] * scale
        x = x * scale[None, :, None, None] + shift[None, :, None, None]
    return x.clamp_min(0) if relu else x


def _ref_proposals(sd, variant, blocks, image, sizes_per_level, ratios, strides, pre_k, post_k, nms_thresh):
    """Step-by-step detectron2 inference written from the formulas (stride in the 1x1 conv, MSRA style)."""
    h, w = image.shape[1:]
    div = 32 if variant == "fpn" else 1
    x = torch.zeros(1, 3, -(-h // div) * div, -(-w // div) * div)
    x[0, :, :h, :w] = image[[2, 1, 0]] - torch.tensor(CAFFE_MEAN_BGR)[:, None, None]
    res = "backbone.bottom_up." if variant == "fpn" else "backbone."
    x = F.max_pool2d(_ref_conv(sd, f"{res}stem.conv1", x, 2, 3, relu=True), 3, 2, 1)
    feats = {}
    for s, n in enumerate(blocks):
        for i in range(n):
            p = f"{res}res{s + 2}.{i}"
            stride = 2 if (i == 0 and s > 0) else 1
            out = _ref_conv(sd, f"{p}.conv1", x, stride, relu=True)
            out = _ref_conv(sd, f"{p}.conv2", out, 1, 1, relu=True)
            out = _ref_conv(sd, f"{p}.conv3", out)
            short = _ref_conv(sd, f"{p}.shortcut", x, stride) if f"{p}.shortcut.weight" in sd else x
            x = (out + short).clamp_min(0)
        feats[s + 2] = x
    if variant == "fpn":
        levels, prev = {}, None
        for s in (5, 4, 3, 2):
            lat = _ref_conv(sd, f"backbone.fpn_lateral{s}", feats[s])
            if prev is not None:
                lat = lat + prev.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
            prev = lat
            levels[s] = _ref_conv(sd, f"backbone.fpn_output{s}", lat, 1, 1)
        maps = [levels[2], levels[3], levels[4], levels[5], levels[5][:, :, ::2, ::2]]
    else:
        maps = [feats[4]]
    head = "proposal_generator.rpn_head."
    all_boxes, all_scores = [], []
    for lvl, (fmap, sizes, stride) in enumerate(zip(maps, sizes_per_level, strides)):
        t = fmap
        names = [f"{head}conv"] if f"{head}conv.weight" in sd else [f"{head}conv.conv{k}" for k in range(2)]
        for name in names:
            t = _ref_conv(sd, name, t, 1, 1, relu=True)
        logit_map = _ref_conv(sd, f"{head}objectness_logits", t)[0]
        delta_map = _ref_conv(sd, f"{head}anchor_deltas", t)[0]
        # anchors and their (anchor k, row y, column x) in detectron2's order: location-major, then anchor
        anchors, ks, ys, xs = [], [], [], []
        for y in range(fmap.shape[2]):
            for xx in range(fmap.shape[3]):
                k = 0
                for size in sizes:
                    for r in ratios:
                        aw = math.sqrt(size * size / r)
                        anchors.append([xx * stride, y * stride, aw, r * aw])  # centre x, centre y, w, h
                        ks.append(k), ys.append(y), xs.append(xx)
                        k += 1
        a = torch.tensor(anchors, dtype=torch.float64)
        ks, ys, xs = torch.tensor(ks), torch.tensor(ys), torch.tensor(xs)
        scores = logit_map[ks, ys, xs]
        d = torch.stack([delta_map[4 * ks + c, ys, xs] for c in range(4)], dim=1).double()
        pcx, pcy = a[:, 0] + d[:, 0] * a[:, 2], a[:, 1] + d[:, 1] * a[:, 3]
        pw = a[:, 2] * torch.exp(d[:, 2].clamp(max=math.log(1000 / 16)))
        ph = a[:, 3] * torch.exp(d[:, 3].clamp(max=math.log(1000 / 16)))
        boxes = torch.stack([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2], dim=1).float()
        top = torch.argsort(scores, descending=True)[:pre_k]
        boxes, scores = boxes[top], scores[top]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores = boxes[keep], scores[keep]
        keep = nms(boxes, scores, nms_thresh)
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
    boxes, scores = torch.cat(all_boxes), torch.cat(all_scores)
    order = torch.argsort(scores, descending=True)[:post_k]
    return boxes[order], scores[order]


def _assert_same_proposals(got, ref_boxes, ref_scores, box_tol=1e-3, score_tol=1e-4):
    assert len(got) == len(ref_boxes) > 0
    # compare as sets: near-tied logits may swap order
    box_dist = (got.boxes[:, None, :] - ref_boxes[None, :, :]).abs().amax(-1) / box_tol
    score_dist = (got.objectness_logits[:, None] - ref_scores[None, :]).abs() / score_tol
    dist = torch.maximum(box_dist, score_dist)  # < 1: same proposal within both tolerances
    assert (dist.amin(1) < 1).all() and (dist.amin(0) < 1).all()
    assert torch.allclose(got.objectness_logits.sort(descending=True).values, ref_scores.sort(descending=True).values,
                          atol=score_tol)
    assert bool((got.objectness_logits[:-1] >= got.objectness_logits[1:]).all())


def _smooth_image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=g) * 255
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize("variant", ["fpn", "c4"])
def test_inference_matches_step_by_step_reference(variant: str) -> None:
    if variant == "fpn":
        spec = d2_rpn_spec("fpn", head_convs=2)
        cfg = dataclasses.replace(RPNConfig.tiny("fpn"), norm="FrozenBN", head_conv_dims=(-1, -1),
                                  pre_nms_topk_test=60, post_nms_topk_test=1000, nms_thresh=0.6)
        sizes, strides, blocks = [(32.0,), (64.0,), (128.0,), (256.0,), (512.0,)], [4, 8, 16, 32, 64], (1, 1, 1, 1)
    else:
        spec = d2_rpn_spec("c4", blocks=(1, 2, 1), num_anchors=15)
        cfg = dataclasses.replace(RPNConfig.tiny("c4"), norm="FrozenBN", blocks_per_stage=(1, 2, 1, 1),
                                  pre_nms_topk_test=200, post_nms_topk_test=50)
        sizes, strides, blocks = [(32.0, 64.0, 128.0, 256.0, 512.0)], [16], (1, 2, 1)
    weights = random_weights(spec, seed=4)
    model, report = load_detectron2_rpn(weights, cfg)
    assert report.ok
    image = _smooth_image(90, 117, seed=5)
    got = model([image])[0]
    assert got.image_size == (90, 117)
    ref_boxes, ref_scores = _ref_proposals(
        weights, variant, blocks, image, sizes, (0.5, 1.0, 2.0), strides,
        cfg.pre_nms_topk_test, cfg.post_nms_topk_test, cfg.nms_thresh,
    )
    _assert_same_proposals(got, ref_boxes, ref_scores)
    # a batch of two different-size images gives each image's own proposals
    other = _smooth_image(64, 80, seed=6)
    both = model([other, image])
    _assert_same_proposals(both[1], ref_boxes, ref_scores, box_tol=1e-2, score_tol=1e-3)
    assert both[0].image_size == (64, 80) and float(both[0].boxes[:, 2].max()) <= 80


def test_real_size_presets_match_reference_on_a_small_image() -> None:
    cfg = RPNConfig.lvis_fpn()
    weights = random_weights(d2_rpn_spec("fpn", (3, 4, 6, 3), 64, 256, 64, 256), seed=7)
    model, report = load_detectron2_rpn(weights)
    assert report.ok and report.config == cfg
    image = _smooth_image(96, 128, seed=8)
    got = model([image], nms_thresh=0.9, post_nms_topk=300)[0]
    ref = _ref_proposals(weights, "fpn", (3, 4, 6, 3), image, [(s,) for s in (32.0, 64.0, 128.0, 256.0, 512.0)],
                         (0.5, 1.0, 2.0), [4, 8, 16, 32, 64], 1000, 300, 0.9)
    _assert_same_proposals(got, *ref)


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------
def test_loss_hand_computed() -> None:
    anchors = torch.tensor(
        [[0, 0, 10, 10], [0, 0, 10, 20], [20, 20, 30, 30], [100, 100, 110, 110]], dtype=torch.float32
    )
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    labels, matched = label_and_sample_anchors(anchors, gt)
    # IoUs 1 (fg), 0.5 (ignored), 0, 0 (bg)
    assert labels.tolist() == [[1, -1, 0, 0]]
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5]])
    deltas = torch.zeros(1, 4, 4)
    deltas[0, 0] = torch.tensor([0.1, -0.2, 0.3, 0.05])
    deltas[0, 1] = 5.0  # ignored anchor: no loss
    losses = rpn_losses(anchors, logits, deltas, labels, matched, BoxCoder())
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731  softplus
    assert losses["loss_rpn_cls"].item() == pytest.approx((sp(-2.0) + sp(-1.0) + sp(0.5)) / 256, rel=1e-6)
    assert losses["loss_rpn_loc"].item() == pytest.approx(0.65 / 256, rel=1e-6)

    # low-quality match: best IoU 200/288 < 0.7 still makes anchor 1 foreground
    gt = [torch.tensor([[0.0, 0.0, 12.0, 24.0]])]
    labels, matched = label_and_sample_anchors(anchors, gt)
    assert labels.tolist() == [[-1, 1, 0, 0]]
    losses = rpn_losses(anchors, torch.zeros(1, 4), torch.zeros(1, 4, 4), labels, matched, BoxCoder())
    # targets (dx, dy, dw, dh) = (1/10, 2/20, log 1.2, log 1.2)
    assert losses["loss_rpn_loc"].item() == pytest.approx((0.1 + 0.1 + 2 * math.log(1.2)) / 256, rel=1e-6)
    assert losses["loss_rpn_cls"].item() == pytest.approx(3 * math.log(2.0) / 256, rel=1e-6)

    # two images, one without boxes: normaliser is 256 * 2, the empty image is all background
    labels, matched = label_and_sample_anchors(anchors, [torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.zeros(0, 4)])
    assert labels.tolist() == [[1, -1, 0, 0], [0, 0, 0, 0]]
    losses = rpn_losses(anchors, torch.zeros(2, 4), torch.zeros(2, 4, 4), labels, matched, BoxCoder())
    assert losses["loss_rpn_cls"].item() == pytest.approx(7 * math.log(2.0) / 512, rel=1e-6)


def test_matching_and_sampling_rules() -> None:
    iou = torch.tensor([[0.9, 0.69, 0.3, 0.29, 0.1], [0.1, 0.2, 0.25, 0.05, 0.2]])
    matched, labels = match_anchors(iou)
    # gt 1's best IoU (0.25) is anchor 2: low-quality foreground, but still matched to gt 0 (higher IoU)
    assert labels.tolist() == [1, -1, 1, 0, 0] and matched.tolist() == [0, 0, 0, 0, 1]
    labels = torch.tensor([1] * 300 + [0] * 1000 + [-1] * 50, dtype=torch.int8)
    sampled = subsample_labels(labels, 256, 0.5, torch.Generator().manual_seed(0))
    assert (sampled == 1).sum() == 128 and (sampled == 0).sum() == 128
    assert bool((labels[sampled == 1] == 1).all()) and bool((labels[sampled == 0] == 0).all())
    few = torch.tensor([1] * 10 + [0] * 1000, dtype=torch.int8)
    sampled = subsample_labels(few, 256, 0.5)
    assert (sampled == 1).sum() == 10 and (sampled == 0).sum() == 246


def test_tiny_rpn_trains_on_cpu() -> None:
    torch.manual_seed(0)
    cfg = RPNConfig.tiny("fpn")
    model = ProposalNetwork(cfg).train()
    image = _smooth_image(64, 64, seed=9)
    image[:, 16:48, 8:40] = torch.tensor([250.0, 20.0, 20.0])[:, None, None]
    gt = [torch.tensor([[8.0, 16.0, 40.0, 48.0]])]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    proposals, losses = model.forward_train([image], gt, generator=gen)
    first = sum(losses.values()).item()
    assert len(proposals[0]) <= cfg.post_nms_topk_train and set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    for _ in range(25):
        loss = sum(model.losses([image], gt, generator=gen).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------
def test_config_presets_and_yaml_round_trip(tmp_path) -> None:
    fpn, lsj, c4 = RPNConfig.lvis_fpn(), RPNConfig.lvis_fpn_lsj(), RPNConfig.coco_c4()
    assert (fpn.pre_nms_topk_test, fpn.post_nms_topk_test) == (1000, 1000)
    assert (fpn.pre_nms_topk_train, fpn.post_nms_topk_train) == (2000, 1000)
    assert fpn.feature_strides == (4, 8, 16, 32, 64) and fpn.size_divisibility == 32 and fpn.anchor_offset == 0.0
    assert lsj.norm == lsj.fpn_norm == "SyncBN" and lsj.head_conv_dims == (-1, -1)
    assert c4.num_anchors_per_location == 15 and (c4.pre_nms_topk_test, c4.post_nms_topk_test) == (6000, 1000)
    assert c4.feature_strides == (16,) and c4.size_divisibility == 0 and c4.nms_thresh == 0.7
    for cfg in (fpn, lsj, c4, RPNConfig.tiny("c4")):
        path = tmp_path / f"{cfg.name}.yaml"
        cfg.to_yaml(path)
        assert RPNConfig.from_yaml(path) == cfg
    with pytest.raises(ValueError, match="variant"):
        RPNConfig(variant="c5")
    with pytest.raises(ValueError, match="anchor_sizes"):
        dataclasses.replace(c4, anchor_sizes=((32.0,), (64.0,)))
    with pytest.raises(ValueError, match="unknown RPN config keys"):
        RPNConfig.from_dict({"nms": 0.5})


def test_save_and_reload_regionclip_format(tmp_path) -> None:
    model = ProposalNetwork(RPNConfig.tiny("fpn"))
    path = tmp_path / "offline.pth"
    save_detectron2_rpn(model, path, regionclip=True)
    assert all(k.startswith(("offline_backbone.", "offline_proposal_generator.")) for k in torch.load(path)["model"])
    loaded, report = load_detectron2_rpn(path, RPNConfig.tiny("fpn"))
    assert report.ok and not report.non_rpn_keys
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.slow
def test_real_size_r50_fpn_runs_on_800x1216() -> None:
    weights = random_weights(d2_rpn_spec("fpn", (3, 4, 6, 3), 64, 256, 64, 256), seed=10)
    model, report = load_detectron2_rpn(weights)
    assert report.ok
    image = _smooth_image(800, 1216, seed=11)
    start = time.perf_counter()
    out = model([image])[0]
    seconds = time.perf_counter() - start
    print(f"R50-FPN RPN, 800x1216, CPU x{torch.get_num_threads()}: {seconds:.2f} s, {len(out)} proposals")
    assert 0 < len(out) <= 1000
    assert float(out.boxes[:, 2].max()) <= 1216 and float(out.boxes[:, 3].max()) <= 800
    assert bool((out.boxes[:, 2] > out.boxes[:, 0]).all())
