"""Later evaluations of a run: each in its own ``evaluations/NAME/`` (metrics.json, predictions/, evaluation.json),
named by the user or after its settings, never written over, published whole (built beside, then renamed)."""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from medbench.errors import MedbenchError
from medbench.fileio import read_json, write_json
from medbench.rundir.layout import EVALUATION_JSON, EVALUATIONS, evaluation_dir

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
PARTIAL = ".partial"  # an evaluation being written: evaluations/.NAME.partial/


def derived_name(splits: list[str], all_splits: tuple[str, ...], ensemble: int, tta: bool, bootstrap: int,
                 seed: int, extra: tuple[str, ...] = ()) -> str:
    """A name saying what the evaluation scored and how: ``plain``, ``ensemble3``, ``test-tta-bootstrap1000``,
    ``test-plain``. ``extra``: more parts (e.g. a corruption preset)."""
    parts = [f"ensemble{ensemble}"] if ensemble > 1 else []
    parts += ["tta"] if tta else []
    parts += [f"bootstrap{bootstrap}" + (f"-seed{seed}" if seed else "")] if bootstrap else []
    parts += list(extra)
    which = [] if list(splits) == list(all_splits) else ["-".join(splits)]
    return "-".join(which + (parts or ["plain"]))


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name.endswith(PARTIAL):
        raise MedbenchError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (up to 100, starting with a "
                            f"letter or digit)")
    return name


def free_name(run_dir: str | os.PathLike, name: str, given: bool) -> str:
    """``name`` when no evaluation holds it; a given name that is taken is refused, a derived one gets ``-2``,
    ``-3``, ... (call under the run's lock)."""
    check_name(name)
    if not evaluation_dir(run_dir, name).exists():
        return name
    if given:
        raise MedbenchError(f"{evaluation_dir(run_dir, name)} already exists: evaluations are never overwritten; "
                            f"choose another --name")
    k = 2
    while evaluation_dir(run_dir, f"{name}-{k}").exists():
        k += 1
    return f"{name}-{k}"


def staging_dir(run_dir: str | os.PathLike, name: str) -> Path:
    """An empty folder to build evaluation ``name`` in (under the run's lock; a killed writer's leftovers go)."""
    root = Path(run_dir) / EVALUATIONS
    if root.is_dir():
        for p in root.glob(f".*{PARTIAL}"):
            shutil.rmtree(p, ignore_errors=True)
    path = root / f".{name}{PARTIAL}"
    path.mkdir(parents=True)
    return path


def publish(staging: Path, run_dir: str | os.PathLike, name: str) -> Path:
    """Move a finished evaluation into place (one rename: readers see all of it or nothing)."""
    final = evaluation_dir(run_dir, name)
    os.rename(staging, final)
    return final


def write_settings(folder: Path, name: str, splits: list[str], setting: dict, seed: int, data_md5: str | None,
                   version: str) -> None:
    """evaluation.json: what the evaluation ran with (``setting``: ensemble, tta, bootstrap[, members])."""
    write_json(folder / EVALUATION_JSON, {"name": name, "splits": list(splits), **setting, "seed": seed,
                                          "data_md5": data_md5, "medbench_version": version,
                                          "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def list_evaluations(run_dir: str | os.PathLike) -> list[str]:
    """The names of the run's finished evaluations, oldest first."""
    root = Path(run_dir) / EVALUATIONS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / EVALUATION_JSON).is_file()]
    return [p.name for p in sorted(done, key=lambda p: ((p / EVALUATION_JSON).stat().st_mtime, p.name))]


def read_evaluation(run_dir: str | os.PathLike, name: str) -> dict:
    """evaluation ``name``'s settings (evaluation.json); an unknown name is one error listing the known ones."""
    path = evaluation_dir(run_dir, check_name(name)) / EVALUATION_JSON
    if not path.is_file():
        known = list_evaluations(run_dir)
        there = f"it has: {', '.join(known)}" if known else "it has none yet (run `medbench evaluate RUN`)"
        raise MedbenchError(f"no evaluation {name!r} in {Path(run_dir) / EVALUATIONS}; {there}")
    return read_json(path, EVALUATION_JSON, f"delete {path.parent} and evaluate again")
