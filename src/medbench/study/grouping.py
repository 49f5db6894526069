"""Runs grouped for comparison: *sections* (a dataset at one size, split one way) holding *arms* (every setting
except the seed), with the labels the report shows for them."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medbench.build import source_options
from medbench.config import resolve_config
from medbench.study.records import SEED_KEY, RunRecord

SECTION_KEYS = ("dataset", "size")  # constant within a dataset section: left out of the arm labels there


def json_key(d: dict) -> str:
    """A dict as a canonical string (a grouping key)."""
    return json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)


def value_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, default=str)


def label_text(label: dict) -> str:
    """``key=value, ...`` of an arm's label."""
    return ", ".join(f"{k}={value_text(v)}" for k, v in label.items()) or "(all runs)"


@dataclass
class Arm:
    key: str
    config: dict  # the arm's config without seed
    label: dict  # the axes that set it apart, without seed and section keys
    identity_label: dict  # the same with the section keys, except dataset
    identity: str  # config without seed, dataset and source options: the arm across datasets
    runs: list[RunRecord] = field(default_factory=list)
    reps: dict[str, np.ndarray | None] = field(default_factory=dict)
    reps_runs: int = 0
    run_reps: dict[str, np.ndarray | None] = field(default_factory=dict)  # [seeds, B] each run's replicates
    stats: dict = field(default_factory=dict)
    params: int | None = None
    top1: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return label_text(self.label)

    @property
    def done(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == "done" and r.metrics]

    def mean(self, name: str) -> float | None:
        """The mean over seeds of a statistic (e.g. ``test_auc``) once the arm is analysed."""
        return (self.stats.get(name) or {}).get("mean")


@dataclass
class Section:
    key: tuple
    dataset: str
    size: Any
    title: str
    arms: dict[str, Arm] = field(default_factory=dict)
    task: str | None = None
    n_test: int | None = None
    note: str | None = None
    ds: Any = None


def group_runs(records: Sequence[RunRecord], axes: Sequence[str]) -> list[Section]:
    """Sections (dataset, size, split options) holding arms (config without seed), in first-seen order."""
    sections: dict[tuple, Section] = {}
    label_axes = [a for a in axes if a != SEED_KEY]
    for rec in records:
        cfg = rec.config
        opts = _source_opts(cfg)
        skey = (cfg.get("dataset"), cfg.get("size"), json_key(opts))
        if skey not in sections:
            sections[skey] = Section(key=skey, dataset=str(cfg.get("dataset")), size=cfg.get("size"), title="")
        sec = sections[skey]
        arm_cfg = {k: v for k, v in cfg.items() if k != SEED_KEY}
        akey = json_key(arm_cfg)
        if akey not in sec.arms:
            sec.arms[akey] = _new_arm(akey, arm_cfg, rec, label_axes, opts)
        sec.arms[akey].runs.append(rec)
    out = sorted(sections.values(), key=lambda s: (s.dataset, str(s.size), s.key[2]))
    _set_titles(out)
    for sec in out:
        _disambiguate(sec)
    return out


def _source_opts(config: dict) -> dict:
    try:
        return source_options(resolve_config(dict(config)))
    except Exception:  # noqa: BLE001 - an unresolvable config still has its own section
        return {}


def _new_arm(akey: str, arm_cfg: dict, rec: RunRecord, label_axes: Sequence[str], opts: dict) -> Arm:
    model = {"model": arm_cfg.get("model")}  # the label when no axis sets the arm apart
    full_label = {a: rec.axes[a] for a in label_axes if a in rec.axes} or dict(model)
    label = {k: v for k, v in full_label.items() if k not in SECTION_KEYS} or dict(model)
    ident_label = {k: v for k, v in full_label.items() if k != "dataset"} or dict(model)
    ident_cfg = {k: v for k, v in arm_cfg.items() if k != "dataset" and k not in opts}
    return Arm(key=akey, config=arm_cfg, label=label, identity_label=ident_label, identity=json_key(ident_cfg))


def _set_titles(sections: Sequence[Section]) -> None:
    """The dataset, with the size when it is not MedMNIST's 28 px or the dataset comes at several sizes."""
    per_dataset: dict[str, int] = {}
    for sec in sections:
        per_dataset[sec.dataset] = per_dataset.get(sec.dataset, 0) + 1
    seen: dict[str, int] = {}
    for sec in sections:
        title = sec.dataset
        if sec.size not in (None, 28) or per_dataset[sec.dataset] > 1:
            title = f"{sec.dataset} ({sec.size} px)"
        seen[title] = seen.get(title, 0) + 1
        sec.title = title if seen[title] == 1 else f"{title} #{seen[title]}"


def _disambiguate(sec: Section) -> None:
    """Arms whose axes labels coincide (several studies in one store) get the config keys that differ added."""
    by_text: dict[str, list[Arm]] = {}
    for arm in sec.arms.values():
        by_text.setdefault(arm.text, []).append(arm)
    for arms in by_text.values():
        if len(arms) < 2:
            continue
        keys = sorted({k for a in arms for k in a.config if len({json_key({"v": b.config.get(k)})
                                                                 for b in arms}) > 1})
        for a in arms:
            extra = {k: a.config.get(k) for k in keys if k not in a.label}
            a.label = {**a.label, **extra}
            a.identity_label = {**a.identity_label, **extra}


def group_text(sec: Section, gkey: str, drop: Sequence[str]) -> str:
    """A readable name for a group of arms (``gkey``: the JSON of the config they share): the axes label values
    its arms share, without ``drop``."""
    cfg = json.loads(gkey)
    labels = [a.label for a in sec.arms.values()
              if all(a.config.get(k) == v for k, v in cfg.items())]
    if not labels:
        return "(all)"
    shared = {k: v for k, v in labels[0].items() if k not in drop and all(lb.get(k) == v for lb in labels)}
    return label_text(shared) if shared else "(all)"
