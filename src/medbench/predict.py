"""Use a trained run on new images: the run's network with its own preprocessing, without its training data.

A run directory holds what inference needs: config.yaml (model, size, normalisation, fit), dataset.json (task,
class names, channels; written at training time) and model.safetensors. :class:`Predictor` loads them once;
``medbench predict``, ``medbench serve`` and ``medbench export`` are thin layers over it.

Preprocessing is the training one: decode (the rules of :mod:`medbench.data.decode`: header checked first, uint8
throughout), fit to a square of the run's ``size`` (the run's ``fit``: pad or centre-crop; Lanczos), convert to
the dataset's channels, as own-data folders are cached; then the run's normalisation inside the batch pipeline.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from medbench.baselines import is_baseline
from medbench.build import build_preprocess, build_task, load_run_model, run_data_spec
from medbench.config import load_config
from medbench.errors import MedbenchError
from medbench.metrics.calibration import apply_temperature, read_temperature
from medbench.rundir import CALIBRATION, CONFIG, model_weights, read_metrics, require_run_dir
from medbench.tasks import decide

NPZ_SUFFIX = ".npz"


def column_names(classes: list[str]) -> list[str]:
    """Probability column headers: the class names, prefixed ``p_`` if one would clash with another column."""
    clash = any(c in ("path", "label", "error") for c in classes) or len(set(classes)) != len(classes)
    return [f"p_{i}_{c}" if clash else c for i, c in enumerate(classes)] if clash else list(classes)


class Predictor:
    """A run's network, ready for new images: ``probabilities(uint8 [N, C, S, S])`` and friends.

    Runs that average several networks (a deep ensemble's members, or ``ensemble`` kept checkpoints) predict
    with the same average as their metrics; Grad-CAM explains the first of them.

    ``threshold`` (binary tasks): the decision threshold on P(positive); default the run's validation-chosen
    (Youden) threshold from metrics.json, else 0.5. ``tta``: average with horizontally flipped views (refused
    for runs trained with ``no_flip``). ``temperature``: the run's temperature scaling (``calibration.json``,
    written by ``--calibrate temperature``), applied to the averaged probabilities as in the run's metrics;
    None when the run is not calibrated.
    """

    def __init__(self, run_dir: str | os.PathLike, *, device: str | torch.device = "cpu", tta: bool = False,
                 threshold: float | None = None, data_dir=None):
        self.run_dir = require_run_dir(run_dir, "predict")
        self.cfg = cfg = load_config(self.run_dir / CONFIG)
        if is_baseline(cfg.model):
            raise MedbenchError(f"{self.run_dir}: {cfg.model} is a classical model; it has no saved weights to "
                                f"predict with (medbench never unpickles scikit-learn models)")
        if tta and cfg.no_flip:
            raise MedbenchError(f"{self.run_dir} was trained with no_flip: flipped views (--tta) are not valid")
        self.spec = run_data_spec(self.run_dir, cfg, data_dir)
        self.task = build_task(cfg, self.spec)
        self.device = torch.device(device)
        self.models = [load_run_model(self.run_dir, cfg, self.spec, self.task, self.device, weights=w).eval()
                       for w in model_weights(self.run_dir, cfg)]
        self.model = self.models[0]
        self.prep = build_preprocess(cfg, self.spec)
        self.tta = tta
        self.temperature = read_temperature(self.run_dir / CALIBRATION)
        try:
            metrics = read_metrics(self.run_dir, missing_ok=True)
        except MedbenchError:  # a damaged metrics.json only costs the recorded threshold
            metrics = {}
        chosen = (metrics.get("threshold") or {}).get("youden") if self.task.name == "binary" else None
        self.threshold = float(threshold if threshold is not None else chosen if chosen is not None else 0.5)
        self.metrics = metrics

    # ---- facts ---------------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return self.spec.class_names

    @property
    def size(self) -> int:
        return self.cfg.size

    @property
    def channels(self) -> int:
        return self.spec.in_chans

    # ---- images --------------------------------------------------------------------------------------------
    def load_image(self, path: str | os.PathLike, max_pixels: int | None = None) -> torch.Tensor:
        """One image file -> uint8 ``[C, S, S]`` exactly as training data was prepared (fit, then channels).

        The header is checked first (``max_pixels``, default :data:`medbench.data.headers.MAX_PIXELS`; one frame),
        and decoding stays in uint8 (:func:`medbench.data.decode.decode_fitted`). Any failure is one
        :class:`MedbenchError` naming the file.
        """
        from medbench.data.decode import decode_fitted

        img = decode_fitted(path, self.size, self.cfg.fit, self.channels, max_pixels=max_pixels)
        return torch.tensor(img).permute(2, 0, 1).contiguous()

    def fit_array(self, img: np.ndarray) -> torch.Tensor:
        """uint8 ``[H, W, C]`` (C = 1 or 3) -> ``[C, S, S]`` in the run's size and channels."""
        from medbench.data.decode import convert_channels, resize_square

        img = resize_square(np.asarray(img, dtype=np.uint8), self.size, self.cfg.fit)
        return torch.tensor(convert_channels(img, self.channels)).permute(2, 0, 1).contiguous()

    # ---- inference -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """uint8 ``[N, C, S, S]`` -> float64 ``[N, K]`` class (or label) probabilities, in batches."""
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (
                self.channels, self.size, self.size):
            raise MedbenchError(f"expected uint8 images [N, {self.channels}, {self.size}, {self.size}], got "
                                f"{images.dtype} {tuple(images.shape)}")
        out = []
        for i in range(0, len(images), self.cfg.eval_batch_size):
            x = images[i:i + self.cfg.eval_batch_size].to(self.device)
            views = [x, x.flip(-1)] if self.tta else [x]
            p = sum(self.task.scores(m(self.prep(v))).double() for m in self.models for v in views)
            out.append((p / (len(self.models) * len(views))).cpu())
        k = self.task.num_classes
        probs = torch.cat(out).numpy() if out else np.zeros((0, k))
        # calibration acts on the averaged probabilities, as when the temperature was fitted
        return probs if self.temperature is None else apply_temperature(probs, self.task.name, self.temperature)

    def decide(self, probs: np.ndarray) -> list[str]:
        """The predicted label per row: binary at ``threshold``; argmax; multi-label: the labels > 0.5 joined
        with ';' (empty when none)."""
        names = self.classes
        decided = self.decided(probs)
        if self.task.name == "multilabel":
            return [";".join(n for n, on in zip(names, row) if on) for row in decided]
        return [names[int(i)] for i in decided]

    def decided(self, probs: np.ndarray) -> np.ndarray:
        """:func:`medbench.tasks.decide` at this predictor's threshold (binary tasks; multi-label labels at 0.5)."""
        return decide(probs, self.task.name, self.threshold if self.task.name == "binary" else 0.5)

    def cams(self, images: torch.Tensor, probs: np.ndarray) -> list[np.ndarray]:
        """Grad-CAM overlays (uint8 RGB ``[S, S, 3]``) of the predicted class (multi-label: the top label)."""
        from medbench.explain import gradcam, overlay

        # the decided class; multi-label: the top label
        targets = [int(i) for i in (self.decided(probs) if self.task.name != "multilabel" else probs.argmax(1))]
        output_fn = None
        if self.task.num_outputs != self.task.num_classes:  # CORN: explain log P(class)
            output_fn = lambda logits: self.task.scores(logits).clamp_min(1e-12).log()  # noqa: E731
        x = self.prep(images.to(self.device))
        heat = gradcam(self.model, x, targets, output_fn=output_fn)
        return [overlay(images[j], heat[j]) for j in range(len(images))]


# ---- inputs -------------------------------------------------------------------------------------------------

def _npz_images(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, uint8 [H, W, C]) for every image of an npz file: MedMNIST's ``*_images`` arrays, or ``images``."""
    from medbench.data.npz import open_npz

    try:  # bounded reader: shapes and dtypes come from the .npy headers before any data is decompressed
        with open_npz(path, fix="write it again with uint8 image arrays") as z:
            keys = [k for k in z.files if k.endswith("_images") or k == "images"]
            if not keys:
                raise MedbenchError(f"{path}: no image array (expected 'images' or MedMNIST's "
                                    f"'train_images'/'val_images'/'test_images'); found {z.files}")
            for key in keys:
                h = z.header(key)
                nd = len(h.shape)
                if h.dtype != np.uint8 or nd not in (3, 4) or (nd == 4 and h.shape[-1] not in (1, 3)):
                    raise MedbenchError(f"{path}: '{key}' must be uint8 [N, H, W] or [N, H, W, 1|3], got "
                                        f"{h.dtype} {h.shape}")
                arr = z.read(key)
                for i in range(len(arr)):
                    img = arr[i] if arr.ndim == 4 else arr[i][..., None]
                    yield f"{path}:{key}[{i}]", img
    except MedbenchError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise MedbenchError(f"{path}: not a readable npz file ({type(e).__name__}: {e})") from None


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files, folders (searched recursively for images and npz files) and glob patterns -> files, in order,
    each once. An input that matches nothing is an error naming it."""
    from medbench.data.folders import IMAGE_EXTENSIONS

    wanted = (*IMAGE_EXTENSIONS, NPZ_SUFFIX)
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in wanted
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise MedbenchError(f"{p}: no image or npz files in this folder (looked for {', '.join(wanted)})")
            out += found
        elif p.is_file():
            out.append(p)
        elif glob.has_magic(str(item)):
            found = sorted(Path(f) for f in glob.glob(str(item), recursive=True) if Path(f).is_file())
            if not found:
                raise MedbenchError(f"{item}: the pattern matches no file")
            out += found
        else:
            raise MedbenchError(f"{item}: no such file or folder")
    seen, unique = set(), []
    for f in out:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def iter_images(predictor: Predictor, files: list[Path], skip_bad: bool = False
                ) -> Iterator[tuple[str, torch.Tensor | None, str | None]]:
    """(name, uint8 [C, S, S] or None, error or None) per image, decoding lazily (memory stays one batch)."""
    for f in files:
        try:
            if f.suffix.lower() == NPZ_SUFFIX:
                for name, img in _npz_images(f):
                    yield name, predictor.fit_array(img), None
            else:
                yield str(f), predictor.load_image(f), None
        except MedbenchError as e:
            if not skip_bad:
                raise
            yield str(f), None, str(e)


def predict_files(run_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike], out: str | os.PathLike, *,
                  cam_dir: str | os.PathLike | None = None, tta: bool = False, threshold: float | None = None,
                  skip_bad: bool = False, device: str = "cpu", batch_size: int | None = None) -> dict:
    """Predict every input image into the CSV ``out`` (written atomically): ``path``, one probability column per
    class (class names as headers), ``label``; with ``skip_bad`` an ``error`` column names unreadable files
    (their other cells empty). ``cam_dir``: Grad-CAM overlay PNGs, one per image. Returns a summary."""
    import csv

    from medbench.fileio import atomic_path

    predictor = Predictor(run_dir, device=device, tta=tta, threshold=threshold)
    files = expand_inputs(inputs)
    batch = batch_size or predictor.cfg.eval_batch_size
    header = ["path", *column_names(predictor.classes), "label"] + (["error"] if skip_bad else [])
    cam_dir = Path(cam_dir) if cam_dir else None
    n = bad = 0
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        pending: list[tuple[str, torch.Tensor]] = []

        def flush():
            nonlocal n
            if not pending:
                return
            images = torch.stack([img for _, img in pending])
            probs = predictor.probabilities(images)
            labels = predictor.decide(probs)
            for (name, _), p, lab in zip(pending, probs, labels):
                writer.writerow([name, *(f"{v:.6g}" for v in p), lab] + ([""] if skip_bad else []))
            if cam_dir is not None:
                _write_cams(cam_dir, [nm for nm, _ in pending], predictor.cams(images, probs), start=n)
            n += len(pending)
            pending.clear()

        for name, img, err in iter_images(predictor, files, skip_bad):
            if img is None:
                bad += 1
                writer.writerow([name, *([""] * len(predictor.classes)), "", err])
                continue
            pending.append((name, img))
            if len(pending) >= batch:
                flush()
        flush()
        fh.flush()
    return {"images": n, "skipped": bad, "out": str(out), "threshold": predictor.threshold,
            "classes": predictor.classes, "cam_dir": str(cam_dir) if cam_dir else None}


def _write_cams(cam_dir: Path, names: list[str], overlays: list[np.ndarray], start: int) -> None:
    from PIL import Image

    from medbench.fileio import atomic_path

    cam_dir.mkdir(parents=True, exist_ok=True)
    for j, (name, img) in enumerate(zip(names, overlays)):
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name.split(":")[0]).stem)[:60]
        with atomic_path(cam_dir / f"{start + j:05d}_{stem}.png") as tmp:
            Image.fromarray(img).save(tmp, format="PNG")
