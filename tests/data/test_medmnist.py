"""MedMNIST data layer: catalogue, data root, npz validation, and downloads from a real local HTTP server."""
import hashlib
import http.server
import shutil

import numpy as np
import pytest
from medmnist.info import INFO

from medbench.data import CATALOGUE, data_root, download, list_datasets, load_medmnist, read_npz
from medbench.data.medmnist import expected_md5, file_name, url_for
from medbench.errors import MedbenchError

from conftest import make_npz

BREAST_MD5 = "750601b1f35ba3300ea97c75c52ff8f6"


def test_catalogue_is_medmnist_info_2d():
    assert len(CATALOGUE) == 12 and not any(k.endswith("3d") for k in CATALOGUE)
    assert all(CATALOGUE[k] is INFO[k] for k in CATALOGUE)
    assert file_name("breastmnist", 224) == "breastmnist_224.npz" and file_name("breastmnist") == "breastmnist.npz"
    assert expected_md5("breastmnist", 224) == INFO["breastmnist"]["MD5_224"]
    assert expected_md5("breastmnist") == BREAST_MD5


def test_urls_sizes_and_names(monkeypatch):
    monkeypatch.delenv("MEDBENCH_MIRROR")
    assert url_for("pneumoniamnist", 64) == INFO["pneumoniamnist"]["url_64"]
    monkeypatch.setenv("MEDBENCH_MIRROR", "https://mirror.example/medmnist/")
    assert url_for("pneumoniamnist", 64) == "https://mirror.example/medmnist/pneumoniamnist_64.npz"
    with pytest.raises(MedbenchError, match="size must be one of 28, 64, 128, 224"):
        url_for("breastmnist", 32)
    with pytest.raises(MedbenchError, match=r"Did you mean breastmnist.*Valid: pathmnist"):
        load_medmnist("breastmnis")


def test_data_root_precedence(monkeypatch, tmp_path):
    assert data_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("MEDBENCH_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("MEDBENCH_DATA")
    assert data_root().name == ".medmnist" and data_root().parent.is_dir()


def test_real_files_load_as_uint8_tensors(medmnist_dir):
    ds = load_medmnist("breastmnist", data_dir=medmnist_dir, progress=False)
    raw = np.load(medmnist_dir / "breastmnist.npz")
    assert (ds.task, ds.class_names, ds.md5) == ("binary", ["malignant", "normal, benign"], BREAST_MD5)
    for split, n in [("train", 546), ("val", 78), ("test", 156)]:
        assert ds[split].images.shape == (n, 1, 28, 28) and str(ds[split].images.dtype) == "torch.uint8"
        assert ds[split].labels.shape == (n, 1) and str(ds[split].labels.dtype) == "torch.int64"
        assert np.array_equal(ds[split].images[:, 0].numpy(), raw[f"{split}_images"])
        assert np.array_equal(ds[split].labels.numpy(), raw[f"{split}_labels"])
    assert load_medmnist("breastmnist", data_dir=medmnist_dir) is ds  # decoded once per process
    retina = load_medmnist("retinamnist", data_dir=medmnist_dir)
    assert retina.task == "ordinal" and retina.num_classes == 5 and retina["train"].images.shape == (1080, 3, 28, 28)
    assert np.array_equal(retina["test"].images.permute(0, 2, 3, 1).numpy(),
                          np.load(medmnist_dir / "retinamnist.npz")["test_images"])


def test_list_datasets(medmnist_dir):
    rows = {r["name"]: r for r in list_datasets(medmnist_dir)}
    assert len(rows) == 12
    assert rows["breastmnist"]["cached_sizes"] == [28] and rows["breastmnist"]["classes"] == ["malignant",
                                                                                              "normal, benign"]
    assert rows["pathmnist"]["cached_sizes"] == [] and rows["pathmnist"]["task"] == "multiclass"


# ---- downloads from a real HTTP server on 127.0.0.1 ----

class _ShortBody(http.server.BaseHTTPRequestHandler):
    """Promises more bytes than it sends, then closes: a connection that breaks mid-download."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "600000")  # under the size cap
        self.end_headers()
        self.wfile.write(b"PK" * 1000)

    def log_message(self, *args):
        pass


def _leftovers(root):
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_download_verifies_and_renames_atomically(mirror, tmp_path, medmnist_dir):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(medmnist_dir / "breastmnist.npz", served)
    mirror(served)
    root = tmp_path / "root"
    path = download("breastmnist", 28, data_dir=root, progress=False)
    assert path == root / "breastmnist.npz" and _leftovers(root) == ["breastmnist.npz"]
    assert hashlib.md5(path.read_bytes()).hexdigest() == BREAST_MD5
    # a missing file is downloaded on first use
    ds = load_medmnist("breastmnist", data_dir=tmp_path / "fresh", progress=False)
    assert ds["train"].images.shape == (546, 1, 28, 28) and _leftovers(tmp_path / "fresh") == ["breastmnist.npz"]


@pytest.mark.parametrize("damage, fragment", [
    ("truncate", "is corrupted: md5"),  # the server sends the short file with a matching Content-Length
    ("flip", "is corrupted: md5"),
    ("missing", "failed (HTTP 404"),
])
def test_bad_downloads_are_reported_and_leave_nothing(mirror, tmp_path, medmnist_dir, damage, fragment):
    served = tmp_path / "served"
    served.mkdir()
    data = bytearray((medmnist_dir / "breastmnist.npz").read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[1000:1010] = bytes(b ^ 0xFF for b in data[1000:1010])
    if damage != "missing":
        (served / "breastmnist.npz").write_bytes(bytes(data))
    base = mirror(served)
    root = tmp_path / "root"
    with pytest.raises(MedbenchError) as err:
        download("breastmnist", 28, data_dir=root, progress=False)
    msg = str(err.value)
    assert f"{base}breastmnist.npz" in msg and fragment in msg
    assert f"save it as {root / 'breastmnist.npz'}" in msg and BREAST_MD5 in msg  # how to fix it by hand
    assert _leftovers(root) == []


def test_connection_broken_mid_body(mirror, tmp_path):
    mirror(handler=_ShortBody)
    root = tmp_path / "root"
    with pytest.raises(MedbenchError, match="breastmnist.npz (broke off after|is truncated)"):
        download("breastmnist", 28, data_dir=root, progress=False, timeout=10)
    assert _leftovers(root) == []


def test_file_with_wrong_md5_is_reported_not_used_and_kept(tmp_path, medmnist_dir):
    data = bytearray((medmnist_dir / "breastmnist.npz").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "breastmnist.npz").write_bytes(bytes(data))
    with pytest.raises(MedbenchError) as err:
        load_medmnist("breastmnist", data_dir=tmp_path, progress=False)
    msg = str(err.value)
    assert str(tmp_path / "breastmnist.npz") in msg and BREAST_MD5 in msg and "not used" in msg
    assert (tmp_path / "breastmnist.npz").exists()


# ---- npz validation: every error names the file ----

def _write(path, **over):
    make_npz(path, num_classes=2)
    arrays = dict(np.load(path))
    for key, value in over.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("over, fragment", [
    ({"test_labels": None}, "missing arrays ['test_labels']"),
    ({"train_images": np.zeros((60, 28, 28), np.float32)}, "train_images has dtype float32, expected uint8"),
    ({"train_images": np.zeros((60, 28, 28, 3), np.uint8)}, "train_images has 3 channel(s), the catalogue says 1"),
    ({"val_images": np.zeros((20, 32, 32), np.uint8)}, "val_images are 32x32, expected 28x28"),
    ({"train_labels": np.full((60, 1), 2, np.uint8)}, "train_labels has values in [2, 2], expected [0, 1]"),
    ({"train_labels": np.zeros((59, 1), np.uint8)}, "train_labels has shape (59, 1), expected (60, 1)"),
    ({"train_labels": np.zeros((60, 1), np.float32)}, "train_labels has dtype float32, expected integers"),
])
def test_invalid_npz_is_named(tmp_path, over, fragment):
    path = _write(tmp_path / "breastmnist.npz", **over)
    with pytest.raises(MedbenchError) as err:
        read_npz(path, "breastmnist", 28)
    assert str(err.value).startswith(str(path)) and fragment in str(err.value)


def test_garbage_and_truncated_files(tmp_path, medmnist_dir):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file at all")
    with pytest.raises(MedbenchError, match=f"{junk}: not a readable .npz file"):
        read_npz(junk, "breastmnist")
    cut = tmp_path / "cut.npz"
    cut.write_bytes((medmnist_dir / "breastmnist.npz").read_bytes()[:300_000])
    with pytest.raises(MedbenchError, match=str(cut)):
        read_npz(cut, "breastmnist")


def test_generated_multilabel_and_flat_labels(tmp_path):
    ds = read_npz(make_npz(tmp_path / "chest.npz", num_classes=14, multilabel=True), "chestmnist")
    assert ds.task == "multilabel" and ds["train"].labels.shape == (60, 14) and ds.num_classes == 14
    flat = _write(tmp_path / "b.npz", train_labels=np.zeros(60, np.uint8))
    assert read_npz(flat, "breastmnist")["train"].labels.shape == (60, 1)
