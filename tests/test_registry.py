"""Known weight names (`regionclip.checkpoints.registry`) and how `RegionCLIP.from_pretrained` uses them."""

from __future__ import annotations

import pytest
import torch

from regionclip import RegionCLIP
from regionclip.checkpoints.registry import KNOWN_WEIGHTS, find_known_weights, known_weights
from regionclip.config import ModelConfig
from regionclip.modeling.proposal_generator import RPNConfig


def test_names_map_to_their_architecture_branch_and_configs() -> None:
    rn50x4 = known_weights("RN50x4")
    assert (rn50x4.kind, rn50x4.download, rn50x4.model_config()) == ("clip", True, ModelConfig.rn50x4())
    assert known_weights("RN101").model_config() is None  # no preset: the shape comes from the weights

    pretrained = known_weights("regionclip_pretrained-cc_rn50x4.pth")
    assert (pretrained.kind, pretrained.model, pretrained.branch) == ("pretrained", "RN50x4", "student")
    assert not pretrained.download
    assert pretrained.model_config() == ModelConfig.rn50x4() and pretrained.rpn_config() == RPNConfig.lvis_fpn()
    assert known_weights("teacher_RN50_student_RN50_OAI_CLIP.pth").rpn is None  # the official init file has no RPN

    assert known_weights("regionclip_finetuned-coco_rn50.pth").rpn_config() == RPNConfig.coco_c4()
    assert known_weights("regionclip_finetuned-lvis_rn50x4.pth").rpn_config() == RPNConfig.lvis_fpn_lsj()
    assert known_weights("rpn_lvis_866_lsj.pth").rpn_config() == RPNConfig.lvis_fpn_lsj()
    assert known_weights("rpn_coco_48.pth").rpn_config() == RPNConfig.coco_c4()

    embeddings = known_weights("lvis_1203_cls_emb_rn50x4.pth")
    assert (embeddings.kind, embeddings.model, embeddings.classes) == ("embeddings", "RN50x4", 1203)
    assert known_weights("coco_nouns_4764_emb.pth").classes == 4764

    # a path is known by its file name; only the five OpenAI models download
    assert find_known_weights("/data/ckpt/rpn_lvis_866.pth") is KNOWN_WEIGHTS["rpn_lvis_866.pth"]
    assert find_known_weights("my_model.pth") is None
    downloadable = sorted(name for name, entry in KNOWN_WEIGHTS.items() if entry.download)
    assert downloadable == sorted(["RN50", "RN50x4", "RN101", "RN50x16", "RN50x64"])


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown weights 'RN51'.*RN50x64.*regionclip_pretrained-cc_rn50.pth"):
        known_weights("RN51")
    with pytest.raises(FileNotFoundError, match="nor a known name: RN50, RN50x4"):
        RegionCLIP.from_pretrained("RN51", device="cpu")


def test_released_names_in_from_pretrained(tmp_path, make_model) -> None:
    # an official file that is not on disk: said so, nothing downloaded
    with pytest.raises(FileNotFoundError, match="official RegionCLIP file regionclip_pretrained-cc_rn50.pth"):
        RegionCLIP.from_pretrained(tmp_path / "regionclip_pretrained-cc_rn50.pth", device="cpu")
    # an RPN or embedding file given as CLIP weights names its loader, before reading anything
    with pytest.raises(ValueError, match=r"rpn_coco_48.pth holds no CLIP weights; load it with rpn=path"):
        RegionCLIP.from_pretrained(tmp_path / "rpn_coco_48.pth", device="cpu")
    with pytest.raises(ValueError, match=r"load it with class_embeddings=load_embedding_file"):
        RegionCLIP.from_pretrained("lvis_1203_cls_emb.pth", device="cpu")

    # a file on disk under a released name loads as the file it is
    model = make_model(ModelConfig.tiny())
    path = tmp_path / "regionclip_pretrained-cc_rn50.pth"
    visual = {k[len("visual.") :]: v for k, v in model.openai_state_dict().items() if k.startswith("visual.")}
    torch.save({"model": {f"backbone.{k}": v for k, v in visual.items()}}, path)
    loaded = RegionCLIP.from_pretrained(path, device="cpu", config=model.config)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items() if k.startswith("trunk."))
