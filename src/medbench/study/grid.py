"""Study files: a grid of RunConfig settings expanded into runs with stable ids.

A study file (YAML, safe loader)::

    name: tiny
    grid: {dataset: [breastmnist], model: [cnn5, cnn2], augment: [none, basic], seed: [0, 1]}
    fixed: {epochs: 1}
    report: false        # optional: write each run's report.html (default: no)

Every ``grid`` and ``fixed`` key must be a RunConfig field. Runs are the Cartesian product of the grid's value
lists in file order (the last axis varies fastest). A run's id is the first 12 hex digits of the SHA-256 of the
canonical JSON (sorted keys, no spaces) of its fully resolved RunConfig, so it does not depend on key order, on
the process, or on whether a value was given or left at its default; runs that resolve to the same config are
one run.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbench.config import RunConfig, read_yaml, resolve_config
from medbench.errors import MedbenchError

STUDY_KEYS = ("name", "grid", "fixed", "report")
ID_LENGTH = 12


@dataclass(frozen=True)
class StudyRun:
    """One run of a study: its id, resolved config, and the grid axes' values that made it."""
    id: str
    config: RunConfig
    axes: dict[str, Any]


@dataclass
class Study:
    name: str
    axes: list[str]
    fixed: dict[str, Any]
    runs: list[StudyRun]
    report: bool | None = None
    path: Path | None = None
    grid: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.runs)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.runs]


def canonical_json(cfg: RunConfig) -> str:
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def run_id(cfg: RunConfig) -> str:
    """First 12 hex digits of the SHA-256 of the config's canonical JSON."""
    return hashlib.sha256(canonical_json(cfg).encode("utf-8")).hexdigest()[:ID_LENGTH]


def _describe(axes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in axes.items()) or "no axes"


def _check_keys(where: str, section: str, mapping: dict) -> None:
    valid = RunConfig.model_fields
    for key in mapping:
        if not isinstance(key, str) or key not in valid:
            raise MedbenchError(f"{where}: unknown key '{key}' in {section} (valid keys: {', '.join(valid)})")


def build_study(data: dict[str, Any], where: str = "study", path: Path | None = None) -> Study:
    """A study from an already-parsed mapping (``where`` names it in errors)."""
    if not isinstance(data, dict):
        raise MedbenchError(f"{where}: expected a mapping with name, grid and fixed, got {type(data).__name__}")
    unknown = [k for k in data if k not in STUDY_KEYS]
    if unknown:
        raise MedbenchError(f"{where}: unknown study key '{unknown[0]}' (valid: {', '.join(STUDY_KEYS)})")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise MedbenchError(f"{where}: 'name' is required and must be a non-empty string")
    grid = data.get("grid") or {}
    fixed = data.get("fixed") or {}
    for section, value in (("grid", grid), ("fixed", fixed)):
        if not isinstance(value, dict):
            raise MedbenchError(f"{where}: '{section}' must be a mapping of settings, got {type(value).__name__}")
    _check_keys(where, "grid", grid)
    _check_keys(where, "fixed", fixed)
    both = [k for k in grid if k in fixed]
    if both:
        raise MedbenchError(f"{where}: '{both[0]}' is in both grid and fixed; keep it in one")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise MedbenchError(f"{where}: grid '{key}' must be a non-empty list of values (got {values!r})")
    report = data.get("report")
    if report is not None and not isinstance(report, bool):
        raise MedbenchError(f"{where}: 'report' must be true or false (got {report!r})")
    axes = list(grid)
    runs: list[StudyRun] = []
    seen: set[str] = set()
    combos = itertools.product(*(grid[k] for k in axes))
    for i, combo in enumerate(combos, 1):
        values = dict(zip(axes, combo))
        cfg = resolve_config({**fixed, **values}, where=f"{where}: run {i} ({_describe(values)})")
        rid = run_id(cfg)
        if rid in seen:
            continue
        seen.add(rid)
        runs.append(StudyRun(rid, cfg, values))
    return Study(name=name.strip(), axes=axes, fixed=dict(fixed), runs=runs, report=report, path=path,
                 grid={k: list(v) for k, v in grid.items()})


def load_study(path: str | os.PathLike) -> Study:
    """Read and expand a study file (YAML, safe loader); every error names the file (and the run)."""
    path = Path(path)
    return build_study(read_yaml(path, "study file"), where=str(path), path=path)
