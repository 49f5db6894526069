"""bf16 autocast trains as well as fp32: same validation AUC within seed noise on real data."""
import json

import numpy as np
import pytest

from medbench.engine import cpu_bf16_detected, cpu_has_native_bf16
from medbench.run import train
from medbench.rundir import read_predictions

# Without AVX512-BF16/AMX the CPU emulates bf16 convolutions, about 15x slower than fp32 for ResNet-18 (AVX2
# EPYC: 2 vs 31 img/s at 32 px); the bf16 path is then checked on the small cnn5, which emulation runs in seconds.
MODEL = "resnet18" if cpu_bf16_detected() else "cnn5"


def _val_aucs(tmp_path, settings, precision, seeds):
    out = []
    for seed in seeds:
        run = train({**settings, "model": MODEL, "precision": precision, "seed": seed},
                    tmp_path / f"{precision}-{seed}", quiet=True, report=False)
        cfg = (run / "config.yaml").read_text()
        assert f"precision: {precision}" in cfg  # the run recorded what it used
        out.append(json.loads((run / "metrics.json").read_text())["val"]["auc"])
    return np.array(out)


@pytest.mark.slow
@pytest.mark.parametrize("settings, seeds", [
    ({"dataset": "breastmnist", "epochs": 3}, [0, 1, 2]),
    ({"dataset": "pneumoniamnist", "epochs": 1, "batch_size": 128}, [0, 1]),
])
def test_bf16_matches_fp32_within_seed_noise(tmp_path, settings, seeds):
    fp32 = _val_aucs(tmp_path, settings, "fp32", seeds)
    bf16 = _val_aucs(tmp_path, settings, "bf16", seeds)
    noise = max(fp32.std(ddof=1), bf16.std(ddof=1))
    assert abs(bf16.mean() - fp32.mean()) <= max(0.03, 2 * noise), (fp32, bf16)
    assert min(fp32.min(), bf16.min()) > 0.75  # both actually learned


def test_auto_precision_follows_the_hardware():
    import torch

    from medbench.engine import Precision

    assert Precision(torch.device("cpu"), "auto").name == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert Precision(torch.device("cpu"), "fp32").dtype is None


def test_auto_can_be_forced_to_each_cpu_path(monkeypatch):
    import torch

    from medbench.engine import Precision
    from medbench.errors import MedbenchError

    for forced, name in (("1", "bf16"), ("0", "fp32")):
        monkeypatch.setenv("MEDBENCH_CPU_BF16", forced)
        assert Precision(torch.device("cpu"), "auto").name == name
    monkeypatch.setenv("MEDBENCH_CPU_BF16", "yes")
    with pytest.raises(MedbenchError, match="MEDBENCH_CPU_BF16 must be 0 or 1"):
        cpu_has_native_bf16()


def test_a_bf16_trained_run_gives_one_answer_everywhere(tmp_path, shared_data):
    """Training in bf16 autocast (forced, whatever this CPU is); the recorded predictions, a re-evaluation,
    predict, serve and the ONNX graph agree to 1e-6, because every inference path runs in fp32."""
    import onnxruntime as ort
    import torch
    from fastapi.testclient import TestClient

    from medbench.build import build_dataset as dataset_for
    from medbench.config import load_config
    from medbench.export import export_run
    from medbench.predict import Predictor
    from medbench.run import evaluate
    from medbench.serve import create_app

    run = train({"dataset": f"folder:{shared_data / 'chest_xray_subset'}", "model": "cnn5", "epochs": 2,
                 "precision": "bf16", "seed": 4}, tmp_path / "bf16", quiet=True, report=False)
    assert "precision: bf16" in (run / "config.yaml").read_text()
    recorded = read_predictions(run / "predictions" / "test.csv")
    again = read_predictions(evaluate(run, ["test"], quiet=True).path / "predictions" / "test.csv")
    assert np.abs(again - recorded).max() <= 1e-6

    ds = dataset_for(load_config(run / "config.yaml"))
    images = ds["test"].images
    predictor = Predictor(run)
    assert np.abs(predictor.probabilities(images) - recorded).max() <= 1e-6
    files = [shared_data / "chest_xray_subset" / rel for rel in ds.meta["files"]["test"][:4]]
    assert torch.equal(torch.stack([predictor.load_image(f) for f in files]), images[:4])  # same preprocessing

    session = ort.InferenceSession(str(export_run(run, "onnx")), providers=["CPUExecutionProvider"])
    onnx = session.run(["probabilities"], {"image": images.numpy()})[0]
    assert np.abs(onnx - recorded).max() <= 1e-6

    with TestClient(create_app([run])) as client:
        for f, want in zip(files, recorded[:4]):
            r = client.post("/predict", files={"file": (f.name, f.read_bytes(), "image/jpeg")})
            assert r.status_code == 200, r.text
            got = [r.json()["probabilities"][c] for c in predictor.classes]
            assert np.abs(np.array(got) - want).max() <= 1e-6
