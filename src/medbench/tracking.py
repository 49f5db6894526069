"""Experiment tracking: ``--track mlflow[:URI]`` sends a run's settings, per-epoch curves, final metrics and files
to an MLflow tracking server (extra ``medbench[mlflow]``); without ``--track`` nothing is imported or sent.

A tracker is a handler (:mod:`medbench.handlers`): ``epoch_end(loop, state, row)`` after every epoch, then
``run_end(out)`` once the run's metrics, card and report are written. :func:`open_tracker` is a context manager:
a run that raises is marked failed on the server.

What goes where (docs/tracking.md): params = the RunConfig (nested keys joined by '.', non-strings as JSON);
per-epoch metrics = every number of the history row under its history.csv name, step = epoch; final metrics =
metrics.json's numbers as ``SPLIT/NAME`` (CIs as ``SPLIT/NAME_ci_low``/``_ci_high``) and cv.json's as ``cv/...``;
artifacts = the run's report, card, predictions, config and history. The server is checked before training
starts; a failure later only warns and stops tracking: hours of training are never lost to a tracking server.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from medbench.errors import MedbenchError
from medbench.rundir import (
    CALIBRATION,
    CARD_JSON,
    CARD_MD,
    CONFIG,
    CV_SUMMARY,
    DATA_SPEC,
    HISTORY,
    METRICS,
    PREDICTIONS,
    REPORT,
)

TRACKERS = ("mlflow",)
PROBE_TIMEOUT_S = 5.0  # an unreachable server fails in seconds, not after MLflow's minutes of retries
ARTIFACT_FILES = (REPORT, CARD_MD, CARD_JSON, CONFIG, HISTORY, METRICS, CV_SUMMARY, CALIBRATION, DATA_SPEC)
SKIPPED_KEYS = {"evaluation", "class_of"}  # metrics.json entries that are settings or labels, not results
TAG_RUN_DIR, TAG_VERSION, TAG_DATASET, TAG_MODEL = ("medbench.run_dir", "medbench.version", "medbench.dataset",
                                                    "medbench.model")


class TrackingWarning(UserWarning):
    """Tracking stopped during a run (the server went away, a store refused a value); the run goes on."""


class NoTracker:
    """Not tracking: every hook does nothing."""

    def epoch_end(self, loop, state, row: dict) -> None:
        pass

    def run_end(self, out: Path) -> None:
        pass


def parse_track(track: str) -> str | None:
    """The tracking URI of a ``--track`` value (None: MLflow's default); an unknown tracker is an error."""
    kind, colon, uri = str(track).partition(":")
    if kind not in TRACKERS:
        raise MedbenchError(f"--track {track}: unknown tracker '{kind}'; valid: mlflow (MLflow's default URI) or "
                            f"mlflow:URI (e.g. mlflow:http://127.0.0.1:5000, mlflow:sqlite:///mlflow.db)")
    if colon and not uri.strip():
        raise MedbenchError(f"--track {track}: no URI after 'mlflow:'; give one (mlflow:http://127.0.0.1:5000) "
                            f"or write just 'mlflow'")
    return uri.strip() or None


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise MedbenchError("--track mlflow needs MLflow: pip install 'medbench[mlflow]'") from None
    return mlflow


def check_track(track: str) -> str:
    """Check ``track`` and reach its store before any training; returns the resolved tracking URI.

    An HTTP server gets one ``/health`` request with a short timeout; a local store (file, SQLite) is opened.
    Used by :func:`open_tracker`, and by studies and tune once for all their runs."""
    uri = parse_track(track)
    mlflow = _mlflow()
    uri = uri or mlflow.get_tracking_uri()  # $MLFLOW_TRACKING_URI, ./mlruns if it holds runs, else sqlite:///mlflow.db
    if uri.startswith(("http://", "https://")):
        _probe(uri)
    else:
        with _quiet_store_setup():
            try:
                mlflow.MlflowClient(uri).search_experiments(max_results=1)
            except Exception as e:  # noqa: BLE001 - any store error is the same one-line refusal
                raise MedbenchError(f"--track: cannot open the MLflow store {uri}: {_one_line(e)}; check the URI "
                                    f"(mlflow:sqlite:///PATH.db, mlflow:file:///PATH/mlruns, mlflow:http://HOST:PORT)"
                                    ) from None
    return uri


def _probe(uri: str) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        pass  # something answers (a proxy asking for credentials, say): MLflow's own calls give the details
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise MedbenchError(f"--track: no MLflow tracking server answers at {uri} ({_one_line(reason)}); start one "
                            f"(mlflow server --host 127.0.0.1 --port PORT) or give another --track mlflow:URI"
                            ) from None


@contextlib.contextmanager
def _quiet_store_setup():
    """MLflow's SQLite store logs its schema migrations at INFO: not a run's business."""
    loggers = [logging.getLogger(n) for n in ("alembic", "mlflow.store.db.utils")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _one_line(e) -> str:
    return " ".join(str(e).split())[:300]


def experiment_name(cfg, experiment: str | None) -> str:
    """``experiment``, else $MLFLOW_EXPERIMENT_NAME, else the dataset's name (a folder's last component)."""
    return experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or Path(str(cfg.dataset)).name or "medbench"


def config_params(cfg) -> dict[str, str]:
    """The RunConfig as MLflow params: nested keys joined by '.', strings as they are, anything else as JSON."""
    out: dict[str, str] = {}

    def add(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = value if isinstance(value, str) else json.dumps(value)

    add("", cfg.model_dump(mode="json"))
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_BAD_KEY = re.compile(r"[^/\w.\- ]")


def record_metrics(record: dict, prefix: str = "", depth: int = 4) -> dict[str, float]:
    """Every number of a metrics.json / cv.json record as ``prefix/key/...``; ``NAME_ci: [lo, hi]`` becomes
    ``NAME_ci_low`` and ``NAME_ci_high``. Lists (confusion matrices), strings and settings are left out."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if k in SKIPPED_KEYS:
            continue
        key = _BAD_KEY.sub("_", f"{prefix}/{k}" if prefix else str(k))
        if _is_number(v):
            out[key] = float(v)
        elif isinstance(v, dict) and depth > 1:
            out.update(record_metrics(v, key, depth - 1))
        elif str(k).endswith("_ci") and isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_number, v)):
            out[f"{key}_low"], out[f"{key}_high"] = float(v[0]), float(v[1])
    return out


def final_metrics(out: Path) -> list[tuple[str, float, int]]:
    """(key, value, step) of the run's final record: metrics.json, and cv.json's summary with one point per
    fold (step = fold) for its per-fold metrics."""
    rows: list[tuple[str, float, int]] = []
    if (out / METRICS).is_file():
        rows += [(k, v, 0) for k, v in record_metrics(_read_json(out / METRICS)).items()]
    if (out / CV_SUMMARY).is_file():
        cv = _read_json(out / CV_SUMMARY)
        rows += [(k, v, 0) for k, v in record_metrics({x: y for x, y in cv.items() if x != "folds"}, "cv").items()]
        for i, fold in enumerate(cv.get("folds") or []):
            step = fold.get("fold", i) if _is_number(fold.get("fold")) else i
            rows += [(k, v, int(step)) for k, v in record_metrics(
                {s: fold[s] for s in fold if isinstance(fold[s], dict)}, "cv/fold", depth=3).items()]
    return rows


def _read_json(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def history_rows(path: Path) -> list[dict[str, float]]:
    """history.csv's numeric cells per epoch (empty cells left out)."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                with contextlib.suppress(TypeError, ValueError):
                    row[k] = float(v)
            if "epoch" in row:
                rows.append(row)
    return rows


class MlflowTracker:
    """One medbench run as one MLflow run (through ``MlflowClient``: no global active run, so a study's runs in
    one process never mix)."""

    def __init__(self, client, uri: str, run_id: str, logged_epochs: set[int]):
        self.client, self.uri, self.run_id = client, uri, run_id
        self.logged_epochs = logged_epochs
        self.broken = self.warned = False

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if self.broken:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never cost the run: warn once, stop tracking
            self.broken, warned = True, self.warned
            self.warned = True
            if warned:
                return
            warnings.warn(f"MLflow tracking at {self.uri} stopped ({what}: {_one_line(e)}); the run goes on and "
                          f"its files are complete", TrackingWarning, stacklevel=3)

    def log_metrics(self, items: list[tuple[str, float, int]], what: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v, step in items]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            self._call(what, self.client.log_batch, self.run_id, metrics=metrics[i:i + 1000])

    def log_epoch(self, row: dict) -> None:
        epoch = int(row["epoch"])
        self.log_metrics([(k, float(v), epoch) for k, v in row.items() if k != "epoch" and _is_number(v)],
                         f"epoch {epoch}")
        self.logged_epochs.add(epoch)

    def epoch_end(self, loop, state, row: dict) -> None:
        self.log_epoch(row)

    def run_end(self, out: Path) -> None:
        out = Path(out)
        for row in history_rows(out / HISTORY):  # runs without per-epoch hooks (baselines, ensembles, CV)
            if int(row["epoch"]) not in self.logged_epochs:
                self.log_epoch(row)
        self.log_metrics(final_metrics(out), "final metrics")
        for name in ARTIFACT_FILES:
            if (out / name).is_file():
                self._call(f"artifact {name}", self.client.log_artifact, self.run_id, str(out / name))
        if (out / PREDICTIONS).is_dir():
            self._call("artifact predictions", self.client.log_artifacts, self.run_id, str(out / PREDICTIONS),
                       PREDICTIONS)

    def close(self, status: str, error: str | None = None, pruned: str | None = None) -> None:
        if error:
            self._call("error tag", self.client.set_tag, self.run_id, "medbench.error", error[:5000])
        if pruned:
            self._call("pruned tag", self.client.set_tag, self.run_id, "medbench.pruned", pruned[:5000])
        if self.broken:  # the run's end status is worth one more try, unless the server is gone
            if self.uri.startswith(("http://", "https://")):
                try:
                    _probe(self.uri)
                except MedbenchError:
                    return
            self.broken = False
        self._call("end", self.client.set_terminated, self.run_id, status)


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of a local database store keeps its files: beside the database
    (``mlartifacts/``), not MLflow's default ``./mlruns`` in whatever folder the command ran from."""
    if not uri.startswith("sqlite:///"):
        return None  # a server decides (--artifacts-destination); a file store keeps them in itself
    db = Path(uri[len("sqlite:///"):])
    return (db.resolve().parent / "mlartifacts").as_uri()


def _experiment_id(client, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(uri))
        except MlflowException:  # another worker of the study created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise MedbenchError(f"--track: the MLflow experiment '{name}' is deleted; restore it (mlflow experiments "
                            f"restore --experiment-id {exp.experiment_id}) or choose another name")
    return exp.experiment_id


def _resumed_run(client, experiment_id: str, run_dir: str):
    """The MLflow run a killed medbench run was logged to, to continue it; None when there is none."""
    if "'" in run_dir or "\\" in run_dir:
        return None
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_RUN_DIR}` = '{run_dir}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def start(track: str, cfg, out: Path, experiment: str | None) -> MlflowTracker:
    """Reach the store, find or create the experiment and the run (a resumed medbench run continues its
    MLflow run), log the params and tags."""
    from medbench import __version__

    uri = check_track(track)
    mlflow = _mlflow()
    from mlflow.entities import Param

    client = mlflow.MlflowClient(uri)
    run_dir = str(Path(out).resolve())
    name = experiment_name(cfg, experiment)
    try:
        with _quiet_store_setup():
            eid = _experiment_id(client, name, uri)
            previous = _resumed_run(client, eid, run_dir) if (Path(out) / CONFIG).is_file() else None
            if previous is not None:
                run_id = previous.info.run_id
                client.update_run(run_id, status="RUNNING")
                logged = {int(m.step) for m in client.get_metric_history(run_id, "train_loss")}
                return MlflowTracker(client, uri, run_id, logged)
            tags = {TAG_RUN_DIR: run_dir, TAG_VERSION: __version__, TAG_DATASET: str(cfg.dataset),
                    TAG_MODEL: str(cfg.model)}
            run_id = client.create_run(eid, run_name=Path(run_dir).name, tags=tags).info.run_id
            params = [Param(k, v) for k, v in config_params(cfg).items()]
            for i in range(0, len(params), 100):  # MLflow's batch limit
                client.log_batch(run_id, params=params[i:i + 100])
    except MedbenchError:
        raise
    except Exception as e:  # noqa: BLE001 - refused before training: one line, not a traceback
        raise MedbenchError(f"--track: MLflow at {uri} refused the run: {_one_line(e)}") from None
    return MlflowTracker(client, uri, run_id, set())


@contextlib.contextmanager
def open_tracker(track: str | None, cfg, out: Path, experiment: str | None = None, enabled: bool = True):
    """The tracker for ``track`` (``mlflow`` or ``mlflow:URI``; None: :class:`NoTracker`), closed on exit.

    ``experiment``: the MLflow experiment the run joins (a study's or a tune's name; default:
    $MLFLOW_EXPERIMENT_NAME, else the dataset). ``enabled``: False on every rank but the main one.
    A run that raises ends FAILED (KILLED on Ctrl-C), with the error as the tag ``medbench.error``; a tune trial
    that Optuna pruned ends KILLED with the tag ``medbench.pruned``.
    """
    if not track or not enabled:
        if track:
            parse_track(track)  # every rank refuses a bad value alike
        yield NoTracker()
        return
    tracker = start(track, cfg, Path(out), experiment)
    try:
        yield tracker
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            tracker.close("KILLED", "interrupted")
        elif type(e).__name__ == "TrialPruned":  # Optuna stopped a tune's trial: not a failure of the run
            tracker.close("KILLED", pruned=_one_line(e))
        else:
            tracker.close("FAILED", f"{type(e).__name__}: {_one_line(e)}")
        raise
    tracker.close("FINISHED")
