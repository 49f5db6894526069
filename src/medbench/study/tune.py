"""Hyper-parameter search with Optuna (``medbench tune``), stored in the study database.

The Optuna study (named after the space) lives in the same database as medbench studies (``sqlite:///DIR/study.db``
or a PostgreSQL URL), so a tune is resumable and shared: every worker (a local process, a Ray task, a second
``medbench tune`` on another host) runs trials of the one study until ``trials`` of them have ended (complete,
pruned, or failed with a reason). Each trial trains an ordinary run into ``DIR/runs/NNNN`` and is also a row of the
``runs`` table (study = the tune's name). A trial left running by a killed process is failed and retried: at once
when the process was on this host (its pid is gone), otherwise when its Optuna heartbeat is older than
``GRACE_S``. A pruned trial's folder is removed (Optuna keeps its per-epoch values).

At the end: ``trials.csv``, ``best.yaml`` (the best trial's full RunConfig; ``medbench train --config`` with the same
torch threads reproduces it) and ``report.html``. Optuna is an extra (``medbench[tune]``), imported here lazily.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import update

from medbench.config import dump_config
from medbench.errors import MedbenchError
from medbench.estimate import estimate_config
from medbench.fileio import write_csv, write_text
from medbench.rundir import CV_SUMMARY, FOLDS, HISTORY, claim, read_metrics
from medbench.study.executor import RAY_OBJECT_STORE, available_cpus, threads_per_worker
from medbench.study.grid import canonical_json
from medbench.study.store import DB_NAME, Store, default_url, pid_alive, runs, this_host
from medbench.study.tune_space import TuneSpace, load_space
from medbench.tracking import check_track

RUNS_DIR, TRIALS, BEST, REPORT = "runs", "trials.csv", "best.yaml", "report.html"
HEARTBEAT_S, GRACE_S = 10, 60  # a trial whose heartbeat is a minute old is taken for dead
WAIT_S = 2.0  # poll while the last trials run elsewhere
SPACE_ATTR = "medbench_space"


def _optuna():
    try:
        import optuna
    except ImportError:
        raise MedbenchError("medbench tune needs Optuna: pip install 'medbench[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported by medbench's own lines
    return optuna


@contextmanager
def _quiet_optuna():
    """Optuna's heartbeat and retry are 'experimental' and warn on every use; medbench relies on them knowingly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=Warning, module=r"optuna(\.|$)")
        warnings.filterwarnings("ignore", message=r".*(experimental|deprecated).*")
        yield


def _retry_callback():
    from optuna import storages

    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    return retry(max_retry=2)


def one_line(text: Any) -> str:
    return " ".join(str(text).split())[:2000]


def _storage(url: str):
    _optuna()
    from optuna.storages import RDBStorage

    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with _quiet_optuna():
            return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=_retry_callback())
    except Exception as e:  # noqa: BLE001 - SQLAlchemy and Optuna raise several types for an unusable URL
        raise MedbenchError(f"cannot open the tune database: {one_line(e)[:300]}") from None


def _space_key(space: TuneSpace) -> str:
    """What makes two space files one search: the fixed settings, the dimensions and the metric."""
    return json.dumps({"fixed": space.fixed, "space": [d.describe() for d in space.dims],
                       "names": [d.name for d in space.dims], "metric": space.metric}, sort_keys=True, default=str)


def _sampler_and_pruner(space: TuneSpace, worker: int, started: int, trials: int):
    optuna = _optuna()
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
    optuna = _optuna()
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

        optuna = _optuna()
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


# ---- workers --------------------------------------------------------------------------------------------------

def _counted(t) -> bool:
    """Trials that use up the budget: complete, pruned, or failed with a reason (a killed one is retried)."""
    state = t.state.name
    return state in ("COMPLETE", "PRUNED") or (state == "FAIL" and "error" in t.user_attrs)


def tally(study) -> dict[str, int]:
    out = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0, "interrupted": 0}
    for t in study.get_trials(deepcopy=False):
        state = t.state.name
        if state == "FAIL":
            out["failed" if "error" in t.user_attrs else "interrupted"] += 1
        else:
            out[state.lower()] = out.get(state.lower(), 0) + 1
    out["ended"] = out["complete"] + out["pruned"] + out["failed"]
    return out


def fail_dead_trials(study) -> list[int]:
    """Trials left RUNNING by a dead process of this host: failed and queued again at once (other hosts' by the
    heartbeat); their unfinished folders removed."""
    optuna = _optuna()
    host, failed = this_host(), []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("host") != host or pid_alive(t.user_attrs.get("pid")):
            continue
        try:
            if not study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        with _quiet_optuna():
            _retry_callback()(study, study._storage.get_trial(t._trial_id))
        if t.user_attrs.get("run_dir"):
            shutil.rmtree(t.user_attrs["run_dir"], ignore_errors=True)
        failed.append(t.number)
    return failed


def work(space: TuneSpace, out: str | os.PathLike, url: str, *, trials: int, worker: int = 0,
         threads: int | None = None, data_dir=None, track: str | None = None, quiet: bool = True) -> int:
    """A worker: run trials of the study until ``trials`` have ended; returns how many this worker ran."""
    optuna = _optuna()
    if threads:
        import torch

        torch.set_num_threads(threads)
    study = open_study(space, url, worker=worker, trials=trials)
    ran = 0
    with Store(url) as store:
        objective = Objective(space, Path(out), store, data_dir=data_dir, track=track, quiet=quiet)
        while True:
            fail_dead_trials(study)
            with _quiet_optuna():
                optuna.storages.fail_stale_trials(study)
            counts = tally(study)
            if counts["ended"] >= trials:
                return ran
            if counts["ended"] + counts["running"] >= trials:  # the last trials run elsewhere: wait for them
                time.sleep(WAIT_S)
                continue
            with _quiet_optuna():
                study.optimize(objective, n_trials=1, catch=(MedbenchError,), gc_after_trial=False)
            ran += 1


def _worker_main(space, out, url, trials, worker, threads, data_dir, track, quiet) -> None:
    try:
        work(space, out, url, trials=trials, worker=worker, threads=threads, data_dir=data_dir, track=track,
             quiet=quiet)
    except KeyboardInterrupt:
        pass


def _run_local(space, out, url, *, trials, workers, data_dir, track, quiet) -> None:
    if workers == 1:
        work(space, out, url, trials=trials, data_dir=data_dir, track=track, quiet=quiet)
        return
    ctx = mp.get_context("spawn")
    threads = threads_per_worker(workers)
    procs = [ctx.Process(target=_worker_main, args=(space, str(out), url, trials, i, threads, data_dir, track, quiet),
                         name=f"medbench-tune-{i}") for i in range(workers)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(10)
        raise
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad and not quiet:
        print(f"{len(bad)} tune worker(s) exited with code(s) {bad}; their trials are retried", flush=True)


def _run_ray(space, out, url, *, trials, workers, address, cpus_per_run, gpus_per_run, data_dir, track,
             quiet) -> None:
    """``workers`` Ray tasks, each a worker of the shared study (the nodes must see the database, the data and
    DIR at the same paths)."""
    try:
        import ray
    except ImportError:
        raise MedbenchError("the ray executor needs Ray: pip install 'medbench[ray]'") from None
    started = False
    if not ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k.startswith("MEDBENCH_")}
        kw: dict[str, Any] = dict(runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=not quiet,
                                  logging_level="WARNING")
        if address is None and not os.environ.get("RAY_ADDRESS"):
            kw.update(num_cpus=available_cpus(), object_store_memory=RAY_OBJECT_STORE)
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise MedbenchError(f"cannot start or reach Ray{f' at {address}' if address else ''}: "
                                f"{one_line(e)[:300]}") from None
        started = True
    refs: list = []
    try:
        res = ray.cluster_resources()
        cpus = cpus_per_run or max(1, int(res.get("CPU", 1)) // workers)
        gpus = gpus_per_run if gpus_per_run is not None else (1 if res.get("GPU", 0) >= 1 else 0)
        if cpus > res.get("CPU", 0) or gpus > res.get("GPU", 0):
            raise MedbenchError(f"each tune worker asks for {cpus} CPU / {gpus} GPU but the Ray cluster has "
                                f"{res.get('CPU', 0):g} CPU / {res.get('GPU', 0):g} GPU")
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_worker_main)
        refs = [task.remote(space, str(out), url, trials, i, max(1, int(cpus)), data_dir, track, quiet)
                for i in range(workers)]
        for ref in refs:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as e:  # a worker died: its trial is retried by the others or a rerun
                if not quiet:
                    print(f"ray: a tune worker died ({type(e).__name__})", flush=True)
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


# ---- the search and its outputs -------------------------------------------------------------------------------

def run_tune(space: TuneSpace | str | os.PathLike, out: str | os.PathLike, *, trials: int | None = None,
             workers: int = 1, db_url: str | None = None, executor: str = "local", data_dir=None,
             track: str | None = None, quiet: bool = True, address: str | None = None,
             cpus_per_run: float | None = None, gpus_per_run: float | None = None) -> dict[str, Any]:
    """Run (or continue) the search of ``space`` into ``out`` until ``trials`` (default: the file's) have ended;
    write trials.csv, best.yaml and report.html. Returns the counts and the best trial."""
    space = space if isinstance(space, TuneSpace) else load_space(space)
    trials = space.trials if trials is None else trials
    if trials < 1 or workers < 1:
        raise MedbenchError(f"--trials and --workers must be >= 1 (got {trials} and {workers})")
    if executor not in ("local", "ray"):
        raise MedbenchError(f"unknown executor '{executor}'; valid: local, ray")
    if executor == "local" and (address or cpus_per_run or gpus_per_run):
        raise MedbenchError("--address, --cpus-per-run and --gpus-per-run are for --executor ray")
    if track:  # reached once, before any trial; every worker (a Ray node too) gets the same resolved URI
        track = f"mlflow:{check_track(track)}"
    out = claim(out, "tune", ours=(RUNS_DIR, TRIALS, DB_NAME, BEST))
    out.mkdir(parents=True, exist_ok=True)
    url = db_url or default_url(out)
    with Store(url) as store:  # first: the SQLite file is made in WAL mode, shared by Optuna's connections
        store.reset_stale()
    study = open_study(space, url, trials=trials)
    fail_dead_trials(study)
    if not quiet:
        c = tally(study)
        print(f"tune '{space.name}': {c['ended']} of {trials} trials ended ({c['complete']} complete, {c['pruned']} "
              f"pruned, {c['failed']} failed), {c['running']} running elsewhere; {workers} worker(s)", flush=True)
    try:
        if executor == "ray":
            _run_ray(space, out, url, trials=trials, workers=workers, address=address, cpus_per_run=cpus_per_run,
                     gpus_per_run=gpus_per_run, data_dir=data_dir, track=track, quiet=quiet)
        else:
            _run_local(space, out, url, trials=trials, workers=workers, data_dir=data_dir, track=track, quiet=quiet)
    finally:
        fail_dead_trials(study)
        summary = write_outputs(space, out, study, quiet=quiet)
    return summary


def trial_rows(space: TuneSpace, study) -> list[dict[str, Any]]:
    """trials.csv: number, state, value, one column per searched setting, epochs run, seconds, threads, run dir,
    error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        state = t.state.name.lower()
        if state == "fail" and "error" not in ua:
            state = "interrupted"
        row: dict[str, Any] = {"number": t.number, "state": state, "value": t.value}
        row.update({d.name: t.params.get(d.name) for d in space.dims})
        row.update({"epochs_run": ua.get("epochs"), "seconds": ua.get("seconds"), "threads": ua.get("threads"),
                    "run_dir": ua.get("run_dir") if state == "complete" else None, "error": ua.get("error")})
        rows.append(row)
    return rows


def best_trial(study):
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return study.best_trial if complete else None


def write_best(space: TuneSpace, out: Path, study) -> Path | None:
    """best.yaml: the best trial's full resolved RunConfig, with a header saying where it came from."""
    best = best_trial(study)
    if best is None:
        return None
    cfg = space.config({d.name: _decoded(d, best.params[d.name]) for d in space.dims if d.name in best.params})
    threads = best.user_attrs.get("threads")
    header = (f"# best trial {best.number} of tune '{space.name}': val {space.metric} {best.value!r}\n"
              f"# run: {best.user_attrs.get('run_dir')}\n"
              f"# trained with {threads} torch thread(s); to reproduce it exactly on this machine:\n"
              f"#   OMP_NUM_THREADS={threads} medbench train --config best.yaml --out RUN_DIR\n")
    path = out / BEST
    write_text(path, header + dump_config(cfg))
    return path


def _decoded(dim, value):
    return json.loads(value) if dim.encoded else value


def write_outputs(space: TuneSpace, out: Path, study, *, quiet: bool = True) -> dict[str, Any]:
    from medbench.study.tune_report import write_tune_report

    rows = trial_rows(space, study)
    write_csv(out / TRIALS, rows)
    write_best(space, out, study)
    best = best_trial(study)
    try:
        write_tune_report(space, study, out / REPORT)
    except (MedbenchError, ValueError, RuntimeError) as e:  # the trials and best.yaml are safe
        if not quiet:
            print(f"tune report not written: {one_line(e)}", flush=True)
    counts = tally(study)
    summary = {"name": space.name, **{k: counts[k] for k in ("ended", "complete", "pruned", "failed", "running")},
               "best": None if best is None else {"number": best.number, "value": best.value,
                                                  "params": dict(best.params),
                                                  "run_dir": best.user_attrs.get("run_dir")}}
    return summary


def plan(space: TuneSpace, *, trials: int | None = None, workers: int = 1, data_dir=None) -> dict[str, Any]:
    """What a dry run shows: the space, and the time one trial and the whole search would take (from a measured
    warm-up of the reference trial: every range at its high end)."""
    trials = space.trials if trials is None else trials
    info: dict[str, Any] = {"name": space.name, "metric": space.metric, "direction": space.direction,
                            "pruner": space.pruner, "trials": trials, "workers": workers, "fixed": space.fixed,
                            "space": {d.name: d.describe() for d in space.dims}, "estimate": None}
    try:
        est = estimate_config(space.reference(), data_dir=data_dir)
    except NotImplementedError:
        info["estimate_note"] = "no duration estimate: medbench.estimate is not available in this version"
        return info
    except MedbenchError as e:
        info["estimate_note"] = f"no duration estimate: {one_line(e)}"
        return info
    # workers share the cores: the whole search is about trials x one trial at all cores, less what pruning saves
    info["estimate"] = {"trial_seconds": est.seconds, "trial": est.text(), "total_seconds": est.seconds * trials}
    return info
