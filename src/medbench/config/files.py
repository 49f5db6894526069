"""Config files: YAML read with the safe loader, ``--set KEY=VALUE`` overrides, and config.yaml written back."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from medbench.config.recipes import resolve_config
from medbench.config.run_config import RunConfig
from medbench.errors import MedbenchError

PROVENANCE_KEY = "provenance"  # written beside the config, ignored when it is read back


def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """A YAML file through the safe loader (never constructs objects); missing or invalid: one clear error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MedbenchError(f"{what} {path} not found; check the path") from None
    except IsADirectoryError:
        raise MedbenchError(f"{path} is a folder, not a {what}; give the YAML file itself (a run's is "
                            f"RUN_DIR/config.yaml)") from None
    except UnicodeDecodeError as e:
        raise MedbenchError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the {what} as UTF-8") from None
    except OSError as e:
        raise MedbenchError(f"{path}: cannot read the {what} ({e.strerror or e}); check the path and its "
                            f"permissions") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise MedbenchError(f"{path}: not valid YAML{where} ({problem}); fix the syntax there") from None
    return {} if data is None else data


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config (safe loader) into a plain dict; the provenance block is dropped."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise MedbenchError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    data.pop(PROVENANCE_KEY, None)
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["epochs=3", "milestones=[0.5]"]`` -> settings; values are read as YAML (safe loader)."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MedbenchError(f"--set expects KEY=VALUE, got '{item}'")
        try:
            settings[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            problem = " ".join(str(getattr(e, "problem", None) or e).split())
            raise MedbenchError(f"--set {item}: the value is not valid YAML ({problem}); fix or quote it, e.g. "
                                f"--set milestones=[0.5,0.75]") from None
    return settings


def load_config(path: str | os.PathLike) -> RunConfig:
    return resolve_config(read_config_file(path), where=str(path))


def dump_config(config: RunConfig, provenance: dict[str, Any] | None = None) -> str:
    """config.yaml's text: the flat fields (never the derived ``source``), then the provenance block."""
    text = yaml.safe_dump(config.model_dump(), sort_keys=False)
    if provenance:
        text += yaml.safe_dump({PROVENANCE_KEY: provenance}, sort_keys=False)
    return text
