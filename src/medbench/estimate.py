"""How long a run will take, from a short measured warm-up, shown before it starts (and in dry runs)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    """A run's expected wall time: ``epochs`` x (training + validation) + the final evaluation."""
    seconds: float
    epoch_seconds: float
    epochs: int
    measured_steps: int

    def text(self) -> str:
        """e.g. '~1 h 32 min (100 epochs x 55 s)'."""
        raise NotImplementedError


def estimate_loop(loop, *, budget_s: float = 3.0) -> Estimate:
    """Measure a few training steps and a validation pass on a throwaway copy of ``loop``'s model (the run's
    weights, optimiser and random state untouched) and extrapolate to the whole run."""
    raise NotImplementedError


def estimate_config(cfg, *, data_dir=None, dataset=None, device=None, budget_s: float = 3.0) -> Estimate:
    """:func:`estimate_loop` for a config not yet run (study and tune dry runs): builds its dataset and loop."""
    raise NotImplementedError


def announce(loop, quiet: bool, first_epoch: int = 1) -> Estimate | None:
    """Before the first epoch (``first_epoch`` > 1: a resumed run, the epochs left): measure, print the estimate (and point a long CPU run at the ``fast`` recipe);
    None when ``quiet``."""
    return None
