import pytest
import torch
import torch.nn.functional as F

from medbench.errors import MedbenchError
from medbench.tasks import CornTask, MultiLabelTask, Task, make_task


def test_make_task_kinds_and_output_sizes():
    assert type(make_task("binary", 2)) is Task and make_task("binary", 2).num_outputs == 2
    assert type(make_task("multiclass", 9)) is Task and make_task("multiclass", 9).num_outputs == 9
    assert isinstance(make_task("multilabel", 14), MultiLabelTask) and make_task("multilabel", 14).num_outputs == 14
    assert type(make_task("ordinal", 5)) is Task  # plain cross-entropy, as the MedMNIST benchmark
    corn = make_task("ordinal", 5, ordinal_loss="corn")
    assert isinstance(corn, CornTask) and corn.num_outputs == 4
    with pytest.raises(MedbenchError, match="valid: ce, corn"):
        make_task("ordinal", 5, ordinal_loss="coral")
    with pytest.raises(MedbenchError, match="unknown task"):
        make_task("regression", 1)


def test_cross_entropy_task_matches_torch():
    logits = torch.randn(8, 3)
    y = torch.randint(0, 3, (8, 1))
    t = make_task("multiclass", 3, label_smoothing=0.1)
    assert torch.allclose(t.loss(logits, y), F.cross_entropy(logits, y[:, 0], label_smoothing=0.1))
    assert torch.allclose(t.loss(logits, y, smoothing=0.0), F.cross_entropy(logits, y[:, 0]))
    assert torch.allclose(t.scores(logits).sum(1), torch.ones(8))


def test_multilabel_sigmoid_bce_and_threshold():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    y = torch.tensor([[1, 0, 1]])
    t = make_task("multilabel", 3)
    assert torch.allclose(t.loss(logits, y), F.binary_cross_entropy_with_logits(logits, y.float()))
    assert t.decide(t.scores(logits)).tolist() == [[1, 0, 0]]  # sigmoid(0) = 0.5 is not > 0.5


def test_corn_probabilities_are_valid_and_rank_consistent():
    t = make_task("ordinal", 5, ordinal_loss="corn")
    logits = torch.randn(1000, 4) * 3
    p = t.scores(logits)
    assert p.shape == (1000, 5)
    assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(1000), atol=1e-6)
    # P(y > k) = sum of class probabilities above k, and it falls with k
    above = p.flip(1).cumsum(1).flip(1)[:, 1:]
    assert (above[:, 1:] <= above[:, :-1] + 1e-6).all()


def test_corn_loss_uses_only_conditional_subsets():
    t = make_task("ordinal", 3, ordinal_loss="corn")
    logits = torch.tensor([[0.3, -0.7]])
    # y = 0: only task 0 ("y > 0") sees the sample, with target 0
    assert torch.allclose(t.loss(logits, torch.tensor([[0]])),
                          F.binary_cross_entropy_with_logits(logits[:, :1], torch.zeros(1, 1)))
    # y = 2: both tasks see it, targets 1 and 1
    assert torch.allclose(t.loss(logits, torch.tensor([[2]])),
                          F.binary_cross_entropy_with_logits(logits, torch.ones(1, 2)))


def test_corn_learns_an_ordinal_problem():
    torch.manual_seed(0)
    x = torch.rand(512, 1) * 5
    y = x.long().clamp(max=4)
    t = make_task("ordinal", 5, ordinal_loss="corn")
    model = torch.nn.Linear(1, 4)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        t.loss(model(x), y).backward()
        opt.step()
    pred = t.decide(t.scores(model(x)))
    assert (pred == y[:, 0]).float().mean() > 0.9


def test_multilabel_loss_leaves_unknown_labels_out():
    """u-ignore keeps -1 labels: the loss is the BCE mean over the known entries, gradient 0 on the rest."""
    logits = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([[1, 0, -1, 1], [0, -1, -1, 0], [1, 1, 0, 0], [-1, 0, 1, 1], [0, 0, 0, -1], [1, -1, 1, 0]])
    t = make_task("multilabel", 4)
    loss = t.loss(logits, y)
    known = y >= 0
    expected = F.binary_cross_entropy_with_logits(logits[known], y[known].float())
    assert torch.allclose(loss, expected)
    loss.backward()
    assert (logits.grad[~known] == 0).all() and (logits.grad[known] != 0).all()
    known = y.clamp_min(0)
    assert torch.allclose(t.loss(logits, known), F.binary_cross_entropy_with_logits(logits, known.float()))


def test_decide_is_the_one_decision_rule_for_numpy_and_torch():
    import numpy as np

    from medbench.metrics import acc, compute_metrics
    from medbench.tasks import decide

    s = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    assert decide(s, "binary").tolist() == [0, 1, 0]  # 0.5 is not > 0.5
    assert decide(s, "binary", threshold=0.25).tolist() == [1, 1, 1]
    assert decide(s, "multiclass").tolist() == decide(s, "ordinal").tolist() == [0, 1, 0]
    assert decide(s, "multilabel").tolist() == [[1, 0], [0, 1], [0, 0]]
    for task in ("binary", "multiclass", "multilabel"):
        assert decide(torch.from_numpy(s), task, 0.45).tolist() == decide(s, task, 0.45).tolist()
    with pytest.raises(MedbenchError, match="unknown task"):
        decide(s, "regression")
    # the metrics decide with it: accuracy and the confusion matrix follow the threshold given
    y = np.array([[0], [1], [1]])
    for t in (0.25, 0.5, 0.55):
        pred = decide(s, "binary", t)
        assert acc(y, s, "binary", t) == np.mean(pred == y[:, 0])
        cm = compute_metrics(y, s, "binary", threshold=t)["confusion_matrix"]
        assert cm == [[int(((y[:, 0] == i) & (pred == j)).sum()) for j in (0, 1)] for i in (0, 1)]
