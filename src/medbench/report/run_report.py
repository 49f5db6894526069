"""``RUN_DIR/report.html``: one self-contained page about a training run.

Everything is inline (see :mod:`.html`), so the file reads offline and can be mailed or archived as it is.

Sources: ``metrics.json`` (summary, gap, threshold, evaluation settings), ``history.csv`` (curves),
``predictions/test.csv`` with the dataset's test labels (ROC, precision-recall, confusion, calibration,
per-class table, confident errors), the saved weights (Grad-CAM) and ``config.yaml`` (configuration,
provenance). A missing or older-format piece leaves a note in its section instead of failing the report.

Steps: :mod:`.inputs` reads the run, :mod:`.analysis` computes what is shown, :mod:`.summary` and
:mod:`.heldout` render the sections, :mod:`.html` the page.
"""
from __future__ import annotations

from pathlib import Path

from medbench.data import ImageDataset
from medbench.fileio import write_text
from medbench.progress import console
from medbench.report.calibration import calibration_sections
from medbench.report.crossval import crossval_sections
from medbench.report.heldout import Section, gradcam_section, heldout_sections
from medbench.report.html import CSS, escape, nav, note, page, png_img, section, table  # noqa: F401  (CSS: below)
from medbench.report.inputs import RunInputs, read_run_inputs
from medbench.report.robustness import robustness_sections
from medbench.report.subgroups import subgroup_sections
from medbench.report.summary import curves_section, metric_sections, page_meta, setup_sections
from medbench.rundir import REPORT, evaluation_dir, locked, require_run_dir

# study/report.py still imports CSS and these old private names from here: drop them once it imports
# medbench.report.html
_e, _note, _png_img, _table = escape, note, png_img, table


def write_run_report(run_dir, *, data_dir=None, dataset: ImageDataset | None = None, quiet: bool = True,
                     evaluation: str | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` (atomically) and return its path.

    ``dataset``: an already loaded :class:`~medbench.data.ImageDataset`; otherwise the run's dataset is
    loaded from ``data_dir`` (or the default data root) as ``medbench evaluate`` does. ``evaluation``: show
    ``evaluations/NAME`` instead of the training record, in ``RUN_DIR/evaluations/NAME/report.html``.
    """
    run_dir = require_run_dir(run_dir, "report")
    with locked(run_dir, "medbench report"):
        inputs = read_run_inputs(run_dir, data_dir=data_dir, dataset=dataset, quiet=quiet, evaluation=evaluation)
        sections = ((crossval_sections(run_dir) if not evaluation else []) + metric_sections(inputs.metrics)
                    + subgroup_sections(inputs.metrics)
                    + [curves_section(inputs.history)] + heldout_sections(inputs)
                    + calibration_sections(evaluation_dir(run_dir, evaluation) if evaluation else run_dir)
                    + robustness_sections(run_dir)
                    + [gradcam_section(inputs)] + setup_sections(inputs))
        out = (evaluation_dir(run_dir, evaluation) if evaluation else run_dir) / REPORT
        write_text(out, render_page(inputs, sections))
    if not quiet:
        console.print(f"wrote {out}")
    return out


def render_page(inputs: RunInputs, sections: list[Section]) -> str:
    """The whole document: title, meta line, page-level notes, links to the sections, the sections."""
    shown = f'<p class="meta" id="shown-record">{escape(inputs.shown)}</p>' if inputs.shown else ""
    body = (page_meta(inputs) + shown + "".join(note(n) for n in inputs.notes)
            + nav([(sid, h) for sid, h, _ in sections]) + "".join(section(sid, h, b) for sid, h, b in sections))
    return page(f"Run report: {inputs.ds.name} · {inputs.cfg.model}", body)
