"""One trial of a tune: the Optuna study in the study database (opened, created, checked against its space) and
the objective that trains a trial's run and reports its per-epoch validation metric for pruning.

Optuna is an extra (``medbench[tune]``), imported lazily: :func:`optuna_or_error` says how to install it.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import update

from medbench.errors import MedbenchError
from medbench.rundir import CV_SUMMARY, FOLDS, HISTORY, read_metrics
from medbench.study.grid import canonical_json
from medbench.study.store import Store, runs, this_host
from medbench.study.tune_space import TuneSpace

RUNS_DIR = "runs"
HEARTBEAT_S, GRACE_S = 10, 60  # a trial whose heartbeat is a minute old is taken for dead
SPACE_ATTR = "medbench_space"


def optuna_or_error():
    try:
        import optuna
    except ImportError:
        raise MedbenchError("medbench tune needs Optuna: pip install 'medbench[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported by medbench's own lines
    return optuna


@contextmanager
def quiet_optuna():
    """Optuna's heartbeat and retry are 'experimental' and warn on every use; medbench relies on them knowingly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=Warning, module=r"optuna(\.|$)")
        warnings.filterwarnings("ignore", message=r".*(experimental|deprecated).*")
        yield


def retry_callback():
    from optuna import storages

    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    return retry(max_retry=2)


def one_line(text: Any) -> str:
    return " ".join(str(text).split())[:2000]


def _storage(url: str):
    optuna_or_error()
    from optuna.storages import RDBStorage

    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with quiet_optuna():
            return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=retry_callback())
    except Exception as e:  # noqa: BLE001 - SQLAlchemy and Optuna raise several types for an unusable URL
        raise MedbenchError(f"cannot open the tune database: {one_line(e)[:300]}") from None


def _space_key(space: TuneSpace) -> str:
    """What makes two space files one search: the fixed settings, the dimensions and the metric."""
    return json.dumps({"fixed": space.fixed, "space": [d.describe() for d in space.dims],
                       "names": [d.name for d in space.dims], "metric": space.metric}, sort_keys=True, default=str)


def _sampler_and_pruner(space: TuneSpace, worker: int, started: int, trials: int):
    optuna = optuna_or_error()
    seed = None if space.seed is None else space.seed + 1000 * worker + started  # workers and resumes differ
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, trials // 3)),
                                         constant_liar=True)
    epochs = space.max_epochs
    if space.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, trials // 4)),
                                             n_warmup_steps=max(1, epochs // 4))
    elif space.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=max(1, epochs // 9), max_resource=epochs,
                                                reduction_factor=3)
    else:
        pruner = optuna.pruners.NopPruner()
    return sampler, pruner


def open_study(space: TuneSpace, url: str, *, worker: int = 0, trials: int | None = None, create: bool = True):
    """The Optuna study of ``space`` in ``url`` (created on first use); a space that changed is refused.
    ``trials`` (default: the file's) scales the sampler's random start-up and the median pruner's."""
    optuna = optuna_or_error()
    storage = _storage(url)
    existing = {s.study_name: s for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)}
    if space.name not in existing and not create:
        raise MedbenchError(f"no tune '{space.name}' in the database")
    started = existing[space.name].n_trials if space.name in existing else 0
    sampler, pruner = _sampler_and_pruner(space, worker, started, space.trials if trials is None else trials)
    study = optuna.create_study(storage=storage, study_name=space.name, direction=space.direction, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    key = _space_key(space)
    held = study.user_attrs.get(SPACE_ATTR)
    if held is None:
        study.set_user_attr(SPACE_ATTR, key)
    elif held != key or study.direction.name.lower() != space.direction:
        raise MedbenchError(f"the database already holds a tune '{space.name}' with another search space (fixed "
                            f"settings, ranges or metric); give the space another name or use another --out/--db")
    return study


# ---- one trial ------------------------------------------------------------------------------------------------

def _row_id(space: TuneSpace, number: int) -> str:
    return f"{space.name[:48]}#{number}"


def _objective_value(run_dir: Path, cfg, metric: str) -> float:
    if cfg.folds > 1:  # the cross-validation's mean validation metric
        path = run_dir / CV_SUMMARY
        try:
            value = json.loads(path.read_text(encoding="utf-8"))["mean"]["val"].get(metric)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MedbenchError(f"{path}: no mean validation {metric} ({one_line(e)})") from None
    else:
        value = (read_metrics(run_dir).get("val") or {}).get(metric)
    if value is None:
        raise MedbenchError(f"the validation {metric} of {run_dir} is undefined (one class only?)")
    return float(value)


def _epochs_run(run_dir: Path, reported: int) -> int:
    if reported:
        return reported
    dirs = [run_dir, *sorted((run_dir / FOLDS).glob("*"))]
    return sum(max(0, len((d / HISTORY).read_text().splitlines()) - 1) for d in dirs if (d / HISTORY).is_file())


class Objective:
    """Trains one trial into ``out/runs/NNNN`` and returns its validation metric (or raises TrialPruned)."""

    def __init__(self, space: TuneSpace, out: Path, store: Store, *, data_dir=None, track: str | None = None,
                 quiet: bool = True):
        self.space, self.out, self.store = space, out, store
        self.data_dir, self.track, self.quiet = data_dir, track, quiet
        self.pid, self.host = os.getpid(), this_host()

    def __call__(self, trial) -> float:
        import torch

        from medbench.run import train  # torch and the pipeline: in the process that trains

        optuna = optuna_or_error()
        space, t0 = self.space, time.perf_counter()
        run_dir = (self.out / RUNS_DIR / f"{trial.number:04d}").resolve()
        for key, value in (("pid", self.pid), ("host", self.host), ("threads", torch.get_num_threads()),
                           ("run_dir", str(run_dir))):
            trial.set_user_attr(key, value)
        rid, reported = _row_id(space, trial.number), []
        try:
            params = {d.name: d.suggest(trial) for d in space.dims}
            self._record_start(rid, params, run_dir)
            cfg = space.config(params, where=f"{space.path or space.name}: trial {trial.number} "
                                             f"({', '.join(f'{k}={v}' for k, v in params.items())})")
            self._set_config(rid, cfg)
            if run_dir.exists():  # left by an earlier attempt at this number
                shutil.rmtree(run_dir)

            def on_epoch(row: dict) -> bool:
                value = row.get(f"val_{space.metric}")
                if value is None:
                    return False
                reported.append(value)
                trial.report(float(value), row["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {row['epoch']} (val {space.metric} {value:.4f})")
                return False

            with warnings.catch_warnings():  # a trial's warnings are in its metrics.json, not on the console
                warnings.simplefilter("ignore")
                train(cfg, run_dir, data_dir=self.data_dir, quiet=True, report=space.report, track=self.track,
                      experiment=space.name, on_epoch=on_epoch if cfg.folds <= 1 else None)
            value = _objective_value(run_dir, cfg, space.metric)
        except optuna.TrialPruned as e:
            shutil.rmtree(run_dir, ignore_errors=True)  # unfinished: Optuna keeps its per-epoch values
            self._end(trial, rid, "pruned", str(e), t0, len(reported))
            raise
        except KeyboardInterrupt:
            self.store.mark_failed(rid, "interrupted", time.perf_counter() - t0, pid=self.pid, host=self.host)
            raise
        except MedbenchError as e:
            self._end(trial, rid, "failed", one_line(e), t0, len(reported))
            raise
        except Exception as e:  # noqa: BLE001 - a crash inside training: the trial fails, the search goes on
            error = f"internal error: {type(e).__name__}: {one_line(e)}"
            self._end(trial, rid, "failed", error, t0, len(reported))
            raise MedbenchError(error) from e
        trial.set_user_attr("epochs", _epochs_run(run_dir, len(reported)))
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
        metrics = read_metrics(run_dir)
        self.store.mark_done(rid, json.dumps(dict(metrics), allow_nan=False), time.perf_counter() - t0,
                             pid=self.pid, host=self.host)
        self._say(trial.number, f"{space.metric} {value:.4f}", t0)
        return value

    def _record_start(self, rid: str, params: dict, run_dir: Path) -> None:
        self.store.add([{"id": rid, "study": self.space.name, "config": json.dumps(self.space.settings(params),
                                                                                  default=str),
                         "axes": json.dumps(params, sort_keys=True, default=str), "run_dir": str(run_dir)}])
        self.store.claim(rid, self.pid, self.host, statuses=("pending", "failed"), run_dir=str(run_dir))

    def _set_config(self, rid: str, cfg) -> None:
        with self.store.engine.begin() as c:
            c.execute(update(runs).where(runs.c.id == rid).values(config=canonical_json(cfg)))

    def _end(self, trial, rid: str, state: str, why: str, t0: float, epochs: int) -> None:
        seconds = time.perf_counter() - t0
        trial.set_user_attr("epochs", epochs)
        trial.set_user_attr("seconds", round(seconds, 3))
        if state == "failed":
            trial.set_user_attr("error", why)
            self.store.mark_failed(rid, why, seconds, pid=self.pid, host=self.host)
        else:  # 'pruned': counted in the study's total, neither done nor failed
            with self.store.engine.begin() as c:
                c.execute(update(runs).where(runs.c.id == rid, runs.c.status == "running")
                          .values(status="pruned", error=why, seconds=seconds, run_dir=None))
        self._say(trial.number, f"{state}: {why}", t0)

    def _say(self, number: int, what: str, t0: float) -> None:
        if not self.quiet:
            print(f"[{self.pid}] trial {number}: {what} ({time.perf_counter() - t0:.0f} s)", flush=True)
