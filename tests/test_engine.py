import pytest
import torch

from medbench.config import resolve_config
from medbench.data.dataset import Split
from medbench.data.loader import Preprocess, iterate_batches
from medbench.engine import WeightEMA, build_optimizer, build_scheduler, steps_per_epoch


def _lrs(settings, steps_per_epoch_):
    cfg = resolve_config({"dataset": "breastmnist", **settings})
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, steps_per_epoch_)
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch_):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_multistep_drops_on_epoch_boundaries_like_the_benchmark():
    lrs = _lrs({"recipe": "medmnist-v2", "epochs": 8}, 3)  # milestones at 50 % and 75 %: epochs 4 and 6
    per_epoch = lrs[::3]
    assert per_epoch == pytest.approx([1e-3] * 4 + [1e-4] * 2 + [1e-5] * 2)
    assert len(set(lrs[12:15])) == 1  # constant within an epoch


def test_cosine_and_onecycle_shapes():
    cos = _lrs({"epochs": 4, "schedule": "cosine"}, 5)
    assert cos[0] == pytest.approx(1e-3) and all(a >= b for a, b in zip(cos, cos[1:])) and cos[-1] < 1e-5
    one = _lrs({"epochs": 4, "schedule": "onecycle"}, 5)
    peak = max(range(len(one)), key=one.__getitem__)
    assert one[peak] == pytest.approx(1e-3) and 0 < peak < len(one) - 1 and one[0] < 1e-4 and one[-1] < 1e-6


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_optimizers(name, cls):
    opt = build_optimizer(resolve_config({"dataset": "x", "optimizer": name, "weight_decay": 1e-4}),
                          torch.nn.Linear(2, 2))
    assert type(opt) is cls and opt.param_groups[0]["weight_decay"] == 1e-4


def test_batches_cover_the_split_and_shards_partition_each_batch():
    split = Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous(),
                  torch.arange(10).view(10, 1))
    seen = torch.cat([y for _, y in iterate_batches(split, 4)])
    assert seen.view(-1).tolist() == list(range(10))
    order = [y.view(-1).tolist() for _, y in iterate_batches(split, 4, shuffle=True,
                                                              generator=torch.Generator().manual_seed(0))]
    assert sum(len(b) for b in order) == 10 and steps_per_epoch(10, 4) == len(order) == 3
    shards = [[y.view(-1).tolist() for _, y in iterate_batches(split, 4, shuffle=True, shard=(r, 2),
                                                               generator=torch.Generator().manual_seed(0))]
              for r in range(2)]
    # the same batches, each split in two; a trailing batch too small to give each rank 2 samples is skipped
    assert steps_per_epoch(10, 4, world=2) == len(shards[0]) == len(shards[1]) == 2
    assert [sorted(a + b) for a, b in zip(*shards)] == [sorted(b) for b in order[:2]]
    assert steps_per_epoch(9, 4) == 2  # a trailing single sample is skipped when shuffling


def test_preprocess_normalises_and_repeats_grey():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    out = Preprocess(0.5, 0.5, to_rgb=True)(x)
    assert out.shape == (2, 3, 1, 1) and out[:, 0].view(-1).tolist() == pytest.approx([-1.0, 1.0])


def test_weight_ema_averages_parameters_and_buffers_with_a_warm_up():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = WeightEMA(model, decay=0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for t in range(1, 31):
        model(torch.randn(8, 3)).square().mean().backward()  # moves the weights and the BatchNorm statistics
        opt.step()
        opt.zero_grad()
        ema.update()
        d = min(0.9, (1 + t) / (10 + t))  # 2/11 at first: early weights are not frozen in
        for k, v in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    got = ema.module.state_dict()
    for k, v in expected.items():
        assert torch.allclose(got[k], v, atol=1e-6), k
    assert got["1.num_batches_tracked"] == 30 and not any(p.requires_grad for p in ema.module.parameters())
    assert not torch.allclose(got["0.weight"], model[0].weight)  # an average, not a copy
