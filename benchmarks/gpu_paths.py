"""The CUDA paths on one GPU: AMP (bf16) vs fp32, channels_last on/off, torch.compile, the store path (batches
copied from pinned memory, --memory-budget 0) vs the split held whole on the GPU, evaluate run again, predict.

    MEDBENCH_DATA=DIR python benchmarks/gpu_paths.py [CASE ...]   # DIR holds pneumoniamnist.npz (28 px)

Real PneumoniaMNIST (28 px, 4,708 training images), ResNet-18, batch 128, 3 epochs. Writes
benchmarks/results/gpu-paths.json (or $OUT/gpu_check.json when OUT is set)."""
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from medbench.predict import Predictor
from medbench.run import evaluate, train
from medbench.rundir import predictions_path, read_metrics, read_predictions, read_provenance

DATA = os.environ.get("MEDBENCH_DATA", "/tmp/data")
RESULTS = Path(os.environ["OUT"]) / "gpu_check.json" if "OUT" in os.environ else \
    Path(__file__).parent / "results" / "gpu-paths.json"
BASE = dict(dataset="pneumoniamnist", size=28, model="resnet18", epochs=3, batch_size=128, seed=0, device="cuda",
            checkpoint_minutes=0)
CASES = {
    "bf16_memory": dict(precision="auto", deterministic=True),
    "bf16_store": dict(precision="auto", deterministic=True, memory_budget=0),
    "fp32_memory": dict(precision="fp32"),
    "bf16_nhwc_off": dict(precision="auto", channels_last=False),
    "bf16_compile": dict(precision="auto", compile=True),
}


def train_case(root: Path, name: str) -> dict:
    times = []
    t0 = time.perf_counter()
    run = train({**BASE, **CASES[name]}, root / name, quiet=True, data_dir=DATA, report=False,
                on_epoch=lambda row: times.append(row["seconds"]) and False)
    test = read_metrics(run)["test"]
    return {"wall_s": round(time.perf_counter() - t0, 1), "epoch_s": times, "test_auc": test["auc"],
            "test_acc": test["acc"], "precision": read_provenance(run)["precision"]}


def evaluate_again(run: Path) -> dict:
    """A second evaluation must reproduce the recorded probabilities bit for bit."""
    recorded = read_metrics(run)["test"]["auc"]
    before = read_predictions(predictions_path(run, "test"))
    result = evaluate(run, ["test"], quiet=True, data_dir=DATA)  # into evaluations/NAME: the record stays
    again = result["test"]["auc"]
    after = read_predictions(predictions_path(result.path, "test"))
    return {"same_auc": again == recorded, "auc_diff": again - recorded,
            "max_prob_diff": float(np.abs(after - before).max())}


def main(names: list[str]) -> dict:
    warnings.filterwarnings("ignore")
    root = Path(tempfile.mkdtemp(prefix="gpu-paths-"))
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for name in names:
        res[name] = train_case(root, name)
        print(name, res[name], flush=True)
    if {"bf16_memory", "bf16_store"} <= set(names):  # deterministic: the same batches from memory and the store
        res["memory_vs_store_same_test_auc"] = res["bf16_memory"]["test_auc"] == res["bf16_store"]["test_auc"]
    for name in ("bf16_memory", "fp32_memory"):
        if name in names:
            res[f"reevaluate_{name}"] = evaluate_again(root / name)
    if "bf16_memory" in names:
        predictor = Predictor(root / "bf16_memory", device="cuda", data_dir=DATA)
        images = torch.from_numpy(np.load(f"{DATA}/pneumoniamnist.npz")["test_images"][:, None]).contiguous()
        t0 = time.perf_counter()
        probs = predictor.probabilities(images)
        res["predict_img_per_s"] = round(len(images) / (time.perf_counter() - t0))
        recorded = read_predictions(predictions_path(root / "bf16_memory", "test"))
        res["predict_matches_eval"] = float(np.abs(probs - recorded).max())
    return res


if __name__ == "__main__":
    result = main(sys.argv[1:] or list(CASES))
    print(json.dumps(result, indent=1))
    RESULTS.write_text(json.dumps(result, indent=1))
