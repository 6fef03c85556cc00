"""Typed configs: presets, YAML round trips, clear errors."""

from __future__ import annotations

import pytest
import yaml

from regionclip import ModelConfig
from regionclip.config import InputConfig, TextConfig, VisionConfig
from regionclip.modeling.roi_heads import DetectionConfig


@pytest.mark.parametrize("preset", ["rn50", "rn50x4", "tiny", "small", "medium"])
def test_yaml_round_trip(tmp_path, preset):
    config = ModelConfig.preset(preset)
    config.to_yaml(tmp_path / "model.yaml")
    assert ModelConfig.from_yaml(tmp_path / "model.yaml") == config
    assert ModelConfig.from_json(config.to_json()) == config


def test_shipped_yaml_configs_match_the_presets():
    from pathlib import Path

    configs = Path(__file__).parent.parent / "configs"
    assert ModelConfig.from_yaml(configs / "model_rn50x4.yaml") == ModelConfig.rn50x4()
    assert ModelConfig.from_yaml(configs / "model_rn50.yaml") == ModelConfig.rn50()


def test_rn50x4_shape_facts():
    config = ModelConfig.rn50x4()
    assert (config.embed_dim, config.vision.res5_channels, config.vision.attnpool_grid) == (640, 2560, 9)


def test_bad_configs_raise(tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        VisionConfig(image_size=100)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"nme": "x"})
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ValueError, match="mapping"):
        ModelConfig.from_yaml(tmp_path / "list.yaml")
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("vit")
    with pytest.raises(ValueError, match="score_fusion"):
        DetectionConfig(score_fusion="product")
    assert DetectionConfig.lvis().max_detections == 300


# ---- ConfigBase: the one (de)serialisation of every dataclass config ---------------------------------------------


def _every_config():
    from regionclip.finetune import FinetuneConfig
    from regionclip.modeling.proposal_generator import RPNConfig
    from regionclip.modeling.region_text_losses import RegionTextLossConfig
    from regionclip.modeling.roi_heads import RoIHeadConfig
    from regionclip.synthetic import WorldConfig
    from regionclip.world import RPNTrainConfig, TeacherTrainConfig
    from regionclip.world.demo import DemoPreset

    return [
        ModelConfig.rn50x4(),
        ModelConfig.from_dict({**ModelConfig.tiny().to_dict(), "text": None}),
        VisionConfig(layers=(1, 2, 3, 4), width=16, image_size=64, head_width=32),
        InputConfig(min_size=None, max_size=640),
        TextConfig(width=64, heads=2, layers=1),
        WorldConfig.tiny(seed=3, min_object_size=0.2),
        TeacherTrainConfig(model="tiny", image_size=64, crop_scale=(0.5, 1.0)),
        RPNTrainConfig(width=8, aspect_ratios=(1.0,)),
        DemoPreset.full(),
        RPNConfig.lvis_fpn_lsj(),
        RPNConfig.tiny("c4"),
        RoIHeadConfig.lvis(box_reg_weights=(1.0, 2.0, 3.0, 4.0)),
        DetectionConfig.lvis(soft_nms=True),
        RegionTextLossConfig(temperature=0.02, concept_threshold=0.3),
        FinetuneConfig(weights="w.pth", train_annotations="a.json", train_images="img", output_dir="out",
                       base_category_ids=[1, 3], milestones=[5, 8], roi_heads=RoIHeadConfig.lvis()),
    ]


@pytest.mark.parametrize("config", _every_config(), ids=lambda c: type(c).__name__)
def test_every_config_round_trips_through_yaml_and_json(tmp_path, config):
    path = config.to_yaml(tmp_path / "sub" / "config.yaml")
    assert path == tmp_path / "sub" / "config.yaml" and sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]
    assert yaml.safe_load(path.read_text()) == config.to_dict()  # plain YAML: no Python tags, tuples as lists
    assert type(config).from_yaml(path) == config
    assert type(config).from_json(config.to_json()) == config
    assert type(config).from_dict(config.to_dict()) == config


def test_to_dict_gives_plain_lists_and_nested_dicts():
    data = ModelConfig.rn50().to_dict()
    assert list(data) == ["name", "embed_dim", "vision", "text", "input", "temperature"]
    assert data["vision"] == {"layers": [3, 4, 6, 3], "width": 64, "image_size": 224, "head_width": 64}
    assert data["input"]["pixel_mean"] == [0.48145466, 0.4578275, 0.40821073]
    from regionclip.modeling.proposal_generator import RPNConfig

    assert RPNConfig.lvis_fpn().to_dict()["anchor_sizes"] == [[32.0], [64.0], [128.0], [256.0], [512.0]]


def test_unknown_missing_and_misshaped_keys_are_named(tmp_path):
    from regionclip.finetune import FinetuneConfig
    from regionclip.world.demo import DemoPreset

    with pytest.raises(ValueError, match=r"unknown model config keys: \['vision.lyers'\]"):
        ModelConfig.from_dict({"vision": {"lyers": [1, 1, 1, 1]}})
    with pytest.raises(ValueError, match=r"unknown demo preset keys: \['teachers.0.stepz'\]"):
        DemoPreset.from_dict({**DemoPreset.tiny().to_dict(), "teachers": [{"stepz": 3}]})
    with pytest.raises(ValueError, match=r"unknown detection config keys: \['max_dets'\]"):
        DemoPreset.from_dict({**DemoPreset.tiny().to_dict(), "detection": {"max_dets": 3}})
    with pytest.raises(ValueError, match=r"missing required finetune config keys: \['output_dir', 'train_images'\]"):
        FinetuneConfig.from_dict({"weights": "w", "train_annotations": "a"})
    with pytest.raises(TypeError, match="'vision': expected a mapping of VisionConfig fields, got int"):
        ModelConfig.from_dict({"vision": 3})
    (tmp_path / "typo.yaml").write_text("embed_dim: 32\nnme: x\n")
    with pytest.raises(ValueError, match=r"typo.yaml: unknown model config keys: \['nme'\]"):
        ModelConfig.from_yaml(tmp_path / "typo.yaml")
    with pytest.raises(FileNotFoundError, match="absent.yaml"):
        ModelConfig.from_yaml(tmp_path / "absent.yaml")


def test_empty_yaml_means_defaults_and_nested_none_stays_none(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert ModelConfig.from_yaml(tmp_path / "empty.yaml") == ModelConfig()
    assert ModelConfig.from_dict({"text": None}).text is None
    assert ModelConfig.from_dict({}).text == TextConfig()


def test_world_and_demo_presets_expand_in_from_dict():
    from regionclip.synthetic import WorldConfig
    from regionclip.world import RPNTrainConfig
    from regionclip.world.demo import DemoPreset

    assert WorldConfig.from_dict({"preset": "tiny", "seed": 4}) == WorldConfig.tiny(seed=4)
    minimal = DemoPreset.from_dict({"name": "m", "teachers": [{"model": "tiny"}]})
    assert (minimal.world, minimal.rpn) == (WorldConfig(), RPNTrainConfig())
