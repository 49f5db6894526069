"""What happens at the end of every epoch, one handler per concern: keep the selected weights and the training
state (checkpointing), write the history, log to TensorBoard and the console.

Each handler's ``epoch_end(loop, state, row)`` runs in order after the epoch's validation; ``state.is_best`` says
whether this epoch was selected. Only the main process writes files."""
from __future__ import annotations

import time
from pathlib import Path

from medbench.checkpoint import save_resume, save_weights
from medbench.fileio import write_csv
from medbench.metrics.diagnostics import select_epoch
from medbench.progress import console
from medbench.rundir import HISTORY, RESUME, WEIGHTS


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


class Checkpointing:
    """The selected epoch's weights, the K best epochs, history.csv and the resume state after every epoch."""

    def epoch_end(self, loop, state, row: dict) -> None:
        if not loop.dist.is_main:
            return
        if state.is_best:
            save_weights(loop.chosen, loop.out / WEIGHTS, loop.cfg, row["epoch"])
        state.kept.offer(loop.chosen, loop.cfg, row["epoch"], state.score)
        write_csv(loop.out / HISTORY, state.history)
        save_resume(loop.out, loop.model, loop.opt, loop.sched, loop.precision, loop.gen, loop.device,
                    {**state.resume_info(loop, row["epoch"]), "train_seconds": time.perf_counter() - state.t0},
                    ema=loop.ema)


class TensorBoard:
    """Every number of the history row as a TensorBoard scalar (``train/loss``, ``val/auc``, ...)."""

    def __init__(self, folder: Path, enabled: bool):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when writing

            self.writer = SummaryWriter(str(folder))

    def epoch_end(self, loop, state, row: dict) -> None:
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch" and v is not None:
                    self.writer.add_scalar(k.replace("_", "/", 1), v, row["epoch"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class ConsoleLog:
    """The progress bar's text and one line per epoch (``*`` marks the selected epoch)."""

    def __init__(self, bar, quiet: bool):
        self.bar, self.quiet = bar, quiet

    def epoch_end(self, loop, state, row: dict) -> None:
        self.bar.set(f"loss {row['train_loss']:.4f} val auc {fmt(row['val_auc'])} acc {fmt(row['val_acc'])}")
        if not self.quiet:
            console.print(f"epoch {row['epoch']}/{loop.cfg.epochs}  loss {row['train_loss']:.4f}  val auc "
                          f"{fmt(row['val_auc'])}  acc {fmt(row['val_acc'])}  {row['images_per_s']:.0f} img/s"
                          + ("  *" if state.is_best else ""))


def early_stop(history: list[dict], metric: str, patience: int, epochs: int) -> dict | None:
    """Whether ``--patience`` ends training after the last epoch of ``history``: the epoch the selection rule
    (:func:`medbench.metrics.diagnostics.prefer`, ties included) picks lies ``patience`` or more epochs back.
    Returns ``stopped_early``'s record, or None (no patience, not yet, or the last epoch anyway).

    A function of the history alone, so that a resumed run (or a reader of history.csv) reaches the same answer."""
    if patience <= 0 or not history:
        return None
    last, best = int(history[-1]["epoch"]), select_epoch(history, metric)
    if last >= epochs or last - best < patience:
        return None
    return {"epoch": last, "of": epochs, "best_epoch": best, "patience": patience,
            "reason": f"val {metric} has not improved for {last - best} epochs since epoch {best} "
                      f"(patience {patience})"}


def last_good_state(out: Path, epoch: int) -> str:
    """Where a failed epoch can be continued from, for its error message."""
    return f"{out / RESUME} (epoch {epoch - 1})" if epoch > 1 else "none (first epoch)"
