"""`medbench gan train` and `medbench gan sample`: a class-conditional generator and its images."""
from __future__ import annotations

from pathlib import Path

from medbench.cli.parser import Parser
from medbench.cli.types import SEED, device, float_in, int_in
from medbench.config import MAX_SIZE


def add_gan(sub, common) -> None:
    p = sub.add_parser("gan", help="class-conditional DCGAN: train a generator, sample images")
    gsub = p.add_subparsers(dest="gan_command", required=True, parser_class=Parser)
    g = gsub.add_parser("train", parents=[common], help="train a generator on a dataset's training split")
    g.add_argument("--dataset", required=True)
    g.add_argument("--out", required=True, type=Path, help="folder for the generator, losses, sample grids")
    g.add_argument("--size", type=int_in(1, MAX_SIZE), default=28, help="28, 64 (also 32, 56, 112, 128, 224)")
    g.add_argument("--epochs", type=int_in(1, 100_000), default=50)
    g.add_argument("--batch-size", type=int_in(2, 65_536), default=64)
    g.add_argument("--lr", type=float_in(0, 10, lo_open=True), default=2e-4)
    g.add_argument("--checkpoints", type=int_in(0, 1000), default=5,
                   help="evenly spaced saves with a sample grid (default 5)")
    g.add_argument("--judge-epochs", type=int_in(0, 100_000), default=10,
                   help="epochs of the real-data classifier behind the quality check (0: skip it; train "
                        "--synthetic then needs --synthetic-force)")
    g.add_argument("--seed", type=SEED, default=0)
    g.add_argument("--device", type=device, default="auto")
    g = gsub.add_parser("sample", parents=[common], help="write generated images and labels to an npz")
    g.add_argument("generator", type=Path, help="a `gan train` folder or its generator.safetensors")
    g.add_argument("--per-class", type=int_in(1, 10_000), required=True)
    g.add_argument("--out", required=True, type=Path, help=".npz to write (train_images, train_labels)")
    g.add_argument("--seed", type=SEED, default=0)


def cmd_gan(args) -> None:
    from medbench.gan import sample_to_npz, train_gan  # torch, when the command runs

    if args.gan_command == "sample":
        info = sample_to_npz(args.generator, args.per_class, args.out, seed=args.seed)
        print(f"wrote {info['path']}: {info['n']} images ({args.per_class} per class: {', '.join(info['classes'])}), "
              f"{info['channels']} x {info['size']} px, keys train_images / train_labels"
              + ("" if info.get("quality") else "; no quality.json for this generator: train --synthetic will need "
                 "--synthetic-force"))
        return
    res = train_gan(args.dataset, args.out, size=args.size, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, seed=args.seed, device=args.device, checkpoints=args.checkpoints,
                    judge_epochs=args.judge_epochs, data_dir=args.data_dir, quiet=args.quiet)
    q = res["quality"]
    tail = "" if q is None else (f"; generated images classified as intended: {q['generated_as_intended_mean']:.3f} "
                                 f"(judge test acc {q['judge']['test_acc']:.3f}, quality.json)"
                                 + ("" if q["bar"]["passed"] else f"; BELOW the quality bar {q['bar']['value']:.3f}: "
                                    f"train --synthetic refuses it unless --synthetic-force"))
    print(f"generator in {res['generator']} after {res['epochs']} epochs ({res['seconds']:.0f} s); samples/, "
          f"losses.csv{tail}")
