"""`medbench train` and `medbench evaluate`: one run, trained into a run directory, and its metrics recomputed
(into RUN_DIR/evaluations/NAME: the training record stays as training wrote it).

The training pipeline is imported when a command runs (it loads torch), not when the parser is built.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from medbench.cli.checks import check_run_dir
from medbench.cli.flags import add_train_flags, flag_settings, given_flags
from medbench.cli.types import SEED, int_in
from medbench.config import BOOTSTRAP_LIMIT, load_config, parse_overrides, read_config_file, resolve_config
from medbench.errors import MedbenchError
from medbench.rundir import CONFIG, METRICS, SHOWN_FILES, evaluation_dir

SPLITS = ("train", "val", "test")
TRAIN_HELP = ("Train one run into a run directory. Settings, later wins: the field defaults (shown below; = the "
              "'default' recipe) < --recipe < --config < these flags < --set.")


def add_train(sub, common) -> None:
    p = sub.add_parser("train", parents=[common], help="train one run into a run directory", description=TRAIN_HELP,
                       usage="%(prog)s (--dataset NAME | --config FILE) --out RUN_DIR [options]\n"
                             "       %(prog)s --resume RUN_DIR")
    g = p.add_argument_group("run directory and settings")
    g.add_argument("--out", type=Path, help="run directory to create")
    g.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue a killed run from its last complete epoch (its own config; no other settings)")
    g.add_argument("--config", type=Path, help="YAML run config (e.g. a run's config.yaml); flags override it")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field, e.g. --set milestones=[0.5,0.75] (repeatable)")
    g.add_argument("--dry-run", action="store_true",
                   help="check the settings and the data, print the estimated duration (a few measured training "
                        "steps) and the config; train nothing (no --out needed)")
    groups = add_train_flags(p)
    groups["output"].add_argument("--no-report", action="store_true",
                                  help="skip report.html (and the TensorBoard figures)")
    groups["output"].add_argument("--track", metavar="mlflow[:URI]",
                                  help="also log the run to MLflow: mlflow (MLflow's default store) or mlflow:URI "
                                       "(http://HOST:PORT, sqlite:///PATH.db); see docs/tracking.md")


def add_evaluate(sub, common) -> None:
    p = sub.add_parser("evaluate", parents=[common], help="recompute a run's metrics from its saved weights into "
                       "RUN_DIR/evaluations/NAME")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", action="append", choices=list(SPLITS), help="split(s) to evaluate (default: all)")
    p.add_argument("--bootstrap", type=int_in(0, BOOTSTRAP_LIMIT), nargs="?", const=1000, metavar="B",
                   help="95 %% percentile CIs of every metric from B resamples (default 1000 when given)")
    p.add_argument("--seed", type=SEED, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--ensemble", type=int_in(1, 1000), metavar="K", help="average the K best kept checkpoints")
    p.add_argument("--tta", action="store_true", default=None, help="average with horizontally flipped views")
    p.add_argument("--name", help="folder of this evaluation: RUN_DIR/evaluations/NAME (default: from the settings, "
                                   "e.g. plain, tta-bootstrap1000); an existing one is never overwritten")
    p.add_argument("--json", action="store_true", help="print the metrics of the evaluated split(s) as JSON")
    p.add_argument("--corruptions", nargs="?", const="auto", metavar="PRESET",
                   help="instead: score the test split under image corruptions (noise, blur, contrast, brightness, "
                        "JPEG, pixelation, and the modality's own: speckle, gamma, desaturation) at severities 1-5 "
                        "into evaluations/corruptions-PRESET/robustness.json; PRESET: auto (from the MedMNIST "
                        "dataset; own data: default), default, xray, ct, ultrasound, fundus, pathology, "
                        "dermatoscopy")


def train_settings(args) -> dict:
    """The run's settings: the --config file, then the flags given, then --set."""
    settings = read_config_file(args.config) if args.config else {}
    settings.update(flag_settings(args))
    settings.update(parse_overrides(args.overrides))
    if "dataset" not in settings:
        raise MedbenchError("no dataset given: use --dataset NAME (see `medbench datasets`) or --config FILE")
    return settings


def _resume(args):
    from medbench.run import train  # torch and the whole pipeline: imported when a run starts

    given = [f for f in ("out", "config", "overrides") if getattr(args, f, None)]
    flags = ["--" + g.replace("_", "-") for g in given] + [f.flag for f in given_flags(args)]
    if flags:
        raise MedbenchError(f"--resume continues the run with its own config.yaml; drop {', '.join(flags)}")
    if not (args.resume / CONFIG).is_file():
        raise MedbenchError(f"{args.resume} is not a run directory ({CONFIG} missing); nothing to resume")
    return train(load_config(args.resume / CONFIG), args.resume, data_dir=args.data_dir, quiet=args.quiet,
                 report=not args.no_report, resume=True, track=args.track)


def _dry_run(args) -> None:
    """Check the settings and the data; print the estimated duration (and a hint for a long CPU run)."""
    from medbench.build import build_dataset
    from medbench.estimate import estimate_config, long_run_hint

    cfg = resolve_config(train_settings(args), where="train")
    if args.track:  # a dry run checks the tracking store too
        from medbench.tracking import check_track

        check_track(args.track)
    ds = build_dataset(cfg, args.data_dir, quiet=args.quiet)
    est = estimate_config(cfg, dataset=ds, report=not args.no_report)
    print(f"estimated {est.text()}")
    hint = long_run_hint(cfg, est, dataset=ds)
    if hint:
        print(hint)
    print(f"dry run: settings and data checked, nothing trained"
          f"{'' if args.out is None else f' ({args.out} left as it is)'}")


def cmd_train(args) -> None:
    from medbench.distributed import is_main_process
    from medbench.run import train

    if args.resume is not None:
        if args.dry_run:
            raise MedbenchError("--dry-run checks a new run's settings; drop --resume (the estimate of a resumed "
                                "run's remaining epochs is printed when it resumes)")
        out = _resume(args)
    elif args.dry_run:
        _dry_run(args)
        return
    else:
        if args.out is None:
            raise MedbenchError("medbench train needs --out RUN_DIR (or --resume RUN_DIR)")
        cfg = resolve_config(train_settings(args), where="train")
        out = train(cfg, args.out, data_dir=args.data_dir, quiet=args.quiet, report=not args.no_report,
                    track=args.track)
    if not is_main_process():
        return  # one summary line per run, from rank 0
    test = json.loads((out / METRICS).read_text())["test"]
    auc = "n/a" if test["auc"] is None else f"{test['auc']:.4f}"
    files = ", ".join(f for f in SHOWN_FILES if (out / f).exists())
    acc = "n/a" if test["acc"] is None else f"{test['acc']:.4f}"
    print(f"results in {out}: test auc {auc}, acc {acc} ({files})")


def _with_ci(rec: dict, key: str) -> str:
    v, ci = rec.get(key), rec.get(f"{key}_ci")
    text = "n/a" if v is None else f"{v:.4f}"
    return text + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def _print_metrics(args, metrics: dict) -> None:
    for split in SPLITS:
        rec = metrics.get(split)
        if rec is None or (args.split and split not in args.split):
            continue
        line = f"{split:<6} acc {_with_ci(rec, 'acc')}  auc {_with_ci(rec, 'auc')}  f1 {_with_ci(rec, 'f1_macro')}"
        if "at_youden" in rec:
            line += f"  (acc {rec['at_youden']['acc']:.4f} at threshold {rec['at_youden']['threshold']:.3f})"
        print(line + f"  n {rec['n']}")
    if metrics.get("gap"):
        gap = metrics["gap"]
        print("gap    train - test: acc " + ("n/a" if gap["acc"] is None else f"{gap['acc']:+.4f}")
              + "  auc " + ("n/a" if gap["auc"] is None else f"{gap['auc']:+.4f}"))
    ev = metrics["evaluation"]
    print(f"wrote {metrics.path} (ensemble {ev['ensemble']}, tta {'on' if ev['tta'] else 'off'}, "
          f"bootstrap {ev['bootstrap'] or 'off'}); the training record {args.run_dir / METRICS} is unchanged")


def _evaluate_corruptions(args) -> None:
    from medbench.robustness import format_table, score_corruptions

    other = [f for f, v in (("--split", args.split), ("--tta", args.tta), ("--ensemble", args.ensemble),
                            ("--bootstrap", args.bootstrap)) if v]
    if other:
        raise MedbenchError(f"--corruptions scores the test split of the run as trained; {', '.join(other)} "
                            f"do(es) not apply to it: drop it, or evaluate those settings separately")
    rec = score_corruptions(args.run_dir, args.corruptions, data_dir=args.data_dir, name=args.name, seed=args.seed,
                            quiet=args.quiet)
    where = evaluation_dir(args.run_dir, rec["evaluation"])
    if args.json:
        print(json.dumps(rec, indent=2))
        print(f"wrote {where}", file=sys.stderr)
        return
    print(format_table(rec))
    print(format_table(rec, "acc"))
    print(f"wrote {where} ({rec['seconds']:.0f} s); `medbench report {args.run_dir}` shows it")


def cmd_evaluate(args) -> None:
    from medbench.distributed import is_main_process
    from medbench.run import evaluate

    check_run_dir(args.run_dir)
    if args.corruptions is not None:
        _evaluate_corruptions(args)
        return
    metrics = evaluate(args.run_dir, args.split, data_dir=args.data_dir, quiet=args.quiet, ensemble=args.ensemble,
                       tta=args.tta, bootstrap=args.bootstrap, seed=args.seed, name=args.name)
    if not is_main_process():
        return
    if args.json:  # stdout holds the JSON alone; where it went goes to stderr
        print(json.dumps(metrics, indent=2))
        print(f"wrote {metrics.path}", file=sys.stderr)
    else:
        _print_metrics(args, metrics)
