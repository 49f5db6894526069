"""Run a study: record its runs in the store, train what is not done, write results.csv.

``python -m medbench.study.runner STUDY.yaml --out DIR [--workers N] [--db URL]`` does the same from a shell.
Resumable: rerunning the same study (or one with more grid values) on the same directory trains only the runs
that are not 'done'; runs left 'running' by a killed process on this host are retried.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError
from medbench.rundir import claim
from medbench.study.executor import Job, run_jobs
from medbench.study.grid import Study, canonical_json, load_study
from medbench.study.store import DB_NAME, Store, default_url
from medbench.tracking import check_track

RUNS_DIR = "runs"
RESULTS = "results.csv"
RESULT_METRICS = (("test_acc", "test", "acc"), ("test_auc", "test", "auc"), ("val_auc", "val", "auc"),
                  ("train_auc", "train", "auc"))


def _study(study: Study | str | os.PathLike) -> Study:
    return study if isinstance(study, Study) else load_study(study)


def run_study(study: Study | str | os.PathLike, out_dir: str | os.PathLike, *, workers: int = 1,
              db_url: str | None = None, executor: str = "local", quiet: bool = True, report: bool | None = None,
              data_dir=None, address: str | None = None, cpus_per_run: float | None = None,
              gpus_per_run: float | None = None, track: str | None = None) -> dict[str, int]:
    """Train every run of ``study`` that is not done yet into ``out_dir/runs/<id>/``; returns the study's counts.

    ``db_url``: the results store (default ``sqlite:///OUT_DIR/study.db``). ``report``: write each run's
    report.html (default: the study file's ``report``, else False). ``executor``: ``local`` or ``ray``
    (``address``, ``cpus_per_run``, ``gpus_per_run``: see :func:`medbench.study.executor.run_ray`).
    ``track``: ``mlflow`` or ``mlflow:URI`` logs every run into the MLflow experiment named after the study
    (:mod:`medbench.tracking`; the store is checked once, before any run starts).
    Writes ``out_dir/results.csv`` and the study report (``report.html``, ``results.md``, ``summary.json``;
    :func:`medbench.study.report.write_study_report`).
    """
    from medbench.study.executor import EXECUTORS

    if executor not in EXECUTORS:
        raise MedbenchError(f"unknown executor '{executor}'; valid: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise MedbenchError(f"--workers must be >= 1 (got {workers})")
    study = _study(study)
    if track:  # checked now, not by each run; every worker (a Ray node too) gets the same resolved URI
        track = f"mlflow:{check_track(track)}"
    out_dir = claim(out_dir, "study", ours=(RUNS_DIR, RESULTS, DB_NAME))
    out_dir.mkdir(parents=True, exist_ok=True)
    url = db_url or default_url(out_dir)
    report = bool(study.report) if report is None else report
    runs_dir = (out_dir / RUNS_DIR).resolve()
    jobs = [Job(r.id, str(runs_dir / r.id), r.config.model_dump(), track, study.name if track else None)
            for r in study.runs]
    with Store(url) as store:
        store.add({"id": r.id, "study": study.name, "config": canonical_json(r.config),
                   "axes": json.dumps(r.axes, sort_keys=True), "run_dir": str(runs_dir / r.id)}
                  for r in study.runs)
        store.reset_stale()
        store.requeue_failed(study.ids)
        todo = {row["id"] for row in store.rows(study.ids) if row["status"] == "pending"}
        if not quiet:
            c = store.counts(study.ids)
            print(f"study '{study.name}': {c['total']} runs, {c['done']} done, {len(todo)} to train, "
                  f"{c['running']} running elsewhere", flush=True)
    try:
        run_jobs(executor, url, [j for j in jobs if j.id in todo], workers=workers, report=report,
                 data_dir=data_dir, quiet=quiet, address=address, cpus_per_run=cpus_per_run,
                 gpus_per_run=gpus_per_run)
    finally:
        with Store(url) as store:
            store.reset_stale()  # a worker that died (OOM, signal) leaves its run 'failed' / "interrupted"
            write_results(study, out_dir, store)
            counts = store.counts(study.ids)
    if counts["done"] and (todo or not (out_dir / "report.html").is_file()):  # a no-op rerun keeps its report
        _study_report(study, out_dir, url, data_dir, quiet)
    return counts


def _study_report(study: Study, out_dir: Path, url: str, data_dir, quiet: bool) -> None:
    """The comparison report; a failure here is reported, never fatal: the runs and results.csv are safe."""
    from medbench.study.report import write_study_report

    try:
        paths = write_study_report(out_dir, study=study, db_url=url, data_dir=data_dir)
    except MedbenchError as e:
        print(f"medbench: study report not written: {e}", file=sys.stderr)
        return
    if not quiet:
        print(f"study report: {paths['html']} (tables also in {paths['markdown']})", flush=True)


def _cell(v: Any) -> Any:
    return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True)


def result_rows(study: Study, store: Store) -> list[dict[str, Any]]:
    """One row per run, in the study's order: id, status, axes, test/val/train metrics, seconds, run_dir."""
    rows = {r["id"]: r for r in store.rows(study.ids)}
    out = []
    for run in study.runs:
        row = rows.get(run.id, {})
        metrics = json.loads(row["metrics"]) if row.get("status") == "done" and row.get("metrics") else {}
        rec: dict[str, Any] = {"id": run.id, "status": row.get("status", "missing")}
        rec.update({k: _cell(run.axes[k]) for k in study.axes})
        for name, split, key in RESULT_METRICS:
            rec[name] = (metrics.get(split) or {}).get(key)
        rec["gap_auc"] = (metrics.get("gap") or {}).get("auc")
        rec["seconds"] = None if row.get("seconds") is None else round(row["seconds"], 3)
        rec["run_dir"] = row.get("run_dir")
        rec["error"] = row.get("error") if row.get("status") == "failed" else None
        out.append(rec)
    return out


def write_results(study: Study, out_dir: str | os.PathLike, store: Store) -> Path:
    from medbench.fileio import write_csv

    path = Path(out_dir) / RESULTS
    write_csv(path, result_rows(study, store))
    return path


def study_status(where: str | os.PathLike) -> dict[str, int]:
    """Counts of a study directory (its study.db) or of a database URL."""
    where = str(where)
    if "://" in where:
        url = where
    else:
        if not (Path(where) / DB_NAME).is_file():
            raise MedbenchError(f"{where} holds no study ({DB_NAME} missing)")
        url = default_url(where)
    with Store(url, create=False) as store:
        return store.counts()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medbench.study.runner",
                                description="Train every run of a study file that is not done yet.")
    p.add_argument("study", type=Path, help="study YAML (name, grid, fixed)")
    p.add_argument("--out", required=True, type=Path, help="study directory (runs/, study.db, results.csv)")
    p.add_argument("--workers", type=int, default=1, help="parallel training processes (default 1)")
    p.add_argument("--executor", default="local", help="local (default) or ray")
    p.add_argument("--address", help="ray: an existing cluster's address (default: start a local instance)")
    p.add_argument("--cpus-per-run", type=float, help="ray: CPUs per run (default: cluster CPUs / --workers)")
    p.add_argument("--gpus-per-run", type=float, help="ray: GPUs per run (default 1 if the cluster has GPUs)")
    p.add_argument("--db", help="results database URL (default sqlite:///OUT/study.db)")
    p.add_argument("--data-dir", help="data root (default: $MEDBENCH_DATA, else ~/.medmnist)")
    p.add_argument("--report", action="store_const", const=True, default=None,
                   help="write each run's report.html (default: the study file's 'report', else no)")
    p.add_argument("--track", metavar="mlflow[:URI]",
                   help="log every run to MLflow, in an experiment named after the study (docs/tracking.md)")
    p.add_argument("--quiet", action="store_true", help="no per-run lines")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        counts = run_study(args.study, args.out, workers=args.workers, db_url=args.db, executor=args.executor,
                           quiet=args.quiet, report=args.report, data_dir=args.data_dir, address=args.address,
                           cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run, track=args.track)
    except MedbenchError as e:
        if args.debug:
            raise
        print(f"medbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medbench: interrupted", file=sys.stderr)
        return 130
    print(f"{counts['done']}/{counts['total']} done, {counts['failed']} failed, {counts['running']} running, "
          f"{counts['pending']} pending; results: {args.out / RESULTS}")
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
