"""Reports rebuild from kept raw files: byte-equal text, the same figures, deterministic output."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from diffusion_lab.report import main as report_main
from diffusion_lab.reporting.raw import SETTINGS_FILE
from diffusion_lab.reporting.runs import find_jobs
from synthetic_sweep import example_study, seeded_sweep, write_job

REPO = Path(__file__).resolve().parents[1]
# Every committed study folder with raw data (2-12 s each, about 100 s in all on 2 cores: marked slow, so CI
# rebuilds them all), and the small synthetic one the tests ship, which make test rebuilds.
STUDIES = [
    pytest.param(p.parent, marks=pytest.mark.slow)
    for p in sorted((REPO / "experiments" / "results").glob("*/*/raw"))
] + [REPO / "tests" / "data" / "report_study"]


def _figures(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "report_plots").glob("*.png"))


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_committed_report_is_rebuilt_from_its_raw_files(study, tmp_path):
    rebuilt = tmp_path / study.name
    shutil.copytree(study / "raw", rebuilt / "raw")
    report_main([str(rebuilt / "raw"), "--out", str(rebuilt)])
    assert (rebuilt / "report.md").read_text() == (study / "report.md").read_text()
    assert _figures(rebuilt) == _figures(study) and _figures(study)


def test_report_output_is_deterministic(tmp_path):
    sweep = example_study(tmp_path / "sweep")
    outputs = []
    for name in ("a", "b"):
        report_main([str(sweep), "--out", str(tmp_path / name), "--baseline", "schedule=linear"])
        outputs.append(tmp_path / name)
    a, b = outputs
    for name in ("report.md", "report.html"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert _figures(a) == _figures(b)
    for png in _figures(a):
        assert (a / "report_plots" / png).read_bytes() == (b / "report_plots" / png).read_bytes()
    html = (a / "report.html").read_text()
    assert not re.search(r"\b20\d\d-\d\d-\d\d[ T]\d\d:\d\d", html)  # no timestamp in the body


def test_keep_raw_copies_the_small_files_and_reports_from_them(tmp_path):
    sweep = example_study(tmp_path / "sweep")
    checkpoint = next(sweep.glob("0_*")) / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    raw = sweep / "raw"
    report_main([str(sweep), "--keep-raw", str(raw), "--title", "T", "--baseline", "schedule=linear"])
    kept = {p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file()}
    assert SETTINGS_FILE in kept and "sweep_status.json" in kept
    assert not any("checkpoints" in k for k in kept)
    assert {k.split("/", 1)[1] for k in kept if "/" in k} == {
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "csv/metrics.csv",
        "evaluation/ddpm/evaluation.json",
        "evaluation/ddim_eta0/evaluation.json",
        "samples/final.png",
    }
    md = (sweep / "report.md").read_text()
    assert md.startswith("# T\n") and "## Difference from schedule=linear" in md
    assert f"Sweep: `{sweep.resolve()}`" in md
    # The kept copy below the sweep is not read as more jobs of it.
    assert len(find_jobs(sweep)) == len(find_jobs(raw)) == 8
    # Rebuilt from the copy alone (title and baseline from its settings), with the original gone.
    shutil.copytree(raw, tmp_path / "moved" / "raw")
    shutil.rmtree(sweep)
    report_main([str(tmp_path / "moved" / "raw"), "--out", str(tmp_path / "moved")])
    assert (tmp_path / "moved" / "report.md").read_text() == md


def test_a_bad_baseline_is_refused_before_any_raw_file_is_kept(tmp_path, capsys):
    sweep = seeded_sweep(tmp_path / "sweep", 0.5, [1, 2], 0.1, np.random.default_rng(0))
    raw = tmp_path / "raw"
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(sweep), "--keep-raw", str(raw), "--baseline", "schedule=quadratic"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --baseline 'schedule=quadratic' matches no cell")
    assert not raw.exists() and not (sweep / "report.md").exists()


def test_keep_raw_into_the_sweep_folder_itself_is_refused(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, ["x=1"], {"val/loss": {9: 1.0}})
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(sweep), "--keep-raw", str(sweep)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--keep-raw" in err[0]


def test_an_older_kept_copy_below_the_sweep_is_not_kept_again(tmp_path):
    """A study folder that holds its own kept raw copy (a report made before, more seeds to come): keeping or
    gathering the folder copies each job once, not the jobs of the old copy as more."""
    sweep = example_study(tmp_path / "study" / "sweep")
    report_main([str(sweep.parent), "--keep-raw", str(tmp_path / "study" / "raw")])
    jobs = len(find_jobs(sweep.parent))
    report_main([str(sweep.parent), "--keep-raw", str(tmp_path / "kept" / "raw")])
    assert not (tmp_path / "kept" / "raw" / "raw").exists()
    assert len(find_jobs(tmp_path / "kept" / "raw")) == jobs
    other = example_study(tmp_path / "other")
    report_main([str(sweep.parent), str(other), "--keep-raw", str(tmp_path / "gathered" / "raw")])
    assert sorted(p.name for p in (tmp_path / "gathered" / "raw").iterdir()) == [
        "other",
        "report_settings.json",
        "study",
    ]
    assert not (tmp_path / "gathered" / "raw" / "study" / "raw").exists()
    assert len(find_jobs(tmp_path / "gathered" / "raw")) == 2 * jobs
    # A kept raw folder is gathered under its study's name, not as another "raw".
    report_main([str(tmp_path / "kept" / "raw"), str(other), "--keep-raw", str(tmp_path / "again" / "raw")])
    assert sorted(p.name for p in (tmp_path / "again" / "raw").iterdir()) == [
        "kept",
        "other",
        "report_settings.json",
    ]
    # A kept copy under another name than "raw" is gathered under that name, not its parent folder's.
    shutil.copytree(tmp_path / "kept" / "raw", tmp_path / "kept" / "seeds_1-3")
    report_main(
        [str(tmp_path / "kept" / "seeds_1-3"), str(other), "--keep-raw", str(tmp_path / "named" / "raw")]
    )
    assert sorted(p.name for p in (tmp_path / "named" / "raw").iterdir()) == [
        "other",
        "report_settings.json",
        "seeds_1-3",
    ]
