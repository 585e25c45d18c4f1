"""Evaluate a checkpoint: FID / KID / precision-recall / IS per sampler setting, and bits/dim.

    python -m diffusion_lab.evaluate ckpt_path=PATH metrics=[fid,is,kid,pr,bpd] sampler=ddim steps=[10,20,50,100]
    python -m diffusion_lab.evaluate ckpt_path=PATH features=.cache/features/fashion_mnist.pt guidance=[0,1,2,4]
    python -m diffusion_lab.evaluate ckpt_path=PATH metrics=[fid] sample_sets=3     # FID's own spread over 3 sets

Every evaluation writes into a folder of its own, never reused: ``out_dir`` when given (refused when it already
holds files), else a new ``<run>/evaluation/<checkpoint>-<YYYYmmdd-HHMMSS>``; ``out_dir=<a stopped evaluation's
folder> resume=true`` continues that one (``evaluate_resume``). The folder holds
``evaluation.{md,csv,json}`` (one row per sampler setting; the JSON's ``provenance`` records how it was measured:
feature network, n real / n generated, sampler, guidance, seeds, checkpoint path / step / sha256, package
versions), ``<fid or fd_classifier>_vs_steps.png``, and for bits/dim ``vlb_per_t.csv`` (the mean VLB term at
each t and its standard error) / ``vlb_per_t.png``; the end of the run prints where they are.

On Inception features the scores are called fid / kid_* / is_*; on a domain classifier's features
(``features=PATH``) fd_classifier / kd_classifier_* / classifier_score_*, which are not comparable with
published FIDs. Sampling runs under bf16 autocast on CUDA, as the training callbacks sample.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from .cli import checkpoint_argument, command
from .data.splits import SPLITS
from .errors import UserError, check_types
from .sample import check_eta, fixed_by_checkpoint

__all__ = ["evaluate", "check_settings", "as_list", "main", "KNOWN_METRICS"]

KNOWN_METRICS = ("fid", "kid", "pr", "is", "bpd")


def as_list(value: Any) -> list:
    """An option that takes one value or a list of them (``steps``, ``guidance``), as a list; null is [None]."""
    if value is None:
        return [None]
    return list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else [value]


# ------------------------------------------------------------------------------------------------- settings
def check_settings(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """The metrics asked for (and those of them computed on samples), refusing bad values before any work."""
    metrics = [str(m) for m in as_list(cfg.metrics) if m is not None]
    unknown = sorted(set(metrics) - set(KNOWN_METRICS))
    if unknown:
        raise UserError(f"metrics={unknown} unknown; choose from {list(KNOWN_METRICS)}")
    if not metrics:
        raise UserError(f"metrics= is empty; choose some of {list(KNOWN_METRICS)}")
    sample_metrics = [m for m in metrics if m != "bpd"]
    check_option_types(cfg)
    for key, least in (("n", 2), ("n_real", 2), ("batch_size", 1), ("sample_sets", 1)):
        if sample_metrics and int(cfg[key]) < least:
            raise UserError(f"{key}={cfg[key]} is invalid: it must be >= {least}")
    for key in ("bpd_n", "bpd_batch_size"):
        if "bpd" in metrics and int(cfg[key]) < 1:
            raise UserError(f"{key}={cfg[key]} is invalid: it must be >= 1")
    if sample_metrics:
        check_sampling_settings(cfg)
    return metrics, sample_metrics


def check_option_types(cfg: DictConfig) -> None:
    """Each value of the right type (``eta=[2]``, ``guidance=[abc]`` otherwise fail inside a sampler with a
    traceback), and the seed a valid generator seed."""
    counts = ("n", "n_real", "batch_size", "sample_sets", "bpd_n", "bpd_batch_size")
    check_types(cfg, {"seed": (int,), "eta": (float, None), **{key: (int,) for key in counts}})
    for g in as_list(cfg.guidance):
        if g is not None and (isinstance(g, bool) or not isinstance(g, int | float)):
            raise UserError(f"guidance={g!r} is invalid: each entry must be a number (0: no guidance)")
    check_eta(cfg.eta)
    if not 0 <= int(cfg.seed) < 2**32:
        raise UserError(f"seed={cfg.seed} is out of range; it must be an integer in [0, 2**32)")


def check_sampling_settings(cfg: DictConfig) -> None:
    """``real_split`` and ``steps`` before the feature network or a checkpoint is loaded (a missing weights
    file would otherwise be reported first, and a bad value only after it was fixed)."""
    if str(cfg.real_split) not in SPLITS:
        raise UserError(f"real_split={cfg.real_split!r} is not a split; choose one of {list(SPLITS)}")
    for steps in as_list(cfg.steps):
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise UserError(
                f"steps={steps!r} is invalid: each entry must be an integer >= 1, or null (the trained sampler's)"
            )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` (alias ``ckpt``; see the module docstring); returns ``{"rows", "summary",
    "paths"}``. The options are checked first; the run (:func:`diffusion_lab.evaluation.evaluate`: torch, the
    networks, the feature network) loads after, so a mistyped option is refused in about a second."""
    metrics, sample_metrics = check_settings(cfg)
    checkpoint_argument(cfg, required=True)  # stored as cfg.ckpt_path
    from .evaluation import evaluate as score

    return score(cfg, metrics, sample_metrics)


@command("evaluate", usage=__doc__, unknown_key=fixed_by_checkpoint)
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
