"""benchmarks/peers_fmnist.py on the CPU: the foreach EMA, the compile / dropout / seed options."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from conftest import compose_train
from graph_stand_in import StandInGraph
from scripts import load_script


@pytest.fixture(scope="module")
def peers():
    return load_script("peers_fmnist")


def test_foreach_ema_equals_the_per_parameter_update(peers):
    torch.manual_seed(0)
    params = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2, 3)]
    foreach = [torch.randn_like(p) for p in params]
    loop = [e.clone() for e in foreach]
    for _ in range(5):
        for p in params:
            p.add_(torch.randn_like(p))
        peers.ema_update(foreach, params, 0.9)
        for e, p in zip(loop, params):
            e.lerp_(p, 1.0 - 0.9)
    for e_foreach, e_loop in zip(foreach, loop):
        assert torch.equal(e_foreach, e_loop)


def test_ema_of_a_fixed_parameter_decays_geometrically(peers):
    p, e0, decay, k = torch.full((4,), 2.0), torch.full((4,), -1.0), 0.9, 7
    ema = [e0.clone()]
    for _ in range(k):
        peers.ema_update(ema, [p], decay)
    torch.testing.assert_close(ema[0], p + (e0 - p) * decay**k)


def test_ema_warmup_follows_the_framework_callback(peers):
    from diffusion_lab.callbacks import EMA

    callback = EMA(decay=0.999, warmup=True)
    for k in (1, 5, 100, 10_000):
        assert peers.ema_decay(k, 0.999, True) == callback.decay_at(k)
    assert peers.ema_decay(1, 0.999, False) == 0.999


def test_the_first_warmup_update_copies_the_weights(peers):
    torch.manual_seed(0)
    net = Tiny()
    ema = copy.deepcopy(net).requires_grad_(False)
    data = torch.randn(8, 1, 28, 28)
    argv = ["--peer", "ours-net", "--batch", "4", "--seconds", "0", "--check-every", "1", "--ema-warmup"]
    peers.train(peers.parse_args(argv), net, ema, lambda m, x, t: m(x, t), data, torch.device("cpu"))
    assert torch.equal(ema.conv.weight, net.conv.weight)


def test_compile_is_an_alias_of_default_for_training_and_sampling(peers):
    args = peers.parse_args(["--peer", "lucidrains", "--compile"])
    assert (args.compile_mode, args.sample_compile_mode) == ("default", "default")
    args = peers.parse_args(["--peer", "lucidrains", "--compile-mode", "reduce-overhead"])
    assert (args.compile_mode, args.sample_compile_mode) == ("reduce-overhead", "none")
    assert peers.parse_args(["--peer", "lucidrains"]).compile_mode == "none"


def test_bad_compile_mode_and_dropout_are_refused(peers, capsys):
    with pytest.raises(SystemExit):
        peers.parse_args(["--peer", "lucidrains", "--compile-mode", "max-autotune"])
    with pytest.raises(SystemExit):
        peers.parse_args(["--peer", "lucidrains", "--dropout", "1.0"])
    assert "--dropout must be in [0, 1)" in capsys.readouterr().err


def test_capture_trains_on_cuda_only_and_not_in_sampling(peers, capsys):
    assert peers.parse_args(
        ["--peer", "diffusers", "--compile-mode", "capture", "--device", "cuda"]
    ).compile_mode
    with pytest.raises(SystemExit):
        peers.parse_args(["--peer", "diffusers", "--compile-mode", "capture", "--device", "cpu"])
    assert (
        "--compile-mode capture records CUDA graphs and needs --device cuda, not cpu"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        peers.parse_args(["--peer", "diffusers", "--sample-compile-mode", "capture", "--device", "cuda"])


def test_capture_records_the_peers_own_call_and_replays_it_with_the_peers_parameters(peers):
    """diffusers' forward (a keyword argument, a tuple out) is captured as a call of (x_t, t) alone; the replay
    computes what the peer's forward does, and the captured module trains the peer's own parameters."""
    torch.manual_seed(0)
    net = Tiny()

    def forward(
        m, x, t, return_dict=True
    ):  # diffusers' calling convention, return_dict=False as the loop uses
        out = m(x, t) * 2
        return out if return_dict else (out,)

    graph = StandInGraph()
    run, step_forward = peers.training_runner(
        net, lambda m, x, t: forward(m, x, t, return_dict=False)[0], "capture", graph=graph, device="cpu"
    )
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 7])
    out = step_forward(run, x, t)
    assert len(graph.samples) == 1 and [a.shape for a in graph.samples[0]] == [x.shape, t.shape]
    torch.testing.assert_close(out, net(x, t) * 2)
    step_forward(run, x, t)
    assert (graph.replays, run.replays) == (2, 2)
    assert set(map(id, run.net.parameters())) == set(map(id, net.parameters()))
    assert peers.training_runner(net, forward, "none") == (
        net,
        forward,
    )  # the other modes: the peer's own call


@pytest.mark.parametrize("peer", ["ours-net", "lucidrains"])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_dropout_reaches_the_blocks_and_nothing_else_drops(peers, peer, dropout):
    net, _, _ = peers.build_peer(peer, dropout)
    rates = {m.p for m in net.modules() if isinstance(m, nn.Dropout)}
    # lucidrains' attention has its own dropout, 0 by default
    assert dropout in rates and rates <= {0.0, dropout}


def test_default_dropout_is_zero(peers):
    assert peers.parse_args(["--peer", "diffusers"]).dropout == 0.0


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


def trained_weights(peers, seed: int) -> torch.Tensor:
    """The weights after 4 steps of the benchmark's loop from the same initial net, data and ``seed``."""
    torch.manual_seed(123)
    net = Tiny()
    ema = copy.deepcopy(net).requires_grad_(False)
    data = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(9))
    args = peers.parse_args(["--peer", "ours-net", "--batch", "4", "--seconds", "0", "--check-every", "4"])
    torch.manual_seed(seed)
    result = peers.train(args, net, ema, lambda m, x, t: m(x, t), data, torch.device("cpu"))
    assert result["steps"] == 4
    return net.conv.weight.detach().clone()


def test_lr_warms_up_linearly(peers):
    torch.manual_seed(0)
    net = Tiny()
    ema = copy.deepcopy(net).requires_grad_(False)
    argv = [
        "--peer",
        "ours-net",
        "--batch",
        "4",
        "--seconds",
        "0",
        "--check-every",
        "4",
        "--lr-warmup-steps",
        "10",
    ]
    args = peers.parse_args(argv)
    result = peers.train(
        args, net, ema, lambda m, x, t: m(x, t), torch.randn(8, 1, 28, 28), torch.device("cpu")
    )
    assert result["lr_final"] == pytest.approx(args.lr * 5 / 10)  # the 5th step's factor, after 4 steps


def test_seed_fixes_the_data_order_timesteps_and_noise(peers):
    first, again, other = (trained_weights(peers, s) for s in (5, 5, 6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_the_peers_take_cudnns_algorithm_choice_from_the_experiment_they_are_compared_with(peers):
    """The quality comparison keeps one cuDNN setting for every system: the peers' loop reads it from the GPU
    trainer preset, which experiment=fmnist_fast uses unchanged."""
    ours = compose_train(["experiment=fmnist_fast"], output_dir="/nonexistent").trainer.benchmark
    assert peers.cudnn_autotune() is ours


def test_count_gives_parameters_and_step_flops_linear_in_the_batch(peers, capsys):
    """``--count``: one JSON line of the network's parameters and GFLOPs, no data read. A training step's FLOPs
    grow with the batch exactly (every counted product is per sample), and the backward costs about two
    forwards (the input's and the weights' gradients; the first layer needs no input gradient)."""
    from unet_small import unet_small

    counts = [peers.main(["--peer", "ours-net", "--count", "--batch", str(b)]) for b in (2, 4)]
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == counts
    assert counts[0]["params"] == sum(p.numel() for p in unet_small(dropout=0.0).parameters())
    assert counts[1]["train_step_gflop"] == pytest.approx(2 * counts[0]["train_step_gflop"], rel=1e-12)
    step, forward = counts[0]["train_step_gflop"], counts[0]["forward_gflop"]
    assert 2.9 * forward < step <= 3 * forward
