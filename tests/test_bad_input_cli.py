"""Bad input on every entry point, through the real command line: one actionable ``error: ...`` line on stderr,
a non-zero exit, no traceback (the full trace only with HYDRA_FULL_ERROR=1).

Hydra's own refusals (an unknown option or key) keep Hydra's message — it lists the choices — and exit 1.
Each case is a subprocess (several seconds of imports): the default run keeps a few, ``-m slow`` runs all.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli_env, small_train_cfg, write_image_folder
from diffusion_lab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
slow = pytest.mark.slow

# (entry point, arguments ({...} filled from the `files` fixture), text of the error, whose message)
CASES = [
    # train
    ("train", ["trainer.max_steps=abc"], "trainer.max_steps='abc' must be an integer", "ours"),
    pytest.param("train", ["schedule=nope"], "Could not find 'schedule/nope'", "hydra", marks=slow),
    pytest.param("train", ["trainer.max_stepz=5"], "Key 'max_stepz' is not in struct", "hydra", marks=slow),
    pytest.param("train", ["loss=vlb", "weighting=snr"], "loss=vlb is the true bound", "ours", marks=slow),
    pytest.param(
        "train", ["data=mnist", "data.root={missing}"], "MNIST train files not found", "ours", marks=slow
    ),
    pytest.param("train", ["data=image_folder", "data.root={empty}"], "holds no images", "ours", marks=slow),
    pytest.param(
        "train",
        ["data=image_folder", "data.root={corrupt_images}", "data.image_size=16", "data.batch_size=2"]
        + ["data.val_size=1", "data.num_workers=0", "trainer.max_steps=1"],
        "cannot read image file",
        "ours",
        marks=slow,
    ),
    pytest.param("train", ["ckpt_path={ckpt}"], "holds another network (UNet", "ours", marks=slow),
    ("train", ["paths.root_dir={a_file}/sub"], "cannot create the run directory", "ours"),
    # sample
    ("sample", ["ckpt={truncated}"], "truncated or not a checkpoint", "ours"),
    pytest.param("sample", [], "ckpt= is required", "ours", marks=slow),
    pytest.param("sample", ["ckpt={ckpt}", "n=abc"], "n='abc' must be an integer", "ours", marks=slow),
    # evaluate
    pytest.param("evaluate", ["ckpt={not_ours}"], "was not written by diffusion_lab", "ours", marks=slow),
    pytest.param(
        "evaluate", ["ckpt={ckpt}", "metrics=[fidd]"], "metrics=['fidd'] unknown", "ours", marks=slow
    ),
    # report
    ("report", ["{empty}"], "holds no jobs", "ours"),
    # features
    pytest.param("features", ["epochs=abc"], "epochs='abc' must be an integer", "ours", marks=slow),
    pytest.param("features", ["data=toy2d"], "has no labelled images", "ours", marks=slow),
    # visualize
    pytest.param(
        "visualize", ["figure=vlb", "ckpt={truncated}"], "truncated or not a checkpoint", "ours", marks=slow
    ),
    pytest.param("visualize", ["figure=nope"], "figure='nope' is unknown", "ours", marks=slow),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_thread) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad_input")
    ckpt = Path(train(small_train_cfg(root / "run", "trainer.max_steps=1", "final_samples=0"))["checkpoint"])
    truncated = root / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:4000])
    not_ours = root / "not_ours.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, not_ours)
    (root / "empty").mkdir()
    corrupt = write_image_folder(root / "corrupt_images", n=6, size=16)
    for png in corrupt.rglob("*.png"):
        png.write_bytes(b"not a png")
    (root / "a_file").write_text("a file, not a folder")
    return {
        "ckpt": str(ckpt),
        "truncated": str(truncated),
        "not_ours": str(not_ours),
        "empty": str(root / "empty"),
        "missing": str(root / "no_such_folder"),
        "corrupt_images": str(corrupt),
        "a_file": str(root / "a_file"),
    }


def run_cli(entry: str, args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"diffusion_lab.{entry}", *args],
        cwd=cwd,
        env={**cli_env(cwd), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("entry,args,expected,source", CASES)
def test_bad_input_is_one_line(entry, args, expected, source, files, tmp_path):
    proc = run_cli(entry, [a.format(**files) for a in args], tmp_path)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert expected in proc.stderr, proc.stderr[-3000:]
    if source == "ours":
        assert proc.returncode == 2
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained, nothing saved


@slow
def test_full_trace_with_hydra_full_error(tmp_path):
    proc = run_cli("train", ["trainer.max_steps=abc"], tmp_path, HYDRA_FULL_ERROR="1")
    assert proc.returncode != 0
    assert (
        "Traceback" in proc.stderr and "UserError: trainer.max_steps='abc' must be an integer" in proc.stderr
    )


def test_case_count():
    """The number of bad inputs tried (RELIABILITY.md quotes it)."""
    entries = {c.values[0] if hasattr(c, "values") else c[0] for c in CASES}
    assert entries == {"train", "sample", "evaluate", "report", "features", "visualize"}
    print(f"\nbad inputs tried on the command line: {len(CASES)} over {len(entries)} entry points")
