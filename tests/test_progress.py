"""Progress output: a redrawn bar on a terminal, whole and few lines in a log (`regionclip.utils.progress`)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import torch
from torch import nn

from regionclip.engine.loop import run_training
from regionclip.engine.optim import build_optimizer
from regionclip.engine.schedules import WarmupCosine
from regionclip.utils import LOG_PROGRESS_FRACTION, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_stream_gets_whole_lines_bounded_by_the_fraction():
    log = io.StringIO()
    for _ in progress(range(1000), desc="decode", unit="img", file=log):
        pass
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    # the start, at most one line per 5% of the total, and the final state
    assert 2 <= len(lines) <= 2 + math.ceil(1 / LOG_PROGRESS_FRACTION)
    assert lines[0].startswith("decode:   0%") and "1000/1000" in lines[-1]


def test_log_stream_keeps_the_final_state_of_a_transient_bar():
    log = io.StringIO()
    with progress(total=40, desc="batches", file=log, leave=False) as bar:
        for _ in range(40):
            bar.update(1)
    assert "40/40" in log.getvalue().splitlines()[-1]


def test_terminal_bar_redraws_in_place_and_disabled_bar_is_silent():
    terminal = Terminal()
    for _ in progress(range(50), desc="steps", file=terminal, mininterval=0):
        pass
    assert terminal.getvalue().count("\r") > 10  # every refresh overwrites the line
    silent = io.StringIO()
    for _ in progress(range(50), file=silent, disable=True):
        pass
    assert silent.getvalue() == ""


@dataclass
class _Config:
    steps: int = 300
    seed: int = 0
    checkpoint_every: int = 1000

    def to_dict(self) -> dict:
        return {"steps": self.steps, "seed": self.seed}


def test_training_loop_logs_few_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    optimizer = build_optimizer(model, "sgd", lr=0.01, weight_decay=0.0)
    inputs = torch.randn(8, 2)

    def step_fn(step, generator):
        loss = model(inputs).pow(2).mean()
        return loss, round(float(loss.item()), 6)

    run = run_training(
        model, optimizer, _Config(), step_fn, tmp_path, "toy", schedule=WarmupCosine(0.01, 300, 0, 0.0)
    )
    assert run.finished
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 2 + math.ceil(1 / LOG_PROGRESS_FRACTION)
    assert lines[-1].startswith("toy: 100%") and "300/300" in lines[-1] and "loss=" in lines[-1]
