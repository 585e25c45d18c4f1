"""One training at a time in a run folder: a second one is refused in one line naming the first; the lock dies
with its process (kill -9 included); DDP's other ranks and file systems without locks are let through."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from conftest import small_train_cfg
from diffusion_lab import run_lock as run_lock_module
from diffusion_lab.errors import UserError
from diffusion_lab.run_lock import LOCK_FILE, run_lock
from diffusion_lab.train import train

HOLD = """
import sys, time
from pathlib import Path
from diffusion_lab.run_lock import run_lock
with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def _refusal(run, pid: int) -> str:
    return (
        rf"the run directory {re.escape(str(run))} is in use by another training \(pid {pid} on "
        rf"{re.escape(socket.gethostname())}, since \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\); wait for it to end or stop "
        r"it, then start or resume the run"
    )


def test_a_second_training_in_a_run_folder_is_refused_until_the_first_process_is_gone(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = small_train_cfg(run, "trainer.max_steps=2")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as err:
            train(cfg)
        assert re.fullmatch(_refusal(run, holder.pid), str(err.value)), str(err.value)
        assert not (run / "checkpoints").exists()  # nothing written by the refused one
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Killed, it holds nothing: the kernel released the lock, the file it left does not block.
    assert (run / LOCK_FILE).is_file()
    assert train(cfg)["global_step"] == 2


def test_the_same_process_cannot_take_a_held_lock_twice(tmp_path):
    refused = pytest.raises(UserError, match=_refusal(tmp_path, os.getpid()))
    with run_lock(tmp_path), refused, run_lock(tmp_path):
        pass
    with run_lock(tmp_path):  # released at the end of the block
        pass


def test_other_ranks_do_not_lock(tmp_path, monkeypatch):
    with run_lock(tmp_path):
        monkeypatch.setattr(rank_zero_only, "rank", 1)
        with run_lock(tmp_path):  # DDP's rank 1 trains in rank 0's folder
            pass


RANK_PROBE = """
import sys
from diffusion_lab.run_lock import process_rank
before = process_rank()
loaded = "lightning" in sys.modules
from lightning.pytorch.utilities.rank_zero import rank_zero_only
print(before, loaded, rank_zero_only.rank, process_rank())
"""


@pytest.mark.parametrize(
    "env,rank",
    [({}, 0), ({"SLURM_PROCID": "2"}, 2), ({"RANK": "3", "LOCAL_RANK": "1", "SLURM_PROCID": "2"}, 3)],
    ids=["none", "slurm", "rank-first"],
)
def test_the_rank_read_before_lightning_loads_is_lightnings_own(env, rank):
    """Hydra's run-start check reads this process's rank without loading Lightning (seconds of every refused
    command); Lightning, loaded afterwards in the same process, gives the same rank."""
    names = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
    base = {k: v for k, v in os.environ.items() if k not in names}
    proc = subprocess.run(
        [sys.executable, "-c", RANK_PROBE], env={**base, **env}, capture_output=True, text=True, check=True
    )
    assert proc.stdout.split() == [str(rank), "False", str(rank), str(rank)]


def test_a_file_system_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_lock_module.fcntl, "flock", no_locks)
    with (
        pytest.warns(UserWarning, match=r"cannot lock .*\.run\.lock \(No locks available\); this run is not"),
        run_lock(tmp_path),
    ):
        pass


def test_the_command_line_refuses_a_training_in_use_before_hydra_rewrites_its_record(tmp_path):
    """A second training started into the folder of one still training (before its first checkpoint, so the
    folder holds no run yet) is refused before Hydra writes its own ``.hydra`` record over the first one's,
    which a resume of the first run would then read."""
    from conftest import cli_env
    from sweeps import tiny_run

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 3\n")  # the training in progress's record
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        kept = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        second = subprocess.run(
            [sys.executable, "-m", "diffusion_lab.train", *tiny_run("seed=7"), f"hydra.run.dir={run}"],
            env=cli_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert second.returncode == 2 and second.stdout == ""
    assert re.fullmatch("error: " + _refusal(run, holder.pid), second.stderr.strip()), second.stderr[-3000:]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == kept
