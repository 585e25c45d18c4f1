"""compile=capture: which network calls replay the captured CUDA graphs and which run the plain network, the
errors where it cannot run, and (on a GPU) that a captured training step computes what the plain one does."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from diffusion_lab.capture import CapturedNet, call_signature, check_capture
from diffusion_lab.errors import UserError
from diffusion_lab.nets import UNet
from diffusion_lab.nets.fused_norm import build_kernels_at_once
from graph_stand_in import StandInGraph


class TwoInputNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, t, y=None):
        return self.lin(x) * t.float().view(-1, 1) + (0 if y is None else y.float().view(-1, 1))


def make(device="cpu"):
    torch.manual_seed(0)
    net, graph = TwoInputNet(), StandInGraph()
    return net, graph, CapturedNet(net, graph=graph, device=device)


def batch(n=8):
    return torch.randn(n, 4), torch.randint(1, 5, (n,))


def test_the_first_training_call_captures_on_copies_and_later_calls_of_its_signature_replay():
    net, graph, captured = make()
    x, t = batch()
    out = captured(x, t)
    assert len(graph.samples) == 1
    sample = graph.samples[0]
    assert all(torch.equal(s, a) and s.data_ptr() != a.data_ptr() for s, a in zip(sample, (x, t)))
    assert "forward" not in net.__dict__  # the module is the plain network again
    torch.testing.assert_close(out, TwoInputNet.forward(net, x, t))
    captured(*batch())
    assert (graph.replays, captured.replays, captured.fallbacks) == (2, 2, 0)
    assert captured.stats()["graph_replays"] == 2 and captured.stats()["capture_fallbacks"] == 0


def test_eval_no_grad_keywords_and_other_devices_run_the_plain_network_without_capturing():
    net, graph, captured = make()
    x, t = batch()
    net.eval()
    captured(x, t)
    net.train()
    with torch.no_grad():
        captured(x, t)
    captured(x, t, y=t)
    assert graph.samples == [] and captured.stats() == {}
    _, graph_cuda, on_cuda = make(device="cuda")
    on_cuda(x, t)  # CPU tensors: not the captured device
    assert graph_cuda.samples == []


def test_a_training_call_of_another_signature_falls_back_and_is_counted():
    net, graph, captured = make()
    captured(*batch(8))
    out = captured(*batch(5))  # a last short batch
    captured(*batch(8))
    assert out.shape == (5, 4)
    assert (graph.replays, captured.fallbacks, len(graph.samples)) == (2, 1, 1)


def test_a_capture_silences_autograds_stream_warning_and_no_other():
    """The side-stream warm-up's accumulator warning, which every captured run printed once (checked harmless on the
    GPU), is filtered from the moment a network is wrapped; another UserWarning, or another text, still shows."""
    stream = (
        "The AccumulateGrad node's stream does not match the stream of the node that produced the gradient."
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
        warnings.warn(stream, UserWarning, stacklevel=1)
        warnings.warn("The AccumulateGrad node is fine", UserWarning, stacklevel=1)
        warnings.warn(stream, DeprecationWarning, stacklevel=1)
    assert [(str(w.message), w.category) for w in caught] == [
        ("The AccumulateGrad node is fine", UserWarning),
        (stream, DeprecationWarning),
    ]


def test_the_signature_covers_shapes_strides_dtypes_grad_flags_and_autocast():
    x, t = batch()
    base = call_signature((x, t), "cpu")
    assert call_signature((x.clone(), t.clone()), "cpu") == base
    assert call_signature((x.t().contiguous().t(), t), "cpu") != base  # same shape, other strides
    assert call_signature((x.double(), t), "cpu") != base
    assert call_signature((x.requires_grad_(), t), "cpu") != base
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert call_signature((x.detach(), t), "cpu") != base


def test_capture_runs_on_one_cuda_device_and_says_what_to_use_otherwise():
    with pytest.raises(UserError) as err:
        check_capture(cuda=False, world_size=1)
    assert str(err.value) == (
        "compile=capture records CUDA graphs and needs a CUDA device (trainer=gpu on a machine with one); for a CPU run "
        "use compile=false trainer=cpu"
    )
    with pytest.raises(UserError) as err:
        check_capture(cuda=True, world_size=2)
    assert str(err.value) == (
        "compile=capture runs on one GPU; this run has 2 processes: use compile=reduce-overhead or trainer.devices=1"
    )
    with pytest.raises(UserError) as err:
        check_capture(cuda=True, world_size=1, accumulate=2)
    assert str(err.value) == (
        "compile=capture needs an optimizer step after every batch; trainer.accumulate_grad_batches=2: use "
        "trainer.accumulate_grad_batches=1 or compile=reduce-overhead"
    )
    check_capture(cuda=True, world_size=1, accumulate=1)


def test_the_module_takes_capture_as_its_own_setting_and_summarises_it():
    from diffusion_lab.compile_policy import compile_mode
    from diffusion_lab.module import DiffusionModule
    from diffusion_lab.training import startup_parts

    assert compile_mode("capture") == "capture"
    module = DiffusionModule(TwoInputNet(), None, None, None, None, None, compile="capture")
    assert isinstance(module.captured, CapturedNet) and module.captured.net is module.net
    # no fused norm in this network: nothing to build before the capture
    assert module.captured._build is None
    spec = dict(
        in_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(), image_size=8,
        groups=4,
    )  # fmt: skip
    with_norm = DiffusionModule(
        UNet(**spec, fused_norm="auto"), None, None, None, None, None, compile="capture"
    )
    assert with_norm.captured._build is build_kernels_at_once  # the fused op's kernels, before the capture
    unet_off = DiffusionModule(
        UNet(**spec, fused_norm="false"), None, None, None, None, None, compile="capture"
    )
    assert unet_off.captured._build is None  # its GroupNormSiLU layers take PyTorch's path only
    assert DiffusionModule(TwoInputNet(), None, None, None, None, None).captured is None
    result = {"first_step_s": 2.0, "capture_s": 1.2, "capture_fallbacks": 0, "graph_replays": 9}
    assert startup_parts(result) == "first step 2.0 s; capturing CUDA graphs 1.2 s"
    result["capture_fallbacks"] = 3
    assert startup_parts(result).endswith("1.2 s, 3 training calls of another shape run uncaptured")
    result["capture_build_s"] = 0.7
    assert startup_parts(result).endswith(
        "capturing CUDA graphs 1.2 s, of which 0.7 s building the fused norm op's kernels at once, 3 training "
        "calls of another shape run uncaptured"
    )


def test_the_builder_runs_a_forward_and_backward_on_the_capture_inputs_first_and_leaves_grads_alone():
    torch.manual_seed(0)
    net, graph = TwoInputNet(), StandInGraph()
    grads = []
    net.lin.weight.register_hook(lambda g: grads.append(g.shape))  # fires in a backward through the weight

    def build(step):
        assert not graph.samples  # before the capture
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        step()
        assert grads == [net.lin.weight.shape]  # a forward and its backward ran
        assert all(torch.equal(before[n], p) for n, p in net.named_parameters())
        return 0.5

    captured = CapturedNet(net, graph=graph, device="cpu", build=build)
    x, t = batch()
    captured(x, t)
    assert len(graph.samples) == 1 and captured.stats()["capture_build_s"] == 0.5
    assert all(p.grad is None for p in net.parameters())  # the builder's backward left no gradient behind
    captured(*batch())  # one build: the first call's
    assert captured.build_s == 0.5 and len(graph.samples) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_a_captured_training_step_matches_the_plain_one_on_the_gpu():
    """Three steps (the capture, then two replays on new inputs), each followed by an optimizer step on both
    copies, so a replay must read the weights as the optimizer left them."""

    from diffusion_lab.nets import UNet

    torch.manual_seed(0)
    spec = dict(in_channels=1, image_size=16, base_channels=32, channel_mult=[1, 2], num_res_blocks=1)
    net = UNet(**spec, attention_resolutions=[8], dropout=0.0, groups=8).cuda()
    with torch.no_grad():  # off the initialisation, whose zero output layer would leave every gradient zero
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    plain = copy.deepcopy(net)
    captured = CapturedNet(net)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (net, plain)]
    for _ in range(3):
        x, t = torch.randn(16, 1, 16, 16, device="cuda"), torch.randint(0, 1000, (16,), device="cuda")
        for model, call in ((net, captured), (plain, plain)):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cuda", torch.bfloat16):
                (call(x, t).float() - x).square().mean().backward()
        grads = [p.grad for p in net.parameters()]
        assert max(float(g.abs().max()) for g in grads) > 0
        # The same kernels replayed; only reductions with atomics may order their additions differently.
        torch.testing.assert_close(grads, [p.grad for p in plain.parameters()], atol=1e-4, rtol=1e-3)
        for opt in optimizers:
            opt.step()
    assert captured.replays == 3 and captured.fallbacks == 0


def test_a_cpu_run_asking_for_capture_is_refused_before_anything_is_written(tmp_path):
    from conftest import small_train_cfg
    from diffusion_lab.training import check_config

    with pytest.raises(UserError, match=r"^compile=capture records CUDA graphs and needs a CUDA device"):
        check_config(small_train_cfg(tmp_path / "run", "compile=capture"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_captured_fit_replays_every_training_step_and_validates_on_the_plain_network(
    tmp_path, monkeypatch, channels_last
):
    """A whole Lightning fit with compile=capture, the CUDA capture stood in for on the CPU: the first training step
    captures (after one build pass for a UNet with fused norms), every step replays, validation and the final
    samples run the plain network, the checkpoint holds the plain network's weights, the summary reports it; with
    channels_last too (the NHWC network's steps keep one signature: no fallback)."""
    from functools import partial

    from conftest import small_train_cfg
    from diffusion_lab import module as module_mod
    from diffusion_lab import training
    from diffusion_lab.build import load_checkpoint
    from diffusion_lab.train import train

    graph = StandInGraph()
    monkeypatch.setattr(training, "check_capture", lambda *a, **k: None)  # the CPU stands in for the GPU
    monkeypatch.setattr(module_mod, "check_capture", lambda *a, **k: None)
    monkeypatch.setattr(module_mod, "CapturedNet", partial(CapturedNet, graph=graph, device="cpu"))
    steps = 4
    cfg = small_train_cfg(
        tmp_path / "run", "compile=capture", "model=unet_small", f"trainer.max_steps={steps}",
        "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "callbacks.checkpoint.every_n_train_steps=2",
        f"channels_last={str(channels_last).lower()}",
    )  # fmt: skip
    result = train(cfg)
    assert result["global_step"] == steps
    assert "val/loss" in result["metrics"]  # validation ran; no replay counted for it: the plain network
    assert len(graph.samples) == 1 and graph.replays == steps  # one capture, every training step replayed
    assert (result["graph_replays"], result["capture_fallbacks"]) == (steps, 0)
    assert "capture_build_s" in result  # unet_small's norms are fused=auto: a build pass ran first
    parts, _, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert not any("forward" in vars(m) for m in parts.net.modules())  # no graphed forward left on a module
