"""A real run calibrated with its own validation scores: Predictor, serve and the ONNX export all give the
calibrated probabilities, a damaged calibration.json is one clear error, and the report shows before and after."""
from __future__ import annotations

import copy
import shutil
import warnings

import numpy as np
import pytest
import torch

from medbench.errors import MedbenchError
from medbench.export import deployable
from medbench.metrics import compute_metrics
from medbench.metrics.calibration import apply_temperature, calibrate_splits, write_calibration
from medbench.predict import Predictor
from medbench.report.calibration import calibration_section, calibration_sections
from medbench.rundir import CALIBRATION, predictions_path, read_predictions


@pytest.fixture(scope="module")
def breast_npz(medmnist_dir):
    with np.load(medmnist_dir / "breastmnist.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture
def calibrated(breast_run, breast_npz, tmp_path):
    """A copy of the shared one-epoch BreastMNIST cnn5 run, calibrated on its recorded validation scores."""
    run = tmp_path / "run"
    shutil.copytree(breast_run, run)
    scores = {s: read_predictions(predictions_path(run, s)) for s in ("val", "test")}
    labels = {s: breast_npz[f"{s}_labels"] for s in ("val", "test")}
    with warnings.catch_warnings():  # one epoch: P(malignant-or-not) ~ 0.49 for all, T ends on its upper bound
        warnings.simplefilter("ignore")
        cal, record = calibrate_splits("binary", scores, labels)
    write_calibration(run / CALIBRATION, record)
    return run, scores, cal, labels, record


def _test_images(p: Predictor, breast_npz, n: int = 40) -> torch.Tensor:
    return torch.stack([p.fit_array(img[..., None]) for img in breast_npz["test_images"][:n]])


def test_predictor_and_serve_apply_calibration_json(calibrated, breast_run, breast_npz):
    from medbench.serve.models import Served

    run, scores, cal, labels, record = calibrated
    raw = Predictor(breast_run)
    assert raw.temperature is None
    p = Predictor(run)
    assert p.temperature == record["temperature"] != 1.0
    x = _test_images(p, breast_npz)
    plain, calib = raw.probabilities(x), p.probabilities(x)
    np.testing.assert_allclose(calib, apply_temperature(plain, "binary", record["temperature"]), rtol=0, atol=1e-15)
    assert np.abs(calib - plain).max() > 1e-3  # the temperature did something
    # the recorded test scores, calibrated, are what the predictor gives for the same images
    np.testing.assert_allclose(calib, cal["test"][:len(x)], atol=1e-6)
    # at 0.5 the decisions stay; a threshold t maps to apply_temperature(t)
    p.threshold = raw.threshold = 0.5
    np.testing.assert_array_equal(p.decided(calib), raw.decided(plain))
    t = float(np.median(plain[:, 1]))
    raw.threshold, p.threshold = t, apply_temperature([[1 - t, t]], "binary", p.temperature)[0, 1]
    np.testing.assert_array_equal(p.decided(calib), raw.decided(plain))
    assert compute_metrics(labels["test"], cal["test"], "binary")["auc"] == \
        compute_metrics(labels["test"], scores["test"], "binary")["auc"]
    served = Served("breast", run, "cpu").infer(x[0], cam=False)
    assert list(served["probabilities"].values()) == pytest.approx(calib[0].tolist(), abs=1e-12)


@pytest.mark.slow  # the ONNX (dynamo) export: ~20 s on 2 loaded cores
def test_onnx_export_folds_the_temperature(calibrated, breast_npz):
    import onnxruntime as ort
    from safetensors.torch import load_file, save_file

    from medbench.export import export_run

    run, _, _, _, record = calibrated
    x = _test_images(Predictor(run), breast_npz)

    def parity(t: float, tolerance: float = 1e-5) -> np.ndarray:
        write_calibration(run / CALIBRATION, {**record, "temperature": t})
        p = Predictor(run)
        session = ort.InferenceSession(str(export_run(run, "onnx")), providers=["CPUExecutionProvider"])
        out = session.run(["probabilities"], {"image": x.numpy()})[0]
        probs = p.probabilities(x)
        assert out.dtype == np.float32 and np.abs(out - probs).max() <= tolerance, t
        return probs

    for t in (record["temperature"], 2.5, 0.25):  # the fitted T (on its upper bound), flattening, sharpening
        parity(t)
    # an over-confident network: the output layer scaled up until float32 probabilities saturate. Its logits are
    # large enough that ONNX Runtime and PyTorch already differ by ~1e-5 uncalibrated (test_export allows 1e-4):
    # the temperature must not make that worse
    weights = load_file(run / "model.safetensors")
    for key in list(weights)[-2:]:  # the last layer's weight and bias
        weights[key] = weights[key] * 300
    save_file(weights, run / "model.safetensors")
    assert (parity(1.0, 1e-4).max(1) > 1 - 1e-6).sum() > 10  # T = 1: the network's own probabilities
    for t in (2.5, 0.25):
        parity(t, 1e-4)


def test_averaged_networks_export_calibrated_probabilities(calibrated, breast_npz):
    """Several networks (deep ensemble / kept checkpoints): the temperature acts on the averaged probabilities,
    in the exported module as in Predictor; the same formulas for every task, saturated probabilities included."""
    run, *_ = calibrated
    p = Predictor(run)
    other = copy.deepcopy(p.models[0])
    with torch.no_grad():
        for w in other.parameters():
            w.add_(0.05 * torch.randn_like(w))
    p.models = [p.models[0], other.eval()]
    x = _test_images(p, breast_npz, 16)
    with torch.no_grad():
        got = deployable(p)(x).numpy()
    np.testing.assert_allclose(got, p.probabilities(x), atol=1e-6)
    module = deployable(p)
    probs = np.random.default_rng(0).dirichlet(np.full(5, 0.05), size=40)  # many near 0 and 1
    probs[:3] = np.eye(5)[:3]  # exactly 0 and 1
    p1 = np.array([0.0, 1e-30, 0.3, 1 - 1e-12, 1.0])
    cases = (("multiclass", probs), ("ordinal", probs), ("multilabel", probs), ("binary", np.stack([1 - p1, p1], 1)))
    for task, s in cases:
        module.task = task
        for t in (0.3, 2.5):
            with torch.no_grad():
                got = module.calibrated(torch.tensor(s, dtype=torch.float64), t).numpy()
            np.testing.assert_allclose(got, apply_temperature(s, task, t), rtol=1e-12, atol=1e-15)


def test_damaged_calibration_file_is_one_clear_error(calibrated):
    run, *_ = calibrated
    (run / CALIBRATION).write_text('{"method": "temperature", "temperature": 0}')
    with pytest.raises(MedbenchError, match=r"calibration\.json: not a temperature-scaling record"):
        Predictor(run)


def test_report_section_shows_ece_and_reliability_before_and_after(calibrated, breast_run):
    run, _, _, _, record = calibrated
    assert calibration_section(breast_run) is None and calibration_sections(breast_run) == []  # not calibrated
    assert calibration_sections(run) == [calibration_section(run)]
    sid, heading, body = calibration_section(run)
    assert sid == "temperature-scaling" and "temperature scaling" in heading
    assert f"T = {record['temperature']:.4f}" in body
    assert 'data-figure="reliability-before-after"' in body and 'id="calibration-ece"' in body
    for split in ("val", "test"):
        n = sum(record["splits"][split]["reliability"]["after"]["count"])
        assert f"<tr><td>{split}</td><td>{n}</td>" in body
        assert f"{record['splits'][split]['ece_before']:.3f}" in body
        assert f"{record['splits'][split]['ece_after']:.3f}" in body
    (run / CALIBRATION).write_text("[1]")
    _, _, body = calibration_section(run)
    assert "calibration.json: holds a JSON list" in body
