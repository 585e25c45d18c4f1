"""The quality suite's summary: per system the mean ± 95% Student-t half-width over seeds of FD, KID, steps and
train img/s; per peer whether ours has the lower mean FD with non-overlapping 95% intervals (and, where not, the
seeds a side at which they would part if means and spreads held), and ours − peer FD
paired by seed (a seed's runs share a host and a call, so the pairing also holds when seeds ran on different
machines); which code each run ran (its call's package digest): seeds run in several calls may have run
several versions, which the comparison then also measures; and whether each system ran one setting over its
seeds (a digest of the settings its rows disclose), since a setting changed between seeds would be compared too."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable

from diffusion_lab.reporting import stats
from diffusion_lab.reporting.stats import Interval, paired_difference, t_interval, verdict

METRICS = (("fd", "FD"), ("kid", "KID"), ("steps", "steps"), ("img_per_s", "train img/s"))


def intervals(records: list[dict]) -> dict[str, dict[str, Interval]]:
    """system -> metric -> its interval over the records (seeds) that have the metric."""
    systems = list(dict.fromkeys(r["system"] for r in records))
    out: dict[str, dict[str, Interval]] = {}
    for system in systems:
        metrics = [r.get("metrics") or {} for r in records if r["system"] == system]
        out[system] = {
            key: t_interval(m[key] for m in metrics if m.get(key) is not None and math.isfinite(m[key]))
            for key, _ in METRICS
        }
    return out


def lower_fd_separated(ours: Interval, peer: Interval) -> bool:
    """Ours has the lower mean FD and the two 95% intervals do not overlap (both need two seeds or more)."""
    return stats.partable(ours, peer) and ours.high < peer.low


def fd_by_seed(records: list[dict], system: str) -> dict[int, float]:
    fds = {r["seed"]: (r.get("metrics") or {}).get("fd") for r in records if r["system"] == system}
    return {seed: fd for seed, fd in fds.items() if fd is not None and math.isfinite(fd)}


def cell(i: Interval) -> dict:
    return {"mean": i.mean, "half_width": i.half_width, "n": i.n}


def summary(records: list[dict]) -> dict:
    table = intervals(records)
    verdicts, parting, paired = {}, {}, {}
    if "ours" in table:
        for peer in (s for s in table if s != "ours"):
            verdicts[peer] = lower_fd_separated(table["ours"]["fd"], table[peer]["fd"])
            parting[peer] = stats.seeds_to_part(table["ours"]["fd"], table[peer]["fd"])
            diff = paired_difference(fd_by_seed(records, "ours"), fd_by_seed(records, peer))
            paired[peer] = {
                **cell(diff),
                "verdict": verdict(diff, "min"),
                "seeds_to_separate": stats.seeds_to_separate(diff),
            }
    return {
        "systems": {system: {key: cell(i) for key, i in row.items()} for system, row in table.items()},
        "ours_lower_fd_separated": verdicts,
        "seeds_to_part": parting,
        "ours_minus_peer_fd_paired": paired,
        "code": code_versions(records),
        "settings": setting_versions(records),
        "settings_differ": setting_differences(records),
        # only where a row names its GPU (rows written before they did leave the summaries of their time as were)
        **({"gpus": gpu_types(records)} if any(r.get("gpu") for r in records) else {}),
    }


def gpu_types(records: list[dict]) -> dict[str, list[str]]:
    """GPU type a row's call ran on ("not recorded" for rows from calls that did not say) -> its runs' labels:
    one small network's steps in a wall budget differ by tens of percent between hosts, more between types."""
    return labels_by(records, lambda r: r.get("gpu"))


def gpu_line(types: dict[str, list[str]]) -> str:
    if len(types) == 1:
        (name,) = types
        return f"gpu: every run ran on one GPU type ({name})"
    return f"gpu: WARNING, the runs ran on {len(types)} GPU types ({_listed(types)}); compare runs of one type only"


def code_versions(records: list[dict]) -> dict[str, list[str]]:
    """package digest (its first 12 hex digits; "not recorded" for rows from calls that did not record one) ->
    the labels of the runs that ran it, in the order the rows were written."""

    def digest(r: dict) -> str | None:
        sha = (r.get("code") or {}).get("package_sha256")
        return sha[:12] if sha else None

    return labels_by(records, digest)


def labels_by(records: list[dict], key: Callable[[dict], str | None]) -> dict[str, list[str]]:
    """``key(row)`` ("not recorded" where it gives None) -> the labels of the rows with it, in row order."""
    groups: dict[str, list[str]] = {}
    for r in records:
        groups.setdefault(key(r) or "not recorded", []).append(r["label"])
    return groups


def code_line(versions: dict[str, list[str]]) -> str:
    if list(versions) == ["not recorded"]:
        return "code: not recorded by any run's call"
    if len(versions) == 1:
        (sha,) = versions
        return f"code: every run ran one version ({sha})"
    return f"code: WARNING, the runs ran {len(versions)} versions ({_listed(versions)})"


def setting_versions(records: list[dict]) -> dict[str, dict[str, list[str]]]:
    """system -> digest of its rows' disclosed ``settings`` (first 12 hex digits of the sha256 of their sorted
    JSON; "not recorded" where a row has none) -> the labels of its runs that ran them."""
    versions: dict[str, dict[str, list[str]]] = {}
    for r in records:
        settings = r.get("settings")
        key = "not recorded"
        if settings is not None:
            key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        versions.setdefault(r["system"], {}).setdefault(key, []).append(r["label"])
    return versions


def setting_differences(records: list[dict]) -> dict[str, list[str]]:
    """system -> the names of the disclosed settings whose values differ between its rows that recorded
    settings (only systems with such a difference), so a warning says what changed, not only that it did."""
    disclosed: dict[str, list[dict]] = {}
    for r in records:
        if r.get("settings"):
            disclosed.setdefault(r["system"], []).append(r["settings"])
    differ = {}
    for system, rows in disclosed.items():
        # a key a row lacks reads as None, which no disclosed value's JSON equals: missing counts as different
        keys = sorted(k for k in set().union(*rows) if len({_json(row, k) for row in rows}) > 1)
        if keys:
            differ[system] = keys
    return differ


def _json(settings: dict, key: str) -> str | None:
    return json.dumps(settings[key], sort_keys=True) if key in settings else None


def settings_line(
    versions: dict[str, dict[str, list[str]]], differ: dict[str, list[str]] | None = None
) -> str:
    mixed = {system: v for system, v in versions.items() if len(v) > 1}
    if all(list(v) == ["not recorded"] for v in versions.values()):
        return "settings: not recorded by any run"
    if not mixed:
        return "settings: every system ran one setting over its seeds"
    listed = " / ".join(
        f"{system} ran {len(v)}{_in_keys((differ or {}).get(system))} ({_listed(v)})"
        for system, v in mixed.items()
    )
    return f"settings: WARNING, a system's seeds ran different settings: {listed}"


def _in_keys(keys: list[str] | None) -> str:
    return f" differing in {', '.join(keys)}" if keys else ""


def _listed(groups: dict[str, list[str]]) -> str:
    """'key: label, label; key: label'."""
    return "; ".join(f"{key}: {', '.join(labels)}" for key, labels in groups.items())


def text(result: dict) -> str:
    lines = ["system       " + "".join(f"{label:>24}" for _, label in METRICS)]
    for system, row in result["systems"].items():
        cells = "".join(f"{fmt(row[key]):>24}" for key, _ in METRICS)
        lines.append(f"{system:<13}{cells}")
    for peer, yes in result["ours_lower_fd_separated"].items():
        answer = "yes" if yes else f"no{parting(result, peer)}"
        lines.append(f"vs {peer}: ours lower mean FD with non-overlapping 95% CIs: {answer}")
    for peer, diff in result.get("ours_minus_peer_fd_paired", {}).items():
        lines.append(f"ours - {peer} FD paired by seed: {fmt(diff)}: {diff['verdict']}{projection(diff)}")
    if "code" in result:
        lines.append(code_line(result["code"]))
    if "settings" in result:
        lines.append(settings_line(result["settings"], result.get("settings_differ")))
    if "gpus" in result:
        lines.append(gpu_line(result["gpus"]))
    return "\n".join(lines)


def parting(result: dict, peer: str) -> str:
    """Where ours' FD interval still overlaps the peer's with ours' mean the lower: the seeds a side at which they
    would part if means and spreads held (summaries written before the projection existed have none)."""
    ours, theirs = (Interval(**result["systems"][s]["fd"]) for s in ("ours", peer))
    if peer not in result.get("seeds_to_part", {}) or not stats.partable(ours, theirs):
        return ""
    return seeds_text(result["seeds_to_part"][peer])


def seeds_text(m: int | None) -> str:
    return f" (n>={m} at this spread)" if m else f" (over {stats.MOST_SEEDS} seeds at this spread)"


def projection(diff: dict) -> str:
    """Where a paired difference is not separated: the seeds that would separate it if it held (summaries
    written before the projection existed have none)."""
    measured = Interval(diff["mean"], diff["half_width"], diff["n"])
    if (
        diff["verdict"] != "not separated"
        or "seeds_to_separate" not in diff
        or not stats.projectable(measured)
    ):
        return ""
    return seeds_text(diff["seeds_to_separate"])


def fmt(cell: dict) -> str:
    mean, half = cell["mean"], cell["half_width"]
    if math.isnan(mean):
        return "-"
    digits = 4 if abs(mean) < 1 else 1
    return f"{mean:.{digits}f} ± {half:.{digits}f} (n={cell['n']})"
