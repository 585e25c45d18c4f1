"""The run-folder paths the docs and help texts show are the ones Hydra writes: outputs/<task_name>/runs|multirun,
where task_name is set by the experiment (conf/experiment/*.yaml) or train.yaml when no experiment sets one."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from conftest import compose_train

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "RELIABILITY.md", ROOT / "experiments" / "README.md"]
PATH = re.compile(r"outputs/([A-Za-z0-9_<>${}.:]+)/(?:runs|multirun)/")


def task_names() -> set[str]:
    """Every task_name a run can have: each experiment's, and the default composition's."""
    names = {
        yaml.safe_load(p.read_text()).get("task_name") for p in (ROOT / "conf" / "experiment").glob("*.yaml")
    }
    names.add(compose_train([]).task_name)
    return {n for n in names if n}


def test_documented_run_folders_exist_as_hydra_writes_them():
    allowed = task_names() | {"<task_name>", "<task>", "${task_name}"}
    sources = DOCS + sorted((ROOT / "src" / "diffusion_lab").rglob("*.py"))
    wrong = [
        f"{path.relative_to(ROOT)}: outputs/{m.group(1)}/"
        for path in sources
        for m in PATH.finditer(path.read_text())
        if m.group(1) not in allowed
    ]
    assert wrong == [], f"no run writes these folders (task names: {sorted(allowed)})"
