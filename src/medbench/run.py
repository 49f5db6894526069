"""One run, end to end: train -> evaluate -> model card -> report, in a run directory (:mod:`medbench.rundir`).

``train`` is the library's entry point (the CLI's ``medbench train`` is a thin layer over it): it claims and locks
the run directory, trains (:mod:`medbench.training`), evaluates every split (:mod:`medbench.evaluation`), writes the
model card and the report, and removes the resume state once everything is final.
"""
from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medbench import distributed
from medbench.baselines import is_baseline
from medbench.build import dataset_or_build
from medbench.card import write_model_card
from medbench.config import RunConfig, resolve_config
from medbench.crossval import write_cv_record
from medbench.data import ImageDataset
from medbench.data.folds import fold_dataset, fold_of_config, make_pool
from medbench.engine import resolve_device, seed_everything
from medbench.errors import MedbenchError
from medbench.estimate import announce
from medbench.evaluation import evaluate, evaluate_locked
from medbench.fileio import write_csv
from medbench.handlers import fmt
from medbench.progress import console
from medbench.report import write_run_report
from medbench.report.figures import confusion_figure, roc_figure
from medbench.rundir import (
    CONFIG,
    CV_SUMMARY,
    HISTORY,
    METRICS,
    RESUME,
    TENSORBOARD,
    claim_new,
    fold_dirs,
    locked,
    member_dirs,
    predictions_path,
    read_metrics,
    read_predictions,
)
from medbench.tracking import open_tracker
from medbench.training import fit_baseline, provenance, start_run_dir, train_network

__all__ = ["train", "evaluate"]


def train(config: RunConfig | dict[str, Any], out: str | Path, *, data_dir=None, quiet: bool = False,
          dataset: ImageDataset | None = None, on_epoch: Callable[[dict], bool] | None = None,
          report: bool = True, resume: bool = False, track: str | None = None,
          experiment: str | None = None) -> Path:
    """Train one run into ``out`` and evaluate its best epoch on every split. Returns the run directory.

    ``dataset`` lets library users pass an :class:`ImageDataset` they built; otherwise ``config.dataset``
    is loaded from the data root. ``on_epoch`` is called after every epoch with the history row plus
    ``best_epoch``, ``is_best``, ``model`` and ``train_seconds``; returning True stops training there.
    ``report`` writes report.html (and the final ROC and confusion-matrix figures to TensorBoard).

    After every epoch the full training state goes to ``out/resume.safetensors``; ``resume=True`` continues a
    killed run from it (``config`` must be the run's own config.yaml) and, with ``deterministic``, ends with
    exactly the metrics of an uninterrupted run.

    ``track``: ``mlflow`` or ``mlflow:URI`` sends the run to MLflow (:mod:`medbench.tracking`), in the experiment
    ``experiment`` (a study's or a tune's name).
    """
    cfg = config if isinstance(config, RunConfig) else resolve_config(dict(config))
    out = Path(out)
    if resume:
        if not (out / CONFIG).is_file():
            raise MedbenchError(f"{out} is not a run directory ({CONFIG} missing); nothing to resume")
        if is_baseline(cfg.model):
            raise MedbenchError(f"{cfg.model} is a classical model fitted in one step: nothing to resume, retrain")
    else:
        claim_new(out, "run", CONFIG, resumable=True)
    dist, device = distributed.setup(resolve_device(cfg.device))
    dist.barrier()  # every rank has checked ``out`` before rank 0 writes into it
    with locked(out, "medbench train") if dist.is_main else contextlib.nullcontext(), \
            open_tracker(track, cfg, out, experiment, enabled=dist.is_main) as tracker:
        if not resume and dist.is_main:
            claim_new(out, "run", CONFIG, resumable=True)  # again under the lock: another writer may have finished
        quiet = quiet or not dist.is_main
        seed_everything(cfg.seed, cfg.deterministic)
        ds = fold_of_config(dataset_or_build(cfg, dataset, data_dir, quiet), cfg)  # a given dataset: its fold's view
        if cfg.folds > 1 and cfg.fold is None:
            _cv_run(cfg, out, ds, dist, data_dir=data_dir, quiet=quiet, report=report, resume=resume,
                    on_epoch=on_epoch)
        elif is_baseline(cfg.model):
            _baseline_run(cfg, out, ds, data_dir=data_dir, quiet=quiet, report=report)
        elif cfg.members > 1:
            _ensemble_run(cfg, out, ds, dist, data_dir=data_dir, quiet=quiet, report=report, resume=resume)
        else:
            _network_run(cfg, out, ds, dist, device, data_dir=data_dir, quiet=quiet, report=report,
                         on_epoch=on_epoch, resume=resume, tracker=tracker)
        tracker.run_end(out)
        return out


def _network_run(cfg: RunConfig, out: Path, ds: ImageDataset, dist, device, *, data_dir, quiet: bool, report: bool,
                 on_epoch, resume: bool, tracker=None) -> Path:
    task, state = train_network(cfg, out, ds, dist, device, quiet=quiet, on_epoch=on_epoch, resume=resume,
                                announce=announce,
                                handlers=[tracker] if tracker is not None else [])
    dist.barrier()  # rank 0 has written the best weights
    metrics = evaluate_locked(out, data_dir=data_dir, quiet=quiet, dataset=ds)
    if dist.is_main:
        write_model_card(out, test_labels=ds["test"].labels.numpy(), data_dir=data_dir)
        if report:
            _final_figures(out, ds, task.name)
            write_run_report(out, dataset=ds, data_dir=data_dir, quiet=quiet)
        (out / RESUME).unlink(missing_ok=True)  # finished: the metrics and weights are final
    if not quiet:
        console.print(f"best epoch {state.best_epoch} by val {cfg.select_metric}; test auc "
                      f"{fmt(metrics['test']['auc'])} acc {fmt(metrics['test']['acc'])}; "
                      f"{state.train_seconds:.0f} s training")
    return out


def _ensemble_run(cfg: RunConfig, out: Path, ds: ImageDataset, dist, *, data_dir, quiet: bool, report: bool,
                  resume: bool) -> Path:
    """A deep ensemble: ``cfg.members`` ordinary runs (seeds seed*K + i) in ``members/NN``, then one evaluation of
    their averaged probabilities at the top. Resuming skips finished members and resumes a killed one."""
    if resume and (out / METRICS).is_file():
        raise MedbenchError(f"{out}: nothing to resume: the ensemble already finished ({METRICS} written)")
    if dist.is_main and not resume:
        start_run_dir(out, cfg, ds, provenance(ds), quiet)
    t0 = time.perf_counter()
    for i, member_dir in enumerate(member_dirs(out, cfg.members)):
        if (member_dir / METRICS).is_file():
            continue
        member = cfg.model_copy(update={"members": 1, "seed": cfg.seed * cfg.members + i})
        if not quiet:
            console.print(f"member {i + 1}/{cfg.members} (seed {member.seed}) -> {member_dir}")
        train(member, member_dir, data_dir=data_dir, quiet=quiet, dataset=ds, report=False,
              resume=(member_dir / RESUME).is_file())
    dist.barrier()
    metrics = evaluate_locked(out, data_dir=data_dir, quiet=quiet, dataset=ds)
    if dist.is_main:
        _card_and_report(out, ds, data_dir=data_dir, quiet=quiet, report=report)
    if not quiet:
        console.print(f"ensemble of {cfg.members}: test auc {fmt(metrics['test']['auc'])} acc "
                      f"{fmt(metrics['test']['acc'])}; {time.perf_counter() - t0:.0f} s")
    return out


def _cv_run(cfg: RunConfig, out: Path, ds: ImageDataset, dist, *, data_dir, quiet: bool, report: bool,
            resume: bool, on_epoch) -> Path:
    """K-fold cross-validation: ``cfg.folds`` ordinary runs (``fold`` 0..K-1: val = that fold of the pooled
    train+val) in ``folds/NN``, then the CV record (:mod:`medbench.crossval`). Resuming skips finished folds and
    resumes a killed one from its resume state."""
    if resume and (out / CV_SUMMARY).is_file() and (out / METRICS).is_file():
        raise MedbenchError(f"{out}: nothing to resume: the cross-validation already finished ({CV_SUMMARY} written)")
    pool = make_pool(ds, cfg.folds, cfg.split_seed, cfg.group_regex)  # a refused split fails before any training
    if dist.is_main and not resume:
        start_run_dir(out, cfg, ds, provenance(ds), quiet)
    t0 = time.perf_counter()
    for i, fold_dir in enumerate(fold_dirs(out, cfg.folds)):
        again = (fold_dir / RESUME).is_file()
        if (fold_dir / METRICS).is_file() and not again:
            continue  # finished
        if not again and (fold_dir / CONFIG).is_file() and dist.is_main:
            shutil.rmtree(fold_dir)  # killed before its first saved state: nothing to continue from
        dist.barrier()
        fold_cfg = cfg.model_copy(update={"fold": i})
        fold_ds = fold_dataset(ds, cfg.folds, i, cfg.split_seed, cfg.group_regex)
        if not quiet:
            console.print(f"fold {i + 1}/{cfg.folds}{' (resumed)' if again else ''}: train {len(fold_ds['train'])}, "
                          f"val {len(fold_ds['val'])} -> {fold_dir}")
        hook = None if on_epoch is None else (lambda row, i=i: on_epoch({**row, "fold": i}))
        train(fold_cfg, fold_dir, data_dir=data_dir, quiet=quiet, dataset=fold_ds, report=False, resume=again,
              on_epoch=hook)
        del fold_ds
    dist.barrier()
    if dist.is_main:
        metrics = write_cv_record(out, cfg, ds, pool)
        _card_and_report(out, ds, data_dir=data_dir, quiet=quiet, report=report)
        if not quiet:
            cv = metrics["val"]
            console.print(f"{cfg.folds}-fold CV: out-of-fold auc {fmt(cv['auc'])} "
                          f"{_ci_text(cv.get('auc_ci'))}; fold ensemble test auc {fmt(metrics['test']['auc'])} acc "
                          f"{fmt(metrics['test']['acc'])}; {time.perf_counter() - t0:.0f} s; {out / CV_SUMMARY}")
    dist.barrier()
    return out


def _ci_text(ci) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""


def _baseline_run(cfg: RunConfig, out: Path, ds: ImageDataset, *, data_dir, quiet: bool, report: bool) -> Path:
    """A scikit-learn model: fit on the training split, then the same evaluation, files and report."""
    est, seconds = fit_baseline(cfg, out, ds, quiet)
    metrics = evaluate_locked(out, data_dir=data_dir, quiet=quiet, dataset=ds, estimator=est)
    tr, va = metrics["train"], metrics["val"]
    write_csv(out / HISTORY, [{"epoch": 1, "lr": "", "train_loss": tr["loss"], "train_acc": tr["acc"],
                               "train_auc": tr["auc"], "val_loss": va["loss"], "val_acc": va["acc"],
                               "val_auc": va["auc"], "seconds": round(seconds, 3),
                               "images_per_s": round(len(ds["train"]) / max(seconds, 1e-9), 1)}])
    _card_and_report(out, ds, data_dir=data_dir, quiet=quiet, report=report)
    if not quiet:
        console.print(f"{cfg.model} ({cfg.features}) fitted in {seconds:.1f} s; test auc "
                      f"{fmt(metrics['test']['auc'])} acc {fmt(metrics['test']['acc'])}")
    return out


def _card_and_report(out: Path, ds: ImageDataset, *, data_dir, quiet: bool, report: bool) -> None:
    write_model_card(out, test_labels=ds["test"].labels.numpy(), data_dir=data_dir)
    if report:
        write_run_report(out, dataset=ds, data_dir=data_dir, quiet=quiet)


def _final_figures(out: Path, ds: ImageDataset, task: str) -> None:
    """The test split's ROC curves and confusion matrix as TensorBoard figures."""
    from torch.utils.tensorboard import SummaryWriter

    scores = read_predictions(predictions_path(out, "test"))
    labels = ds["test"].labels.numpy()
    metrics = read_metrics(out)["test"]
    tb = SummaryWriter(str(out / TENSORBOARD))
    try:
        tb.add_figure("test/roc", roc_figure(labels, scores, task, ds.class_names))
        if task != "multilabel":
            tb.add_figure("test/confusion_matrix", confusion_figure(metrics["confusion_matrix"], ds.class_names,
                                                                    normalize=True))
    finally:
        tb.close()
