"""Command-line interface: a thin layer over the Python API. Errors are one line on stderr, exit code 2.

- :mod:`~medbench.cli.parser`: the parser class and the common options; :mod:`~medbench.cli.types`: value types
- :mod:`~medbench.cli.flags`: `medbench train`'s config flags, generated from RunConfig
- one module per topic declares its sub-commands and runs them: :mod:`~medbench.cli.train` (train, evaluate),
  :mod:`~medbench.cli.results` (compare, report, card, predict, export), :mod:`~medbench.cli.data` (datasets,
  models, cache, augment-preview), :mod:`~medbench.cli.study`, :mod:`~medbench.cli.tune`, :mod:`~medbench.cli.serve`,
  :mod:`~medbench.cli.gan`
"""
from __future__ import annotations

import argparse
import sys
import warnings

from medbench import __version__
from medbench.cli import data, gan, results, serve, study, train, tune
from medbench.cli.parser import EXIT_USAGE, Parser, common_options, one_line
from medbench.errors import MedbenchError

COMMANDS = {"datasets": data.cmd_datasets, "models": data.cmd_models, "train": train.cmd_train,
            "evaluate": train.cmd_evaluate, "compare": results.cmd_compare, "report": results.cmd_report,
            "cache": data.cmd_cache, "study": study.cmd_study, "tune": tune.cmd_tune,
            "augment-preview": data.cmd_augment_preview,
            "gan": gan.cmd_gan, "predict": results.cmd_predict, "serve": serve.cmd_serve,
            "export": results.cmd_export, "card": results.cmd_card}


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = Parser(prog="medbench", description="Train, evaluate and compare classifiers for medical images.")
    parser.add_argument("--version", action="version", version=f"medbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    # in the order `medbench --help` lists them
    for add in (data.add_datasets, data.add_models, train.add_train, train.add_evaluate, results.add_compare,
                study.add_study, tune.add_tune, data.add_cache, results.add_report, data.add_augment_preview,
                results.add_predict,
                serve.add_serve, results.add_export, results.add_card, gan.add_gan):
        add(sub, common)
    return parser


def _out_of_memory(e: BaseException) -> bool:
    """An allocation the machine cannot make: the values asked for are too large (torch raises RuntimeError)."""
    text = str(e)
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()))


def _warnings_one_line(quiet: bool):
    """A showwarning that prints each warning as one line; with ``quiet``, undefined-metric warnings only once
    (the first says what and where; the rest repeat it for other splits, epochs or resamples)."""
    from medbench.metrics import UndefinedMetricWarning  # metrics loads torch: only once a command runs

    seen: set = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if quiet and issubclass(category, UndefinedMetricWarning):
            if UndefinedMetricWarning in seen:
                return
            seen.add(UndefinedMetricWarning)
        print(f"medbench: warning: {one_line(message)}", file=file or sys.stderr)

    return show


def _run(args) -> int:
    """Run the parsed command; every failure the user can fix is one line and exit code 2."""
    try:
        code = COMMANDS[args.command](args)
    except MedbenchError as e:
        if args.debug:
            raise
        print(f"medbench: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (MemoryError, RuntimeError) as e:
        if args.debug or not _out_of_memory(e):
            return _internal(e, args.debug)
        print(f"medbench: error: out of memory ({one_line(e)[:200]}); the values asked for need more memory than "
              f"this machine has: use a smaller --size, --batch-size, --bootstrap or other count", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a path the user gave: a folder for a file, no such folder, no permission
        if args.debug:
            raise
        where = e.filename if e.filename2 is None else e.filename2
        print(f"medbench: error: cannot use {where}: {e.strerror or one_line(e)}; check the path (a file, not a "
              f"folder, in a folder that exists) and its permissions", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("medbench: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug, not bad input: still one line unless --debug
        return _internal(e, args.debug)
    return code or 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (one line, exit 2), or --help / --version (exit 0)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    shown = warnings.showwarning
    warnings.showwarning = _warnings_one_line(args.quiet)
    try:
        return _run(args)
    finally:
        warnings.showwarning = shown
        dist = sys.modules.get("torch.distributed")  # a process group exists only if a command loaded it
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _internal(e: Exception, debug: bool) -> int:
    if debug:
        raise e
    print(f"medbench: internal error: {type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback)",
          file=sys.stderr)
    return 1
