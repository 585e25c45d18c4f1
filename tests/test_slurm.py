"""The SLURM launcher (``hydra/launcher=slurm`` / ``slurm_cpu``): sweeps on a real SLURM cluster, and its parts.

The tests marked ``slurm`` submit tiny CPU trainings to the cluster ``sinfo`` reaches: on one machine,
``sudo scripts/slurm_local.sh start`` brings one up (``make slurm-test`` starts it and runs them; CI does too).
They cover a sweep end to end, a job preempted three ways (``scontrol requeue``; submitit's notice signal;
Lightning's auto-requeue signal) that resumes to the weights of an uninterrupted job, and failed jobs that leave
the others going.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import cli_env
from diffusion_lab.train import CONFIG_DIR
from sweeps import run_report

pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher", reason="the slurm extra: pip install -e '.[slurm]'"
)

from hydra_plugins.diffusion_lab_launcher import _slurm_job as slurm_job  # noqa: E402
from hydra_plugins.diffusion_lab_launcher._slurm_queue import LEFT_THE_QUEUE, QueueWatcher  # noqa: E402
from hydra_plugins.diffusion_lab_launcher.slurm_launcher import resume_overrides  # noqa: E402

REPO_ROOT = Path(CONFIG_DIR).parent
TESTS = Path(__file__).resolve().parent
START = "sudo scripts/slurm_local.sh start"

# A few CPU seconds per job: 8 steps of the tiny UNet on 16x16 digits, the loss logged at every step.
TINY = [
    "hydra/launcher=slurm_cpu",
    "trainer=cpu",
    "data=digits",
    "model=unet_tiny",
    "schedule.num_timesteps=20",
    "trainer.max_steps=8",
    "trainer.max_time=null",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "data.batch_size=16",
    "sampler.steps=2",
    "final_samples=4",
    "callbacks.sample_grid.n=4",
]
PAUSE = "+callbacks.pause._target_=slurm_pause.PauseForSignal"


# ------------------------------------------------------------------------------------------- on a cluster
@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """A SLURM cluster with a node ready for jobs; without one the test is skipped (a failure in CI), naming
    the script that starts one."""
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        states = ""
    if not {"idle", "mixed", "allocated"} & set(states.split()):
        pytest.skip(
            f"no SLURM cluster with a ready node (sinfo: {states.strip() or 'none'}); start one: {START}"
        )


def sweep_env(root: Path) -> dict[str, str]:
    """The sweep's environment (sbatch passes it on to the jobs): tests/ importable for the pause callback."""
    env = cli_env(root)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture
def sweep_runner(tmp_path):
    """``start(*overrides)`` starts the sweep in the background (its output in tmp_path/sweep.out and
    sweep.err) and returns it with its folder; at the end of the test a sweep still running is stopped and its
    SLURM jobs cancelled, so a failed test leaves no job behind."""
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(*overrides: str) -> tuple[subprocess.Popen, Path]:
        sweep = tmp_path / "sweep"
        command = [
            sys.executable,
            "-m",
            "diffusion_lab.train",
            "-m",
            *TINY,
            *overrides,
            f"hydra.sweep.dir={sweep}",
        ]
        with open(tmp_path / "sweep.out", "w") as out, open(tmp_path / "sweep.err", "w") as err:
            proc = subprocess.Popen(command, cwd=tmp_path, env=sweep_env(tmp_path), stdout=out, stderr=err)
        started.append((proc, sweep))
        return proc, sweep

    yield start
    for proc, sweep in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        arrays = sorted({p.name.split("_")[0] for p in sweep.glob(".submitit/*") if p.is_dir()})
        if arrays:
            subprocess.run(["scancel", *arrays], capture_output=True, timeout=60)


def finish(proc: subprocess.Popen, tmp_path: Path, timeout: float = 400) -> tuple[int, str, str]:
    """The sweep's exit status, stdout and stderr once it ended."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out, err = (tmp_path / "sweep.out").read_text(), (tmp_path / "sweep.err").read_text()
    if proc.returncode < 0:
        pytest.fail(f"the sweep did not end in {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")
    return proc.returncode, out, err


def job_folder(sweep: Path, name: str) -> Path:
    """The folder of the job named ``<num>_<name>``."""
    (folder,) = sweep.glob(f"[0-9]*_{name}")
    return folder


def scancel(job_id: str, *options: str) -> None:
    """``scancel``: SLURM 22.05 acts on a running job at once, but while tasks of its array are still pending
    answers "Job can not be altered now" and scancel retries every few seconds — which would signal the
    requeued run again once it restarts. The first attempt is enough: scancel is cut short after it."""
    subprocess.run(["timeout", "3", "scancel", *options, job_id], capture_output=True)


def preempt_when_paused(sweep: Path, how: dict[str, object], timeout: float = 400) -> dict[str, str]:
    """Call ``how[name](job id)`` for each job ``<num>_<name>`` once it holds at its pause; returns the SLURM
    job ids by name. The wait ends at the last pause; its limit, the sweep's own (``finish``), only bounds a
    job that never gets there (on a loaded 2-core machine one job had not reached its pause after 240 s)."""
    done: dict[str, str] = {}
    deadline = time.time() + timeout
    while len(done) < len(how) and time.time() < deadline:
        for name, act in how.items():
            paused = [p for p in sweep.glob(f"[0-9]*_{name}/paused") if p.read_text()]
            if name not in done and paused:
                done[name] = paused[0].read_text()
                act(done[name])
        time.sleep(0.2)
    assert len(done) == len(how), f"jobs that never paused: {sorted(set(how) - set(done))}"
    return done


def requeue(job_id: str) -> None:
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)


def job_logs(sweep: Path) -> str:
    """Every job's submitit logs (stdout and stderr of all its runs)."""
    return "\n".join(p.read_text() for p in sorted(sweep.glob(".submitit/*/*_log.*")))


def logged_losses(run: Path) -> list[tuple[int, float]]:
    with open(run / "csv" / "metrics.csv") as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


def final_weights(run: Path) -> tuple[int, dict[str, torch.Tensor]]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    return ckpt["global_step"], ckpt["state_dict"]


@pytest.mark.slow
@pytest.mark.slurm
def test_sweep_runs_as_slurm_jobs_and_the_report_reads_it(slurm_cluster, sweep_runner, tmp_path):
    proc, sweep = sweep_runner("schedule=linear,cosine")
    code, out, err = finish(proc, tmp_path)
    assert code == 0, out[-3000:] + err[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [r.name for r in runs] == ["0_schedule=linear", "1_schedule=cosine"]
    for run, schedule in zip(runs, ("linear", "cosine")):
        step, _ = final_weights(run)
        assert step == 8 and (run / "samples" / "final.png").is_file()
        assert OmegaConf.load(run / ".hydra" / "config.yaml").schedule._target_.endswith(
            f"{schedule.capitalize()}Schedule"
        )
        assert [s for s, _ in logged_losses(run)] == list(range(8))
    status = json.loads((sweep / "sweep_status.json").read_text())
    assert [(j["num"], j["status"], Path(j["dir"]).name) for j in status["jobs"]] == [
        (0, "COMPLETED", "0_schedule=linear"),
        (1, "COMPLETED", "1_schedule=cosine"),
    ]
    # Each ran as a SLURM job of its own (submitit's log names the job).
    logs = sorted(sweep.glob(".submitit/*_[01]/*_log.out"))
    assert len(logs) == 2 and all("Starting with JobEnvironment(job_id=" in p.read_text() for p in logs)

    report = run_report(sweep)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (sweep / "report.md").read_text()
    assert "| schedule=linear | COMPLETED |" in text and "| schedule=cosine | COMPLETED |" in text


@pytest.mark.slow
@pytest.mark.slurm
def test_preempted_jobs_are_requeued_and_resume_exactly(slurm_cluster, sweep_runner, tmp_path):
    """Four identical trainings: three held at a step and preempted there — by `scontrol requeue` (SLURM
    requeues, SIGTERM), by submitit's notice signal (SIGUSR2: the job requeues itself) and by Lightning's
    auto-requeue signal (SIGUSR1: Lightning saves hpc_ckpt and requeues) — and one left alone. Each preempted
    job saves at the next step, restarts, resumes from its checkpoint and ends with the weights and per-step
    losses of the uninterrupted one."""
    proc, sweep = sweep_runner(PAUSE, "+callbacks.pause.at_step=3,4,5,-1")
    names = {step: f"callbacks.pause.at_step={step}" for step in (3, 4, 5, -1)}
    ids = preempt_when_paused(
        sweep,
        {
            names[3]: requeue,
            names[4]: lambda job_id: scancel(job_id, "--signal=USR2"),
            names[5]: lambda job_id: scancel(job_id, "--signal=USR1"),
        },
    )
    code, out, err = finish(proc, tmp_path)
    assert code == 0, out[-3000:] + err[-3000:]
    logs = job_logs(sweep)

    step, reference = final_weights(job_folder(sweep, names[-1]))
    expected_losses = logged_losses(job_folder(sweep, names[-1]))
    assert step == 8 and [s for s, _ in expected_losses] == list(range(8))
    for paused_at in (3, 4, 5):  # held at the end of step k, stopped at the next
        run = job_folder(sweep, names[paused_at])
        assert (
            f"SIGTERM received: saved {run}/checkpoints/last.ckpt at step {paused_at + 1}; stopping." in logs
        )
        assert f"[slurm] restart 1 of job {ids[names[paused_at]]}: resuming from {run}/checkpoints" in logs
        step, weights = final_weights(run)
        assert step == 8
        assert [k for k in reference if not torch.equal(reference[k], weights[k])] == []
        assert logged_losses(run) == expected_losses  # every step once, each loss the uninterrupted run's
        # the job's first record kept; the resume recorded beside it
        assert "ckpt_path" not in OmegaConf.load(run / ".hydra" / "overrides.yaml")
        assert "ckpt_path=last" in OmegaConf.load(run / ".hydra" / "resume_1" / "overrides.yaml")
        assert not (run / ".hydra" / "resume_2").exists()
    assert f"[slurm] SIGTERM: job {ids[names[3]]} was requeued; its next run resumes" in logs
    assert f"[slurm] job {ids[names[4]]} requeued itself; its next run resumes" in logs
    assert f"[slurm] SIGTERM: job {ids[names[5]]} was requeued; its next run resumes" in logs
    assert (job_folder(sweep, names[5]) / "hpc_ckpt_1.ckpt").is_file()  # Lightning's auto-requeue requeued it


@pytest.mark.slow
@pytest.mark.slurm
def test_failed_jobs_are_reported_and_the_others_complete(slurm_cluster, sweep_runner, tmp_path):
    """Of four jobs, two are refused at start-up (T=0) and one is cancelled while training (`scancel`: a SIGTERM
    that requeues nothing): the sweep fails naming the first failure, the fourth job completes, and the
    cancelled one says how to resume it."""
    proc, sweep = sweep_runner(PAUSE, "+callbacks.pause.at_step=3,-1", "schedule.num_timesteps=0,20")
    name = "callbacks.pause.at_step={},schedule.num_timesteps={}".format
    preempt_when_paused(sweep, {name(3, 20): scancel})
    code, out, err = finish(proc, tmp_path)
    assert code != 0
    assert "schedule.num_timesteps=0 is invalid" in err and "Error executing job with overrides" in err
    done = job_folder(sweep, name(-1, 20))
    assert final_weights(done)[0] == 8 and (done / "samples" / "final.png").is_file()
    cancelled = job_folder(sweep, name(3, 20))
    assert final_weights(cancelled)[0] == 4
    resume = f"python -m diffusion_lab.train ckpt_path=last resume_dir={cancelled}"
    assert f"[slurm] stopped by SIGTERM and not requeued; resume it with: {resume}" in job_logs(sweep)
    for refused in (name(3, 0), name(-1, 0)):  # refused at start-up: no run behind
        assert not (job_folder(sweep, refused) / "checkpoints").exists()
    status = {
        Path(j["dir"]).name.split("_", 1)[1]: j["status"]
        for j in json.loads((sweep / "sweep_status.json").read_text())["jobs"]
    }
    assert status == {
        name(3, 0): "FAILED",
        name(3, 20): "FAILED",
        name(-1, 0): "FAILED",
        name(-1, 20): "COMPLETED",
    }


@pytest.mark.slow
@pytest.mark.slurm
def test_status_shows_where_slurm_has_each_submitted_job(slurm_cluster, sweep_runner, tmp_path):
    """Four jobs on the one-node cluster (one CPU each): while the first two hold at step 3, the sweep's status
    file lists all four as SUBMITTED with their SLURM ids, and `status` shows two running (with their steps)
    and two queued, as SLURM has them; cancelled, none is shown active any more."""
    from diffusion_lab import status as status_cli

    cpus = int(subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()[0])
    jobs = cpus + 2  # two more than the node runs at once
    proc, sweep = sweep_runner(PAUSE, "+callbacks.pause.at_step=3", f"seed={','.join(map(str, range(jobs)))}")
    deadline = time.time() + 240
    while len(list(sweep.glob("*/paused"))) < cpus and time.time() < deadline:
        time.sleep(0.2)
    records = json.loads((sweep / "sweep_status.json").read_text())["jobs"]
    assert [r["status"] for r in records] == ["SUBMITTED"] * jobs and all(r["slurm_job_id"] for r in records)
    rows = status_cli.statuses(sweep)
    assert sorted(s.state for _, s in rows) == ["QUEUED"] * 2 + ["RUNNING"] * cpus and all(
        s.checked for _, s in rows
    )
    # the steps its metrics file holds so far (the logger writes it out every few steps): at most the 3 held at
    assert all(0 < s.step <= 3 for _, s in rows if s.state == "RUNNING")
    arrays = sorted({r["slurm_job_id"].split("_")[0] for r in records})
    subprocess.run(["scancel", *arrays], check=True, timeout=60)
    code, out, err = finish(proc, tmp_path)
    assert code != 0
    # The sweep stops at the first job that left no result (a pending one, cancelled): the jobs that had ended
    # are recorded as they ended, any other stays SUBMITTED, and status, asking SLURM, shows none still active.
    final = json.loads((sweep / "sweep_status.json").read_text())["jobs"]
    assert [r["slurm_job_id"] for r in final] == [r["slurm_job_id"] for r in records]
    assert {r["status"] for r in final} <= {"FAILED", "SUBMITTED"} and any(
        r.get("error") == "ended without a result (SLURM: CANCELLED)" for r in final
    )
    assert {s.state for _, s in status_cli.statuses(sweep)} <= {"FAILED", "INTERRUPTED", "LOST"}


# ------------------------------------------------------------------------------------------- the parts
def test_a_restarted_job_resumes_with_its_own_overrides():
    given = ["schedule=cosine", "ckpt_path=/x/init.ckpt", "hydra.sweep.subdir='0_schedule=cosine'"]
    assert resume_overrides(given) == [
        "schedule=cosine",
        "hydra.sweep.subdir='0_schedule=cosine'",
        "ckpt_path=last",
        "hydra.output_subdir=null",
    ]


def test_timeouts_count_down_in_the_submitted_job(tmp_path):
    """submitit's rule: a notice after min(80% of the limit, limit - 10 min) is a timeout; each timeout spends
    one of max_num_timeout, written back to the submitted pickle, and none left is negative."""
    from submitit.core.utils import DelayedSubmission

    pickle = tmp_path / "job_submitted.pkl"
    submission = DelayedSubmission(print, "x")
    submission.set_timeout(30, 1)  # timeout_min=30, max_num_timeout=1
    submission.dump(pickle)
    now = time.time()
    assert slurm_job.timed_out(pickle, started=now - 1201)  # 30 min - 10 min = 1200 s < 80% (1440 s)
    assert not slurm_job.timed_out(pickle, started=now - 1100)
    assert slurm_job.count_timeout(pickle) == 0
    assert DelayedSubmission.load(pickle)._timeout_countdown == 0
    assert slurm_job.count_timeout(pickle) == -1
    assert DelayedSubmission.load(pickle)._timeout_countdown == 0


def test_the_notice_signal_is_recorded_and_passed_on_as_sigterm():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    stops = slurm_job.StopSignals()
    try:
        stops.install()
        os.kill(os.getpid(), signal.SIGUSR2)
        for _ in range(100):  # the handlers run between bytecodes of this thread
            if len(stops.received) == 2:
                break
            time.sleep(0.01)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    assert stops.received == ["SIGUSR2", "SIGTERM"] and stops.got_notice


def test_the_queue_watcher_reads_squeue_and_ends_jobs_it_no_longer_lists():
    watcher = QueueWatcher(delay_s=60)
    for job_id in ("5_0", "5_1", "6", "7_0", "7_1"):
        watcher.register_job(job_id)
    info = watcher.read_info(b"5_0|RUNNING|vm\n6|CANCELLED|vm\n7_[0-1]|PENDING|\n")
    assert {k: v["State"] for k, v in info.items()} == {
        "5_0": "RUNNING",
        "5_1": LEFT_THE_QUEUE,
        "6": "CANCELLED",
        "7_0": "PENDING",
        "7_1": "PENDING",
    }
    watcher._info_dict.update(info)
    assert [watcher.is_done(j, mode="cache") for j in ("5_0", "5_1", "6", "7_0")] == [
        False,
        True,
        True,
        False,
    ]


def test_slurm_cpu_asks_for_cpus_and_no_gpu():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    assert "ResumableSlurmLauncher" in [p.__name__ for p in Plugins.instance().discover(Launcher)]

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm_cpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.diffusion_lab_launcher.slurm_launcher.ResumableSlurmLauncher"
    assert launcher.gpus_per_node is None and launcher.cpus_per_task == 1 and launcher.tasks_per_node == 1
    assert launcher.signal_delay_s == 120 and launcher.additional_parameters.requeue is True
