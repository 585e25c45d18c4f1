"""The best trial of a hyperparameter search, from the ``optimization_results.yaml`` the Optuna sweeper writes
in its sweep folder (``hparams_search=...``), as a report table."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from ..errors import UserError
from .tables import Entry, Table

__all__ = ["SEARCH_FILE", "search_table"]

SEARCH_FILE = "optimization_results.yaml"


def search_table(root: Path) -> Table | None:
    """The best parameters and value of the study whose sweep folder is ``root`` (None without the file)."""
    path = root / SEARCH_FILE
    if not path.is_file():
        return None
    try:
        results = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:
        raise UserError(f"{path} is not valid YAML ({e}); fix or delete it") from e
    table = Table("Hyperparameter search: best trial", ["parameter", "value"])
    table.notes.append(
        f"From `{SEARCH_FILE}` ({results.get('name', 'optuna')}); the value is what the runs returned "
        "(their `optimized_metric`, lower is better)."
    )
    solutions = results.get("solutions") or [
        {"params": results.get("best_params", {}), "values": [results.get("best_value")]}
    ]
    for i, solution in enumerate(solutions):
        tag = f" (Pareto solution {i + 1})" if len(solutions) > 1 else ""
        table.rows += [
            [Entry(f"{k}{tag}"), Entry(f"{v:.6g}" if isinstance(v, float) else str(v))]
            for k, v in solution["params"].items()
        ]
        values = ", ".join(f"{v:.6g}" for v in solution["values"])
        table.rows.append([Entry(f"best value{tag}"), Entry(values, best=True)])
    return table
