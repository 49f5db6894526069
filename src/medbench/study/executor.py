"""Executors: who trains a study's runs. ``local``: N processes on this machine pulling runs from the store;
``ray``: one Ray task per run, with CPU (and GPU) resources, on a local Ray instance or an existing cluster.

A worker takes a run only by claiming it in the store (a conditional UPDATE), so workers, and several
``run_study`` calls on one database, never train the same id twice at once. A run is 'done' only after
``train()`` returned and its metrics.json exists; anything else leaves it 'failed' with a one-line error (or, if
the process dies, 'running' until :meth:`Store.reset_stale` marks it 'failed' / "interrupted").
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbench.errors import MedbenchError
from medbench.rundir import METRICS

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Job:
    """What a worker needs to train one run (plain data: it crosses process boundaries). ``track``: the run's
    ``--track`` value (:mod:`medbench.tracking`), logged into the MLflow experiment ``experiment``."""
    id: str
    run_dir: str
    config: dict[str, Any]
    track: str | None = None
    experiment: str | None = None


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, available_cpus() // max(1, workers))


def execute_job(store, job: Job, *, report: bool = False, data_dir=None, pid: int | None = None,
                host: str | None = None) -> str:
    """Train one already-claimed run and record the outcome. Returns the final status."""
    from medbench.run import train  # torch: imported by the worker that trains, not by the study's process

    run_dir = Path(job.run_dir)
    t0 = time.perf_counter()
    try:
        if run_dir.exists():  # left by an interrupted attempt: train() refuses an existing run
            shutil.rmtree(run_dir)
        train(job.config, run_dir, quiet=True, report=report, data_dir=data_dir, track=job.track,
              experiment=job.experiment)
        path = run_dir / METRICS
        if not path.is_file():
            raise MedbenchError(f"training returned but {path} is missing")
        text = path.read_text(encoding="utf-8")
        json.loads(text)
    except KeyboardInterrupt:
        store.mark_failed(job.id, "interrupted", time.perf_counter() - t0, pid=pid, host=host)
        raise
    except MedbenchError as e:
        store.mark_failed(job.id, str(e), time.perf_counter() - t0, pid=pid, host=host)
        return "failed"
    except Exception as e:  # noqa: BLE001 - a bug or a crash inside training: recorded, the study goes on
        store.mark_failed(job.id, f"internal error: {type(e).__name__}: {e}", time.perf_counter() - t0,
                          pid=pid, host=host)
        return "failed"
    store.mark_done(job.id, text, time.perf_counter() - t0, pid=pid, host=host)
    return "done"


def _say(quiet: bool, total: int, job: Job, status: str, store) -> None:
    if quiet:
        return
    row = store.get(job.id) or {}
    extra = ""
    if status == "done" and row.get("metrics"):
        test = json.loads(row["metrics"]).get("test") or {}
        auc = test.get("auc")
        extra = f"  test auc {'n/a' if auc is None else f'{auc:.4f}'}"
    elif row.get("error"):
        extra = f"  {row['error']}"
    print(f"[{os.getpid()}] {job.id} {status} in {row.get('seconds') or 0:.1f} s{extra}", flush=True)


def work(db_url: str, jobs: list[Job], *, threads: int | None = None, report: bool = False, data_dir=None,
         quiet: bool = True) -> dict[str, int]:
    """A worker: go through ``jobs`` once, training each one this process manages to claim ('pending' only:
    runs that fail in this attempt are not retried by it)."""
    from medbench.study.store import Store, this_host

    if threads:
        import torch

        torch.set_num_threads(threads)
    pid, host = os.getpid(), this_host()
    done = {"done": 0, "failed": 0}
    with Store(db_url) as store:
        for job in jobs:
            if not store.claim(job.id, pid, host, statuses=("pending",), run_dir=job.run_dir):
                continue
            status = execute_job(store, job, report=report, data_dir=data_dir, pid=pid, host=host)
            done[status] += 1
            _say(quiet, len(jobs), job, status, store)
    return done


def _worker_main(db_url: str, jobs: list[Job], threads: int, report: bool, data_dir, quiet: bool) -> None:
    try:
        work(db_url, jobs, threads=threads, report=report, data_dir=data_dir, quiet=quiet)
    except KeyboardInterrupt:
        pass


def run_local(db_url: str, jobs: list[Job], *, workers: int = 1, report: bool = False, data_dir=None,
              quiet: bool = True) -> None:
    """Train ``jobs`` with ``workers`` processes ('spawn'); one worker runs in this process."""
    if workers < 1:
        raise MedbenchError(f"--workers must be >= 1 (got {workers})")
    if workers == 1 or len(jobs) <= 1:
        work(db_url, jobs, report=report, data_dir=data_dir, quiet=quiet)
        return
    workers = min(workers, len(jobs))
    bad = run_processes(_worker_main, [(db_url, jobs, threads_per_worker(workers), report, data_dir, quiet)] * workers,
                        "medbench-study")
    if bad and not quiet:
        print(f"{len(bad)} worker(s) exited with code(s) {bad}; their unfinished runs are marked failed",
              flush=True)


def run_processes(target, args: list[tuple], name: str) -> list[int]:
    """One 'spawn' process per argument tuple, all joined; Ctrl-C terminates them. Returns the non-zero exit
    codes (a worker killed by the OOM killer or a signal)."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=a, name=f"{name}-{i}") for i, a in enumerate(args)]
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
    return [p.exitcode for p in procs if p.exitcode]


def _ray_task(db_url: str, job: Job, threads: int, report: bool, data_dir) -> str:
    """One run inside a Ray worker: claim it in the store (so a run is never trained twice at once, even by
    several drivers), train it, record the outcome."""
    import torch

    from medbench.study.store import Store, this_host

    torch.set_num_threads(threads)
    pid, host = os.getpid(), this_host()
    with Store(db_url) as store:
        if not store.claim(job.id, pid, host, statuses=("pending",), run_dir=job.run_dir):
            return "skipped"
        return execute_job(store, job, report=report, data_dir=data_dir, pid=pid, host=host)


RAY_OBJECT_STORE = 256 * 2 ** 20  # runs pass only ids and paths: a small store spares /dev/shm


def run_ray(db_url: str, jobs: list[Job], *, workers: int = 1, address: str | None = None,
            cpus_per_run: float | None = None, gpus_per_run: float | None = None, report: bool = False,
            data_dir=None, quiet: bool = True) -> None:
    """Each job as a Ray task. Without ``address`` (and no ``RAY_ADDRESS``) a local Ray instance with this
    machine's CPUs is started and stopped again; ``address`` joins an existing cluster (whose nodes must see
    the database, the data and the study folder at the same paths).

    Resources per run: ``cpus_per_run`` (default: the cluster's CPUs / ``workers``, so ``workers`` runs at
    once; torch uses that many threads), ``gpus_per_run`` (default 1 when the cluster has GPUs, else 0).
    ``MEDBENCH_*`` and ``MLFLOW_*`` environment variables travel to the workers.
    """
    try:
        import ray
    except ImportError:
        raise MedbenchError("the ray executor needs Ray: pip install 'medbench[ray]'") from None
    if workers < 1:
        raise MedbenchError(f"--workers must be >= 1 (got {workers})")
    started = start_ray(ray, address, quiet)
    pending: dict = {}
    try:
        resources = ray.cluster_resources()
        cpus, gpus = ray_resources(resources, workers, cpus_per_run, gpus_per_run, "each run")
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_ray_task)
        threads = max(1, int(cpus))
        pending = {task.remote(db_url, job, threads, report, data_dir): job for job in jobs}
        if not quiet:
            print(f"ray: {len(jobs)} runs, {cpus:g} CPU / {gpus:g} GPU each, cluster {resources.get('CPU', 0):g} CPU "
                  f"/ {resources.get('GPU', 0):g} GPU", flush=True)
        from medbench.study.store import Store

        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                status = ray.get(ready[0])
            except ray.exceptions.RayError as e:  # the worker process died (OOM kill, node lost)
                status = "failed"
                with Store(db_url) as store:
                    store.mark_failed(job.id, f"ray task died: {type(e).__name__}")
            if status != "skipped":
                with Store(db_url) as store:
                    _say(quiet, len(jobs), job, status, store)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def start_ray(ray, address: str | None, quiet: bool) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local instance with this machine's CPUs;
    True when this call started it (and must shut it down). ``MEDBENCH_*`` and ``MLFLOW_*`` environment variables
    (a tracking server's credentials, --track) travel to the workers."""
    if ray.is_initialized():
        return False
    env = {k: v for k, v in os.environ.items() if k.startswith(("MEDBENCH_", "MLFLOW_"))}
    kw: dict[str, Any] = dict(runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=not quiet,
                              logging_level="WARNING")
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kw.update(num_cpus=available_cpus(), object_store_memory=RAY_OBJECT_STORE)
    try:
        ray.init(address=address, **kw)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise MedbenchError(f"cannot start or reach Ray{f' at {address}' if address else ''}: "
                            f"{' '.join(str(e).split())[:300]}") from None
    return True


def ray_resources(resources: dict, workers: int, cpus_per_run: float | None, gpus_per_run: float | None,
                  who: str) -> tuple[float, float]:
    """CPUs and GPUs per task: given, else the cluster's CPUs / ``workers`` and one GPU when it has any; refused
    when the cluster cannot hold one such task."""
    cpus = cpus_per_run or max(1, int(resources.get("CPU", 1)) // workers)
    gpus = gpus_per_run if gpus_per_run is not None else (1 if resources.get("GPU", 0) >= 1 else 0)
    if cpus > resources.get("CPU", 0) or gpus > resources.get("GPU", 0):
        raise MedbenchError(f"{who} asks for {cpus} CPU / {gpus} GPU but the Ray cluster has "
                            f"{resources.get('CPU', 0):g} CPU / {resources.get('GPU', 0):g} GPU")
    return cpus, gpus


def run_jobs(executor: str, db_url: str, jobs: list[Job], *, address: str | None = None,
             cpus_per_run: float | None = None, gpus_per_run: float | None = None, **kwargs) -> None:
    if executor == "local":
        if address or cpus_per_run or gpus_per_run:
            raise MedbenchError("--address, --cpus-per-run and --gpus-per-run are for --executor ray")
        run_local(db_url, jobs, **kwargs)
    elif executor == "ray":
        run_ray(db_url, jobs, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, **kwargs)
    else:
        raise MedbenchError(f"unknown executor '{executor}'; valid: {', '.join(EXECUTORS)}")
