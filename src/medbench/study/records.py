"""The runs a study report covers, read from the study's results store and each run's directory."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from medbench.errors import MedbenchError
from medbench.rundir import read_metrics
from medbench.study.grid import canonical_json
from medbench.study.stats import finite
from medbench.study.store import Store, default_url

SEED_KEY = "seed"


@dataclass
class RunRecord:
    id: str
    status: str  # done, failed, running, pending, or missing (in the study, not in the store)
    config: dict  # the resolved RunConfig as JSON
    axes: dict
    metrics: dict | None = None
    run_dir: Path | None = None
    error: str | None = None
    seconds: float | None = None
    study: str | None = None


def load_records(out_dir: str | os.PathLike, *, study=None, db_url: str | None = None
                 ) -> tuple[list[RunRecord], list[str], str, str]:
    """The runs to report (records, axis names, study name, database URL for display)."""
    url = db_url or default_url(out_dir)
    with Store(url, create=False) as store:
        rows = store.rows() if study is None else store.rows(study.ids)
    shown_url = make_url(url).render_as_string(hide_password=True)
    if study is not None:
        return _study_records(study, rows), list(study.axes), study.name, shown_url
    records, axes = _store_records(rows)
    names = sorted({r.study for r in records if r.study})
    return records, axes, ", ".join(names) or "study", shown_url


def _study_records(study, rows: list[dict]) -> list[RunRecord]:
    """The study's runs in its order; runs absent from the store are missing."""
    by_id = {r["id"]: r for r in rows}
    return [_record(by_id.get(run.id, {"id": run.id, "status": "missing"}), dict(run.axes),
                    json.loads(canonical_json(run.config))) for run in study.runs]


def _store_records(rows: list[dict]) -> tuple[list[RunRecord], list[str]]:
    """Every row of the store, and the union of their axes."""
    records: list[RunRecord] = []
    axes: list[str] = []
    for row in rows:
        try:
            row_axes = json.loads(row["axes"]) if row.get("axes") else {}
        except ValueError:
            row_axes = {}
        for k in row_axes:
            if k not in axes:
                axes.append(k)
        records.append(_record(row, row_axes, json.loads(row["config"])))
    # readable order: dataset first, seed last (the store keeps axes as sorted JSON)
    axes.sort(key=lambda k: (k != "dataset", k == SEED_KEY))
    return records, axes


def _record(row: dict, axes: dict, config: dict) -> RunRecord:
    status = row.get("status") or "missing"
    return RunRecord(id=row["id"], status=status, config=config, axes=axes,
                     metrics=_read_metrics(row) if status == "done" else None,
                     run_dir=Path(row["run_dir"]) if row.get("run_dir") else None,
                     error=row.get("error"), seconds=row.get("seconds"), study=row.get("study"))


def _read_metrics(row: dict) -> dict | None:
    """metrics.json of the run directory when readable (it is what the predictions belong to), else the store's."""
    if row.get("run_dir"):
        try:
            return read_metrics(row["run_dir"])
        except MedbenchError:
            pass
    if row.get("metrics"):
        try:
            return json.loads(row["metrics"])
        except ValueError:
            return None
    return None


def metric(rec: RunRecord, split: str, name: str) -> float | None:
    """A split's metric of a run, None when absent or not a finite number."""
    v = ((rec.metrics or {}).get(split) or {}).get(name)
    return float(v) if finite(v) else None


def gap(rec: RunRecord, name: str) -> float | None:
    """Train - test of a metric: as the run recorded it, else from the two splits."""
    recorded = (rec.metrics or {}).get("gap")
    if isinstance(recorded, dict) and finite(recorded.get(name)):
        return float(recorded[name])
    tr, te = metric(rec, "train", name), metric(rec, "test", name)
    return tr - te if tr is not None and te is not None else None
