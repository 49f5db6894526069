"""Paired comparison of two runs on the same split: their saved predictions, the same resamples for both."""
from __future__ import annotations

from pathlib import Path

from medbench.build import build_dataset, source_options
from medbench.config import load_config
from medbench.errors import MedbenchError
from medbench.metrics import compare_predictions
from medbench.rundir import CONFIG, PREDICTIONS, predictions_path, read_predictions, recorded_md5


def compare_runs(run_a: str | Path, run_b: str | Path, *, split: str = "test", replicates: int = 1000, seed: int = 0,
                 data_dir=None) -> dict:
    """AUC and ACC differences (A - B) with paired-bootstrap CIs and p-values, plus DeLong's test for binary
    tasks. Both runs must be on the same dataset, size and data file."""
    runs = [Path(run_a), Path(run_b)]
    for r in runs:
        if not (r / CONFIG).is_file():
            raise MedbenchError(f"{r} is not a run directory ({CONFIG} missing)")
    cfgs = [load_config(r / CONFIG) for r in runs]
    if (cfgs[0].dataset, cfgs[0].size) != (cfgs[1].dataset, cfgs[1].size):
        raise MedbenchError(f"{runs[0]} is on {cfgs[0].dataset} at {cfgs[0].size} px, {runs[1]} on {cfgs[1].dataset} "
                            f"at {cfgs[1].size} px: a paired comparison needs the same test images")
    if source_options(cfgs[0]) != source_options(cfgs[1]):
        raise MedbenchError(f"{runs[0]} and {runs[1]} split or decode {cfgs[0].dataset} differently "
                            f"({source_options(cfgs[0])} vs {source_options(cfgs[1])}): not the same test images")
    md5 = [recorded_md5(r) for r in runs]
    if md5[0] and md5[1] and md5[0] != md5[1]:
        raise MedbenchError(f"{runs[0]} and {runs[1]} were trained on different data files (md5 {md5[0]} vs {md5[1]})")
    ds = build_dataset(cfgs[0], data_dir)
    labels = ds[split].labels.numpy()
    scores = [read_predictions(predictions_path(r, split)) for r in runs]
    for r, s in zip(runs, scores):
        if len(s) != len(labels):
            raise MedbenchError(f"{r}/{PREDICTIONS}/{split}.csv has {len(s)} rows, the {split} split has {len(labels)}")
    res = compare_predictions(labels, scores[0], scores[1], ds.task, replicates=replicates, seed=seed)
    return {"run_a": str(runs[0]), "run_b": str(runs[1]), "dataset": ds.name, "split": split, "n": len(labels),
            "task": ds.task, "replicates": replicates, "seed": seed, **res}
