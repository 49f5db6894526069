"""medbench export: ONNX (dynamic batch, run by onnxruntime) and TorchScript give the Predictor's probabilities."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medbench.cli import main
from medbench.errors import MedbenchError
from medbench.export import export_run
from medbench.predict import Predictor


@pytest.fixture(scope="module")
def test_images(chest_run, shared_data):
    p = Predictor(chest_run)
    files = sorted((shared_data / "chest_xray_subset" / "test").rglob("*.jpeg"))
    return torch.stack([p.load_image(f) for f in files])


def test_onnx_parity_with_onnxruntime_on_real_images(chest_run, test_images, capsys):
    """Acceptance: max |delta probability| <= 1e-4 against the PyTorch model, at two batch sizes."""
    import onnxruntime as ort

    assert main(["export", str(chest_run), "--format", "onnx"]) == 0
    assert "model.onnx" in capsys.readouterr().out
    session = ort.InferenceSession(str(chest_run / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)" and inp.shape == ["batch", 1, 28, 28]
    reference = Predictor(chest_run).probabilities(test_images)
    for batch in (test_images, test_images[:3]):
        out = session.run(["probabilities"], {"image": batch.numpy()})[0]
        assert out.shape == (len(batch), 2)
        assert np.abs(out - reference[:len(batch)]).max() <= 1e-4
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)


def test_torchscript_parity_and_bad_format(chest_run, test_images, tmp_path):
    path = export_run(chest_run, "torchscript", tmp_path / "m.ts")
    with pytest.warns(FutureWarning):  # torch.jit.load's deprecation notice
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        out = loaded(test_images).numpy()
    assert np.abs(out - Predictor(chest_run).probabilities(test_images)).max() <= 1e-5
    with pytest.raises(MedbenchError, match="unknown export format 'tflite'"):
        export_run(chest_run, "tflite")


def test_corn_and_multilabel_outputs_export(tmp_path, medmnist_dir):
    """The exported graph computes the task's own scores: CORN class probabilities (via cumsum, as ONNX lacks
    cumprod) and per-label sigmoids."""
    from medbench.data import read_npz
    from medbench.export import deployable
    from medbench.run import train

    from conftest import make_npz

    corn = train({"dataset": "retinamnist", "model": "cnn2", "epochs": 1, "ordinal_loss": "corn"}, tmp_path / "r",
                 quiet=True, report=False)
    chest = read_npz(make_npz(tmp_path / "chestmnist.npz", num_classes=14, multilabel=True), "chestmnist")
    multi = train({"dataset": "chestmnist", "model": "cnn2", "epochs": 1}, tmp_path / "m", dataset=chest, quiet=True,
                  report=False)
    for run, channels in ((corn, 3), (multi, 1)):
        p = Predictor(run)
        x = torch.randint(0, 256, (5, channels, 28, 28), dtype=torch.uint8)
        with torch.no_grad():
            got = deployable(p)(x).numpy()
        np.testing.assert_allclose(got, p.probabilities(x), atol=1e-6)
        # sigmoids need not sum to 1
        assert got.shape == (5, 5 if run == corn else 14) and (np.allclose(got.sum(1), 1) == (run == corn))
