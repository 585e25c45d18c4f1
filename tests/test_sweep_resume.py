"""Continuing a stopped sweep in its own folder (gpu_pool, ``hydra.launcher.resume=true``): completed jobs are
kept, an interrupted job continues from its checkpoint to the weights it would have reached, a job that left no
checkpoint starts again, a new job takes an unused number; without resume the folder is refused untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hydra_plugins.diffusion_lab_launcher._sweep_resume import earlier_jobs, job_numbers
from hydra_plugins.diffusion_lab_launcher._sweep_status import STATUS_FILE, read_status
from sweeps import run_report, run_sweep, sweep_status, tiny_run

SWEEP = (
    "hydra.launcher.max_parallel=2",
    "trainer.max_steps=8",
    "callbacks.checkpoint.every_n_train_steps=4",
    "trainer.val_check_interval=4",
    "final_samples=0",
)


def _earlier(sweep: Path, job_overrides: list[list[str]]):
    """``earlier_jobs`` on the status file in ``sweep``, as the launcher reads it."""
    return earlier_jobs(read_status(sweep / STATUS_FILE), sweep, job_overrides)


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def _interrupt_after_step_4(job: Path) -> None:
    """Leave ``job`` as a kill after its step-4 checkpoint would: no later checkpoint, no return value."""
    for path in (job / "checkpoints").iterdir():
        if not path.name.startswith("step_0000004"):
            path.unlink()
    (job / ".hydra" / "job_return.json").unlink()


def _fail_before_any_checkpoint(job: Path) -> None:
    """Leave ``job`` as a run that failed before its first checkpoint."""
    for path in (job / "checkpoints").iterdir():
        path.unlink()
    (job / ".hydra" / "job_return.json").unlink()


def _set_status(sweep: Path, states: dict[int, str]) -> None:
    status = sweep_status(sweep)
    for job in status["jobs"]:
        if job["num"] in states:
            job["status"], job["exit_code"] = (
                states[job["num"]],
                (1 if states[job["num"]] == "FAILED" else None),
            )
    (sweep / STATUS_FILE).write_text(json.dumps(status, indent=2))


@pytest.mark.slow  # three small sweeps: about a minute on 2 cores
def test_a_stopped_sweep_continues_where_it_stopped(tmp_path):
    proc, sweep = run_sweep(tmp_path, *tiny_run(*SWEEP, "seed=1,2,3"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {j["num"]: Path(j["dir"]) for j in sweep_status(sweep)["jobs"]}
    uninterrupted = _weights(jobs[1] / "checkpoints" / "last.ckpt")
    kept_log = (jobs[0] / "job.log").read_text()
    kept_files = {p: p.stat().st_mtime_ns for p in jobs[0].rglob("*") if p.is_file()}
    _interrupt_after_step_4(jobs[1])
    _fail_before_any_checkpoint(jobs[2])
    _set_status(sweep, {1: "INTERRUPTED", 2: "FAILED"})
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}

    # The same command again, without resume: refused in one line, before anything is written.
    proc, _ = run_sweep(tmp_path, *tiny_run(*SWEEP, "seed=1,2,3"), timeout=300)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.strip() == (
        f"error: hydra.sweep.dir={sweep} already holds a sweep (3 job(s) in sweep_status.json); continue it "
        "with hydra.launcher.resume=true, or give another hydra.sweep.dir"
    )
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before

    # With resume, and one seed more.
    proc, _ = run_sweep(
        tmp_path, *tiny_run(*SWEEP, "seed=1,2,3,4", "hydra.launcher.resume=true"), timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (
        "continuing the sweep: 1 completed earlier (kept), 1 resumed from their checkpoints, 1 started again, 1 new"
    ) in proc.stdout
    status = {j["num"]: j for j in sweep_status(sweep)["jobs"]}
    assert sorted(status) == [0, 1, 2, 3] and all(j["status"] == "COMPLETED" for j in status.values())
    assert status[3]["overrides"][-1] == "seed=4" and Path(status[3]["dir"]).name == "3_seed=4"

    # The first command's record kept beside the second's.
    assert (sweep / "multirun.1.yaml").read_bytes() == before[sweep / "multirun.yaml"]
    assert "seed=1,2,3,4" in (sweep / "multirun.yaml").read_text()

    # Kept as it was: not run again, not a file touched.
    assert (jobs[0] / "job.log").read_text() == kept_log
    assert {p: p.stat().st_mtime_ns for p in jobs[0].rglob("*") if p.is_file()} == kept_files
    assert "attempts" not in status[0]

    # Resumed in its folder from step 4, ending with the weights of the uninterrupted run.
    resumed = _weights(jobs[1] / "checkpoints" / "last.ckpt")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert (jobs[1] / ".hydra" / "resume_1" / "overrides.yaml").is_file()
    steps = [int(r["step"]) for r in _csv_rows(jobs[1]) if r.get("train/loss")]
    assert len(steps) == len(set(steps))  # each step once, the first attempt's rows after step 4 replaced
    assert [a["status"] for a in status[1]["attempts"]] == ["INTERRUPTED"]

    # Started again where nothing had been trained; its log keeps the first attempt above the second.
    assert [a["status"] for a in status[2]["attempts"]] == ["FAILED"]
    assert (jobs[2] / "job.log").read_text().count("\n$ ") == 1
    assert not (jobs[2] / ".hydra" / "resume_1").exists()

    # The report reads the continued sweep: every job, each attempt counted.
    proc = run_report(sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (sweep / "report.md").read_text()
    assert "4 of 4 jobs completed" in md or md.count("COMPLETED") >= 4
    assert (
        "ran in 2 attempts (its sweep was continued): INTERRUPTED, then COMPLETED; its wall time is their sum"
        in md
    )
    assert "ran in 2 attempts (its sweep was continued): FAILED, then COMPLETED" in md


def _csv_rows(job: Path) -> list[dict[str, str]]:
    import csv

    with open(job / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _status_file(tmp_path: Path, *jobs: tuple[int, list[str], str]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    records = [{"num": n, "overrides": o, "status": s, "dir": str(tmp_path / f"{n}_x")} for n, o, s in jobs]
    (tmp_path / STATUS_FILE).write_text(json.dumps({"sweep_dir": str(tmp_path), "jobs": records}))
    return tmp_path


def test_jobs_are_matched_by_their_overrides_and_longer_training_resumes_a_completed_job(tmp_path):
    sweep = _status_file(
        tmp_path,
        (0, ["seed=1", "trainer.max_steps=8"], "COMPLETED"),
        (1, ["seed=2", "trainer.max_steps=8"], "FAILED"),
    )
    for n in (0, 1):
        (sweep / f"{n}_x" / ".hydra").mkdir(parents=True)
        (sweep / f"{n}_x" / ".hydra" / "job_return.json").write_text("{}")
    # Same overrides in another order: the same job, completed.
    same = _earlier(sweep, [["trainer.max_steps=8", "seed=1"]])[0]
    assert same is not None and same.num == 0 and same.completed()
    # More steps (a resumable override): the same job and folder, but not done.
    longer = _earlier(sweep, [["seed=1", "trainer.max_steps=16"], ["seed=2", "trainer.max_steps=16"]])
    assert [e.num for e in longer] == [0, 1] and not any(e.completed() for e in longer)
    assert longer[0].dir == sweep / "0_x"
    # Another value of a key that is not resumable: another job, numbered past the recorded ones.
    other = _earlier(sweep, [["seed=1", "schedule=cosine", "trainer.max_steps=8"], ["seed=3"]])
    assert other == [None, None]
    # Without the resumable override (back to its default): still the same job.
    assert _earlier(sweep, [["seed=2"]])[0].num == 1
    assert job_numbers([None, longer[1], None], first=0, recorded=[0, 1]) == [2, 1, 3]
    assert job_numbers([None, None], first=5, recorded=[]) == [5, 6]


def test_a_moved_sweep_folder_continues_in_its_new_place(tmp_path):
    sweep = _status_file(tmp_path / "new", (0, ["seed=1"], "FAILED"))
    status = json.loads((sweep / STATUS_FILE).read_text())
    status["sweep_dir"] = "/elsewhere/sweep"
    status["jobs"][0]["dir"] = "/elsewhere/sweep/0_seed=1"
    (sweep / STATUS_FILE).write_text(json.dumps(status))
    assert _earlier(sweep, [["seed=1"]])[0].dir == sweep / "0_seed=1"


def test_a_job_whose_process_still_runs_is_not_started_twice(tmp_path):
    import socket
    import subprocess

    from diffusion_lab.errors import UserError
    from hydra_plugins.diffusion_lab_launcher._sweep_resume import check_not_running

    sweep = _status_file(tmp_path, (0, ["seed=1"], "RUNNING"))
    status = json.loads((sweep / STATUS_FILE).read_text())
    alive = subprocess.Popen(["sleep", "60"])
    try:
        status["jobs"][0].update(host=socket.gethostname(), pid=alive.pid)
        (sweep / STATUS_FILE).write_text(json.dumps(status))
        with pytest.raises(UserError) as err:
            check_not_running(_earlier(sweep, [["seed=1"]]))
        assert str(err.value) == (
            f"job #0 of this sweep still runs (pid {alive.pid}, 0_x); stop it or let it end before continuing "
            "the sweep"
        )
        status["jobs"][0]["host"] = "another-host"  # its machine is gone, or at least not this one
        (sweep / STATUS_FILE).write_text(json.dumps(status))
        check_not_running(_earlier(sweep, [["seed=1"]]))
    finally:
        alive.kill()
        alive.wait()
    status["jobs"][0]["host"] = socket.gethostname()  # this host, its process ended
    (sweep / STATUS_FILE).write_text(json.dumps(status))
    check_not_running(_earlier(sweep, [["seed=1"]]))


def test_a_continued_jobs_wall_time_is_the_sum_of_its_attempts():
    from diffusion_lab.reporting.runs import _wall_time

    attempts = [{"status": "INTERRUPTED", "duration_s": 7.5}, {"status": "FAILED", "duration_s": None}]
    assert _wall_time({"duration_s": 2.0, "attempts": attempts}) == 9.5
    assert _wall_time({"duration_s": 2.0}) == 2.0 and _wall_time({}) is None


def test_a_folder_holding_a_sweep_is_refused_before_anything_is_written(tmp_path, capsys):
    from omegaconf import OmegaConf

    from hydra_plugins.diffusion_lab_launcher._sweep_resume import SweepFolderCheck

    sweep = _status_file(tmp_path, (0, ["seed=1"], "COMPLETED"), (1, ["seed=2"], "FAILED"))
    (sweep / "multirun.yaml").write_text("first: command\n")
    check = SweepFolderCheck()

    def config(**launcher):
        return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "launcher": launcher}})

    for launcher, how in (
        ({"resume": False}, "continue it with hydra.launcher.resume=true, or give"),
        ({}, "give"),
    ):
        with pytest.raises(SystemExit) as stop:
            check.on_multirun_start(config(**launcher))
        assert stop.value.code == 2
        assert capsys.readouterr().err == (
            f"error: hydra.sweep.dir={sweep} already holds a sweep (2 job(s) in sweep_status.json); {how} another "
            "hydra.sweep.dir\n"
        )
    assert (sweep / "multirun.yaml").read_text() == "first: command\n"
    check.on_multirun_start(
        config(resume=True)
    )  # continued: the earlier command kept under the next free number
    assert (sweep / "multirun.1.yaml").read_text() == "first: command\n" and not (
        sweep / "multirun.yaml"
    ).exists()
    (sweep / "multirun.yaml").write_text("second: command\n")
    check.on_multirun_start(config(resume=True))
    assert (sweep / "multirun.2.yaml").read_text() == "second: command\n"
    # A folder without a sweep's status (new, or an Optuna batch's first): nothing to check.
    check.on_multirun_start(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "new")}, "launcher": {}}})
    )


def test_a_job_that_completed_after_its_launcher_was_killed_is_kept_and_its_record_corrected(tmp_path):
    sweep = _status_file(
        tmp_path, (0, ["seed=1"], "RUNNING"), (1, ["seed=2"], "FAILED"), (2, ["seed=3"], "RUNNING")
    )
    for n in (0, 1):
        (sweep / f"{n}_x" / ".hydra").mkdir(parents=True)
        (sweep / f"{n}_x" / ".hydra" / "job_return.json").write_text("{}")
    running_done, failed, running = _earlier(sweep, [["seed=1"], ["seed=2"], ["seed=3"]])
    assert running_done.completed() and not failed.completed() and not running.completed()
    record = running_done.completed_record(sweep / "0_x", sweep / "0_x" / "job.log")
    assert (record["status"], record["exit_code"]) == ("COMPLETED", 0)
    assert record["note"] == "recorded RUNNING; its return value shows it completed"


def test_a_job_stopped_by_a_signal_is_resumed_not_kept(tmp_path):
    sweep = _status_file(tmp_path, (0, ["seed=1"], "INTERRUPTED"), (1, ["seed=2"], "RUNNING"))
    for n in (0, 1):
        (sweep / f"{n}_x" / ".hydra").mkdir(parents=True)
        stopped = {"return_value": 1.0, "stopped_by": "SIGTERM"}
        (sweep / f"{n}_x" / ".hydra" / "job_return.json").write_text(json.dumps(stopped))
    assert not any(e.completed() for e in _earlier(sweep, [["seed=1"], ["seed=2"]]))
