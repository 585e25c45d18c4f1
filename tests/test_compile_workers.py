"""Inductor's compile workers, started early and waited for (compile_policy.wait_compile_workers)."""

from __future__ import annotations

import pytest
from torch._inductor import config as inductor_config
from torch._inductor.async_compile import AsyncCompile

from diffusion_lab.compile_policy import wait_compile_workers, waits_for_workers


def test_the_wait_returns_once_the_workers_take_work():
    with inductor_config.patch(compile_threads=2):
        waited = wait_compile_workers()
        assert isinstance(waited, float) and waited >= 0.0
        assert AsyncCompile.use_process_pool()  # a kernel compiled now goes to a worker
        assert wait_compile_workers() < 0.5  # ready: nothing more to wait for


def test_one_compile_thread_has_no_workers_to_wait_for():
    with inductor_config.patch(compile_threads=1):
        assert wait_compile_workers() is None


@pytest.mark.parametrize(
    ("setting", "device", "waits"),
    [(True, "cuda", True), (False, "cuda", False), (True, "cpu", False), (True, "mps", False)],
)
def test_only_a_cuda_fit_waits_and_only_when_asked(setting, device, waits):
    assert waits_for_workers(setting, device) is waits
