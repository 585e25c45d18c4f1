"""The benchmark's CPU-runnable paths: model costs, and one tiny eager pass of each workload (marked slow)."""

from __future__ import annotations

import json

import pytest

from diffusion_lab import bench


def test_model_costs_report_params_and_flops(capsys) -> None:
    rows = bench.main(["--models", "unet_ddpm_cifar,dit_s"])
    by_name = {r["model"]: r for r in rows}
    assert by_name["unet_ddpm_cifar"]["params"] == 35_746_307  # Ho et al.'s CIFAR-10 network
    assert by_name["dit_s"]["params"] == 32_471_436
    # Ho's network: about 6.2 GMACs per 32x32 image forward, i.e. ~12.4 GFLOPs.
    assert 11.0 < by_name["unet_ddpm_cifar"]["gflops_forward_per_image"] < 14.0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["model"] for line in lines] == ["unet_ddpm_cifar", "dit_s"]


def test_tiny_eager_pass_prints_json_lines_and_ratios(capsys) -> None:
    rows = bench.main(
        [
            "--systems",
            "ours",
            "--variants",
            "eager",
            "--batch",
            "1",
            "--warmup",
            "0",
            "--iters",
            "1",
            "--sample-batch",
            "1",
            "--sample-steps",
            "1",
            "--sample-iters",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert {r["workload"] for r in rows} == {"train", "sample"}
    assert all(r["img_per_s"] > 0 for r in rows)
    out = capsys.readouterr().out.splitlines()
    assert "ratios" in json.loads(out[-1])


def test_variant_names_map_to_compile_modes() -> None:
    assert bench._compile_mode("eager") is None and bench._compile_mode("eager+cl") is None
    assert bench._compile_mode("compile") == "default"
    assert bench._compile_mode("compile-ro+cl") == "reduce-overhead"
    assert bench._compile_mode("compile-ma") == "max-autotune-no-cudagraphs"
    assert bench._compile_mode("cl+compile-max") == "max-autotune"
    with pytest.raises(KeyError):
        bench._compile_mode("compile-fast")


def test_lo_part_forces_inductors_layout_optimization(monkeypatch) -> None:
    seen: list = []
    monkeypatch.setattr(bench.torch, "compile", lambda net, options=None: seen.append(options) or net)
    for variant in ("eager", "compile", "compile-ro+cl", "compile-ro+lo", "cl+lo+compile-max"):
        bench._compile(bench.nn.Identity(), variant)
    assert seen == [
        {},
        {"triton.cudagraphs": True},
        {"triton.cudagraphs": True, "force_layout_optimization": True},
        {
            "max_autotune": True,
            "triton.cudagraphs": True,
            "coordinate_descent_tuning": True,
            "force_layout_optimization": True,
        },
    ]


def test_bound_variant_strips_every_norm_and_dropout_and_keeps_the_convolutions() -> None:
    import torch
    from torch import nn

    net = bench.ho_unet()
    convs = {n: p.shape for n, p in net.named_parameters() if "conv" in n or "qkv" in n}
    stripped = bench.strip_to_bound(net)
    kinds = {type(m) for m in stripped.modules()}
    assert nn.GroupNorm not in kinds and nn.Dropout not in kinds
    assert {n: p.shape for n, p in stripped.named_parameters() if "conv" in n or "qkv" in n} == convs
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([1, 500])
    assert stripped(x, t).shape == x.shape


def test_fn_variant_switches_every_norm_of_ours_to_the_fused_kernels_and_keeps_its_outputs() -> None:
    import torch

    from diffusion_lab.nets.fused_norm import GroupNormSiLU

    net = bench.ho_unet().eval()
    norms = [m for m in net.modules() if isinstance(m, GroupNormSiLU)]
    assert norms and {m.fused for m in norms} == {"false"}  # Ho et al.'s network: PyTorch's norm by default
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([1, 500])
    before = net(x, t)
    prepared = bench._prepare(net, "compile-ro+cl+fn", torch.device("cpu"))
    # the kernels on CUDA (true: in sampling too); on this CPU auto, PyTorch's path, same values
    assert {m.fused for m in norms} == {"auto"}
    torch.testing.assert_close(prepared(x, t), before)
    assert bench.use_fused_norm(torch.nn.Conv2d(3, 3, 1)) == 0
    assert bench.use_fused_norm(net) == len(norms) and {m.fused for m in norms} == {"true"}  # as on CUDA


def test_ratios_take_the_best_usable_variant_and_leave_bounds_out() -> None:
    rows = [
        {"workload": "train", "system": "ours", "variant": "compile", "img_per_s": 300.0},
        {"workload": "train", "system": "ours", "variant": "compile+bound", "img_per_s": 900.0},
        {"workload": "train", "system": "ours", "variant": "eager", "img_per_s": 100.0},
        {"workload": "train", "system": "diffusers", "variant": "compile", "img_per_s": 150.0},
        {"workload": "train", "system": "diffusers", "variant": "compile+bound", "error": "x"},
    ]
    assert bench.ours_over_peer(rows, ["train"]) == {"train_ours_over_diffusers": 2.0}
    # with several peer settings: the ratio to its best, and to each
    rows.append({"workload": "train", "system": "diffusers", "variant": "compile-ro", "img_per_s": 250.0})
    assert bench.ours_over_peer(rows, ["train"]) == {
        "train_ours_over_diffusers": 1.2,
        "train_ours_over_diffusers[compile]": 2.0,
        "train_ours_over_diffusers[compile-ro]": 1.2,
    }
