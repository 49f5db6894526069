"""The parser class (usage errors in one line) and the options every command takes."""
from __future__ import annotations

import argparse

EXIT_USAGE = 2


def one_line(text) -> str:
    return " ".join(str(text).split())


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage dump
        self.exit(EXIT_USAGE, f"medbench: error: {one_line(message)} (see {self.prog} --help)\n")


def common_options() -> argparse.ArgumentParser:
    """The options every command takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--data-dir", help="data root (default: $MEDBENCH_DATA, else ~/.medmnist)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    g.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p
