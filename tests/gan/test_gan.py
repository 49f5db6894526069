import csv
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from medbench.cli import main
from medbench.data import read_npz
from medbench.errors import MedbenchError
from medbench.gan import Discriminator, Generator, load_generator, train_gan
from medbench.gan.synthetic import class_counts, quality_bar
from medbench.run import train

from conftest import make_npz


@pytest.mark.parametrize("size, channels", [(28, 1), (28, 3), (64, 1), (64, 3), (32, 1)])
def test_generator_and_discriminator_fit_the_image_size(size, channels):
    g, d = Generator(3, channels, size), Discriminator(3, channels, size)
    y = torch.tensor([0, 1, 2, 1])
    img = g(torch.randn(4, 100), y)
    assert img.shape == (4, channels, size, size) and img.min() >= -1 and img.max() <= 1
    assert d(img, y).shape == (4,)
    convs = [m.weight for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert all(abs(w.std().item() - 0.02) < 0.003 for w in convs)  # DCGAN initialisation N(0, 0.02)
    assert isinstance(g.net[-1], torch.nn.Tanh)
    assert any(isinstance(m, torch.nn.LeakyReLU) and m.negative_slope == 0.2 for m in d.modules())


def test_unsupported_size_is_a_clear_error():
    with pytest.raises(MedbenchError, match="30 px is not one: train it at --size 28 or 64"):
        Generator(2, 1, 30)


def test_the_label_steers_the_generator():
    g = Generator(2, 1, 28).eval()
    z = torch.randn(8, 100)
    assert not torch.allclose(g(z, torch.zeros(8, dtype=torch.long)), g(z, torch.ones(8, dtype=torch.long)))


def test_class_counts_match_or_balance():
    real = torch.tensor([0] * 30 + [1] * 10)
    assert class_counts(real, 2, 20, "match") == [15, 5]
    assert class_counts(real, 2, 30, "balance") == [5, 25]  # 35 / 35
    assert sum(class_counts(torch.tensor([0, 1, 2]), 3, 7, "match")) == 7


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory, medmnist_dir):
    out = tmp_path_factory.mktemp("gan") / "G"
    assert main(["gan", "train", "--dataset", "breastmnist", "--epochs", "2", "--judge-epochs", "2", "--out", str(out),
                 "--data-dir", str(medmnist_dir), "--quiet"]) == 0
    return out


@pytest.mark.slow
def test_gan_train_writes_generator_losses_grids_and_quality(generator_dir):
    grid = Image.open(generator_dir / "samples" / "epoch_0002.png")
    assert grid.size == (2 * (8 * 30 + 2), 2 * (2 * 30 + 2))  # 8 per row, one row per class (2), x2
    rows = list(csv.DictReader(open(generator_dir / "losses.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(np.isfinite(float(r["loss_d"])) for r in rows)
    g, info = load_generator(generator_dir)
    assert info["dataset"] == "breastmnist" and info["size"] == 28 and info["epoch"] == 2
    assert info["class_names"] == ["malignant", "normal, benign"]
    q = yaml.safe_load((generator_dir / "quality.json").read_text())
    assert set(q["per_class"]) == {"malignant", "normal, benign"}
    assert all(0 <= v["generated_as_intended"] <= 1 for v in q["per_class"].values())
    assert 0.5 < q["judge"]["test_acc"] <= 1
    # the verdict train --synthetic applies, and the weights it belongs to
    assert q["bar"]["value"] == 0.6 and q["bar"]["rule"] == "chance 1/2 + 0.1, for every class"
    assert all(v["passes"] == (v["generated_as_intended"] >= 0.6) for v in q["per_class"].values())
    assert q["bar"]["passed"] == all(v["passes"] for v in q["per_class"].values())
    assert q["generator_sha256"] == hashlib.sha256((generator_dir / "generator.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_gan_sample_writes_medmnist_like_npz(generator_dir, tmp_path, capsys):
    out = tmp_path / "samples.npz"
    assert main(["gan", "sample", str(generator_dir), "--per-class", "10", "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as d:
        assert d["train_images"].shape == (20, 28, 28) and d["train_images"].dtype == np.uint8
        assert d["train_labels"].shape == (20, 1) and sorted(np.unique(d["train_labels"])) == [0, 1]
        assert d["train_images"].std() > 1
    assert "20 images (10 per class" in capsys.readouterr().out
    again = tmp_path / "again.npz"
    main(["gan", "sample", str(generator_dir / "generator.safetensors"), "--per-class", "10", "--out", str(again)])
    with np.load(out) as a, np.load(again) as b:
        assert np.array_equal(a["train_images"], b["train_images"])  # seeded


def _judged(generator_dir, tmp_path, shares: dict | None, name: str = "G"):
    """A copy of the real tiny generator whose quality.json says ``shares`` (None: no quality.json)."""
    g = tmp_path / name
    shutil.copytree(generator_dir, g, ignore=shutil.ignore_patterns("judge"))
    q = json.loads((g / "quality.json").read_text())
    if shares is None:
        (g / "quality.json").unlink()
        return g
    for c, v in shares.items():
        q["per_class"][c]["generated_as_intended"] = v
    (g / "quality.json").write_text(json.dumps(q))
    return g


GOOD = {"malignant": 0.81, "normal, benign": 0.93}
BAD = {"malignant": 0.0, "normal, benign": 0.97}  # the 5-epoch generator


def test_quality_bar_is_chance_plus_a_margin():
    assert quality_bar(2) == pytest.approx(0.6) and quality_bar(5) == pytest.approx(0.3)
    assert quality_bar(7) == pytest.approx(1 / 7 + 0.1)


@pytest.mark.slow
def test_training_with_synthetic_images_records_the_generator(generator_dir, tmp_path):
    generator_dir = _judged(generator_dir, tmp_path, GOOD)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "breastmnist", "--model", "cnn5", "--epochs", "1", "--synthetic",
                 str(generator_dir), "--synthetic-ratio", "0.5", "--out", str(run), "--quiet"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["synthetic"] == str(generator_dir) and saved["synthetic_ratio"] == 0.5
    rec = saved["provenance"]["synthetic"]
    assert rec["quality"]["passed"] and not rec["quality"]["forced"] and rec["quality"]["bar"] == 0.6
    assert rec["quality"]["generated_as_intended"] == GOOD
    assert rec["quality"]["source"] == str(generator_dir / "quality.json")
    assert rec["sha256"] == hashlib.sha256((generator_dir / "generator.safetensors").read_bytes()).hexdigest()
    assert rec["count"] == 273 and rec["per_class"] == {"malignant": 74, "normal, benign": 199}  # 546 x 0.5, real mix
    metrics = yaml.safe_load((run / "metrics.json").read_text())
    assert [metrics[s]["n"] for s in ("train", "val", "test")] == [546, 78, 156]  # evaluation sees real data only


@pytest.mark.slow
def test_synthetic_from_a_samples_file_and_its_limits(generator_dir, tmp_path, capsys):
    generator_dir = _judged(generator_dir, tmp_path, GOOD)
    samples = tmp_path / "s.npz"
    main(["gan", "sample", str(generator_dir), "--per-class", "10", "--out", str(samples)])
    capsys.readouterr()
    ok = ["train", "--dataset", "breastmnist", "--model", "cnn5", "--epochs", "1", "--synthetic", str(samples),
          "--synthetic-ratio", "0.01", "--quiet"]
    assert main(ok + ["--out", str(tmp_path / "r")]) == 0  # 5 images: 1 malignant, 4 benign
    capsys.readouterr()  # the run's own warnings (a one-epoch model may collapse to one class)
    rec = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["provenance"]["synthetic"]
    assert rec["count"] == 5 and rec["quality"]["passed"]  # the quality.json the samples carry
    assert rec["quality"]["generated_as_intended"] == GOOD and "s.npz (the quality.json" in rec["quality"]["source"]
    for argv, fragment in [
        (["--synthetic-ratio", "0.5"], "holds 10 images of class 0, the run needs 74"),
        (["--synthetic-ratio", "2"], "synthetic_ratio 2.0 exceeds synthetic_cap 1.0"),
        (["--dataset", "retinamnist"], "s.npz: train_images has 1 channel(s), the catalogue says 3"),
    ]:
        assert main(ok + argv + ["--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
    assert main(ok + ["--dataset", "retinamnist", "--synthetic", str(generator_dir), "--out", str(tmp_path / "b")]) == 2
    assert "makes 1-channel 28 px images of breastmnist (2 classes)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not (tmp_path / "b").exists()  # nothing written on a bad start


TRAIN = ["train", "--dataset", "breastmnist", "--model", "cnn2", "--epochs", "1", "--synthetic-ratio", "0.1",
         "--quiet"]


def _refused(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.slow
def test_a_generator_below_the_bar_is_refused_unless_forced(generator_dir, tmp_path, capsys):
    g = _judged(generator_dir, tmp_path, BAD)
    err = _refused(TRAIN + ["--synthetic", str(g), "--out", str(tmp_path / "bad")], capsys)
    assert err == (f"medbench: error: {g / 'quality.json'}: the judge assigns 0.000 of the generated 'malignant' "
                   f"images to 'malignant' (it recognises "
                   f"{json.loads((g / 'quality.json').read_text())['per_class']['malignant']['real_test_recall']:.3f}"
                   f" of real ones), below the bar 0.600 (chance 1/2 + 0.1); train the generator longer (`medbench "
                   f"gan train --epochs`), or pass --synthetic-force to use them anyway")
    assert not (tmp_path / "bad").exists()
    # both classes below: the worst first, the other named too
    g2 = _judged(generator_dir, tmp_path, {"malignant": 0.4, "normal, benign": 0.55}, "G2")
    err = _refused(TRAIN + ["--synthetic", str(g2), "--out", str(tmp_path / "bad")], capsys)
    assert "assigns 0.400 of the generated 'malignant'" in err
    assert err.endswith("(chance 1/2 + 0.1); also below: 'normal, benign' 0.550; train the generator longer "
                        "(`medbench gan train --epochs`), or pass --synthetic-force to use them anyway")
    # forced: used, warned about, and recorded in the run
    run = tmp_path / "forced"
    assert main(TRAIN + ["--synthetic", str(g), "--synthetic-force", "--out", str(run)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "--synthetic-force" in line]
    assert len(warned) == 1 and warned[0].startswith("medbench: warning: --synthetic-force: generated images used "
                                                     "despite the quality check (") and "0.000 of the gen" in warned[0]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["synthetic_force"] is True
    q = saved["provenance"]["synthetic"]["quality"]
    assert q["forced"] and not q["passed"] and q["below_bar"] == {"malignant": 0.0} and "despite" in q["warning"]


@pytest.mark.slow
def test_unknown_quality_is_refused_unless_forced(generator_dir, tmp_path, capsys):
    none = _judged(generator_dir, tmp_path, None)  # as after `gan train --judge-epochs 0`
    err = _refused(TRAIN + ["--synthetic", str(none), "--out", str(tmp_path / "bad")], capsys)
    assert f"{none / 'quality.json'} is missing" in err and "--judge-epochs N" in err and "--synthetic-force" in err
    # a quality.json written for other weights does not vouch for these
    other = _judged(generator_dir, tmp_path, GOOD, "other")
    q = json.loads((other / "quality.json").read_text())
    (other / "quality.json").write_text(json.dumps({**q, "generator_sha256": "0" * 64}))
    err = _refused(TRAIN + ["--synthetic", str(other / "generator.safetensors"), "--out", str(tmp_path / "bad")],
                   capsys)
    assert "does not describe" in err and "sha256 differs" in err
    # samples from a generator without quality.json, or any npz without the record: refused, forced they run
    samples = tmp_path / "none.npz"
    main(["gan", "sample", str(none), "--per-class", "50", "--out", str(samples)])
    plain = tmp_path / "plain.npz"
    with np.load(samples) as d:
        assert "medbench_quality" in d.files
        np.savez(plain, train_images=d["train_images"], train_labels=d["train_labels"])
    for f in (samples, plain):
        err = _refused(TRAIN + ["--synthetic", str(f), "--out", str(tmp_path / "bad")], capsys)
        assert err.startswith(f"medbench: error: {f} has no quality record") and "--synthetic-force" in err
    # samples from a generator below the bar carry its verdict
    bad = tmp_path / "bad.npz"
    main(["gan", "sample", str(_judged(generator_dir, tmp_path, BAD, "B")), "--per-class", "50", "--out", str(bad)])
    err = _refused(TRAIN + ["--synthetic", str(bad), "--out", str(tmp_path / "bad")], capsys)
    assert "bad.npz (the quality.json that `gan sample` copied in): the judge assigns 0.000" in err
    assert not (tmp_path / "bad").exists()
    assert main(TRAIN + ["--synthetic", str(plain), "--synthetic-force", "--out", str(tmp_path / "p")]) == 0
    assert f"medbench: warning: --synthetic-force: generated images used despite the quality check ({plain} has no " \
           f"quality record" in capsys.readouterr().err
    q = yaml.safe_load((tmp_path / "p" / "config.yaml").read_text())["provenance"]["synthetic"]["quality"]
    assert q["forced"] and not q["passed"] and "generated_as_intended" not in q


@pytest.mark.slow
def test_gan_on_generated_rgb_64px_multiclass_data_and_balanced_synthetic_training(tmp_path):
    ds = read_npz(make_npz(tmp_path / "dermamnist.npz", n=(70, 20, 30), size=64, channels=3, num_classes=7),
                  "dermamnist")
    res = train_gan(ds, tmp_path / "G", epochs=1, batch_size=32, judge_epochs=1, quiet=True)
    grid = Image.open(tmp_path / "G" / "samples" / "epoch_0001.png")
    assert grid.size == (2 * (8 * 66 + 2), 2 * (7 * 66 + 2)) and grid.mode == "RGB"
    assert len(res["quality"]["per_class"]) == 7
    bar = res["quality"]["bar"]
    assert bar["value"] == pytest.approx(1 / 7 + 0.1, abs=1e-4) and bar["rule"] == "chance 1/7 + 0.1, for every class"
    cfg = {"dataset": "dermamnist", "size": 64, "model": "cnn5", "epochs": 1, "synthetic": str(tmp_path / "G"),
           "synthetic_classes": "balance", "synthetic_force": not bar["passed"]}  # one epoch on noise: forced
    run = train(cfg, tmp_path / "run", dataset=ds, quiet=True)
    rec = yaml.safe_load((run / "config.yaml").read_text())["provenance"]["synthetic"]
    assert rec["count"] == 70 and set(rec["per_class"].values()) == {10}
    assert rec["quality"]["passed"] == bar["passed"] and rec["quality"]["forced"] == (not bar["passed"])


def test_multilabel_data_is_refused_with_a_reason(tmp_path):
    ds = read_npz(make_npz(tmp_path / "chestmnist.npz", num_classes=14, multilabel=True), "chestmnist")
    with pytest.raises(MedbenchError, match="chestmnist is a multilabel dataset; the conditional GAN needs one class"):
        train_gan(ds, tmp_path / "G", epochs=1, quiet=True)
