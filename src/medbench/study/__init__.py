"""Studies: a grid of run settings, a results store (SQLAlchemy: SQLite by default, PostgreSQL by URL), and
executors that train the runs resumably.

    from medbench.study import load_study, run_study, study_status
    counts = run_study(load_study("examples/tiny.yaml"), "studies/tiny", workers=2)

Names are imported lazily (``python -m medbench.study.runner`` must not find its module imported already).
"""
from __future__ import annotations

import importlib

_API = {"Study": "grid", "StudyRun": "grid", "load_study": "grid", "build_study": "grid", "run_id": "grid",
        "run_study": "runner", "study_status": "runner", "Store": "store", "write_study_report": "report"}
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f"medbench.study.{_API[name]}"), name)
    raise AttributeError(f"module 'medbench.study' has no attribute '{name}'")


def __dir__():
    return sorted(__all__)
