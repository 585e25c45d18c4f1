"""benchmarks/run.py: the quality suite's commands, the manifest and JSON lines, the summary, bad suites."""

from __future__ import annotations

import datetime
import hashlib
import importlib
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from diffusion_lab.compile_policy import CACHE_COUNTERS
from scripts import load_script

T_975_2 = 4.302652729911275  # Student t, 97.5th percentile, 2 degrees of freedom (statistical tables)


@pytest.fixture(scope="module")
def runner():
    return load_script("run")


def quality_dry_run(tmp_path, *extra: str) -> list[str]:
    """The quality suite's arguments for a dry run into ``tmp_path``."""
    return ["quality", "--dry-run", "--out", str(tmp_path), "--features", str(tmp_path / "clf.pt"), *extra]


def dry_run_lines(runner, capsys, tmp_path, *extra: str) -> dict[str, list[str]]:
    assert runner.main(quality_dry_run(tmp_path, *extra)) == 0
    by_run: dict[str, list[str]] = {}
    for line in capsys.readouterr().out.splitlines():
        label, command = line.split(": ", 1)
        by_run.setdefault(label, []).append(command)
    return by_run


def test_quality_runs_three_seeds_of_each_system(runner, capsys, tmp_path):
    from run_suites import WARM_UP

    by_run = dry_run_lines(runner, capsys, tmp_path)
    assert by_run.pop("prepare") == [
        f"{runner.sys.executable} -m diffusion_lab.features epochs=5 out={tmp_path / 'clf.pt'}",
        shlex.join([runner.sys.executable, "-c", WARM_UP]),
    ]
    systems = ("ours", "diffusers", "lucidrains")
    assert sorted(by_run) == sorted(f"{s}_s{seed}" for s in systems for seed in (0, 1, 2))
    for seed in (0, 1, 2):
        train, evaluate = by_run[f"ours_s{seed}"]
        assert "diffusion_lab.train experiment=fmnist_fast" in train and "diffusion_lab.evaluate" in evaluate
        assert f" seed={seed} " in train and f" seed={seed} " in evaluate
        for peer in ("diffusers", "lucidrains"):
            (command,) = by_run[f"{peer}_s{seed}"]
            assert f"--peer {peer} --seed {seed} " in command


def test_every_system_trains_with_cuda_graphs_no_dropout_and_the_same_budget(runner, capsys, tmp_path):
    by_run = dry_run_lines(runner, capsys, tmp_path)
    by_run.pop("prepare")
    for label, commands in by_run.items():
        training = commands[0]
        if label.startswith("ours"):
            settings = ["compile=reduce-overhead", "model.dropout=0.0", "data.batch_size=128"]
            settings += ["optimizer.lr=2e-4", "trainer.max_time=00:00:04:00", "lr_scheduler.warmup_steps=200"]
        else:
            settings = ["--compile-mode reduce-overhead", "--dropout 0.0", "--batch 128", "--lr 2e-4"]
            settings += ["--seconds 240", "--lr-warmup-steps 200", "--ema-warmup"]
        for setting in settings:
            assert f" {setting} " in training, (label, setting)


def test_ours_overrides_come_last_in_ours_training_and_are_disclosed(runner, capsys, tmp_path):
    extra = ("--ours-override", "trainer.limit_val_batches=0", "--ours-override", "model.fused_norm=auto")
    by_run = dry_run_lines(runner, capsys, tmp_path, *extra)
    for seed in (0, 1, 2):
        train, evaluate = by_run[f"ours_s{seed}"]
        words = shlex.split(train)
        assert words[-3:-1] == [
            "trainer.limit_val_batches=0",
            "model.fused_norm=auto",
        ]  # after the pinned ones
        assert words[-1].startswith("hydra.run.dir=") and "limit_val_batches" not in evaluate
        assert "limit_val_batches" not in by_run[f"diffusers_s{seed}"][0]
    runs = runner.SUITES["quality"](runner.parse_args([*quality_dry_run(tmp_path, *extra)]))
    ours = [r.settings for r in runs if r.system == "ours"]
    assert {tuple(s["ours_overrides"]) for s in ours} == {(extra[1], extra[3])}
    assert all("ours_overrides" not in r.settings for r in runs if r.system != "ours")
    # the side note, which describes the pinned command, says what supersedes it
    assert {s["side"].rsplit(": ", 1)[-1] for s in ours} == {f"{extra[1]} {extra[3]}"}
    from run_suites import SIDE_NOTES

    plain = runner.SUITES["quality"](runner.parse_args(quality_dry_run(tmp_path)))
    # the running series keeps its digest
    assert all(
        "ours_overrides" not in r.settings and r.settings["side"] == SIDE_NOTES[r.system] for r in plain
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ("--ours-override", "seed=7"),
            "run.py: --ours-override seed: it is set by the runner for each run; keys it sets: seed, "
            "trainer.max_time, compile_cache, data.root, hydra.run.dir",
        ),
        (
            ("--ours-override", "++trainer.max_time=00:00:10:00"),  # the budget is --seconds, for all
            "run.py: --ours-override trainer.max_time: it is set by the runner for each run; keys it sets: seed, "
            "trainer.max_time, compile_cache, data.root, hydra.run.dir",
        ),
        (
            ("--ours-override", "trainer.limit_val_batches"),
            "run.py: --ours-override 'trainer.limit_val_batches' is not KEY=VALUE (a Hydra override of ours' "
            "training)",
        ),
    ],
)
def test_a_bad_ours_override_is_refused_in_one_line(runner, capsys, tmp_path, extra, message):
    assert runner.main(quality_dry_run(tmp_path, *extra)) == 2
    assert capsys.readouterr().err.strip() == message


def test_ours_overrides_belong_to_the_quality_suite(runner, capsys, tmp_path):
    assert runner.main(["selftest", "--dry-run", "--out", str(tmp_path), "--ours-override", "a=1"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "run.py: --ours-override applies to the quality suite, not selftest"
    )


def test_a_folder_of_another_series_is_refused(runner, capsys, tmp_path):
    row = {"label": "ours_s0", "system": "ours", "seed": 0, "settings": {"batch": 128}, "result": {}}
    (tmp_path / "quality.jsonl").write_text(json.dumps(row) + "\n")
    assert runner.main(quality_dry_run(tmp_path)) == 0  # the same series (no overrides) continues
    capsys.readouterr()
    assert runner.main(quality_dry_run(tmp_path, "--ours-override", "trainer.limit_val_batches=0")) == 2
    assert capsys.readouterr().err.strip() == (
        "run.py: --ours-override trainer.limit_val_batches=0: "
        f"{tmp_path / 'quality.jsonl'} holds ours run with none; a series keeps one setting: give a new --out"
    )


def test_a_capture_series_runs_every_system_uncompiled_and_says_so(runner, capsys, tmp_path):
    """--start capture: ours with compile=capture and auto's op, each peer with --compile-mode capture, every row's
    settings marked; the default series' commands and settings stay as recorded."""
    from run_suites import CAPTURE_SETTINGS, SHARED, SIDE_NOTES

    by_run = dry_run_lines(runner, capsys, tmp_path, "--start", "capture")
    by_run.pop("prepare")
    for label, commands in by_run.items():
        training = f"{commands[0]} "
        if label.startswith("ours"):
            assert " compile=capture " in training and " model.fused_norm=auto " in training
            assert "reduce-overhead" not in training and "fused_norm=true" not in training
        else:
            assert " --compile-mode capture --sample-compile-mode none " in training
    runs = runner.SUITES["quality"](runner.parse_args(quality_dry_run(tmp_path, "--start", "capture")))
    assert {r.settings["start"] for r in runs} == {"capture"}
    assert {r.settings["compile"] for r in runs} == {CAPTURE_SETTINGS["compile"]}
    assert {r.settings["side"] for r in runs if r.system == "ours"} != {SIDE_NOTES["ours"]}
    plain = runner.SUITES["quality"](runner.parse_args(quality_dry_run(tmp_path)))
    assert all("start" not in r.settings and r.settings["compile"] == SHARED["compile"] for r in plain)


def test_a_folder_of_the_other_start_is_refused_and_start_belongs_to_quality(runner, capsys, tmp_path):
    row = {"label": "ours_s0", "system": "ours", "seed": 0, "settings": {"start": "capture"}, "result": {}}
    (tmp_path / "quality.jsonl").write_text(json.dumps(row) + "\n")
    assert runner.main(quality_dry_run(tmp_path, "--start", "capture")) == 0  # the same series continues
    capsys.readouterr()
    assert runner.main(quality_dry_run(tmp_path)) == 2
    assert capsys.readouterr().err.strip() == (
        f"run.py: --start compile: {tmp_path / 'quality.jsonl'} holds runs of --start capture; a series keeps one "
        "setting: give a new --out"
    )
    assert runner.main(["selftest", "--dry-run", "--out", str(tmp_path / "s"), "--start", "capture"]) == 2
    assert capsys.readouterr().err.strip() == "run.py: --start applies to the quality suite, not selftest"


def test_every_run_starts_from_its_own_empty_compile_caches(runner, capsys, tmp_path):
    by_run = dry_run_lines(runner, capsys, tmp_path, "--work", str(tmp_path / "scratch"))
    by_run.pop("prepare")
    inductor, triton = set(), set()
    for label, commands in by_run.items():
        for command in commands:
            env = dict(re.findall(r"(TORCHINDUCTOR_CACHE_DIR|TRITON_CACHE_DIR)=(\S+)", command))
            assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "scratch" / label / "cache" / "inductor")
            assert env["TRITON_CACHE_DIR"] == str(tmp_path / "scratch" / label / "cache" / "triton")
            inductor.add(env["TORCHINDUCTOR_CACHE_DIR"])
            triton.add(env["TRITON_CACHE_DIR"])
            if label.startswith("ours"):  # the framework's own cache setting points at the same fresh folder
                assert f" compile_cache={env['TORCHINDUCTOR_CACHE_DIR']} " in command
    assert len(inductor) == len(triton) == 9
    for run in runner.SUITES["quality"](runner.parse_args(["quality", "--out", str(tmp_path)])):
        assert set(run.fresh_dirs) == {Path(v) for v in run.env.values()}


def test_selftest_writes_json_lines_and_the_manifest(runner, tmp_path):
    import torch

    stale = tmp_path / "runs" / "selftest" / "cache" / "inductor" / "stale.bin"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    assert runner.main(["selftest", "--out", str(tmp_path)]) == 0
    (row,) = [json.loads(line) for line in (tmp_path / "selftest.jsonl").read_text().splitlines()]
    assert row["system"] == "selftest" and row["result"]["value"] == 1
    assert row["result"]["cache"] == str(stale.parent)
    assert not stale.exists()  # the cache folder was emptied before the run

    record = json.loads((tmp_path / "manifest.json").read_text())
    assert record["systems"] == {"selftest": {"value": 1}}
    (manifest,) = record["invocations"]
    date = datetime.datetime.fromisoformat(manifest["date_utc"])
    assert date.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - date).total_seconds()) < 600
    assert re.fullmatch(r"[0-9a-f]{40}", manifest["git"]["sha"])
    assert isinstance(manifest["git"]["dirty"], bool)
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["code_sha256"])
    # each row names the code of the call that measured it: the package digest its runs record themselves
    from diffusion_lab.provenance import code_sha256

    assert row["code"] == {key: manifest[key] for key in ("package_sha256", "scripts_sha256")}
    assert row["code"]["package_sha256"] == code_sha256()
    devices = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    assert row["gpu"] == (", ".join(devices) or "no GPU")  # and the GPU type
    assert manifest["versions"]["python"] == platform.python_version()
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["cpu_count"] == os.cpu_count()
    assert manifest["gpu"]["torch_devices"] == [
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
    ]
    (ran,) = manifest["runs"]
    assert ran["returncode"] == 0 and ran["command"] == row["commands"][0]["command"]
    assert ran["command"].startswith(f"TORCHINDUCTOR_CACHE_DIR={stale.parent} ")


def test_a_second_call_continues_the_suite_without_rerunning_what_has_a_result(runner, tmp_path):
    assert runner.main(["selftest", "--out", str(tmp_path)]) == 0
    assert runner.main(["selftest", "--out", str(tmp_path)]) == 0
    assert len((tmp_path / "selftest.jsonl").read_text().splitlines()) == 1
    first, second = json.loads((tmp_path / "manifest.json").read_text())["invocations"]
    assert len(first["runs"]) == 1 and second["runs"] == []


def test_gpus_puts_each_wave_of_runs_on_distinct_devices(runner, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    argv = quality_dry_run(tmp_path, "--gpus", "3")
    assert runner.main(argv) == 0
    devices = {}
    for line in capsys.readouterr().out.splitlines():
        label, command = line.split(": ", 1)
        if label == "prepare":
            continue
        devices[label] = re.search(r"CUDA_VISIBLE_DEVICES=(\d+)", command).group(1)
        assert f"OMP_NUM_THREADS={max(1, os.cpu_count() // 3)} " in command
    for seed in (0, 1, 2):  # a wave is one seed of every system, at the same time on the same host
        assert sorted(devices[f"{s}_s{seed}"] for s in ("ours", "diffusers", "lucidrains")) == ["0", "1", "2"]


def test_each_system_runs_once_first_once_second_and_once_last_over_three_seeds(runner, capsys, tmp_path):
    by_run = dry_run_lines(runner, capsys, tmp_path)
    by_run.pop("prepare")
    labels = list(by_run)  # in the order the runs run
    positions = {s: [] for s in ("ours", "diffusers", "lucidrains")}
    for seed in (0, 1, 2):
        order = [label.rsplit("_s", 1)[0] for label in labels[3 * seed : 3 * seed + 3]]
        assert all(label.endswith(f"_s{seed}") for label in labels[3 * seed : 3 * seed + 3])  # seed-major
        for position, system in enumerate(order):
            positions[system].append(position)
    assert {system: sorted(p) for system, p in positions.items()} == {s: [0, 1, 2] for s in positions}
    assert labels[:3] == ["ours_s0", "diffusers_s0", "lucidrains_s0"]  # seed 0 keeps the first record's order


def test_the_warm_up_loads_torch_and_leaves_the_compile_caches_empty(runner, tmp_path):
    (tmp_path / "clf.pt").write_bytes(b"")  # present: the warm-up is all there is to prepare
    opts = runner.parse_args(["quality", "--out", str(tmp_path), "--features", str(tmp_path / "clf.pt")])
    (command,) = runner.prepare_commands("quality", opts)
    assert runner.prepare_commands("selftest", opts) == []
    # the startup suite's cold starts are measured on a warmed machine too
    assert runner.prepare_commands("startup", opts) == [command]
    caches = {
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "TRITON_CACHE_DIR": str(tmp_path / "triton"),
    }
    done = subprocess.run(command, env={**os.environ, **caches}, capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout) == (0, "warm-up done\n"), done.stderr
    assert not any(Path(folder).exists() and any(Path(folder).iterdir()) for folder in caches.values())


def test_limit_runs_only_the_first_pending_runs(runner, capsys, tmp_path):
    argv = quality_dry_run(tmp_path, "--limit", "2")
    assert runner.main(argv) == 0
    labels = [line.split(": ", 1)[0] for line in capsys.readouterr().out.splitlines()]
    assert list(dict.fromkeys(labels)) == ["prepare", "ours_s0", "diffusers_s0"]


@pytest.mark.parametrize("only", [["net_cudnn_heuristics", "net"], ["net", "net_cudnn_heuristics"]])
def test_only_runs_the_named_settings_in_the_order_named(runner, capsys, tmp_path, only):
    argv = ["startup", "--dry-run", "--out", str(tmp_path), "--only", ",".join(only)]
    assert runner.main(argv) == 0
    labels = [line.split(": ", 1)[0] for line in capsys.readouterr().out.splitlines()]
    assert labels == ["prepare"] + [only[0]] * 3 + [only[1]] * 3  # the warm-up; cold, warm, warm again each


def test_only_with_an_unknown_label_is_one_line_listing_the_runs(runner, capsys, tmp_path):
    argv = ["startup", "--dry-run", "--out", str(tmp_path), "--only", "net,nett"]
    assert runner.main(argv) == 2
    assert capsys.readouterr().err == (
        "run.py: --only nett: no such run in suite startup; its runs: net, net_foreground_writes, "
        "net_cudnn_heuristics, net_fused_norm, fused_true, fused_auto, blocks, capture, capture_no_op, "
        "capture_channels_last, fused_auto_own_ptxas, capture_first_use\n"
    )


def test_unknown_suite_is_one_line_listing_the_suites(runner, capsys):
    assert runner.main(["nope", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == "run.py: unknown suite 'nope'; choose one of quality, fused_norm, startup, precompile, phases, selftest\n"
    )


def records(system: str, fds: list[float]) -> list[dict]:
    metrics = {"kid": 0.01, "steps": 100, "img_per_s": 9.0}
    return [
        {"label": f"{system}_s{seed}", "system": system, "seed": seed, "metrics": {"fd": fd, **metrics}}
        for seed, fd in enumerate(fds)
    ]


def test_the_summary_names_the_code_every_run_ran_and_warns_when_it_differs(runner):
    from run_summary import summary, text

    rows = records("ours", [1.0, 2.0]) + records("diffusers", [3.0, 4.0])
    for row, sha in zip(rows, ["a" * 64, "b" * 64, "a" * 64, "b" * 64]):
        row["code"] = {"package_sha256": sha, "scripts_sha256": "c" * 64}
    rows[3]["code"] = None  # a row from a call that recorded no digest
    result = summary(rows)
    assert result["code"] == {
        "a" * 12: ["ours_s0", "diffusers_s0"],
        "b" * 12: ["ours_s1"],
        "not recorded": ["diffusers_s1"],
    }
    assert text(result).splitlines()[-2] == (
        f"code: WARNING, the runs ran 3 versions ({'a' * 12}: ours_s0, diffusers_s0; {'b' * 12}: ours_s1; "
        "not recorded: diffusers_s1)"
    )
    for row in rows:
        row["code"] = {"package_sha256": "a" * 64}
    assert text(summary(rows)).splitlines()[-2] == f"code: every run ran one version ({'a' * 12})"
    for row in rows:
        del row["code"]
    assert text(summary(rows)).splitlines()[-2:] == [
        "code: not recorded by any run's call",
        "settings: not recorded by any run",
    ]


def test_the_summary_names_the_gpu_type_every_run_ran_on_and_warns_when_they_differ(runner):
    from run_summary import summary, text

    rows = records("ours", [1.0, 2.0]) + records("lucidrains", [3.0, 4.0])
    assert "gpus" not in summary(
        rows
    )  # rows that name no GPU: the summaries written before rows did are kept
    for row, gpu in zip(rows, ["NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA H200", None]):
        row["gpu"] = gpu
    result = summary(rows)
    assert result["gpus"] == {
        "NVIDIA H200": ["ours_s0", "lucidrains_s0"],
        "NVIDIA H100 80GB HBM3": ["ours_s1"],
        "not recorded": ["lucidrains_s1"],
    }
    assert text(result).splitlines()[-1] == (
        "gpu: WARNING, the runs ran on 3 GPU types (NVIDIA H200: ours_s0, lucidrains_s0; NVIDIA H100 80GB HBM3: "
        "ours_s1; not recorded: lucidrains_s1); compare runs of one type only"
    )
    for row in rows:
        row["gpu"] = "NVIDIA H200"
    assert text(summary(rows)).splitlines()[-1] == "gpu: every run ran on one GPU type (NVIDIA H200)"


def test_a_call_on_another_gpu_type_than_its_folders_rows_warns_at_its_start(runner, capsys, tmp_path):
    kept = {"suite": "selftest", "label": "kept", "system": "selftest", "seed": 0, "gpu": "NVIDIA H200"}
    (tmp_path / "selftest.jsonl").write_text(json.dumps({**kept, "result": {"value": 1}}) + "\n")
    assert runner.main(["selftest", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "selftest.jsonl").read_text().splitlines()]
    here = rows[-1]["gpu"]
    assert here != "NVIDIA H200" and rows[-1]["label"] == "selftest"
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        f"[run] WARNING: {tmp_path} holds rows measured on NVIDIA H200, this call runs on {here}: runs of "
        "different GPU types do not compare (the summary lists the runs by GPU)"
    )
    assert runner.main(["selftest", "--out", str(tmp_path), "--limit", "0"]) == 0
    assert "WARNING" in capsys.readouterr().err  # every call on the folder says it again


def test_the_summary_warns_when_a_systems_seeds_ran_different_settings(runner):
    from run_summary import summary, text

    rows = records("ours", [1.0, 2.0, 3.0]) + records("diffusers", [3.0, 4.0, 5.0])
    for row in rows:
        row["settings"] = {"batch": 128, "seconds": 240.0}
    assert text(summary(rows)).splitlines()[-1] == "settings: every system ran one setting over its seeds"
    rows[2]["settings"] = {"batch": 128, "seconds": 300.0}  # ours' last seed trained longer
    del rows[5]["settings"]  # a row from before settings were written
    result = summary(rows)
    same, longer = (
        hashlib.sha256(json.dumps({"batch": 128, "seconds": s}, sort_keys=True).encode()).hexdigest()[:12]
        for s in (240.0, 300.0)
    )
    assert result["settings"] == {
        "ours": {same: ["ours_s0", "ours_s1"], longer: ["ours_s2"]},
        "diffusers": {same: ["diffusers_s0", "diffusers_s1"], "not recorded": ["diffusers_s2"]},
    }
    assert result["settings_differ"] == {"ours": ["seconds"]}  # a row without settings names no key
    assert text(result).splitlines()[-1] == (
        f"settings: WARNING, a system's seeds ran different settings: ours ran 2 differing in seconds ({same}: "
        f"ours_s0, ours_s1; {longer}: ours_s2) / diffusers ran 2 ({same}: diffusers_s0, diffusers_s1; "
        "not recorded: diffusers_s2)"
    )
    rows[0]["settings"]["note"] = "reworded"  # a key only one seed disclosed differs too
    assert summary(rows)["settings_differ"] == {"ours": ["note", "seconds"]}


def test_summary_interval_and_verdict_match_a_hand_computation(runner):
    from run_summary import summary, text

    rows = records("ours", [10.0, 12.0, 14.0]) + records("diffusers", [30.0, 31.0, 32.0])
    rows += records("lucidrains", [14.0, 15.0, 16.0])
    result = summary(rows)
    ours = result["systems"]["ours"]["fd"]
    assert ours["mean"] == pytest.approx(12.0)
    assert ours["half_width"] == pytest.approx(T_975_2 * 2.0 / math.sqrt(3))  # sd 2 over 3 seeds
    assert result["systems"]["diffusers"]["fd"]["half_width"] == pytest.approx(T_975_2 / math.sqrt(3))
    # ours 12 ± 4.97 vs diffusers 31 ± 2.48: apart; vs lucidrains 15 ± 2.48: overlapping
    assert result["ours_lower_fd_separated"] == {"diffusers": True, "lucidrains": False}
    lines = text(result).splitlines()
    assert "vs diffusers: ours lower mean FD with non-overlapping 95% CIs: yes" in lines
    # 12 (sd 2) against 15 (sd 1): t_{.975,m-1}·3/√m < 3 first at m = 7 (2.447 / 2.646; 2.571 / 2.449 at 6)
    assert result["seeds_to_part"] == {"diffusers": 3, "lucidrains": 7}
    assert "vs lucidrains: ours lower mean FD with non-overlapping 95% CIs: no (n>=7 at this spread)" in lines
    # paired by seed the lucidrains gap is separated: differences -4, -3, -2 (sd 1) against unpaired spreads of 2
    paired = result["ours_minus_peer_fd_paired"]
    assert paired["lucidrains"]["mean"] == pytest.approx(-3.0)
    assert paired["lucidrains"]["half_width"] == pytest.approx(T_975_2 / math.sqrt(3))
    assert paired["lucidrains"]["verdict"] == "better"
    assert f"ours - lucidrains FD paired by seed: -3.0 ± {T_975_2 / math.sqrt(3):.1f} (n=3): better" in lines


def test_a_paired_difference_not_yet_separated_says_how_many_seeds_would_separate_it(runner):
    from run_summary import summary, text

    # differences -1, 0, -2: mean -1, sd 1; t_{0.975, m-1} / sqrt(m) < 1 first at m = 7 (2.447 / 2.646)
    result = summary(records("ours", [10.0, 12.0, 14.0]) + records("diffusers", [11.0, 12.0, 16.0]))
    paired = result["ours_minus_peer_fd_paired"]["diffusers"]
    assert (paired["verdict"], paired["seeds_to_separate"]) == ("not separated", 7)
    line = f"ours - diffusers FD paired by seed: -1.0 ± {T_975_2 / math.sqrt(3):.1f} (n=3): not separated"
    assert line + " (n>=7 at this spread)" in text(result).splitlines()
    del paired["seeds_to_separate"]  # a summary written before the projection existed: no projection
    assert line in text(result).splitlines()


def test_an_overlap_says_how_many_seeds_would_part_it_only_where_ours_mean_is_the_lower(runner):
    from run_summary import summary, text

    result = summary(records("ours", [15.0, 16.0, 17.0]) + records("diffusers", [10.0, 12.0, 14.0]))
    assert result["seeds_to_part"] == {"diffusers": None}
    assert "vs diffusers: ours lower mean FD with non-overlapping 95% CIs: no" in text(result).splitlines()
    result = summary(records("ours", [0.30, 0.50]) + records("diffusers", [0.31, 0.52]))
    line = "vs diffusers: ours lower mean FD with non-overlapping 95% CIs: no"
    assert line + " (over 100 seeds at this spread)" in text(result).splitlines()
    del result["seeds_to_part"]  # a summary written before the projection existed: no projection
    assert line in text(result).splitlines()


def test_paired_difference_uses_only_the_seeds_both_systems_have(runner):
    from run_summary import summary

    rows = records("ours", [10.0, 12.0, 14.0]) + records("diffusers", [10.5, 12.5])  # seed 2 lost by the peer
    paired = summary(rows)["ours_minus_peer_fd_paired"]["diffusers"]
    assert (paired["mean"], paired["n"]) == (pytest.approx(-0.5), 2)
    assert paired["half_width"] == pytest.approx(0.0)  # both differences -0.5
    assert paired["verdict"] == "better"


def test_one_seed_gives_no_verdict(runner):
    from run_summary import summary

    result = summary(records("ours", [1.0]) + records("diffusers", [50.0]))
    assert result["ours_lower_fd_separated"] == {"diffusers": False}


def test_ours_result_is_read_from_the_train_summary_and_the_evaluation_row(runner, capsys, tmp_path):
    from diffusion_lab.training import print_summary

    print_summary(
        {
            "output_dir": "x",
            "global_step": 2400,
            "metrics": {},
            "train_img_per_s": 1500.0,
            "wall_time_s": 250.0,
        }
    )
    train_out = capsys.readouterr().out
    row = {"steps": 100, "fd_classifier": 3.5, "kd_classifier_mean": 0.002, "precision": 0.7}
    (run,) = [r for r in runner.SUITES["quality"](runner.parse_args(["quality", "--out", str(tmp_path)]))][:1]
    ((result, metrics),) = runner.results(run, [train_out, "progress\n" + json.dumps(row) + "\n"], 240.0)
    assert result["evaluate"] == row
    assert metrics == {"fd": 3.5, "kid": 0.002, "steps": 2400.0, "img_per_s": 2400 * 128 / 240.0}


def test_quality_suite_writes_the_summary_of_every_result(runner, monkeypatch, capsys, tmp_path):
    from run_suites import Run

    def fake_quality(opts):
        runs = []
        for seed, (ours_fd, peer_fd) in enumerate([(10.0, 30.0), (12.0, 31.0), (14.0, 32.0)]):
            for system, fd in (("ours", ours_fd), ("diffusers", peer_fd)):
                row = {"fd": fd, "kid_mean": 0.01, "steps_trained": 100 + seed, "img_per_s": 50.0}
                command = [runner.sys.executable, "-c", f"print({json.dumps(json.dumps(row))})"]
                runs.append(Run(system, seed, {"dropout": 0.0}, [command], "peer"))
        return runs

    monkeypatch.setitem(runner.SUITES, "quality", fake_quality)
    (tmp_path / "clf.pt").write_bytes(b"")  # present: only the warm-up to prepare
    assert runner.main(["quality", "--out", str(tmp_path), "--features", str(tmp_path / "clf.pt")]) == 0
    assert "vs diffusers: ours lower mean FD with non-overlapping 95% CIs: yes" in capsys.readouterr().out
    written = json.loads((tmp_path / "quality_summary.json").read_text())
    assert written["systems"]["ours"]["fd"]["half_width"] == pytest.approx(T_975_2 * 2.0 / math.sqrt(3))
    assert written["systems"]["diffusers"]["steps"]["mean"] == pytest.approx(101.0)
    assert json.loads((tmp_path / "manifest.json").read_text())["summary"] == written


def test_limit_zero_only_prepares(runner, monkeypatch, tmp_path):
    marker = tmp_path / "prepared"
    command = [runner.sys.executable, "-c", f"open({str(marker)!r}, 'w').write('x')"]
    monkeypatch.setattr(runner, "prepare_commands", lambda suite, opts: [command])
    assert runner.main(["quality", "--out", str(tmp_path), "--limit", "0"]) == 0
    assert marker.read_text() == "x"
    assert not (tmp_path / "quality.jsonl").exists()
    (invocation,) = json.loads((tmp_path / "manifest.json").read_text())["invocations"]
    assert invocation["prepare"][0]["returncode"] == 0 and invocation["runs"] == []


def test_startup_trains_each_setting_cold_then_warm_twice_on_one_cache_emptied_once(runner, tmp_path):
    opts = runner.parse_args(["startup", "--out", str(tmp_path), "--data-root", "/d"])
    runs = {run.label: run for run in runner.SUITES["startup"](opts)}
    assert list(runs) == [
        "net", "net_foreground_writes", "net_cudnn_heuristics", "net_fused_norm", "fused_true", "fused_auto", "blocks",
        "capture", "capture_no_op", "capture_channels_last", "fused_auto_own_ptxas", "capture_first_use",
    ]  # fmt: skip
    for label, run in runs.items():
        cold, warm, again = run.commands
        cache = run.env["TORCHINDUCTOR_CACHE_DIR"]
        assert run.fresh_dirs == [
            Path(cache),
            Path(run.env["TRITON_CACHE_DIR"]),
        ]  # emptied before the cold one
        assert cold[:-1] == warm[:-1] == again[:-1]  # the same training again, only its output folder differs
        assert cold[-1].endswith(f"{label}/cold") and warm[-1].endswith(f"{label}/warm")
        assert again[-1].endswith(f"{label}/warm_again")
        assert f"compile_cache={cache}" in cold and "data.root=/d" in cold
    assert "model.fused_norm=true" in runs["net_fused_norm"].commands[0]
    assert "compile_scope=blocks" in runs["blocks"].commands[0]
    # unet_small's default (auto) fuses on CUDA: the baselines pin the PyTorch path so the pairs compare one thing
    assert "model.fused_norm=false" in runs["net"].commands[0]
    assert "model.fused_norm=false" in runs["blocks"].commands[0]
    # the checkpoint writer is pinned too: the pair net / net_foreground_writes differs in it alone
    writes = {
        label: [o for o in run.commands[0] if o.startswith("checkpoint_writes=")]
        for label, run in runs.items()
    }
    assert writes == {
        "net": ["checkpoint_writes=background"],
        "net_foreground_writes": ["checkpoint_writes=foreground"],
        "net_cudnn_heuristics": ["checkpoint_writes=background"],
        "net_fused_norm": ["checkpoint_writes=background"],
        "fused_true": ["checkpoint_writes=background"],
        "fused_auto": ["checkpoint_writes=background"],
        "blocks": ["checkpoint_writes=background"],
        "capture": ["checkpoint_writes=background"],
        "capture_no_op": ["checkpoint_writes=background"],
        "capture_channels_last": ["checkpoint_writes=background"],
        "fused_auto_own_ptxas": ["checkpoint_writes=background"],
        "capture_first_use": ["checkpoint_writes=background"],
    }
    # capture against fused_auto: the compiler swapped for CUDA-graph capture, nothing else; its pair without the op
    capture, auto = runs["capture"].commands[0], runs["fused_auto"].commands[0]
    assert [o for o in capture if o not in auto and "/capture/" not in o] == ["compile=capture"]
    assert [o for o in auto if o not in capture and "/fused_auto/" not in o] == ["compile=reduce-overhead"]
    # every other setting pins the compile mode its records ran with, whatever fmnist_fast's default
    compiles = {
        label: [o for o in run.commands[0] if o.startswith("compile=")] for label, run in runs.items()
    }
    assert compiles == {
        label: ["compile=capture" if label.startswith("capture") else "compile=reduce-overhead"]
        for label in runs
    }
    no_op = runs["capture_no_op"].commands[0]
    assert [o for o in no_op if o not in capture and "/capture_no_op/" not in o] == ["model.fused_norm=false"]
    nhwc = runs["capture_channels_last"].commands[0]
    assert [o for o in nhwc if o not in capture and "/capture_channels_last/" not in o] == [
        "channels_last=true"
    ]
    assert [o for o in capture if o not in nhwc and "/capture/" not in o] == []
    # fused_auto against its own-ptxas baseline: the same training through the script that leaves ptxas alone
    auto, own = runs["fused_auto"], runs["fused_auto_own_ptxas"]
    assert auto.commands[0][1:3] == ["-m", "diffusion_lab.train"]
    assert own.commands[0][1].endswith("/benchmarks/train_own_ptxas.py")
    assert [
        a.replace("/fused_auto/", "/fused_auto_own_ptxas/") for a in auto.commands[0][3:]
    ] == own.commands[0][2:]
    assert (auto.settings["ptxas_at_start"], own.settings["ptxas_at_start"]) == ("torch's", "triton's own")
    # capture against its first-use baseline: the same training through the script that turns the builder off
    capture, first_use = runs["capture"], runs["capture_first_use"]
    assert first_use.commands[0][1].endswith("/benchmarks/train_build_on_first_use.py")
    assert [
        a.replace("/capture/", "/capture_first_use/") for a in capture.commands[0][3:]
    ] == first_use.commands[0][2:]
    assert (capture.settings["op_kernels"], first_use.settings["op_kernels"]) == (
        "built at once before the capture",
        "built on first use",
    )
    assert all("op_kernels" not in runs[label].settings for label in ("capture_no_op", "fused_auto"))
    # the op everywhere against auto (the op in the compiled step only): they differ in that alone
    true, auto = runs["fused_true"].commands[0], runs["fused_auto"].commands[0]
    differ = [(a, b) for a, b in zip(true, auto, strict=True) if a.replace("fused_true", "fused_auto") != b]
    assert differ == [("model.fused_norm=true", "model.fused_norm=auto")]  # besides their folders
    net, foreground = runs["net"].commands[0], runs["net_foreground_writes"].commands[0]
    assert [o for o in net if o not in foreground and "/net/" not in o] == ["checkpoint_writes=background"]
    # and net / net_cudnn_heuristics in cuDNN's autotuning alone, pinned in both (trainer=gpu now leaves it off)
    assert "trainer.benchmark=true" in net
    heuristics = runs["net_cudnn_heuristics"].commands[0]
    assert [o for o in heuristics if o not in net and "/net_cudnn_heuristics/" not in o] == [
        "trainer.benchmark=false"
    ]


CACHE_KEYS = [key for key, _, _ in CACHE_COUNTERS]


def test_startup_rows_are_read_from_the_train_summary(runner, capsys, tmp_path):
    from diffusion_lab.training import print_summary

    outs = []
    for startup, first, compiling in ((84.4, 61.2, 54.7), (19.3, 9.8, 4.1), (9.0, 4.2, 2.7)):
        result = {"output_dir": "x", "global_step": 2000, "metrics": {}, "train_img_per_s": 7726.0}
        result.update(startup_s=startup, first_step_s=first, compile_s=compiling, graphs=1, wall_time_s=99.0)
        print_summary(
            {
                **result,
                "kernels_s": round(compiling - 3.0, 1),
                **({"passes_s": 9.1} if startup > 50 else {}),  # inductor ran cold only
                "autograd_s": 8.0 if startup > 50 else 1.0,
                "trace_s": 2.4 if startup > 50 else 2.1,
                "checkpoint_write_s": 1.5,
                "checkpoint_background_s": 2.5,
                "validation_runs_s": [6.04, 0.5, 0.3] if startup > 50 else [0.4],
                **dict(zip(CACHE_KEYS, (0, 1, 0, 0, 2, 0) if startup > 50 else (3, 4, 5, 6, 7, 8))),
            }
        )
        outs.append(capsys.readouterr().out)
    (run,) = [r for r in runner.SUITES["startup"](runner.parse_args(["startup"])) if r.label == "net"]
    assert [c[-1].rsplit("/", 1)[1] for c in run.commands] == ["cold", "warm", "warm_again"]  # hydra.run.dir
    (cold, cold_metrics), (warm, warm_metrics), (again, again_metrics) = runner.results(run, outs, 240.0)
    assert cold["start"] == "cold" and warm["start"] == "warm" and again["start"] == "warm_again"
    assert again_metrics == {"startup_s": 9.0, "compile_s": 2.7, "first_step_s": 4.2}
    assert cold_metrics == {"startup_s": 84.4, "compile_s": 54.7, "first_step_s": 61.2}
    assert warm["graphs"] == 1 and warm["checkpoint_write_s"] == 1.5 and warm["steps"] == 2000
    assert warm["checkpoint_background_s"] == 2.5
    assert (cold["kernels_s"], warm["kernels_s"]) == (51.7, 1.1)
    assert (cold["passes_s"], cold["autograd_s"], cold["trace_s"]) == (9.1, 8.0, 2.4)
    assert (warm["autograd_s"], warm["trace_s"]) == (1.0, 2.1) and "passes_s" not in warm
    assert (cold["validations"], cold["validation_s"], cold["validation_first_s"]) == (3, 6.8, 6.0)
    assert (warm["validations"], warm["validation_s"]) == (1, 0.4) and "validation_first_s" not in warm
    assert warm_metrics == {"startup_s": 19.3, "compile_s": 4.1, "first_step_s": 9.8}
    assert [cold[k] for k in CACHE_KEYS] == [0, 1, 0, 0, 2, 0]
    assert [warm[k] for k in CACHE_KEYS] == [3, 4, 5, 6, 7, 8]


def test_precompile_suite_runs_the_probe_in_empty_caches(runner, tmp_path):
    (run,) = runner.SUITES["precompile"](runner.parse_args(["precompile", "--out", str(tmp_path)]))
    assert run.commands[0][1].endswith("benchmarks/precompile_probe.py") and run.parse == "json_lines"
    assert run.env["TORCHINDUCTOR_CACHE_DIR"] in {str(d) for d in run.fresh_dirs}


def test_precompile_probe_reports_a_failed_case_by_its_error_line():
    """Each case runs in its own process; one that raises is a row with ok false and the exception's line."""
    probe = load_script("precompile_probe")
    row = probe.run_case("bad", "no_such_network", False, "cpu")
    assert row["ok"] is False and row["error"] == "KeyError: 'no_such_network'"
    assert [name for name, _, _ in probe.CASES] == ["cold", "warm", "save", "precompiled", "other"]


def test_phases_suite_runs_its_probe_in_empty_caches_and_a_failed_case_is_its_error_line(runner, tmp_path):
    run, warm_pool = runner.SUITES["phases"](runner.parse_args(["phases", "--out", str(tmp_path)]))
    assert run.commands[0][1].endswith("benchmarks/compile_phases.py") and run.parse == "json_lines"
    assert run.commands[0][2:] == ["--only", "net,no_pattern_matcher,nested_regions"]
    assert (warm_pool.label, warm_pool.commands[0][2:]) == ("warm_pool", ["--only", "pool_ready,ptxas_env"])
    for each in (run, warm_pool):  # each in empty caches of its own
        assert each.env["TORCHINDUCTOR_CACHE_DIR"] in {str(d) for d in each.fresh_dirs}
    assert run.env["TORCHINDUCTOR_CACHE_DIR"] != warm_pool.env["TORCHINDUCTOR_CACHE_DIR"]
    row = load_script("compile_phases").run_case("bad", "cold", "cpu", 2)
    assert row["ok"] is False
    assert (
        row["error"] == "ValueError: unknown variant 'bad'; choose from "
        "['net', 'no_pattern_matcher', 'nested_regions', 'pool_ready', 'ptxas_env']"
    )


def test_the_pool_ready_variant_starts_from_nets_caches_as_its_cold_case_left_them(
    tmp_path, monkeypatch, capsys
):
    """``--only pool_ready`` also runs ``net`` (its source); the copy is taken after net's cold case, so net's
    warm cases (which build kernels of their own) do not warm it; each case lists the kernels it built."""
    phases = load_script("compile_phases")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_case(variant, start, device, batch):
        folder = phases.cache_folders(variant) / "triton" / f"H{len(calls)}"
        folder.mkdir(parents=True)
        (folder / f"__grp__{variant}_{start}_kernel.json").write_text("{}")
        calls.append(
            (variant, start, sorted(phases.triton_kernels(phases.cache_folders(variant) / "triton")))
        )
        return {"variant": variant, "start": start}

    monkeypatch.setattr(phases, "run_case", fake_case)
    assert phases.main(["--only", "pool_ready", "--device", "cpu"]) == 0
    assert [(v, s) for v, s, _ in calls] == [
        ("net", "cold"),
        ("net", "warm"),
        ("pool_ready", "warm"),
        ("net", "warm"),
        ("pool_ready", "warm"),
    ]
    # pool_ready's first warm case saw net's cold kernel (copied) and its own, not net's warm one.
    assert calls[2][2] == ["H0/net_cold_kernel", "H2/pool_ready_warm_kernel"]
    assert len(capsys.readouterr().out.splitlines()) == 5
    # ptxas_env has a cold case of its own and warms on its own caches alone
    calls.clear()
    assert phases.main(["--only", "ptxas_env", "--device", "cpu"]) == 0
    assert [(v, s) for v, s, _ in calls] == [
        ("ptxas_env", "cold"),
        ("ptxas_env", "warm"),
        ("ptxas_env", "warm"),
    ]
    assert calls[1][2] == ["H0/ptxas_env_cold_kernel", "H1/ptxas_env_warm_kernel"]


def test_a_rebuilt_kernel_is_set_against_the_closest_cached_kernel_of_its_name(tmp_path):
    """What sets a kernel a warm case built apart from the cached ones of its name: the nearest one's differing
    metadata entries, and its texts around their first difference (the TTIR signature: the specialisation)."""
    import json

    phases = load_script("compile_phases")

    def kernel(where, name, meta, ttir):
        (tmp_path / where).mkdir()
        (tmp_path / where / f"__grp__{name}.json").write_text("{}")
        (tmp_path / where / f"{name}.json").write_text(json.dumps(meta))
        (tmp_path / where / f"{name}.ttir").write_text(ttir)

    base = {"num_warps": 4, "debug": False}
    sig = "tt.func @k(%x: !tt.ptr<f32> {tt.divisibility = 16 : i32}, %n: i32"
    kernel("A", "k", {**base, "hash": "a"}, sig + " {tt.divisibility = 16 : i32}) {\n  body a\n")
    kernel("B", "k", {**base, "hash": "b"}, sig + ") {\n  body b\n")
    kernel("C", "other", {**base, "hash": "c"}, "")
    kernel("N", "k", {**base, "hash": "n"}, sig + ") {\n  body b, rebuilt\n")
    before = {"A/k", "B/k", "C/other"}
    assert phases.triton_kernels(tmp_path) == before | {"N/k"}
    (found,) = phases.closest_difference(tmp_path, ["N/k"], before)
    # A and B both differ in hash and TTIR; B shares the longer TTIR prefix (the same specialisation).
    assert found["closest"] == "B/k" and found["cached_of_that_name"] == 2
    assert found["differs"]["hash"] == ["n", "b"]
    mine, theirs = found["differs"]["(ttir)"]
    assert (
        mine.endswith("body b, rebuilt\n") and theirs.endswith("body b\n") and mine.startswith("tt.func @k")
    )
    wide = phases._where_texts_differ("x" * 300 + "A", "x" * 300 + "B", width=10)
    assert wide == ["x" * 10 + "A", "x" * 10 + "B"]
    assert phases.closest_difference(tmp_path, ["C/other"], {"A/k"}) == [
        {"kernel": "C/other", "cached_of_that_name": 0}
    ]


def test_the_compile_workers_are_waited_for_only_where_inductor_uses_them():
    """Waiting returns the seconds waited with the pool then taking work, or None where inductor compiles in
    the process (one compile thread)."""
    from torch._inductor.async_compile import AsyncCompile, get_compile_threads, shutdown_compile_workers

    phases = load_script("compile_phases")
    try:
        waited = phases.wait_for_compile_workers(timeout=120)
        if get_compile_threads() <= 1:
            assert waited is None
        else:
            assert waited is not None and waited >= 0 and AsyncCompile.use_process_pool()
    finally:
        shutdown_compile_workers()


@pytest.mark.parametrize(
    "record",
    sorted(Path(__file__).resolve().parents[1].glob("benchmarks/results/*/quality.jsonl")),
    ids=lambda p: p.parent.name,
)
def test_a_committed_quality_summary_is_rebuilt_from_its_rows(runner, record):
    from run_summary import summary

    rows = [r for r in runner.read_jsonl(record) if r.get("result") is not None]
    assert rows, f"{record} holds no measured row"
    committed = json.loads((record.parent / "quality_summary.json").read_text())
    # JSON writes nan as NaN, which compares unequal to itself: compare the serialised forms
    assert json.dumps(summary(rows), sort_keys=True) == json.dumps(committed, sort_keys=True)
    # a row's GPU type is that of the call whose manifest entry ran it
    calls = json.loads((record.parent / "manifest.json").read_text())["invocations"]
    ran_on = {r["run"]: ", ".join(sorted(set(c["gpu"]["torch_devices"]))) for c in calls for r in c["runs"]}
    assert all(row["gpu"] == ran_on[row["label"]] for row in rows if "gpu" in row)


def commit_tree(root: Path, files: dict[str, bytes], message: str = "c") -> str:
    """Write ``files`` (repository path: content) under ``root`` and commit them (a new git repository where
    ``root`` is none yet); returns the commit's id."""
    import subprocess

    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    if not (root / ".git").exists():
        subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", message], check=True)
    return subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_find_names_the_commits_whose_code_has_a_digest(tmp_path, capsys, monkeypatch):
    manifest = load_script("run_manifest")
    first = commit_tree(tmp_path, {"src/diffusion_lab/a.py": b"x = 1\n", "README.md": b"# r\n"}, "first")
    docs = commit_tree(tmp_path, {"README.md": b"# docs only\n"}, "docs")
    code = commit_tree(tmp_path, {"src/diffusion_lab/a.py": b"x = 2\n"}, "code")
    package = manifest.digests(manifest.commit_files(first, tmp_path))["package_sha256"]
    assert package == manifest.digest({"diffusion_lab/a.py": b"x = 1\n"})
    # newest first; the docs-only commit has the first commit's code, the last one other code
    found = manifest.find_commits(package[:12], tmp_path)
    assert [(c, key) for c, key, _ in found] == [(docs, "package_sha256"), (first, "package_sha256")]
    assert [subject for *_, subject in found] == ["docs", "first"]
    assert code not in {c for c, *_ in manifest.find_commits(package, tmp_path)}
    original = manifest.find_commits  # the command line searches this repository's history instead of ours
    monkeypatch.setattr(manifest, "find_commits", lambda prefix: original(prefix, tmp_path))
    capsys.readouterr()
    assert manifest.main(["--find", package[:12].upper()]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{docs[:12]} package_sha256 docs",
        f"{first[:12]} package_sha256 first",
    ]
    assert manifest.main(["--find", "0" * 12]) == 1
    assert (
        capsys.readouterr().err
        == f"run_manifest.py: no commit of HEAD's last 500 has a digest starting {'0' * 12}\n"
    )
    assert manifest.main(["--find", "xyz"]) == 2
    assert capsys.readouterr().err == "run_manifest.py: --find 'xyz': give 8 to 64 hex digits of a digest\n"


def test_the_code_digest_of_a_tree_equals_its_commits_and_follows_code_changes_only(tmp_path):
    manifest = load_script("run_manifest")
    commit_files, digest, tree_files = manifest.commit_files, manifest.digest, manifest.tree_files

    files = {
        "src/diffusion_lab/a.py": "x = 1\n",
        "src/diffusion_lab/reporting/templates/t.md.j2": "{{ x }}\n",
        "conf/model/m.yaml": "width: 8\n",
        "benchmarks/run.py": "print(1)\n",
        "experiments/study.sh": "echo\n",
        "benchmarks/results/r.json": "{}\n",  # results, docs and caches are not code
        "README.md": "# r\n",
        "src/diffusion_lab/__pycache__/a.cpython-311.pyc": "",
    }
    commit_tree(tmp_path, {path: text.encode() for path, text in files.items()})

    on_disk = tree_files(tmp_path)
    assert sorted(on_disk) == sorted(
        p for p in files if not p.startswith(("benchmarks/results", "README", "src/diffusion_lab/__"))
    )
    assert digest(on_disk) == digest(commit_files("HEAD", tmp_path))
    (tmp_path / "benchmarks/results/r.json").write_text("{1}\n")
    (tmp_path / "README.md").write_text("# changed\n")
    assert digest(tree_files(tmp_path)) == digest(on_disk)
    (tmp_path / "conf/model/m.yaml").write_text("width: 16\n")
    assert digest(tree_files(tmp_path)) != digest(on_disk)


def test_a_manifest_digests_the_package_as_its_runs_do_and_the_scripts_apart(tmp_path):
    from diffusion_lab.provenance import code_sha256, digest

    manifest = load_script("run_manifest")
    commit_files, digests, tree_files = manifest.commit_files, manifest.digests, manifest.tree_files

    # The checkout's package digest is the one every run of this process records in its provenance.
    assert digests(tree_files(manifest.ROOT))["package_sha256"] == code_sha256()
    files = {
        "src/diffusion_lab/a.py": b"x = 1\n",
        "src/diffusion_lab/py.typed": b"",  # in the tree's digest alone (runs hash .py/.yaml/.j2)
        "conf/model/m.yaml": b"width: 8\n",
        "benchmarks/run.py": b"print(1)\n",
        "experiments/lib/gpus.sh": b"echo\n",
    }
    commit_tree(tmp_path, files)
    expected = {
        "code_sha256": digest(files),
        "package_sha256": digest(
            {
                "diffusion_lab/a.py": files["src/diffusion_lab/a.py"],
                "conf/model/m.yaml": files["conf/model/m.yaml"],
            }
        ),
        "scripts_sha256": digest({k: files[k] for k in ("benchmarks/run.py", "experiments/lib/gpus.sh")}),
    }
    assert digests(tree_files(tmp_path)) == expected
    assert digests(commit_files("HEAD", tmp_path)) == expected
    (tmp_path / "benchmarks/run.py").write_bytes(b"print(2)\n")
    changed = digests(tree_files(tmp_path))
    assert changed["package_sha256"] == expected["package_sha256"]
    assert changed["scripts_sha256"] != expected["scripts_sha256"]


def _device_script(tmp_path: Path, bench: str, **env_vars: str):
    """A device call of gpu_bench.sh running the selftest suite (its run in ``tmp_path/<bench>``, its archive
    in ``tmp_path/out``), as a function of the watch limit."""
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "SUITE": "selftest",
        "BENCH_DIR": str(tmp_path / bench),
        "OUT": str(tmp_path / "out"),
    }
    env.update(PY=sys.executable, **env_vars)

    def call(limit: int) -> subprocess.CompletedProcess:
        command = ["bash", str(root / "benchmarks" / "gpu_bench.sh"), str(limit)]
        return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)

    return call


def test_the_device_script_runs_a_suite_in_the_background_once_and_packs_its_output(tmp_path):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "kept.txt").write_text("a committed result the run continues\n")
    call = _device_script(tmp_path, "bench", CONTINUE=str(earlier), BENCH_ARGS="--limit 1")
    first = call(120)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith("[bench] started selftest (pid ") and lines[0].endswith("): --limit 1")
    assert "[bench] selftest finished (exit 0)" in lines
    assert lines[-1] == f"[bench] packed {tmp_path / 'out' / 'selftest.tar.gz'}"
    with tarfile.open(tmp_path / "out" / "selftest.tar.gz") as tar:
        assert {"out/kept.txt", "out/selftest.jsonl", "out/manifest.json", "run.log"} <= set(tar.getnames())
    # a second call watches the same (finished) run: no second run, the same rows packed again
    second = call(120)
    assert second.returncode == 0 and "[bench] started" not in second.stdout
    out = tmp_path / "bench" / "selftest" / "out"
    assert len(json.loads((out / "manifest.json").read_text())["invocations"]) == 1
    assert len((out / "selftest.jsonl").read_text().splitlines()) == 1


def test_a_run_queued_after_another_starts_only_once_that_one_has_ended(tmp_path):
    first = tmp_path / "bench" / "quality"  # stands for a run started earlier: its pid written, no rc yet
    first.mkdir(parents=True)
    (first / "pid").write_text("1\n")
    call = _device_script(tmp_path, "bench2", AFTER=str(first), BENCH_ARGS="--limit 1")
    queued = call(20)  # watches about 10 s: long enough for the selftest to run and end were it not queued
    assert queued.returncode == 0, queued.stderr
    assert queued.stdout.splitlines()[0].endswith(f", once {first} has ended: --limit 1")
    assert "[bench] selftest still running" in queued.stdout
    rows = tmp_path / "bench2" / "selftest" / "out" / "selftest.jsonl"
    assert not rows.exists() and (tmp_path / "bench2" / "selftest" / "run.log").read_text() == ""
    (first / "rc").write_text("1\n")  # the earlier run ended (its exit status does not matter)
    watched = call(120)
    assert "[bench] selftest finished (exit 0)" in watched.stdout and "[bench] started" not in watched.stdout
    assert len(rows.read_text().splitlines()) == 1


def test_a_queue_after_a_folder_where_no_run_started_is_refused(tmp_path):
    done = _device_script(tmp_path, "b", AFTER=str(tmp_path / "typo"))(5)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f"[bench] AFTER={tmp_path / 'typo'}: no run was started there (no pid file); "
        "name the BENCH_DIR/<suite> folder of a started run\n"
    )
    assert not (tmp_path / "b").exists() and not (tmp_path / "out").exists()


def _study_watch(tmp_path: Path, metrics: str):
    """A copy of the watch script's files and one study job with ``metrics`` as its metrics.csv: the watch's
    folder (DIFFUSION_LAB_ROOT) and a function running the watch for ``limit`` seconds there (an empty $OUT,
    1-s polls)."""
    root = Path(__file__).resolve().parents[1]
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    for name in ("gpu_study_wait.sh", "gpu_env.sh", "last_step.awk"):
        (repo / "benchmarks" / name).write_bytes((root / "benchmarks" / name).read_bytes())
    dl = tmp_path / "dl"
    job = dl / "studies" / "demo" / "sweep" / "0_seed=1"
    (job / "csv").mkdir(parents=True)
    (job / "csv" / "metrics.csv").write_text(metrics)
    (tmp_path / "out").mkdir()
    env = {**os.environ, "DIFFUSION_LAB_ROOT": str(dl), "OUT": str(tmp_path / "out"), "POLL": "1"}

    def watch(limit: int) -> subprocess.CompletedProcess:
        command = ["bash", "benchmarks/gpu_study_wait.sh", str(limit)]
        return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=60)

    return dl, watch


def test_the_study_watch_follows_the_started_pid_not_command_lines_that_name_the_script(tmp_path):
    """The watch ends when the started set's process does, though another command line names
    experiments/all.sh (a device command that merely mentions it kept the old pattern match waiting its whole
    limit), and packs the studies' text files."""
    dl, run_watch = _study_watch(tmp_path, "epoch,step,train/loss\n0,49,0.5\n0,99,0.4\n")
    for copy in (
        "raw/sweep/0_seed=1",
        "pooled/raw/demo/sweep/0_seed=1",
    ):  # kept and gathered copies: not packed
        (dl / "studies" / "demo" / copy / "csv").mkdir(parents=True)
        (dl / "studies" / "demo" / copy / "csv" / "metrics.csv").write_text("epoch,step\n0,99\n")
    study = subprocess.Popen(["sleep", "3"])
    # reaped as soon as it ends, as init reaps the detached set on the device (a zombie still answers kill -0)
    threading.Thread(target=study.wait, daemon=True).start()
    decoy = subprocess.Popen(["bash", "-c", "sleep 120; true  # experiments/all.sh"])  # compound: bash stays
    (dl / "all.pid").write_text(f"{study.pid}\n")
    try:
        started = time.monotonic()
        watch = run_watch(100)
        elapsed = time.monotonic() - started
    finally:
        decoy.kill()
    assert watch.returncode == 0, watch.stderr
    assert elapsed < 30, f"the watch ran {elapsed:.0f} s for a study that ended after 3 s"
    assert "0_seed=1: step 99" in watch.stdout and "[wait] the studies have ended" in watch.stdout
    with tarfile.open(tmp_path / "out" / "demo.tar.gz") as tar:
        assert tar.getnames() == ["demo/sweep/0_seed=1/csv/metrics.csv"]


def test_a_watch_that_ends_before_the_studies_says_to_call_again(tmp_path):
    """A study still running when the watch's limit comes lives on that machine only: the watch's closing line
    says to call again at once, and what was measured so far is packed."""
    dl, run_watch = _study_watch(tmp_path, "epoch,step\n0,49\n")
    study = subprocess.Popen(["sleep", "60"])
    (dl / "all.pid").write_text(f"{study.pid}\n")
    try:
        watch = run_watch(8)
    finally:
        study.kill()
    assert watch.returncode == 0, watch.stderr
    last = [line for line in watch.stdout.splitlines() if line.startswith("[wait]")]
    assert (
        len(last) == 1
        and last[0].startswith("[wait] STILL RUNNING at ")
        and "call this again at once" in last[0]
    )
    assert (tmp_path / "out" / "demo.tar.gz").is_file()


def test_nested_regions_get_more_entries_only_where_torch_has_the_option():
    phases = load_script("compile_phases")
    calls = []

    class Compiler:  # torch 2.11's signature, then 2.14's
        @staticmethod
        def nested_compile_region(fn):
            calls.append({})
            return fn

    fake = type("torch", (), {"compiler": Compiler})
    assert phases.nested_region(fake, len) is len

    def with_entries(fn, max_reuse_entries=8):
        calls.append({"max_reuse_entries": max_reuse_entries})
        return fn

    Compiler.nested_compile_region = staticmethod(with_entries)
    phases.nested_region(fake, len)
    assert calls == [{}, {"max_reuse_entries": 64}]


def test_the_compile_phases_probe_records_why_a_graph_missed_the_cache(tmp_path, monkeypatch):
    """A cold compile in an empty cache: the caches' own miss lines are kept (the loggers' names are the
    installed torch's), their levels restored after."""
    import logging

    import torch

    phases = load_script("compile_phases")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    layer = torch.nn.Linear(3, 2)
    before = [logging.getLogger(name).level for name in phases.CacheNotes.LOGGERS]
    with phases.CacheNotes() as notes:
        torch.compile(layer)(torch.randn(4, 3)).sum().backward()
    assert any(line.startswith("AOTAutograd cache miss for key ") for line in notes.lines), notes.lines
    assert not any("hit" in line for line in notes.lines)
    assert [logging.getLogger(name).level for name in phases.CacheNotes.LOGGERS] == before
    torch._dynamo.reset()


def test_the_study_watch_reads_a_jobs_step_from_the_column_named_step(tmp_path):
    """Lightning's CSV puts columns in the order first logged (here epoch and lr before step) and leaves a
    row's other metrics blank: the watch prints the largest step, not the last row's first fields."""
    root = Path(__file__).resolve().parents[1]
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "epoch,lr-AdamW,step,train/loss\n,5e-05,49,\n0,,49,15.3\n4,,1949,0.9\n,0.0002,1999,\n4,,,\n"
    )
    awk = ["awk", "-F,", "-f", str(root / "benchmarks" / "last_step.awk")]
    assert subprocess.run([*awk, str(csv)], capture_output=True, text=True).stdout == "step 1999\n"
    csv.write_text("epoch,step\n")
    assert subprocess.run([*awk, str(csv)], capture_output=True, text=True).stdout == "no step yet\n"


@pytest.mark.parametrize(
    ("script", "patch", "where", "name", "args", "origin"),
    [
        ("train_own_ptxas", "leave_ptxas_alone", "training", "use_torch_ptxas", "", "compile_policy"),
        ("train_build_on_first_use", "build_on_first_use", "module", "kernel_builder", "1", "nets.fused_norm"),
    ],
)  # fmt: skip
def test_a_baseline_entry_script_trains_with_one_function_a_no_op(script, patch, where, name, args, origin):
    """benchmarks/train_own_ptxas.py (Triton's own ptxas) and train_build_on_first_use.py (the op's kernels built on
    first use): the training they import holds a no-op in place of one function; without them, the function."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{script}.py"
    probe = f"import diffusion_lab.{where} as m; print(m.{name}.__name__, m.{name}({args}))"
    code = f"import runpy; runpy.run_path({str(path)!r})[{patch!r}](); {probe}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "<lambda> None\n"
    used, defined = (
        importlib.import_module(f"diffusion_lab.{where}"),
        importlib.import_module(f"diffusion_lab.{origin}"),
    )
    assert getattr(used, name) is getattr(defined, name) and getattr(defined, name).__name__ == name
    cfg = subprocess.run(
        [sys.executable, str(path), "experiment=fmnist_fast", "--cfg", "job"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "task_name: fmnist_fast" in cfg and "compile: capture" in cfg


def test_graphed_step_probe_names_a_failed_setting_by_its_last_error_line_and_refuses_unknown_ones():
    probe = load_script("graphed_step")
    assert probe.SETTINGS == (
        "eager", "graphs", "graphs_fused", "graphs_fused_first_use", "graphs_cl", "graphs_fused_cl", "compiled",
    )  # fmt: skip
    failed = subprocess.CompletedProcess(
        [], 1, "", "Traceback (most recent call last):\n  ...\nRuntimeError: no GPU\n\n"
    )
    assert probe.case_row("graphs", failed) == {
        "setting": "graphs",
        "ok": False,
        "error": "RuntimeError: no GPU",
    }
    silent = subprocess.CompletedProcess([], -9, "", "")
    assert probe.case_row("compiled", silent)["error"] == "exit -9"
    done = subprocess.CompletedProcess([], 0, 'warming up\n{"setting": "eager", "img_per_s": 1.0}\n', "")
    assert probe.case_row("eager", done) == {"setting": "eager", "img_per_s": 1.0}
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "graphed_step.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--only", "graphs,fastest"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (
        "--only: 'fastest' is not a setting; choose from ['eager', 'graphs', 'graphs_fused', 'graphs_fused_first_use', "
        "'graphs_cl', 'graphs_fused_cl', 'compiled']"
    )
