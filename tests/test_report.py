"""python -m diffusion_lab.report: one table row per job, plots, the self-contained HTML, the empty-folder error."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import cli_env, small_train_cfg, write_fake_idx_root
from diffusion_lab.evaluation_record import write_table
from diffusion_lab.metrics.classifier import SmallClassifier, save_classifier
from diffusion_lab.report import main as report_main
from diffusion_lab.report import write_report
from diffusion_lab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, one_thread) -> Path:
    """A multirun folder as the gpu_pool launcher leaves it: two trained jobs (4 steps each, FD logged during
    training by callbacks=with_metrics on an untrained classifier's features), an `evaluate` result each on
    those features, one failed job."""
    tmp = tmp_path_factory.mktemp("report")
    data = write_fake_idx_root(tmp / "data", n_train=48, n_test=16)
    features = save_classifier(SmallClassifier(width=4, feature_dim=16), tmp / "features.pt")
    root = tmp / "multirun"
    jobs = []
    for num, schedule in enumerate(["linear", "cosine"]):
        overrides = [f"schedule={schedule}", "trainer.max_steps=4", "trainer.val_check_interval=2"]
        job_dir = root / f"{num}_schedule={schedule}"
        cfg = small_train_cfg(
            job_dir,
            *overrides,
            f"data.root={data}",
            "data.val_size=8",
            "schedule.num_timesteps=20",
            "trainer.log_every_n_steps=1",
            "callbacks=with_metrics",
            f"callbacks.sample_quality.features={features}",
            "callbacks.sample_quality.n=8",
            "callbacks.sample_quality.n_real=16",
            "callbacks.sample_quality.batch_size=8",
        )
        result = train(cfg)
        (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)  # train() keeps config.yaml there
        OmegaConf.save(OmegaConf.create(overrides), job_dir / ".hydra" / "overrides.yaml")
        # What `python -m diffusion_lab.evaluate ... features=PATH sampler=ddim steps=[10,20,50]` writes (its own
        # writer).
        fid = {"linear": 30.0, "cosine": 20.0}[schedule]
        rows = [
            {
                "sampler": "ddim",
                "steps": s,
                "eta": 0.0,
                "guidance": 0.0,
                "n": 8,
                "fd_classifier": fid + 50 / s,
                "classifier_score_mean": 2.0,
            }
            for s in (10, 20, 50)
        ]
        write_table(
            rows,
            {"ckpt": result["checkpoint"], "bpd": 5.0 - num, "bpd_stderr": 0.1, "bpd_n": 4},
            job_dir / "evaluation" / "last",
        )
        jobs.append(
            {
                "num": num,
                "overrides": overrides,
                "status": "COMPLETED",
                "exit_code": 0,
                "duration_s": 10.0 + num,
                "gpus": [],
                "dir": str(job_dir),
                "log": str(job_dir / "job.log"),
            }
        )
    failed = root / "2_schedule.num_timesteps=0"
    (failed / ".hydra").mkdir(parents=True)
    failed_overrides = ["schedule.num_timesteps=0", "trainer.max_steps=4", "trainer.val_check_interval=2"]
    OmegaConf.save(OmegaConf.create(failed_overrides), failed / ".hydra" / "overrides.yaml")
    jobs.append(
        {
            "num": 2,
            "overrides": failed_overrides,
            "status": "FAILED",
            "exit_code": 2,
            "duration_s": 3.0,
            "gpus": [],
            "dir": str(failed),
            "log": str(failed / "job.log"),
        }
    )
    (root / "sweep_status.json").write_text(json.dumps({"sweep_dir": str(root), "jobs": jobs}))
    return root


def _table_rows(md: str) -> list[list[str]]:
    lines = md.split("\n\n| # |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


def test_report_table_plots_and_html(sweep, tmp_path):
    out = tmp_path / "out"
    paths = write_report(sweep, out)
    md = (out / "report.md").read_text()
    rows = _table_rows(md)
    assert len(rows) == 3  # one row per job
    # Sorted by FD (evaluate's best row): cosine (20.0 + 1), linear (31), then the failed job.
    assert [r[1] for r in rows] == ["schedule=cosine", "schedule=linear", "schedule.num_timesteps=0"]
    assert [r[2] for r in rows] == ["COMPLETED", "COMPLETED", "FAILED"]
    header = md.split("\n\n| # |", 1)[1].splitlines()[0]
    assert "FD (classifier features)" in header and "FID" not in header
    assert "bits/dim" in header and "wall time" in header and "val loss" in header
    assert rows[0][3] == "**21 ★**" and "ddim η=0, 50 steps" in rows[0][4]
    assert "Common overrides: `trainer.max_steps=4` `trainer.val_check_interval=2`" in md
    # the resolved classes, a preset's choices included; the schedule is the one group the jobs differ in
    assert (
        "Components (the jobs' resolved configs; an evaluation may set its own sampler): process `Diffusion`, "
        "prediction `EpsPrediction`, variance "
        "`FixedSmallVariance`, loss `SimpleLoss`, weighting `UniformWeighting`, timesteps `UniformTimestepSampler`, "
        "sampler `DDIMSampler`, model `UNet`; varying between jobs: schedule." in md
    )
    assert "## Evaluations" in md and "## Failed jobs" in md

    expected = {
        "fd_classifier_over_training.png",
        "val_loss_over_training.png",
        "loss_by_timestep.png",
        "fd_classifier_vs_steps.png",
    }
    pngs = {p.name: p for p in (out / "report_plots").glob("*.png")}
    assert expected <= set(pngs)
    for p in pngs.values():
        assert p.stat().st_size > 5000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"report_plots/{p.name}" in md
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == len(pngs) + 2  # plots and the two jobs' sample grids
    assert not re.search(r"<img[^>]+src='(?!data:)", html)  # self-contained
    assert html.count("<td class='best'>") >= 4 and "schedule=cosine" in html


def test_report_cli_writes_next_to_the_sweep(sweep):
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_lab.report", str(sweep)],
        env=cli_env(sweep.parent),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"report   : {sweep / 'report.html'}" in proc.stdout
    assert (sweep / "report.md").is_file() and (
        sweep / "report_plots" / "fd_classifier_vs_steps.png"
    ).is_file()


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_no_sweep_is_one_error_line(tmp_path, capsys, kind):
    path = tmp_path / "nothing"
    if kind == "empty":
        path.mkdir()
        (path / "notes.txt").write_text("not a job")
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0]
    assert ".hydra/overrides.yaml" in err[0]


@pytest.mark.parametrize("keep_raw", [False, True])
def test_a_report_folder_that_cannot_be_made_is_one_error_line_before_any_copy(tmp_path, capsys, keep_raw):
    from synthetic_sweep import write_job

    write_job(tmp_path / "sweep", 0, ["schedule=linear"], {"train/loss": {10: 1.0}})
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "a_file" / "report"
    raw = tmp_path / "raw"
    with pytest.raises(SystemExit) as exit_info:
        report_main(
            [str(tmp_path / "sweep"), "--out", str(out), *(["--keep-raw", str(raw)] if keep_raw else [])]
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --out {out}: cannot create the report folder there (Not a directory); name a folder you can write"
    ]
    assert not raw.exists()


def test_a_lone_job_is_labelled_by_its_sweep_folder_and_number(tmp_path):
    from diffusion_lab.report import Job
    from diffusion_lab.reporting.runs import label_jobs as _label_jobs

    root = tmp_path.resolve()
    lone = Job(dir=root / "model" / "0_loss=simple,trainer.max_time=00:00:06:00", overrides=["loss=simple"])
    assert _label_jobs([lone], root) == ["loss=simple"]  # its overrides are the common line
    assert lone.label == "model/#0"
    bare = Job(dir=root / "run_a", overrides=[])
    _label_jobs([bare], root)
    assert bare.label == "run_a"  # not a launcher job folder: the folder name as it is
    outside = Job(dir=tmp_path.parent / "7_x=1", overrides=[])
    _label_jobs([outside], root)
    assert outside.label == "#7"


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([None, None, None], None),  # runs from before the digest: nothing said
        (["a" * 64] * 3, f"Code: every job ran one version (`{'a' * 12}`)."),
        (
            ["a" * 64, "b" * 64, None],
            "**Code: the jobs ran 3 versions**, so a difference between them may come from the code: "
            f"`{'a' * 12}` (schedule=linear); `{'b' * 12}` (schedule=cosine); none recorded (schedule=sigmoid).",
        ),
    ],
)
def test_the_report_says_which_code_the_jobs_ran(tmp_path, codes, expected):
    from synthetic_sweep import write_job

    for num, (schedule, code) in enumerate(zip(("linear", "cosine", "sigmoid"), codes, strict=True)):
        write_job(tmp_path, num, [f"schedule={schedule}"], {"train/loss": {10: 1.0 + num}}, code=code)
    text = write_report(tmp_path)["markdown"].read_text()
    lines = [line.rstrip() for line in text.splitlines() if "Code: " in line]  # intro lines end in a break
    assert lines == ([] if expected is None else [expected])


A, B = "a" * 64, "b" * 64


@pytest.mark.parametrize(
    ("eval_codes", "expected"),
    [
        ([{}, {}], None),  # evaluations from before the digest: nothing said
        (
            [{"ddpm": A, "ddim": A}, {"ddpm": A, "ddim": A}],
            f"Evaluations: every evaluation ran one version (`{'a' * 12}`) (the jobs' own).",
        ),
        (
            [{"ddpm": B, "ddim": B}, {"ddpm": B, "ddim": B}],
            f"Evaluations: every evaluation ran one version (`{'b' * 12}`).",
        ),
        (
            [{"ddpm": A, "ddim": B}, {"ddpm": A}],
            "**Evaluations: they ran 3 versions**, so rows scored by different versions may differ because of the "
            f"code: `{'a' * 12}` (seed=1: ddpm, seed=2: ddpm); `{'b' * 12}` (seed=1: ddim); none recorded (seed=2: ddim).",
        ),
    ],
)
def test_the_report_says_which_code_the_evaluations_ran(tmp_path, eval_codes, expected):
    from synthetic_sweep import eval_row, write_job

    for num, codes in enumerate(eval_codes):
        rows = {
            "ddpm": [eval_row("ddpm", None, 50, [2.0 + num])],
            "ddim": [eval_row("ddim", 0.0, 50, [1.5 + num])],
        }
        write_job(
            tmp_path,
            num,
            [f"seed={num + 1}"],
            {"train/loss": {10: 1.0}},
            evaluations=rows,
            code=A,
            eval_codes=codes,
        )
    text = write_report(tmp_path)["markdown"].read_text()
    lines = [line.rstrip() for line in text.splitlines() if "Evaluations: " in line]
    assert lines == ([] if expected is None else [expected])


def test_a_jobs_training_speed_is_its_median_logged_rate_not_its_last():
    """The jobs of a sweep share a GPU and end a few seconds apart: the last window of the last to end ran
    alone, at twice the rate (3,794 against 1,634 img/s in a recorded study). The table shows the median."""
    from diffusion_lab.reporting.runs import Job

    job = Job(dir=Path("j"), series={"perf/train_img_per_s": [(49, 1630.0), (99, 1634.0), (149, 3794.0)]})
    job.last = {"perf/train_img_per_s": 3794.0}
    assert job.value("img_per_s") == 1634.0
    job.series["perf/train_img_per_s"].append((199, 1640.0))  # an even count: the two middle windows' mean
    assert job.value("img_per_s") == 1637.0
    assert Job(dir=Path("k")).value("img_per_s") is None


def test_a_component_some_jobs_lack_is_listed_as_varying_not_shared(tmp_path):
    """A flow job has no noise schedule: the DDPM jobs' cosine schedule is not every job's."""
    from synthetic_sweep import write_job

    sweep = tmp_path / "sweep"
    targets = {
        "ddpm": {"process": "Diffusion", "schedule": "CosineSchedule", "model": "UNet"},
        "flow": {"process": "FlowProcess", "model": "UNet"},
    }
    for num, (name, groups) in enumerate(targets.items()):
        job = write_job(sweep, num, [f"process={name}"], {"val/loss": {9: 1.0}})
        config = {group: {"_target_": f"diffusion_lab.x.{cls}"} for group, cls in groups.items()}
        OmegaConf.save(OmegaConf.create(config), job / ".hydra" / "config.yaml")
    write_report(sweep, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert (
        "Components (the jobs' resolved configs; an evaluation may set its own sampler): model `UNet`; varying "
        "between jobs: process, schedule." in md
    )
