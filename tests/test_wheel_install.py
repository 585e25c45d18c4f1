"""The package as users install it: a wheel (``pip install .``) in a fresh venv, run from outside a checkout.

The wheel must carry the configs (``diffusion_lab/conf``) and the console scripts; the venv imports the wheel's
diffusion_lab, never the checkout's ``src/``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import CPU_ONLY, SMALL_RUN, TINY_MODEL, cli_env, write_fake_idx_root

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# What a source distribution holds: building from a copy leaves the checkout without build/ or *.egg-info.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "src", "conf")


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(REPO / name, source / name)
    out = tmp_path / "wheel"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    subprocess.run([*pip, "-w", str(out), str(source)], check=True, capture_output=True, timeout=900)
    [wheel] = out.glob("diffusion_lab-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A venv holding the wheel alone; the dependencies (torch, Lightning, Hydra...) come from the dev venv's
    site-packages through a .pth path line (a venv made from a venv sees the base interpreter's packages
    only). A path line does not run the dev venv's own .pth files, so its editable install stays out."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True
    )
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--no-deps",
        "--no-index",
        "-q",
    ]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True, timeout=900)
    return venv


def run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = cli_env(cwd)
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheel = build_wheel(tmp_path)
    venv = fresh_venv(tmp_path, wheel)
    work = tmp_path / "elsewhere"
    work.mkdir()
    python = str(venv / "bin" / "python")

    where = run(
        venv, work, python, "-c", "import diffusion_lab.cli as c; print(c.__file__); print(c.CONFIG_DIR)"
    )
    module_file, config_dir = where.stdout.split()[-2:]
    assert Path(module_file).is_relative_to(venv) and Path(config_dir).is_relative_to(venv)
    assert Path(config_dir, "train.yaml").is_file() and Path(config_dir, "debug", "limit.yaml").is_file()
    # the installed code is the checkout's: the digest a run records is the same for both
    from diffusion_lab.provenance import code_sha256

    installed = run(
        venv, work, python, "-c", "from diffusion_lab.provenance import code_sha256; print(code_sha256())"
    )
    assert installed.stdout.split()[-1] == code_sha256()

    data = write_fake_idx_root(tmp_path / "fmnist")
    overrides = [*CPU_ONLY, *SMALL_RUN, *TINY_MODEL["UNet"], f"data.root={data}", "trainer.max_steps=2"]
    run(venv, work, python, "-m", "diffusion_lab.train", *overrides, f"hydra.run.dir={work / 'run'}")
    ckpt = work / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    sampled = run(
        venv,
        work,
        python,
        "-m",
        "diffusion_lab.sample",
        f"ckpt_path={ckpt}",
        "n=2",
        "steps=2",
        "device=cpu",
        "progress=false",
        f"out_dir={work / 'samples'}",
    )
    assert list((work / "samples").glob("*.npz")), sampled.stdout

    for script in ("train", "sample", "evaluate", "features", "visualize", "report", "export", "import"):
        assert (venv / "bin" / f"diffusion-lab-{script}").is_file(), script
    helped = run(venv, work, str(venv / "bin" / "diffusion-lab-train"), "--help")
    assert "schedule" in helped.stdout
