"""Typed configs: presets, YAML round trips, clear errors."""

from __future__ import annotations

import pytest
import yaml

from regionclip import ModelConfig
from regionclip.config import VisionConfig
from regionclip.detection import DetectionConfig


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
