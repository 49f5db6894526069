"""bf16 autocast trains as well as fp32: same validation AUC within seed noise on real data."""
import json

import numpy as np
import pytest

from medbench.engine import cpu_bf16_detected, cpu_has_native_bf16
from medbench.run import train


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
