"""Every command in README.md and docs/ runs as written.

Commands are read from the fenced ``bash`` blocks (``text`` blocks hold synopses and printed output and are not
read). Every ``medbench ...`` command must parse with the real argument parser and every ``python
benchmarks/X.py`` must name a script; the blocks of README.md and docs/getting-started.md are also run, in order,
in a temporary folder laid out like the repository's (slow). A block preceded by ``<!-- docs-test: skip (...) -->``
is left out: the comment says why and how it was checked by hand.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TOUR_PAGES = [README, REPO / "docs" / "getting-started.md"]  # run, block after block
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCES = ("bash", "sh", "shell")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b")
# environment set-up segments of a command line: the test runs inside the installed environment instead
SETUP = re.compile(r"^(python3? -m venv |\. \S*activate$|source \S*activate$|pip install )")
README_MAX_BYTES = 8_700


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    commands: list[str]  # one per shell line, continuations joined, comments and blank lines dropped
    skip: bool

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def shell_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(```+)\s*(\S*)", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1)))
        if fence.group(2) in SHELL_FENCES:
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            blocks.append(Block(page, i + 1, _commands(lines[i + 1:end]), bool(SKIP.search(before))))
        i = end + 1
    return blocks


def _commands(lines: list[str]) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [c for c in (line.strip() for line in joined.splitlines()) if c and not c.startswith("#")]


def _segments(command: str) -> list[str]:
    return [s.strip() for s in command.split("&&")]


def _argv(segment: str) -> list[str]:
    words = shlex.split(segment, comments=True)
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value prefixes
        words.pop(0)
    return words


def _medbench_args(argv: list[str]) -> list[str] | None:
    """The arguments after ``medbench`` (also ``python -m medbench`` and ``torchrun ... -m medbench``)."""
    if argv and argv[0] == "medbench":
        return argv[1:]
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] == "medbench" and argv[0] in ("python", "python3", "torchrun"):
            return argv[i + 2:]
    return None


def _parser():
    try:
        from medbench.cli import build_parser
    except ImportError:
        from medbench.cli.parser import build_parser
    return build_parser()


def _all_blocks() -> list[Block]:
    return [b for page in PAGES for b in shell_blocks(page)]


def test_the_pages_have_shell_blocks():
    blocks = _all_blocks()
    assert len(blocks) >= 15 and sum(len(b.commands) for b in blocks) >= 50
    assert any(b.skip for b in blocks)  # the marker is read


def test_every_documented_command_parses():
    """Flags exist and values are valid for every medbench command in a shell block, skipped blocks included
    (they are skipped only because they cannot run in a test); benchmark scripts exist."""
    parser, bad, seen = _parser(), [], 0
    for block in _all_blocks():
        for command in block.commands:
            for segment in _segments(command):
                argv = _argv(segment)
                if argv[:1] in (["python"], ["python3"]) and len(argv) > 1 and argv[1].startswith("benchmarks/"):
                    if not (REPO / argv[1]).is_file():
                        bad.append(f"{block.where()}: {argv[1]} does not exist")
                    continue
                args = _medbench_args(argv)
                if args is None or args in (["..."], []) or "..." in args:
                    continue
                seen += 1
                err = io.StringIO()
                try:
                    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                        parser.parse_args(args)
                except SystemExit as e:
                    if e.code:
                        bad.append(f"{block.where()}: medbench {' '.join(args)}\n    {err.getvalue().strip()}")
    assert not bad, "\n".join(bad)
    assert seen >= 40


def test_readme_is_short_and_links_into_docs():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) <= README_MAX_BYTES
    links = re.findall(r"\]\((docs/[^)#\s]+)", text)
    assert len(links) >= 8
    missing = [link for link in links if not (REPO / link).is_file()]
    assert not missing, missing


def _ci_commands() -> list[str]:
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("python3 -m venv"))
    return [s for line in lines[start:] if line.strip() and not line.startswith("#") for s in _segments(line)]


def test_the_readme_test_command_is_ci_s():
    """The README's "install and run the tests" is .ci/run's command; CI only adds the lint, layer and docs
    checks before pytest."""
    (command,) = [c for b in shell_blocks(README) for c in b.commands if "pytest" in c]
    ci = _ci_commands()
    checks = ["ruff check src tests benchmarks", "lint-imports", 'mkdocs build --strict --site-dir "$(mktemp -d)"']
    assert [s for s in ci if s not in checks] == _segments(command)
    assert all(c in ci for c in checks) and ci.index("python -m pytest") == len(ci) - 1


def _tour_folder(tmp_path: Path, shared_data: Path) -> Path:
    """A working folder whose ../shared/data, examples/ and benchmarks/ are the ones the repository sees."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(shared_data, target_is_directory=True)
    work = tmp_path / "medbench"
    work.mkdir()
    for name in ("examples", "benchmarks"):
        (work / name).symlink_to(REPO / name, target_is_directory=True)
    return work


@pytest.mark.slow
@pytest.mark.parametrize("page", TOUR_PAGES, ids=lambda p: p.name)
def test_the_tour_runs_as_written(page, tmp_path, shared_data):
    """Each command of the page, in order, in one folder (later commands use the runs of earlier ones); the
    set-up segments (venv, activate, pip install) are left out: this is the installed environment."""
    work = _tour_folder(tmp_path, shared_data)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ran = 0
    for block in shell_blocks(page):
        if block.skip:
            continue
        for command in block.commands:
            segments = [s for s in _segments(command) if not SETUP.match(s)]
            if not segments or any("pytest" in s for s in segments):
                continue
            if segments[0].startswith("export "):  # one shell per command: carry the variables over
                env.update(a.split("=", 1) for a in shlex.split(segments.pop(0))[1:] if "=" in a)
                if not segments:
                    continue
            line = " && ".join(segments)
            r = subprocess.run(["bash", "-c", f"set -euo pipefail; {line}"], cwd=work, env=env, capture_output=True,
                               text=True, timeout=900)
            assert r.returncode == 0, f"{block.where()}: {line}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
            ran += 1
    assert ran >= 3


def test_the_architecture_names_every_module():
    """docs/architecture.md's module map stays true: every module of the package is named there, and every
    module named there exists."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    text = text.split("\n## Module map\n", 1)[1].split("\n## ", 1)[0]
    package = REPO / "src" / "medbench"
    modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    named = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)?\.py)`", text))
    assert not modules - named, f"modules missing from docs/architecture.md: {sorted(modules - named)}"
    assert not named - modules, f"docs/architecture.md names modules that do not exist: {sorted(named - modules)}"
