"""One compilation per run: validation, the EMA swap, checkpoints, sample grids and the final samples do not
compile the network again after training has started (compile_eval=false, the default)."""

from __future__ import annotations

import re

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import small_train_cfg
from diffusion_lab.train import train


@pytest.fixture
def eager_backend(monkeypatch):
    """torch.compile with the "eager" backend: Dynamo decides every (re)compilation before any backend runs, so
    the counts are those of inductor, and each compilation costs milliseconds instead of a C++ build."""
    original = torch.nn.Module.compile

    def compile_eagerly(self, *args, **kwargs):
        return original(self, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eagerly)
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _fit(tmp_path, *overrides: str) -> int:
    cfg = small_train_cfg(
        tmp_path / "run",
        "compile=true",
        "trainer.max_steps=12",
        "trainer.val_check_interval=4",  # three validations, each with an EMA swap and a sample grid
        "callbacks.checkpoint.every_n_train_steps=4",
        *overrides,
    )
    result = train(cfg)
    assert result["graphs"] == int(counters["stats"]["unique_graphs"])  # what the run's summary reports
    return result["graphs"]


def test_a_fit_with_validation_checkpoints_and_samples_compiles_the_network_once(tmp_path, eager_backend):
    assert _fit(tmp_path) == 1  # a recompilation (a failed guard) would be a second graph


def test_the_summary_breaks_the_startup_cost_down(tmp_path, eager_backend, capsys):
    _fit(tmp_path, "callbacks.throughput.warmup_steps=2", "callbacks.throughput.window=2")
    out = capsys.readouterr().out.splitlines()
    line = next(x for x in out if x.startswith("startup cost"))
    # the first step, the compiler's seconds and graphs, and the three checkpoints' writes, each timed
    assert re.fullmatch(
        r"startup cost  : [\d.]+ s beyond steady-state steps \(first step [\d.]+ s; compiling [\d.]+ s, 1 graphs; "
        r"checkpoint writes [\d.]+ s, [\d.]+ s more in the background\)",
        line,
    ), line
    line = next(x for x in out if x.startswith("validation"))  # the three validations, the sanity check not
    assert re.fullmatch(
        r"validation    : 3 runs, [\d.]+ s \(the first [\d.]+ s, the others [\d.]+ s on average\)", line
    )


def test_compiling_evaluation_too_adds_graphs_and_the_count_sees_them(tmp_path, eager_backend):
    # The no-grad validation graph and the sampling batch shapes: what compile_eval=false avoids.
    assert _fit(tmp_path, "compile_eval=true") > 1


def test_the_summary_names_the_guard_behind_each_recompilation(tmp_path, eager_backend, capsys):
    cfg = small_train_cfg(tmp_path / "run", "compile=true", "compile_eval=true", "trainer.max_steps=4")
    cfg.trainer.val_check_interval = 2
    result = train(cfg)
    # validation runs without gradients, and samples other batch sizes: Dynamo's own words for each failed
    # guard, each once
    reasons = result["recompiles"]
    assert result["graphs"] > 1 and len(set(reasons)) == len(reasons)
    assert any(r.endswith("GLOBAL_STATE changed: grad_mode") for r in reasons), reasons
    assert any("size()[0]" in r for r in reasons), reasons
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("recompiled"))
    assert line == "recompiled    : " + "; ".join(result["recompiles"])


def test_a_fit_that_compiles_once_reports_no_recompilation_or_graph_break(tmp_path, eager_backend, capsys):
    cfg = small_train_cfg(tmp_path / "run", "compile=true", "trainer.max_steps=4")
    result = train(cfg)
    assert result["graphs"] == 1 and "recompiles" not in result and "graph_breaks" not in result
    out = capsys.readouterr().out
    assert "recompiled" not in out and "graph breaks" not in out


def test_a_graph_break_is_named_by_its_reason():
    from diffusion_lab.compile_policy import compile_stats

    def step(x):
        y = x * 2
        torch._dynamo.graph_break()
        return y + 1

    torch._dynamo.reset()
    counters.clear()
    try:
        torch.compile(step, backend="eager")(torch.ones(3))
        stats = compile_stats()
    finally:
        torch._dynamo.reset()
    assert stats["graphs"] == 2 and "recompiles" not in stats
    assert len(stats["graph_breaks"]) == 1 and "graph_break" in stats["graph_breaks"][0], stats


def test_regional_compilation_compiles_a_repeated_block_once_for_all_its_instances(tmp_path, eager_backend):
    # Every DiT block sees the same shapes: one graph serves all of them (the whole network would be one graph
    # too, but one spanning every block, so its compile time grows with the depth).
    assert _fit(tmp_path, "model=dit_s", "model.depth=3", "compile_scope=blocks") == 1


def test_regional_compilation_of_a_network_without_repeated_blocks_is_one_error_line(tmp_path):
    from diffusion_lab.errors import UserError

    with pytest.raises(UserError) as err:
        _fit(tmp_path, "data=toy2d", "model=mlp", "compile_scope=blocks")
    assert str(err.value) == (
        "compile_scope=blocks needs a network that lists its repeated_blocks; MLPDenoiser does not: "
        "use compile_scope=net"
    )
