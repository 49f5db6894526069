"""Reports: ``RUN_DIR/report.html`` for one run (:func:`write_run_report`); figures in :mod:`.figures`."""
from medbench.report.run_report import write_run_report

__all__ = ["write_run_report"]
