"""Bad input on every entry point, through the real command line: the whole output (stdout and stderr) is one
actionable ``error: ...`` line, exit status 2, no traceback (the full trace only with HYDRA_FULL_ERROR=1), and no
run folder left behind. Hydra's own refusals (an unknown option of a group, an unknown key, an override it cannot
parse) included: the line names the group's choices or the nearest key.

Each case is a subprocess (several seconds of imports): the default run keeps a few, ``-m slow`` runs all.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli_env, small_train_cfg, write_image_folder
from diffusion_lab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
slow = pytest.mark.slow


def slow_case(command: str, args: list[str], text: str):
    """A case whose command takes long to start (a subprocess that imports the package, reads data, loads a
    checkpoint): run with the slow tests."""
    return pytest.param(command, args, text, marks=slow)


RELIABILITY = Path(__file__).resolve().parents[1] / "RELIABILITY.md"

# (entry point, arguments ({...} filled from the `files` fixture), text of the error line)
CASES = [
    # train
    ("train", ["trainer.max_steps=abc"], "trainer.max_steps='abc' must be an integer"),
    (
        "train",
        ["schedule=cosin"],
        "schedule=cosin is not an option of schedule; choose one of: cosine, linear, quadratic, sigmoid",
    ),
    ("train", ["trainer.max_stepz=5"], "did you mean trainer.max_steps?"),
    ("train", ["trainer.max_steps=[1,"], "cannot parse the override 'trainer.max_steps=[1,'"),
    slow_case("train", ["loss=vlb", "weighting=snr"], "loss=vlb is the true bound"),
    slow_case("train", ["data=mnist", "data.root={missing}"], "MNIST train files not found"),
    slow_case("train", ["data=image_folder", "data.root={empty}"], "holds no images"),
    slow_case(
        "train",
        ["data=image_folder", "data.root={corrupt_images}", "data.image_size=16", "data.batch_size=2"]
        + ["data.val_size=1", "data.num_workers=0", "trainer.max_steps=1"],
        "cannot read image file",
    ),
    slow_case("train", ["ckpt_path={ckpt}"], "holds another network (UNet"),
    ("train", ["paths.root_dir={a_file}/sub"], "cannot create the run directory"),
    slow_case(
        "train",
        ["-m", "hparams_search=fmnist_optuna", "hydra.sweeper.n_trials=0"],
        "hydra.sweeper.n_trials=0 is invalid: it must be an integer >= 1",
    ),
    slow_case(
        "train",
        ["experiment=fmnist_fast"],  # compile=capture on a machine without a GPU
        "compile=capture records CUDA graphs and needs a CUDA device (trainer=gpu on a machine with one); for a CPU "
        "run use compile=false trainer=cpu",
    ),
    slow_case(
        "train",
        ["compile=true", "compile_cache={a_file}/cc"],
        "compile_cache='{a_file}/cc' cannot be written: {a_file} is a file, not a folder",
    ),
    # train: values of the right type out of range, refused before any work
    slow_case(
        "train",
        ["trainer.val_check_interval=0"],
        "trainer.val_check_interval=0 is out of range; it must be > 0 (steps, or a fraction of an epoch), or null",
    ),
    slow_case("train", ["optimizer.lr=0"], "optimizer.lr=0 is out of range; it must be a number > 0"),
    slow_case(
        "train",
        ["trainer.gradient_clip_val=-1"],
        "trainer.gradient_clip_val=-1 is out of range; it must be >= 0 (0 or null: no clipping)",
    ),
    slow_case("train", ["seed=-1"], "seed=-1 is out of range; it must be an integer in [0, 2**32)"),
    # train: settings a part refuses only once the Trainer runs, or takes without a word
    slow_case(
        "train",
        ["data=toy2d", "model=mlp", "optimizer.betas=[2,0.9]"],
        "optimizer=adamw refuses its settings (Invalid beta parameter at index 0: 2)",
    ),
    slow_case(
        "train",
        ["data=toy2d", "model=mlp", "optimizer.betas=[0.9]"],
        "optimizer=adamw refuses its settings (list index out of range); fix that optimizer.* value",
    ),
    slow_case(
        "train",
        ["data=digits", "model.channel_mult=[1,abc]"],
        "model=UNet refuses its settings (invalid literal for int() with base 10: 'abc'); fix that model.* value",
    ),
    slow_case(
        "train",
        ["data=toy2d", "model=mlp", "lr_scheduler.warmup_steps=-1"],
        "lr_scheduler.warmup_steps=-1 is invalid: it must be an integer >= 0",
    ),
    slow_case(
        "train",
        ["data=digits", "callbacks.sample_grid.n=0"],
        "callbacks.sample_grid.n=0 is invalid: it must be an integer >= 1",
    ),
    slow_case(
        "train",
        ["data=toy2d", "model=mlp", "conditional=true"],
        "conditional=true needs labelled data, but data.name=swiss_roll has no classes",
    ),
    slow_case(
        "train",
        ["data=toy2d", "model=mlp", "p_uncond=0.1"],
        "p_uncond=0.1 drops labels for classifier-free guidance, but conditional=false",
    ),
    slow_case(
        "train", ["data=toy2d"], "model=UNet does not take points (data.name=swiss_roll gives shape [2])"
    ),
    # sample
    ("sample", ["ckpt={truncated}"], "truncated or not a checkpoint"),
    slow_case("sample", [], "ckpt_path= is required (alias ckpt=)"),
    slow_case(
        "sample",
        ["ckpt={ckpt}", "schedule=cosine"],
        "error: schedule is fixed by the checkpoint and cannot be overridden when sampling",
    ),
    slow_case("sample", ["ckpt={ckpt}", "n=abc"], "n='abc' must be an integer"),
    slow_case(
        "sample", ["ckpt={ckpt}", "batch_size=0"], "batch_size=0 is invalid: it must be an integer >= 1"
    ),
    slow_case(
        "sample", ["ckpt={ckpt}", "device=bogus"], "device='bogus' is not a device; use device=auto, cpu"
    ),
    slow_case("sample", ["ckpt={ckpt}", "out_dir={a_file}/sub"], "cannot write the samples to out_dir="),
    # evaluate
    slow_case("evaluate", ["ckpt={not_ours}"], "was not written by diffusion_lab"),
    slow_case("evaluate", ["ckpt={ckpt}", "metrics=[fidd]"], "metrics=['fidd'] unknown"),
    slow_case(
        "evaluate",
        ["ckpt={ckpt}", "out_dir={a_file}/sub"],
        "out_dir='{a_file}/sub' cannot be written: {a_file} is a file, not a folder",
    ),
    # report
    ("report", ["{empty}"], "holds no jobs"),
    slow_case(
        "report", [], "the following arguments are required: sweep (python -m diffusion_lab.report --help)"
    ),
    # features
    slow_case("features", ["epochs=abc"], "epochs='abc' must be an integer"),
    slow_case("features", ["data=toy2d"], "has no labelled images"),
    slow_case(
        "features",
        ["data=digits", "out={a_file}/clf.pt"],
        "out='{a_file}/clf.pt' cannot be written: {a_file} is a file, not a folder",
    ),
    slow_case(
        "features", ["data=digits", "out={empty}"], "out='{empty}' is a folder; name the classifier file"
    ),
    # visualize
    slow_case("visualize", ["figure=vlb", "ckpt={truncated}"], "truncated or not a checkpoint"),
    slow_case("visualize", ["figure=nope"], "figure='nope' is unknown"),
    slow_case(
        "visualize",
        ["figure=schedules", "out_dir={a_file}/sub"],
        "out_dir='{a_file}/sub' cannot be written: {a_file} is a file, not a folder",
    ),
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


@pytest.mark.parametrize("entry,args,expected", CASES)
def test_bad_input_is_one_line(entry, args, expected, files, tmp_path):
    proc = run_cli(entry, [a.format(**files) for a in args], tmp_path)
    output = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(output) == 1 and output[0].startswith("error:"), proc.stdout[-2000:] + proc.stderr[-3000:]
    assert expected.format(**files) in output[0]
    assert proc.returncode == 2
    assert not list(tmp_path.glob("outputs/*/runs/*"))  # a rejected run leaves no run folder


@slow
def test_full_trace_with_hydra_full_error(tmp_path):
    proc = run_cli("train", ["trainer.max_steps=abc"], tmp_path, HYDRA_FULL_ERROR="1")
    assert proc.returncode != 0
    assert (
        "Traceback" in proc.stderr and "UserError: trainer.max_steps='abc' must be an integer" in proc.stderr
    )


@pytest.mark.parametrize(
    "entry,args",
    [
        ("train", ["schedule=cosin"]),
        ("train", ["trainer.max_stepz=5"]),
        ("train", ["-m", "schedule=linear,cosin"]),
        ("train", ["optimizer.lr=-1"]),
        ("train", ["trainer.max_steps=abc"]),
        ("train", ["experiment=fmnist_latent"]),
        ("sample", ["schedule=cosine", "ckpt=x.ckpt"]),
        ("sample", ["ckpt=x.ckpt", "n=0"]),
        ("evaluate", ["ckpt=x.ckpt", "metrics=[fid,bogus]"]),
        ("evaluate", ["ckpt=x.ckpt", "sampler=ddmi"]),
        ("evaluate", ["metrics=[fid]"]),
        ("features", ["epochz=3"]),
        ("visualize", ["forwad"]),
        ("export", ["format=onnx"]),
        ("import_model", ["src=no_such_folder", "out=x.ckpt"]),
        ("report", ["no_such_sweep"]),
        ("status", ["no_such_sweep"]),
    ],
    ids=[
        "train-option",
        "train-key",
        "train-sweep",
        "train-range",
        "train-type",
        "train-required",
        "sample-fixed-part",
        "sample-count",
        "evaluate-metric",
        "evaluate-sampler",
        "evaluate-no-checkpoint",
        "features-key",
        "visualize-figure",
        "export-format",
        "import_model-src",
        "report-folder",
        "status-folder",
    ],
)
def test_a_mistyped_command_line_is_refused_before_lightning_and_torch_load(entry, args, tmp_path):
    """What Hydra refuses while composing (a group's option, a key, a sweep's values), a command's own argument
    checks and a training value's type or range are refused before the heavy imports (Lightning, torch: most of a
    start-up's seconds), so a typo costs about a second."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{entry!r}, *{args!r}]\n"
        "try:\n"
        f"    runpy.run_module('diffusion_lab.{entry}', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code, sorted(m for m in ('lightning', 'torch') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True
    )
    assert proc.stdout.splitlines()[-1] == "exit 2 []", proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args,expected",
    [
        (
            ["loss=hybrid", "variance=fixed_small"],
            "loss=hybrid needs a learned variance but variance=fixed_small",
        ),
        (["loss=simple", "variance=learned_range"], "loss=simple gives the variance no gradient"),
        (["process=edm", "sampler=ddim"], "sampler=ddim applies to process=ddpm, not process=edm"),
        (["process=edm", "schedule=cosine"], "process=edm takes no schedule but schedule=cosine is set"),
        (
            ["sampler.steps=5000"],
            "sampler.steps=5000 is invalid: the step count must be between 1 and T=1000",
        ),
    ],
    ids=["hybrid-fixed", "simple-learned", "sampler-process", "schedule-edm", "sampler-steps"],
)
def test_parts_that_cannot_train_together_are_refused_before_lightning_loads(args, expected, tmp_path):
    """A combination Hydra composes but the parts refuse (a loss and a variance, a sampler and a process) is
    checked with torch and the parts alone, before Lightning loads and the data is read: one line, exit 2, no run
    folder."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['train', *{args!r}]\n"
        "try:\n"
        "    runpy.run_module('diffusion_lab.train', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code, sorted(m for m in ('lightning', 'torch') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True
    )
    assert proc.stdout.splitlines()[-1] == "exit 2 ['torch']", proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error: {expected}") and len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("outputs/*/runs/*"))


def test_case_count():
    """RELIABILITY.md quotes the number of bad inputs tried: it must be this table's."""
    entries = {c.values[0] if hasattr(c, "values") else c[0] for c in CASES}
    assert entries == {"train", "sample", "evaluate", "report", "features", "visualize"}
    text = RELIABILITY.read_text()
    quoted = re.findall(r"Bad inputs tried: (\d+) on the command line", text)
    quoted += re.findall(r"test_bad_input_is_one_line` \((\d+) cases", text)
    assert quoted and set(quoted) == {str(len(CASES))}, (quoted, len(CASES))
