"""The pretraining trainer: config, resume equality, JSONL log, outputs, and a 2-process gloo run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from regionclip import ModelConfig, RegionCLIP
from regionclip.checkpoints.embeddings import save_embedding_file
from regionclip.checkpoints.pretraining import read_pretraining_checkpoint
from regionclip.data.captions import StepPlan, caption_loader
from regionclip.modeling.meta_arch import ProposalNetwork
from regionclip.modeling.proposal_generator import RPNConfig
from regionclip.pretrain import PretrainConfig, build_model, caption_source, pretrain

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread avoids OpenMP stalls
WORDS = ["red", "blue", "green", "square", "circle", "tree", "car", "dog"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_diverse_model):
    """Tiny weights (our safetensors with an RPN), a concept-embedding file and a COCO-captions folder of
    equal-sized generated images."""
    root = tmp_path_factory.mktemp("pretrain")
    model = make_diverse_model(ModelConfig.tiny(), seed=0)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    model.rpn = ProposalNetwork(RPNConfig.tiny("fpn")).freeze()
    weights = model.save_pretrained(root / "init")
    concepts = save_embedding_file(root / "concepts.pth", torch.randn(16, 32, generator=generator))
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for index in range(10):
        array = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
        array[10 + index : 40, 20 : 50 + index] = rng.integers(0, 256, 3)
        Image.fromarray(array).save(root / f"{index}.png")
        images.append({"id": index, "file_name": f"{index}.png", "width": 80, "height": 64})
        for c in range(2):
            words = [WORDS[(index + c + k) % len(WORDS)] for k in range(3)]
            annotations.append({"id": len(annotations), "image_id": index, "caption": "a " + " ".join(words)})
    captions = root / "captions.json"
    captions.write_text(json.dumps({"images": images, "annotations": annotations}))
    return {"weights": str(weights), "concepts": str(concepts), "captions_json": str(captions), "image_dir": str(root)}


def _config(setup, output_dir, **overrides) -> PretrainConfig:
    values = {
        **setup, "output_dir": str(output_dir), "min_size": None, "steps": 4, "batch_size": 4, "lr": 0.05,
        "milestones": [3], "warmup_steps": 1, "rpn_top_k": 30, "regions_per_image": 6, "checkpoint_every": 2,
        "seed": 3, **overrides,
    }
    return PretrainConfig.from_dict(values)


def test_config_round_trip_and_bad_configs(setup, tmp_path):
    config = _config(setup, tmp_path / "run", precision="bf16")
    config.to_yaml(tmp_path / "c.yaml")
    assert PretrainConfig.from_yaml(tmp_path / "c.yaml") == config
    for bad, message in (
        ({"shards": "x.tar"}, "exactly one data source"),
        ({"precision": "bfloat16"}, "precision must be one of"),
        ({"global_box": "full"}, "global_box"),
        ({"losses": {"temprature": 0.1}}, "unknown losses keys"),
        ({"stepz": 3}, "unknown pretrain config keys"),
    ):
        with pytest.raises(ValueError, match=message):
            _config(setup, tmp_path, **bad)
    shipped = [PretrainConfig.from_yaml(f"configs/pretrain/{name}.yaml") for name in ("cc3m_rn50", "world_tiny")]
    official = shipped[0]
    assert (official.batch_size, official.lr, official.steps, official.milestones, official.warmup_steps) == (
        96, 0.002, 600000, [300000, 525000], 1000
    )
    assert (official.grad_clip, official.weight_decay, official.momentum, official.rpn_nms_threshold) == (5.0, 1e-4, 0.9, 0.5)


def test_resumed_run_equals_an_uninterrupted_one_and_writes_both_formats(setup, tmp_path):
    from typer.testing import CliRunner

    from regionclip.cli import app

    straight = _config(setup, tmp_path / "straight")
    straight.to_yaml(tmp_path / "straight.yaml")
    result = CliRunner().invoke(app, ["pretrain", "--config", str(tmp_path / "straight.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.output
    interrupted = _config(setup, tmp_path / "interrupted")
    first = pretrain(interrupted, progress=False, stop_after=2)
    assert first.step == 2 and not first.finished and not (tmp_path / "interrupted" / "model.safetensors").exists()
    second = pretrain(interrupted, progress=False)
    assert second.steps_run == 2 and second.finished
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "interrupted" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    init = load_file(setup["weights"])
    assert not torch.equal(a["visual.layer4.0.conv1.weight"], init["visual.layer4.0.conv1.weight"])  # trained
    assert torch.equal(a["visual.layer1.0.conv1.weight"], init["visual.layer1.0.conv1.weight"])  # res2 frozen
    # the log: one line per step, the resumed run's identical to the straight one except for the timing
    lines = [[json.loads(x) for x in (tmp_path / run / "log.jsonl").read_text().splitlines()] for run in ("straight", "interrupted")]
    assert [x["step"] for x in lines[0]] == [x["step"] for x in lines[1]] == [0, 1, 2, 3]
    for x, y in zip(*lines):
        assert {k: v for k, v in x.items() if k != "images_per_second"} == {k: v for k, v in y.items() if k != "images_per_second"}
        assert x["images_per_second"] > 0 and x["loss"] == pytest.approx(
            x["region_distill"] + x["concept_contrastive"] + x["image_text"], abs=1e-5)
    assert [x["lr"] for x in lines[0]] == pytest.approx([0.05 * 0.001, 0.05, 0.05, 0.005])
    # outputs: the student loads as a RegionCLIP; the official file strictly, with teacher = the initial weights
    student = RegionCLIP.from_pretrained(tmp_path / "straight" / "model.safetensors", device="cpu")
    assert student.rpn is not None and student.config.name == "tiny"
    weights, report = read_pretraining_checkpoint(
        tmp_path / "straight" / "model_final.pth", student_config=ModelConfig.tiny(), teacher_config=ModelConfig.tiny()
    )
    assert report.ok and len(report.loaded_keys) == len(torch.load(tmp_path / "straight" / "model_final.pth", weights_only=True)["model"])
    assert torch.equal(weights.student["layer4.0.conv1.weight"], a["visual.layer4.0.conv1.weight"])
    assert torch.equal(weights.teacher["layer4.0.conv1.weight"], init["visual.layer4.0.conv1.weight"])


TWO_RANKS = textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import save_file
    from regionclip.data.captions import StepPlan, caption_loader
    from regionclip.engine import get_rank, unwrap_model, cleanup_distributed
    from regionclip.pretrain import PretrainConfig, build_model, caption_source, pretrain

    config = PretrainConfig.from_yaml(sys.argv[1])
    run = pretrain(config, progress=False)
    rank = get_rank()
    state = {k: v.contiguous() for k, v in unwrap_model(run.module).state_dict().items()}
    save_file(state, f"{config.output_dir}/rank{rank}.safetensors")
    model = build_model(config)
    plan = StepPlan(config.batch_size, config.seed, rank, 2)
    batch = next(iter(caption_loader(caption_source(config), plan, config.transform(), num_steps=1)))
    losses = model.losses(batch, proposals=[[[4.0, 4.0, 40.0, 40.0], [10.0, 20.0, 70.0, 60.0]]] * len(batch))
    with open(f"{config.output_dir}/losses{rank}.json", "w") as handle:
        json.dump({k: v.item() for k, v in losses.items()}, handle)
    cleanup_distributed()
    """
)


def test_two_gloo_processes_gather_the_image_text_loss_and_keep_identical_weights(setup, tmp_path):
    """~7 s on 2 idle cores (two torchrun processes, 2 training steps)."""
    config = _config(setup, tmp_path / "ddp", steps=2)
    config.to_yaml(tmp_path / "ddp.yaml")
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tmp_path / "ddp.yaml")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [load_file(tmp_path / "ddp" / f"rank{r}.safetensors") for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert (tmp_path / "ddp" / "model_final.pth").is_file()
    gathered = [json.loads((tmp_path / "ddp" / f"losses{r}.json").read_text())["image_text"] for r in (0, 1)]
    assert gathered[0] == gathered[1]  # every rank scores the whole global batch
    # the single-process loss of the same global batch (4 images: the two ranks' halves in order)
    model = build_model(config, "cpu")
    batch = next(iter(caption_loader(caption_source(config), StepPlan(4, config.seed), config.transform(), num_steps=1)))
    single = model.losses(batch, proposals=[[[4.0, 4.0, 40.0, 40.0], [10.0, 20.0, 70.0, 60.0]]] * 4)["image_text"].item()
    assert gathered[0] == pytest.approx(single, rel=1e-5)


def test_world_source_with_its_category_names_as_the_concept_pool(setup, tmp_path):
    from regionclip.synthetic import World

    config = _config(
        {"weights": setup["weights"], "concepts": "world"}, tmp_path / "world_run", world={"preset": "tiny"},
        cache_dir=str(tmp_path / "cache"), steps=1, batch_size=2, checkpoint_every=1,
    )
    run = pretrain(config, progress=False)
    assert run.finished and (tmp_path / "world_run" / "model_final.pth").is_file()
    world = World.open(next((tmp_path / "cache" / "worlds").iterdir()))
    model = build_model(config)
    names = [c["name"] for c in world.load_instances("pretrain")["categories"]]
    assert model.concept_embeddings.shape == (len(names), 32) and len(names) > 1
    batch = next(iter(caption_loader(caption_source(config), StepPlan(2, config.seed), config.transform(), num_steps=1)))
    world_captions = {a["caption"] for a in world.load_captions("pretrain")["annotations"]}
    assert len(batch) == 2 and set(batch.captions) <= world_captions
