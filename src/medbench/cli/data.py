"""What there is to train on and with: `datasets`, `models`, `cache`, `augment-preview`.

Data, models and rich tables are imported when a command runs (torch), not when the parser is built.
"""
from __future__ import annotations

import json
from pathlib import Path

from medbench.cli.types import SEED, int_in, nonempty
from medbench.config import MAX_SIZE


def add_datasets(sub, common) -> None:
    p = sub.add_parser("datasets", parents=[common], help="list datasets, tasks, classes, sizes, cached or not")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_models(sub, common) -> None:
    p = sub.add_parser("models", parents=[common], help="list models, or --info NAME for one model's size")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--info", metavar="NAME", type=nonempty,
                   help="parameters and FLOPs of one model for the given input")
    p.add_argument("--size", type=int_in(1, MAX_SIZE),
                   help="--info: input size (default: the model's default size)")
    p.add_argument("--in-chans", type=int_in(1, 64), default=3, help="--info: input channels (default 3)")
    p.add_argument("--num-classes", type=int_in(1, 100_000), default=2, help="--info: outputs (default 2)")
    p.add_argument("--truncate", type=int_in(0, 100), default=0, metavar="K",
                   help="--info: also count with K stages dropped")


def add_cache(sub, common) -> None:
    p = sub.add_parser("cache", parents=[common], help="the decoded own-data cache: info or clear")
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("--json", action="store_true")


def add_augment_preview(sub, common) -> None:
    p = sub.add_parser("augment-preview", parents=[common], help="a picture of original vs augmented samples")
    p.add_argument("--dataset", required=True)
    p.add_argument("--augment", required=True, metavar="PRESET[,PRESET]")
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    p.add_argument("--n", type=int_in(1, 1024), default=32, help="images to show (default 32)")
    p.add_argument("--size", type=int_in(1, MAX_SIZE), default=28)
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--seed", type=SEED, default=0)


def print_table(table, width: int) -> None:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=width)  # piped output: rich would otherwise cut names at 80 columns
    console.print(table)


def cmd_datasets(args) -> None:
    from rich.table import Table

    from medbench.data import data_root, list_datasets

    rows = list_datasets(args.data_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title=f"MedMNIST 2D datasets (data root: {data_root(args.data_dir)})")
    for col in ("name", "task", "channels", "classes", "train / val / test", "sizes on disk"):
        t.add_column(col, no_wrap=True)
    for r in rows:
        n = r["n_samples"]
        t.add_row(r["name"], r["task"], str(r["n_channels"]), str(len(r["classes"])),
                  f"{n['train']} / {n['val']} / {n['test']}", ", ".join(map(str, r["cached_sizes"])) or "-")
    print_table(t, width=120)


def _model_info(args) -> None:
    from medbench.models import model_info

    info = model_info(args.info, num_classes=args.num_classes, in_chans=args.in_chans, img_size=args.size,
                      truncate=args.truncate)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"{info['name']} ({info['family']}): {info['description']}")
    print(f"input {info['in_chans']} x {info['img_size']} px (default {info['default_size']}, minimum "
          f"{info['min_size']}), {info['num_classes']} outputs")
    print(f"parameters {info['params']:,} ({info['params'] / 1e6:.2f} M), forward FLOPs per image "
          f"{info['flops'] / 1e9:.3f} G")
    if args.truncate:
        print(f"truncated by {args.truncate}: parameters {info['params_truncated']:,} "
              f"({info['params_truncated'] / 1e6:.2f} M), FLOPs {info['flops_truncated'] / 1e9:.3f} G")
    print(f"ImageNet weights: {'yes' if info['pretrained_available'] else 'no'}; truncation: "
          f"{'yes' if info['truncatable'] else 'no'}")


def cmd_models(args) -> None:
    from rich.table import Table

    from medbench.models import catalogue

    if args.info:
        _model_info(args)
        return
    rows = catalogue()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    t = Table("name", "family", "params (M)", "ImageNet", "truncate", "sizes (px)", "description",
              title="params at the default size, 3 channels, 1000 classes")
    for r in rows:
        t.add_row(r["name"], r["family"], f"{r['params'] / 1e6:.1f}", "yes" if r["pretrained_available"] else "-",
                  "yes" if r["truncatable"] else "-", f"{r['min_size']}+ ({r['default_size']})", r["description"])
    print_table(t, width=160)


def cmd_cache(args) -> None:
    from medbench.data.cache import cache_clear, cache_info, default_cache_dir

    if args.action == "clear":
        print(f"removed {cache_clear()} entry(ies) from {default_cache_dir()}")
        return
    rows = cache_info()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{len(rows)} cached dataset(s) in {default_cache_dir()}")
    for r in rows:
        print("  " + "  ".join(f"{k} {v}" for k, v in r.items() if not isinstance(v, (list, dict))))


def cmd_augment_preview(args) -> None:
    from medbench.augment import preview
    from medbench.data import load_dataset

    ds = load_dataset(args.dataset, args.size, data_dir=args.data_dir, progress=not args.quiet)
    info = preview(ds, args.augment, args.out, n=args.n, seed=args.seed, no_flip=args.no_flip)
    print(f"wrote {info['path']}: {info['n']} {ds.name} training images, originals above their "
          f"'{args.augment}' versions")
