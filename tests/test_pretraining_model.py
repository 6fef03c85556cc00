"""RegionTextPretraining: parity with an independent reference of the official forward, determinism, gradients,
pseudo-labels and the weights it writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from regionclip import ModelConfig, RegionCLIP, RegionTextPretraining
from regionclip.checkpoints.detectron2_rpn import rpn_state_dict_for_detectron2
from regionclip.checkpoints.pretraining import PretrainingWeights, read_pretraining_checkpoint, save_pretraining_checkpoint
from regionclip.config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from regionclip.data.pretrain_images import PretrainTransform
from regionclip.modeling.backbone.clip_resnet import build_open_clip
from regionclip.modeling.meta_arch import ProposalNetwork
from regionclip.modeling.proposal_generator import RPNConfig

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread avoids OpenMP stalls
KEEP_SIZE = PretrainTransform(min_size=None)
CAPTIONS = ["a red square on grass", "two blue circles", "a green triangle near a tree"]
SIZES = [(96, 128), (80, 112), (112, 96)]  # different sizes: the batch is padded to 112 x 128


def _visual(model: RegionCLIP) -> dict[str, torch.Tensor]:
    return {k[len("visual."):]: v for k, v in model.openai_state_dict().items() if k.startswith("visual.")}


@pytest.fixture(scope="module")
def official_file(tmp_path_factory, make_diverse_model):
    """A tiny official pretraining .pth: student and teacher of different weights, text encoder, tiny FPN RPN."""
    config = ModelConfig.tiny()
    student, teacher = make_diverse_model(config, 0), make_diverse_model(config, 1)
    torch.manual_seed(2)
    rpn = ProposalNetwork(RPNConfig.tiny("fpn"))
    text = {k: v for k, v in student.openai_state_dict().items() if not k.startswith("visual.")}
    weights = PretrainingWeights(_visual(student), _visual(teacher), text, rpn_state_dict_for_detectron2(rpn))
    return save_pretraining_checkpoint(tmp_path_factory.mktemp("weights") / "pretrained.pth", weights)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    out = []
    for h, w in SIZES:
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        array[h // 4 : h // 2, w // 3 : w // 2] = [200, 40, 40]
        out.append(array)
    return out


@pytest.fixture(scope="module")
def proposals():
    generator = torch.Generator().manual_seed(4)
    boxes = []
    for h, w in SIZES:
        xy = torch.rand(7, 2, generator=generator) * torch.tensor([w * 0.6, h * 0.6])
        wh = 12 + torch.rand(7, 2, generator=generator) * torch.tensor([w * 0.4, h * 0.4])
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    return boxes


@pytest.fixture(scope="module")
def pool(official_file, images, proposals):
    """Concepts along the teacher's own region features (centred over the regions and orthogonal to their mean, which all share), so
    pseudo-labels take several values: regions 0-9 each have one concept (kept), regions 10 and 11 twelve
    near-equal ones each (top-1 below 0.1: dropped)."""
    _, teacher = _open_clip_towers(official_file)
    with torch.no_grad():
        features = _reference_regions(teacher, _padded(images), proposals)
    generator = torch.Generator().manual_seed(3)
    mean = F.normalize(features.mean(dim=0), dim=0)
    centred = features - features.mean(dim=0)
    directions = F.normalize(centred - (centred @ mean)[:, None] * mean, dim=1)  # orthogonal to the shared mean
    crowded = directions[10:12].repeat_interleave(12, dim=0)
    return torch.cat([directions[:10], crowded + 1e-3 * torch.randn(crowded.shape, generator=generator)])


def _model(official_file, pool, **kwargs) -> RegionTextPretraining:
    kwargs.setdefault("transform", KEEP_SIZE)
    return RegionTextPretraining.from_pretrained(
        official_file, concept_embeddings=pool, config=ModelConfig.tiny(), device="cpu", **kwargs
    )


# ---- the independent reference -------------------------------------------------------------------------------


def _open_clip_towers(path):
    """open_clip CLIP models holding the file's student (+ text) and teacher, by OpenAI names."""
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    towers = {}
    for prefix in ("backbone.", "teacher_backbone."):
        clip = build_open_clip(ModelConfig.tiny())
        ours = {"visual." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        ours.update({k[len("lang_encoder."):]: v for k, v in state.items() if k.startswith("lang_encoder.")})
        missing, unexpected = clip.load_state_dict(ours, strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") or k == "logit_scale" for k in missing)
        towers[prefix] = clip.eval()
    return towers["backbone."], towers["teacher_backbone."]


def _reference_regions(clip, padded: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
    """res4 of the padded batch → RoIAlignV2 (14x14-equivalent: 2 * grid) → layer4 → the full attention pool."""
    visual = clip.visual
    x = visual.stem(padded)
    res4 = visual.layer3(visual.layer2(visual.layer1(x)))
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)])
    grid = ModelConfig.tiny().vision.attnpool_grid
    pooled = roi_align(res4, rois, output_size=2 * grid, spatial_scale=1 / 16, sampling_ratio=0, aligned=True)
    return visual.attnpool(visual.layer4(pooled))


def _padded(images) -> torch.Tensor:
    """ToTensor, CLIP normalisation, then zero padding at the bottom/right to the largest image."""
    mean, std = torch.tensor(CLIP_PIXEL_MEAN).view(3, 1, 1), torch.tensor(CLIP_PIXEL_STD).view(3, 1, 1)
    normalised = [(torch.from_numpy(a).permute(2, 0, 1).float() / 255 - mean) / std for a in images]
    height, width = max(x.shape[1] for x in normalised), max(x.shape[2] for x in normalised)
    padded = torch.zeros(len(images), 3, height, width)
    for i, x in enumerate(normalised):
        padded[i, :, : x.shape[1], : x.shape[2]] = x
    return padded


def _reference_losses(path, images, captions, proposals, pool) -> dict[str, float]:
    """The official pretraining forward written out: pad after normalisation, global box = padded tensor, three
    loss formulas by hand (float64), τ = 0.01, threshold 0.1."""
    student, teacher = _open_clip_towers(path)
    padded = _padded(images)
    height, width = padded.shape[2:]
    global_box = torch.tensor([[0.0, 0.0, float(width), float(height)]])
    with torch.no_grad():
        f = _reference_regions(student, padded, proposals).double()
        g = _reference_regions(student, padded, [global_box] * len(images)).double()
        v = _reference_regions(teacher, padded, proposals).double()
        t = student.encode_text(student_tokens(captions)).double()
    tau = 0.01
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    concepts = unit(pool.double())
    q = torch.softmax(unit(v) @ concepts.T / tau, dim=-1)
    keep = q.max(dim=-1).values > 0.1
    if not keep.any():
        keep = torch.ones_like(keep)
    q, f = q[keep], unit(f[keep])
    targets = q.argmax(dim=-1)
    p = torch.softmax(f @ concepts.T / tau, dim=-1)
    distill = (torch.xlogy(q, q) - q * torch.log(p)).sum() / len(f)
    z = torch.softmax(f @ concepts[targets].T / tau, dim=-1)
    positives = (targets[:, None] == targets[None, :]).double()
    contrastive = -torch.log((z * positives).sum(dim=-1)).mean()
    s = unit(g) @ unit(t).T / tau
    image_text = (-torch.log_softmax(s, dim=1).diag().mean() - torch.log_softmax(s, dim=0).diag().mean()) / 2
    return {
        "region_distill": float(distill), "concept_contrastive": float(contrastive), "image_text": float(image_text),
        "kept": int(keep.sum()), "targets": len(set(targets.tolist())),
    }


def student_tokens(captions):
    from regionclip.modeling.meta_arch.pretraining import _tokenizer

    return _tokenizer(77)(captions)


# ---- tests ----------------------------------------------------------------------------------------------------


def test_losses_equal_the_independent_reference_of_the_official_forward(official_file, pool, images, proposals):
    model = _model(official_file, pool)
    reference = _reference_losses(official_file, images, CAPTIONS, proposals, pool)
    # the comparison means something: regions kept and dropped, several distinct targets, no zero loss
    assert 0 < reference["kept"] < sum(len(p) for p in proposals) and reference["targets"] > 1
    losses = model.losses(images, CAPTIONS, proposals=proposals, global_box="padded")
    assert set(losses) == {"region_distill", "concept_contrastive", "image_text"}
    for name, value in losses.items():
        assert reference[name] > 0.01
        assert abs(value.item() - reference[name]) <= 1e-4 * abs(reference[name]), (name, value.item(), reference[name])
    # token ids give the same losses as the strings
    tokens = model.losses(images, student_tokens(CAPTIONS), proposals=proposals)
    assert all(torch.equal(tokens[k], losses[k]) for k in losses)
    # the image's own extent as global box changes only the image-text loss
    own = model.losses(images, CAPTIONS, proposals=proposals, global_box="image")
    assert torch.equal(own["region_distill"], losses["region_distill"]) and not torch.equal(own["image_text"], losses["image_text"])


def test_given_proposals_make_losses_deterministic_and_gradients_reach_only_the_trainable_student(
    official_file, pool, images, proposals
):
    model = _model(official_file, pool).train()
    first = model.losses(images, CAPTIONS, proposals=proposals)
    second = model.losses(images, CAPTIONS, proposals=proposals)
    assert all(torch.equal(first[k], second[k]) for k in first)
    sum(first.values()).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trainable
    stages = {n.split(".")[0] + "." + n.split(".")[1] for n in trainable}
    assert stages == {"trunk.layer2", "trunk.layer3", "head.layer4", "head.attnpool"}  # stem + res2 frozen
    assert all(not p.requires_grad for name in ("teacher_trunk", "teacher_head", "text_encoder", "rpn")
               for p in getattr(model, name).parameters())
    # every BatchNorm is frozen: statistics and affine terms are buffers, not parameters
    assert not any(".bn" in n or "downsample.1" in n for n, _ in model.named_parameters() if n.startswith(("trunk", "head")))
    # eval mode keeps the teacher, text encoder and RPN in eval mode when the student trains
    assert model.training and not model.teacher_trunk.training and not model.text_encoder.training and not model.rpn.training


def test_bf16_autocast_keeps_the_losses_close_and_computes_them_in_fp32(official_file, pool, images, proposals):
    model = _model(official_file, pool)
    exact = model.losses(images, CAPTIONS, proposals=proposals)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.losses(images, CAPTIONS, proposals=proposals)
    for name in exact:
        assert low[name].dtype == torch.float32
        assert low[name].item() == pytest.approx(exact[name].item(), rel=0.1)


def test_rpn_regions_are_sampled_with_the_generator(official_file, pool, images):
    from regionclip.modeling.meta_arch.pretraining import ProposalSampling

    model = _model(official_file, pool, sampling=ProposalSampling(nms_threshold=0.5, top_k=30, per_image=5))
    batch = model.prepare_batch(images)
    drawn = [model.region_boxes(batch, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert all(len(b) == 5 for b in drawn[0])
    assert all(torch.equal(a, b) for a, b in zip(drawn[0], drawn[1]))
    assert not all(torch.equal(a, b) for a, b in zip(drawn[0], drawn[2]))
    # every sampled box is one of the RPN's top proposals, inside its image
    found = model.rpn([(batch.images[i, :, :h, :w] * torch.tensor(CLIP_PIXEL_STD).view(3, 1, 1)
                        + torch.tensor(CLIP_PIXEL_MEAN).view(3, 1, 1)) * 255 for i, (h, w) in enumerate(batch.image_sizes)],
                      nms_thresh=0.5, post_nms_topk=30)
    for boxes, proposals in zip(drawn[0], found):
        assert all((proposals.boxes == box).all(dim=1).any() for box in boxes)
    losses = model.losses(images, CAPTIONS, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in losses.values())


def test_flips_only_in_training_with_a_generator(official_file, pool, images, proposals):
    model = _model(official_file, pool, transform=PretrainTransform(min_size=None, flip_probability=1.0))
    assert not any(model.prepare_batch(images, torch.Generator()).flipped)  # eval mode
    model.train()
    assert not any(model.prepare_batch(images).flipped)  # no generator
    batch = model.prepare_batch(images, torch.Generator())
    assert all(batch.flipped)
    labels = model.pseudo_labels(batch, proposals=proposals)
    for given, found in zip(proposals, labels):  # boxes come back in original pixels, un-mirrored
        assert torch.allclose(found.boxes, given, atol=1e-4)


def test_pseudo_labels_are_the_teachers_top1_over_the_pool(official_file, pool, images, proposals):
    model = _model(official_file, pool)
    labels = model.pseudo_labels(images, proposals=proposals)
    _, teacher = _open_clip_towers(official_file)
    with torch.no_grad():
        features = _reference_regions(teacher, _padded(images), proposals)
    probs = torch.softmax(F.normalize(features, dim=1) @ F.normalize(pool, dim=1).T / 0.01, dim=1)
    assert torch.equal(torch.cat([found.concepts for found in labels]), probs.argmax(dim=1))
    assert torch.allclose(torch.cat([found.scores for found in labels]), probs.max(dim=1).values, atol=1e-5)
    assert torch.equal(torch.cat([found.keep for found in labels]), probs.max(dim=1).values > 0.1)
    for given, found in zip(proposals, labels):
        assert torch.allclose(found.boxes, given, atol=1e-4)


def test_student_round_trips_through_both_output_formats(tmp_path, official_file, pool, images, proposals):
    model = _model(official_file, pool)
    with torch.no_grad():
        for param in model.head.parameters():
            param.add_(0.01)  # a student that differs from the file's
    student = model.student_regionclip()
    assert not any(p.requires_grad for p in student.parameters())
    saved = model.save_pretrained(tmp_path / "student")
    loaded = RegionCLIP.from_pretrained(saved, device="cpu")
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in student.state_dict().items())
    assert loaded.rpn is not None
    official = model.save_official(tmp_path / "model_final.pth", {"iteration": 3})
    weights, report = read_pretraining_checkpoint(official, student_config=ModelConfig.tiny(), teacher_config=ModelConfig.tiny())
    assert report.ok and torch.load(official, weights_only=True)["iteration"] == 3
    assert all(torch.equal(weights.student[k], v) for k, v in model.pretraining_weights().student.items())
    # the safetensors file restarts a pretraining with student = teacher = the trained student
    again = RegionTextPretraining.from_pretrained(saved, concept_embeddings=pool, transform=KEEP_SIZE, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(again.head.state_dict().values(), again.teacher_head.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(again.head.state_dict().values(), model.head.state_dict().values()))
    # and the official file continues it
    resumed = RegionTextPretraining.from_pretrained(official, concept_embeddings=pool, config=ModelConfig.tiny(),
                                                    transform=KEEP_SIZE, device="cpu")
    a, b = resumed.losses(images, CAPTIONS, proposals=proposals), model.losses(images, CAPTIONS, proposals=proposals)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_concept_pool_from_a_vocabulary_and_bad_inputs(official_file, pool, images, proposals):
    from regionclip import Vocabulary

    vocabulary = Vocabulary.from_names(["square", "circle", "triangle", "tree"])
    model = _model(official_file, vocabulary)
    assert torch.equal(model.concept_embeddings, model.student_regionclip().embed_vocabulary(vocabulary))
    with pytest.raises(ValueError, match=r"must be \[K, 32\]"):
        _model(official_file, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        model.losses(images, CAPTIONS[:2], proposals=proposals)
    with pytest.raises(ValueError, match="3 images but 1 proposal"):
        model.losses(images, CAPTIONS, proposals=proposals[:1])
    with pytest.raises(ValueError, match="global_box"):
        model.losses(images, CAPTIONS, proposals=proposals, global_box="full")
    with pytest.raises(ValueError, match="does not fit the pretraining model"):
        RegionTextPretraining.from_pretrained(official_file, concept_embeddings=pool, config=ModelConfig.small())
