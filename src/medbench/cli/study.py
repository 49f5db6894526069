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
    p.add_argument("--dry-run", action="store_true", help="validate the file and list its runs; train nothing")
    p.add_argument("--report", action="store_true", default=None, help="write each run's report.html")
    p.add_argument("--json", action="store_true", help="status / dry run: print JSON")


def _status(args) -> int:
    from medbench.study import study_status

    if len(args.target) != 2:
        raise MedbenchError("usage: medbench study status DIR")
    counts = study_status(args.db or args.target[1])
    print(json.dumps(counts) if args.json else "  ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _dry_run(args, study) -> int:
    rows = [{"id": r.id, **r.axes} for r in study.runs]
    if args.json:
        print(json.dumps({"name": study.name, "runs": rows}, indent=2))
    else:
        print(f"{study.name}: {len(rows)} runs")
        for r in rows:
            print("  " + "  ".join(f"{k}={v}" for k, v in r.items()))
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
                       cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run)
    print(f"{counts['done']}/{counts['total']} done, {counts['failed']} failed, {counts['running']} running, "
          f"{counts['pending']} pending; results: {args.out / 'results.csv'}")
    return 0 if counts["failed"] == 0 else 1
