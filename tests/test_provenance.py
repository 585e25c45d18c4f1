"""The code digest a run and an evaluation record: the package's code and configs, named alike in a checkout and
a wheel (the wheel's side is in test_wheel_install.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from diffusion_lab.provenance import (
    SUFFIXES,
    code_sha256,
    digest,
    package_files,
    run_provenance,
    visible_gpu_name,
)

REPO = Path(__file__).resolve().parents[1]


def tracked(prefix: str) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", prefix], capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_the_digest_covers_exactly_the_tracked_code_and_configs():
    # an independent listing: git's tracked files of src/diffusion_lab (code, configs, templates) and conf/
    expected = {
        "diffusion_lab/" + path.removeprefix("src/diffusion_lab/"): (REPO / path).read_bytes()
        for path in tracked("src/diffusion_lab")
        if path.endswith(SUFFIXES)
    }
    expected |= {path: (REPO / path).read_bytes() for path in tracked("conf") if path.endswith(".yaml")}
    assert "diffusion_lab/reporting/templates/report.md.j2" in expected and "conf/train.yaml" in expected
    assert package_files() == expected
    assert code_sha256() == digest(expected)


def test_the_digest_changes_with_any_file_name_or_content():
    files = {"diffusion_lab/a.py": b"x = 1\n", "conf/train.yaml": b"seed: 0\n"}
    assert digest(files) == digest(dict(reversed(files.items())))  # the order of listing does not matter
    assert digest(files) != digest({**files, "conf/train.yaml": b"seed: 1\n"})
    assert digest(files) != digest({"diffusion_lab/b.py": b"x = 1\n", "conf/train.yaml": b"seed: 0\n"})
    # the separators keep a name from running into its content
    assert digest({"a": b"bc"}) != digest({"ab": b"c"})


def test_a_runs_provenance_names_the_code_and_versions():
    import torch

    record = run_provenance()
    assert record["code_sha256"] == code_sha256()
    # read without starting CUDA (a forked DDP worker could not use it after)
    assert not torch.cuda.is_initialized()
    if torch.cuda.is_available():
        assert record["device"] not in ("", "cpu")
    else:
        assert record["device"] == "cpu"
    assert record["versions"]["torch"] == torch.__version__ and record["versions"]["diffusion_lab"]


def test_the_device_is_the_first_gpu_cuda_visible_devices_shows():
    listed = "0, NVIDIA H100 80GB HBM3\n1, NVIDIA H200\n2, NVIDIA A100-SXM4-80GB\n"
    assert visible_gpu_name(listed, None) == "NVIDIA H100 80GB HBM3"
    assert visible_gpu_name(listed, "") == "NVIDIA H100 80GB HBM3"
    assert (
        visible_gpu_name(listed, "2,1") == "NVIDIA A100-SXM4-80GB"
    )  # a launcher's job sees its own GPU first
    assert visible_gpu_name(listed, "GPU-8a1c…") == "NVIDIA H100 80GB HBM3"  # by UUID: the first listed
    assert visible_gpu_name("", "0") is None  # nvidia-smi gave nothing: the caller says so


def test_the_device_is_nvidia_smis_name_unless_the_gpus_are_hidden(monkeypatch):
    """nvidia-smi stands in for a GPU host here: its first visible GPU's name, 'cpu' where CUDA_VISIBLE_DEVICES
    hides them all, where nvidia-smi is missing, or for a torch built without CUDA."""
    import types

    import torch

    from diffusion_lab import provenance

    calls = []

    def smi(argv, **kwargs):
        calls.append(argv[0])
        return types.SimpleNamespace(stdout="0, NVIDIA H100 80GB HBM3\n1, NVIDIA H200\n")

    monkeypatch.setattr(provenance.subprocess, "run", smi)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert provenance.device_name() == "NVIDIA H200" and calls == ["nvidia-smi"]
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert provenance.device_name() == "cpu"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert provenance.device_name() == "NVIDIA H100 80GB HBM3"

    def missing(argv, **kwargs):
        raise FileNotFoundError(argv[0])

    monkeypatch.setattr(provenance.subprocess, "run", missing)
    assert provenance.device_name() == "cpu"
    monkeypatch.setattr(provenance.subprocess, "run", smi)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    assert provenance.device_name() == "cpu"
