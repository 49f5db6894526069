"""Experiment tracking: ``--track mlflow[:URI]`` sends a run's settings, per-epoch curves, final metrics and files
to an MLflow tracking server (extra ``medbench[mlflow]``); without ``--track`` nothing is imported or sent.

A tracker is a handler (:mod:`medbench.handlers`): ``epoch_end(loop, state, row)`` after every epoch, then
``run_end(out)`` once the run's metrics, card and report are written. :func:`open_tracker` is a context manager:
a run that raises is marked failed on the server.
"""
from __future__ import annotations

import contextlib
from pathlib import Path


class NoTracker:
    """Not tracking: every hook does nothing."""

    def epoch_end(self, loop, state, row: dict) -> None:
        pass

    def run_end(self, out: Path) -> None:
        pass


@contextlib.contextmanager
def open_tracker(track: str | None, cfg, out: Path, experiment: str | None = None, enabled: bool = True):
    """The tracker for ``track`` (``mlflow`` or ``mlflow:URI``; None: :class:`NoTracker`), closed on exit.

    ``experiment``: the MLflow experiment the run joins (a study's or a tune's name; default: the dataset).
    ``enabled``: False on every rank but the main one.
    """
    if not track or not enabled:
        yield NoTracker()
        return
    raise NotImplementedError("--track: being built (issue 22)")
