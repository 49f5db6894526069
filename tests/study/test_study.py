"""Studies: grid expansion and ids, the results store (exclusive claims across processes), resumable runs
(an 8-run study killed with SIGKILL mid-way, then finished without training any run twice), the Ray executor."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medbench.config import load_config
from medbench.errors import MedbenchError
from medbench.study import Store, load_study, run_id, run_study, study_status
from medbench.study.store import pid_alive

from conftest import kill_when

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

TINY = """\
name: tiny
grid: {dataset: [breastmnist], model: [cnn5, cnn2], augment: [none, basic], seed: [0, 1]}
fixed: {epochs: 1}
"""
# the same eight runs: keys in another order, a default spelled out, the dataset moved to fixed
TINY_REORDERED = """\
fixed: {lr: 0.001, epochs: 1, dataset: breastmnist}
grid: {seed: [1, 0], augment: [basic, none], model: [cnn2, cnn5]}
name: tiny-again
"""


def _write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _env(medmnist_dir: Path) -> dict:
    return {**os.environ, "MEDBENCH_DATA": str(medmnist_dir), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# ---- grid ---------------------------------------------------------------------------------------------------
def test_grid_expands_in_file_order_with_stable_ids(tmp_path, medmnist_dir):
    study = load_study(_write(tmp_path, TINY))
    assert study.name == "tiny" and study.axes == ["dataset", "model", "augment", "seed"] and len(study) == 8
    assert [(r.axes["model"], r.axes["augment"], r.axes["seed"]) for r in study.runs[:3]] == [
        ("cnn5", "none", 0), ("cnn5", "none", 1), ("cnn5", "basic", 0)]  # last axis varies fastest
    assert all(r.config.epochs == 1 and r.config.model == r.axes["model"] for r in study.runs)
    assert all(len(i) == 12 and int(i, 16) >= 0 for i in study.ids) and len(set(study.ids)) == 8
    assert set(load_study(_write(tmp_path, TINY_REORDERED, "b.yaml")).ids) == set(study.ids)
    # another interpreter (another hash seed) computes the same ids
    code = ("import json,sys; from medbench.study import load_study; "
            "print(json.dumps(load_study(sys.argv[1]).ids))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "study.yaml")], env=_env(medmnist_dir),
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert json.loads(out) == study.ids


def test_grid_collapses_runs_that_resolve_to_the_same_config(tmp_path):
    study = load_study(_write(tmp_path, "name: d\ngrid: {lr: [0.001, 1.0e-3, 0.01], seed: [0, 0]}\n"
                                        "fixed: {dataset: breastmnist, epochs: 1}\n"))
    assert len(study) == 2 and [r.config.lr for r in study.runs] == [0.001, 0.01]
    single = load_study(_write(tmp_path, "name: one\nfixed: {dataset: breastmnist}\n", "one.yaml"))
    assert len(single) == 1 and single.runs[0].axes == {}


@pytest.mark.parametrize("text, message", [
    ("name: x\ngrid: {modle: [cnn5]}\nfixed: {dataset: breastmnist}\n", "unknown key 'modle' in grid"),
    ("name: x\nfixed: {dataset: breastmnist, epoch: 1}\n", "unknown key 'epoch' in fixed"),
    ("name: x\ngrid: {epochs: [1, 0]}\nfixed: {dataset: breastmnist}\n", "run 2 (epochs=0)"),
    ("name: x\ngrid: {model: [cnn5]}\n", "'dataset' is required"),
    ("name: x\ngrid: {model: cnn5}\nfixed: {dataset: breastmnist}\n", "grid 'model' must be a non-empty list"),
    ("name: x\ngrid: {model: [cnn5]}\nfixed: {model: cnn2, dataset: breastmnist}\n", "both grid and fixed"),
    ("grid: {model: [cnn5]}\nfixed: {dataset: breastmnist}\n", "'name' is required"),
    ("name: x\nruns: 3\nfixed: {dataset: breastmnist}\n", "unknown study key 'runs'"),
    ("name: x\ngrid: [model]\n", "'grid' must be a mapping"),
])
def test_grid_errors_name_the_file_and_the_problem(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(MedbenchError) as e:
        load_study(path)
    assert str(path) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_missing_study_file(tmp_path):
    with pytest.raises(MedbenchError, match="not found"):
        load_study(tmp_path / "nope.yaml")


# ---- store --------------------------------------------------------------------------------------------------
# PostgreSQL: MEDBENCH_TEST_POSTGRES=postgresql+psycopg://USER@HOST:PORT/DB uses that (throwaway!) database;
# MEDBENCH_TEST_POSTGRES=1 starts a temporary server from Debian's postgresql (initdb) and fails without it;
# unset: a temporary server when initdb and psycopg are installed, else SQLite only.
PG_ENV = os.environ.get("MEDBENCH_TEST_POSTGRES", "").strip()
INITDB = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
HAVE_PSYCOPG = importlib.util.find_spec("psycopg") is not None
BACKENDS = ["sqlite"] + (["postgresql"] if PG_ENV or (INITDB and HAVE_PSYCOPG) else [])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    if not HAVE_PSYCOPG:
        pytest.fail('PostgreSQL store tests need psycopg: pip install "psycopg[binary]"')
    if "://" in PG_ENV:
        yield PG_ENV
        return
    if not INITDB:
        pytest.fail("MEDBENCH_TEST_POSTGRES is set but no PostgreSQL server is installed "
                    "(/usr/lib/postgresql/*/bin/initdb missing): apt-get install -y postgresql, or set it to a URL")
    import pwd
    import tempfile

    bindir = INITDB[-1].parent
    root = Path(tempfile.mkdtemp(prefix="medbench-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as Debian's postgres user
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root and there is no 'postgres' user to run a temporary PostgreSQL server")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = _free_port(), root / "data"

    def run(*args):
        return subprocess.run([*as_user, *map(str, args)], capture_output=True, text=True, timeout=120)

    r = run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
    if r.returncode:
        pytest.fail(f"initdb failed: {r.stderr.strip()[-500:]}")
    r = run(bindir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-t", "60", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off", "start")
    if r.returncode:
        log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
        pytest.fail(f"cannot start a temporary PostgreSQL server: {r.stderr.strip()[-300:]} {log[-300:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _fresh_store(request, tmp_path, backend: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'study.db'}"
    from sqlalchemy import create_engine

    from medbench.study.store import metadata

    url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    metadata.drop_all(engine)  # a fresh table for every test
    engine.dispose()
    return url


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path):
    return _fresh_store(request, tmp_path, request.param)


RACE = """\
import json, sys, time
from medbench.study.store import Store
url, ids, start = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
store = Store(url)
while time.time() < start:
    time.sleep(0.001)
print(json.dumps([i for i in ids if store.claim(i)]))
"""


def test_claims_are_exclusive_across_processes(store_url):
    ids = [f"run{i:03d}" for i in range(40)]
    with Store(store_url) as store:
        assert store.add({"id": i, "study": "race", "config": "{}"} for i in ids) == 40
        assert store.add([{"id": "run000", "study": "race", "config": "{}"}]) == 0  # kept, not duplicated
        start = time.time() + 3  # both interpreters are up and connected by then
        procs = [subprocess.Popen([sys.executable, "-c", RACE, store_url, json.dumps(ids), str(start)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
        won = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
        assert all(p.returncode == 0 for p in procs)
        assert sorted(won[0] + won[1]) == ids  # every id claimed exactly once
        assert store.counts() == {"total": 40, "done": 0, "failed": 0, "running": 40, "pending": 0}
        assert not store.claim("run000")  # a running run cannot be claimed


def test_store_status_changes_and_stale_runs(store_url):
    with Store(store_url) as store:
        store.add({"id": i, "study": "s", "config": "{}"} for i in ("a", "b", "c", "d"))
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        assert store.claim("a", pid=dead.pid) and store.claim("b", pid=os.getpid()) and store.claim("c", pid=4)
        assert store.mark_done("c", {"test": {"auc": 0.5}}, 1.0, pid=5) is False  # not its owner
        assert store.mark_done("c", {"test": {"auc": 0.5}}, 1.0, pid=4)
        assert store.reset_stale() == ["a"]  # b's process (this one) lives
        a = store.get("a")
        assert a["status"] == "failed" and a["error"] == "interrupted" and a["attempts"] == 1
        assert store.claim("a", pid=os.getpid()) and store.get("a")["attempts"] == 2
        assert store.mark_failed("a", "bad\nthing", 0.1, pid=os.getpid())
        assert store.get("a")["error"] == "bad thing"
        c = store.get("c")
        assert c["status"] == "done" and json.loads(c["metrics"])["test"]["auc"] == 0.5 and c["seconds"] == 1.0
        assert store.counts() == {"total": 4, "done": 1, "failed": 1, "running": 1, "pending": 1}
        assert store.counts(["a", "d"]) == {"total": 2, "done": 0, "failed": 1, "running": 0, "pending": 1}
        assert store.requeue_failed() == 1 and store.get("a")["status"] == "pending"


def test_bad_database_url_is_one_line():
    with pytest.raises(MedbenchError, match="database"):
        Store("nosuchdb+driver://x/y")


# ---- running studies ----------------------------------------------------------------------------------------
def _results(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_run_study_end_to_end_and_resume_is_a_no_op(tmp_path):
    study = load_study(_write(tmp_path, "name: tiny4\ngrid: {model: [cnn5, cnn2], augment: [none, basic]}\n"
                                        "fixed: {dataset: breastmnist, epochs: 1}\n"))
    out = tmp_path / "study"
    counts = run_study(study, out)
    assert counts == {"total": 4, "done": 4, "failed": 0, "running": 0, "pending": 0}
    rows = _results(out)
    assert [r["id"] for r in rows] == study.ids and [r["model"] for r in rows] == ["cnn5", "cnn5", "cnn2", "cnn2"]
    assert list(rows[0])[:4] == ["id", "status", "model", "augment"]
    for r in rows:
        run_dir = Path(r["run_dir"])
        assert run_dir == out.resolve() / "runs" / r["id"] and (run_dir / "metrics.json").is_file()
        assert not (run_dir / "report.html").exists()  # studies skip run reports unless asked
        assert run_id(load_config(run_dir / "config.yaml")) == r["id"]  # the saved config has the run's id
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert float(r["test_auc"]) == pytest.approx(metrics["test"]["auc"])
        assert float(r["gap_auc"]) == pytest.approx(metrics["gap"]["auc"]) and float(r["seconds"]) > 0
    report = out / "report.html"  # the study's comparison report, written after the runs
    assert report.is_file() and "## Leaderboard" in (out / "results.md").read_text()
    written = report.stat().st_mtime_ns
    with Store(f"sqlite:///{out / 'study.db'}") as store:
        started = {r["id"]: r["started"] for r in store.rows()}
        assert run_study(study, out) == counts  # nothing left to train
        assert report.stat().st_mtime_ns == written  # nor to report again
        assert {r["id"]: r["started"] for r in store.rows()} == started
        assert {r["attempts"] for r in store.rows()} == {1}
    assert study_status(out) == counts == study_status(f"sqlite:///{out / 'study.db'}")


def test_run_study_with_a_database_url(tmp_path, store_url):
    path = _write(tmp_path, "name: one\nfixed: {dataset: breastmnist, model: cnn2, epochs: 1}\n")
    counts = run_study(path, tmp_path / "one", db_url=store_url)
    assert counts == {"total": 1, "done": 1, "failed": 0, "running": 0, "pending": 0} == study_status(store_url)
    assert not (tmp_path / "one" / "study.db").exists() and _results(tmp_path / "one")[0]["status"] == "done"


def test_failed_runs_are_recorded_and_retried(tmp_path):
    path = _write(tmp_path, "name: bad\nfixed: {dataset: nosuchmnist, model: cnn2, epochs: 1}\n")
    out = tmp_path / "bad"
    assert run_study(path, out)["failed"] == 1
    with Store(f"sqlite:///{out / 'study.db'}") as store:
        (row,) = store.rows()
        assert row["status"] == "failed" and "nosuchmnist" in row["error"] and "\n" not in row["error"]
        assert row["metrics"] is None
        run_study(path, out)
        assert store.get(row["id"])["attempts"] == 2
    assert _results(out)[0]["status"] == "failed"
    with pytest.raises(MedbenchError, match="no study"):
        study_status(tmp_path / "elsewhere")


@pytest.mark.slow
def test_killed_study_resumes_without_duplicates(tmp_path, medmnist_dir):
    """Acceptance: SIGKILL the runner's whole process group mid-study, then finish it."""
    path = _write(tmp_path, "name: tiny8\ngrid: {model: [cnn5, cnn2], augment: [none, basic], seed: [0, 1]}\n"
                            "fixed: {dataset: breastmnist, epochs: 1}\n")
    study = load_study(path)
    out = tmp_path / "study8"
    cmd = [sys.executable, "-m", "medbench.study.runner", str(path), "--out", str(out), "--workers", "2", "--quiet"]
    db = out / "study.db"
    done = 0

    def some_done() -> bool:
        nonlocal done
        if db.is_file():
            with Store(f"sqlite:///{db}") as store:
                done = store.counts()["done"]
        return done > 0

    kill_when(cmd, some_done, env=_env(medmnist_dir), timeout=240, poll=0.05, what="the study")
    assert 1 <= done < 8
    with Store(f"sqlite:///{db}") as store:
        t = time.time() + 30  # the killed workers are gone (or zombies) shortly after
        while time.time() < t and any(pid_alive(r["pid"]) for r in store.rows() if r["status"] == "running"):
            time.sleep(0.1)
        before = {r["id"]: r for r in store.rows()}
    assert len(before) == 8
    for r in before.values():
        if r["status"] == "done":  # never 'done' without its metrics
            assert (Path(r["run_dir"]) / "metrics.json").is_file() and r["metrics"]
        assert r["status"] in ("done", "running", "pending")

    # the rerun: the same command line, here in this process with one worker (torch is imported already)
    from medbench.study.runner import main

    assert main([str(path), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    with Store(f"sqlite:///{db}") as store:
        after = {r["id"]: r for r in store.rows()}
    assert sorted(after) == sorted(study.ids) and all(r["status"] == "done" for r in after.values())
    for rid, r in before.items():
        if r["status"] == "done":  # finished runs were not trained again
            assert after[rid]["started"] == r["started"] and after[rid]["attempts"] == 1
        elif r["status"] == "running":  # interrupted runs were retried from a clean directory
            assert after[rid]["attempts"] == 2
    dirs = sorted(p.name for p in (out / "runs").iterdir())
    assert dirs == sorted(study.ids)
    assert all((out / "runs" / d / "metrics.json").is_file() for d in dirs)
    ids = [r["id"] for r in _results(out)]
    assert len(ids) == len(set(ids)) == 8 and all(r["status"] == "done" for r in _results(out))


# ---- Ray ----------------------------------------------------------------------------------------------------
@pytest.fixture
def shared_store(request, tmp_path):
    """The store a cluster would share: PostgreSQL where a server can be had (as in CI), else SQLite."""
    return _fresh_store(request, tmp_path, BACKENDS[-1])


@pytest.mark.slow
def test_ray_executor_completes_the_tiny_study(tmp_path, shared_store):
    """Acceptance: the tiny study on a local Ray instance (2 tasks at once), its results in the shared store."""
    store_url = shared_store
    path = _write(tmp_path, TINY)
    study = load_study(path)
    out = tmp_path / "ray"
    counts = run_study(study, out, workers=2, executor="ray", db_url=store_url)
    assert counts == {"total": 8, "done": 8, "failed": 0, "running": 0, "pending": 0}
    with Store(store_url) as store:
        rows = store.rows()
        assert sorted(r["id"] for r in rows) == sorted(study.ids) and {r["attempts"] for r in rows} == {1}
        pids = {r["pid"] for r in rows}
        assert os.getpid() not in pids and len(pids) >= 2  # trained in Ray workers, two at a time
        started = {r["id"]: r["started"] for r in rows}
    assert all((Path(r["run_dir"]) / "metrics.json").is_file() for r in rows)
    assert [r["status"] for r in _results(out)] == ["done"] * 8
    assert run_study(study, out, workers=2, executor="ray", db_url=store_url) == counts  # nothing to train
    with Store(store_url) as store:
        assert {r["id"]: r["started"] for r in store.rows()} == started


@pytest.mark.slow
def test_ray_resources_are_checked(tmp_path):
    path = _write(tmp_path, "name: one\nfixed: {dataset: breastmnist, model: cnn2, epochs: 1}\n")
    with pytest.raises(MedbenchError, match="asks for 64 CPU"):
        run_study(path, tmp_path / "big", executor="ray", cpus_per_run=64)
    assert study_status(tmp_path / "big")["pending"] == 1  # nothing was claimed
    with pytest.raises(MedbenchError, match="are for --executor ray"):
        run_study(path, tmp_path / "big", address="127.0.0.1:6379")


# ---- examples -----------------------------------------------------------------------------------------------
def test_every_example_study_loads():
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert files, f"no study files in {EXAMPLES}"
    for f in files:
        study = load_study(f)
        assert len(study) >= 1 and len(set(study.ids)) == len(study), f
    assert len(load_study(EXAMPLES / "chextransfer.yaml")) == 32  # 16 architectures x pretrained or not


def test_cli_dry_run_lists_every_example_and_status_counts(tmp_path, capsys):
    from medbench.cli import main

    for path in sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")):
        assert main(["study", str(path), "--dry-run", "--json", "--no-estimate"]) == 0, path
        listed = json.loads(capsys.readouterr().out)
        assert listed["runs"] and all(len(r["id"]) == 12 for r in listed["runs"])
    study = tmp_path / "s.yaml"
    study.write_text("name: two\ngrid: {seed: [0, 1]}\nfixed: {dataset: breastmnist, model: cnn2, epochs: 1}\n")
    assert main(["study", str(study), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "2/2 done, 0 failed" in capsys.readouterr().out
    assert main(["study", "status", str(tmp_path / "out"), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["total"] == 2 and counts["done"] == 2 and counts["failed"] == 0 and counts["running"] == 0
    assert main(["study", str(tmp_path / "missing.yaml"), "--dry-run"]) == 2
