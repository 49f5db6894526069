"""The search-space file of ``medbench tune``: the study grid's vocabulary (RunConfig fields) with ranges.

A space file (YAML, safe loader)::

    name: breast-tune
    fixed: {dataset: breastmnist, recipe: fast, epochs: 12}
    space:
      lr: {low: 1.0e-4, high: 1.0e-2, log: true}     # a float range (log-uniform)
      drop_rate: {low: 0.0, high: 0.5}               # a float range
      epochs: {low: 5, high: 20, step: 5}            # an int range: int bounds and an integer setting
      augment: [none, basic]                         # a list: categorical, like a grid axis
    metric: auc            # the validation metric: auc, acc (maximised) or loss (minimised)
    pruner: median         # median | hyperband | none
    trials: 20             # the default of --trials
    seed: 0                # optional: the sampler's seed (each worker adds its own offset)
    report: false          # optional: each trial's report.html

Every key of ``fixed`` and ``space`` must be a RunConfig field, in one of the two only. Each value of the space is
checked against its setting when the file is read (an error names the file and the key); a combination that only
fails together (e.g. ensemble above keep_checkpoints) becomes a failed trial with the reason.
"""
from __future__ import annotations

import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from medbench.config import RECIPES, RunConfig, read_yaml, resolve_config
from medbench.errors import MedbenchError

SPACE_KEYS = ("name", "fixed", "space", "metric", "pruner", "trials", "seed", "report")
METRICS = {"auc": "maximize", "acc": "maximize", "loss": "minimize"}
PRUNERS = ("median", "hyperband", "none")
RANGE_KEYS = ("low", "high", "log", "step")
PRIMITIVE = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a range (``low``, ``high``, ``log``, ``step``; ``is_int``) or ``choices``."""
    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    is_int: bool = False
    choices: tuple | None = None

    @property
    def encoded(self) -> bool:
        """Choices Optuna cannot store as they are (lists, mappings) travel as their JSON text."""
        return self.choices is not None and not all(isinstance(c, PRIMITIVE) for c in self.choices)

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            if self.encoded:
                return json.loads(trial.suggest_categorical(self.name, [json.dumps(c) for c in self.choices]))
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def values(self) -> list:
        """The values checked when the file is read: the ends of a range, every choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(json.dumps(c) if not isinstance(c, str) else c for c in self.choices)
        kind = "int" if self.is_int else "float"
        extra = (" log" if self.log else "") + (f" step {self.step}" if self.step else "")
        return f"{kind} [{self.low}, {self.high}]{extra}"


@dataclass
class TuneSpace:
    name: str
    fixed: dict[str, Any]
    dims: list[Dimension]
    metric: str = "auc"
    pruner: str = "median"
    trials: int = 20
    seed: int | None = None
    report: bool = False
    path: Path | None = None
    defaults: dict[str, Any] = field(default_factory=dict)  # settings tune adds (select_metric)

    @property
    def direction(self) -> str:
        return METRICS[self.metric]

    def settings(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's settings: tune's defaults < fixed < the sampled values."""
        return {**self.defaults, **self.fixed, **params}

    def config(self, params: dict[str, Any], where: str = "trial") -> RunConfig:
        return resolve_config(self.settings(params), where=where)

    def reference(self) -> RunConfig:
        """A config standing for every trial in estimates: each range at its high end (most epochs), the first
        choice."""
        params = {d.name: (d.choices[0] if d.choices is not None else d.high) for d in self.dims}
        return self.config(params, where=f"{self.path or self.name}: the reference trial")

    @property
    def max_epochs(self) -> int:
        """The most epochs a trial trains (the pruners' resource), read without validating a whole config."""
        dim = next((d for d in self.dims if d.name == "epochs"), None)
        if dim is not None:
            return int(max(dim.values()))
        settings = self.settings({})
        return int(settings.get("epochs", RECIPES.get(settings.get("recipe"), {}).get(
            "epochs", RunConfig.model_fields["epochs"].default)))


def _where(path) -> str:
    return str(path) if path is not None else "tune space"


def _dimension(where: str, key: str, value: Any) -> Dimension:
    if isinstance(value, list):
        if not value:
            raise MedbenchError(f"{where}: space '{key}' is an empty list; give at least two values (or move it to "
                                f"fixed)")
        return Dimension(key, choices=tuple(value))
    if not isinstance(value, dict):
        raise MedbenchError(f"{where}: space '{key}' must be a list of values or a range {{low, high, log, step}} "
                            f"(got {value!r}); a single value belongs in fixed")
    unknown = [k for k in value if k not in RANGE_KEYS]
    if unknown:
        raise MedbenchError(f"{where}: space '{key}': unknown range key '{unknown[0]}' (valid: "
                            f"{', '.join(RANGE_KEYS)})")
    low, high = value.get("low"), value.get("high")
    for bound, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise MedbenchError(f"{where}: space '{key}': '{bound}' must be a number (got {v!r})")
    if not low < high:
        raise MedbenchError(f"{where}: space '{key}': low {low} must be below high {high}")
    log, step = value.get("log", False), value.get("step")
    if not isinstance(log, bool):
        raise MedbenchError(f"{where}: space '{key}': 'log' must be true or false (got {log!r})")
    if log and low <= 0:
        raise MedbenchError(f"{where}: space '{key}': a log range needs low > 0 (got {low})")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
            raise MedbenchError(f"{where}: space '{key}': 'step' must be a positive number (got {step!r})")
        if log:
            raise MedbenchError(f"{where}: space '{key}': 'step' and 'log' cannot be combined; drop one")
    is_int = isinstance(low, int) and isinstance(high, int) and _integer_setting(key)
    if is_int and step is not None and not isinstance(step, int):
        raise MedbenchError(f"{where}: space '{key}': an int range needs an int step (got {step!r})")
    return Dimension(key, low=low, high=high, log=log, step=step, is_int=is_int)


def _integer_setting(key: str) -> bool:
    """Whether the setting takes integers but not floats (epochs: yes; drop_rate, lr: no)."""
    ann = RunConfig.model_fields[key].annotation
    args = set(typing.get_args(ann)) or {ann}
    return int in args and float not in args


def _field_errors(settings: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(key, message, input) of the errors that belong to one field (checks across fields are left to the trial)."""
    try:
        RunConfig(**{**RECIPES.get(settings.get("recipe"), {}), **settings})
    except ValidationError as e:
        return [(str(err["loc"][0]), err["msg"], err.get("input")) for err in e.errors() if err["loc"]]
    except (TypeError, ValueError) as e:
        return [("", str(e), None)]
    return []


def _check_values(space: TuneSpace, where: str) -> None:
    """Every range end and choice against its setting, the other searched settings at their first value."""
    if space.fixed.get("recipe") is not None and space.fixed["recipe"] not in RECIPES:
        raise MedbenchError(f"{where}: fixed 'recipe': unknown recipe '{space.fixed['recipe']}'; valid: "
                            f"{', '.join(RECIPES)}")
    first = {d.name: d.values()[0] for d in space.dims}
    for dim in space.dims:
        for value in dim.values():
            for key, msg, got in _field_errors(space.settings({**first, dim.name: value})):
                if key in space.fixed:
                    raise MedbenchError(f"{where}: fixed '{key}': {msg} (got {got!r})")
                if key in first:
                    raise MedbenchError(f"{where}: space '{key}': the value {got!r} is invalid ({msg}); change the "
                                        f"range or choices")
                raise MedbenchError(f"{where}: {key or 'config'}: {msg}")


def build_space(data: Any, where: str = "tune space", path: Path | None = None) -> TuneSpace:
    """A search space from an already-parsed mapping (``where`` names it in errors)."""
    if not isinstance(data, dict):
        raise MedbenchError(f"{where}: expected a mapping with name, fixed and space, got {type(data).__name__}")
    unknown = [k for k in data if k not in SPACE_KEYS]
    if unknown:
        hint = " (a study grid is for `medbench study`)" if unknown[0] == "grid" else ""
        raise MedbenchError(f"{where}: unknown key '{unknown[0]}' (valid: {', '.join(SPACE_KEYS)}){hint}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise MedbenchError(f"{where}: 'name' is required and must be a non-empty string")
    fixed, raw = data.get("fixed") or {}, data.get("space")
    if not isinstance(fixed, dict):
        raise MedbenchError(f"{where}: 'fixed' must be a mapping of settings, got {type(fixed).__name__}")
    if not isinstance(raw, dict) or not raw:
        raise MedbenchError(f"{where}: 'space' must be a non-empty mapping of settings to ranges or lists")
    valid = RunConfig.model_fields
    for section, mapping in (("fixed", fixed), ("space", raw)):
        for key in mapping:
            if not isinstance(key, str) or key not in valid:
                raise MedbenchError(f"{where}: unknown key '{key}' in {section} (valid keys: {', '.join(valid)})")
    both = [k for k in raw if k in fixed]
    if both:
        raise MedbenchError(f"{where}: '{both[0]}' is in both fixed and space; keep it in one")
    metric = data.get("metric", "auc")
    if metric not in METRICS:
        raise MedbenchError(f"{where}: metric '{metric}' is not one of {', '.join(METRICS)} (validation metrics)")
    pruner = "none" if data.get("pruner") is False else data.get("pruner", "median")
    if pruner not in PRUNERS:
        raise MedbenchError(f"{where}: pruner '{pruner}' is not one of {', '.join(PRUNERS)}")
    trials = data.get("trials", 20)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise MedbenchError(f"{where}: 'trials' must be a positive integer (got {trials!r})")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise MedbenchError(f"{where}: 'seed' must be a non-negative integer (got {seed!r})")
    report = data.get("report", False)
    if not isinstance(report, bool):
        raise MedbenchError(f"{where}: 'report' must be true or false (got {report!r})")
    dims = [_dimension(where, k, v) for k, v in raw.items()]
    # the epoch is chosen by the metric tuned on, unless the file says otherwise
    defaults = {} if "select_metric" in fixed or "select_metric" in raw else {"select_metric": metric}
    space = TuneSpace(name=name.strip(), fixed=dict(fixed), dims=dims, metric=metric, pruner=pruner, trials=trials,
                      seed=seed, report=report, path=path, defaults=defaults)
    _check_values(space, where)
    return space


def load_space(path: str | os.PathLike) -> TuneSpace:
    """Read and check a search-space file (YAML, safe loader); every error names the file."""
    path = Path(path)
    return build_space(read_yaml(path, "search-space file"), where=_where(path), path=path)
