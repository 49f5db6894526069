"""How good a generator is: a judge classifier trained on the real images assigns generated ones to classes; each
class's share is held against the bar `train --synthetic` applies (:func:`medbench.gan.synthetic.quality_bar`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medbench.build import build_preprocess, build_task, load_run_model
from medbench.config import resolve_config
from medbench.data import ImageDataset
from medbench.data.store import on_disk
from medbench.engine import predict_logits, resolve_device
from medbench.fileio import write_json
from medbench.gan.generator import GENERATOR, QUALITY, file_sha256, generate, load_generator
from medbench.gan.synthetic import MARGIN, quality_bar
from medbench.progress import console
from medbench.run import train
from medbench.rundir import CONFIG


def quality(generator_dir: str | Path, ds: ImageDataset, *, epochs: int = 10, per_class: int = 200, seed: int = 0,
            data_dir=None, quiet: bool = False) -> dict:
    """Train a judge (the ``fast`` recipe's cnn5, on the real training split, chosen on validation) into
    ``generator_dir/judge`` and report, per class, the share of generated images it assigns to the intended
    class beside its recall on the real test images (the ceiling that share can be read against), and whether
    every class reaches the bar ``train --synthetic`` requires (:func:`~medbench.gan.synthetic.quality_bar`:
    chance 1/K + 0.1). Records the sha256 of the weights judged, so a retrained generator cannot borrow it."""
    generator_dir = Path(generator_dir)
    judge_dir = generator_dir / "judge"
    cfg = resolve_config({"dataset": ds.name, "size": ds.size, "recipe": "fast", "epochs": epochs, "seed": seed,
                          "device": "cpu" if not torch.cuda.is_available() else "auto"})
    if not (judge_dir / CONFIG).exists():
        train(cfg, judge_dir, dataset=ds, quiet=True, data_dir=data_dir, report=False)
    g, info = load_generator(generator_dir)
    dev = resolve_device(cfg.device)
    task = build_task(cfg, ds)
    judge = load_run_model(judge_dir, cfg, ds, task, dev)
    prep = build_preprocess(cfg, ds)
    k = ds.num_classes
    wanted = torch.arange(k).repeat_interleave(per_class)
    fake = generate(g.to(dev), wanted, seed=seed + 1)

    def predicted(images):
        images = images if on_disk(images) else images.to(dev)  # predict_logits copies disk batches to dev
        split = type(ds["test"])(images, torch.zeros(len(images), 1, dtype=torch.long))
        return torch.as_tensor(task.decide(task.scores(predict_logits(judge, split, prep, 256)))).flatten()

    fake_pred = predicted(fake)
    test_pred = predicted(ds["test"].images)
    test_y = ds["test"].labels[:, 0]
    per = {}
    for c, name in enumerate(ds.class_names):
        real_c = test_y == c
        per[name] = {"generated_as_intended": round(float((fake_pred[wanted == c] == c).float().mean()), 4),
                     "real_test_recall": round(float((test_pred[real_c] == c).float().mean()), 4)
                     if real_c.any() else None}
    bar = quality_bar(k)
    for v in per.values():
        v["passes"] = v["generated_as_intended"] >= bar
    summary = {"judge": {"run": str(judge_dir), "model": cfg.model, "epochs": epochs,
                         "test_acc": round(float((test_pred == test_y).float().mean()), 4)},
               "generator_sha256": file_sha256(generator_dir / GENERATOR),
               "bar": {"value": round(bar, 4), "rule": f"chance 1/{k} + {MARGIN}, for every class",
                       "passed": all(v["passes"] for v in per.values())},
               "per_class_samples": per_class,
               "generated_as_intended_mean": round(float(np.mean([v["generated_as_intended"] for v in per.values()])),
                                                   4),
               "per_class": per}
    write_json(generator_dir / QUALITY, summary)
    if not quiet:
        console.print(f"quality: share of {per_class} generated images per class that the judge ({cfg.model}, "
                      f"test acc {summary['judge']['test_acc']:.3f}) assigns to the intended class")
        for name, v in per.items():
            recall = "n/a" if v["real_test_recall"] is None else f"{v['real_test_recall']:.3f}"
            console.print(f"  {name[:40]:<40} generated {v['generated_as_intended']:.3f}   real test recall {recall}"
                          f"{'' if v['passes'] else f'   below the bar {bar:.3f}'}")
        if not summary["bar"]["passed"]:
            console.print(f"below the quality bar ({bar:.3f} = chance 1/{k} + {MARGIN}): `train --synthetic` refuses "
                          "this generator unless --synthetic-force; train it longer")
    return summary
