"""`python -m diffusion_lab.status`: what every run under a folder is doing, its records checked against its
process -- a run killed outright is LOST, never "running" -- with its steps, ETA, error line and the commands
that continue what stopped. Runs record their own state (run_status.json); the run lock tells a live run."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_env
from diffusion_lab import status as status_cli
from diffusion_lab.reporting import find_jobs
from diffusion_lab.reporting import slurm as slurm_module
from diffusion_lab.reporting.job_state import job_state
from diffusion_lab.run_lock import LOCK_FILE, lock_holder, run_lock
from diffusion_lab.run_status import read_run_status, recorded_run
from sweeps import tiny_run

HOLD_LOCK = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
    "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)"
)


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def make_job(
    folder: Path, *, overrides=("seed=1",), run=None, steps_logged=None, checkpoints=(), log=None
) -> Path:
    """A job folder as a training leaves it: its overrides and config (1000 steps of batch 16), its metrics
    (the last row at ``steps_logged`` - 1, logged speed 160 img/s), step checkpoints and run record."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / ".hydra" / "config.yaml").write_text(
        "seed: 1\ntrainer:\n  max_steps: 1000\ndata:\n  batch_size: 16\n"
    )
    if steps_logged is not None:
        (folder / "csv").mkdir()
        rows = f"step,train/loss,perf/train_img_per_s\n{steps_logged - 1},0.5,160.0\n"
        (folder / "csv" / "metrics.csv").write_text(rows)
    for step in checkpoints:
        (folder / "checkpoints").mkdir(exist_ok=True)
        (folder / "checkpoints" / f"step_{step:07d}.ckpt").write_bytes(b"")
    if run is not None:
        (folder / "run_status.json").write_text(json.dumps(run))
    if log is not None:
        (folder / "job.log").write_text(log)
    return folder


def running(pid: int, host: str | None = None) -> dict:
    return {
        "status": "RUNNING",
        "pid": pid,
        "host": host or os.uname().nodename,
        "started": "2026-01-01T00:00:00",
    }


def state_of(folder: Path):
    (job,) = find_jobs(folder)
    return job_state(job)


# ------------------------------------------------------------------------------------------------ the lock
def test_lock_holder_reads_the_kernels_table_without_taking_the_lock(tmp_path):
    assert lock_holder(tmp_path) is None  # never locked
    with run_lock(tmp_path):
        assert lock_holder(tmp_path) == os.getpid()
        assert lock_holder(tmp_path, table=tmp_path / "no_such_table") == "unknown"
    assert lock_holder(tmp_path) is None  # released with the block


# ------------------------------------------------------------------------------------------------ states
def test_a_run_recorded_running_is_running_while_its_lock_is_held_and_lost_once_killed(tmp_path):
    job = make_job(tmp_path / "run", steps_logged=100, checkpoints=(50, 100))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(job / LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        (job / "run_status.json").write_text(json.dumps(running(holder.pid)))
        assert holder.stdout.readline() == "locked\n"
        state = state_of(job)
        assert (state.state, state.checked, state.step, state.max_steps) == ("RUNNING", True, 100, 1000)
        assert state.eta_s == pytest.approx(90.0)  # 900 steps left at 160 img/s / batch 16 = 10 steps/s
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    state = state_of(job)
    assert state.state == "LOST" and state.eta_s is None
    assert state.note.endswith(
        "its process is gone (killed, out of memory, or its machine lost); its newest checkpoint is at step 100"
    )


def test_a_record_from_another_host_is_shown_unchecked(tmp_path):
    state = state_of(make_job(tmp_path / "run", run=running(dead_pid(), host="elsewhere-node-7")))
    assert (state.state, state.checked) == ("RUNNING", False)


def test_queued_jobs_of_a_launcher_that_is_gone_never_start(tmp_path):
    sweep = tmp_path / "sweep"
    job = make_job(sweep / "0_seed=1")
    for launcher_pid, expected in ((os.getpid(), "QUEUED"), (dead_pid(), "LOST")):
        record = {"num": 0, "status": "QUEUED", "dir": str(job), "overrides": ["seed=1"]}
        status = {"sweep_dir": str(sweep), "launcher_pid": launcher_pid, "launcher_host": os.uname().nodename}
        (sweep / "sweep_status.json").write_text(json.dumps({**status, "jobs": [record]}))
        state = state_of(sweep)
        assert state.state == expected
    assert state.note == "recorded as queued, but its sweep's launcher is gone: it never started"


def test_a_failed_job_shows_its_error_line(tmp_path):
    log = "Epoch 0: 10%\nTraceback (most recent call last):\n  File ...\nValueError: loss is nan at step 12\n"
    job = make_job(tmp_path / "run", run={"status": "FAILED"}, log=log)
    assert state_of(job).note == "ValueError: loss is nan at step 12"
    recorded = {"status": "FAILED", "error": "UserError: data.root=/x does not exist"}
    (job / "run_status.json").write_text(json.dumps(recorded))
    assert state_of(job).note == recorded["error"]  # the run's own record first


def test_a_launcher_that_records_a_failure_outranks_the_runs_record(tmp_path):
    sweep = tmp_path / "sweep"
    job = make_job(sweep / "0_seed=1", run={"status": "COMPLETED", "global_step": 1000})
    record = {"num": 0, "status": "FAILED", "exit_code": 1, "dir": str(job), "overrides": ["seed=1"]}
    (sweep / "sweep_status.json").write_text(json.dumps({"sweep_dir": str(sweep), "jobs": [record]}))
    assert state_of(sweep).state == "FAILED"  # e.g. its process failed after the fit, writing its samples


def test_the_report_takes_a_runs_own_end_over_a_launchers_stale_record(tmp_path):
    """A launcher killed while its job trained left the job RUNNING in sweep_status.json; the job went on and
    recorded its end: the report (find_jobs) and status both say COMPLETED, and a lone run's own record counts."""
    sweep = tmp_path / "sweep"
    job = make_job(sweep / "0_seed=1", run={"status": "COMPLETED", "global_step": 1000})
    record = {"num": 0, "status": "RUNNING", "pid": dead_pid(), "dir": str(job), "overrides": ["seed=1"]}
    (sweep / "sweep_status.json").write_text(json.dumps({"sweep_dir": str(sweep), "jobs": [record]}))
    assert find_jobs(sweep)[0].status == "COMPLETED" and state_of(sweep).state == "COMPLETED"
    lone = make_job(tmp_path / "lone", run={"status": "INCOMPLETE", "global_step": 600})
    assert find_jobs(lone)[0].status == "INCOMPLETE" and state_of(lone).step == 600


def test_a_slurm_sweeps_jobs_are_where_slurm_says(tmp_path, monkeypatch):
    """Jobs a SLURM sweep submitted (SUBMITTED, with their SLURM ids): pending is QUEUED, running RUNNING, ended
    as the run recorded its end or FAILED where SLURM ended it first (its state named), LOST where SLURM no
    longer lists it; unchecked where SLURM does not answer. squeue is asked once for all, sacct for the ids
    squeue no longer lists."""
    answers = {"squeue": "7_0|PENDING\n7_1|RUNNING\n7_2|TIMEOUT\n", "sacct": "7_3|CANCELLED by 0\n"}
    asked = []

    def fake_run(command, **kwargs):
        asked.append(command)
        return subprocess.CompletedProcess(command, 0, stdout=answers[command[0]], stderr="")

    monkeypatch.setattr(slurm_module.subprocess, "run", fake_run)
    sweep = tmp_path / "sweep"
    runs = {3: {"status": "INTERRUPTED", "resume": "..."}}  # 7_3 was cancelled after it recorded its stop
    records = []
    for task in range(5):  # 7_4: SLURM knows nothing of it
        job = make_job(sweep / f"{task}_seed={task}", overrides=(f"seed={task}",), run=runs.get(task))
        records.append(
            {
                "num": task,
                "status": "SUBMITTED",
                "slurm_job_id": f"7_{task}",
                "dir": str(job),
                "overrides": [f"seed={task}"],
            }
        )
    (sweep / "sweep_status.json").write_text(
        json.dumps({"sweep_dir": str(sweep), "launcher": "slurm", "jobs": records})
    )
    rows = status_cli.statuses(sweep)
    assert [(s.state, s.checked) for _, s in rows] == [
        ("QUEUED", True), ("RUNNING", True), ("FAILED", True), ("INTERRUPTED", True), ("LOST", True)
    ]  # fmt: skip
    assert rows[2][1].note == "SLURM ended it: TIMEOUT"
    assert rows[4][1].note.startswith("SLURM no longer lists it, and it recorded no end")
    assert [c[0] for c in asked] == ["squeue", "sacct"] and "7_0,7_1,7_2,7_3,7_4" in asked[0]
    assert asked[1][asked[1].index("-j") + 1] == "7_3,7_4"
    # SLURM requeues its jobs itself; its launcher has no continuation to suggest
    assert status_cli.continue_commands(rows) == []

    def no_slurm_here(command, **kwargs):
        raise FileNotFoundError(command[0])

    monkeypatch.setattr(slurm_module.subprocess, "run", no_slurm_here)
    rows = status_cli.statuses(sweep)
    unchecked = ("QUEUED", False)
    assert [(s.state, s.checked) for _, s in rows] == [unchecked] * 3 + [("INTERRUPTED", True), unchecked]


# ------------------------------------------------------------------------------------------------ records
def test_a_resume_keeps_the_earlier_attempts_and_names_a_killed_one_lost(tmp_path):
    (tmp_path / "run_status.json").write_text(json.dumps(running(dead_pid())))
    with recorded_run(tmp_path, 100, "resume it") as outcome:
        assert read_run_status(tmp_path)["status"] == "RUNNING"
        outcome.result = {"global_step": 100}
    record = read_run_status(tmp_path)
    assert record["status"] == "COMPLETED" and record["global_step"] == 100
    (earlier,) = record["attempts"]
    assert earlier["status"] == "LOST" and earlier["note"].startswith("ended without recording its end")


# ------------------------------------------------------------------------------------------------ command
def test_the_command_lists_states_and_says_how_to_continue(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    done = make_job(sweep / "0_seed=1", run={"status": "COMPLETED", "global_step": 1000}, steps_logged=1000)
    cut = make_job(
        sweep / "1_seed=2",
        overrides=("seed=2",),
        run=running(dead_pid()),
        steps_logged=400,
        checkpoints=(300,),
    )
    records = [
        {"num": 0, "status": "COMPLETED", "dir": str(done), "overrides": ["seed=1"]},
        {"num": 1, "status": "RUNNING", "dir": str(cut), "overrides": ["seed=2"]},
    ]
    (sweep / "sweep_status.json").write_text(json.dumps({"sweep_dir": str(sweep), "jobs": records}))
    scorers = {"ddim_50": None, "ddpm_1000": dead_pid(), "ddim_10": os.getpid()}  # done, stopped, running
    for name, pid in scorers.items():
        (done / "evaluation" / name).mkdir(parents=True)
        process = {"process": {"pid": pid, "host": os.uname().nodename}} if pid else {}
        table = {
            "summary": {"complete": pid is None, "settings": 2, **process},
            "rows": [{"fd_classifier": 1.0}],
        }
        (done / "evaluation" / name / "evaluation.json").write_text(json.dumps(table))
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  job:\n    name: train\n  overrides:\n    task:\n    - seed=1,2\n    - model.channel_mult=[1,2]\n"
    )
    lone = make_job(
        tmp_path / "lone",
        overrides=("seed=3",),
        run={
            "status": "INTERRUPTED",
            "resume": "python -m diffusion_lab.train seed=3 ckpt_path=last resume_dir=LONE",
        },
    )
    rows = status_cli.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert [s.state for _, s in rows] == ["INTERRUPTED", "COMPLETED", "LOST"]  # find_jobs' order: by folder
    assert out.splitlines()[1].startswith("LOST ") and "400/1000" in out.splitlines()[1]  # unfinished first
    assert out.splitlines()[0].split() == ["state", "steps", "ETA", "last", "output", "evaluations", "job"]
    (completed,) = [line for line in out.splitlines() if line.startswith("COMPLETED")]
    assert "1000/1000" in completed and "  1 done, 1 running, 1 stopped  " in completed
    assert f"runs     : 3 under {tmp_path}: 1 lost, 1 interrupted, 1 completed" in out
    assert "continue : python -m diffusion_lab.train seed=3 ckpt_path=last resume_dir=LONE" in out
    assert (
        f"continue : python -m diffusion_lab.train -m seed=1,2 'model.channel_mult=[1,2]' hydra.sweep.dir={sweep} "
        "hydra.launcher.resume=true" in out
    )
    status_cli.main([str(lone), "--json"])
    (only,) = json.loads(capsys.readouterr().out)
    assert only["state"] == "INTERRUPTED" and only["dir"] == str(lone.resolve())


@pytest.mark.parametrize(
    "args, message",
    [
        (["NOWHERE"], "NOWHERE does not exist or is not a folder"),
        (["."], "--watch 0: give the seconds between two looks, a number above 0"),
        (["--colour"], "the following arguments are required: path"),
    ],
)
def test_bad_input_is_one_line(args, message, tmp_path):
    if args == ["."]:
        args = [str(make_job(tmp_path / "run")), "--watch", "0"]
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_lab.status", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env(tmp_path),
    )
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: ") and message in line


# ------------------------------------------------------------------------------------------------ a real run
@pytest.mark.slow
def test_a_training_killed_outright_is_lost_then_resumed_to_completion(tmp_path):
    """A real training: RUNNING while it trains, LOST after kill -9 (its record still says RUNNING), and the
    command the status prints resumes it to COMPLETED, the killed attempt kept as LOST."""
    run = tmp_path / "run"
    args = tiny_run(
        "data=digits",
        "trainer.max_steps=400",
        "callbacks.checkpoint.every_n_train_steps=20",
        "trainer.log_every_n_steps=5",
    )
    env = cli_env(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffusion_lab.train", *args, f"hydra.run.dir={run}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not list(run.glob("checkpoints/step_*.ckpt")) and time.time() < deadline:
            time.sleep(0.2)
        assert status_cli.statuses(run)[0][1].state == "RUNNING"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and read_run_status(run)["status"] == "RUNNING"
    ((_, state),) = status_cli.statuses(run)
    assert state.state == "LOST" and state.step is not None and 0 < state.step < 400
    (command,) = status_cli.continue_commands(status_cli.statuses(run))
    resumed = subprocess.run(
        [sys.executable, *shlex.split(command)[1:]], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record = read_run_status(run)
    assert (record["status"], record["global_step"]) == ("COMPLETED", 400)
    assert [a["status"] for a in record["attempts"]] == ["LOST"]
    assert find_jobs(run)[0].status == "COMPLETED"  # the report reads the run's own record
