"""Data-parallel training and evaluation with torchrun, 2 CPU processes, gloo backend."""
import json
import os
import subprocess
import sys

import pytest

from medbench.distributed import Dist


def _torchrun(nproc, *args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "medbench", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_blocks_cover_every_sample_once():
    for n in (0, 1, 7, 156):
        for world in (1, 2, 3):
            blocks = [Dist(r, world).block(n) for r in range(world)]
            assert [i for b in blocks for i in range(n)[b]] == list(range(n))


@pytest.mark.slow
@pytest.mark.parametrize("budget", [None, "0"], ids=["memory", "store"])
def test_ddp_trains_and_evaluation_is_identical_with_one_or_two_processes(tmp_path, budget):
    """With the images in memory, and read from a store (each rank reads only its own rows)."""
    extra = ["--memory-budget", budget] if budget else []
    r = _torchrun(2, "train", "--dataset", "breastmnist", "--epochs", "1", "--out", "D", "--quiet", *extra,
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("results in D") == 1  # one summary, from rank 0
    run = tmp_path / "D"
    assert "world_size: 2" in (run / "config.yaml").read_text()
    assert ("memory_budget: 0.0" in (run / "config.yaml").read_text()) == bool(budget)  # evaluate streams too
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["test"]["n"] == 156 and len((run / "predictions" / "test.csv").read_text().splitlines()) == 1 + 156
    one = subprocess.run([sys.executable, "-m", "medbench", "evaluate", "D", "--json", "--quiet"], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert one.returncode == 0, one.stderr
    two = _torchrun(2, "evaluate", "D", "--json", "--quiet", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads(one.stdout) == json.loads(two.stdout) == trained
    assert sorted(p.name for p in (run / "evaluations").iterdir()) == ["plain", "plain-2"]  # neither overwritten
