"""`medbench study`: a grid of runs, run resumably (or its status)."""
from __future__ import annotations

import json
from pathlib import Path

from medbench.cli.types import float_in, int_in
from medbench.errors import MedbenchError


def add_study(sub, common) -> None:
    p = sub.add_parser("study", parents=[common], help="run a grid of runs resumably (or: study status DIR)",
                       description="medbench study STUDY.yaml --out DIR [--workers N] | medbench study status DIR")
    p.add_argument("target", nargs="+", metavar="STUDY.yaml | status DIR")
    p.add_argument("--out", type=Path, help="study folder (runs/, study.db, results.csv)")
    p.add_argument("--workers", type=int_in(1, 256), default=1,
                   help="local worker processes (threads divided among them)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local processes, or one Ray task per run (pip install 'medbench[ray]')")
    p.add_argument("--address", help="ray: an existing cluster's address (default: start a local instance)")
    p.add_argument("--cpus-per-run", type=float_in(0, 4096, lo_open=True),
                   help="ray: CPUs per run (default: cluster CPUs / --workers)")
    p.add_argument("--gpus-per-run", type=float_in(0, 64), help="ray: GPUs per run (default 1 if the cluster has GPUs)")
    p.add_argument("--db", help="results database URL (default sqlite:///OUT/study.db; postgresql+psycopg://...)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the file and list its runs with their estimated durations; train nothing")
    p.add_argument("--no-estimate", action="store_true",
                   help="dry run: list the runs without measuring their durations (no data, no warm-up)")
    p.add_argument("--report", action="store_true", default=None, help="write each run's report.html")
    p.add_argument("--json", action="store_true", help="status / dry run: print JSON")
    p.add_argument("--track", metavar="mlflow[:URI]",
                   help="log every run to MLflow, in an experiment named after the study (docs/tracking.md)")


def _status(args) -> int:
    from medbench.study import study_status

    if len(args.target) != 2:
        raise MedbenchError("usage: medbench study status DIR")
    counts = study_status(args.db or args.target[1])
    print(json.dumps(counts) if args.json else "  ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _estimates(args, study) -> tuple[list, int, list[str]]:
    """Each run's estimate (None where it could not be measured), the shapes measured, the failures."""
    from medbench.estimate import estimate_configs

    failures: list[str] = []
    ests, shapes = estimate_configs([r.config for r in study.runs], data_dir=args.data_dir,
                                    report=bool(args.report if args.report is not None else study.report),
                                    on_error=lambda cfg, e: failures.append(f"{cfg.dataset} {cfg.model}: {e}"))
    return ests, shapes, failures


def _dry_run(args, study) -> int:
    from medbench.estimate import duration, makespan  # torch: only when estimating

    rows = [{"id": r.id, **r.axes} for r in study.runs]
    ests, shapes, failures = ([None] * len(rows), 0, []) if args.no_estimate else _estimates(args, study)
    known = [e.seconds for e in ests if e is not None]
    total, wall = sum(known), makespan(known, args.workers)
    how = (f"each distinct shape (data, size, model, batch size, augmentation, precision, ...) measured once by a "
           f"few training steps and a validation pass ({shapes} measured), scaled by each run's epochs, members and "
           f"folds; measured under the machine's present load")
    if args.json:
        for r, e in zip(rows, ests):
            r["estimate"] = None if e is None else e.as_dict()
        out = {"name": study.name, "runs": rows}
        if not args.no_estimate:
            out["estimate"] = {"total_seconds": round(total, 1), "workers": args.workers,
                               "wall_seconds": round(wall, 1), "unestimated": len(rows) - len(known),
                               "shapes_measured": shapes, "how": how, "failures": failures}
        print(json.dumps(out, indent=2))
        return 0
    print(f"{study.name}: {len(rows)} runs")
    for r, e in zip(rows, ests):
        when = "" if args.no_estimate else ("  ~?" if e is None else f"  ~{duration(e.seconds)}")
        print("  " + "  ".join(f"{k}={v}" for k, v in r.items()) + when)
    if not args.no_estimate:
        for f in failures:
            print(f"  not estimated: {f}")
        print(f"estimated total ~{duration(total)} of runs"
              + (f" ({len(rows) - len(known)} not estimated)" if len(known) < len(rows) else "")
              + (f"; with {args.workers} workers ~{duration(wall)} wall if each has its own cores or GPU (longest "
                 f"first); on one CPU they share its threads, so between that and the total"
                 if args.workers > 1 else ""))
        print(f"  how: {how}")
    return 0


def cmd_study(args) -> int:
    from medbench.study import load_study, run_study  # the study machinery (and torch) when it runs

    if args.target[0] == "status":
        return _status(args)
    if len(args.target) != 1:
        raise MedbenchError("usage: medbench study STUDY.yaml --out DIR (or: medbench study status DIR)")
    study = load_study(args.target[0])
    if args.dry_run:
        return _dry_run(args, study)
    if args.out is None:
        raise MedbenchError("medbench study needs --out DIR")
    counts = run_study(study, args.out, workers=args.workers, db_url=args.db, executor=args.executor,
                       quiet=args.quiet, report=args.report, data_dir=args.data_dir, address=args.address,
                       cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run, track=args.track)
    print(f"{counts['done']}/{counts['total']} done, {counts['failed']} failed, {counts['running']} running, "
          f"{counts['pending']} pending; results: {args.out / 'results.csv'}")
    return 0 if counts["failed"] == 0 else 1
