"""The throughput callback's startup cost: training time beyond the steps at their steady pace, validation left
out. Driven by a fake clock, so the expected numbers are exact."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from diffusion_lab.callbacks import throughput
from diffusion_lab.callbacks.throughput import Throughput


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(throughput.time, "perf_counter", fake)
    return fake


def _fit(cb: Throughput, clock: Clock, step_seconds: list[float], validate_at: dict[int, float]) -> None:
    """Run ``cb`` through a fit whose step i takes step_seconds[i]; validation after step s takes validate_at[s]."""
    module = SimpleNamespace(device=torch.device("cpu"), log=lambda *a, **k: None)
    trainer = SimpleNamespace(global_step=0, world_size=1, sanity_checking=False)
    batch = torch.zeros(4, 1, 2, 2)
    cb.on_train_start(trainer, module)
    for seconds in step_seconds:
        clock.now += seconds
        trainer.global_step += 1
        cb.on_train_batch_end(trainer, module, None, [batch], 0)
        if trainer.global_step in validate_at:
            cb.on_validation_start(trainer, module)
            clock.now += validate_at[trainer.global_step]
            cb.on_validation_end(trainer, module)
    cb.on_train_end(trainer, module)


def test_startup_cost_is_the_time_beyond_steady_steps_with_validation_left_out(clock):
    cb = Throughput(window=5, warmup_steps=2)
    steps = [30.0, 0.5] + [0.1] * 40  # a 30 s compilation in the first step, autotuning in the second
    steps[25] += 8.0  # a recompilation inside one window: that window is slow, the median is not
    _fit(cb, clock, steps, validate_at={20: 100.0})
    # each step beyond its steady 0.1 s: the first two, and the one that recompiled
    assert cb.startup_seconds == pytest.approx((30.0 - 0.1) + (0.5 - 0.1) + 8.0)
    assert cb.first_step_seconds == pytest.approx(30.0)
    assert cb.images_per_second == pytest.approx(4 * 35 / (35 * 0.1 + 8.0))  # the windows' own average
    assert cb.validation_seconds == [pytest.approx(100.0)]


def test_each_validation_is_timed_apart_and_left_out_of_the_startup_cost(clock):
    cb = Throughput(window=5, warmup_steps=2)
    _fit(cb, clock, [0.1] * 40, validate_at={10: 6.0, 20: 0.5, 30: 0.3})
    assert cb.validation_seconds == [pytest.approx(6.0), pytest.approx(0.5), pytest.approx(0.3)]
    assert cb.startup_seconds == pytest.approx(0.0)


def test_the_summary_line_sets_the_first_validation_apart():
    from diffusion_lab.training import validation_line

    assert validation_line([6.04, 0.5, 0.3]) == "3 runs, 6.8 s (the first 6.0 s, the others 0.4 s on average)"
    assert validation_line([2.0]) == "1 run, 2.0 s"


def test_a_fit_without_a_timed_window_reports_no_startup_cost(clock):
    cb = Throughput(window=50, warmup_steps=20)
    _fit(cb, clock, [1.0] * 10, validate_at={})
    assert cb.startup_seconds is None
