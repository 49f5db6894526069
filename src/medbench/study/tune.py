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
import os
import shutil
import time
from pathlib import Path
from typing import Any

from medbench.config import dump_config
from medbench.errors import MedbenchError
from medbench.estimate import estimate_config
from medbench.fileio import write_csv, write_text
from medbench.rundir import claim
from medbench.study.executor import ray_resources, run_processes, start_ray, threads_per_worker
from medbench.study.store import DB_NAME, Store, default_url, pid_alive, this_host
from medbench.study.tune_space import TuneSpace, load_space
from medbench.study.tune_trial import (
    RUNS_DIR,
    Objective,
    one_line,
    open_study,
    optuna_or_error,
    quiet_optuna,
    retry_callback,
)
from medbench.tracking import check_track

TRIALS, BEST, REPORT = "trials.csv", "best.yaml", "report.html"
WAIT_S = 2.0  # poll while the last trials run elsewhere


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
    optuna = optuna_or_error()
    host, failed = this_host(), []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("host") != host or pid_alive(t.user_attrs.get("pid")):
            continue
        try:
            if not study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        with quiet_optuna():
            retry_callback()(study, study._storage.get_trial(t._trial_id))
        if t.user_attrs.get("run_dir"):
            shutil.rmtree(t.user_attrs["run_dir"], ignore_errors=True)
        failed.append(t.number)
    return failed


def work(space: TuneSpace, out: str | os.PathLike, url: str, *, trials: int, worker: int = 0,
         threads: int | None = None, data_dir=None, track: str | None = None, quiet: bool = True) -> int:
    """A worker: run trials of the study until ``trials`` have ended; returns how many this worker ran."""
    optuna = optuna_or_error()
    if threads:
        import torch

        torch.set_num_threads(threads)
    study = open_study(space, url, worker=worker, trials=trials)
    ran = 0
    with Store(url) as store:
        objective = Objective(space, Path(out), store, data_dir=data_dir, track=track, quiet=quiet)
        while True:
            fail_dead_trials(study)
            with quiet_optuna():
                optuna.storages.fail_stale_trials(study)
            counts = tally(study)
            if counts["ended"] >= trials:
                return ran
            if counts["ended"] + counts["running"] >= trials:  # the last trials run elsewhere: wait for them
                time.sleep(WAIT_S)
                continue
            with quiet_optuna():
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
    threads = threads_per_worker(workers)
    bad = run_processes(_worker_main, [(space, str(out), url, trials, i, threads, data_dir, track, quiet)
                                       for i in range(workers)], "medbench-tune")
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
    started = start_ray(ray, address, quiet)
    refs: list = []
    try:
        cpus, gpus = ray_resources(ray.cluster_resources(), workers, cpus_per_run, gpus_per_run, "each tune worker")
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
