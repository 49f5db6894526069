"""`medbench tune`: hyper-parameter search with Optuna over a search-space file (or its dry run)."""
from __future__ import annotations

import json
from pathlib import Path

from medbench.cli.types import float_in, int_in
from medbench.errors import MedbenchError


def add_tune(sub, common) -> None:
    p = sub.add_parser("tune", parents=[common], help="hyper-parameter search with Optuna (resumable, parallel)",
                       description="medbench tune SPACE.yaml --out DIR [--trials N] [--workers N]: TPE sampling, "
                                   "pruning on the per-epoch validation metric, the study in DIR/study.db (or "
                                   "--db); writes DIR/trials.csv, DIR/best.yaml and DIR/report.html. Rerun to "
                                   "continue it.")
    p.add_argument("space", type=Path, metavar="SPACE.yaml", help="search space: name, fixed, space, metric, pruner")
    p.add_argument("--out", type=Path, help="tune folder (runs/, study.db, trials.csv, best.yaml, report.html)")
    p.add_argument("--trials", type=int_in(1, 100_000), help="trials in all, counting earlier ones (default: the "
                                                              "file's 'trials', else 20)")
    p.add_argument("--workers", type=int_in(1, 256), default=1,
                   help="parallel workers sharing the study (threads divided among them)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local processes, or one Ray task per worker (pip install 'medbench[ray]')")
    p.add_argument("--address", help="ray: an existing cluster's address (default: start a local instance)")
    p.add_argument("--cpus-per-run", type=float_in(0, 4096, lo_open=True),
                   help="ray: CPUs per worker (default: cluster CPUs / --workers)")
    p.add_argument("--gpus-per-run", type=float_in(0, 64), help="ray: GPUs per worker (default 1 if the cluster has "
                                                                 "GPUs)")
    p.add_argument("--db", help="study database URL (default sqlite:///OUT/study.db; postgresql+psycopg://...)")
    p.add_argument("--track", metavar="mlflow[:URI]", help="send every trial to MLflow, in the experiment named "
                                                           "after the tune")
    p.add_argument("--dry-run", action="store_true", help="check the space, print it and an estimated duration")
    p.add_argument("--json", action="store_true", help="print the summary (or the dry run) as JSON")


def _print_plan(info: dict) -> None:
    print(f"{info['name']}: {info['trials']} trials, {info['workers']} worker(s); maximise" if info["direction"] ==
          "maximize" else f"{info['name']}: {info['trials']} trials, {info['workers']} worker(s); minimise", end="")
    print(f" val {info['metric']}; pruner {info['pruner']}")
    print("  fixed: " + (", ".join(f"{k}={v}" for k, v in info["fixed"].items()) or "(none)"))
    for name, desc in info["space"].items():
        print(f"  {name}: {desc}")
    est = info.get("estimate")
    if est:
        print(f"  one trial (every range at its high end): {est['trial']}; {info['trials']} trials: about "
              f"{est['total_seconds'] / 60:.0f} min without pruning (workers share the cores)")
    else:
        print(f"  {info.get('estimate_note', 'no duration estimate')}")


def cmd_tune(args) -> int:
    from medbench.study.tune import plan, run_tune
    from medbench.study.tune_space import load_space

    space = load_space(args.space)
    if args.dry_run:
        info = plan(space, trials=args.trials, workers=args.workers, data_dir=args.data_dir)
        print(json.dumps(info, indent=2, default=str)) if args.json else _print_plan(info)
        return 0
    if args.out is None:
        raise MedbenchError("medbench tune needs --out DIR")
    if args.track is not None and args.track.split(":", 1)[0] != "mlflow":
        raise MedbenchError(f"--track {args.track}: only mlflow or mlflow:URI is supported")
    summary = run_tune(space, args.out, trials=args.trials, workers=args.workers, db_url=args.db,
                       executor=args.executor, data_dir=args.data_dir, track=args.track, quiet=args.quiet,
                       address=args.address, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        best = summary["best"]
        line = (f"{summary['ended']} trials ended: {summary['complete']} complete, {summary['pruned']} pruned, "
                f"{summary['failed']} failed")
        if best:
            shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
            line += f"; best: trial {best['number']}, val {space.metric} {best['value']:.4f} ({shown})"
        print(line + f"; {args.out / 'best.yaml'}, {args.out / 'trials.csv'}, {args.out / 'report.html'}")
    return 0 if summary["best"] is not None else 1
