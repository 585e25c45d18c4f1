"""The persistent compile cache: a second run of the same network compiles nothing (inductor, CPU)."""

from __future__ import annotations

import os

import pytest
import torch
from torch._dynamo.utils import counters, cumulative_time_spent_ns

from conftest import small_train_cfg
from diffusion_lab.compile_policy import use_compile_cache
from diffusion_lab.train import train


def _fit(folder, cache) -> dict:
    torch._dynamo.reset()  # no in-memory compiled code: only the on-disk caches can help
    counters.clear()
    cumulative_time_spent_ns.clear()  # Dynamo's timers, like its counters, add up over the process
    cfg = small_train_cfg(folder, "compile=true", "trainer.max_steps=2", f"compile_cache={cache}")
    result = train(cfg)
    return {**counters["inductor"], **counters["aot_autograd"], "kernels_s": result["kernels_s"]}


@pytest.mark.slow
def test_a_second_run_reads_every_graph_from_the_configured_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset")  # restored after the test
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    cache = tmp_path / "compile_cache"
    cold = _fit(tmp_path / "cold", cache)
    assert cold.get("fxgraph_cache_miss", 0) >= 1 and not cold.get("fxgraph_cache_hit")
    assert (cache / "fxgraph").is_dir()  # the graphs went to the configured folder
    warm = _fit(tmp_path / "warm", cache)
    assert warm.get("fxgraph_cache_hit", 0) == cold["fxgraph_cache_miss"] and not warm.get(
        "fxgraph_cache_miss"
    )
    assert warm.get("autograd_cache_hit", 0) >= 1
    # The summary's kernel time is what the cache saved: code generated and built cold, loaded warm.
    assert cold["kernels_s"] > 1.0 and warm["kernels_s"] < cold["kernels_s"] / 4


def test_a_cache_folder_the_user_set_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    use_compile_cache(str(tmp_path / "configured"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_torchs_own_default_is_replaced_by_the_configured_folder(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what torch writes on first use
    use_compile_cache(str(tmp_path / "configured"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "configured")
