"""Shared fixtures: small generated models with non-trivial weights (BatchNorm statistics included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from regionclip import ModelConfig, RegionCLIP
from regionclip.modeling.frozen_bn import FrozenBatchNorm2d


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


def make_model(config: ModelConfig, seed: int = 0) -> RegionCLIP:
    torch.manual_seed(seed)
    model = RegionCLIP.from_config(config)
    randomize_batchnorm(model, seed)
    return model.eval()


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny models: one torch thread avoids OpenMP barrier stalls when another job shares the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def tiny_model() -> RegionCLIP:
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


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Keep text-embedding caches inside the test's own folder."""
    monkeypatch.setenv("REGIONCLIP_CACHE", str(tmp_path / "cache"))
