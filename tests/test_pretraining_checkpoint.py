"""The official pretraining checkpoint layout (PretrainFastRCNN): strict reading, writing, key counts."""

from __future__ import annotations

import pytest
import torch

from regionclip import ModelConfig, RegionCLIP
from regionclip.checkpoints.detectron2_rpn import rpn_state_dict_for_detectron2
from regionclip.checkpoints.pretraining import (
    PretrainingWeights,
    pretraining_state_dict,
    read_pretraining_checkpoint,
    save_pretraining_checkpoint,
)
from regionclip.modeling.backbone import build_open_clip
from regionclip.modeling.meta_arch import ProposalNetwork
from regionclip.modeling.proposal_generator import RPNConfig


def _shape_only_state(module: torch.nn.Module, first_value: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every entry of ``module``'s state dict (under ``prefix``, which is removed) as a stride-0 tensor of its real
    shape and a value unique to the key, so an RN50-sized file costs kilobytes and a misplaced key is caught."""
    entries = [(k, v) for k, v in module.state_dict().items() if k.startswith(prefix)]
    return {
        key[len(prefix) :]: torch.full((), float(first_value + i), dtype=value.dtype).expand(value.shape)
        for i, (key, value) in enumerate(entries)
    }


def _rn50_parts() -> tuple[dict, dict, dict, dict]:
    with torch.device("meta"):
        clip = build_open_clip(ModelConfig.rn50())
        rpn = ProposalNetwork(RPNConfig.lvis_fpn())
    student, teacher = _shape_only_state(clip, 0, "visual."), _shape_only_state(clip, 1000, "visual.")
    text = {k: v for k, v in _shape_only_state(clip, 2000).items() if not k.startswith("visual.")}
    return student, teacher, text, _shape_only_state(rpn, 3000)


def test_rn50_pretraining_file_has_1004_keys_and_round_trips(tmp_path):
    student, teacher, text, rpn = _rn50_parts()
    # Independent count: OpenAI visual keys less the BatchNorm counters (FrozenBN), twice; the text keys less
    # logit_scale; every RPN key.
    visual_count = sum(not k.endswith("num_batches_tracked") for k in student)
    text_count = sum(k != "logit_scale" for k in text)
    assert visual_count == 284 and text_count == 149 and len(rpn) == 287
    assert 2 * visual_count + text_count + len(rpn) == 1004

    path = save_pretraining_checkpoint(
        tmp_path / "regionclip_pretrained-rn50.pth", PretrainingWeights(student, teacher, text, rpn), {"iteration": 7}
    )
    stored = torch.load(path, map_location="cpu", weights_only=True)
    assert stored["iteration"] == 7 and len(stored["model"]) == 1004
    keys = stored["model"].keys()
    assert {k.split(".", 1)[0] for k in keys} == {
        "backbone", "teacher_backbone", "lang_encoder", "offline_backbone", "offline_proposal_generator"
    }
    assert not any(k.endswith("num_batches_tracked") for k in keys) and "lang_encoder.logit_scale" not in keys
    assert "backbone.layer1.0.downsample.0.weight" in keys and "teacher_backbone.attnpool.c_proj.weight" in keys

    weights, report = read_pretraining_checkpoint(path)
    assert report.ok and len(report.loaded_keys) == 1004 and not report.ignored_keys and not report.non_rpn_keys
    assert report.student_config.name == report.teacher_config.name == "RN50" and report.config.variant == "fpn"
    assert len(weights.student) == len(weights.teacher) == 284 and len(weights.text) == 149 and len(weights.rpn) == 287
    for part, source in ((weights.student, student), (weights.teacher, teacher), (weights.text, text)):
        for key, value in part.items():
            assert torch.equal(value, source[key]), key
    for key, value in weights.rpn.items():
        assert key.startswith("offline_") and torch.equal(value, rpn[key[len("offline_") :]])
    rewritten = weights.state_dict()
    assert rewritten.keys() == stored["model"].keys()
    assert all(torch.equal(rewritten[k], stored["model"][k]) for k in rewritten)


def _tiny_parts(make_model, seed: int = 0):
    config = ModelConfig.tiny()
    student, teacher = make_model(config, seed=seed), make_model(config, seed=seed + 1)
    torch.manual_seed(seed)
    rpn = ProposalNetwork(RPNConfig.tiny("fpn"))
    return config, student, teacher, rpn


def _tiny_weights(student: RegionCLIP, teacher: RegionCLIP, rpn: ProposalNetwork) -> PretrainingWeights:
    visual = lambda model: {k: v for k, v in model.openai_state_dict().items() if k.startswith("visual.")}  # noqa: E731
    text = {k: v for k, v in student.openai_state_dict().items() if not k.startswith("visual.")}
    return PretrainingWeights(visual(student), visual(teacher), text, rpn_state_dict_for_detectron2(rpn))


def test_tiny_pretraining_file_loads_strictly_and_as_a_regionclip_student(tmp_path, make_model):
    config, student, teacher, rpn = _tiny_parts(make_model)
    path = save_pretraining_checkpoint(tmp_path / "pretrained.pth", _tiny_weights(student, teacher, rpn))
    weights, report = read_pretraining_checkpoint(path)
    assert report.ok and not report.unused_keys and not report.missing_keys
    for key, value in teacher.openai_state_dict().items():
        if key.startswith("visual."):
            assert torch.equal(weights.teacher[key[len("visual.") :]], value)
    # The student of the file is what the zero-shot model loads, offline RPN included.
    loaded = RegionCLIP.from_pretrained(path, config=config, device="cpu")
    for key, value in student.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    loaded_rpn = loaded.rpn.state_dict()  # FrozenBN: the tiny RPN's BatchNorm counters are not in the file
    assert all(torch.equal(loaded_rpn[k], v) for k, v in rpn.state_dict().items() if not k.endswith("num_batches_tracked"))
    # an RPN passed separately replaces the file's own, whose keys are then reported as ignored
    torch.manual_seed(9)
    other_rpn = rpn_state_dict_for_detectron2(ProposalNetwork(RPNConfig.tiny("fpn")))
    replaced, replaced_report = read_pretraining_checkpoint(path, rpn=other_rpn)
    ignored = set(replaced_report.ignored_keys)
    assert replaced_report.ok and set(weights.rpn) <= ignored
    assert all(k.endswith("num_batches_tracked") for k in ignored - set(weights.rpn))  # the passed RPN's BN counters
    assert all(torch.equal(v, other_rpn[k[len("offline_") :]]) for k, v in replaced.rpn.items())
    assert not torch.equal(replaced.rpn["offline_proposal_generator.rpn_head.conv.weight"],
                           weights.rpn["offline_proposal_generator.rpn_head.conv.weight"])


def test_strict_reading_reports_missing_unused_and_mismatched_keys(tmp_path, make_model):
    config, student, teacher, rpn = _tiny_parts(make_model)
    state = _tiny_weights(student, teacher, rpn).state_dict()
    del state["teacher_backbone.layer2.0.conv1.weight"]
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(3, config.embed_dim)
    state["backbone.attnpool.c_proj.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match="does not fit the pretraining model"):
        read_pretraining_checkpoint(state)
    weights, report = read_pretraining_checkpoint(state, strict=False)
    assert report.missing_keys == ["teacher_backbone.layer2.0.conv1.weight"]
    assert report.unused_keys == ["roi_heads.box_predictor.cls_score.weight"]
    assert report.shape_mismatches == [("backbone.attnpool.c_proj.bias", (7,), (config.embed_dim,))]
    assert "attnpool.c_proj.bias" not in weights.student and "1 missing" in report.summary()
    # every key of the file is accounted for exactly once
    listed = report.loaded_keys + report.unused_keys + [m[0] for m in report.shape_mismatches] + report.ignored_keys
    assert sorted(listed) == sorted(state)


def test_oai_clip_init_file_with_separate_rpn(tmp_path, make_model):
    """teacher_*_student_*_OAI_CLIP.pth: student = teacher = CLIP, both text copies, logit scales, BN counters."""
    config, model, _, rpn = _tiny_parts(make_model, seed=3)
    clip = build_open_clip(config)
    clip.load_state_dict(model.openai_state_dict(), strict=False)
    openai = clip.state_dict()  # with num_batches_tracked and logit_scale, as OpenAI's files
    state = {}
    for key, value in openai.items():
        if key.startswith("visual."):
            state["backbone." + key[7:]] = value
            state["teacher_backbone." + key[7:]] = value
        elif key == "logit_scale":  # at the top level, and (some conversions) inside the text encoder
            state["logit_scale"] = state["teacher.logit_scale"] = state["lang_encoder.logit_scale"] = value
        else:
            state["lang_encoder." + key] = state["teacher_lang_encoder." + key] = value
    init_path = tmp_path / "teacher_tiny_student_tiny_OAI_CLIP.pth"
    torch.save({"model": state}, init_path)
    rpn_path = tmp_path / "rpn.pth"
    torch.save({"model": rpn_state_dict_for_detectron2(rpn)}, rpn_path)

    with pytest.raises(ValueError, match="no offline RPN"):
        read_pretraining_checkpoint(init_path)
    weights, report = read_pretraining_checkpoint(init_path, rpn=rpn_path)
    assert report.ok
    ignored = set(report.ignored_keys)
    assert {"logit_scale", "teacher.logit_scale", "lang_encoder.logit_scale"} <= ignored
    assert any(k.startswith("teacher_lang_encoder.") for k in ignored)
    assert any(k.startswith("teacher_backbone.") and k.endswith("num_batches_tracked") for k in ignored)
    assert len(weights.state_dict()) == len(_tiny_weights(model, model, rpn).state_dict())
    for key, value in weights.state_dict().items():
        assert torch.equal(value, _tiny_weights(model, model, rpn).state_dict()[key])


def test_plain_clip_file_gives_student_equal_to_teacher(tmp_path, make_model):
    config, model, _, rpn = _tiny_parts(make_model, seed=5)
    saved = model.save_pretrained(tmp_path / "clip")  # this project's safetensors, OpenAI names
    weights, report = read_pretraining_checkpoint(saved, rpn=rpn_state_dict_for_detectron2(rpn, regionclip=True))
    assert report.ok and report.source_format == "clip"
    assert weights.student.keys() == weights.teacher.keys()
    assert all(torch.equal(weights.student[k], weights.teacher[k]) for k in weights.student)


def test_writer_rejects_foreign_text_keys(make_model):
    config, student, teacher, rpn = _tiny_parts(make_model)
    parts = _tiny_weights(student, teacher, rpn)
    with pytest.raises(ValueError, match="not CLIP text-encoder keys"):
        pretraining_state_dict(parts.student, parts.teacher, {**parts.text, "roi_heads.x": torch.zeros(1)}, parts.rpn)
