"""Class weights, the focal loss and the class-balanced sampler: loss values against hand computations and PyTorch,
batch composition and determinism, and the errors a user meets."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medbench.augment import BatchMix
from medbench.build import build_training_task
from medbench.config import resolve_config
from medbench.data.dataset import Split
from medbench.data.loader import Preprocess, iterate_batches
from medbench.data.sampling import BalancedSampler, sample_groups
from medbench.data.store import DiskImages
from medbench.engine import Precision, train_one_epoch
from medbench.errors import MedbenchError
from medbench.losses import class_weights, focal_terms, sigmoid_focal, softmax_focal
from medbench.models import create_model
from medbench.run import train
from medbench.tasks import make_task

# ---- class weights ----


def test_balanced_weights_are_inverse_frequency_of_train():
    y = np.array([[0]] * 6 + [[1]] * 3 + [[2]] * 1)
    w = class_weights("balanced", "multiclass", y, ["a", "b", "c"])
    assert w == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])
    assert class_weights("none", "binary", y, ["a", "b", "c"]) is None
    assert class_weights([1, 19], "binary", y, ["neg", "pos"]) == [1.0, 19.0]


def test_multilabel_positive_weights_ignore_uncertain_entries():
    y = np.array([[1, 0], [0, -1], [0, 1], [0, -1], [-1, 0]])
    # label 0: 1 positive, 3 negatives (one -1 ignored); label 1: 1 positive, 2 negatives (two -1 ignored)
    assert class_weights("balanced", "multilabel", y, ["x", "y"]) == pytest.approx([3.0, 2.0])


def test_weight_errors_name_the_count_and_the_classes():
    with pytest.raises(MedbenchError, match=r"has 3 value\(s\) but the data have 2 classes \('malignant', 'benign'\)"):
        class_weights([1, 2, 3], "binary", np.zeros((4, 1)), ["malignant", "benign"])
    with pytest.raises(MedbenchError, match=r"2 labels \('a', 'b'\): give one positive weight per label"):
        class_weights([1], "multilabel", np.zeros((4, 2)), ["a", "b"])
    with pytest.raises(MedbenchError, match=r"class\(es\) c have no training image"):
        class_weights("balanced", "multiclass", np.array([[0], [1]]), ["a", "b", "c"])
    with pytest.raises(MedbenchError, match=r"label\(s\) b have no positive or no negative"):
        class_weights("balanced", "multilabel", np.array([[1, 0], [0, 0]]), ["a", "b"])
    for bad in ("1,x", "-1,2", "0,1", "balance"):
        with pytest.raises(MedbenchError, match="class_weights"):
            resolve_config({"dataset": "breastmnist", "class_weights": bad})
    assert resolve_config({"dataset": "breastmnist", "class_weights": "1,19"}).class_weights == [1.0, 19.0]


def test_training_task_records_the_weights_it_uses():
    class DS:  # what build_training_task reads of a dataset
        task, class_names, num_classes = "binary", ["malignant", "benign"], 2

    cfg = resolve_config({"dataset": "breastmnist", "class_weights": "balanced", "loss": "focal",
                          "focal_gamma": 1.5})
    task, rec = build_training_task(cfg, DS, torch.tensor([[0]] * 147 + [[1]] * 399))
    assert task.gamma == 1.5 and task.weights.tolist() == pytest.approx([546 / 294, 546 / 798])
    assert rec == {"class_weights": {"from": "balanced over 546 training images",
                                     "weight_per_class": {"malignant": 1.857143, "benign": 0.684211}}}
    plain, rec = build_training_task(resolve_config({"dataset": "breastmnist"}), DS, torch.tensor([[0], [1]]))
    assert plain.weights is None and plain.gamma == 0 and rec == {}


# ---- loss values ----


def test_softmax_focal_matches_a_hand_computation():
    logits, y = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]), torch.tensor([0, 2])
    z = [math.exp(2) + 1 + math.exp(-1), math.exp(0.5) + math.exp(1.5) + 1]
    p0, p1 = math.exp(2) / z[0], 1 / z[1]
    w = [1.0, 2.0, 4.0]
    fl = [-((1 - p0) ** 2) * math.log(p0), -((1 - p1) ** 2) * math.log(p1)]
    assert float(softmax_focal(logits, y, gamma=2)) == pytest.approx(sum(fl) / 2, rel=1e-6)
    expect = (w[0] * fl[0] + w[2] * fl[1]) / (w[0] + w[2])  # weights act as alpha; the weighted mean
    assert float(softmax_focal(logits, y, gamma=2, weight=torch.tensor(w))) == pytest.approx(expect, rel=1e-6)


def test_focal_with_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, y, w = torch.randn(16, 4), torch.randint(4, (16,)), torch.tensor([0.5, 1.0, 2.0, 3.0])
    for weight in (None, w):
        for eps in (0.0, 0.1):
            ref = F.cross_entropy(logits, y, weight=weight, label_smoothing=eps)
            assert torch.equal(softmax_focal(logits, y, gamma=0, weight=weight, smoothing=eps), ref)
            # the formula written out agrees at gamma 0 (to float rounding)
            assert float(focal_terms(logits, y, gamma=0, weight=weight, smoothing=eps)) == pytest.approx(
                float(ref), abs=1e-6)
    ce = make_task("multiclass", 4, weights=w.tolist(), label_smoothing=0.1)
    focal0 = make_task("multiclass", 4, weights=w.tolist(), label_smoothing=0.1, loss="focal", focal_gamma=0)
    assert torch.equal(ce.loss(logits, y[:, None]), focal0.loss(logits, y[:, None]))
    plain = make_task("binary", 2)
    assert torch.equal(plain.loss(logits[:, :2], (y[:, None] % 2)), F.cross_entropy(logits[:, :2], y % 2))


def test_sigmoid_focal_matches_a_hand_computation_and_bce_at_gamma_zero():
    x = torch.tensor([[1.5, -0.5]])
    p = [1 / (1 + math.exp(-1.5)), 1 / (1 + math.exp(0.5))]
    got = sigmoid_focal(x, torch.tensor([[1.0, 0.0]]), gamma=2, pos_weight=torch.tensor([3.0, 5.0]))
    assert got[0].tolist() == pytest.approx([-3 * (1 - p[0]) ** 2 * math.log(p[0]),
                                             -(p[1] ** 2) * math.log(1 - p[1])], rel=1e-6)
    torch.manual_seed(1)
    logits, labels = torch.randn(8, 3), torch.randint(-1, 2, (8, 3))  # -1: uncertain, left out
    pw = [2.0, 0.5, 7.0]
    known = labels >= 0
    ref = F.binary_cross_entropy_with_logits(logits, labels.float().clamp_min(0), pos_weight=torch.tensor(pw),
                                             reduction="none")[known].mean()
    task = make_task("multilabel", 3, weights=pw, loss="focal", focal_gamma=0)
    assert float(task.loss(logits, labels)) == pytest.approx(float(ref), rel=1e-6)
    focal = make_task("multilabel", 3, weights=pw, loss="focal", focal_gamma=2)
    per = sigmoid_focal(logits, labels.float().clamp_min(0), gamma=2, pos_weight=torch.tensor(pw))
    assert float(focal.loss(logits, labels)) == pytest.approx(float(per[known].mean()), rel=1e-6)


def test_corn_weights_each_image_by_its_class():
    torch.manual_seed(2)
    logits, y = torch.randn(6, 3), torch.tensor([[0], [1], [2], [3], [3], [1]])
    plain = make_task("ordinal", 4, ordinal_loss="corn")
    same = make_task("ordinal", 4, ordinal_loss="corn", weights=[2.0] * 4)
    assert float(same.loss(logits, y)) == pytest.approx(float(plain.loss(logits, y)), rel=1e-6)
    w = [1.0, 2.0, 3.0, 4.0]
    weighted = make_task("ordinal", 4, ordinal_loss="corn", weights=w)
    k = torch.arange(3)
    mask, target = (y >= k).float(), (y > k).float()
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    sw = torch.tensor(w)[y[:, 0]][:, None] * mask
    assert float(weighted.loss(logits, y)) == pytest.approx(float((per * sw).sum() / sw.sum()), rel=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_gradients_stay_finite_on_saturated_outputs(gamma):
    logits = torch.tensor([[60.0, -60.0, 0.0], [-60.0, 60.0, 0.0]], requires_grad=True)
    loss = make_task("multiclass", 3, loss="focal", focal_gamma=gamma, label_smoothing=0.1).loss(
        logits, torch.tensor([[0], [0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    x = torch.tensor([[80.0, -80.0]], requires_grad=True)
    make_task("multilabel", 2, loss="focal", focal_gamma=gamma).loss(x, torch.tensor([[0, 1]])).backward()
    assert torch.isfinite(x.grad).all()


def test_weighted_focal_trains_with_mixup_cutmix_and_smoothing():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = (torch.arange(40) % 5 == 0).long()[:, None]
    split = Split(images, labels)
    task = make_task("binary", 2, weights=[0.6, 2.5], loss="focal", focal_gamma=2, label_smoothing=0.1)
    model = create_model("cnn2", num_classes=2, in_chans=1, img_size=28)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    torch.manual_seed(0)
    out = train_one_epoch(model, task, split, opt, sched, Preprocess(), Precision(torch.device("cpu"), "fp32"), 8,
                          torch.Generator().manual_seed(1), mix=BatchMix(0.4, 0.4),
                          sampler=BalancedSampler(labels, "binary"))
    assert math.isfinite(out["loss"]) and out["labels"].shape == (40, 1)


# ---- the balanced sampler ----


def _imbalanced(n=2000, share=0.05):
    y = torch.zeros(n, 1, dtype=torch.long)
    y[: int(n * share)] = 1
    return y


def test_balanced_epochs_draw_each_class_half_the_time_and_are_deterministic():
    y = _imbalanced()
    s = BalancedSampler(y, "binary", ["neg", "pos"])
    order = s.epoch(torch.Generator().manual_seed(7))
    assert len(order) == 2000 and order.dtype == torch.long
    share = float(y[order, 0].float().mean())
    assert abs(share - 0.5) < 0.04  # sd of the share over 2000 draws: 0.011
    assert len(set(order[y[order, 0] == 1].tolist())) > 90  # nearly all 100 positives drawn, with repeats
    assert torch.equal(order, s.epoch(torch.Generator().manual_seed(7)))
    assert not torch.equal(order, s.epoch(torch.Generator().manual_seed(8)))
    three = torch.tensor([[0]] * 600 + [[1]] * 300 + [[2]] * 100)
    drawn = three[BalancedSampler(three, "multiclass").epoch(torch.Generator().manual_seed(0)), 0]
    assert np.allclose(np.bincount(drawn.numpy(), minlength=3) / 1000, 1 / 3, atol=0.05)
    assert "2 groups (neg 1900, pos 100 images), each drawn 1/2" in s.describe()


def test_multilabel_groups_by_the_rarest_positive_label():
    y = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0], [0, -1, 0], [1, 0, 0]])
    # positives: label 0: 4, label 1: 1, label 2: 1 (ties: the first label); no positive label: group 3
    assert sample_groups(y, "multilabel").tolist() == [1, 0, 2, 3, 3, 0]
    names = BalancedSampler(y, "multilabel", ["a", "b", "c"]).group_names
    assert names == ["a", "b", "c", "no positive label"]


def test_balanced_batches_are_the_same_from_disk_sharded_and_resumed(tmp_path):
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (203, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = _imbalanced(203, 0.1)
    np.save(tmp_path / "x.npy", images.numpy())
    memory, disk = Split(images, y), Split(DiskImages(tmp_path / "x.npy"), y)
    sampler = BalancedSampler(y, "binary")

    def batches(split, **kw):
        order = sampler.epoch(torch.Generator().manual_seed(5))
        return list(iterate_batches(split, 16, shuffle=True, order=order, **kw))

    mem = batches(memory)
    assert len(mem) == 13  # 203 draws, 16 a batch: 12 full ones and the last batch of 11
    for (a, ya), (b, yb) in zip(mem, batches(disk, prefetch=2)):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    for (x, yx), (x0, y0), (x1, y1) in zip(mem, batches(memory, shard=(0, 2)), batches(memory, shard=(1, 2))):
        assert torch.equal(x0, x[0::2]) and torch.equal(y0, yx[0::2])
        assert torch.equal(x1, x[1::2]) and torch.equal(y1, yx[1::2])
    resumed = batches(disk, skip=5)
    assert len(resumed) == 8 and all(torch.equal(a, b) for (a, _), (b, _) in zip(mem[5:], resumed))
    drawn = torch.cat([yb for _, yb in mem])
    assert 0.35 < float(drawn.float().mean()) < 0.65


def test_classical_models_refuse_the_network_only_options(tmp_path):
    with pytest.raises(MedbenchError, match="sk:logreg is a classical model fitted in one step: --class-weights"):
        train({"dataset": "breastmnist", "model": "sk:logreg", "sampler": "balanced"}, tmp_path / "r", quiet=True)
    assert not (tmp_path / "r" / "metrics.json").exists()
