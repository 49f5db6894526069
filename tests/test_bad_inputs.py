"""Catalogue of bad inputs through the real command line (issue 10, part 6).

One case per row. Each asserts: a non-zero exit, exactly one line on stderr (warnings count as lines: a real run
prints them there) that names the problem, the file where there is one, and the fix; that files written before
(an existing run's metrics.json, model.safetensors, ...; the data files given) are byte-for-byte unchanged; and
that a failed ``train`` leaves no half-written run folder behind.

Most rows call ``medbench.cli.main`` in-process; the rows that need their own process (a file-size limit, a
server that must not start) run ``python -m medbench``.
"""
from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from medbench.cli import main

BREAST_MD5 = "750601b1f35ba3300ea97c75c52ff8f6"


def _digest(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (and the listing itself: a new or removed file shows too)."""
    out = {}
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class _ShortBody(http.server.BaseHTTPRequestHandler):
    """Promises the whole file, sends a third of it, then closes: a download cut off mid-way."""

    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[: len(self.body) // 3])

    def log_message(self, *args):
        pass


@dataclass
class Row:
    argv: list[str]
    fragments: list[str]  # each must appear in the one stderr line: the problem, the file, the fix
    watch: list[Path] = field(default_factory=list)  # files that must stay byte-for-byte the same
    new_out: Path | None = None  # a train --out that must not exist afterwards


@pytest.fixture
def env(tmp_path, breast_run, medmnist_dir, mirror):
    """What the rows build on: a scratch folder, the earlier run, the real data, a local HTTP mirror."""
    start_mirror = mirror

    class Env:
        tmp, run, data = tmp_path, breast_run, medmnist_dir
        mirror = staticmethod(start_mirror)  # (folder=None, handler=None) -> base URL

        @staticmethod
        def npz(**change) -> Path:
            """A copy of the real breastmnist.npz in its own data folder, with arrays changed or (None) removed."""
            arrays = dict(np.load(medmnist_dir / "breastmnist.npz"))
            for key, value in change.items():
                if value is None:
                    arrays.pop(key)
                else:
                    arrays[key] = value
            folder = tmp_path / "data"
            folder.mkdir()
            np.savez_compressed(folder / "breastmnist.npz", **arrays)
            return folder / "breastmnist.npz"

        @staticmethod
        def folder(layout: dict[str, dict[str, int]]) -> Path:
            from PIL import Image

            rng = np.random.default_rng(0)
            root = tmp_path / "images"
            root.mkdir()
            for split, classes in layout.items():
                for cls, n in classes.items():
                    (root / split / cls).mkdir(parents=True)
                    for i in range(n):
                        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(
                            root / split / cls / f"{cls}-{i}.png")
            return root

    return Env


def _train(env, *args: str) -> list[str]:
    return ["train", "--model", "cnn5", "--epochs", "1", "--out", str(env.tmp / "new-run"), *args]


def row_missing_npz_key(env) -> Row:
    npz = env.npz(test_labels=None)
    return Row(_train(env, "--dataset", "breastmnist", "--data-dir", str(npz.parent)),
               [str(npz), "missing arrays ['test_labels']", f"md5 {BREAST_MD5}", "delete it to re-download"],
               [npz, env.run], env.tmp / "new-run")


def row_wrong_dtype(env) -> Row:  # through `evaluate`, which would rewrite the earlier run's metrics.json
    npz = env.npz(train_images=np.load(env.data / "breastmnist.npz")["train_images"].astype(np.float32))
    return Row(["evaluate", str(env.run), "--data-dir", str(npz.parent)],
               [str(npz), "train_images has dtype float32, expected uint8", "delete it to re-download"],
               [npz, env.run])


def row_labels_out_of_range(env) -> Row:
    labels = np.load(env.data / "breastmnist.npz")["train_labels"].copy()
    labels[7] = 2
    npz = env.npz(train_labels=labels)
    return Row(_train(env, "--dataset", "breastmnist", "--data-dir", str(npz.parent)),
               [str(npz), "train_labels has values in [0, 2], expected [0, 1]", "delete it to re-download"],
               [npz, env.run], env.tmp / "new-run")


def row_label_image_count_mismatch(env) -> Row:
    npz = env.npz(val_labels=np.load(env.data / "breastmnist.npz")["val_labels"][:-1])
    return Row(_train(env, "--dataset", "breastmnist", "--data-dir", str(npz.parent)),
               [str(npz), "val_labels has shape (77, 1), expected (78, 1)", "delete it to re-download"],
               [npz, env.run], env.tmp / "new-run")


def row_all_one_class_split(env) -> Row:
    root = env.folder({"train": {"NORMAL": 12}, "test": {"NORMAL": 3, "PNEUMONIA": 3}})
    return Row(_train(env, "--dataset", f"folder:{root}"),
               [str(root), "the train split holds only class 'NORMAL'", "add images of the other class(es)"],
               [root, env.run], env.tmp / "new-run")


def row_one_class_val_split(env) -> Row:  # was an internal error: the Youden threshold on val is undefined
    root = env.folder({"train": {"NORMAL": 8, "PNEUMONIA": 8}, "val": {"PNEUMONIA": 4},
                       "test": {"NORMAL": 3, "PNEUMONIA": 3}})
    return Row(_train(env, "--dataset", f"folder:{root}"),
               [str(root), "the val split holds only class 'PNEUMONIA'", "--val-from-train"],
               [root, env.run], env.tmp / "new-run")


def row_empty_folder_dataset(env) -> Row:
    root = env.tmp / "empty"
    root.mkdir()
    (root / "README.txt").write_text("the scans go here")
    return Row(_train(env, "--dataset", f"folder:{root}"),
               [str(root), "no image files found", "point at a folder of images"],
               [root, env.run], env.tmp / "new-run")


def row_unreadable_image_in_folder(env) -> Row:
    root = env.folder({"train": {"NORMAL": 8, "PNEUMONIA": 8}})
    (root / "train" / "NORMAL" / "scan-07.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    return Row(_train(env, "--dataset", f"folder:{root}"),
               [str(root), "train/NORMAL/scan-07.png", "cannot be decoded", "remove them", "--skip-bad"],
               [root, env.run], env.tmp / "new-run")


def row_wrong_md5_download(env) -> Row:
    served = env.tmp / "served"
    served.mkdir()
    data = bytearray((env.data / "breastmnist.npz").read_bytes())
    data[5000:5010] = bytes(b ^ 0xFF for b in data[5000:5010])
    (served / "breastmnist.npz").write_bytes(bytes(data))
    base = env.mirror(served)
    root = env.tmp / "fresh-data"
    root.mkdir()
    return Row(_train(env, "--dataset", "breastmnist", "--data-dir", str(root)),
               [f"{base}breastmnist.npz", "is corrupted: md5", f"expected {BREAST_MD5}",
                f"save it as {root / 'breastmnist.npz'}"],
               [root, served, env.run], env.tmp / "new-run")


def row_truncated_download(env) -> Row:
    _ShortBody.body = body = (env.data / "breastmnist.npz").read_bytes()
    base = env.mirror(handler=_ShortBody)
    root = env.tmp / "fresh-data"
    root.mkdir()
    return Row(_train(env, "--dataset", "breastmnist", "--data-dir", str(root)),
               [f"{base}breastmnist.npz", f"is truncated: {len(body) // 3} of {len(body)} bytes",
                f"save it as {root / 'breastmnist.npz'}"],
               [root, env.run], env.tmp / "new-run")


def row_invalid_yaml_config(env) -> Row:
    cfg = env.tmp / "run.yaml"
    cfg.write_text("dataset: breastmnist\nmodel: [cnn5\nepochs: 1\n")
    return Row(["train", "--config", str(cfg), "--out", str(env.tmp / "new-run")],
               [str(cfg), "not valid YAML", "line 3, column"], [cfg, env.run], env.tmp / "new-run")


def row_unknown_model(env) -> Row:
    return Row(["train", "--dataset", "breastmnist", "--model", "resnet9000", "--out", str(env.tmp / "new-run")],
               ["unknown model 'resnet9000'", "Did you mean resnet50", "Valid: cnn2"], [env.run],
               env.tmp / "new-run")


def row_unsupported_size(env) -> Row:
    return Row(_train(env, "--dataset", "breastmnist", "--size", "32"),
               ["size must be one of 28, 64, 128, 224, not 32", "pass --size"], [env.run], env.tmp / "new-run")


def row_cuda_without_gpu(env) -> Row:
    return Row(_train(env, "--dataset", "breastmnist", "--device", "cuda"),
               ["device 'cuda' requested but CUDA is not available", "use --device cpu"], [env.run],
               env.tmp / "new-run")


def row_config_is_a_folder(env) -> Row:
    return Row(["train", "--config", str(env.run), "--out", str(env.tmp / "new-run")],
               [str(env.run), "is a folder", "config.yaml"], [env.run], env.tmp / "new-run")


def row_config_not_utf8(env) -> Row:
    cfg = env.tmp / "run.yaml"
    cfg.write_bytes("dataset: breastmnist\nmodel: cnn5  # ünïcode in Latin-1\n".encode("latin-1"))
    return Row(["train", "--config", str(cfg), "--out", str(env.tmp / "new-run")],
               [str(cfg), "not UTF-8", "save the config file as UTF-8"], [cfg, env.run], env.tmp / "new-run")


def row_set_value_not_yaml(env) -> Row:
    return Row(_train(env, "--dataset", "breastmnist", "--set", "milestones=[0.5"),
               ["--set milestones=[0.5", "not valid YAML"], [env.run], env.tmp / "new-run")


ROWS = [
    pytest.param(row_missing_npz_key, id="missing-npz-key"),
    pytest.param(row_wrong_dtype, id="wrong-dtype"),
    pytest.param(row_labels_out_of_range, id="labels-out-of-range"),
    pytest.param(row_label_image_count_mismatch, id="label-image-count-mismatch"),
    pytest.param(row_all_one_class_split, id="all-one-class-split"),
    pytest.param(row_one_class_val_split, id="one-class-val-split"),
    pytest.param(row_empty_folder_dataset, id="empty-folder-dataset"),
    pytest.param(row_unreadable_image_in_folder, id="unreadable-image-in-folder"),
    pytest.param(row_wrong_md5_download, id="wrong-md5-download"),
    pytest.param(row_truncated_download, id="truncated-download"),
    pytest.param(row_invalid_yaml_config, id="invalid-yaml-config"),
    pytest.param(row_unknown_model, id="unknown-model"),
    pytest.param(row_unsupported_size, id="unsupported-size"),
    pytest.param(row_cuda_without_gpu, id="device-cuda-without-gpu"),
    pytest.param(row_config_is_a_folder, id="config-is-a-folder"),
    pytest.param(row_config_not_utf8, id="config-not-utf8"),
    pytest.param(row_set_value_not_yaml, id="set-value-not-yaml"),
]


def _check(code: int, lines: list[str], row: Row, before: dict[str, str]) -> None:
    shown = "\n".join(lines)
    print(f"\nrc={code} {shown}")  # the catalogue as the user sees it (pytest -s)
    assert code == 2, shown
    assert len(lines) == 1 and lines[0].startswith("medbench: error: "), shown
    for fragment in row.fragments:
        assert fragment in lines[0], f"{fragment!r} missing from: {lines[0]}"
    assert _digest(*row.watch) == before, "a file written before the command changed"
    if row.new_out is not None:
        assert not row.new_out.exists(), f"a failed train left {sorted(os.listdir(row.new_out))}"


@pytest.mark.parametrize("make_row", ROWS)
def test_bad_input_is_one_clear_line(env, make_row, capsys):
    if make_row is row_cuda_without_gpu:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    row = make_row(env)
    before = _digest(*row.watch)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(row.argv)
    out, err = capsys.readouterr()
    # a real run prints each warning on stderr: count them as lines
    _check(code, err.splitlines() + [f"{w.category.__name__}: {w.message}" for w in caught], row, before)


# ---- rows that need a process of their own -----------------------------------------------------------------

_LIMITED = """
import resource, signal, sys
# a full disk: writes past the limit fail with EFBIG (as ENOSPC would) instead of killing the process
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from medbench.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _medbench(args: list[str], *, limit: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", _LIMITED, str(limit)] if limit else [sys.executable, "-m", "medbench"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_disk_full_while_writing_a_checkpoint(tmp_path, breast_run):
    """The file-size limit lets the epoch's weights (model.safetensors) through but not the larger training
    state written after them (resume.safetensors: weights plus optimizer moments): the write fails mid-file."""
    from safetensors import safe_open

    weights = (breast_run / "model.safetensors").stat().st_size
    out = tmp_path / "new-run"
    before = _digest(breast_run)
    r = _medbench(["train", "--dataset", "breastmnist", "--model", "cnn5", "--epochs", "2", "--seed", "0",
                   "--keep-checkpoints", "1", "--no-report", "--quiet", "--out", str(out)], limit=weights * 3 // 2)
    lines = r.stderr.splitlines()
    print(f"\nrc={r.returncode} {r.stderr}")
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"medbench: error: cannot write {out}{os.sep}"), lines[0]
    assert "File too large" in lines[0] and "free some space and run again" in lines[0]
    assert _digest(breast_run) == before
    # what was written before the failure is complete; what failed left nothing behind
    assert not [p.name for p in out.rglob(".*")], "a temporary file was left behind"
    for name in ("model.safetensors", "checkpoints/epoch_0001.safetensors"):
        with safe_open(str(out / name), framework="pt") as f:
            assert f.metadata()["epoch"] == "1" and len(list(f.keys())) > 0
    assert not (out / "resume.safetensors").exists() and not (out / "metrics.json").exists()


@pytest.mark.slow
def test_disk_full_while_rewriting_metrics_leaves_the_earlier_results(tmp_path, breast_run):
    run = tmp_path / "run"
    shutil.copytree(breast_run, run)
    before = _digest(run)
    r = _medbench(["evaluate", str(run)], limit=2048)
    lines = r.stderr.splitlines()
    print(f"\nrc={r.returncode} {r.stderr}")
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"medbench: error: cannot write {run}{os.sep}") and "free some space" in lines[0]
    assert _digest(run) == before


@pytest.mark.slow
def test_serve_port_already_in_use(breast_run):
    """As tests/test_serve.py checks it, plus the catalogue's rules: one line, the fix, nothing written."""
    before = _digest(breast_run)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _medbench(["serve", str(breast_run), "--port", str(port)], timeout=120)
    lines = r.stderr.splitlines()
    print(f"\nrc={r.returncode} {r.stderr}")
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0] and "choose another --port" in lines[0]
    assert _digest(breast_run) == before


def test_progress_bar_leaves_no_blank_line(capsys):
    """On a non-terminal (a pipe, a log) no bar is drawn: rich's transient bar would leave a blank line."""
    from medbench.progress import progress_bar

    with progress_bar("decode", total=2) as bar:
        bar.advance(2)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("error", [
    OSError(28, "No space left on device"),
    RuntimeError("Error while serializing: I/O error: Disk quota exceeded (os error 122)"),  # safetensors' style
], ids=["oserror-enospc", "library-error-with-os-error"])
def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, error):
    from medbench.errors import MedbenchError
    from medbench.fileio import atomic_path, write_text

    target = tmp_path / "metrics.json"
    write_text(target, '{"old": true}\n')
    with pytest.raises(MedbenchError, match=f"cannot write {target}: .*free some space") as err:
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise error
    assert "\n" not in str(err.value)
    assert target.read_text() == '{"old": true}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    with pytest.raises(RuntimeError, match="unrelated"):  # other failures pass through unchanged
        with atomic_path(target):
            raise RuntimeError("unrelated (os error 2)")
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
