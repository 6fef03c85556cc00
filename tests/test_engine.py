"""The training engine: schedules and gradient clipping against hand computations, optimizer construction,
autocast, exact resume after a real SIGKILL, and a 2-rank gloo DDP run that equals the single-process run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from regionclip.engine import (
    GradientClipping,
    TrainingInterrupted,
    WarmupCosine,
    WarmupMultiStep,
    batch_indices,
    build_optimizer,
    build_schedule,
    cleanup_distributed,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    latest_checkpoint,
    list_checkpoints,
    rank_generator,
    run_training,
    shard,
    step_generator,
    unwrap_model,
    wrap_model,
)
from regionclip.engine.checkpointing import MODEL_FILE

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TESTS_DIR = Path(__file__).parent


# ---- schedules ---------------------------------------------------------------------------------------


def test_warmup_multistep_matches_hand_computation():
    schedule = WarmupMultiStep(lr=0.002, milestones=(6, 9), gamma=0.1, warmup_steps=4, warmup_factor=0.001)
    # warm-up factor 0.001 * (1 - s/4) + s/4 for s < 4, then 1; x0.1 from step 6, x0.01 from step 9
    expected = [2e-6, 0.002 * 0.25075, 0.002 * 0.5005, 0.002 * 0.75025, 0.002, 0.002, 2e-4, 2e-4, 2e-4, 2e-5, 2e-5]
    assert [schedule(s) for s in range(11)] == pytest.approx(expected, rel=1e-12)
    # RegionCLIP's RN50 pretraining: 1000 warm-up steps, decays at 300k and 525k
    official = WarmupMultiStep(lr=0.002, milestones=(300000, 525000))
    assert official(0) == pytest.approx(2e-6) and official(500) == pytest.approx(0.002 * 0.5005)
    assert official(299999) == pytest.approx(0.002) and official(300000) == pytest.approx(2e-4)
    assert official(524999) == pytest.approx(2e-4) and official(525000) == pytest.approx(2e-5)


def test_schedules_are_selected_by_config():
    cosine = build_schedule({"name": "warmup_cosine", "lr": 1e-3, "steps": 12, "warmup_steps": 4, "min_lr_ratio": 0.1})
    assert cosine == WarmupCosine(1e-3, 12, 4, 0.1) and cosine(0) == pytest.approx(2.5e-4)
    multistep = build_schedule({"name": "warmup_multistep", "lr": 0.01, "milestones": [5], "warmup_steps": 0})
    assert multistep(4) == pytest.approx(0.01) and multistep(5) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="unknown schedule"):
        build_schedule({"name": "poly", "lr": 0.1})
    with pytest.raises(ValueError, match="milestone"):
        build_schedule({"name": "warmup_multistep", "lr": 0.1, "milestone": [5]})
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStep(lr=0.1, milestones=(9, 5))


# ---- gradient clipping, optimizers ----------------------------------------------------------------------


def _params_with_grads() -> tuple[nn.Parameter, nn.Parameter]:
    big, small = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, 1))
    big.grad = torch.tensor([3.0, 4.0])  # norm 5
    small.grad = torch.tensor([[0.3], [0.4]])  # norm 0.5
    return big, small


def test_per_parameter_clipping_matches_hand_computation():
    big, small = _params_with_grads()
    GradientClipping("per_parameter", 2.5)([big, small])
    scale = 2.5 / (5.0 + 1e-6)  # only the gradient over the limit shrinks, to norm 2.5
    assert torch.allclose(big.grad, torch.tensor([3.0, 4.0]) * scale, rtol=1e-7, atol=0)
    assert torch.equal(small.grad, torch.tensor([[0.3], [0.4]]))

    big, small = _params_with_grads()
    GradientClipping("global", 2.5)([big, small])
    scale = 2.5 / ((25.0 + 0.25) ** 0.5 + 1e-6)  # both shrink by the norm of all gradients together
    assert torch.allclose(big.grad, torch.tensor([3.0, 4.0]) * scale, rtol=1e-6, atol=0)
    assert torch.allclose(small.grad, torch.tensor([[0.3], [0.4]]) * scale, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="mode"):
        GradientClipping("value", 1.0)


def test_frozen_parameters_stay_out_of_the_optimizer():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    sgd = build_optimizer(model, "sgd", lr=0.02, weight_decay=1e-4)
    optimized = {id(p) for group in sgd.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in list(model[1].parameters()) + list(model[2].parameters())}
    assert all(id(p) not in optimized for p in model[0].parameters())
    group = sgd.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.9, 1e-4, False)

    adamw = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1, no_decay=lambda name, p: p.ndim < 2)
    decay, no_decay = adamw.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([2, 4])] and decay["weight_decay"] == 0.1
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0  # BN gain/bias, last bias
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, "sgd", lr=0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(nn.Linear(1, 1), "lamb", lr=0.1, weight_decay=0.0)


# ---- the toy run shared by the loop tests (importable by the spawned processes) -----------------------------

GLOBAL_BATCH = 8


class ToyConfig:
    """A `RunConfig`: 6 steps, a checkpoint every 2."""

    steps, seed, checkpoint_every = 6, 3, 2

    def to_dict(self) -> dict:
        return {"steps": self.steps, "seed": self.seed}


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def toy_run(checkpoint_dir, stop_after=None, interrupt_at=None, interruption="sigkill", autocast=None, seen_dtypes=None):
    """SGD + RegionCLIP's schedule and clipping on a fixed regression set; each rank takes its shard of the global
    batch and of the step's random input noise. At step ``interrupt_at`` the process gets ``interruption``: a
    SIGKILL, a SIGTERM, or an exception raised by the step."""
    data = torch.Generator().manual_seed(11)
    inputs, targets = torch.randn(40, 4, generator=data), torch.randn(40, 1, generator=data)
    model = wrap_model(toy_model(), torch.device("cpu"))
    optimizer = build_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4)

    def step_fn(step, generator):
        if step == interrupt_at:
            if interruption == "exception":
                raise KeyboardInterrupt(f"interrupted at step {step}")
            os.kill(os.getpid(), signal.SIGTERM if interruption == "sigterm" else signal.SIGKILL)
        chosen = shard(batch_indices(len(inputs), GLOBAL_BATCH, ToyConfig.seed, step))
        noise = shard(0.1 * torch.randn(GLOBAL_BATCH, 4, generator=generator))  # drawn for the global batch
        prediction = model(inputs[chosen] + noise)
        if seen_dtypes is not None:
            seen_dtypes.append(prediction.dtype)
        loss = F.mse_loss(prediction.float(), targets[chosen])
        return loss, round(float(loss.item()), 6)

    schedule = WarmupMultiStep(lr=0.1, milestones=(4,), warmup_steps=2)
    return run_training(
        model, optimizer, ToyConfig(), step_fn, checkpoint_dir, "toy", schedule=schedule, progress=False,
        stop_after=stop_after, clip_gradients=GradientClipping("per_parameter", 0.5), autocast=autocast,
    )


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    b_state = unwrap_model(b).state_dict()
    for key, value in unwrap_model(a).state_dict().items():
        assert torch.equal(value, b_state[key]), key


@pytest.mark.parametrize("interruption", ["exception", "sigkill"])
def test_run_interrupted_mid_way_resumes_bit_for_bit(tmp_path, interruption):
    whole = toy_run(tmp_path / "whole")
    if interruption == "exception":
        with pytest.raises(KeyboardInterrupt):
            toy_run(tmp_path / "split", interrupt_at=5, interruption="exception")
    else:  # a real SIGKILL of another process
        killed = subprocess.run(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); import torch; "
             f"torch.set_num_threads(1); import test_engine; test_engine.toy_run({str(tmp_path / 'split')!r}, "
             "interrupt_at=5)"],
            capture_output=True, text=True,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [step for step, _ in list_checkpoints(tmp_path / "split")] == [2, 4]  # the last two kept
    resumed = toy_run(tmp_path / "split")
    assert resumed.steps_run == 2 and resumed.finished
    assert resumed.losses == whole.losses and len(whole.losses) == 6
    _assert_same_weights(whole.module, resumed.module)
    assert not torch.equal(unwrap_model(whole.module)[0].weight, toy_model()[0].weight)  # it did train


def test_sigterm_checkpoints_the_current_step_and_resumes_exactly(tmp_path):
    whole = toy_run(tmp_path / "whole")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as stopped:
        toy_run(tmp_path / "split", interrupt_at=2, interruption="sigterm")  # mid-step 2 of 0..5
    assert stopped.value.step == 3 and signal.getsignal(signal.SIGTERM) is before
    assert [step for step, _ in list_checkpoints(tmp_path / "split")] == [2, 3]  # step 3 is off the every-2 grid
    resumed = toy_run(tmp_path / "split")
    assert resumed.steps_run == 3 and resumed.losses == whole.losses
    _assert_same_weights(whole.module, resumed.module)


def test_autocast_hook_runs_the_step_in_bfloat16(tmp_path):
    dtypes = []
    run = toy_run(tmp_path, stop_after=1, autocast=torch.bfloat16, seen_dtypes=dtypes)
    assert dtypes == [torch.bfloat16] and run.step == 1
    assert all(p.dtype == torch.float32 for p in run.module.parameters())  # weights and updates stay float32
    toy_run(tmp_path / "fp32", stop_after=1, seen_dtypes=dtypes)
    assert dtypes[-1] == torch.float32


def test_random_streams_and_shards():
    assert torch.equal(torch.rand(3, generator=step_generator(1, 2)), torch.rand(3, generator=step_generator(1, 2)))
    streams = [torch.rand(3, generator=rank_generator(1, 2, rank)) for rank in (0, 1)]
    assert not torch.equal(streams[0], streams[1])
    assert not torch.equal(streams[0], torch.rand(3, generator=step_generator(1, 2)))
    assert torch.equal(streams[1], torch.rand(3, generator=rank_generator(1, 2, 1)))
    batch = torch.arange(6)
    assert torch.equal(torch.cat([shard(batch, r, 3) for r in range(3)]), batch)
    assert shard(["a", "b", "c", "d"], 1, 2) == ["c", "d"]
    assert torch.equal(shard(batch), batch)  # a single process holds the whole batch
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    with pytest.raises(ValueError, match="evenly"):
        shard(batch, 0, 4)


# ---- two ranks ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    device = init_distributed()
    try:
        assert device.type == "cpu" and get_rank() == rank and get_world_size() == world_size
        # SIGTERM reaches rank 1 alone during step 2: both ranks finish that step and stop; the same ranks resume
        try:
            toy_run(Path(out) / "run", interrupt_at=2 if rank == 1 else None, interruption="sigterm")
            raise AssertionError("rank 0 did not stop with rank 1")
        except TrainingInterrupted as stopped:
            assert stopped.step == 3
        run = toy_run(Path(out) / "run")
        assert run.steps_run == 3 and run.finished
        assert all(key.startswith("module.") for key in run.module.state_dict())  # the DDP wrapper's own keys
        torch.save(
            {"weights": unwrap_model(run.module).state_dict(), "losses": torch.tensor(run.losses, dtype=torch.float64)},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        cleanup_distributed()


@pytest.mark.slow  # two fresh interpreters importing torch: 6-30 s depending on the machine's load
def test_two_ranks_stay_in_sync_and_equal_the_single_process_run(tmp_path):
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    ranks = [result["weights"] for result in results]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    single_run = toy_run(tmp_path / "single")
    single = unwrap_model(single_run.module).state_dict()
    # after the resume (before it, every rank's history is rank 0's, from its checkpoint) each rank's loss is over
    # its half of the global batch: different halves, whose mean is the global loss
    rank_losses = [result["losses"][3:] for result in results]
    assert (rank_losses[0] != rank_losses[1]).all()
    single_losses = torch.tensor(single_run.losses[3:], dtype=torch.float64)
    assert torch.allclose((rank_losses[0] + rank_losses[1]) / 2, single_losses, atol=2e-6)
    assert single.keys() == ranks[0].keys()
    for key, value in single.items():
        assert torch.allclose(ranks[0][key], value, rtol=1e-5, atol=1e-6), key
        assert not torch.equal(value, toy_model().state_dict()[key]), key  # it did train
    # rank 0 wrote the checkpoints (the one of the interruption too), without DDP's "module." prefix
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [4, 6]
    saved = load_file(str(latest_checkpoint(tmp_path / "run") / MODEL_FILE))
    assert saved.keys() == single.keys()
    assert all(torch.equal(saved[key], ranks[0][key]) for key in saved)
