"""Checks of a run directory before a command works on it."""
from __future__ import annotations

from pathlib import Path

from medbench.config import PROVENANCE_KEY, load_config, read_yaml
from medbench.errors import MedbenchError
from medbench.fileio import read_json, read_text
from medbench.rundir import CARD_JSON, CHECKPOINT_INDEX, CHECKPOINTS, CONFIG, DATA_SPEC, HISTORY, METRICS

# a run directory's JSON files: what to do when one is damaged
_INDEX = f"{CHECKPOINTS}/{CHECKPOINT_INDEX}"
_RUN_JSON = {
    METRICS: "restore it from a backup, or run `medbench evaluate {run}` for a fresh evaluation in "
             "{run}/evaluations/NAME",
    DATA_SPEC: "delete it: medbench rebuilds it from the run's dataset",
    _INDEX: "restore it from a backup, or evaluate without --ensemble",
    CARD_JSON: "run `medbench card {run}` to rewrite it",
}


def check_run_dir(run_dir: Path) -> None:
    """Read a run directory's own files before any work, so a damaged or hostile one is one line naming the file
    and the fix (instead of a traceback from deep inside evaluate, report, predict or export)."""
    config = run_dir / CONFIG
    if run_dir.is_file():
        raise MedbenchError(f"{run_dir} is a file, not a run directory; give the folder `medbench train --out` made")
    if not config.is_file():
        raise MedbenchError(f"{run_dir} is not a run directory ({CONFIG} missing); give the folder "
                            f"`medbench train --out` made")
    raw = read_yaml(config)
    provenance = raw.get(PROVENANCE_KEY) if isinstance(raw, dict) else None
    if provenance is not None and not isinstance(provenance, dict):
        raise MedbenchError(f"{config}: '{PROVENANCE_KEY}' must be a mapping, got {type(provenance).__name__}; "
                            f"restore the file `medbench train` wrote")
    load_config(config)
    for rel, fix in _RUN_JSON.items():
        if not (run_dir / rel).exists():
            continue
        fix = fix.format(run=run_dir)
        data = read_json(run_dir / rel, rel, fix, kind=list if rel == _INDEX else dict)
        bad = [s for s in ("train", "val", "test") if rel == METRICS and not isinstance(data.get(s, {}), dict)]
        if bad:
            raise MedbenchError(f"{run_dir / rel}: '{bad[0]}' holds a {type(data[bad[0]]).__name__}, not a record "
                                f"of metrics; {fix}")
    if (run_dir / HISTORY).exists():
        read_text(run_dir / HISTORY, HISTORY, "delete it (the report then leaves out the curves)")
