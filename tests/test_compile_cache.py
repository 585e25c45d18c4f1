"""The persistent compile cache: a second run of the same network compiles nothing (inductor, CPU)."""

from __future__ import annotations

import os

import pytest
import torch
from torch._dynamo.utils import counters, cumulative_time_spent_ns

from conftest import small_train_cfg
from diffusion_lab.compile_policy import CACHE_COUNTERS, cache_outcomes, compile_phases, use_compile_cache
from diffusion_lab.errors import UserError
from diffusion_lab.train import train


def _fit(folder, cache) -> dict:
    torch._dynamo.reset()  # no in-memory compiled code: only the on-disk caches can help
    counters.clear()
    cumulative_time_spent_ns.clear()  # Dynamo's timers, like its counters, add up over the process
    cfg = small_train_cfg(folder, "compile=true", "trainer.max_steps=2", f"compile_cache={cache}")
    result = train(cfg)
    phases = ("trace_s", "autograd_s", "passes_s", "kernels_s")
    assert sum(result.get(k, 0.0) for k in phases) == pytest.approx(result["compile_s"], abs=0.25)
    # The run's own record of the two caches is Dynamo's count.
    assert result["aot_cache_hit"] == counters["aot_autograd"]["autograd_cache_hit"]
    assert result["fx_cache_miss"] == counters["inductor"]["fxgraph_cache_miss"]
    return {
        **counters["inductor"],
        **counters["aot_autograd"],
        **{k: result[k] for k in phases if k in result},
        **{k: result[k] for k, _, _ in CACHE_COUNTERS},
    }


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
    assert (cold["aot_cache_hit"], warm["aot_cache_miss"], warm["aot_cache_bypass"]) == (0, 0, 0)
    # The summary's kernel time is what the cache saved: code generated and built cold, loaded warm.
    assert cold["kernels_s"] > 1.0 and warm["kernels_s"] < cold["kernels_s"] / 4
    # Cold, AOTAutograd traces the joint graph and inductor lowers it; warm, both load what the cache kept.
    assert cold["passes_s"] > 0.2 and warm["passes_s"] < cold["passes_s"] / 4
    assert warm["autograd_s"] < cold["autograd_s"]


def test_a_cache_folder_the_user_set_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    use_compile_cache(str(tmp_path / "configured"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    assert "TRITON_CACHE_DIR" not in os.environ  # Triton's follow the user's folder, as inductor derives them
    assert not (tmp_path / "configured").exists()  # not created: it is not used


def test_tritons_kernels_go_to_the_configured_folder_unless_the_user_named_theirs(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset")  # both restored after the test
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("TRITON_CACHE_DIR", "unset")
    monkeypatch.delenv("TRITON_CACHE_DIR")
    use_compile_cache(str(tmp_path / "configured"))
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "configured" / "triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "my_triton"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    use_compile_cache(str(tmp_path / "other"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "other")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "my_triton")


def test_an_unwritable_cache_folder_is_refused_even_where_the_users_folder_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(
        UserError, match=r"^compile_cache='.*a_file/cc' cannot be written: .*a_file is a file"
    ):
        use_compile_cache(str(tmp_path / "a_file" / "cc"))


def test_torchs_own_default_is_replaced_by_the_configured_folder(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what torch writes on first use
    use_compile_cache(str(tmp_path / "configured"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "configured")


# Dynamo's timers as torch 2.14 recorded them for one cold and one warm compile of a small UNet's training step
# (CPU): a frame's compile holds the backend's, the backend's holds inductor's forward compile, the lazily
# compiled backward holds inductor's backward compile, inductor's compile holds its code generation.
COLD = {
    "_recursive_joint_graph_passes": 1.45,
    "async_compile.wait": 20.12,
    "code_gen": 35.26,
    "inductor_compile": 40.77,
    "backend_compile": 32.17,
    "entire_frame_compile": 33.61,
    "entire_backward_compile": 14.98,
    "total_wall_time": 48.59,
}
WARM = {"backend_compile": 1.08, "entire_frame_compile": 2.08, "total_wall_time": 2.08}


def test_the_compile_phases_add_up_to_dynamos_total():
    cold = compile_phases(COLD, inductor_ran=True)
    assert cold == {"trace_s": 1.4, "autograd_s": 6.4, "passes_s": 5.5, "kernels_s": 35.3}
    assert sum(cold.values()) == pytest.approx(COLD["total_wall_time"], abs=0.2)
    warm = compile_phases(WARM, inductor_ran=True)  # cache hits: inductor's timers never started
    assert warm == {"trace_s": 1.0, "autograd_s": 1.1, "passes_s": 0.0, "kernels_s": 0.0}
    assert compile_phases(WARM, inductor_ran=False) == {}  # another backend: no AOTAutograd or inductor parts


def test_the_cache_outcomes_are_dynamos_counts_and_absent_without_inductor():
    from collections import Counter, defaultdict

    counted: defaultdict[str, Counter] = defaultdict(Counter)
    counted["aot_autograd"].update(autograd_cache_hit=1, autograd_cache_bypass=2)
    counted["inductor"].update(fxgraph_cache_miss=3, fxgraph_cache_hit=4)
    assert cache_outcomes(counted) == {
        "aot_cache_hit": 1,
        "aot_cache_miss": 0,
        "aot_cache_bypass": 2,
        "fx_cache_hit": 4,
        "fx_cache_miss": 3,
        "fx_cache_bypass": 0,
    }
    counted.pop("inductor")  # another backend (aot_eager, cudagraphs): no inductor caches to speak of
    assert cache_outcomes(counted) == {}


def test_the_summary_says_how_the_caches_were_met(capsys):
    from diffusion_lab.training import print_summary

    outcomes = dict(zip([k for k, _, _ in CACHE_COUNTERS], (1, 0, 2, 4, 3, 0)))
    print_summary({"output_dir": "x", "global_step": 2, "metrics": {}, "wall_time_s": 1.0, **outcomes})
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("compile cache"))
    assert (
        line
        == "compile cache : AOTAutograd 1 hit, 0 missed, 2 bypassed; inductor graphs 4 hit, 3 missed, 0 bypassed"
    )


def test_torchs_ptxas_is_named_for_triton_and_a_users_own_wins(monkeypatch):
    """What inductor's workers do before each build, done once in the process; None where torch lacks it."""
    import sys
    import types

    from diffusion_lab.compile_policy import use_torch_ptxas

    monkeypatch.delenv("TRITON_PTXAS_PATH", raising=False)
    tasks = types.ModuleType("torch._inductor.runtime.compile_tasks")
    tasks._set_triton_ptxas_path = lambda: os.environ.setdefault("TRITON_PTXAS_PATH", "/torch/bin/ptxas")
    monkeypatch.setitem(sys.modules, "torch._inductor.runtime.compile_tasks", tasks)
    assert use_torch_ptxas() == "/torch/bin/ptxas" == os.environ["TRITON_PTXAS_PATH"]
    monkeypatch.setenv("TRITON_PTXAS_PATH", "/mine/ptxas")
    assert use_torch_ptxas() == "/mine/ptxas"
    monkeypatch.delenv("TRITON_PTXAS_PATH")
    monkeypatch.setitem(sys.modules, "torch._inductor.runtime.compile_tasks", types.ModuleType("old_torch"))
    assert use_torch_ptxas() is None and "TRITON_PTXAS_PATH" not in os.environ


class _PtxasNamed(Exception):
    pass


@pytest.mark.parametrize("compiled", [True, False])
def test_a_compiled_training_names_torchs_ptxas_before_it_compiles(tmp_path, monkeypatch, compiled):
    """Named before the network compiles (the first build would otherwise key its kernels by Triton's own ptxas),
    and only where the run compiles."""
    import diffusion_lab.training as train_module

    def named():
        raise _PtxasNamed

    monkeypatch.setattr(train_module, "use_torch_ptxas", named)
    cfg = small_train_cfg(tmp_path, f"compile={str(compiled).lower()}", "trainer.max_steps=1")
    if compiled:
        with pytest.raises(_PtxasNamed):
            train(cfg)
        assert not list(tmp_path.rglob("*.ckpt"))  # stopped before the first step
    else:
        train(cfg)
        assert list(tmp_path.rglob("*.ckpt"))
