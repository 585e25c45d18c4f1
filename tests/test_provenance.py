"""The code digest a run and an evaluation record: the package's code and configs, named alike in a checkout and
a wheel (the wheel's side is in test_wheel_install.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from diffusion_lab.provenance import SUFFIXES, code_sha256, digest, package_files, run_provenance

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
    assert record["versions"]["torch"] == torch.__version__ and record["versions"]["diffusion_lab"]
