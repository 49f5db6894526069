"""What a finished run gives: `compare`, `report`, `card`, `predict`, `export`.

Each command checks the run directory first (one line naming a damaged file) and imports its module when it runs.
"""
from __future__ import annotations

import json
from pathlib import Path

from medbench.cli.checks import check_run_dir
from medbench.cli.types import SEED, device, float_in, int_in
from medbench.config import BOOTSTRAP_LIMIT
from medbench.errors import MedbenchError
from medbench.rundir import CARD_JSON, CARD_MD


def add_compare(sub, common) -> None:
    p = sub.add_parser("compare", parents=[common],
                       help="paired comparison of two runs on the same test set (bootstrap CI, p-value, DeLong)")
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--bootstrap", type=int_in(1, BOOTSTRAP_LIMIT), default=1000, metavar="B",
                   help="paired resamples (default 1000)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")


def add_report(sub, common) -> None:
    p = sub.add_parser("report", parents=[common], help="(re)write RUN_DIR/report.html, or a study's report",
                       description="medbench report RUN_DIR [--evaluation NAME] | medbench report STUDY_DIR "
                                   "[--db URL]")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR|STUDY_DIR")
    p.add_argument("--db", help="study: results database URL (default sqlite:///STUDY_DIR/study.db)")
    p.add_argument("--bootstrap", type=int_in(0, BOOTSTRAP_LIMIT), default=1000, metavar="B",
                   help="study: resamples for CIs (default 1000)")
    p.add_argument("--evaluation", metavar="NAME", help="run: show RUN_DIR/evaluations/NAME (a later `medbench "
                                                        "evaluate`) instead of the training record; written to "
                                                        "RUN_DIR/evaluations/NAME/report.html")


def add_predict(sub, common) -> None:
    p = sub.add_parser("predict", parents=[common], help="predict new images with a trained run -> CSV",
                       description="medbench predict RUN_DIR INPUTS... --out preds.csv [--cam DIR] [--tta]")
    p.add_argument("run_dir", type=Path)
    p.add_argument("inputs", nargs="+", help="image files (PNG/JPEG/DICOM/...), npz files, folders or globs")
    p.add_argument("--out", required=True, type=Path, help="CSV to write: path, one column per class, label")
    p.add_argument("--cam", type=Path, metavar="DIR", help="also write Grad-CAM overlays (PNG) into DIR")
    p.add_argument("--tta", action="store_true", help="average with horizontally flipped views")
    p.add_argument("--threshold", type=float_in(0, 1), help="binary: P(positive) threshold (default: the run's Youden "
                                                   "threshold chosen on val, else 0.5)")
    p.add_argument("--skip-bad", action="store_true", help="unreadable files get an error cell instead of stopping")
    p.add_argument("--device", type=device, default="cpu")


def add_export(sub, common) -> None:
    p = sub.add_parser("export", parents=[common], help="RUN_DIR/model.onnx (dynamic batch) or model.ts")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", type=Path, help="file to write (default RUN_DIR/model.onnx or model.ts)")


def add_card(sub, common) -> None:
    p = sub.add_parser("card", parents=[common], help="(re)write RUN_DIR/MODEL_CARD.md and model_card.json")
    p.add_argument("run_dir", type=Path)


def _print_comparison(res: dict) -> None:
    print(f"{res['run_a']} vs {res['run_b']} on {res['dataset']} {res['split']} (n {res['n']}, "
          f"{res['replicates']} paired resamples)")
    for key in ("auc", "acc"):
        r = res[key]
        if r["diff"] is None:
            print(f"{key}: undefined")
            continue
        p = f"< {1 / res['replicates']:.2g}" if r["p_value"] == 0 else f"{r['p_value']:.4g}"  # none crossed 0
        print(f"{key}  A {r['value_a']:.4f}  B {r['value_b']:.4f}  A - B {r['diff']:+.4f} "
              f"[{r['diff_ci'][0]:+.4f}, {r['diff_ci'][1]:+.4f}]  p {p}")
    if res.get("delong"):
        d = res["delong"]
        z = "n/a (zero variance)" if d["z"] is None else f"{d['z']:.3f}"
        print(f"DeLong: AUC difference {d['diff']:+.4f}, z {z}, p {d['p_value']:.4g}")


def cmd_compare(args) -> None:
    from medbench.compare import compare_runs, subgroup_lines

    check_run_dir(args.run_a)
    check_run_dir(args.run_b)
    res = compare_runs(args.run_a, args.run_b, split=args.split, replicates=args.bootstrap, seed=args.seed,
                       data_dir=args.data_dir)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        _print_comparison(res)
        for line in subgroup_lines(res.get("subgroups") or {}):  # both runs recorded subgroup metrics
            print(line)


def cmd_report(args) -> None:
    from medbench.study.store import DB_NAME

    if args.db or (args.run_dir / DB_NAME).is_file():
        from medbench.study import write_study_report

        if args.evaluation:
            raise MedbenchError(f"--evaluation is for a run directory; {args.run_dir} is a study")
        paths = write_study_report(args.run_dir, db_url=args.db, data_dir=args.data_dir, replicates=args.bootstrap)
        print(f"wrote {paths['html']}, {paths['markdown']} and {paths['summary']}")
        return
    from medbench.report import write_run_report

    check_run_dir(args.run_dir)
    path = write_run_report(args.run_dir, data_dir=args.data_dir, quiet=True, evaluation=args.evaluation)
    shown = f"evaluation {args.evaluation}" if args.evaluation else "the training record"
    print(f"wrote {path} (showing {shown})")


def cmd_predict(args) -> None:
    from medbench.predict import predict_files

    check_run_dir(args.run_dir)
    info = predict_files(args.run_dir, args.inputs, args.out, cam_dir=args.cam, tta=args.tta,
                         threshold=args.threshold, skip_bad=args.skip_bad, device=args.device)
    extra = f", {info['skipped']} unreadable (error column)" if info["skipped"] else ""
    cams = f"; Grad-CAM overlays in {info['cam_dir']}" if info["cam_dir"] else ""
    print(f"wrote {info['out']}: {info['images']} images{extra}{cams}")


def cmd_export(args) -> None:
    from medbench.export import export_run

    check_run_dir(args.run_dir)
    path = export_run(args.run_dir, args.format, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): uint8 images [N, C, S, S] -> probabilities [N, K]")


def cmd_card(args) -> None:
    from medbench.card import write_model_card

    check_run_dir(args.run_dir)
    write_model_card(args.run_dir, data_dir=args.data_dir)
    print(f"wrote {args.run_dir / CARD_MD} and {CARD_JSON}")
