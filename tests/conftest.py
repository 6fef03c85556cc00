"""Shared fixtures: small generated models with non-trivial weights (BatchNorm statistics included), the tiny
synthetic world, a small COCO ground truth."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from regionclip import ModelConfig, RegionCLIP
from regionclip.modeling.layers import FrozenBatchNorm2d
from regionclip.modeling.meta_arch import ProposalNetwork
from regionclip.modeling.proposal_generator import RPNConfig
from regionclip.synthetic import World, WorldConfig, generate_world


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every (frozen) BatchNorm non-trivial statistics so weight-mapping mistakes change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
            n = module.weight.shape[0]
            module.weight.data.copy_(0.5 + 0.5 * torch.rand(n, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_mean.data.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.data.copy_(0.5 + torch.rand(n, generator=generator))


def _build_model(config: ModelConfig, seed: int = 0) -> RegionCLIP:
    torch.manual_seed(seed)
    model = RegionCLIP.from_config(config)
    randomize_batchnorm(model, seed)
    return model.eval()


def _build_diverse_model(config: ModelConfig, seed: int = 0) -> RegionCLIP:
    """`_build_model` with He-initialised convolutions: region features that differ visibly between boxes (the
    default initialisation gives a tiny random model nearly the same feature for every box)."""
    model = _build_model(config, seed)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.data.copy_(torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
    return model


def _build_model_with_rpn(seed: int = 0) -> RegionCLIP:
    model = _build_model(ModelConfig.tiny(), seed=seed)
    torch.manual_seed(seed)
    model.rpn = ProposalNetwork(RPNConfig.tiny("fpn")).freeze()
    # Centre the proposals' random objectness logits on 0 so both signs occur (the official fusion drops negatives).
    probe = torch.randint(0, 256, (3, 128, 160), generator=torch.Generator().manual_seed(seed)).float()
    median = model.rpn([probe], nms_thresh=0.9)[0].objectness_logits.median()
    model.rpn.proposal_generator.rpn_head.objectness_logits.bias.data -= median
    return model


@pytest.fixture(scope="session")
def make_model() -> Callable[..., RegionCLIP]:
    """``make_model(config, seed=0)``: a RegionCLIP in eval mode with seeded random weights and randomised
    BatchNorm statistics."""
    return _build_model


@pytest.fixture(scope="session")
def make_diverse_model() -> Callable[..., RegionCLIP]:
    """``make_diverse_model(config, seed=0)``: like ``make_model`` with He-initialised convolutions, so that region
    features differ between boxes (pseudo-labels and contrastive losses need that)."""
    return _build_diverse_model


@pytest.fixture(scope="session")
def make_model_with_rpn() -> Callable[..., RegionCLIP]:
    """``make_model_with_rpn(seed=0)``: a tiny RegionCLIP with a tiny FPN RPN whose objectness logits take both
    signs."""
    return _build_model_with_rpn


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """`WorldConfig.tiny()` generated once per session (read-only for the tests)."""
    return generate_world(WorldConfig.tiny(), tmp_path_factory.mktemp("worlds"), progress=False, num_workers=2)


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny models: one torch thread avoids OpenMP barrier stalls when another job shares the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def tiny_model(make_model) -> RegionCLIP:
    return make_model(ModelConfig.tiny())


@pytest.fixture()
def sample_images(tmp_path):
    """Three small RGB images on disk (two of one size, one of another) with structure to look at."""
    rng = np.random.default_rng(0)
    paths = []
    for index, (h, w) in enumerate([(96, 128), (96, 128), (120, 80)]):
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        array[h // 4 : h // 2, w // 4 : w // 2] = [220, 30, 30]
        path = tmp_path / f"image{index}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


@pytest.fixture()
def coco_ground_truth(tmp_path) -> dict:
    """A COCO ground truth over images written to ``tmp_path``: three images, one category, non-overlapping boxes
    (small and medium only), plus one unannotated image."""
    rng = np.random.default_rng(3)
    images, annotations = [], []
    for image_id in (1, 2, 3):
        array = rng.integers(0, 256, (100, 140, 3), dtype=np.uint8)
        Image.fromarray(array).save(tmp_path / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 100, "width": 140})
        for k, box in enumerate(([5, 5, 40, 30], [70, 50, 60, 45])):
            annotations.append({"id": image_id * 10 + k, "image_id": image_id, "category_id": 7, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
    images.append({"id": 4, "file_name": "unannotated.png", "height": 10, "width": 10})  # skipped like the official loader
    return {"images": images, "annotations": annotations, "categories": [{"id": 7, "name": "thing", "split": "novel"}]}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Keep text-embedding caches inside the test's own folder; let CLI errors print on one line.

    Rich wraps typer's usage-error panel at the terminal width (80 columns under CliRunner), which splits
    messages that quote a long tmp path; tests match phrases of those messages."""
    monkeypatch.setenv("REGIONCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "1000")
