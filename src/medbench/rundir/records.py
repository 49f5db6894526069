"""Reading and writing what a run directory records: the data spec, metrics, provenance (predictions:
:mod:`medbench.rundir.predictions`)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from medbench.config import PROVENANCE_KEY
from medbench.errors import MedbenchError
from medbench.fileio import read_json, write_json
from medbench.rundir.layout import (
    CHECKPOINT_INDEX,
    CHECKPOINTS,
    CONFIG,
    DATA_SPEC,
    EVALUATIONS,
    METRICS,
    RESUME,
    WEIGHTS,
    fold_dirs,
    member_dirs,
)


@dataclass
class DataSpec:
    """What a model needs to know about its data, without the data (duck-types ImageDataset for building)."""
    name: str
    task: str
    class_names: list[str]
    in_chans: int
    size: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def data_spec(ds) -> DataSpec:
    return DataSpec(ds.name, ds.task, [str(c) for c in ds.class_names], int(ds.in_chans), int(ds.size))


def write_data_spec(run_dir: str | os.PathLike, ds) -> None:
    write_json(Path(run_dir) / DATA_SPEC, asdict(data_spec(ds)))


def read_data_spec(run_dir: str | os.PathLike) -> DataSpec | None:
    """dataset.json; None for runs made before it existed (rebuild it from the run's dataset)."""
    path = Path(run_dir) / DATA_SPEC
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return DataSpec(str(d["name"]), str(d["task"]), [str(c) for c in d["class_names"]], int(d["in_chans"]),
                        int(d["size"]))
    except (ValueError, KeyError, TypeError) as e:
        raise MedbenchError(f"{path}: damaged ({type(e).__name__}: {e}); delete it to rebuild it from the "
                            f"run's dataset") from None


def read_metrics(run_dir: str | os.PathLike, missing_ok: bool = False) -> dict:
    """metrics.json ({} when absent and ``missing_ok``); a damaged file is one clear error."""
    path = Path(run_dir) / METRICS
    if missing_ok and not path.is_file():
        return {}
    return read_json(path, METRICS, f"restore it from a backup, or run `medbench evaluate {run_dir}` for a fresh "
                                    f"evaluation (written to {EVALUATIONS}/NAME/)")


def write_metrics(run_dir: str | os.PathLike, metrics: dict) -> None:
    write_json(Path(run_dir) / METRICS, metrics)


def read_provenance(run_dir: str | os.PathLike) -> dict:
    """The provenance block saved after the config (versions, data md5, device, ...); {} when absent."""
    import yaml

    data = yaml.safe_load((Path(run_dir) / CONFIG).read_text(encoding="utf-8")) or {}
    provenance = data.get(PROVENANCE_KEY) if isinstance(data, dict) else None
    return provenance if isinstance(provenance, dict) else {}


def recorded_md5(run_dir: str | os.PathLike) -> str | None:
    """The md5 of the data the run was trained on, as recorded in its provenance."""
    return read_provenance(run_dir).get("data_md5")


def unfinished(run_dir: str | os.PathLike) -> str | None:
    """How far a killed run got ("stopped after epoch 3 of 10"), or None for a finished run."""
    from safetensors import safe_open

    path = Path(run_dir) / RESUME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            state = json.loads(f.metadata()["medbench_resume"])
        return f"stopped after epoch {int(state['epoch'])} of {int(state['config']['epochs'])}"
    except Exception:  # noqa: BLE001 - a damaged resume file still says the run did not finish
        return f"killed during training ({RESUME} left behind)"


def kept_checkpoints(run_dir: str | os.PathLike, k: int) -> list[Path]:
    """The files of the ``k`` best kept checkpoints, best first; a clear error when fewer were kept."""
    index = Path(run_dir) / CHECKPOINTS / CHECKPOINT_INDEX
    entries = read_json(index, CHECKPOINT_INDEX, "restore it from a backup, or evaluate without --ensemble",
                        kind=list) if index.is_file() else []
    if len(entries) < k:
        raise MedbenchError(f"{run_dir} kept {len(entries)} checkpoint(s) but --ensemble {k} needs {k}: retrain with "
                            f"--keep-checkpoints {k}")
    return [index.parent / e["file"] for e in entries[:k]]


def model_weights(run_dir: str | os.PathLike, cfg, ensemble: int | None = None) -> list[Path]:
    """The weights files whose probabilities make the run's predictions: a cross-validation's fold runs' (the fold
    ensemble), a deep ensemble's members, else the
    ``ensemble`` (default: the config's) best kept checkpoints, else the best epoch."""
    ensemble = cfg.ensemble if ensemble is None else ensemble
    if getattr(cfg, "folds", 1) > 1 and getattr(cfg, "fold", None) is None:  # a cross-validation: its fold runs'
        return [w for i, d in enumerate(fold_dirs(run_dir, cfg.folds))
                for w in model_weights(d, cfg.model_copy(update={"fold": i}), ensemble)]
    if cfg.members > 1:
        return [d / WEIGHTS for d in member_dirs(run_dir, cfg.members)]
    return kept_checkpoints(run_dir, ensemble) if ensemble > 1 else [Path(run_dir) / WEIGHTS]
