"""Executors: who trains a study's runs. ``local``: N processes on this machine pulling runs from the store.

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

EXECUTORS = ("local",)


@dataclass(frozen=True)
class Job:
    """What a worker needs to train one run (plain data: it crosses process boundaries)."""
    id: str
    run_dir: str
    config: dict[str, Any]


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
    from medbench.run import METRICS, train

    run_dir = Path(job.run_dir)
    t0 = time.perf_counter()
    try:
        if run_dir.exists():  # left by an interrupted attempt: train() refuses an existing run
            shutil.rmtree(run_dir)
        train(job.config, run_dir, quiet=True, report=report, data_dir=data_dir)
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
    except Exception as e:  # a bug or a crash inside training: recorded, the study goes on
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
    ctx = mp.get_context("spawn")
    threads = threads_per_worker(workers)
    procs = [ctx.Process(target=_worker_main, args=(db_url, jobs, threads, report, data_dir, quiet),
                         name=f"medbench-study-{i}") for i in range(workers)]
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
        print(f"{len(bad)} worker(s) exited with code(s) {bad}; their unfinished runs are marked failed",
              flush=True)


def run_jobs(executor: str, db_url: str, jobs: list[Job], **kwargs) -> None:
    if executor == "local":
        run_local(db_url, jobs, **kwargs)
    elif executor == "ray":
        raise MedbenchError("the 'ray' executor is not available yet; use --executor local")
    else:
        raise MedbenchError(f"unknown executor '{executor}'; valid: {', '.join(EXECUTORS)}")
