"""A RunConfig field declared once: its type and checks, its help, its group, and how `medbench train` spells it.

The command line (:mod:`medbench.cli.flags`) and the documentation read this metadata; nothing re-declares a field.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic.fields import FieldInfo

# argument groups of `medbench train --help`, in the order they are shown: key -> title
GROUPS: dict[str, str] = {
    "data": "data",
    "own data": "own data (--dataset folder:PATH or csv:FILE)",
    "model": "model and loss",
    "optimisation": "optimisation",
    "augmentation": "augmentation and synthetic data (training split only)",
    "evaluation": "evaluation of the finished run (`medbench evaluate` flags override these)",
    "hardware": "reproducibility and hardware",
    "output": "output",
}


def setting(default: Any = ..., *, doc: str, group: str, metavar: str | None = None, flag: str | None = None,
            cli: bool = True, shown_default: str | None = None, **checks: Any) -> Any:
    """A pydantic ``Field`` that also carries what its flag needs.

    ``doc``: one help text for the config file and ``--help``; ``group``: a key of :data:`GROUPS`;
    ``flag``: when it differs from ``--field-name``; ``cli=False``: deliberately config-only (``--set`` still
    reaches it); ``shown_default``: words for a default whose value alone says little (e.g. None);
    ``checks``: pydantic constraints (ge, lt, min_length, pattern, ...).
    """
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; valid: {', '.join(GROUPS)}")
    extra = {"group": group, "cli": cli}
    extra.update({k: v for k, v in (("metavar", metavar), ("flag", flag), ("shown_default", shown_default))
                  if v is not None})
    return Field(default, description=doc, json_schema_extra=extra, **checks)


def meta(info: FieldInfo) -> dict[str, Any]:
    """The metadata :func:`setting` stored on a field (group, cli, metavar, flag, shown_default)."""
    extra = info.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}
