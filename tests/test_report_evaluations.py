"""The report's evaluation rows: scores under their feature network's names, evaluations over seeds with the
estimator's own spread, and paired comparisons between evaluation settings (--eval-baseline)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from diffusion_lab.report import main as report_main
from diffusion_lab.reporting.cells import group_cells
from diffusion_lab.reporting.evalcells import group_evaluations, sample_set_spread
from diffusion_lab.reporting.plots import seeds_label
from diffusion_lab.reporting.raw import SETTINGS_FILE
from diffusion_lab.reporting.runs import find_jobs
from diffusion_lab.reporting.stats import t_interval
from synthetic_sweep import eval_row, write_job, write_status

SEEDS = [1, 2, 3, 4, 5]


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _rows(section: str) -> list[dict[str, str]]:
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[1:]]


def _headers(md: str) -> list[str]:
    """Every table's header cells."""
    lines = md.splitlines()
    return [
        c.strip()
        for i, line in enumerate(lines[:-1])
        if line.startswith("| ") and lines[i + 1].startswith("|---")
        for c in line.strip("|").split(" | ")
    ]


def sampler_study(root, effects: dict[tuple[str, float | None], float], rng, sets: int = 2):
    """One model per seed, each evaluated with every sampler setting of ``effects`` {(sampler, eta): shift}
    at 10 and 50 steps; each seed shifts every setting alike (sd 1), each sample set adds noise (sd 0.05)."""
    jobs = []
    for seed in SEEDS:
        shared = rng.normal(0.0, 1.0)
        evaluations = {}
        for (sampler, eta), shift in effects.items():
            rows = []
            for steps in (10, 50):
                fd = 20.0 + shared + shift + rng.normal(0.0, 0.05)
                values = [round(fd + rng.normal(0.0, 0.05), 9) for _ in range(sets)]
                rows.append(eval_row(sampler, eta, steps, values))
            evaluations[f"{sampler}_{eta}"] = rows
        jobs.append(
            write_job(root, len(jobs), [f"seed={seed}"], {"val/loss": {99: 1.0}}, evaluations=evaluations)
        )
    write_status(root, jobs)
    return root


def test_a_known_sampler_difference_is_separated_in_the_right_direction(tmp_path):
    effects = {("ddpm", None): 0.0, ("ddim", 0.0): -2.0, ("ddim", 1.0): 1.0, ("ddim", 0.5): 0.0}
    sweep = sampler_study(tmp_path / "sweep", effects, np.random.default_rng(0))
    report_main([str(sweep), "--eval-baseline", "sampler=ddpm"])
    md = (sweep / "report.md").read_text()
    rows = {r["setting"]: r for r in _rows(_section(md, "Evaluation differences from sampler=ddpm"))}
    assert len(rows) == 6  # three settings x two step counts, each against DDPM at its own steps
    for steps in (10, 50):
        assert rows[f"ddim η=0, {steps} steps"]["baseline"] == f"ddpm, {steps} steps"
        better = rows[f"ddim η=0, {steps} steps"]["FD (classifier features)"]
        assert better.endswith("(n=5, better)")
        mean, half = (float(x) for x in better.split(" (")[0].split(" ± "))
        assert mean - half <= -2.0 <= mean + half and half < 0.5  # the seed's shared shift cancels in pairs
        assert rows[f"ddim η=1, {steps} steps"]["FD (classifier features)"].endswith("(n=5, worse)")
        # not separated, with the seeds that would separate it if the spread held (never fewer than ran)
        tail = re.search(
            r"\(n=5, not separated; (?:n≥(\d+)|over 100 seeds) at this spread\)$",
            rows[f"ddim η=0.5, {steps} steps"]["FD (classifier features)"],
        )
        assert tail and (tail[1] is None or int(tail[1]) > 5)


def test_identical_settings_are_not_separated(tmp_path):
    root = tmp_path / "sweep"
    rng = np.random.default_rng(1)
    jobs = []
    for seed in SEEDS:
        values = [float(v) for v in 20 + rng.normal(0.0, 1.0, 2)]
        same = {"a": [eval_row("ddpm", None, 10, values)], "b": [eval_row("ddim", 1.0, 10, values)]}
        jobs.append(write_job(root, len(jobs), [f"seed={seed}"], {"val/loss": {99: 1.0}}, evaluations=same))
    write_status(root, jobs)
    report_main([str(root), "--eval-baseline", "sampler=ddpm"])
    (row,) = _rows(_section((root / "report.md").read_text(), "Evaluation differences from sampler=ddpm"))
    assert row["setting"] == "ddim η=1, 10 steps"
    assert row["FD (classifier features)"] == "+0 ± 0 (n=5, not separated)"


def test_the_estimators_spread_is_the_pooled_within_checkpoint_std(tmp_path):
    root = tmp_path / "sweep"
    sets = {1: [10.0, 10.4], 2: [12.0, 11.0, 12.5], 3: [9.0, 9.3]}
    jobs = [
        write_job(
            root,
            i,
            [f"seed={seed}"],
            {"val/loss": {99: 1.0}},
            evaluations={"e": [eval_row("ddpm", None, 10, values)], "bits": [{"bpd": 3.2, "bpd_n": 8}]},
        )
        for i, (seed, values) in enumerate(sets.items())
    ]
    write_status(root, jobs)
    dof = sum(len(v) - 1 for v in sets.values())
    pooled = math.sqrt(sum((len(v) - 1) * np.var(v, ddof=1) for v in sets.values()) / dof)
    between = float(np.std([np.mean(v) for v in sets.values()], ddof=1))
    (group,) = group_evaluations(group_cells(find_jobs(root)))[0]  # the bits/dim-only rows: no group
    assert sample_set_spread(group, "fd_classifier") == (pytest.approx(pooled, rel=1e-12), 2)
    report_main([str(root)])
    (row,) = _rows(_section((root / "report.md").read_text(), "Evaluations over seeds"))
    fd = "FD (classifier features)"
    assert row[f"{fd}: within-checkpoint std (sample sets)"] == f"{pooled:.2g} (S=2)"
    assert row[f"{fd}: seed-to-seed std"] == f"{between:.2g}"
    assert row["seeds"] == "3" and row["samples/set"] == "500"
    assert row["KD (classifier features)"].startswith("0.01 ± ")  # KID / KD: over seeds, no sample-set spread
    assert not any(
        "KD (classifier features): within" in h for h in _headers((root / "report.md").read_text())
    )


def test_a_classifier_study_shows_fd_and_no_fid(tmp_path):
    sweep = sampler_study(tmp_path / "sweep", {("ddpm", None): 0.0}, np.random.default_rng(2))
    report_main([str(sweep)])
    md = (sweep / "report.md").read_text()
    headers = _headers(md)
    assert "FD (classifier features)" in headers and "KD (classifier features)" in headers
    assert not any("FID" in h or "KID" in h for h in headers)
    assert "Sorted by FD (classifier features)" in md
    plots = sorted(p.name for p in (sweep / "report_plots").glob("*.png"))
    assert "fd_classifier_vs_steps_over_seeds.png" in plots and not any("fid" in p for p in plots)


def test_an_inception_study_shows_fid_and_no_fd(tmp_path):
    root = tmp_path / "sweep"
    jobs = []
    for seed in SEEDS[:3]:
        rows = [
            {"sampler": "ddim", "eta": 0.0, "steps": s, "fid": 10.0 + seed + 10 / s, "is_mean": 3.0}
            for s in (10, 20)
        ]
        curves = {"metrics/fid": {9: 30.0 + seed}, "val/loss": {99: 1.0}}
        jobs.append(write_job(root, len(jobs), [f"seed={seed}"], curves, evaluations={"e": rows}))
    write_status(root, jobs)
    report_main([str(root)])
    md = (root / "report.md").read_text()
    headers = _headers(md)
    assert "FID (Inception)" in headers and "IS (Inception)" in headers
    assert not any("FD (" in h or "classifier" in h for h in headers)
    over_seeds = _rows(_section(md, "Evaluations over seeds"))
    assert [r["setting"] for r in over_seeds] == ["ddim η=0, 10 steps", "ddim η=0, 20 steps"]
    assert over_seeds[0]["FID (Inception)"].startswith("13 ± ")


def test_a_study_with_both_feature_networks_shows_both_unmerged(tmp_path):
    root = tmp_path / "sweep"
    inception = {"sampler": "ddpm", "steps": 10, "fid": 40.0}
    job = write_job(
        root, 0, ["x=1"], {}, evaluations={"c": [eval_row("ddpm", None, 10, [5.0, 6.0])], "i": [inception]}
    )
    write_status(root, [job])
    report_main([str(root)])
    table = _rows("| # |" + (root / "report.md").read_text().split("\n\n| # |", 1)[1].split("\n\n", 1)[0])
    assert table[0]["FID (Inception)"] == "40" and table[0]["FD (classifier features)"] == "5.5"


def test_eval_baseline_is_kept_for_the_rebuild(tmp_path):
    sweep = sampler_study(
        tmp_path / "sweep", {("ddpm", None): 0.0, ("ddim", 0.0): -1.0}, np.random.default_rng(3)
    )
    raw = tmp_path / "kept" / "raw"
    report_main(
        [str(sweep), "--keep-raw", str(raw), "--eval-baseline", "sampler=ddpm", "--out", str(tmp_path / "a")]
    )
    assert json.loads((raw / SETTINGS_FILE).read_text())["eval_baseline"] == "sampler=ddpm"
    report_main([str(raw), "--out", str(tmp_path / "b")])
    first, rebuilt = ((tmp_path / d / "report.md").read_text() for d in "ab")
    assert "## Evaluation differences from sampler=ddpm" in rebuilt and rebuilt == first


@pytest.mark.parametrize(
    "spec,words",
    [
        ("sampler=euler", ["matches no evaluation row", "ddpm, 10 steps"]),
        ("sampler=ddim", ["matches 2 settings", "add fields"]),
        ("temperature=1", ["FIELD=VALUE", "sampler, eta, variance, clip, steps, guidance, n"]),
    ],
)
def test_a_bad_eval_baseline_is_one_error_line(tmp_path, capsys, spec, words):
    effects = {("ddpm", None): 0.0, ("ddim", 0.0): 0.0, ("ddim", 1.0): 0.0}
    sweep = sampler_study(tmp_path / "sweep", effects, np.random.default_rng(4))
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(sweep), "--eval-baseline", spec])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--eval-baseline" in err[0] and all(w in err[0] for w in words)
    assert not (sweep / "report.md").exists()


def variant_sweep(root: Path, seed: int, setting: tuple, base: float, shift: float, key: str, value) -> Path:
    """One model per seed, each scored in ``setting`` (sampler, eta, steps) as the checkpoint samples
    (evaluation named after the sampler) and again with ``key: value`` in its row, ``shift`` FD apart (the
    evaluation ``<sampler>_variant``); both share the seed's model noise."""
    rng = np.random.default_rng(seed)
    jobs = []
    for s in SEEDS:
        shared = rng.normal(0.0, 1.0)
        variant = eval_row(*setting, [base + shared + shift + rng.normal(0.0, 0.05)])
        variant[key] = value
        evaluations = {
            setting[0]: [eval_row(*setting, [base + shared + rng.normal(0.0, 0.05)])],
            f"{setting[0]}_variant": [variant],
        }
        jobs.append(
            write_job(root, len(jobs), [f"seed={s}"], {"val/loss": {99: 1.0}}, evaluations=evaluations)
        )
    write_status(root, jobs)
    return root


def difference_row(root: Path, spec: str) -> tuple[dict[str, str], str]:
    """The report written with ``--eval-baseline spec``: the one row of its differences from ``spec``, and the
    whole Markdown."""
    report_main([str(root), "--eval-baseline", spec])
    md = (root / "report.md").read_text()
    (row,) = _rows(_section(md, f"Evaluation differences from {spec}"))
    return row, md


def assert_fd_difference(row: dict[str, str], mean: float, verdict: str) -> None:
    difference = row["FD (classifier features)"]
    assert difference.endswith(f"(n=5, {verdict})")
    assert float(difference.split(" ± ")[0]) == pytest.approx(mean, abs=0.2)


def test_a_sampling_variance_row_is_paired_with_the_checkpoints_own(tmp_path):
    """DDIM's σ̂ row: ancestral sampling with fixed_large is its own setting, compared with the plain DDPM row
    (which alone matches 'sampler=ddpm'), and can itself be named as the baseline."""
    root = variant_sweep(tmp_path / "sweep", 6, ("ddpm", None, 10), 20.0, 3.0, "variance", "fixed_large")
    row, md = difference_row(root, "sampler=ddpm")
    assert row["setting"] == "ddpm σ²=fixed_large, 10 steps" and row["baseline"] == "ddpm, 10 steps"
    assert_fd_difference(row, 3.0, "worse")
    assert "variance" in _headers(_section(md, "Evaluations"))  # the per-job table names the variance
    row, _ = difference_row(root, "sampler=ddpm variance=fixed_large")
    assert row["setting"] == "ddpm, 10 steps" and row["FD (classifier features)"].endswith("(n=5, better)")


def test_an_unclipped_row_is_its_own_setting_paired_with_the_clipped_one(tmp_path, capsys):
    """DDIM with sampler.clip_denoised=false writes clip: false; rows without the key (every older row) were
    clipped. The two are separate settings, the unclipped one paired with the clipped row of its sampler, and
    it is a baseline only where the spec names clip=false."""
    root = variant_sweep(tmp_path / "sweep", 7, ("ddim", 0.0, 1000), 2.0, -0.5, "clip", False)
    row, md = difference_row(root, "sampler=ddim")
    assert row["setting"] == "ddim η=0 unclipped, 1000 steps" and row["baseline"] == "ddim η=0, 1000 steps"
    assert_fd_difference(row, -0.5, "better")
    assert "clip" in _headers(_section(md, "Evaluations"))
    row, _ = difference_row(root, "sampler=ddim clip=false")
    assert row["setting"] == "ddim η=0, 1000 steps" and row["FD (classifier features)"].endswith(
        "(n=5, worse)"
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(root), "--eval-baseline", "sampler=ddim clip=no"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: --eval-baseline 'sampler=ddim clip=no': clip=no is not true or false"
    )


def test_an_old_fid_logged_on_a_classifier_is_shown_as_logged_with_a_note(tmp_path):
    from omegaconf import OmegaConf

    job = write_job(tmp_path / "sweep", 0, ["x=1"], {"metrics/fid": {9: 7.0}})
    config = OmegaConf.load(job / ".hydra" / "config.yaml")
    config.callbacks = {"sample_quality": {"features": "/cache/features/fashion_mnist.pt"}}
    OmegaConf.save(config, job / ".hydra" / "config.yaml")
    report_main([str(tmp_path / "sweep")])
    md = (tmp_path / "sweep" / "report.md").read_text()
    assert "FID (Inception)" in _headers(md)  # as logged
    notes = _section(md, "Notes")
    assert "`metrics/fid` was logged on classifier features (`/cache/features/fashion_mnist.pt`)" in notes


def test_a_partial_evaluation_is_read_and_named_and_hidden_folders_are_not_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    rows = [eval_row("ddim", 0.0, 10, [5.0]), eval_row("ddim", 0.0, 20, [4.0])]
    jobs = [
        write_job(sweep, i, [f"seed={s}"], {"val/loss": {99: 1.0}}, evaluations={"ddim": rows})
        for i, s in enumerate((1, 2))
    ]
    partial = jobs[1] / "evaluation" / "ddim" / "evaluation.json"
    partial.write_text(json.dumps({"summary": {"complete": False, "settings": 5}, "rows": rows}))
    write_status(sweep, jobs)
    # a study's prewarm run (two steps that only fill the compile cache) sits in a hidden folder beside the jobs
    write_job(sweep / ".prewarm", 0, ["seed=1", "trainer.max_steps=2"], {"val/loss": {1: 9.0}})
    found = find_jobs(sweep)
    assert sorted(j.dir.name for j in found) == sorted(j.name for j in jobs)
    (second,) = [j for j in found if j.seed == 2]
    assert second.notes == [
        "evaluation `ddim` is partial: 2 of 5 settings were scored before it stopped; its rows are in the "
        "tables, the rest are missing"
    ]
    assert [len(e["rows"]) for e in second.evaluations] == [2]
    report_main([str(sweep), "--keep-raw", str(tmp_path / "raw")])
    md = (sweep / "report.md").read_text()
    assert "is partial: 2 of 5 settings" in md
    assert f"Sweep: `{sweep}` — 2 job(s), 1 evaluation(s) stopped before their last setting (see Notes)" in md
    assert not (tmp_path / "raw" / ".prewarm").exists()


def test_an_evaluation_that_scored_nothing_is_named_and_leaves_the_shared_settings_alone(tmp_path):
    sweep = tmp_path / "sweep"
    ddim = [eval_row("ddim", 0.0, 10, [5.0]), eval_row("ddim", 0.0, 20, [4.0])]
    first = write_job(sweep, 0, ["seed=1"], {"val/loss": {99: 1.0}}, evaluations={"ddim": ddim})
    write_job(sweep, 1, ["seed=2"], {"val/loss": {99: 1.0}}, evaluations={"ddim": ddim})
    # the first job also has a better DDPM row the second lacks: not its headline, as not every job has it
    (first / "evaluation" / "ddpm").mkdir(parents=True)
    ddpm = {"summary": {"complete": True}, "rows": [eval_row("ddpm", None, 1000, [3.0])]}
    (first / "evaluation" / "ddpm" / "evaluation.json").write_text(json.dumps(ddpm))
    stopped = write_job(sweep, 2, ["seed=3"], {"val/loss": {99: 1.0}})
    (stopped / "evaluation" / "ddim").mkdir(parents=True)
    started = {"summary": {"complete": False, "settings": 2}, "rows": []}
    (stopped / "evaluation" / "ddim" / "evaluation.json").write_text(json.dumps(started))
    found = {j.seed: j for j in find_jobs(sweep)}
    assert found[3].notes == [
        "evaluation `ddim` scored none of its 2 settings: it stopped before the first (interrupted or failed) "
        "or is still running; nothing of it is in the tables"
    ]
    assert found[1].value("fd_classifier") == 4.0  # the shared DDIM rows, not its own DDPM row
    assert found[3].value("fd_classifier") is None


def test_an_evaluation_stopped_after_its_bits_per_dim_says_that_the_bound_is_in_the_tables(tmp_path):
    """evaluate writes bits/dim before sampling: a run stopped while sampling keeps a finished bound, which the
    tables show, so the note must not say that nothing of it is there."""
    sweep = tmp_path / "sweep"
    stopped = write_job(sweep, 0, ["seed=1"], {"val/loss": {99: 1.0}})
    (stopped / "evaluation" / "final").mkdir(parents=True)
    bound_only = {"summary": {"complete": False, "settings": 1, "bpd": 3.25, "bpd_n": 200}, "rows": []}
    (stopped / "evaluation" / "final" / "evaluation.json").write_text(json.dumps(bound_only))
    (job,) = find_jobs(sweep)
    assert job.notes == [
        "evaluation `final` scored none of its 1 sample settings: it stopped before the first (interrupted or "
        "failed) or is still running; only its bits/dim (the full bound on 200 images, computed before "
        "sampling) is in the tables"
    ]
    assert job.value("bpd") == 3.25 and job.value("fd_classifier") is None
    # one of two settings scored: the note says the bound is complete too
    one_row = {**bound_only, "summary": {**bound_only["summary"], "settings": 2}, "rows": [{"steps": 10}]}
    (stopped / "evaluation" / "final" / "evaluation.json").write_text(json.dumps(one_row))
    (job,) = find_jobs(sweep)
    assert job.notes == [
        "evaluation `final` is partial: 1 of 2 settings were scored before it stopped; its rows are in the "
        "tables, the rest are missing (its bits/dim is complete)"
    ]


def test_cells_are_compared_with_the_baseline_cell_at_equal_network_evaluations(tmp_path):
    """Two formulations, one model per seed each: the baseline cell sampled by DDIM and (worse) DDPM at 10 and
    20 evaluations, the other by Heun at 9 and 19 (2n - 1), Euler at 10 and DDPM at 20, with known true
    differences: a sampler the baseline has meets its own, another meets the baseline's best."""
    rng = np.random.default_rng(1)
    sweep, jobs = tmp_path / "sweep", []
    for seed in SEEDS:
        shared = rng.normal(0.0, 1.0)  # the seed's shared draw: it cancels in the pairs

        def rows(settings, shared=shared):
            return [eval_row(s, None, n, [20.0 + shared + d + rng.normal(0.0, 0.05)]) for s, n, d in settings]

        base = rows([("ddim", 10, 0.0), ("ddim", 20, -1.0), ("ddpm", 10, 3.0), ("ddpm", 20, 2.0)])
        other = rows(
            [
                ("heun", 9, -2.0),
                ("heun", 19, -1.0),
                ("euler", 10, 0.0),
                ("euler", 40, -3.0),
                ("ddpm", 20, 1.0),
            ]
        )
        for cell, evaluations in (("process=ddpm", base), ("process=edm", other)):
            jobs.append(
                write_job(
                    sweep,
                    len(jobs),
                    [cell, f"seed={seed}"],
                    {"val/loss": {99: 1.0}},
                    evaluations={"e": evaluations},
                )
            )
    write_status(sweep, jobs)
    report_main([str(sweep), "--baseline", "process=ddpm"])
    md = (sweep / "report.md").read_text()
    table = _rows(_section(md, "Evaluations: difference from process=ddpm at equal network evaluations"))
    found = {r["setting"]: (r["baseline"], r["FD (classifier features)"]) for r in table}
    assert set(found) == {"heun, 9 steps", "heun, 19 steps", "euler, 10 steps", "ddpm, 20 steps"}  # not 40
    assert found["ddpm, 20 steps"][0] == "ddpm, 20 steps"  # the same sampler where the baseline has it
    assert found["heun, 9 steps"][0] == "ddim, 10 steps"  # the baseline's best sampler at that budget
    assert found["heun, 19 steps"][0] == "ddim, 20 steps"
    for setting, truth, verdict in (
        ("heun, 9 steps", -2.0, "better"),
        ("heun, 19 steps", 0.0, "not separated"),
        ("ddpm, 20 steps", -1.0, "better"),
    ):
        text = found[setting][1]
        mean, half = (float(x) for x in text.split(" (")[0].split(" ± "))
        assert abs(mean - truth) < 0.15 and re.search(
            rf"\(n=5, {verdict}(; (n≥\d+|over 100 seeds) at this spread)?\)$", text
        )


def test_headline_score_is_taken_from_the_settings_every_job_shares(tmp_path):
    """A setting only some jobs were scored in (here 1000 steps on 1,000 samples, with a lower FD) must not
    become their headline while the others' comes from 50 steps: the cells would compare two settings. With no
    shared setting the headline is the job's largest sample count (FD is biased upward as n shrinks)."""
    fifty = eval_row("ddpm", None, 50, [4.0])
    fifty["n"] = 10000
    full = eval_row("ddpm", None, 1000, [3.0])
    full["n"] = 1000
    a = write_job(
        tmp_path / "s", 0, ["loss=hybrid", "seed=1"], {}, evaluations={"ddpm50": [fifty], "ddpm1000": [full]}
    )
    b = write_job(
        tmp_path / "s",
        1,
        ["loss=simple", "seed=1"],
        {},
        evaluations={"ddpm50": [{**fifty, "fd_classifier": 4.5}]},
    )
    write_status(tmp_path / "s", [a, b])
    jobs = {j.dir.name: j for j in find_jobs(tmp_path / "s")}
    hybrid, simple = jobs[a.name], jobs[b.name]
    assert hybrid.value("fd_classifier") == 4.0 and hybrid.score_at("fd_classifier") == "ddpm, 50 steps"
    assert simple.value("fd_classifier") == 4.5

    # alone (nothing to share with), the hybrid job's headline is its 10,000-sample row, not the smaller set's
    alone = write_job(
        tmp_path / "t", 0, ["loss=hybrid", "seed=1"], {}, evaluations={"ddpm50": [fifty], "ddpm1000": [full]}
    )
    write_status(tmp_path / "t", [alone])
    (job,) = find_jobs(tmp_path / "t")
    assert job.value("fd_classifier") == 4.0
    # the same job with no sample counts recorded (older evaluation files): the best row, as before
    del fifty["n"], full["n"]
    old = write_job(tmp_path / "u", 0, ["seed=1"], {}, evaluations={"ddpm50": [fifty], "ddpm1000": [full]})
    write_status(tmp_path / "u", [old])
    (job,) = find_jobs(tmp_path / "u")
    assert job.value("fd_classifier") == 3.0


def test_a_partial_lines_legend_gives_the_range_of_seeds():
    """A run cut short leaves a sampler's line with fewer seeds at some steps: its legend says so."""
    assert seeds_label([t_interval([1.0, 2.0, 3.0]), t_interval([2.0])]) == "n=1–3"
    assert seeds_label([t_interval([1.0, 2.0]), t_interval([2.0, 3.0])]) == "n=2"
