"""The report over seeds: t-intervals, paired differences from a baseline, incomplete jobs, equal-step curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from diffusion_lab.report import main as report_main
from diffusion_lab.reporting.cells import group_cells
from diffusion_lab.reporting.curves import common_steps
from diffusion_lab.reporting.runs import find_jobs
from diffusion_lab.reporting.stats import (
    MOST_SEEDS,
    Interval,
    paired_difference,
    seeds_to_part,
    seeds_to_separate,
    t_interval,
    verdict,
)
from synthetic_sweep import seeded_sweep, write_job, write_status


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _row(section: str, label: str) -> list[str]:
    line = next(line for line in section.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


@pytest.mark.parametrize("values", [[1.0, 2.0], [3.1, 2.9, 3.4], [0.5, -1.0, 2.0, 0.1, 0.3, 0.9]])
def test_t_interval_matches_scipy(values):
    interval = t_interval(values)
    low, high = scipy_stats.t.interval(
        0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values)
    )
    assert interval.n == len(values)
    assert interval.low == pytest.approx(low, rel=1e-12) and interval.high == pytest.approx(high, rel=1e-12)
    assert math.isnan(t_interval([1.0]).half_width)


def test_a_true_difference_is_separated_in_the_right_direction(tmp_path):
    # A learning rate changes the model, not what its loss measures: the val losses are comparable.
    cells = ("optimizer.lr=0.0002", "optimizer.lr=0.0001")
    sweep = seeded_sweep(tmp_path / "sweep", 1.0, [1, 2, 3, 4, 5], 0.1, np.random.default_rng(0), cells)
    report_main([str(sweep), "--baseline", "optimizer.lr=0.0002"])
    md = (sweep / "report.md").read_text()
    seeds = _section(md, "Over seeds")
    assert "95% Student-t confidence interval" in seeds
    header = _row(seeds, "cell")
    slow = dict(zip(header, _row(seeds, "optimizer.lr=0.0001")))
    assert slow["n"] == "5" and " ± " in slow["val loss"]
    diff = _section(md, "Difference from optimizer.lr=0.0002")
    row = dict(zip(_row(diff, "cell"), _row(diff, "optimizer.lr=0.0001")))
    # Higher val loss is worse, lower FID better; the shared per-seed shift (sd 1) cancels in the pairs.
    assert row["val loss"].endswith("(n=5, worse)") and row["FID (Inception)"].endswith("(n=5, better)")
    for text, true in ((row["val loss"], 1.0), (row["FID (Inception)"], -1.0)):
        mean, half = (float(x) for x in text.split(" (")[0].split(" ± "))
        assert mean - half <= true <= mean + half and half < 0.5
    assert "seeds_val_loss.png" in md and "not comparable" not in diff


def _difference(md: str, baseline: str, cell: str, column: str) -> tuple[float, float, str]:
    """(mean, half-width, verdict) of ``cell`` − ``baseline`` in that baseline's difference table."""
    diff = _section(md, f"Difference from {baseline}")
    text = dict(zip(_row(diff, "cell"), _row(diff, cell)))[column]
    numbers, verdict_text = text.split(" (")
    mean, half = (float(x) for x in numbers.split(" ± "))
    return mean, half, verdict_text.rstrip(")").split(", ")[1]


def test_every_baseline_named_gets_its_own_differences(tmp_path):
    # Three learning rates whose val losses climb by 1.0 per cell: against the middle one, the first is 1.0
    # better and the last 1.0 worse; against the first, the last is 2.0 worse.
    lrs = ("optimizer.lr=0.0004", "optimizer.lr=0.0002", "optimizer.lr=0.0001")
    sweep = seeded_sweep(tmp_path / "sweep", 1.0, [1, 2, 3, 4], 0.1, np.random.default_rng(3), lrs)
    report_main([str(sweep), "--baseline", lrs[0], "--baseline", lrs[1]])
    md = (sweep / "report.md").read_text()
    for baseline, cell, true, word in (
        (lrs[0], lrs[1], 1.0, "worse"),
        (lrs[0], lrs[2], 2.0, "worse"),
        (lrs[1], lrs[0], -1.0, "better"),
        (lrs[1], lrs[2], 1.0, "worse"),
    ):
        mean, half, found = _difference(md, baseline, cell, "val loss")
        assert mean - half <= true <= mean + half and half < 0.5 and found == word, (baseline, cell)
    assert f"| {lrs[0]} |" not in _section(md, f"Difference from {lrs[0]}")  # no row for the baseline itself
    assert md.count("## Difference from ") == 2


def test_two_baselines_that_pick_one_cell_are_one_error_line(tmp_path, capsys):
    sweep = seeded_sweep(tmp_path / "sweep", 0.0, [1, 2], 0.1, np.random.default_rng(0))
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(sweep), "--baseline", "schedule=linear", "--baseline", "schedule=linear"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --baseline 'schedule=linear' and --baseline 'schedule=linear' pick the same cell "
        "(schedule=linear); name each baseline cell once"
    ]
    assert not (sweep / "report.md").exists()


@pytest.mark.parametrize(
    "cells",
    [
        ("schedule=linear", "schedule=cosine"),  # other noise levels
        ("process=ddpm", "process=flow"),  # another target
        ("weighting=uniform", "weighting=min_snr"),  # another weighting of the same terms
    ],
)
def test_val_losses_that_measure_different_quantities_are_not_compared(tmp_path, cells):
    sweep = seeded_sweep(tmp_path / "sweep", 1.0, [1, 2, 3], 0.1, np.random.default_rng(0), cells)
    report_main([str(sweep), "--baseline", cells[0]])
    diff = _section((sweep / "report.md").read_text(), f"Difference from {cells[0]}")
    row = dict(zip(_row(diff, "cell"), _row(diff, cells[1])))
    assert row["val loss"] == "not comparable (another loss)"
    assert row["FID (Inception)"].endswith("(n=3, better)")  # the samples' scores still are
    assert "differs from the baseline in a group that defines the loss" in diff


def test_a_null_difference_is_separated_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    replications, separated = 200, 0
    for _ in range(replications):
        shared = rng.normal(0.0, 1.0, 3)
        a = dict(enumerate(shared + rng.normal(0.0, 0.1, 3)))
        b = dict(enumerate(shared + rng.normal(0.0, 0.1, 3)))
        separated += verdict(paired_difference(a, b), "min") != "not separated"
    low, high = scipy_stats.binom.ppf([0.0005, 0.9995], replications, 0.05)
    assert low <= separated <= high, separated


def _with_mean_and_sd(m: int, mean: float, sd: float) -> list[float]:
    """m values whose sample mean and standard deviation are exactly these (a centred ramp, rescaled)."""
    ramp = np.arange(m) - (m - 1) / 2
    return list(mean + ramp * sd / np.std(ramp, ddof=1))


@pytest.mark.parametrize(
    ("values", "expected"), [([1.0, 2.0, 3.0], 4), ([-0.105, -0.069], 3), ([0.25, -0.25, 0.5], 23)]
)
def test_the_seeds_that_would_separate_a_difference_are_the_fewest_whose_interval_excludes_zero(
    values, expected
):
    """With the measured mean and spread held, m seeds separate the difference and m - 1 do not: checked by
    building samples of that mean and sd and taking their intervals, apart from the search itself."""
    measured = t_interval(values)
    assert verdict(measured, "min") == "not separated"
    m = seeds_to_separate(measured)
    assert m == expected
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    assert verdict(t_interval(_with_mean_and_sd(m, mean, sd)), "min") != "not separated"
    assert verdict(t_interval(_with_mean_and_sd(m - 1, mean, sd)), "min") == "not separated"


def test_the_projection_says_nothing_it_cannot_know():
    assert seeds_to_separate(t_interval([0.4])) is None  # one seed: no spread
    assert seeds_to_separate(t_interval([0.5, -0.5])) is None  # a zero mean never separates
    assert seeds_to_separate(t_interval([0.06, -0.082])) is None  # past MOST_SEEDS
    assert seeds_to_separate(t_interval([0.06, -0.082]), most=10_000) > MOST_SEEDS
    separated = t_interval([-2.1, -1.9, -2.0])
    assert (
        verdict(separated, "min") == "better" and seeds_to_separate(separated) == 3
    )  # already: the seeds run
    assert seeds_to_separate(Interval(0.1, math.nan, 2)) is None


def _apart(lower: list[float], higher: list[float]) -> bool:
    return t_interval(lower).high < t_interval(higher).low


@pytest.mark.parametrize(
    ("lower", "higher", "expected"),
    [
        # gap 4, sds 2 + 1: t_{.975,4}/√5 = 1.24 < 4/3 < 1.59 at 4
        ([10.0, 12.0, 14.0], [15.0, 16.0, 17.0], 5),
        # a three-seed FD series against a peer's
        ([0.3528, 0.3561, 0.5063], [0.4579, 0.4249, 0.5597], 20),
    ],
)
def test_the_seeds_that_would_part_two_intervals_are_the_fewest_at_which_they_stop_overlapping(
    lower, higher, expected
):
    """Both sides' means and spreads held, m seeds a side part the intervals and m - 1 do not: checked on built
    samples of those means and sds, apart from the search itself."""
    assert not _apart(lower, higher)
    m = seeds_to_part(t_interval(lower), t_interval(higher))
    assert m == expected
    built = [(float(np.mean(v)), float(np.std(v, ddof=1))) for v in (lower, higher)]
    assert _apart(*(_with_mean_and_sd(m, mean, sd) for mean, sd in built))
    assert not _apart(*(_with_mean_and_sd(m - 1, mean, sd) for mean, sd in built))


def test_the_parting_projection_says_nothing_it_cannot_know():
    ours, peer = t_interval([10.0, 12.0, 14.0]), t_interval([15.0, 16.0, 17.0])
    assert seeds_to_part(peer, ours) is None  # the "lower" side's mean is the higher: no parting that way
    assert seeds_to_part(t_interval([10.0]), peer) is None  # one seed: no spread
    assert seeds_to_part(t_interval([0.30, 0.50]), t_interval([0.31, 0.52])) is None  # past MOST_SEEDS
    assert seeds_to_part(t_interval([0.30, 0.50]), t_interval([0.31, 0.52]), most=100_000) > MOST_SEEDS
    assert seeds_to_part(t_interval([1.0, 1.1, 1.2]), t_interval([5.0, 5.1, 5.2])) == 3  # already apart


def test_a_baseline_that_matches_no_cell_is_one_error_line(tmp_path, capsys):
    sweep = seeded_sweep(tmp_path / "sweep", 0.0, [1, 2], 0.1, np.random.default_rng(0))
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(sweep), "--baseline", "schedule=quadratic"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--baseline" in err[0] and "schedule=cosine" in err[0]


def test_a_job_stopped_by_its_time_limit_is_incomplete_and_not_ranked(tmp_path):
    root = tmp_path / "sweep"
    curve = {s: 1.0 for s in (9, 19, 29, 39, 49, 59, 69, 79, 89, 99)}
    early = {s: 0.1 for s in (9, 19, 29)}  # better loss, but only 30 of 100 steps trained
    jobs = [
        write_job(root, 0, ["seed=1", "loss=a"], {"val/loss": curve}),
        write_job(root, 1, ["seed=2", "loss=a"], {"val/loss": {**curve, 99: 3.0}}),
        write_job(root, 2, ["seed=1", "loss=b"], {"val/loss": early}),
    ]
    write_status(root, jobs)
    found = find_jobs(root)
    assert [j.incomplete for j in found] == [False, False, True]
    cells = group_cells(found)
    assert [(c.label, len(c.jobs)) for c in cells] == [("loss=a", 2)]  # the incomplete job is in no mean
    report_main([str(root)])
    md = (root / "report.md").read_text()
    ranked = md.split("\n\n| # |", 1)[1].split("\n\n", 1)[0]
    assert "loss=b" not in ranked and "★" in ranked
    incomplete = _section(
        md,
        "Incomplete jobs: stopped (trainer.max_time) before trainer.max_steps; not ranked "
        "and left out of the means over seeds",
    )
    assert "incomplete" in _row(incomplete, "1") and "★" not in incomplete


def test_curves_over_seeds_are_compared_at_the_steps_every_job_logged(tmp_path):
    root = tmp_path / "sweep"
    write_job(root, 0, ["seed=1", "x=a"], {"val/loss": {9: 1.0, 19: 1.0, 29: 1.0}}, max_steps=30)
    write_job(root, 1, ["seed=2", "x=a"], {"val/loss": {9: 1.0, 19: 1.0, 29: 1.0}}, max_steps=30)
    write_job(root, 2, ["seed=1", "x=b"], {"val/loss": {9: 1.0, 29: 1.0, 25: 2.0}}, max_steps=30)
    cells = group_cells(find_jobs(root))
    assert common_steps(cells, "val/loss") == [9, 29]


def test_a_faster_convergence_is_separated_step_by_step_including_jobs_stopped_early(tmp_path):
    # Cell "fast" is 2.0 lower at step 10 (paired differences -2.1, -1.9, -2.0) and not at step 20 (+0.25,
    # -0.25, +0.5), over a per-seed offset that pairing cancels; seed 3 of "fast" was stopped by a time guard
    # after step 20 (incomplete), yet counts at steps 10 and 20.
    root = tmp_path / "sweep"
    offset = {1: 3.0, 2: -2.0, 3: 5.0}
    gaps = {"slow": {1: (0.0, 0.0), 2: (0.0, 0.0), 3: (0.0, 0.0)},
            "fast": {1: (-2.1, 0.25), 2: (-1.9, -0.25), 3: (-2.0, 0.5)}}  # fmt: skip
    jobs, num = [], 0
    for cell, by_seed in gaps.items():
        for seed, (gap10, gap20) in by_seed.items():
            e = offset[seed]
            curve = {10: 10.0 + gap10 + e, 20: 5.0 + gap20 + e, 30: 4.0 + e}
            if cell == "fast" and seed == 3:
                curve.pop(30)
            fd = {"metrics/fd_classifier": curve}
            jobs.append(write_job(root, num, [f"seed={seed}", f"w={cell}"], fd, max_steps=31))
            num += 1
    write_status(root, jobs)
    assert sum(j.incomplete for j in find_jobs(root)) == 1
    report_main([str(root), "--baseline", "w=slow"])
    section = _section(
        (root / "report.md").read_text(), "metrics/fd_classifier over training: difference from w=slow"
    )
    half = scipy_stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)  # sd of (-2.1, -1.9, -2.0) is 0.1
    assert _row(section, "10")[1] == f"-2 ± {half:.2g} (n=3, better)"
    assert _row(section, "20")[1].startswith("+0.1667 ± ")
    # sd of (+0.25, -0.25, +0.5) is 0.3819: the fewest seeds m with t_{0.975, m-1} * sd / sqrt(m) < 1/6
    sd = float(np.std([0.25, -0.25, 0.5], ddof=1))
    m = next(m for m in range(2, 100) if scipy_stats.t.ppf(0.975, m - 1) * sd / math.sqrt(m) < 1 / 6)
    assert m == 23
    assert _row(section, "20")[1].endswith(f"(n=3, not separated; n≥{m} at this spread)")
    assert "| 30 |" not in section  # step 30 was not reached by every job


def test_two_sweeps_of_other_seeds_below_one_folder_pool_into_one_cell(tmp_path):
    # More seeds run later as a second sweep (its jobs numbered from 0 again): a report on the folder above both
    # counts every seed once in its cell and pairs each with the baseline's job of the same seed. No job noise:
    # each seed shifts both cells alike (sd 1), so only right pairs give exactly the cells' difference, -1.
    # The later sweep ran newer code: the report says that each pair still compares jobs of one version.
    rng = np.random.default_rng(5)
    seeded_sweep(tmp_path / "study" / "first", 1.0, [1, 2, 3], 0.0, rng, code="a" * 64)
    seeded_sweep(tmp_path / "study" / "more_seeds", 1.0, [4, 5, 6], 0.0, rng, code="b" * 64)
    report_main([str(tmp_path / "study"), "--baseline", "schedule=linear"])
    md = (tmp_path / "study" / "report.md").read_text()
    assert "**Code: the jobs ran 2 versions**" in md
    assert (
        "Each seed's jobs ran one version, so every difference paired by seed compares jobs of one version."
        in md
    )
    seeds = _section(md, "Over seeds")
    for cell in ("schedule=linear", "schedule=cosine"):
        assert dict(zip(_row(seeds, "cell"), _row(seeds, cell)))["n"] == "6", cell
    mean, half, found = _difference(md, "schedule=linear", "schedule=cosine", "FID (Inception)")
    assert mean == pytest.approx(-1.0, abs=1e-3) and half < 1e-3 and found == "better"
    assert "(n=6, better)" in _section(md, "Difference from schedule=linear")


def test_two_sweeps_named_together_are_gathered_and_reported_as_one(tmp_path):
    # The same pooling without copying the sweeps below one folder first: their raw files are gathered below
    # --keep-raw, one folder each, the report goes beside it, and that folder alone rebuilds the report.
    rng = np.random.default_rng(5)
    first = seeded_sweep(tmp_path / "first", 1.0, [1, 2, 3], 0.0, rng)
    more = seeded_sweep(tmp_path / "more_seeds", 1.0, [4, 5, 6], 0.0, rng)
    (first / "0_seed=1,schedule=linear" / "checkpoints").mkdir()
    (first / "0_seed=1,schedule=linear" / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    raw = tmp_path / "study" / "raw"
    report_main([str(first), str(more), "--keep-raw", str(raw), "--baseline", "schedule=linear"])
    md = (tmp_path / "study" / "report.md").read_text()
    assert md.startswith("# Sweep report: first, more_seeds\n")
    assert f"Sweep: `{first.resolve()}, {more.resolve()}` — 12 job(s)" in md
    assert sorted(p.name for p in raw.iterdir()) == ["first", "more_seeds", "report_settings.json"]
    assert not list(raw.rglob("*.ckpt"))
    seeds = _section(md, "Over seeds")
    for cell in ("schedule=linear", "schedule=cosine"):
        assert dict(zip(_row(seeds, "cell"), _row(seeds, cell)))["n"] == "6", cell
    mean, half, found = _difference(md, "schedule=linear", "schedule=cosine", "FID (Inception)")
    assert mean == pytest.approx(-1.0, abs=1e-3) and half < 1e-3 and found == "better"
    report_main([str(raw), "--out", str(tmp_path / "rebuilt")])  # title and baseline from the kept settings
    assert (tmp_path / "rebuilt" / "report.md").read_text() == md


def test_several_sweeps_without_a_place_to_gather_them_or_one_without_jobs_are_refused(tmp_path, capsys):
    first = seeded_sweep(tmp_path / "first", 1.0, [1, 2], 0.0, np.random.default_rng(0))
    empty = tmp_path / "empty"
    empty.mkdir()
    raw = tmp_path / "raw"
    for argv, expected in (
        (
            [str(first), str(first)],
            "error: 2 sweeps given: several sweeps are reported together from one copy of their raw files; "
            "add --keep-raw DEST (the report goes beside DEST unless --out says where)",
        ),
        (
            [str(first), str(empty), "--keep-raw", str(raw)],
            f"error: {empty} holds no jobs; pass ",
        ),
        (
            [str(tmp_path), str(first), "--keep-raw", str(raw)],
            f"error: {tmp_path.resolve()} and {first.resolve()}: a sweep named twice, or one inside another, "
            "would count its jobs twice; name each sweep once",
        ),
    ):
        with pytest.raises(SystemExit) as exit_info:
            report_main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(expected), err
    assert not raw.exists()  # nothing copied before the refusal
    # A baseline that names no cell is found once the jobs are gathered: refused, no settings left to rebuild with.
    more = seeded_sweep(tmp_path / "more", 1.0, [3, 4], 0.0, np.random.default_rng(1))
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(first), str(more), "--keep-raw", str(raw), "--baseline", "schedule=nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "schedule=nope" in err[0], err
    assert not (raw / "report_settings.json").exists() and not (tmp_path / "report.md").exists()


def test_the_report_names_the_devices_and_whether_each_seed_ran_on_one(tmp_path):
    # Seeds 4-6 run later on another GPU and pooled: the report says which jobs ran where, and that each seed's
    # pair still ran on one kind; one seed's cells split across machines is named. Runs that recorded no device
    # (older ones) add no line.
    rng = np.random.default_rng(3)
    seeded_sweep(tmp_path / "study" / "first", 1.0, [1, 2, 3], 0.0, rng, device="NVIDIA H200")
    later = seeded_sweep(
        tmp_path / "study" / "later", 1.0, [4, 5, 6], 0.0, rng, device="NVIDIA H100 80GB HBM3"
    )
    report_main([str(tmp_path / "study"), "--baseline", "schedule=linear"])
    md = (tmp_path / "study" / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("**Devices"))
    assert line.startswith(
        "**Devices: the jobs ran on 2 kinds**, so a difference between them may come from the machine (speeds "
        "above all): `NVIDIA H100 80GB HBM3` ("
    )
    h100, h200 = line.split("; `NVIDIA H200` (")
    assert [f"seed={s}" in h100 for s in range(1, 7)] == [False] * 3 + [True] * 3
    assert [f"seed={s}" in h200 for s in range(1, 7)] == [True] * 3 + [False] * 3
    assert line.endswith(
        "Each seed's jobs ran on one kind, so every difference paired by seed compares jobs of one kind.  "
    )
    moved = next(later.glob("*_seed=5,schedule=cosine"))
    (moved / ".hydra" / "provenance.yaml").write_text("device: NVIDIA H200\n")
    report_main([str(tmp_path / "study"), "--baseline", "schedule=linear"])
    md = (tmp_path / "study" / "report.md").read_text()
    assert (
        "The jobs of seed(s) 5 ran on more than one kind: their paired differences may come from the machine."
        in md
    )
    one = seeded_sweep(tmp_path / "one", 1.0, [1, 2], 0.0, rng, device="cpu")
    report_main([str(one)])
    assert "Device: every job ran on one kind (`cpu`)." in (one / "report.md").read_text()
    old = seeded_sweep(tmp_path / "old", 1.0, [1, 2], 0.0, rng)
    report_main([str(old)])
    assert "Device" not in (old / "report.md").read_text()


def test_a_seed_whose_cells_ran_other_code_is_named(tmp_path):
    sweep = seeded_sweep(tmp_path / "sweep", 1.0, [1, 2, 3], 0.1, np.random.default_rng(0), code="a" * 64)
    rerun = next(sweep.glob("*_seed=2,schedule=cosine"))  # one cell of seed 2 re-run with other code
    (rerun / ".hydra" / "provenance.yaml").write_text(f"code_sha256: {'c' * 64}\n")
    report_main([str(sweep), "--baseline", "schedule=linear"])
    md = (sweep / "report.md").read_text()
    assert (
        "The jobs of seed(s) 2 ran more than one version: their paired differences may come from the code."
        in md
    )
    assert "Each seed's jobs ran one version" not in md
