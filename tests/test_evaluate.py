"""diffusion_lab.evaluate end to end: bits/dim of the exact Gaussian denoiser against its analytic value, the
sample metrics (FID / KID / P&R / IS) on a tiny trained checkpoint with a classifier and with a random-weight
Inception network, the real-feature cache, and the one-line errors of the CLI. Nothing is downloaded."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from conftest import cli_env, compose_train, small_train_cfg
from diffusion_lab.build import load_checkpoint, make_spec
from diffusion_lab.data import DiffusionDataModule
from diffusion_lab.errors import UserError
from diffusion_lab.evaluate import check_settings, evaluate
from diffusion_lab.evaluation import build_datamodule
from diffusion_lab.metrics.classifier import SmallClassifier, save_classifier
from diffusion_lab.module import CHECKPOINT_KEY, DiffusionModule
from diffusion_lab.train import train
from diffusion_lab.visualize import visualize
from gaussian_oracle import analytic_decoder_bits, analytic_vb_bits, tables

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS_DIR = Path(__file__).resolve().parent
MU, S = 0.0, 0.3  # the Gaussian data of test_likelihood.py: iid N(0, 0.3²) pixels
T = 50
SAMPLE_METRICS = ("fid", "kid_mean", "kid_std", "precision", "recall", "is_mean", "is_std")
# the same scores on a domain classifier's features (not Inception's): other quantities, other names
CLASSIFIER_METRICS = (
    "fd_classifier",
    "kd_classifier_mean",
    "kd_classifier_std",
    "precision",
    "recall",
    "classifier_score_mean",
    "classifier_score_std",
)


def vis_cfg(out_dir: Path, *overrides: str):
    return compose_train(
        [f"out_dir={out_dir}", "device=cpu", "progress=false", *overrides], config_name="visualize"
    )


def eval_cfg(ckpt: Path | str, out_dir: Path, *overrides: str):
    return compose_train(
        [f"ckpt={ckpt}", f"out_dir={out_dir}", "device=cpu", "progress=false", *overrides],
        config_name="evaluate",
    )


def read_csv(path: Path | str) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def gaussian_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint written by hand: a linear T=50, eps, fixed_small process whose network is the exact
    denoiser of N(MU, S²) data, and whose data config is that data (both importable from tests/)."""
    cfg = compose_train([f"schedule.num_timesteps={T}", "prediction=eps", "variance=fixed_small"])
    spec = make_spec(cfg, (1, 8, 8), None)
    abar = tables(instantiate(spec["schedule"]).betas.numpy())["abar"]
    spec["model"] = {
        "_target_": "gaussian_oracle.GaussianDenoiserNet",
        "abar": abar.tolist(),
        "mu": MU,
        "s": S,
        "prediction": "eps",
    }
    spec["data"] = {"_target_": "gaussian_oracle.GaussianImages", "mu": MU, "s": S, "shape": [1, 8, 8]}
    path = tmp_path_factory.mktemp("gaussian") / "checkpoints" / "oracle.ckpt"
    path.parent.mkdir()
    torch.save({CHECKPOINT_KEY: {"spec": spec}, "state_dict": {"net.dummy": torch.zeros(())}}, path)
    return path


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("trained")
    return Path(train(small_train_cfg(out, "trainer.max_steps=2"))["checkpoint"])


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = SmallClassifier(1, 10, 28, width=4, feature_dim=8)
    return save_classifier(model, tmp_path_factory.mktemp("features") / "classifier.pt")


# ------------------------------------------------------------------------------------------------ bits/dim
def stored_betas(ckpt: Path) -> np.ndarray:
    """The betas of the schedule stored in ``ckpt`` (the analytic values need nothing else)."""
    spec = torch.load(ckpt, weights_only=False)[CHECKPOINT_KEY]["spec"]
    assert spec["schedule"]["num_timesteps"] == T
    return instantiate(spec["schedule"]).betas.numpy()


def test_bpd_of_the_exact_gaussian_denoiser_matches_analytic_value(gaussian_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    n = 2000
    result = evaluate(
        eval_cfg(
            gaussian_checkpoint, out, "metrics=[bpd]", f"bpd_n={n}", "bpd_batch_size=700", "bpd_split=test"
        )
    )
    summary = result["summary"]
    assert summary["bpd_n"] == n and summary["bpd_stderr"] > 0

    betas = stored_betas(gaussian_checkpoint)
    kl, prior = analytic_vb_bits(betas, MU, S)
    decoder = analytic_decoder_bits(betas, MU, S)
    expected = float(np.sum(kl[1:]) + decoder + prior)
    # the total, within 4 of the standard errors the CLI reports (+ the float32 allowance of test_likelihood)
    assert abs(summary["bpd"] - expected) < 4 * summary["bpd_stderr"] + 1e-3 * decoder, (summary, expected)

    # the per-t curve: t = 1 is the decoder term, t >= 2 the KL terms L_{t-1}, each within 5 of its own
    # standard error (written beside it)
    rows = read_csv(out / "vlb_per_t.csv")
    assert [int(r["t"]) for r in rows] == list(range(1, T + 1))
    mean = np.array([float(r["vb_bits_per_dim"]) for r in rows])
    se = np.array([float(r["vb_stderr"]) for r in rows])
    assert np.all(se > 0)
    err = np.abs(mean[1:] - kl[1:])
    assert np.all(err < 5 * se[1:] + 1e-4 * kl[1:]), np.max((err - 1e-4 * kl[1:]) / se[1:])
    assert abs(mean[0] - decoder) < 5 * se[0] + 1e-3 * decoder, (mean[0], decoder, se[0])
    # the terms and the prior add up to the reported total
    assert summary["bpd"] == pytest.approx(mean.sum() + prior, abs=4 * summary["bpd_stderr"])

    # the tables: one row (bits/dim only), in md / csv / json, and the plot
    paths = result["paths"]
    assert Path(paths["vlb_csv"]) == out / "vlb_per_t.csv"
    assert Path(paths["vlb_plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = read_csv(paths["table_csv"])
    assert len(table) == 1 and float(table[0]["bpd"]) == pytest.approx(summary["bpd"])
    saved = json.loads(Path(paths["json"]).read_text())
    assert saved["summary"]["bpd"] == summary["bpd"] and saved["rows"] == result["rows"]
    md = Path(paths["table_md"]).read_text()
    assert f"**{summary['bpd']:.4f} ± {summary['bpd_stderr']:.4f}**" in md
    assert "_vs_steps.png" not in " ".join(paths.values())
    printed = capsys.readouterr().out
    assert f"bits/dim : {summary['bpd']:.4f} ± {summary['bpd_stderr']:.4f} (n={n})" in printed


# ---------------------------------------------------------------------------------------- sample metrics
def test_sample_metrics_per_steps_value_and_real_feature_cache(
    trained_checkpoint, classifier, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    common = [
        f"features={classifier}",
        f"cache_dir={cache}",
        "metrics=[fid,kid,pr,is]",
        "n=8",
        "n_real=16",
        "batch_size=4",
    ]
    out = tmp_path / "eval"
    result = evaluate(eval_cfg(trained_checkpoint, out, *common, "steps=[2,4]"))
    rows = result["rows"]
    assert [r["steps"] for r in rows] == [2, 4]
    for r in rows:
        assert r["sampler"] == "ddim" and r["n"] == 8 and r["guidance"] == 0.0
        assert all(math.isfinite(r[k]) for k in CLASSIFIER_METRICS), r
        assert r["fd_classifier"] >= 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
        assert r["classifier_score_mean"] >= 1
        assert "bpd" not in r
    # one row per steps value in every table
    table = read_csv(out / "evaluation.csv")
    assert [int(r["steps"]) for r in table] == [2, 4]
    assert [float(r["fd_classifier"]) for r in table] == pytest.approx([r["fd_classifier"] for r in rows])
    assert json.loads((out / "evaluation.json").read_text())["rows"] == rows
    md_rows = [line for line in (out / "evaluation.md").read_text().splitlines() if line.startswith("| ddim")]
    assert len(md_rows) == 2
    png = out / "fd_classifier_vs_steps.png"
    assert result["paths"]["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        img.verify()
    assert not (out / "vlb_per_t.csv").exists()

    # the real features were computed once and cached (a .pt and its .json key)
    files = sorted(cache.iterdir())
    assert [p.suffix for p in files] == [".json", ".pt"]
    key = json.loads(files[0].read_text())["key"]
    assert key["n"] == 16 and key["split"] == "train" and key["features"].startswith("classifier:")
    stamps = {p.name: p.stat().st_mtime_ns for p in files}

    # a second run reads them from the cache: the data is never touched, nothing is rewritten
    def no_data(self, split, n):
        raise AssertionError("the real features were recomputed instead of read from the cache")

    monkeypatch.setattr(DiffusionDataModule, "real_images", no_data)
    again = evaluate(eval_cfg(trained_checkpoint, tmp_path / "again", *common, "steps=[2]"))
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps
    # the same seed gives the same samples, so the same scores
    assert again["rows"][0]["fd_classifier"] == pytest.approx(rows[0]["fd_classifier"], rel=1e-6)
    assert not list((tmp_path / "again").glob("*_vs_steps.png"))  # one row: no curve


def test_inception_features_with_local_weights(
    trained_checkpoint, random_inception_weights, no_download, tmp_path
):
    result = evaluate(
        eval_cfg(
            trained_checkpoint,
            tmp_path / "eval",
            "features=inception",
            f"inception_weights={random_inception_weights}",
            f"cache_dir={tmp_path / 'cache'}",
            "metrics=[fid,kid,pr,is]",
            "steps=[2]",
            "n=4",
            "n_real=4",
            "batch_size=4",
        )
    )
    (row,) = result["rows"]
    assert all(math.isfinite(row[k]) for k in SAMPLE_METRICS), row
    (meta,) = (tmp_path / "cache").glob("*.json")
    key = json.loads(meta.read_text())["key"]
    assert key["features"] == f"inception-v3-compat:{random_inception_weights.name}:2048"
    assert torch.load(meta.with_suffix(".pt")).shape == (4, 2048)


def validation_estimates(ckpt: Path, images: torch.Tensor, rounds: int) -> torch.Tensor:
    """``val/bpd_one_t_mc`` as the training module's validation step logs it, per image, over ``rounds``
    validation passes of the same images with different seeds (each draws its own t and noise)."""
    parts, spec, _ = load_checkpoint(ckpt)
    module = DiffusionModule(
        parts.net, parts.diffusion, parts.loss, parts.timesteps, parts.sampler, optimizer=None
    )
    logged: list[torch.Tensor] = []

    def log(name, value, **kwargs):
        if name == "val/bpd_one_t_mc":
            logged.append(value)

    module.log = log
    module.eval()
    with torch.no_grad():
        for r in range(rounds):
            module.val_seed = 1000 + r
            for i, chunk in enumerate(images.split(1)):  # one image per batch: one t per logged value
                module.validation_step(chunk, i)
    return torch.stack(logged).double()


def test_bits_per_dim_entry_points_agree(trained_checkpoint, tmp_path):
    """evaluate's bits/dim, visualize vlb and the training's validation estimate measure the same bound: on one
    checkpoint and one image set they agree within their reported standard errors (validation's one-timestep
    estimate is of the unclipped bound: it agrees with bpd_clip_denoised=false)."""
    n = 8
    common = ["metrics=[bpd]", f"bpd_n={n}", "bpd_batch_size=8", "bpd_split=test"]
    ev = {
        clip: evaluate(
            eval_cfg(trained_checkpoint, tmp_path / f"e{clip}", *common, f"bpd_clip_denoised={clip}")
        )["summary"]
        for clip in ("true", "false")
    }
    assert ev["true"]["bpd_clip_denoised"] is True and ev["false"]["bpd_clip_denoised"] is False
    for clip in ("true", "false"):
        overrides = ["figure=vlb", f"ckpt={trained_checkpoint}", f"n={n}", "batch_size=4", "seed=7"]
        vis = visualize(vis_cfg(tmp_path / f"v{clip}", *overrides, f"clip_denoised={clip}"))
        vis = json.loads(Path(vis["summary"]).read_text())
        assert vis["n"] == n and vis["split"] == "test" and vis["clip_denoised"] == (clip == "true")
        e = ev[clip]
        tolerance = 4 * math.hypot(vis["total_bpd_stderr"], e["bpd_stderr"])
        assert abs(vis["total_bpd"] - e["bpd"]) < tolerance, (clip, vis, e)

    _, spec, _ = load_checkpoint(trained_checkpoint)

    images = build_datamodule(spec, None).real_images("test", n)
    est = validation_estimates(trained_checkpoint, images, rounds=40)
    mean, se = float(est.mean()), float(est.std() / math.sqrt(est.numel()))
    unclipped = ev["false"]
    assert abs(mean - unclipped["bpd"]) < 4 * math.hypot(se, unclipped["bpd_stderr"]), (mean, se, unclipped)


# --------------------------------------------------------------------------------- folders and provenance
@pytest.fixture
def run_copy(trained_checkpoint, tmp_path) -> Path:
    """The trained checkpoint copied into a run folder of this test's own (evaluations land beside it)."""
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copyfile(trained_checkpoint, ckpt)
    return ckpt


def classifier_cfg(ckpt: Path, classifier: Path, cache: Path, *overrides: str):
    common = [f"features={classifier}", f"cache_dir={cache}", "n=4", "n_real=8", "batch_size=4"]
    cfg = eval_cfg(ckpt, Path("unused"), *common, *overrides)
    cfg.out_dir = None  # the default folder, <run>/evaluation/<checkpoint>-<time>
    return cfg


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_two_evaluations_leave_two_folders(run_copy, classifier, tmp_path):
    cache = tmp_path / "cache"
    first = evaluate(
        classifier_cfg(run_copy, classifier, cache, "metrics=[fid,bpd]", "steps=[2,3]", "bpd_n=2")
    )
    folder = Path(first["summary"]["out_dir"])
    assert folder.parent == run_copy.parent.parent / "evaluation" and folder.name.startswith("last-")
    kept = folder_bytes(folder)
    assert {"evaluation.json", "evaluation.csv", "evaluation.md", "fd_classifier_vs_steps.png"} <= set(kept)
    second = evaluate(classifier_cfg(run_copy, classifier, cache, "metrics=[fid]", "steps=[2]"))
    other = Path(second["summary"]["out_dir"])
    assert other != folder and other.parent == folder.parent
    assert folder_bytes(folder) == kept  # the first evaluation's files intact
    # the second holds its own files only: one row, no curve, no bits/dim left over from the first
    assert sorted(p.name for p in other.iterdir()) == ["evaluation.csv", "evaluation.json", "evaluation.md"]
    assert len(json.loads((other / "evaluation.json").read_text())["rows"]) == 1
    # a named out_dir that already holds an evaluation is refused before any work, its files kept
    cfg = classifier_cfg(run_copy, classifier, cache, "metrics=[fid]")
    cfg.out_dir = str(folder)
    with pytest.raises(UserError, match=r"out_dir=.* already holds files") as err:
        evaluate(cfg)
    assert "\n" not in str(err.value) and folder_bytes(folder) == kept


def test_json_records_provenance(run_copy, classifier, tmp_path):
    cfg = classifier_cfg(run_copy, classifier, tmp_path / "cache", "metrics=[fid,kid,bpd]", "steps=[2]")
    cfg.bpd_n, cfg.seed, cfg.guidance = 2, 5, [0.0]
    result = evaluate(cfg)
    saved = json.loads(Path(result["paths"]["json"]).read_text())
    prov = saved["summary"]["provenance"]
    assert prov["checkpoint"] == {
        "path": str(run_copy.resolve()),
        "global_step": 2,
        "sha256": hashlib.sha256(run_copy.read_bytes()).hexdigest(),
    }
    feats = prov["features"]
    assert feats["network"] == "classifier" and feats["path"] == str(classifier.resolve())
    assert feats["sha256"] == hashlib.sha256(classifier.read_bytes()).hexdigest()
    assert prov["n_real"] == 8 and prov["n_generated"] == 4 and prov["real_split"] == "train"
    assert prov["seeds"] == [5] and prov["sample_sets"] == 1 and prov["guidance"] == [0.0]
    assert prov["bpd"] == {"n": 2, "split": "test", "clip_denoised": True, "seed": 5}
    assert prov["versions"]["torch"] == torch.__version__ and prov["versions"]["torch-fidelity"]
    assert prov["device"] == "cpu" and prov["device_model"] == "cpu"  # the model of the GPU where one ran
    assert prov["config"]["ckpt"] == str(run_copy)
    (row,) = saved["rows"]
    assert row["sampler"] == "ddim" and row["sampler_settings"].startswith("DDIMSampler(")
    assert row["steps"] == 2 and row["guidance"] == 0.0 and row["seeds"] == [5]
    assert row["n"] == 4 and row["n_real"] == 8 and row["features"] == "classifier"
    md = Path(result["paths"]["table_md"]).read_text()
    assert prov["checkpoint"]["sha256"] in md and feats["sha256"] in md


def test_inception_provenance(trained_checkpoint, random_inception_weights, no_download, tmp_path):
    common = ["metrics=[fid]", "steps=[2]", "n=4", "n_real=4", "batch_size=4"]
    result = evaluate(
        eval_cfg(
            trained_checkpoint,
            tmp_path / "eval",
            f"inception_weights={random_inception_weights}",
            f"cache_dir={tmp_path / 'cache'}",
            *common,
        )
    )
    feats = result["summary"]["provenance"]["features"]
    assert feats["network"] == "inception" and feats["weights"] == str(random_inception_weights)
    assert feats["sha256"] == hashlib.sha256(random_inception_weights.read_bytes()).hexdigest()
    assert "fid" in result["rows"][0] and "fd_classifier" not in result["rows"][0]


FID_WORD = re.compile(r"(?<![a-z])fid(?![a-z])", re.IGNORECASE)  # fid, FID, fid_std; not torch-fidelity


def json_keys(value) -> list[str]:
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in [k, *json_keys(v)]]
    return [k for v in value for k in json_keys(v)] if isinstance(value, list) else []


def test_classifier_scores_are_never_labelled_as_inception(trained_checkpoint, classifier, tmp_path):
    out = tmp_path / "eval"
    cache = tmp_path / "cache"
    overrides = ["metrics=[fid,kid,is]", "steps=[2,3]", "n=4", "n_real=8", "batch_size=4", "sample_sets=2"]
    cfg = eval_cfg(trained_checkpoint, out, f"features={classifier}", f"cache_dir={cache}", *overrides)
    result = evaluate(cfg)
    saved = json.loads((out / "evaluation.json").read_text())
    labels = json_keys(saved["rows"]) + [c for c in read_csv(out / "evaluation.csv")[0]]
    labels += [p.name for p in out.iterdir()] + list(result["paths"])
    assert "fd_classifier" in labels and "fd_classifier_std" in labels
    assert not [x for x in labels if FID_WORD.search(x) or x.startswith(("kid", "is_"))], labels
    md = (out / "evaluation.md").read_text()
    assert "fd_classifier" in md and not FID_WORD.search(md), md


def test_sample_sets_report_the_spread(trained_checkpoint, classifier, tmp_path):
    result = evaluate(
        eval_cfg(
            trained_checkpoint,
            tmp_path / "eval",
            f"features={classifier}",
            f"cache_dir={tmp_path / 'cache'}",
            "metrics=[fid,kid]",
            "steps=[2]",
            "n=6",
            "n_real=8",
            "batch_size=3",
            "sample_sets=3",
            "seed=10",
        )
    )
    (row,) = result["rows"]
    values = row["fd_classifier_values"]
    assert row["sample_sets"] == 3 and row["seeds"] == [10, 11, 12] and len(values) == 3
    assert len(set(values)) == 3  # independent sets give different estimates
    assert row["fd_classifier"] == pytest.approx(np.mean(values))
    assert row["fd_classifier_std"] == pytest.approx(np.std(values, ddof=1)) and row["fd_classifier_std"] > 0
    assert math.isfinite(row["kd_classifier_mean"]) and row["kd_classifier_std"] >= 0
    # each set is the one-set evaluation with that seed
    single = evaluate(
        eval_cfg(
            trained_checkpoint,
            tmp_path / "one",
            f"features={classifier}",
            f"cache_dir={tmp_path / 'cache'}",
            "metrics=[fid]",
            "steps=[2]",
            "n=6",
            "n_real=8",
            "batch_size=3",
            "seed=11",
        )
    )["rows"][0]
    assert single["fd_classifier"] == pytest.approx(values[1], rel=1e-6)
    assert single["fd_classifier_std"] is None and single["fd_classifier_values"] == [single["fd_classifier"]]


def score_variants(
    checkpoint, classifier, tmp_path, sampler: list[str], variants: dict[str, list[str]]
) -> dict:
    """One small FD evaluation (3 steps, 6 samples, seed 5) per variant, each into tmp_path/<name>: its row."""
    common = [
        f"features={classifier}",
        f"cache_dir={tmp_path / 'cache'}",
        "metrics=[fid]",
        *sampler,
        "steps=[3]",
        "n=6",
        "n_real=8",
        "batch_size=3",
        "seed=5",
    ]
    return {
        name: evaluate(eval_cfg(checkpoint, tmp_path / name, *common, *extra))["rows"][0]
        for name, extra in variants.items()
    }


def test_without_a_bar_each_batch_prints_how_far_the_sampling_got(
    trained_checkpoint, classifier, tmp_path, capsys
):
    """progress=false (a study's log): one line per batch, so a stopped run's log says how far it got."""
    common = [f"features={classifier}", f"cache_dir={tmp_path / 'cache'}", "metrics=[fid]", "n_real=8"]
    evaluate(eval_cfg(trained_checkpoint, tmp_path / "eval", *common, "steps=[2]", "n=5", "batch_size=2"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("generating")]
    assert [re.sub(r", \d+ s$", "", line) for line in lines] == [
        f"generating ddim 2: {done}/5 samples" for done in (2, 4, 5)
    ]
    evaluate(eval_cfg(trained_checkpoint, tmp_path / "bar", *common, "steps=[2]", "n=5", "progress=true"))
    assert "generating ddim 2:" not in capsys.readouterr().out  # the bar instead


def test_sampling_variance_rows_are_their_own_setting(trained_checkpoint, classifier, tmp_path):
    variants = {
        "plain": [],
        "small": ["sampling_variance=fixed_small"],
        "large": ["sampling_variance=fixed_large"],
    }
    rows = score_variants(trained_checkpoint, classifier, tmp_path, ["sampler=ddpm"], variants)
    assert "variance" not in rows["plain"]
    assert rows["small"]["variance"] == "fixed_small" and rows["large"]["variance"] == "fixed_large"
    # the checkpoint was trained with fixed_small: naming it again draws the very same samples
    assert rows["small"]["fd_classifier"] == rows["plain"]["fd_classifier"]
    assert rows["large"]["fd_classifier"] != pytest.approx(rows["plain"]["fd_classifier"], rel=1e-3)
    recorded = json.loads((tmp_path / "large" / "evaluation.json").read_text())
    assert recorded["summary"]["provenance"]["config"]["sampling_variance"] == "fixed_large"
    assert "variance" in read_csv(tmp_path / "large" / "evaluation.csv")[0]


def test_an_unclipped_sampler_is_recorded_as_such(trained_checkpoint, classifier, tmp_path):
    """sampler.clip_denoised=false reaches the sampler and its row says clip: false (the report's own setting);
    a clipped row has no clip key, as every row written before the key existed."""
    variants = {"clipped": [], "unclipped": ["sampler.clip_denoised=false"]}
    rows = score_variants(trained_checkpoint, classifier, tmp_path, ["sampler=ddim", "eta=0.0"], variants)
    assert "clip" not in rows["clipped"] and "clip_denoised=True" in rows["clipped"]["sampler_settings"]
    assert (
        rows["unclipped"]["clip"] is False and "clip_denoised=False" in rows["unclipped"]["sampler_settings"]
    )
    assert "clip" in read_csv(tmp_path / "unclipped" / "evaluation.csv")[0]


# ---------------------------------------------------------------------------------------------- CLI errors
def run_cli(tmp_path: Path, *args: str, torch_home: Path | None = None) -> subprocess.CompletedProcess:
    env = cli_env(tmp_path)
    env["PYTHONPATH"] = str(TESTS_DIR)  # the hand-written checkpoint's parts live in tests/
    if torch_home is not None:
        env["TORCH_HOME"] = str(torch_home)
    cmd = [sys.executable, "-m", "diffusion_lab.evaluate", "device=cpu", "progress=false", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_missing_inception_weights_is_one_line(gaussian_checkpoint, tmp_path):
    torch_home = tmp_path / "torch_home"
    out = tmp_path / "eval"
    proc = run_cli(
        tmp_path,
        f"ckpt={gaussian_checkpoint}",
        f"out_dir={out}",
        f"cache_dir={tmp_path / 'cache'}",
        "features=inception",
        "metrics=[fid,bpd]",
        torch_home=torch_home,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    where = torch_home / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert str(where) in lines[0]
    assert "inception_weights=PATH" in lines[0] and "metrics.inception_weights" not in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    # it fails before any work: no bits/dim computed, nothing written
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_unknown_metric_is_one_line(tmp_path):
    proc = run_cli(tmp_path, f"ckpt={tmp_path / 'none.ckpt'}", "metrics=[fid,fdi]")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: metrics=['fdi'] unknown; choose from ['fid', 'kid', 'pr', 'is', 'bpd']"]


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["metrics=[]"], "metrics= is empty"),
        (["metrics=[fid]", "n=1"], "n=1 is invalid"),
        (["metrics=[bpd]", "bpd_n=0"], "bpd_n=0 is invalid"),
        (
            ["metrics=[fid]", "real_split=tran"],
            r"real_split='tran' is not a split; choose one of \['train', ",
        ),
        (["metrics=[fid]", "steps=[50,0]"], "steps=0 is invalid: each entry must be an integer >= 1"),
        (["metrics=[fid]", "steps=[fast]"], "steps='fast' is invalid"),
    ],
)
def test_bad_settings_fail_before_loading(tmp_path, overrides, match):
    with pytest.raises(UserError, match=match) as err:
        evaluate(eval_cfg(tmp_path / "none.ckpt", tmp_path / "eval", *overrides))
    assert "\n" not in str(err.value)


def test_sampling_variance_with_ddim_is_one_line_and_writes_nothing(gaussian_checkpoint, tmp_path):
    out = tmp_path / "eval"
    proc = run_cli(
        tmp_path,
        f"ckpt={gaussian_checkpoint}",
        f"out_dir={out}",
        "features=inception",
        "metrics=[fid]",
        "sampler=ddim",
        "sampling_variance=fixed_large",
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: sampling_variance=fixed_large is read by ancestral sampling alone, and sampler=ddim takes no "
        "variance from the process; use sampler=ddpm or drop sampling_variance"
    ]
    assert not out.exists()


def test_missing_classifier_names_the_option(gaussian_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^features='.*nope\.pt' is neither 'inception'"):
        evaluate(eval_cfg(gaussian_checkpoint, tmp_path, f"features={tmp_path / 'nope.pt'}", "metrics=[fid]"))


# --------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generation_runs_under_bf16_autocast_on_cuda(trained_checkpoint, classifier, tmp_path, monkeypatch):
    import diffusion_lab.evaluation as ev

    seen: list[bool] = []
    load = ev.load_checkpoint

    def load_and_watch(*args, **kwargs):
        parts, spec, ckpt = load(*args, **kwargs)
        parts.net.register_forward_pre_hook(lambda m, a: seen.append(torch.is_autocast_enabled("cuda")))
        return parts, spec, ckpt

    monkeypatch.setattr(ev, "load_checkpoint", load_and_watch)
    cfg = eval_cfg(
        trained_checkpoint, tmp_path, f"features={classifier}", f"cache_dir={tmp_path / 'c'}", "metrics=[fid]"
    )
    cfg.device = "cuda"
    cfg.n, cfg.n_real, cfg.batch_size, cfg.steps = 4, 8, 4, [2]
    row = evaluate(cfg)["rows"][0]
    assert seen and all(seen) and math.isfinite(row["fd_classifier"])


def test_channels_last_and_compile_options(trained_checkpoint, classifier, tmp_path, monkeypatch):
    """channels_last=true gives the same scores (same samples up to float rounding); compile=<mode> hands the
    network to torch.compile with that mode; the steady rate (without the first batch) is reported."""
    import diffusion_lab.evaluation as ev

    common = [f"features={classifier}", f"cache_dir={tmp_path / 'c'}", "metrics=[fid]", "n=8", "n_real=16"]
    common += ["batch_size=4", "steps=[2]"]
    modes: list = []
    # Triton pointed at torch's ptxas: once per compiled evaluation (numbered by the compiles before it), never
    # for an uncompiled one.
    ptxas_named: list[int] = []
    monkeypatch.setattr(ev, "use_torch_ptxas", lambda: ptxas_named.append(len(modes)))
    plain = evaluate(eval_cfg(trained_checkpoint, tmp_path / "a", *common))["rows"][0]
    nhwc = evaluate(eval_cfg(trained_checkpoint, tmp_path / "b", *common, "channels_last=true"))["rows"][0]
    assert nhwc["fd_classifier"] == pytest.approx(plain["fd_classifier"], rel=1e-3, abs=1e-3)
    assert plain["gen_img_per_s_steady"] > 0 and math.isfinite(plain["gen_img_per_s_steady"])
    assert ptxas_named == []

    batches: list[int] = []

    def fake_compile(net, options=None):
        modes.append(options)
        net.register_forward_pre_hook(lambda m, a: batches.append(a[0].shape[0]))
        return net

    monkeypatch.setattr(ev.torch, "compile", fake_compile)
    for value in ("true", "reduce-overhead"):
        evaluate(eval_cfg(trained_checkpoint, tmp_path / value, *common, f"compile={value}"))
    evaluate(eval_cfg(trained_checkpoint, tmp_path / "cl", *common, "compile=true", "channels_last=true"))
    # the mode's inductor options; with channels_last, inductor's layout optimization forced on
    assert modes == [{}, {"triton.cudagraphs": True}, {"force_layout_optimization": True}]
    assert ptxas_named == [0, 1, 2]  # each time before the network was handed to torch.compile
    with pytest.raises(
        UserError, match=r"compile=fastest is not a torch.compile mode; choose from .*max-autotune"
    ):
        evaluate(eval_cfg(trained_checkpoint, tmp_path / "bad", *common, "compile=fastest"))
    # n=10 in batches of up to 4 (balanced: 4, 3, 3): the compiled network only ever sees batches of 4.
    batches.clear()
    row = evaluate(eval_cfg(trained_checkpoint, tmp_path / "odd", *common, "compile=true", "n=10"))["rows"][0]
    assert set(batches) == {4} and row["n"] == 10 and math.isfinite(row["fd_classifier"])


def test_a_stopped_evaluation_keeps_the_settings_it_scored(run_copy, classifier, tmp_path, monkeypatch):
    import diffusion_lab.evaluation as ev

    real_score, calls = ev.score_setting, []

    def stop_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a killed job sees
        return real_score(*args, **kwargs)

    monkeypatch.setattr(ev, "score_setting", stop_on_the_second)
    cfg = classifier_cfg(run_copy, classifier, tmp_path / "cache", "metrics=[fid]", "steps=[2,3,4]")
    cfg.out_dir = str(tmp_path / "partial")
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg)
    saved = json.loads((tmp_path / "partial" / "evaluation.json").read_text())
    assert saved["summary"]["complete"] is False and saved["summary"]["settings"] == 3
    assert (
        saved["summary"]["process"]["pid"] == os.getpid()
    )  # who was scoring it (status: running or stopped)
    assert [r["steps"] for r in saved["rows"]] == [2]
    assert "**Partial**: 1 of 3 settings" in (tmp_path / "partial" / "evaluation.md").read_text()
    with open(tmp_path / "partial" / "evaluation.csv") as f:
        assert [r["steps"] for r in csv.DictReader(f)] == ["2"]

    calls[:] = [1]  # the next call counts as the second: stopped before its first score
    cfg = classifier_cfg(run_copy, classifier, tmp_path / "cache", "metrics=[fid]", "steps=[2,3,4]")
    cfg.out_dir = str(tmp_path / "none")
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg)
    saved = json.loads((tmp_path / "none" / "evaluation.json").read_text())
    assert (saved["summary"]["complete"], saved["summary"]["settings"], saved["rows"]) == (False, 3, [])
    assert "**Partial**: 0 of 3 settings" in (tmp_path / "none" / "evaluation.md").read_text()

    monkeypatch.setattr(ev, "score_setting", real_score)
    cfg = classifier_cfg(run_copy, classifier, tmp_path / "cache", "metrics=[fid]", "steps=[2,3,4]")
    cfg.out_dir = str(tmp_path / "whole")
    done = json.loads(Path(evaluate(cfg)["paths"]["json"]).read_text())
    assert done["summary"]["complete"] is True and [r["steps"] for r in done["rows"]] == [2, 3, 4]
    assert "process" not in done["summary"]


def test_a_stopped_evaluation_continues_to_the_rows_of_an_uninterrupted_one(
    run_copy, classifier, tmp_path, monkeypatch
):
    import diffusion_lab.evaluation as ev

    def cfg(out: str, *extra: str):
        c = classifier_cfg(
            run_copy, classifier, tmp_path / "cache", "metrics=[fid,bpd]", "steps=[2,3,4]", *extra
        )
        c.out_dir = str(tmp_path / out)
        return c

    whole = evaluate(cfg("whole", "bpd_n=4"))["rows"]
    real_score, calls = ev.score_setting, []

    def stop_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_score(*args, **kwargs)

    monkeypatch.setattr(ev, "score_setting", stop_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg("stopped", "bpd_n=4"))
    first_row = json.loads((tmp_path / "stopped" / "evaluation.json").read_text())["rows"][0]

    # Another measurement is refused, naming the option; the stopped table is left as it was.
    with pytest.raises(UserError) as err:
        evaluate(cfg("stopped", "bpd_n=4", "n=12", "resume=true"))
    assert str(err.value) == (
        f"resume=true: config.n is 12 here but {int(whole[0]['n'])} in the evaluation in {tmp_path / 'stopped'}; "
        "a continued evaluation must measure the same thing: give those options, or score in a new out_dir"
    )
    calls.clear()
    monkeypatch.setattr(ev, "score_setting", lambda *a, **k: calls.append(1) or real_score(*a, **k))
    result = evaluate(cfg("stopped", "bpd_n=4", "resume=true"))
    assert len(calls) == 2  # steps 3 and 4 only; bits/dim not computed again either
    rows, summary = result["rows"], result["summary"]
    assert summary["complete"] is True and len(summary["continued"]) == 1
    assert rows[0] == {**first_row, "bpd": whole[0]["bpd"]}  # kept as it was
    timing = ("seconds", "gen_img_per_s", "gen_img_per_s_steady")
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows] == [
        {k: v for k, v in r.items() if k not in timing} for r in whole
    ]
    with pytest.raises(UserError, match="is complete; there is nothing to continue"):
        evaluate(cfg("stopped", "bpd_n=4", "resume=true"))
    with pytest.raises(UserError, match="holds no evaluation.json to continue"):
        evaluate(cfg("elsewhere", "resume=true"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eta=[2]", "eta=[2] must be a number or null (e.g. eta=0.001)"),
        ("eta=-1", "eta=-1 is invalid: η must be >= 0 (0 deterministic, 1 DDPM-like)"),
        ("guidance=[0,abc]", "guidance='abc' is invalid: each entry must be a number (0: no guidance)"),
        ("seed=-1", "seed=-1 is out of range; it must be an integer in [0, 2**32)"),
        ("n=abc", "n='abc' must be an integer (e.g. n=3)"),
    ],
)
def test_a_bad_option_value_is_refused_before_any_work(override, message):
    # Before these checks eta=[2] and guidance=[abc] failed inside a sampler with a traceback, and seed=-1 only
    # after the checkpoint and the feature network were loaded, naming no option.
    conf = TESTS_DIR.parent / "conf" / "evaluate.yaml"
    cfg = OmegaConf.merge(OmegaConf.load(conf), OmegaConf.from_dotlist([override]))
    with pytest.raises(UserError) as err:
        check_settings(cfg)
    assert str(err.value) == message
