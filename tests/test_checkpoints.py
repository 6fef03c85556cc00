"""Weight files in their real formats: OpenAI (state dict and TorchScript), official RegionCLIP .pth, safetensors."""

from __future__ import annotations

import pytest
import torch

from regionclip import ModelConfig, RegionCLIP
from regionclip.checkpoints import infer_config, load_checkpoint, read_state_dict, split_checkpoint
from regionclip.checkpoints.detectron2_rpn import rpn_state_dict_for_detectron2
from regionclip.modeling.backbone import build_open_clip
from regionclip.modeling.layers import fold_batchnorm
from regionclip.modeling.meta_arch import ProposalNetwork
from regionclip.modeling.proposal_generator import RPNConfig

BOXES = [[0, 0, 64, 64], [10, 5, 50, 60]]


def _image() -> torch.Tensor:
    return torch.randint(0, 256, (3, 96, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))


def _embeddings(model: RegionCLIP) -> torch.Tensor:
    """Region embeddings with the BatchNorms folded, as ``from_pretrained`` prepares a model, so that a loaded
    model and its in-memory reference run the same arithmetic and compare exactly."""
    fold_batchnorm(model.trunk)
    fold_batchnorm(model.head)
    return model.embed_regions(_image(), BOXES, normalize=False)[0]


def _openai_state_dict(model: RegionCLIP) -> dict[str, torch.Tensor]:
    """What OpenAI's RN50.pt holds: visual.* + text keys, BatchNorm with num_batches_tracked, logit_scale, and
    the three integer metadata entries."""
    clip = build_open_clip(model.config)
    clip.load_state_dict(model.openai_state_dict(), strict=False)
    state = clip.state_dict()
    assert any(k.endswith("num_batches_tracked") for k in state)
    state.update(
        input_resolution=torch.tensor(model.config.vision.image_size),
        context_length=torch.tensor(77),
        vocab_size=torch.tensor(49408),
    )
    return state


def _to_detectron2(model: RegionCLIP, prefix: str) -> dict[str, torch.Tensor]:
    """OpenAI names → RegionCLIP's (visual.→prefix, text→lang_encoder.), FrozenBN without num_batches_tracked."""
    out = {}
    for key, value in model.openai_state_dict().items():
        if key.startswith("visual."):
            out[prefix + key[len("visual.") :]] = value.clone()
        else:
            out["lang_encoder." + key] = value.clone()
    return out


def test_openai_state_dict_file_loads_and_reproduces(tiny_model, tmp_path):
    path = tmp_path / "RN_tiny.pt"
    torch.save(_openai_state_dict(tiny_model), path)
    loaded = RegionCLIP.from_pretrained(path, config=tiny_model.config)
    torch.testing.assert_close(_embeddings(loaded), _embeddings(tiny_model), atol=0, rtol=0)
    torch.testing.assert_close(loaded.embed_vocabulary("cat,dog", "single"), tiny_model.embed_vocabulary("cat,dog", "single"))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_openai_torchscript_archive_loads(tiny_model, tmp_path):
    # OpenAI's released RN50.pt is a TorchScript archive; produce one of the same kind from our weights.
    clip = build_open_clip(tiny_model.config)
    clip.load_state_dict(tiny_model.openai_state_dict(), strict=False)
    clip.eval()
    scripted = torch.jit.trace_module(
        clip, {"encode_image": torch.zeros(1, 3, 64, 64), "encode_text": torch.zeros(1, 77, dtype=torch.long)}
    )
    path = tmp_path / "RN_tiny_jit.pt"
    scripted.save(str(path))
    loaded = RegionCLIP.from_pretrained(path, config=tiny_model.config)
    torch.testing.assert_close(_embeddings(loaded), _embeddings(tiny_model), atol=0, rtol=0)


def test_official_regionclip_checkpoint_student_and_teacher(tmp_path, make_model):
    config = ModelConfig.tiny()
    student, teacher = make_model(config, seed=1), make_model(config, seed=2)
    state = {**_to_detectron2(teacher, "teacher_backbone."), **_to_detectron2(student, "backbone.")}
    assert not any(k.endswith("num_batches_tracked") for k in state)
    dim = config.embed_dim
    rpn = ProposalNetwork(RPNConfig.tiny("fpn"))
    state.update(rpn_state_dict_for_detectron2(rpn, regionclip=True))  # the offline RPN inside the file
    state.update(
        {
            "roi_heads.box_predictor.cls_score.weight": torch.randn(3, dim),
            "roi_heads.box_predictor.cls_bg_score.weight": torch.zeros(1, dim),
        }
    )
    path = tmp_path / "regionclip_pretrained-tiny.pth"
    torch.save({"model": state, "iteration": 5}, path)
    parts = load_checkpoint(path)
    assert parts.kind == "regionclip" and set(parts.classifier) == {"cls_score.weight", "cls_bg_score.weight"}
    assert len(parts.rpn) == len(rpn.state_dict()) and all(k.startswith("teacher_backbone.") for k in parts.other)
    loaded_student = RegionCLIP.from_pretrained(path, config=config)
    report = loaded_student.rpn_load_report
    assert report.source_format == "regionclip" and not report.missing_keys and not report.unused_keys
    for key, value in rpn.state_dict().items():
        assert torch.equal(loaded_student.rpn.state_dict()[key], value)
    loaded_teacher = RegionCLIP.from_pretrained(path, branch="teacher", config=config)
    torch.testing.assert_close(_embeddings(loaded_student), _embeddings(student), atol=0, rtol=0)
    torch.testing.assert_close(_embeddings(loaded_teacher), _embeddings(teacher), atol=0, rtol=0)
    assert not torch.allclose(_embeddings(loaded_student), _embeddings(loaded_teacher))


def test_oai_clip_teacher_student_file(tmp_path, make_model):
    """The official 'teacher_RN50_student_RN50_OAI_CLIP.pth' layout: student, teacher and both text towers."""
    model = make_model(ModelConfig.tiny(), seed=4)
    state = {**_to_detectron2(model, "backbone."), **_to_detectron2(model, "teacher_backbone.")}
    state.update({"teacher_lang_encoder." + k[len("lang_encoder.") :]: v for k, v in state.items() if k.startswith("lang_encoder.")})
    state.update({"logit_scale": torch.tensor(4.6), "teacher.logit_scale": torch.tensor(4.6)})
    path = tmp_path / "teacher_tiny_student_tiny_OAI_CLIP.pth"
    torch.save({"model": state}, path)
    for branch in ("student", "teacher"):
        loaded = RegionCLIP.from_pretrained(path, branch=branch, config=model.config)
        torch.testing.assert_close(_embeddings(loaded), _embeddings(model), atol=0, rtol=0)


def test_regionclip_checkpoint_without_text_encoder_needs_embeddings(tmp_path, sample_images, make_model):
    model = make_model(ModelConfig.tiny())
    state = {k: v for k, v in _to_detectron2(model, "backbone.").items() if not k.startswith("lang_encoder.")}
    path = tmp_path / "zeroshot_gt.pth"
    torch.save({"model": state}, path)
    loaded = RegionCLIP.from_pretrained(path, config=model.config)
    assert loaded.text_encoder is None
    with pytest.raises(ValueError, match="no text encoder"):
        loaded.classify_regions(str(sample_images[0]), BOXES, "cat,dog")
    weights = model.embed_vocabulary("cat,dog", "single")
    with_file = loaded.classify_regions(str(sample_images[0]), BOXES, "cat,dog", class_embeddings=weights)[0]
    reference = model.classify_regions(str(sample_images[0]), BOXES, "cat,dog", templates="single")[0]
    assert (with_file.labels == reference.labels).all()


def test_safetensors_round_trip_keeps_config_and_weights(tiny_model, tmp_path):
    saved = tiny_model.save_pretrained(tmp_path / "tiny")
    assert saved.name == "model.safetensors"
    tensors, metadata = read_state_dict(saved)
    assert metadata["format"] == "regionclip" and "visual.attnpool.positional_embedding" in tensors
    loaded = RegionCLIP.from_pretrained(tmp_path / "tiny")
    assert loaded.config == tiny_model.config  # includes the tiny preset's 32-d heads, not inferable from shapes
    torch.testing.assert_close(_embeddings(loaded), _embeddings(tiny_model), atol=0, rtol=0)


def test_config_inference_from_openai_shapes():
    model = RegionCLIP.from_config(ModelConfig.rn50())
    parts = split_checkpoint(model.openai_state_dict())
    config = infer_config(parts.visual, parts.text)
    assert config.name == "RN50" and config.vision == ModelConfig.rn50().vision and config.text == ModelConfig.rn50().text


def test_bad_files_raise_clear_errors(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError):
        RegionCLIP.from_pretrained(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        RegionCLIP.from_pretrained(garbage)
    torch.save({"model": {"foo.weight": torch.zeros(1)}}, tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match="unrecognised checkpoint"):
        RegionCLIP.from_pretrained(tmp_path / "foreign.pth")
    state = _openai_state_dict(tiny_model)
    state["visual.attnpool.c_proj.weight"] = torch.zeros(7, 512)
    torch.save(state, tmp_path / "wrong_shape.pt")
    with pytest.raises((ValueError, RuntimeError)):
        RegionCLIP.from_pretrained(tmp_path / "wrong_shape.pt", config=tiny_model.config)
    with pytest.raises(ValueError, match="teacher"):
        RegionCLIP.from_pretrained(tmp_path / "wrong_shape.pt", branch="teacher")
