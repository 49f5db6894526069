"""One run, one answer: how far apart are the probabilities of one bf16-trained run along each inference path?

    MEDBENCH_DATA=../shared/data/medmnist python benchmarks/precision_agreement.py \\
        [--folder ../shared/data/chest_xray_subset]

Trains a small cnn5 in bf16 autocast on the chest X-ray folder (forced: on a CPU without native bf16 it is
emulated), then compares on its test split: the recorded predictions, a re-evaluation, the Predictor (what
predict and serve run), the ONNX graph (onnxruntime), and, for reference, the same weights run under bf16
autocast (what evaluation did before inference was fixed to fp32). Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from medbench.build import build_dataset as dataset_for
from medbench.config import load_config
from medbench.engine import describe_machine
from medbench.export import export_run
from medbench.predict import Predictor
from medbench.run import evaluate, train
from medbench.rundir import read_predictions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default=str(Path(__file__).resolve().parents[2] / "shared/data/chest_xray_subset"))
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = train({"dataset": f"folder:{args.folder}", "model": "cnn5", "epochs": args.epochs,
                     "precision": "bf16", "seed": 0}, Path(tmp) / "run", quiet=True, report=False)
        recorded = read_predictions(run / "predictions" / "test.csv")
        again = read_predictions(evaluate(run, ["test"], quiet=True).path / "predictions" / "test.csv")
        images = dataset_for(load_config(run / "config.yaml"))["test"].images
        predictor = Predictor(run)
        paths = {"re-evaluation": again, "predict / serve (Predictor)": predictor.probabilities(images)}
        try:
            import onnxruntime as ort

            session = ort.InferenceSession(str(export_run(run, "onnx")), providers=["CPUExecutionProvider"])
            paths["ONNX (onnxruntime)"] = session.run(["probabilities"], {"image": images.numpy()})[0]
        except ImportError:
            print("onnxruntime not installed: pip install 'medbench[export]' for the ONNX row")
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            paths["bf16 autocast inference (before)"] = predictor.probabilities(images)
        rows = {name: float(np.abs(p - recorded).max()) for name, p in paths.items()}
        threshold = json.loads((run / "metrics.json").read_text())["threshold"]["headline"]
        flips = int(((paths["bf16 autocast inference (before)"][:, -1] > threshold)
                     != (recorded[:, -1] > threshold)).sum())
    print(f"{describe_machine()}; {len(recorded)} test images; max |delta p| against the recorded predictions")
    for name, v in rows.items():
        print(f"  {name:36s} {v:.2e}")
    print(f"  labels flipped at the threshold by bf16 inference: {flips}")
    print(json.dumps({"machine": describe_machine(), "n": len(recorded), "max_abs_diff": rows,
                      "bf16_label_flips": flips}))


if __name__ == "__main__":
    main()
