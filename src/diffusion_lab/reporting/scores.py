"""The sample-quality scores a report shows, under their real names: FID / KID / IS on Inception features,
FD / KD / classifier score on a domain classifier's (``score_names``), never merged into one column."""

from __future__ import annotations

from dataclasses import dataclass

from ..score_names import score_names

__all__ = ["Score", "SCORES", "FRECHET", "score"]


@dataclass(frozen=True)
class Score:
    key: str  # its name in evaluation rows, and after ``metrics/`` in training logs
    header: str
    better: str  # "min": lower is better, "max": higher
    kind: str | None  # the feature network ("inception" / "classifier"); None: the same name on both
    frechet: bool = False  # a Fréchet distance: the score a job's best evaluation row is chosen by


def _scores() -> list[Score]:
    headers = {
        "fid": ("FID (Inception)", "FD (classifier features)", "min"),
        "is_mean": ("IS (Inception)", "classifier score", "max"),
        "kid_mean": ("KID (Inception)", "KD (classifier features)", "min"),
    }
    found = []
    for base, (inception, classifier, better) in headers.items():
        for kind, header in (("inception", inception), ("classifier", classifier)):
            found.append(Score(score_names(kind)[base], header, better, kind, frechet=base == "fid"))
    return [*found, Score("precision", "precision", "max", None), Score("recall", "recall", "max", None)]


SCORES = _scores()
FRECHET = [s for s in SCORES if s.frechet]


def score(key: str) -> Score:
    return next(s for s in SCORES if s.key == key)
